"""Preprocessing on patterns from the project's physics simulator (known origins, Bragg disks)."""

from __future__ import annotations

import numpy as np
import pytest

from stem2eds.formats.bundle import PixelCalibration, create_bundle, open_bundle
from stem2eds.preprocess import PreprocessSettings, find_origins, preprocess_bundle

simulate = pytest.importorskip("stem2eds.simulate")

GST = {"O": 0.02, "Si": 0.03, "Ge": 0.21, "Sb": 0.21, "Te": 0.53}


def simulated(origins, dose, grain_fraction=0.5, seed=0):
    """uint16 256x256 patterns of a 30 nm GST film; a fraction crosses a 12 nm rock-salt grain."""
    rng = np.random.default_rng(seed)
    n = len(origins)
    comp = np.tile([GST[e] for e in simulate.ELEMENTS], (n, 1))
    grain = rng.random(n) < grain_fraction
    from stem2eds.simulate.crystal import ZONE_AXES

    return simulate.simulate_patterns(
        comp, np.full(n, 30.0), origins, rng, elements=simulate.ELEMENTS, detector=256,
        dose=dose, grain_thickness=np.where(grain, 12.0, 0.0),
        grain_zone=rng.integers(len(ZONE_AXES), size=n),
        grain_rotation=rng.uniform(0, np.pi, n), grain_tilt=rng.normal(0, 2e-3, (n, 2))), grain


@pytest.mark.parametrize("dose", [2e3, 2e4])
def test_origin_error_on_simulated_patterns_with_bragg_disks(dose):
    rng = np.random.default_rng(11)
    truth = 128 + rng.uniform(-8, 8, (120, 2))
    patterns, grain = simulated(truth, dose)
    # Bragg disks are present: the grain patterns have much more signal off the
    # central disk than the amorphous ones
    assert grain.sum() >= 40
    found = find_origins(patterns)
    err = np.hypot(*(found.origins - truth).T)
    print(f"simulator, dose {dose:.0f} e/pattern ({patterns.sum((1, 2)).mean():.0f} counts): "
          f"median origin error {np.median(err):.3f} px (with grain {np.median(err[grain]):.3f}),"
          f" max {err.max():.3f} px, probe radius {found.probe_radius:.2f} px")
    assert np.median(err) < 0.2
    assert np.median(err[grain]) < 0.2
    assert err.max() < 0.5


def test_preprocess_simulated_bundle_tracks_descan(tmp_path):
    rx, ry = 12, 10
    i, j = np.meshgrid(np.arange(rx), np.arange(ry), indexing="ij")
    rng = np.random.default_rng(5)
    descan = np.stack([127.0 + 0.25 * i - 0.15 * j, 129.5 - 0.1 * i + 0.3 * j], -1)
    truth = descan + rng.normal(0, 0.1, descan.shape)  # jitter the plane fit cannot follow
    patterns, _ = simulated(truth.reshape(-1, 2), 5e3, seed=2)
    src = tmp_path / "raw.h5"
    with create_bundle(src, scan_shape=(rx, ry), detector_shape=(256, 256), dtype=np.uint16,
                       elements=list(GST), calibration=PixelCalibration(1.053, 0.1451, "nm", "1/nm")
                       ) as b:
        b.write_patterns(0, patterns)
        b.write_eds({e: np.full((rx, ry), v, np.float32) for e, v in GST.items()})
    out = tmp_path / "pre.h5"
    settings = preprocess_bundle(src, out, PreprocessSettings(), quiet=True)
    with open_bundle(out) as pre:
        fitted = pre.file["calibration/origin_fit"][()]
        resid = np.hypot(*(fitted - descan).reshape(-1, 2).T)
        print(f"plane fit vs true descan: rms {np.sqrt(np.mean(resid ** 2)):.3f} px; probe "
              f"radius {settings.probe_radius:.2f} px, beam radius {settings.beam_radius:.2f}")
        assert np.sqrt(np.mean(resid ** 2)) < 0.1
        assert settings.probe_radius == pytest.approx(3.0, abs=0.5)
        d = pre.diffraction[()]
        # in [0, 1] except where a pattern brighter than the median exceeds 1: there
        # the ceiling follows its mean (preprocess.patterns.normalise), near 1 on this film
        assert d.shape == (12, 10, 64, 64) and d.min() >= 0 and d.max() <= 2
        assert pre.calibration.q_pixel_size == pytest.approx(4 * 0.1451)
    # the central beam is gone: compare counts with the same preprocessing keeping it
    kept = tmp_path / "kept.h5"
    kept_settings = preprocess_bundle(src, kept, PreprocessSettings(beam_radius=0.0,
                                                                    scale_percentile=100.0),
                                      quiet=True)
    with open_bundle(kept) as k:
        centre_kept = k.diffraction[:, :, 31:33, 31:33].sum() * kept_settings.scale
    centre_removed = d[:, :, 31:33, 31:33].sum() * settings.scale
    print(f"counts in the 2x2 central binned pixels: {centre_removed:.0f} with beam removal, "
          f"{centre_kept:.0f} without")
    assert centre_removed < 0.2 * centre_kept


def test_simulated_origins_are_not_called_noise(tmp_path):
    """The check that refuses beam-less scans (origins as noise) passes simulated ones."""
    from builders import make_raw_scan

    from stem2eds.formats.bundle import open_bundle
    from stem2eds.preprocess.origin import origin_problem
    from stem2eds.preprocess.pipeline import measure_origins
    from stem2eds.preprocess.settings import PreprocessSettings

    with open_bundle(make_raw_scan(tmp_path / "sim.h5", seed=1)) as scan:
        found = measure_origins(scan, PreprocessSettings())
    assert found.fit.rms_residual < 0.5
    assert origin_problem(found.measured, found.fit, found.probe_radius) is None


def test_noise_origins_are_refused():
    import numpy as np

    from stem2eds.preprocess.origin import fit_origins, origin_problem

    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 256, (5, 5, 2))  # "origins" where noise peaks
    assert "origins are noise" in origin_problem(noise, fit_origins(noise), 8.0)
    missing = np.full((5, 5, 2), np.nan)
    missing[0, :2] = 128.0
    assert "found in only 2 of 25" in origin_problem(missing, fit_origins(missing), 8.0)
    few = np.full((5, 5, 2), np.nan)
    few[:3, :3] = 128.0  # 9 of 25: a low-dose scan, still centred
    assert origin_problem(few, fit_origins(few), 8.0) is None
