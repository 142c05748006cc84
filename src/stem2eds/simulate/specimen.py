"""Specimen and scan geometry: film thickness, crystalline grains, descan of the beam origin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .crystal import ZONE_AXES


@dataclass(frozen=True)
class Grains:
    """Rock-salt grains seen at each probe position of a scan.

    Attributes
    ----------
    thickness : ndarray, shape (Rx, Ry)
        Crystal thickness the probe passes through, nm (0 outside grains).
    zone : ndarray of int, shape (Rx, Ry)
        Zone-axis index (:data:`.crystal.ZONE_AXES`) of the grain at each position.
    rotation : ndarray, shape (Rx, Ry)
        In-plane rotation of that grain, radians.
    tilt : ndarray, shape (Rx, Ry, 2)
        Tilt of that grain off its zone axis, radians.
    count : int
        Number of grains in the scan.
    """

    thickness: np.ndarray
    zone: np.ndarray
    rotation: np.ndarray
    tilt: np.ndarray
    count: int

    @property
    def mask(self) -> np.ndarray:
        """(Rx, Ry) uint8, 1 where a grain contributes Bragg disks."""
        return (self.thickness > 0).astype(np.uint8)


def thickness_map(scan_shape: tuple[int, int], rng: np.random.Generator, mean_nm: float = 30.0,
                  wedge: float = 0.15, variation: float = 0.06,
                  r_pixel_nm: float = 1.053) -> np.ndarray:
    """Film thickness at each probe position: a wedge plus smooth undulation.

    A series draws it once over the scan plus the drift margin (the same
    lamella is imaged every time) and crops it per scan.

    Parameters
    ----------
    scan_shape : (Rx, Ry)
        Area to cover, probe positions.
    rng : numpy.random.Generator
    mean_nm : float
        Mean thickness, nm.
    wedge : float
        Relative thickness change across the scan rows (FIB lamellae are wedges).
    variation : float
        Relative amplitude of the smooth undulation (correlation ~10 nm).
    r_pixel_nm : float
        Probe step, nm.

    Returns
    -------
    ndarray, shape (Rx, Ry), nm
    """
    rx, ry = scan_shape
    rows = np.linspace(-0.5, 0.5, rx)[:, None]
    cols = np.linspace(-0.5, 0.5, ry)[None, :]
    direction = rng.uniform(0, 2 * np.pi)
    plane = wedge * (np.cos(direction) * rows + 0.3 * np.sin(direction) * cols)
    from scipy import ndimage  # here: `stem2eds --help` need not load SciPy
    bumps = ndimage.gaussian_filter(rng.standard_normal((rx, ry)), 10.0 / r_pixel_nm, mode="wrap")
    bumps -= bumps.mean()
    spread = bumps.std()
    # A field much smaller than the correlation length is flat: no undulation, not amplified noise.
    bumps = bumps / spread if spread > 1e-3 * np.abs(bumps).max() + 1e-9 else np.zeros_like(bumps)
    return mean_nm * np.clip(1.0 + plane + variation * bumps, 0.3, None)


def descan_origins(scan_shape: tuple[int, int], detector: int, rng: np.random.Generator,
                   shift_px: float = 3.0, jitter_px: float = 0.15) -> np.ndarray:
    """True unscattered-beam centre of every pattern (descan error plus jitter).

    The beam centre moves linearly with the probe position (an imperfectly
    compensated descan: a plane over the scan) plus small random jitter.

    Parameters
    ----------
    scan_shape : (Rx, Ry)
    detector : int
        Detector size in px; the plane is centred near ``(detector - 1) / 2``.
    rng : numpy.random.Generator
    shift_px : float
        Total movement of the centre from one scan corner to the opposite one,
        px at this detector size.
    jitter_px : float
        Standard deviation of the per-pattern jitter, px.

    Returns
    -------
    ndarray, shape (Rx, Ry, 2), float32
        (row, column) of the beam centre in detector pixels.
    """
    rx, ry = scan_shape
    rows = np.linspace(-0.5, 0.5, rx)[:, None]
    cols = np.linspace(-0.5, 0.5, ry)[None, :]
    angle = rng.uniform(0, 2 * np.pi, size=2)
    # Each detector axis gets a plane whose corner-to-corner change is shift_px.
    centre = (detector - 1) / 2.0 + rng.uniform(-2.0, 2.0, size=2) * detector / 256
    out = np.empty((rx, ry, 2))
    for axis in range(2):
        a, b = np.cos(angle[axis]), np.sin(angle[axis])
        norm = abs(a) + abs(b)
        out[..., axis] = centre[axis] + shift_px * (a * rows + b * cols) / norm
    out += rng.normal(0.0, jitter_px, size=out.shape)
    return out.astype(np.float32)


def place_grains(scan_shape: tuple[int, int], thickness: np.ndarray, rng: np.random.Generator,
                 count: int, radius_nm: tuple[float, float] = (2.0, 4.0),
                 r_pixel_nm: float = 1.053, avoid_rows: float = 0.75) -> Grains:
    """Spherical rock-salt grains embedded in the amorphous film.

    Parameters
    ----------
    scan_shape : (Rx, Ry)
    thickness : ndarray, shape (Rx, Ry)
        Film thickness, nm; a grain never exceeds it.
    rng : numpy.random.Generator
    count : int
        Number of grains (0 for a fully amorphous scan).
    radius_nm : (float, float)
        Range of grain radii, nm.
    r_pixel_nm : float
        Probe step, nm.
    avoid_rows : float
        Grains are placed above this fraction of the rows (they crystallise in
        the clean film, not in the oxide).

    Returns
    -------
    Grains
    """
    rx, ry = scan_shape
    t = np.zeros((rx, ry))
    zone = np.zeros((rx, ry), dtype=np.int64)
    rot = np.zeros((rx, ry))
    tilt = np.zeros((rx, ry, 2))
    rr, cc = np.indices((rx, ry)) * r_pixel_nm
    for _ in range(count):
        radius = rng.uniform(*radius_nm)
        centre = (rng.uniform(0, avoid_rows * rx) * r_pixel_nm, rng.uniform(0, ry) * r_pixel_nm)
        d2 = (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2
        chord = 2.0 * np.sqrt(np.maximum(radius ** 2 - d2, 0.0))
        inside = chord > t                                          # thicker grain wins overlaps
        t = np.where(inside, chord, t)
        zone[inside] = rng.integers(len(ZONE_AXES))
        rot[inside] = rng.uniform(0, 2 * np.pi)
        tilt[inside] = rng.normal(0.0, 2e-3, size=2)                # ~2 mrad off zone
    return Grains(np.minimum(t, thickness), zone, rot, tilt, count)
