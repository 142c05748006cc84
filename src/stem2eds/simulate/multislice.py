"""The multislice engine: speckled nanobeam patterns and ADF from atomic models.

Every probe position gets its own atomic patch (:mod:`.atoms`): an
amorphous film whose species follow the local composition and whose number
density follows from it, as thick as the film there, with a rock-salt slab
where a grain lies. A 200 kV probe with a small convergence semi-angle (a
nanobeam: the unscattered disk is a few pixels wide, the rings are
speckled) is propagated through it by the multislice method, built on
abTEM: its probe (:class:`abtem.Probe`), its Lobato projected scattering
factors and pixel compensation (the infinite projection of
:class:`abtem.Potential`) and its relativistic wavelength and interaction
constant. The slicing, transmission and Fresnel propagation are done here
on a stack of positions at once (the per-position overhead of building an
:class:`abtem.Potential` dominates for a few thousand small cells);
``tests/test_simulate_multislice.py`` checks that both give the same
pattern.

The simulation cell is square with side ``10 / q_pixel_size`` Angstrom, so
one reciprocal-space pixel of the cell is one detector pixel; its grid has
:attr:`MultisliceModel.grid_factor` times the detector's pixels, so the
anti-aliased band (2/3 of Nyquist) reaches the detector's edge. The annular
(ADF) image integrates the exit wave between :attr:`MultisliceModel.adf_inner`
and the largest angle the grid resolves: a stand-in for HAADF without
thermal diffuse scattering (elastic scattering from the disordered film
carries the Z and thickness contrast).

The noise-free patterns are cached on disk (:func:`cache_path`); the descan
shift of the origin, the dose and the Poisson noise are applied afterwards
(:func:`noisy_patterns`), so changing them does not rerun the physics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..atomic import atomic_output
from .atoms import (Template, amorphous_patch, amorphous_template, draw_species, number_density,
                    rocksalt_slab, rotation_matrix)
from .specimen import Grains

#: Changes whenever the engine's output changes for the same settings (part of the cache key).
ENGINE_VERSION = 1
#: ADF signal of 10 nm of Ge2Sb2Te5 (fraction of the beam, default model): the HAADF unit.
ADF_REFERENCE = 0.038
#: Positions propagated together (bounds the work arrays: ~100 MB at 256 px).
_BATCH = 16


@dataclass(frozen=True)
class MultisliceModel:
    """Physics parameters of the multislice engine (part of the cache key).

    Attributes
    ----------
    convergence_mrad : float
        Probe convergence semi-angle, mrad (nanobeam: 1-2).
    slice_thickness : float
        Multislice slice thickness, Angstrom.
    grid_factor : float
        Simulation grid points per detector pixel along each axis.
    thickness_spread : float
        Scan-to-scan film thickness factor, uniform in ``1 +- thickness_spread``.
    lamella_contrast : float
        The series' thickness map (wedge plus undulation, relative to its
        mean) is stretched by this factor: thin films vary more.
    thickness_range : (float, float)
        Film thickness is clipped to this range, relative to the mean.
    adf_inner : float
        Inner angle of the annular detector as a fraction of the largest
        simulated angle.
    haadf_noise : float
        Standard deviation of the additive detector noise on the ADF image,
        in its units (:data:`ADF_REFERENCE`).
    """

    convergence_mrad: float = 1.5
    slice_thickness: float = 5.0
    grid_factor: float = 1.5
    thickness_spread: float = 0.2
    lamella_contrast: float = 2.0
    thickness_range: tuple[float, float] = (0.55, 1.45)
    adf_inner: float = 0.6
    haadf_noise: float = 0.02


def multislice_defaults() -> dict:
    """Settings in which the multislice engine differs from the kinematic default.

    A smaller scan and detector (minutes on two cores) and a 6-14 nm film.
    """
    return {"scan_shape": (24, 24), "detector": 128, "thickness_nm": 10.0, "n_scans": 6}


def scan_thickness(window: np.ndarray, mean_nm: float, rng: np.random.Generator,
                   model: MultisliceModel = MultisliceModel()) -> np.ndarray:
    """Film thickness of one scan: the series' lamella, stretched per scan.

    Parameters
    ----------
    window : ndarray, shape (Rx, Ry)
        The series-wide thickness map (:func:`.specimen.thickness_map`) seen by
        this scan, nm, around ``mean_nm``.
    mean_nm : float
    rng : numpy.random.Generator
    model : MultisliceModel

    Returns
    -------
    ndarray, shape (Rx, Ry), nm
    """
    factor = 1.0 + model.thickness_spread * rng.uniform(-1.0, 1.0)
    local = 1.0 + model.lamella_contrast * (np.asarray(window) / mean_nm - 1.0)
    low, high = model.thickness_range
    return np.clip(mean_nm * factor * local, low * mean_nm, high * mean_nm)


class Grid:
    """Simulation cell, propagator, potential kernels and probe for one detector setup.

    Parameters
    ----------
    detector : int
        Detector size, px.
    q_pixel_size : float
        Detector pixel, 1/nm.
    energy_kev : float
    elements : sequence of str
    model : MultisliceModel
    """

    def __init__(self, detector: int, q_pixel_size: float, energy_kev: float,
                 elements: Sequence[str], model: MultisliceModel):
        import abtem
        from abtem.core.energy import energy2sigma, energy2wavelength
        from abtem.integrals import sinc
        from abtem.parametrizations import LobatoParametrization

        self.detector, self.elements, self.model = detector, tuple(elements), model
        self.extent = 10.0 / q_pixel_size                            # Angstrom
        self.n = 2 * int(np.ceil(model.grid_factor * detector / 2))
        self.sampling = self.extent / self.n
        energy = energy_kev * 1e3
        self.wavelength = energy2wavelength(energy)
        self.sigma = energy2sigma(energy)
        k = np.fft.fftfreq(self.n, d=self.sampling)
        k2 = k[:, None] ** 2 + k[None, :] ** 2
        self.k_max = 2.0 / 3.0 / (2.0 * self.sampling)               # anti-aliasing band
        aperture = k2 <= self.k_max ** 2
        self.propagator = (np.exp(-1j * np.pi * self.wavelength * model.slice_thickness * k2)
                           * aperture).astype(np.complex64)
        half = self.n // 2 + 1
        compensate = sinc((self.n, self.n), (self.sampling, self.sampling))[:, :half]
        param = LobatoParametrization()
        self.kernels = np.stack([param.projected_scattering_factor(e)(k2[:, :half]) / compensate
                                 for e in self.elements]).astype(np.complex64)
        theta = np.fft.fftshift(np.sqrt(k2)) * self.wavelength * 1e3   # mrad, centred
        self.adf_mask = (theta >= model.adf_inner * self.k_max * self.wavelength * 1e3) & (
            theta <= self.k_max * self.wavelength * 1e3)
        probe = abtem.Probe(energy=energy, semiangle_cutoff=model.convergence_mrad,
                            extent=self.extent, gpts=self.n)
        wave = np.asarray(probe.build(scan=[(self.extent / 2, self.extent / 2)],
                                      lazy=False).array).reshape(self.n, self.n)
        self.probe = (wave / np.sqrt(np.sum(np.abs(wave) ** 2))).astype(np.complex64)

    @property
    def adf_range_mrad(self) -> tuple[float, float]:
        """Inner and outer angle of the annular detector, mrad."""
        outer = self.k_max * self.wavelength * 1e3
        return self.model.adf_inner * outer, outer


def _deposits(grid: Grid, atoms: list[tuple[np.ndarray, np.ndarray]]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cloud-in-cell deposits of every atom: flat (species, patch, row, col) index, weight, slice.

    Returns the four corner deposits of each atom sorted by slice, so that a
    slice is one contiguous run (abTEM's ``superpose_deltas``, vectorised
    over the patches).
    """
    n, b = grid.n, len(atoms)
    pos = np.concatenate([a[0] for a in atoms])
    species = np.concatenate([a[1] for a in atoms])
    patch = np.repeat(np.arange(b), [len(a[0]) for a in atoms])
    u = pos[:, :2] / grid.sampling
    i0 = np.floor(u).astype(np.int64)
    f = u - i0
    base = (species * b + patch) * n * n
    index = np.concatenate([base + ((i0[:, 0] + di) % n) * n + (i0[:, 1] + dj) % n
                            for di, dj in ((0, 0), (1, 0), (0, 1), (1, 1))])
    weight = np.concatenate([(1 - f[:, 0]) * (1 - f[:, 1]), f[:, 0] * (1 - f[:, 1]),
                             (1 - f[:, 0]) * f[:, 1], f[:, 0] * f[:, 1]])
    slab = np.tile(np.floor(pos[:, 2] / grid.model.slice_thickness).astype(np.int64), 4)
    order = np.argsort(slab, kind="stable")
    return index[order], weight[order], slab[order]


