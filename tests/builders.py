"""Small data the tests make themselves: scans, bundles, patterns and series.

Shared by several test modules (a test module imports from here, never from
another test module). Everything is deterministic for a given seed.
"""

from __future__ import annotations

import math
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.special import erfc

from stem2eds.formats.bundle import PixelCalibration, create_bundle

# -- training scans (tests/test_train.py and the tests that train) --
ELEMENTS = ("Ge", "Sb", "Te")


def make_raw_scan(path: Path, seed: int = 0, scan_shape=(12, 10), detector: int = 32,
                  haadf: bool = True) -> Path:
    """A small raw bundle whose diffraction depends on composition.

    Compositions are smooth random fields (rows sum to 1). Each pattern has a
    central beam disk (drifting across the scan, as descan does) and an
    amorphous ring whose radius grows with the Ge fraction and whose
    intensity grows with Te, with Poisson noise: a radial signal a model can
    learn, but not trivially.
    """
    rng = np.random.default_rng(seed)
    rx, ry = scan_shape
    rows, cols = np.mgrid[0:rx, 0:ry]
    fields = []
    for _ in ELEMENTS:
        kx, ky, ph = rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.7), rng.uniform(0, 6.3)
        fields.append(1.0 + 0.8 * np.sin(kx * rows + ph) * np.cos(ky * cols - ph))
    comp = np.stack(fields)
    comp /= comp.sum(axis=0, keepdims=True)                     # (E, Rx, Ry), sums to 1
    q = np.arange(detector) - (detector - 1) / 2
    origin = np.stack([0.02 * rows + 0.3, -0.015 * cols + 0.2], axis=-1)  # descan, px
    qr = q[None, None, :, None] - origin[..., 0, None, None]
    qc = q[None, None, None, :] - origin[..., 1, None, None]
    radius = np.hypot(qr, qc)                                    # (Rx, Ry, Q, Q)
    ring_r = (6.0 + 6.0 * comp[0])[..., None, None]
    ring_i = (30.0 + 60.0 * comp[2])[..., None, None]
    expected = ring_i * np.exp(-0.5 * ((radius - ring_r) / 1.5) ** 2)
    expected += 2000.0 * (radius < 2.5) + 3.0
    patterns = rng.poisson(expected).astype(np.uint16)
    z = np.array([32, 51, 52])[:, None, None]
    with create_bundle(path, scan_shape=scan_shape, detector_shape=(detector, detector),
                       dtype=np.uint16, elements=ELEMENTS, scan_name=path.stem,
                       calibration=PixelCalibration(1.0, 0.1, "nm", "1/nm", 200.0)) as b:
        b.write_patterns(0, patterns.reshape(-1, detector, detector))
        b.write_eds({el: comp[i] for i, el in enumerate(ELEMENTS)})
        if haadf:
            b.write_haadf((z * comp).sum(axis=0) * 10.0 + rng.normal(0, 0.2, scan_shape) + 5)
    return path


def small_config(**overrides):
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.config import TrainConfig

    base = dict(max_epochs=3, patience=5, batch_size=32, learning_rate=3e-3, threads=1,
                device="cpu", preprocess=PreprocessSettings(bin_factor=1, eds_kernel=3))
    base.update(overrides)
    return TrainConfig(**base)


# -- patterns and bundles for preprocessing --
def make_patterns(origins, q=128, disk_radius=10.0, disk_counts=30.0, ring_radius=40.0,
                  ring_counts=2.0, n_spots=6, spot_counts=60.0, background=0.2, seed=0,
                  noise=True):
    """(n, q, q) patterns: disk (edge blur 0.8 px) at each origin, ring, Bragg spots, Poisson."""
    rng = np.random.default_rng(seed)
    origins = np.asarray(origins, float)
    n = len(origins)
    rr = np.arange(q, dtype=float)[None, :, None] - origins[:, 0, None, None]
    cc = np.arange(q, dtype=float)[None, None, :] - origins[:, 1, None, None]
    d = np.hypot(rr, cc)
    img = disk_counts * 0.5 * erfc((d - disk_radius) / (np.sqrt(2) * 0.8))
    ring_counts = np.asarray(ring_counts, float).reshape(-1, 1, 1)  # scalar or one per pattern
    img += ring_counts * np.exp(-0.5 * ((d - ring_radius) / 4.0) ** 2) + background
    for _ in range(n_spots):
        ang = rng.uniform(0, 2 * np.pi, n)
        rad = rng.uniform(disk_radius + 6, q / 2 - 8, n)
        img += spot_counts * np.exp(-0.5 * ((rr - (rad * np.cos(ang))[:, None, None]) ** 2
                                            + (cc - (rad * np.sin(ang))[:, None, None]) ** 2)
                                    / 1.5 ** 2)
    if not noise:
        return img.astype(np.float32)
    return rng.poisson(img).astype(np.uint16)


