"""Deep-ensemble uncertainty: statistics, interval coverage, std scale, ensemble training."""

import h5py
import numpy as np
import pytest

from stem2eds.uncertainty import (Z90, ensemble_stats, fit_std_scale, interval_coverage,
                                  train_ensemble, write_prediction_with_std)


def test_ensemble_stats_matches_numpy():
    rng = np.random.default_rng(0)
    members = [rng.random((2, 5, 4)) for _ in range(4)]
    mean, std = ensemble_stats(members)
    np.testing.assert_allclose(mean, np.mean(members, axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, np.std(members, axis=0, ddof=1), rtol=1e-5)
    with pytest.raises(ValueError):
        ensemble_stats(members[:1])


def test_coverage_of_gaussian_errors_is_nominal():
    rng = np.random.default_rng(1)
    shape = (3, 100, 100)
    mean = rng.random(shape)
    std = rng.uniform(0.01, 0.05, shape)
    target = mean + std * rng.normal(size=shape)
    cov = interval_coverage(mean, std, target)
    np.testing.assert_allclose(cov, 0.9, atol=0.01)
    mask = np.zeros(shape[1:], bool)
    mask[:10] = True
    assert interval_coverage(mean, std, target, mask).shape == (3,)


def test_std_scale_fitted_on_known_positions_restores_coverage_elsewhere():
    rng = np.random.default_rng(2)
    shape = (2, 80, 80)
    mean = rng.random(shape)
    true_std = rng.uniform(0.01, 0.05, shape)
    target = mean + true_std * rng.normal(size=shape)
    reported = true_std / np.array([3.0, 0.5])[:, None, None]  # over- and under-confident
    known = np.zeros(shape[1:], bool)
    known[::5, ::5] = True  # 4 % of positions calibrate the scale
    scale = fit_std_scale(mean, reported, target, known)
    np.testing.assert_allclose(scale, [3.0, 0.5], rtol=0.15)
    raw = interval_coverage(mean, reported, target, ~known)
    fixed = interval_coverage(mean, reported, target, ~known, scale=scale)
    assert raw[0] < 0.5 and raw[1] > 0.99
    np.testing.assert_allclose(fixed, 0.9, atol=0.04)
    assert Z90 == pytest.approx(1.6449, abs=1e-4)


@pytest.fixture(scope="module")
def tiny_series(tmp_path_factory):
    from stem2eds.simulate import SimulationSettings, simulate_series

    return simulate_series(tmp_path_factory.mktemp("sim"),
                           SimulationSettings(n_scans=2, scan_shape=(12, 10), detector=64,
                                              seed=1, workers=1))


def test_train_ensemble_members_differ_and_are_reused(tiny_series, tmp_path):
    from stem2eds.config import TrainConfig
    from stem2eds.predict import load_run

    config = TrainConfig(max_epochs=2, batch_size=32)
    runs = train_ensemble(tiny_series[:1], tmp_path / "ens", config, members=2, quiet=True)
    assert [r.name for r in runs] == ["member_0", "member_1"]
    preds = [load_run(r).predict_scan(tiny_series[1]).eds for r in runs]
    mean, std = ensemble_stats(preds)
    assert std.max() > 0  # different seeds, different models
    stamp = [(r / "run.json").stat().st_mtime_ns for r in runs]
    again = train_ensemble(tiny_series[:1], tmp_path / "ens", config, members=2, quiet=True)
    assert [(r / "run.json").stat().st_mtime_ns for r in again] == stamp  # not retrained
    # finished weights that no longer load are refused, not silently retrained or resumed
    from stem2eds.errors import InputError

    elements = load_run(runs[0]).elements
    broken = tmp_path / "broken"
    import shutil
    shutil.copytree(runs[1], broken / "member_0")
    next((broken / "member_0").glob("weights.*")).write_bytes(b"not weights")
    with pytest.raises(InputError, match="cannot be reused"):
        train_ensemble(tiny_series[:1], broken, config, members=1, quiet=True)
    out = write_prediction_with_std(tmp_path / "p.h5", mean, std, elements, {"ensemble": 2})
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["eds_std"][elements[0]][()], std[0])
        np.testing.assert_allclose(f["eds"][elements[-1]][()], mean[-1])
        assert f.attrs["ensemble"] == 2


def test_train_ensemble_refuses_zero_members(tmp_path):
    from stem2eds.errors import InputError

    with pytest.raises(InputError):
        train_ensemble([], tmp_path, members=0)
