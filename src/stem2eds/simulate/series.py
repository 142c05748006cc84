"""The driver: simulate a series of scans and write one scan bundle per scan.

Each scan bundle holds, besides what a converted real scan holds
(``diffraction`` uint16 (Rx, Ry, Qx, Qy), ``eds/<El>``, ``haadf``), the
ground truth that later stages are tested against:

* ``truth/<El>`` (Rx, Ry) float32: noise-free atomic fractions;
* ``simulation/origin`` (Rx, Ry, 2) float32: true beam centre (row, col), px;
* ``simulation/grain_mask`` (Rx, Ry) uint8: 1 where a crystalline grain adds Bragg disks;
* ``simulation/grain_thickness`` (Rx, Ry) float32: crystal thickness, nm;
* ``simulation/thickness`` (Rx, Ry) float32: film thickness, nm.

Patterns are generated one block of scan rows at a time (in worker threads:
numpy releases the GIL in the Poisson sampler) and written straight into the
bundle, so memory does not grow with the scan. Every random draw comes from a
generator seeded by (seed, scan, purpose[, row block]), so the same settings
give the same bytes whatever the number of workers.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..formats.bundle import PixelCalibration, create_bundle
from ..errors import InputError
from ..progress import track
from .composition import CompositionModel, composition_maps, latent_fields, scan_window
from .diffraction import (REFERENCE_DETECTOR, default_probe_radius, default_q_pixel_size,
                          simulate_patterns)
from .eds import simulate_eds
from .haadf import haadf_image
from .specimen import Grains, descan_origins, place_grains, thickness_map

ELEMENTS = ("O", "Si", "Ge", "Sb", "Te")
#: Bumped whenever the physics changes the output for the same settings, so that
#: cached simulations (e.g. the demo's) are not reused across versions.
SIMULATOR_VERSION = 2
#: Creation time written into simulated bundles: fixed, so that same seed gives same bytes.
FIXED_CREATED = "2000-01-01T00:00:00+00:00"
R_PIXEL_NM = 1.053

# Independent random streams per scan (SeedSequence spawn keys).
_STREAM_SERIES, _STREAM_SPECIMEN, _STREAM_EDS, _STREAM_HAADF, _STREAM_PATTERNS = range(5)
_STREAM_MULTISLICE = 5
#: Where the multislice engine caches noise-free patterns, inside the output folder.
MULTISLICE_CACHE = ".multislice-cache"


@dataclass(frozen=True)
class SimulationSettings:
    """Everything that defines a simulated series (stored in each bundle's provenance).

    Attributes
    ----------
    n_scans : int
        Number of scans (bundles), named ``scan_<first_scan + k>``.
    scan_shape : (int, int)
        Probe positions (Rx, Ry): scan rows, scan columns.
    detector : int
        Detector size in px (square); Q pixel size scales to keep the paper's
        field of view (0.1451 1/nm at 256 px).
    dose : float
        Electrons per diffraction pattern (mean over the series; the beam
        current varies from scan to scan by ``dose_variation``).
    dose_variation : float
        Relative standard deviation of the beam current from scan to scan
        (each scan gets its own dose; recorded in its provenance).
    seed : int
        Seed of every random draw.
    first_scan : int
        Number of the first scan (the paper's series starts at 0033).
    eds_dose : float
        X-ray counts per nm of film for a unit-yield pure element (sets EDS noise).
    thickness_nm : float
        Mean film thickness, nm.
    descan_px : float
        Beam-centre movement across a scan, px at 256 px (scaled with ``detector``).
    jitter_px : float
        Per-pattern beam-centre jitter, px at 256 px.
    grain_scan_fraction : float
        Fraction of the scans that contain crystalline grains (0: none, 1: all;
        in between, at least one scan with and one without when there are two
        scans or more).
    max_grains : int
        Most grains per scan that has grains.
    energy_kev : float
        Beam energy, keV.
    workers : int
        Threads generating patterns (does not change the output).
    composition : CompositionModel
        Parameters of the composition fields.
    engine : {"kinematic", "multislice"}
        Physics of the patterns and HAADF: the fast kinematic model, or
        multislice through atomic models (abTEM; minutes per small scan,
        cached in the output folder; see docs/simulate.md).
    q_pixel_scale : float
        Detector pixel in q relative to the default field of view (1.25: 25 %
        more 1/nm per pixel, as from a camera length 1/1.25 as long). The
        beam disk and descan, fixed angles, shrink in pixels accordingly.
    binning : int
        Hardware binning: patterns are recorded on ``detector`` px and summed
        in ``binning`` x ``binning`` blocks, so the bundle's detector is
        ``detector / binning`` px at ``binning`` times the q pixel size.
    """

    n_scans: int = 6
    scan_shape: tuple[int, int] = (110, 45)
    detector: int = 256
    dose: float = 2e5
    dose_variation: float = 0.05
    seed: int = 0
    first_scan: int = 33
    eds_dose: float = 10.0
    thickness_nm: float = 30.0
    descan_px: float = 4.0
    jitter_px: float = 0.15
    grain_scan_fraction: float = 0.5
    max_grains: int = 3
    energy_kev: float = 200.0
    workers: int = 2
    composition: CompositionModel = field(default_factory=CompositionModel)
    q_pixel_scale: float = 1.0
    binning: int = 1
    engine: str = "kinematic"

    def __post_init__(self):
        rx, ry = self.scan_shape
        checks = [(self.n_scans >= 1, "n_scans must be at least 1"),
                  (rx >= 1 and ry >= 1, "scan_shape must be positive"),
                  (16 <= self.detector <= 4096, "detector must be 16..4096 px"),
                  (self.dose > 0, "dose must be positive (electrons per pattern)"),
                  (0 <= self.dose_variation < 0.5, "dose_variation must be in [0, 0.5)"),
                  (self.eds_dose > 0, "eds_dose must be positive"),
                  (self.thickness_nm > 0, "thickness_nm must be positive (nm)"),
                  (0 <= self.grain_scan_fraction <= 1, "grain_scan_fraction must be in [0, 1]"),
                  (self.max_grains >= 1, "max_grains must be at least 1"),
                  (self.first_scan >= 0, "first_scan must be non-negative"),
                  (self.workers >= 1, "workers must be at least 1"),
                  (0.25 <= self.q_pixel_scale <= 4, "q_pixel_scale must be in 0.25..4"),
                  (self.binning in (1, 2, 4, 8) and self.detector % self.binning == 0,
                   "binning must be 1, 2, 4 or 8 and divide detector"),
                  (self.engine in ("kinematic", "multislice"),
                   f"`engine` must be kinematic or multislice, got {self.engine!r}")]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict:
        """The settings that determine the output (``workers`` does not), with the simulator version."""
        d = asdict(self)
        d["scan_shape"] = list(self.scan_shape)
        del d["workers"]
        d["simulator_version"] = SIMULATOR_VERSION
        return d

    @property
    def q_pixel_size(self) -> float:
        """Detector pixel in 1/nm, as recorded (after ``binning``)."""
        return default_q_pixel_size(self.detector) * self.q_pixel_scale * self.binning

    @property
    def recorded_detector(self) -> int:
        """Detector side of the bundle, px (after ``binning``)."""
        return self.detector // self.binning

    def scan_names(self) -> list[str]:
        return [f"scan_{self.first_scan + k:04d}" for k in range(self.n_scans)]


def _rng(settings: SimulationSettings, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([settings.seed, *key]))


def _grain_counts(settings: SimulationSettings) -> list[int]:
    """How many grains each scan has: some scans crystalline, others not."""
    rng = _rng(settings, _STREAM_SERIES, 1)
    n = settings.n_scans
    n_with = int(round(settings.grain_scan_fraction * n))
    if n >= 2 and 0 < settings.grain_scan_fraction < 1:
        n_with = min(max(n_with, 1), n - 1)
    with_grains = set(rng.choice(n, size=n_with, replace=False).tolist()) if n_with else set()
    return [int(rng.integers(1, settings.max_grains + 1)) if k in with_grains else 0
            for k in range(n)]


def simulate_scan(path: str | Path, settings: SimulationSettings, scan_index: int,
                  latent: dict[str, np.ndarray], grain_count: int, quiet: bool = True) -> Path:
    """Simulate scan ``scan_index`` of the series and write it as a bundle at ``path``.

    Parameters
    ----------
    path : path-like
        Output ``.h5`` file (written atomically).
    settings : SimulationSettings
    scan_index : int
        0-based index in the series.
    latent : dict
        Microstructure shared by the series (:func:`.composition.latent_fields`),
        plus ``"thickness"``: the film thickness (nm) over the same area.
    grain_count : int
        Number of crystalline grains in this scan.
    quiet : bool
        No progress output.

    Returns
    -------
    Path
    """
    path = Path(path)
    rx, ry = settings.scan_shape
    det = settings.detector
    scale = det / REFERENCE_DETECTOR
    fields = {k: v for k, v in latent.items() if k != "thickness"}
    truth = composition_maps(fields, settings.scan_shape, scan_index, settings.n_scans,
                             ELEMENTS, settings.composition)                      # (E, Rx, Ry)
    spec_rng = _rng(settings, _STREAM_SPECIMEN, scan_index)
    thickness = scan_window(latent["thickness"], settings.scan_shape, scan_index,
                            settings.composition.drift)
    if settings.engine == "multislice":
        from .multislice import scan_thickness
        thickness = scan_thickness(thickness, settings.thickness_nm,
                                   _rng(settings, _STREAM_MULTISLICE, scan_index))
    # descan and jitter are angles: fewer pixels when a pixel spans more q
    origins = descan_origins(settings.scan_shape, det, spec_rng,
                             settings.descan_px * scale / settings.q_pixel_scale,
                             settings.jitter_px * scale / settings.q_pixel_scale)
    grains = place_grains(settings.scan_shape, thickness, spec_rng, grain_count,
                          r_pixel_nm=R_PIXEL_NM)
    dose = settings.dose * float(np.clip(1.0 + settings.dose_variation * spec_rng.standard_normal(),
                                         0.5, 1.5))
    eds = simulate_eds(truth, thickness, ELEMENTS, settings.eds_dose,
                       _rng(settings, _STREAM_EDS, scan_index))
    comp_flat = truth.reshape(len(ELEMENTS), -1).T
    rows_per_block = max(1, 128 // ry)
    if settings.engine == "multislice":
        haadf, multislice_block = _multislice_physics(path, settings, scan_index, truth, thickness,
                                                      grains, origins, dose, quiet)
    else:
        haadf = haadf_image(truth, thickness, ELEMENTS, _rng(settings, _STREAM_HAADF, scan_index),
                            grain_thickness=grains.thickness)

    def block(i0: int) -> tuple[int, np.ndarray]:
        sl = slice(i0 * ry, min(i0 + rows_per_block, rx) * ry)
        if settings.engine == "multislice":
            return sl.start, _binned(multislice_block(sl, _rng(settings, _STREAM_PATTERNS, scan_index,
                                                            i0)), settings.binning)
        patterns = simulate_patterns(
            comp_flat[sl], thickness.reshape(-1)[sl], origins.reshape(-1, 2)[sl],
            _rng(settings, _STREAM_PATTERNS, scan_index, i0),
            elements=ELEMENTS, detector=det, dose=dose, energy_kev=settings.energy_kev,
            **_camera(settings),
            grain_thickness=grains.thickness.reshape(-1)[sl], grain_zone=grains.zone.reshape(-1)[sl],
            grain_rotation=grains.rotation.reshape(-1)[sl], grain_tilt=grains.tilt.reshape(-1, 2)[sl])
        return sl.start, _binned(patterns, settings.binning)

    provenance = {"command": "simulate", "simulator": f"stem2eds.simulate ({settings.engine})",
                  "settings": settings.to_dict(), "scan_index": scan_index,
                  "grain_count": grain_count, "dose": dose, "created": FIXED_CREATED}
    calibration = PixelCalibration(r_pixel_size=R_PIXEL_NM, r_pixel_unit="nm",
                              q_pixel_size=settings.q_pixel_size, q_pixel_unit="1/nm",
                              beam_energy_kev=settings.energy_kev)
    starts = list(range(0, rx, rows_per_block))
    rec = settings.recorded_detector
    with create_bundle(path, scan_shape=settings.scan_shape, detector_shape=(rec, rec),
                       dtype=np.uint16, elements=ELEMENTS, calibration=calibration,
                       provenance=provenance, kind="raw") as out:
        _map_in_order(block, starts, settings.workers,
                      lambda result: out.write_patterns(*result),
                      description=f"simulating {path.stem}", quiet=quiet)
        out.write_eds({e: eds[i] for i, e in enumerate(ELEMENTS)})
        out.write_haadf(haadf)
        out.write_maps("truth", {e: truth[i] for i, e in enumerate(ELEMENTS)})
        sim = out.file.require_group("simulation")
        sim.attrs["description"] = "ground truth of the simulator"
        for name, data, unit in (("origin", origins, "px (detector row, column)"),
                                 ("grain_mask", grains.mask, "1 = crystalline grain"),
                                 ("grain_thickness", grains.thickness.astype(np.float32), "nm"),
                                 ("thickness", thickness.astype(np.float32), "nm")):
            ds = sim.create_dataset(name, data=data, track_times=False)
            ds.attrs["unit"] = unit
    return path


def _multislice_physics(path: Path, settings: SimulationSettings, scan_index: int,
                        truth: np.ndarray, thickness: np.ndarray, grains: Grains, origins: np.ndarray,
                        dose: float, quiet: bool) -> tuple[np.ndarray, Callable]:
    """The multislice engine's HAADF and pattern-block function for one scan.

    Noise-free patterns come from (or go to) the cache in the output folder;
    the descan, dose and Poisson noise are applied per block.
    """
    from . import multislice as ms

    # the grid is the detector before hardware binning (applied per block)
    grid = ms.Grid(settings.detector, settings.q_pixel_size / settings.binning,
                   settings.energy_kev, ELEMENTS,
                   ms.MultisliceModel())
    key = ms.cache_key(settings.to_dict(), scan_index, grid.model)
    cache_file = path.parent / MULTISLICE_CACHE / f"{path.stem}-{key}.npz"
    expected, adf = ms.cached_expected_scan(cache_file, lambda: ms.expected_scan(
        truth, thickness, grains, grid, (settings.seed, _STREAM_MULTISLICE, scan_index),
        workers=settings.workers,
        progress=lambda items: track(items, description=f"multislice {path.stem}", quiet=quiet)))
    haadf = ms.adf_image(adf, _rng(settings, _STREAM_HAADF, scan_index), grid.model)
    flat_origins = origins.reshape(-1, 2)

    def block(sl: slice, rng: np.random.Generator) -> np.ndarray:
        return ms.noisy_patterns(expected[sl], flat_origins[sl], dose, settings.detector, rng)

    return haadf, block


def _camera(settings: SimulationSettings) -> dict:
    """q pixel size (1/nm) and beam disk radius (px) before binning, for ``simulate_patterns``."""
    if settings.q_pixel_scale == 1.0:
        return {}  # the defaults, bit for bit
    return {"q_pixel_size": default_q_pixel_size(settings.detector) * settings.q_pixel_scale,
            "probe_radius": default_probe_radius(settings.detector) / settings.q_pixel_scale}


def _binned(patterns: np.ndarray, binning: int) -> np.ndarray:
    """Sum ``binning`` x ``binning`` pixel blocks of (n, Q, Q) uint16 counts, clipped to 16 bits."""
    if binning == 1:
        return patterns
    n, q, _ = patterns.shape
    b = binning
    summed = patterns.reshape(n, q // b, b, q // b, b).sum(axis=(2, 4), dtype=np.uint32)
    return np.minimum(summed, np.iinfo(np.uint16).max).astype(np.uint16)


def _map_in_order(func: Callable, items: Sequence, workers: int, consume: Callable,
                  description: str, quiet: bool) -> None:
    """Apply ``func`` to ``items`` in threads, consuming results in order, few in flight."""
    if workers <= 1:
        for item in track(items, description=description, quiet=quiet):
            consume(func(item))
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        queue = iter(items)
        for item in queue:
            pending.append(pool.submit(func, item))
            if len(pending) >= 2 * workers:
                break
        try:
            for _ in track(range(len(items)), description=description, quiet=quiet):
                consume(pending.pop(0).result())
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append(pool.submit(func, nxt))
        except BaseException:
            # Do not finish blocks nobody will write (e.g. after Ctrl-C or a full disk).
            for future in pending:
                future.cancel()
            raise


def simulate_series(out_dir: str | Path, settings: SimulationSettings = SimulationSettings(),
                    quiet: bool = True) -> list[Path]:
    """Simulate a scan series and write ``out_dir/scan_<NNNN>.h5``, one bundle per scan.

    Parameters
    ----------
    out_dir : path-like
        Output folder (created if missing).
    settings : SimulationSettings
    quiet : bool
        No progress output.

    Returns
    -------
    list of Path
        The bundles, in scan order.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is not a folder", path=out)
    out.mkdir(parents=True, exist_ok=True)
    latent = latent_fields(settings.scan_shape, settings.n_scans,
                           _rng(settings, _STREAM_SERIES, 0), settings.composition)
    latent["thickness"] = thickness_map(next(iter(latent.values())).shape,
                                        _rng(settings, _STREAM_SERIES, 2), settings.thickness_nm,
                                        r_pixel_nm=R_PIXEL_NM)
    counts = _grain_counts(settings)
    return [simulate_scan(out / f"{name}.h5", settings, k, latent, counts[k], quiet=quiet)
            for k, name in enumerate(settings.scan_names())]


def settings_from_provenance(text: str) -> SimulationSettings:
    """Rebuild :class:`SimulationSettings` from a bundle's provenance JSON.

    Raises
    ------
    ValueError
        If the bundle was written by another version of the simulator (its
        contents would differ for the same settings).
    """
    d = dict(json.loads(text)["settings"])
    version = d.pop("simulator_version", None)
    if version != SIMULATOR_VERSION:
        raise ValueError(f"simulated by simulator version {version}, this is {SIMULATOR_VERSION}")
    d["scan_shape"] = tuple(d["scan_shape"])
    d["composition"] = CompositionModel(**d["composition"])
    return replace(SimulationSettings(), **d)