def descan(rx, ry, q):
    """Smooth (plane) origin drift across the scan, in detector px."""
    i, j = np.meshgrid(np.arange(rx), np.arange(ry), indexing="ij")
    return np.stack([q / 2 + 0.3 * i - 0.1 * j + 1.3, q / 2 - 0.2 * i + 0.25 * j - 0.7], -1)


def make_bundle(path, rx=12, ry=10, q=64, seed=0, elements=("Ge", "Sb", "Te"), **kw):
    rng = np.random.default_rng(seed)
    origins = descan(rx, ry, q)
    kw.setdefault("disk_radius", 6.0)
    kw.setdefault("disk_counts", 20.0)
    pats = make_patterns(origins.reshape(-1, 2), q=q, ring_radius=q * 0.3, n_spots=3,
                         spot_counts=2 * kw["disk_counts"], seed=seed, **kw)
    comp = rng.dirichlet(np.ones(len(elements)), size=(rx, ry)).transpose(2, 0, 1)
    with create_bundle(path, scan_shape=(rx, ry), detector_shape=(q, q), dtype=np.uint16,
                       elements=elements, calibration=PixelCalibration(1.0, 0.02, "nm", "1/nm")) as b:
        b.write_patterns(0, pats)
        b.write_eds(dict(zip(elements, comp.astype(np.float32))))
        b.write_haadf(pats.reshape(rx, ry, q, q).sum((2, 3)).astype(np.float32))
        b.write_maps("truth", dict(zip(elements, comp.astype(np.float32))))
        b.write_array("simulation/origin", origins)
    return origins, pats.reshape(rx, ry, q, q), comp.astype(np.float32)


# -- origins -------------------------------------------------------------------


# -- scan series for experiments --
SERIES_ELEMENTS = ("O", "Si", "Ge", "Sb", "Te")


def make_series(folder, n_scans=3, shape=(12, 10), detector=32, seed=0):
    """Small raw bundles: smooth composition fields -> simulated patterns, noisy EDS, HAADF, truth."""
    from stem2eds.simulate import simulate_patterns

    rng = np.random.default_rng(seed)
    rx, ry = shape
    paths = []
    for s in range(n_scans):
        field = ndimage.gaussian_filter(rng.normal(size=(5, rx, ry)), (0, 2, 2))
        comp = np.exp(3 * field)
        comp /= comp.sum(axis=0)
        patterns = simulate_patterns(comp.reshape(5, -1).T, np.full(rx * ry, 30.0),
                                     np.full((rx * ry, 2), detector / 2), rng,
                                     elements=SERIES_ELEMENTS, detector=detector, dose=2e4)
        path = folder / f"scan_{s:04d}.h5"
        with create_bundle(path, scan_shape=shape, detector_shape=(detector, detector),
                           dtype=np.uint16, elements=SERIES_ELEMENTS, scan_name=f"{s:04d}",
                           calibration=PixelCalibration(1.05, 1.16, "nm", "1/nm", 200.0)) as b:
            b.write_patterns(0, patterns)
            noisy = np.clip(comp + rng.normal(0, 0.02, comp.shape), 0, 1)
            b.write_eds(dict(zip(SERIES_ELEMENTS, noisy)))
            b.write_haadf(1.0 + 3.0 * comp[3] + 2.0 * comp[4])
            b.write_maps("truth", dict(zip(SERIES_ELEMENTS, comp)))
        paths.append(path)
    return paths


# -- planning ---------------------------------------------------------------------


# -- EDS spectrum images (tests/test_io_spectrum.py, tests/test_convert.py) --
SI_ELEMENTS = ["Ge", "O", "Si"]
SI_K_FACTORS = {"Ge": 1.6, "O": 2.0, "Si": 1.1}  # deliberately not 1: they must be applied
RESOLUTION_MNKA_EV = 130.0


