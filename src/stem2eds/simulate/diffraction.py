"""Diffraction patterns on a pixel detector: amorphous rings, Bragg disks, unscattered beam, noise.

Per probe position the expected number of electrons in detector pixel p is::

    n(p) = D [ T P_0(p) (1 - sum_g I_g) + T sum_g I_g P_g(p)
               + rho t_a lambda^2 dq^2 I_amorphous(|q_p - q_0|) ]

with D the dose (electrons per pattern), ``t_a`` the amorphous thickness
(total minus the crystalline grain), ``T = exp(-rho t_a sigma_el)`` the
unscattered fraction after the amorphous film (sigma_el = lambda^2 integral
of <f^2> over the detector plane: the kinematic elastic cross-section),
``P_0`` the central (probe-convergence) disk at the beam origin ``q_0``,
``P_g`` the Bragg disks of a grain (:mod:`.crystal`) and ``I_amorphous``
from :mod:`.amorphous`, blurred by the convergence disk. Counts are
Poisson samples of ``n``, clipped to the 16-bit range of the detector.

The radial profile is computed on a fine 1D q grid and sampled onto the
detector around each pattern's own origin, vectorised over a batch. Multiple
scattering is not redistributed in angle (the scattered part is rescaled so
that no electron is counted twice), and the elastic-only model has no
inelastic or thermal-diffuse background.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..errors import InputError
from .amorphous import amorphous_intensity
from .crystal import bragg_reflections
from .scattering import electron_wavelength, scattering_factor

#: Detector of the paper: 256 px at 0.1451 1/nm per pixel.
REFERENCE_DETECTOR = 256
REFERENCE_Q_PIXEL_NM = 0.1451
#: Radius of the unscattered-beam disk (probe convergence) at 256 px, in px.
REFERENCE_PROBE_RADIUS = 3.0
#: Profile samples per detector pixel on the 1D q grid.
_OVERSAMPLE = 4
#: Patterns rendered at once (bounds the float32 work arrays to ~40 MB at 256x256).
_BATCH = 64
#: Upper q for the elastic cross-section integral, 1/Angstrom (f^2 is negligible beyond).
_Q_CROSS_SECTION = 4.0


def default_q_pixel_size(detector: int) -> float:
    """Q pixel size in 1/nm for a ``detector``-pixel-wide detector with the paper's field of view."""
    return REFERENCE_Q_PIXEL_NM * REFERENCE_DETECTOR / detector


def default_probe_radius(detector: int) -> float:
    """Unscattered-beam disk radius in pixels for a ``detector``-pixel detector."""
    return REFERENCE_PROBE_RADIUS * detector / REFERENCE_DETECTOR


def _disk_weights(distance: np.ndarray, radius: float) -> np.ndarray:
    """Fractional pixel coverage of a disk of ``radius`` px (linear 1 px edge ramp)."""
    return np.clip(radius + 0.5 - distance, 0.0, 1.0)


@lru_cache(maxsize=4)
def _profile_grid(detector: int, q_pixel_nm: float) -> tuple[np.ndarray, float]:
    """1D q grid (1/Angstrom) covering the detector corners with margin for origin drift."""
    step = q_pixel_nm / 10.0 / _OVERSAMPLE
    q_top = np.sqrt(2.0) * detector * q_pixel_nm / 10.0
    return np.arange(0.0, q_top + 2 * step, step), step


@lru_cache(maxsize=16)
def _elastic_cross_sections(elements: tuple[str, ...], energy_kev: float) -> np.ndarray:
    """Kinematic elastic cross-section per atom, lambda^2 int |f|^2 d^2q, Angstrom^2, shape (E,)."""
    q = np.linspace(0.0, _Q_CROSS_SECTION, 4001)
    f2 = scattering_factor(elements, q, energy_kev) ** 2
    lam = electron_wavelength(energy_kev)
    return lam ** 2 * np.trapezoid(f2 * 2.0 * np.pi * q, q, axis=1)


def _convergence_blur(profiles: np.ndarray, radius_samples: float) -> np.ndarray:
    """Blur radial profiles by the probe's convergence disk.

    With a convergent probe every scattering angle is smeared over the disk
    of the unscattered beam. Far from the centre (q >> disk radius) the 2D
    convolution of a ring with a disk reduces to a 1D convolution of the
    profile with the disk's chord length, ``2 sqrt(R^2 - x^2)``, which is
    what is applied here along q (reflecting at q = 0).

    Parameters
    ----------
    profiles : ndarray, shape (n, nq)
    radius_samples : float
        Disk radius in samples of the q grid.

    Returns
    -------
    ndarray, shape (n, nq), same dtype
    """
    half = int(np.floor(radius_samples))
    if half < 1:
        return profiles
    x = np.arange(-half, half + 1, dtype=np.float64)
    chord = np.sqrt(np.maximum(radius_samples ** 2 - x ** 2, 0.0))
    from scipy import ndimage  # here: `stem2eds --help` need not load SciPy
    return ndimage.convolve1d(profiles, (chord / chord.sum()).astype(profiles.dtype), axis=1,
                              mode="reflect")