def _potential_slice(grid: Grid, index: np.ndarray, weight: np.ndarray, b: int,
                     workers: int) -> np.ndarray:
    """Projected potential (V Angstrom) of one slice of every patch, shape (B, n, n) float32."""
    import scipy.fft

    n, n_el = grid.n, len(grid.elements)
    deltas = np.bincount(index, weight, minlength=n_el * b * n * n).reshape(n_el, b, n, n)
    present = [e for e in range(n_el) if deltas[e].any()]
    if not present:
        return np.zeros((b, n, n), dtype=np.float32)
    spectrum = scipy.fft.rfft2(deltas[present].astype(np.float32), workers=workers)
    spectrum = np.einsum("ebij,eij->bij", spectrum, grid.kernels[present])
    return scipy.fft.irfft2(spectrum, s=(n, n), workers=workers)


def propagate(grid: Grid, atoms: list[tuple[np.ndarray, np.ndarray]], thickness: float,
              workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Multislice through a stack of patches; diffraction intensities and ADF signals.

    Parameters
    ----------
    grid : Grid
    atoms : list of (positions (n, 3) Angstrom, species (n,) int)
        One patch per position, all in the cell ``[0, grid.extent)^2``.
    thickness : float
        Largest film thickness of the patches, Angstrom (atoms lie below it).
    workers : int
        FFT threads.

    Returns
    -------
    intensity : ndarray, shape (B, n, n), float32
        Diffraction intensity, zero frequency at ``[n // 2, n // 2]``; each
        pattern sums to the fraction of the beam kept inside the
        anti-aliasing band.
    adf : ndarray, shape (B,)
        Fraction of the beam on the annular detector.
    """
    import scipy.fft

    b = len(atoms)
    index, weight, slab = _deposits(grid, atoms)
    bounds = np.searchsorted(slab, np.arange(int(np.ceil(thickness / grid.model.slice_thickness)) + 1))
    wave = np.repeat(grid.probe[None], b, axis=0)
    transmission = np.empty_like(wave)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        phase = np.float32(grid.sigma) * _potential_slice(grid, index[lo:hi], weight[lo:hi], b,
                                                          workers)
        transmission.real, transmission.imag = np.cos(phase), np.sin(phase)
        wave *= transmission
        wave = scipy.fft.fft2(wave, workers=workers, overwrite_x=True)
        wave *= grid.propagator
        wave = scipy.fft.ifft2(wave, workers=workers, overwrite_x=True)
    far = scipy.fft.fftshift(scipy.fft.fft2(wave, workers=workers), axes=(-2, -1))
    intensity = (far.real ** 2 + far.imag ** 2) / np.float32(grid.n ** 2)
    return intensity.astype(np.float32), intensity[:, grid.adf_mask].sum(axis=1)


def patch_atoms(template: Template, grid: Grid, comp: np.ndarray, thickness_a: float,
                grain: tuple[float, int, float, np.ndarray] | None,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Atoms of one probe position: amorphous film, with a rock-salt slab where a grain lies.

    Parameters
    ----------
    template : Template
        The scan's amorphous template (:func:`.atoms.amorphous_template`).
    grid : Grid
    comp : ndarray, shape (E,)
        Local atomic fractions, ``grid.elements`` order.
    thickness_a : float
        Film thickness, Angstrom.
    grain : (thickness Angstrom, zone index, rotation rad, tilt (2,) rad) or None
        The grain under the probe, if any.
    rng : numpy.random.Generator

    Returns
    -------
    positions : ndarray, shape (n, 3), Angstrom
    species : ndarray of int, shape (n,)
    """
    density = float(number_density(comp, grid.elements))
    pos = amorphous_patch(template, density, grid.extent, thickness_a, rng)
    species = draw_species(len(pos), comp, rng)
    if grain is None:
        return pos, species
    grain_a, zone, rotation, tilt = grain
    z0 = (thickness_a - grain_a) / 2
    keep = (pos[:, 2] < z0) | (pos[:, 2] >= z0 + grain_a)
    ge, sb = comp[grid.elements.index("Ge")], comp[grid.elements.index("Sb")]
    crystal, crystal_species = rocksalt_slab(grid.extent, (z0, z0 + grain_a),
                                             rotation_matrix(zone, rotation, tilt),
                                             ge / max(ge + sb, 1e-9), rng, grid.elements)
    return (np.concatenate([pos[keep], crystal]),
            np.concatenate([species[keep], crystal_species]))


def cache_margin(detector: int) -> int:
    """Pixels kept around the detector in cached patterns, for the descan shift."""
    return max(4, detector // 16)


def expected_scan(composition: np.ndarray, thickness_nm: np.ndarray, grains: Grains,
                  grid: Grid, seed_key: Sequence[int], workers: int = 1,
                  progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free, centred diffraction patterns and ADF signals of one scan.

    Parameters
    ----------
    composition : ndarray, shape (E, Rx, Ry)
        Atomic fractions, in ``grid.elements`` order.
    thickness_nm : ndarray, shape (Rx, Ry)
        Film thickness, nm.
    grains : Grains
        Crystal thickness and orientation at each position.
    grid : Grid
    seed_key : sequence of int
        Seeds the atomic models (template and one stream per batch), so the
        result does not depend on ``workers``.
    workers : int
        FFT threads.
    progress : callable, optional
        Wraps the iterable of batches (e.g. :func:`stem2eds.progress.track`).

    Returns
    -------
    patterns : ndarray, shape (Rx * Ry, D, D), float32
        Fraction of the beam per detector pixel, zero frequency at
        ``[det // 2 + m, det // 2 + m]``, ``D = det + 2 m``, ``m = cache_margin(det)``.
    adf : ndarray, shape (Rx, Ry)
        Fraction of the beam on the annular detector.
    """
    rx, ry = thickness_nm.shape
    det, margin = grid.detector, cache_margin(grid.detector)
    size = det + 2 * margin
    lo = grid.n // 2 - (det // 2 + margin)
    template = amorphous_template((1.3 * grid.extent, 1.3 * grid.extent, 160.0),
                                  np.random.default_rng(np.random.SeedSequence([*seed_key, 0])))
    comp = composition.reshape(len(grid.elements), -1).T
    t_a = 10.0 * thickness_nm.reshape(-1)
    g_a = 10.0 * grains.thickness.reshape(-1)
    zone, rot = grains.zone.reshape(-1), grains.rotation.reshape(-1)
    tilt = grains.tilt.reshape(-1, 2)
    patterns = np.empty((rx * ry, size, size), dtype=np.float32)
    adf = np.empty(rx * ry)
    starts = range(0, rx * ry, _BATCH)
    for start in (progress(starts) if progress else starts):
        rng = np.random.default_rng(np.random.SeedSequence([*seed_key, 1 + start // _BATCH]))
        sl = slice(start, min(start + _BATCH, rx * ry))
        atoms = [patch_atoms(template, grid, comp[i], t_a[i],
                        (g_a[i], zone[i], rot[i], tilt[i]) if g_a[i] > 0.5 else None, rng)
                 for i in range(sl.start, sl.stop)]
        intensity, adf[sl] = propagate(grid, atoms, float(t_a[sl].max()), workers)
        patterns[sl] = intensity[:, lo:lo + size, lo:lo + size]
    return patterns, adf.reshape(rx, ry)


def noisy_patterns(expected: np.ndarray, origins: np.ndarray, dose: float, detector: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Counts on the detector: patterns moved to their beam origin, times the dose, Poisson noise.

    Parameters
    ----------
    expected : ndarray, shape (k, D, D)
        Centred patterns from :func:`expected_scan`.
    origins : ndarray, shape (k, 2)
        Beam centre (detector row, column), px.
    dose : float
        Electrons per pattern.
    detector : int
        Detector size, px (``D - 2 * cache_margin(detector)``).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape (k, detector, detector), uint16
        Clipped to 0..65535 like a 16-bit counting detector (as the kinematic engine).
    """
    from scipy import ndimage

    det = detector
    centre = det // 2 + cache_margin(det)
    rows, cols = np.indices((det, det), dtype=np.float64)
    out = np.empty((len(expected), det, det), dtype=np.uint16)
    for k, (r0, c0) in enumerate(np.asarray(origins, dtype=np.float64)):
        moved = ndimage.map_coordinates(expected[k], [rows - r0 + centre, cols - c0 + centre],
                                        order=1, mode="constant")
        np.minimum(rng.poisson(np.maximum(moved, 0.0) * dose), np.iinfo(np.uint16).max,
                   out=out[k], casting="unsafe")
    return out


def cache_key(settings: dict, scan_index: int, model: MultisliceModel) -> str:
    """Hash of everything that determines a scan's noise-free patterns.

    ``settings`` is the series' settings dictionary; the dose, EDS dose,
    descan and workers do not change the physics and are left out.
    """
    physics = {k: v for k, v in settings.items()
               if k not in ("dose", "dose_variation", "eds_dose", "descan_px", "jitter_px", "workers")}
    text = json.dumps({"settings": physics, "scan": scan_index, "model": asdict(model),
                       "engine": ENGINE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_expected_scan(cache_file: Path, compute: Callable[[], tuple[np.ndarray, np.ndarray]]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Load a scan's noise-free patterns from ``cache_file``, or compute and store them."""
    if cache_file.is_file():
        try:
            with np.load(cache_file) as stored:
                return stored["patterns"], stored["adf"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable (e.g. from a killed run): computed again below
    patterns, adf = compute()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(cache_file, expected_bytes=patterns.nbytes + adf.nbytes) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, patterns=patterns, adf=adf)
    return patterns, adf


def adf_image(adf: np.ndarray, rng: np.random.Generator,
              model: MultisliceModel = MultisliceModel()) -> np.ndarray:
    """The HAADF map: ADF signal in units of :data:`ADF_REFERENCE`, with detector noise.

    Parameters
    ----------
    adf : ndarray, shape (Rx, Ry)
        Fraction of the beam on the annular detector.
    rng : numpy.random.Generator
    model : MultisliceModel

    Returns
    -------
    ndarray, shape (Rx, Ry), float32, non-negative
    """
    signal = adf / ADF_REFERENCE + rng.normal(0.0, model.haadf_noise, size=adf.shape)
    return np.maximum(signal, 0.0).astype(np.float32)