def _fwhm_kev(energy_kev: float) -> float:
    """Detector peak FWHM at an energy (Fiori & Newbury, the model exspy uses)."""
    return math.sqrt(2.5 * (energy_kev - 5.8987) * 1000 + RESOLUTION_MNKA_EV**2) / 1000


def make_spectrum_image(atomic: np.ndarray, k_factors=SI_K_FACTORS, counts=1e5,
                        background=2.0, store_k=None):
    """An EDS_TEM spectrum image whose Ka lines follow Cliff-Lorimer exactly.

    Parameters
    ----------
    atomic : ndarray, shape (Rx, Ry, E)
        Atomic fractions of ``SI_ELEMENTS`` per position.

    Returns
    -------
    exspy EDSTEMSpectrum, data shape (Rx, Ry, channels)
    """
    import exspy

    weight = np.asarray(exspy.material.atomic_to_weight(
        [atomic[..., i] * 100 for i in range(len(SI_ELEMENTS))], SI_ELEMENTS)) / 100
    energy = np.arange(2048) * 0.01  # keV, 0..20.47
    data = np.full(atomic.shape[:2] + energy.shape, background)
    for i, element in enumerate(SI_ELEMENTS):
        line = exspy.material.elements[element].Atomic_properties.Xray_lines.Ka
        sigma = _fwhm_kev(line.energy_keV) / (2 * math.sqrt(2 * math.log(2)))
        # Cliff-Lorimer: C_a / C_b = k_ab I_a / I_b, so I_a is proportional to C_a / k_a
        area = counts * weight[i] / k_factors[element]
        peak = np.exp(-0.5 * ((energy - line.energy_keV) / sigma) ** 2) * 0.01 / (
            sigma * math.sqrt(2 * math.pi))
        data += area[..., None] * peak
    s = exspy.signals.EDSTEMSpectrum(data)
    axis = s.axes_manager.signal_axes[0]
    axis.scale, axis.offset, axis.units = 0.01, 0.0, "keV"
    s.set_microscope_parameters(beam_energy=200, energy_resolution_MnKa=RESOLUTION_MNKA_EV)
    s.add_elements(SI_ELEMENTS)
    s.add_lines([f"{e}_Ka" for e in SI_ELEMENTS])
    if store_k is not None:
        s.metadata.set_item("Sample.kfactors", [store_k[e] for e in SI_ELEMENTS])
    return s


# -- real vendor files (fetched by `make dev` from pinned package releases) --
_spec = importlib.util.spec_from_file_location(
    "stem2eds_vendor_fetch", Path(__file__).parent / "vendor" / "fetch.py")
fetch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch)


def vendor_file(name: str) -> Path:
    """Path of a pinned real file; skip the test when it has not been fetched."""
    path = fetch.cache_dir() / name
    if not path.is_file():
        pytest.skip(f"real vendor file {name} is not fetched (run `make dev` or "
                    "`python tests/vendor/fetch.py`)")
    return path