def radial_profiles(composition: np.ndarray, elements: Sequence[str], q: np.ndarray,
                    energy_kev: float = 200.0) -> tuple[np.ndarray, np.ndarray]:
    """Amorphous scattered fraction per unit thickness and solid angle, and elastic attenuation.

    Parameters
    ----------
    composition : ndarray, shape (n, E)
        Atomic fractions.
    elements : sequence of str
    q : ndarray, shape (nq,)
        Grid of scattering vectors ``1/d`` in 1/Angstrom.
    energy_kev : float

    Returns
    -------
    density_profile : ndarray, shape (n, nq)
        ``rho * I(q)`` in 1/Angstrom (multiply by thickness in Angstrom and by
        ``lambda^2 dq^2`` to get the fraction of electrons in a pixel).
    attenuation : ndarray, shape (n,)
        ``rho * sigma_el`` in 1/Angstrom: the unscattered beam decays as
        ``exp(-attenuation * t)``.
    """
    intensity, rho = amorphous_intensity(q, composition, elements, energy_kev)
    # <f^2> is linear in the fractions, so is the cross-section of the mixture.
    sigma_el = np.asarray(composition, dtype=np.float64) @ _elastic_cross_sections(
        tuple(elements), float(energy_kev))
    return rho[:, None] * intensity, rho * sigma_el


def expected_patterns(composition: np.ndarray, thickness: np.ndarray, origins: np.ndarray, *,
                      elements: Sequence[str], detector: int = REFERENCE_DETECTOR,
                      q_pixel_size: float | None = None, probe_radius: float | None = None,
                      dose: float = 2e5, energy_kev: float = 200.0,
                      grain_thickness: np.ndarray | None = None,
                      grain_zone: np.ndarray | None = None,
                      grain_rotation: np.ndarray | None = None,
                      grain_tilt: np.ndarray | None = None) -> np.ndarray:
    """Noise-free expected electron counts of a batch of diffraction patterns.

    Parameters
    ----------
    composition : ndarray, shape (n, E)
        Atomic fractions at each probe position, columns in ``elements`` order.
    thickness : ndarray, shape (n,)
        Film thickness in nm.
    origins : ndarray, shape (n, 2)
        Beam centre (detector row, column) in pixels, sub-pixel.
    elements : sequence of str
        Element symbols of the composition columns.
    detector : int
        Detector size; patterns are (detector, detector).
    q_pixel_size : float, optional
        Detector pixel in 1/nm; default keeps the paper's field of view
        (0.1451 1/nm at 256 px).
    probe_radius : float, optional
        Unscattered-beam disk radius in px (default 3 px at 256).
    dose : float
        Incident electrons per pattern.
    energy_kev : float
        Beam energy in keV.
    grain_thickness : ndarray, shape (n,), optional
        Thickness of rock-salt grain the probe crosses, nm (0: amorphous only).
    grain_zone : ndarray of int, shape (n,), optional
        Zone-axis index (:data:`.crystal.ZONE_AXES`) of the grain at each position.
    grain_rotation : ndarray, shape (n,), optional
        In-plane rotation of the grain, radians.
    grain_tilt : ndarray, shape (n, 2), optional
        Tilt off the zone axis, radians.

    Returns
    -------
    ndarray, shape (n, detector, detector), float32
        Expected counts (electrons) per pixel.
    """
    comp = np.atleast_2d(np.asarray(composition, dtype=np.float64))
    n = len(comp)
    thickness = np.broadcast_to(np.asarray(thickness, dtype=np.float64), (n,))
    origins = np.asarray(origins, dtype=np.float64).reshape(n, 2)
    if comp.shape[1] != len(elements):
        raise InputError(f"composition has {comp.shape[1]} columns but {len(elements)} elements")
    if np.any(comp < -1e-6) or np.any(np.abs(comp.sum(axis=1) - 1.0) > 1e-3):
        raise InputError("composition rows must be atomic fractions summing to 1")
    if np.any(thickness < 0):
        raise InputError("thickness must be non-negative (nm)")
    q_pixel_nm = float(q_pixel_size or default_q_pixel_size(detector))
    radius = float(probe_radius if probe_radius is not None else default_probe_radius(detector))
    grains = _Grains(
        np.zeros(n) if grain_thickness is None else np.minimum(
            np.broadcast_to(np.asarray(grain_thickness, dtype=np.float64), (n,)), thickness),
        np.zeros(n, int) if grain_zone is None else np.broadcast_to(grain_zone, (n,)),
        np.zeros(n) if grain_rotation is None else np.broadcast_to(grain_rotation, (n,)),
        np.zeros((n, 2)) if grain_tilt is None else np.broadcast_to(grain_tilt, (n, 2)))

    q, step = _profile_grid(detector, q_pixel_nm)
    pixel_profile, transmitted = _amorphous_profiles(comp, elements, thickness - grains.thickness,
                                                     q, q_pixel_nm, dose, energy_kev, radius)
    out = np.empty((n, detector, detector), dtype=np.float32)
    dq = q_pixel_nm / 10.0                                           # 1/Angstrom per pixel
    for lo in range(0, n, _BATCH):
        hi = min(lo + _BATCH, n)
        block = _sample_profiles(pixel_profile[lo:hi], origins[lo:hi], detector,
                                 np.float32(dq / step))
        _add_beams(block, lo, origins, dose * transmitted[lo:hi], grains, dq, radius,
                   energy_kev, np.sqrt(2.0) * detector * dq)
        out[lo:hi] = block
    return out


