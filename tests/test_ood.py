"""Out-of-distribution score: features, the reference, the prediction file, the CLI warning."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from stem2eds.analysis.ood import (OodMonitor, OodReference, first_ring, fit_reference,
                                   ring_features)
from builders import simulate_setup, small_config


def _rings_pattern(n: int, q: int = 32, scale: float = 1.0, ring: float = 8.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.arange(q) - (q - 1) / 2
    r = np.hypot(x[:, None], x[None, :])
    expected = scale * (0.05 + np.exp(-0.5 * ((r - ring) / 2.0) ** 2))
    return rng.poisson(200 * np.broadcast_to(expected, (n, q, q))).astype(np.float32) / 200


def test_ring_features_cancel_the_level_and_skip_the_beam():
    patterns = _rings_pattern(4)
    feats = ring_features(patterns, first=3)
    assert feats.shape == (4, 22 - 3)  # 22 rings to the corners of 32x32
    np.testing.assert_allclose(feats.mean(axis=1), 0, atol=1e-9)
    # equal up to the 1e-5 floor under the log
    np.testing.assert_allclose(ring_features(3.0 * patterns, first=3), feats, atol=1e-3)
    assert first_ring(beam_radius=3.66, bin_factor=4) == 2


def test_reference_flags_a_shifted_distribution_only():
    rng = np.random.default_rng(1)
    cov = np.diag(np.linspace(0.5, 2.0, 6))
    train, held, like = (rng.multivariate_normal(np.zeros(6), cov, size=n)
                         for n in (2000, 500, 300))
    ref = fit_reference(train, held, first=2)
    assert 3.5 < ref.threshold < 5.0  # chi with 6 degrees of freedom: 99th percentile 4.1
    assert ref.heldout_median == pytest.approx(np.sqrt(5.35), rel=0.1)
    again = OodReference.from_arrays(ref.to_arrays())
    np.testing.assert_allclose(again.score(like), ref.score(like))
    assert again.first == 2
    monitor = OodMonitor(ref, (15, 20))
    monitor._scores[:] = ref.score(like)
    assert not monitor.result().outside
    monitor._scores[:] = ref.score(like + 2.5)
    result = monitor.result()
    assert result.outside and result.positions.shape == (15, 20)
    assert "outside the training scans' distribution" in result.message()


def test_prediction_file_round_trips_the_ood_map(tmp_path):
    from stem2eds.formats.prediction import open_prediction_writer, read_prediction

    path = tmp_path / "p.h5"
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    with open_prediction_writer(path, ["Ge", "Te"], haadf=False, shape=(3, 4)) as writer:
        writer.write_flat(0, np.full((12, 2), 0.5, np.float32))
        writer.write_ood(scores, {"ood_score": 5.5, "ood_threshold": 9.0, "ood_outside": False})
    pred = read_prediction(path)
    np.testing.assert_array_equal(pred.ood, scores)
    assert pred.attrs["ood_threshold"] == 9.0 and not pred.attrs["ood_outside"]
    assert "ood" not in pred.extra
    with h5py.File(path, "r") as f:
        assert f["ood"].dtype == np.float32


@pytest.fixture(scope="module")
def setups(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("ood_setups")
    kw = {"n_scans": 3, "detector": 128}
    return {"same": simulate_setup(root / "same", **kw),
            "longer_q": simulate_setup(root / "q125", q_pixel_scale=1.25, **kw)}


@pytest.fixture(scope="module")
def run_dir(setups, tmp_path_factory) -> Path:
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.fit import train

    config = small_config(max_epochs=3, preprocess=PreprocessSettings(bin_factor=4,
                                                                      eds_kernel=3))
    return train(setups["same"][:2], tmp_path_factory.mktemp("ood_run") / "run", config,
                 quiet=True)


@pytest.mark.slow
def test_training_stores_the_reference(run_dir):
    from stem2eds.formats.rundir import RunDir

    arrays = RunDir(run_dir).read_ood()
    ref = OodReference.from_arrays(arrays)
    assert ref.threshold > ref.heldout_median > 0
    assert ref.mean.shape == (22 - ref.first,)  # 32x32 preprocessed patterns: 22 rings
    assert RunDir(run_dir).ood_npz in RunDir(run_dir).products()


@pytest.mark.slow
def test_cli_warns_on_an_untransferred_camera_length_only(run_cli, run_dir, setups, tmp_path):
    from stem2eds.formats.prediction import read_prediction

    code, _, err = run_cli("predict", run_dir, setups["same"][2], "--out", tmp_path / "a.h5")
    assert code == 0 and "warning" not in err
    held_out = read_prediction(tmp_path / "a.h5")
    assert held_out.ood.shape == (12, 10) and np.isfinite(held_out.ood).all()
    assert held_out.attrs["ood_score"] < held_out.attrs["ood_threshold"]
    code, _, err = run_cli("predict", run_dir, setups["longer_q"][2], "--out",
                           tmp_path / "b.h5", "--no-transfer", "--quiet")
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 1 and "outside the training" in lines[0]
    assert lines[0].startswith("stem2eds predict: warning:")  # --quiet keeps warnings
    assert read_prediction(tmp_path / "b.h5").attrs["ood_outside"]
    code, _, err = run_cli("predict", run_dir, setups["longer_q"][2], "--out", tmp_path / "c.h5")
    assert code == 0 and "warning" not in err


@pytest.mark.slow
def test_libertem_engine_scores_like_the_stem2eds_engine(run_cli, run_dir, setups, tmp_path):
    """The same OOD map and verdict from the LiberTEM engine; a file that carries no q
    calibration (here .npy frames of another camera length) is predicted as recorded and
    warned about."""
    pytest.importorskip("libertem")
    import h5py

    from stem2eds.formats.prediction import read_prediction

    for engine, out in (("stem2eds", "s.h5"), ("libertem", "l.h5")):
        code, _, err = run_cli("predict", run_dir, setups["same"][2], "--out", tmp_path / out,
                               "--engine", engine, "-q")
        assert code == 0 and err == "", err
    ref, got = read_prediction(tmp_path / "s.h5"), read_prediction(tmp_path / "l.h5")
    np.testing.assert_allclose(got.ood, ref.ood, rtol=1e-4, atol=1e-4)
    for key in ("ood_score", "ood_threshold", "ood_outside"):
        assert got.attrs[key] == pytest.approx(ref.attrs[key], rel=1e-4), key
    with h5py.File(setups["longer_q"][2], "r") as f:
        np.save(tmp_path / "other_q.npy", f["diffraction"][()])
    code, _, err = run_cli("predict", run_dir, tmp_path / "other_q.npy", "--out",
                           tmp_path / "o.h5", "--engine", "libertem", "-q")
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 1 and "outside the training" in lines[0], err
    assert read_prediction(tmp_path / "o.h5").attrs["ood_outside"]