# -- an experiment folder for the report (tests/test_report*.py) --
def make_report_run(run: Path, shape=(14, 12), crop=(1, 13, 2, 11), detector: int = 32,
                    seed: int = 0, ood: bool = True, crystallinity: bool = True) -> dict:
    """A run folder as ``stem2eds experiment`` leaves it, without training.

    A raw bundle (``make_raw_scan``) in ``run/../raw``; ``predictions/s1.h5``
    (with ``eds_std``, ``haadf`` and, when ``ood``, an ``ood`` map),
    ``predictions/calibrated/s1.h5``, ``targets/s1.h5`` on the cropped grid,
    ``anomaly/s1.h5`` (with ``crystallinity``/``crystalline`` when asked) and a
    ``metrics.json``. Returns the arrays written (maps on the cropped grid)
    and the raw patterns (Rx, Ry, Q, Q).
    """
    import json

    from stem2eds.formats.bundle import open_bundle
    from stem2eds.formats.prediction import write_prediction_file
    from stem2eds.formats.targets_file import Targets, write_targets

    rng = np.random.default_rng(seed)
    raw = run.parent / "raw" / "s1.h5"
    raw.parent.mkdir(parents=True, exist_ok=True)
    make_raw_scan(raw, seed=seed, scan_shape=shape, detector=detector)
    with open_bundle(raw) as scan:
        patterns = np.concatenate([b for _, b in scan.iter_patterns()]).reshape(
            *shape, detector, detector)
        measured_full = scan.eds(list(ELEMENTS))
    r0, r1, c0, c1 = crop
    grid = (r1 - r0, c1 - c0)
    measured = measured_full[:, r0:r1, c0:c1].astype(np.float32)
    calibrated = np.clip(measured + rng.normal(0, 0.03, measured.shape), 0, 1).astype(np.float32)
    predicted = (calibrated * 0.9 + 0.02).astype(np.float32)
    std = rng.uniform(0.005, 0.03, measured.shape).astype(np.float32)
    maps = {"measured": measured, "calibrated": calibrated, "predicted": predicted,
            "std": std, "patterns": patterns, "crop": crop,
            "ood": rng.uniform(0, 3, grid).astype(np.float32) if ood else None,
            "crystallinity": rng.uniform(0, 1, grid).astype(np.float32)
            if crystallinity else None}
    attrs = {"scan_name": "s1", "source": str(raw.resolve())}
    (run / "predictions").mkdir(parents=True)
    write_prediction_file(run / "predictions" / "s1.h5", ELEMENTS, predicted, eds_std=std,
                          haadf=rng.uniform(5, 9, grid).astype(np.float32), attrs=attrs,
                          extra={"ood": maps["ood"]} if ood else None)
    (run / "predictions" / "calibrated").mkdir()
    write_prediction_file(run / "predictions" / "calibrated" / "s1.h5", ELEMENTS, calibrated,
                          attrs=attrs)
    (run / "targets").mkdir()
    write_targets(run / "targets" / "s1.h5",
                  Targets(measured, None, None, np.ones(grid, bool), np.zeros(grid, bool), crop),
                  ELEMENTS, "s1", raw)
    (run / "anomaly").mkdir()
    from stem2eds.formats.anomaly_file import AnomalyFile, write_anomaly

    score = rng.normal(size=grid).astype(np.float32)
    write_anomaly(run / "anomaly" / "s1.h5", AnomalyFile(
        score=score, flagged=score > 3.0, threshold=3.0,
        crystallinity=maps["crystallinity"] if crystallinity else None,
        crystalline=maps["crystallinity"] > 0.5 if crystallinity else None))
    per = {m: {el: 0.5 for el in ELEMENTS} for m in ("pearson", "mae", "percent_error", "r2")}
    summary = {m: {el: {"mean": 0.5, "std": 0.0, "n": 1} for el in ELEMENTS} for m in per}
    doc = {"strategy": "extrapolate", "elements": list(ELEMENTS), "train_scans": ["s0"],
           "test_scans": ["s1"], "split": "extrapolate", "model": "radial",
           "scans": {"s1": per}, "summary": summary,
           "calibrated": {"scans": {"s1": per}, "summary": summary},
           "baseline": {"model": "ridge", "summary": summary}, "figures": []}
    (run / "metrics.json").write_text(json.dumps(doc))
    return maps


# -- detector setups (tests/test_transfer.py, tests/test_ood.py, tests/test_dose.py) --
def simulate_setup(folder: Path, seed: int = 7, n_scans: int = 2, detector: int = 64,
                   **overrides) -> list[Path]:
    """A small kinematic series (12x10 positions, ``detector`` px) with other settings.

    ``overrides`` are :class:`stem2eds.simulate.series.SimulationSettings`
    fields, e.g. ``q_pixel_scale=1.25`` (another camera length), ``binning=2``
    or ``dose=4e5``; the same seed gives the same specimen whatever they are.
    """
    from stem2eds.simulate.series import SimulationSettings, simulate_series

    settings = SimulationSettings(n_scans=n_scans, scan_shape=(12, 10), detector=detector,
                                  seed=seed, workers=1, **overrides)
    return simulate_series(folder, settings)


def assert_command_predicts_as_in_process(run_cli, run, scan, folder: Path) -> None:
    """``python -m stem2eds predict`` (a fresh process: it forks its origin measurement)
    writes the same EDS maps as ``main(argv)`` in this process (which does not fork)."""
    import subprocess
    import sys

    import h5py

    code, _, err = run_cli("predict", run, scan, "--out", folder / "here.h5", "-q")
    assert code == 0, err
    done = subprocess.run([sys.executable, "-m", "stem2eds", "predict", str(run), str(scan),
                           "--out", str(folder / "forked.h5"), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with h5py.File(folder / "here.h5") as a, h5py.File(folder / "forked.h5") as b:
        for element in a["eds"]:
            np.testing.assert_array_equal(a["eds"][element][()], b["eds"][element][()])