@dataclass(frozen=True)
class _Grains:
    """Crystalline grain crossed at each position: thickness (nm), zone index, rotation, tilt."""

    thickness: np.ndarray
    zone: np.ndarray
    rotation: np.ndarray
    tilt: np.ndarray


def _amorphous_profiles(comp: np.ndarray, elements: Sequence[str], t_nm: np.ndarray,
                        q: np.ndarray, q_pixel_nm: float, dose: float, energy_kev: float,
                        radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Scattered electrons per pixel on the oversampled q grid, and the transmitted fraction.

    Returns
    -------
    pixel_profile : ndarray, shape (n, len(q)), float32
        Expected counts per detector pixel at each q, blurred by the probe's convergence.
    transmitted : ndarray, shape (n,)
        Fraction of the beam that crosses the amorphous film unscattered.
    """
    density_profile, attenuation = radial_profiles(comp, elements, q, energy_kev)
    lam = electron_wavelength(energy_kev)
    dq = q_pixel_nm / 10.0                                           # 1/Angstrom per pixel
    t_amorphous = t_nm * 10.0                                        # Angstrom
    transmitted = np.exp(-attenuation * t_amorphous)
    # Single-scattering fraction per pixel, rescaled so that scattered + unscattered
    # electrons add up to the dose (x -> 1 - exp(-x): multiple scattering is not
    # redistributed in angle, but no electron is counted twice).
    optical_depth = np.maximum(attenuation * t_amorphous, 1e-12)
    scale = dose * lam ** 2 * dq ** 2 * t_amorphous * (1.0 - transmitted) / optical_depth
    pixel_profile = (scale[:, None] * density_profile).astype(np.float32)
    return _convergence_blur(pixel_profile, radius * _OVERSAMPLE), transmitted


def _sample_profiles(profiles: np.ndarray, origins: np.ndarray, detector: int,
                     samples_per_px: np.float32) -> np.ndarray:
    """Radial profiles (m, S) drawn around each origin (m, 2): (m, detector, detector) float32."""
    m = len(profiles)
    rows = np.arange(detector, dtype=np.float32)
    dr = rows[None, :, None] - origins[:, 0, None, None].astype(np.float32)
    dc = rows[None, None, :] - origins[:, 1, None, None].astype(np.float32)
    # Nearest sample of the oversampled 1D profile (error < 1/(2*_OVERSAMPLE) px).
    index = np.sqrt(dr * dr + dc * dc)
    index *= samples_per_px
    index += np.float32(0.5)
    index = np.minimum(index.astype(np.int32), profiles.shape[1] - 1).reshape(m, -1)
    return np.take_along_axis(profiles, index, axis=1).reshape(m, detector, detector)


def _add_beams(block: np.ndarray, lo: int, origins: np.ndarray, beam: np.ndarray,
               grains: _Grains, dq: float, radius: float, energy_kev: float,
               q_max_detector: float) -> None:
    """Add the unscattered disk and each grain's Bragg disks to the patterns of a batch.

    ``block`` (m, Qx, Qy) holds positions ``lo .. lo + m``; ``beam`` (m,) the
    electrons that crossed the amorphous film unscattered.
    """
    m = len(block)
    which, centres, electrons = [], [], []
    unscattered = beam.copy()
    for k in np.flatnonzero(grains.thickness[lo:lo + m] > 0):
        idx = lo + k
        q_xy, fraction = bragg_reflections(int(grains.zone[idx]), float(grains.rotation[idx]),
                                           np.asarray(grains.tilt[idx]),
                                           float(grains.thickness[idx]), q_max_detector,
                                           energy_kev)
        unscattered[k] *= 1.0 - fraction.sum()
        which.append(np.full(len(fraction), k))
        centres.append(origins[idx] + q_xy / dq)
        electrons.append(beam[k] * fraction)
    which.append(np.arange(m))
    centres.append(origins[lo:lo + m])
    electrons.append(unscattered)
    _add_disks(block, np.concatenate(which), np.concatenate(centres),
               np.concatenate(electrons), radius)


def _add_disks(block: np.ndarray, which: np.ndarray, centres: np.ndarray, electrons: np.ndarray,
               radius: float) -> None:
    """Add disks to patterns in place, each drawn in a small window around its centre.

    Parameters
    ----------
    block : ndarray, shape (b, Q, Q)
        Patterns to add to.
    which : ndarray of int, shape (m,)
        Pattern index of each disk.
    centres : ndarray, shape (m, 2)
        Disk centres (row, column), px, sub-pixel.
    electrons : ndarray, shape (m,)
        Electrons in each disk (spread over the disk, also the part off the detector).
    radius : float
        Disk radius, px.
    """
    size = block.shape[1]
    offsets = np.arange(-(int(np.ceil(radius)) + 2), int(np.ceil(radius)) + 3)
    start = np.rint(centres).astype(np.int64)
    rows = start[:, 0, None] + offsets                                # (m, W)
    cols = start[:, 1, None] + offsets
    dist = np.hypot(rows[:, :, None] - centres[:, 0, None, None],
                    cols[:, None, :] - centres[:, 1, None, None])      # (m, W, W)
    weight = _disk_weights(dist, radius)
    weight *= (np.asarray(electrons) / np.maximum(weight.sum(axis=(1, 2)), 1e-12))[:, None, None]
    rr = np.broadcast_to(rows[:, :, None], weight.shape)
    cc = np.broadcast_to(cols[:, None, :], weight.shape)
    pp = np.broadcast_to(np.asarray(which)[:, None, None], weight.shape)
    inside = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size) & (weight > 0)
    np.add.at(block, (pp[inside], rr[inside], cc[inside]), weight[inside].astype(np.float32))


def simulate_patterns(composition: np.ndarray, thickness: np.ndarray, origins: np.ndarray,
                      rng: np.random.Generator, **kwargs) -> np.ndarray:
    """Noisy 16-bit diffraction patterns of a batch of probe positions.

    Poisson samples of :func:`expected_patterns` (same parameters), clipped
    to 0..65535 like a 16-bit counting detector.

    Parameters
    ----------
    composition : ndarray, shape (n, E)
        Atomic fractions at each probe position.
    thickness : ndarray, shape (n,)
        Film thickness, nm.
    origins : ndarray, shape (n, 2)
        Beam centre (detector row, column), px.
    rng : numpy.random.Generator
        Source of the shot noise.
    **kwargs
        ``elements`` (required), ``detector``, ``q_pixel_size``, ``probe_radius``,
        ``dose``, ``energy_kev``, ``grain_thickness``, ``grain_zone``,
        ``grain_rotation``, ``grain_tilt``: see :func:`expected_patterns`.

    Returns
    -------
    ndarray, shape (n, detector, detector), uint16
    """
    comp = np.atleast_2d(np.asarray(composition, dtype=np.float64))
    n = len(comp)
    thickness = np.broadcast_to(np.asarray(thickness, dtype=np.float64), (n,))
    origins = np.asarray(origins, dtype=np.float64).reshape(n, 2)
    per_pattern = {k: kwargs.pop(k) for k in ("grain_thickness", "grain_zone", "grain_rotation",
                                              "grain_tilt") if kwargs.get(k) is not None}
    detector = int(kwargs.get("detector", REFERENCE_DETECTOR))
    out = np.empty((n, detector, detector), dtype=np.uint16)
    top = np.iinfo(np.uint16).max
    # Sub-batches keep the int64 Poisson draws small.
    for lo in range(0, n, _BATCH):
        sl = slice(lo, min(lo + _BATCH, n))
        extra = {k: np.asarray(v)[sl] for k, v in per_pattern.items()}
        expected = expected_patterns(comp[sl], thickness[sl], origins[sl], **kwargs, **extra)
        np.minimum(rng.poisson(expected), top, out=out[sl], casting="unsafe")
    return out
