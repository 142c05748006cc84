"""Deep-ensemble uncertainty: statistics, interval coverage, std scale, ensemble training."""

import h5py
import numpy as np
import pytest

from stem2eds.analysis.uncertainty import Z90, ensemble_stats, fit_std_scale, interval_coverage
from stem2eds.experiments.ensemble import train_ensemble
from stem2eds.formats.prediction import read_prediction, write_prediction_file


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
    from stem2eds.train.config import TrainConfig
    from stem2eds.predict.predictor import load_run

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
    out = write_prediction_file(tmp_path / "p.h5", elements, mean, eds_std=std,
                                attrs={"ensemble": 2})
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["eds_std"][elements[0]][()], std[0])
        np.testing.assert_allclose(f["eds"][elements[-1]][()], mean[-1])
        assert f.attrs["ensemble"] == 2
    back = read_prediction(out)
    assert back.elements == list(elements) and back.attrs["ensemble"] == 2
    np.testing.assert_allclose(back.eds_std, std, rtol=1e-6)


def test_train_ensemble_refuses_zero_members(tmp_path):
    from stem2eds.errors import InputError

    with pytest.raises(InputError):
        train_ensemble([], tmp_path, members=0)


def test_std_scale_with_the_measurement_noise_taken_out_covers_the_map():
    from stem2eds.analysis.uncertainty import validation_std_scale

    # the interval is for the noise-free map, the known values are noisy measurements of it
    rng = np.random.default_rng(5)
    shape = (1, 120, 120)
    mean = rng.random(shape)
    reported = rng.uniform(0.01, 0.03, shape)
    true_map = mean + 2.0 * reported * rng.normal(size=shape)  # the std is 2x too small
    noise = 0.04
    measured = true_map + rng.normal(0, noise, shape)
    known = np.zeros(shape[1:], bool)
    known[::4, ::4] = True
    naive = fit_std_scale(mean, reported, measured, known)
    clean = fit_std_scale(mean, reported, measured, known, noise_var=noise ** 2)
    cov_naive = interval_coverage(mean, reported, true_map, ~known, scale=naive)[0]
    cov_clean = interval_coverage(mean, reported, true_map, ~known, scale=clean)[0]
    assert cov_naive > 0.97  # the noise makes the map's interval far too wide
    assert 0.82 <= cov_clean <= 0.96
    assert clean[0] < naive[0]


def test_validation_std_scale_from_members_errors():
    from stem2eds.analysis.uncertainty import validation_std_scale

    rng = np.random.default_rng(6)
    shape = (2, 60, 60)
    target = rng.random(shape)
    shared = 0.05 * rng.normal(size=shape)  # the error all members share
    members = [target + shared + 0.01 * rng.normal(size=shape) for _ in range(4)]
    masks = [rng.random(shape[1:]) < 0.2 for _ in range(4)]
    ratios, scale = validation_std_scale(members, masks, target)
    assert ratios.shape == (2, sum(m.sum() for m in masks))
    mean, std = ensemble_stats(members)
    # the shared error is 5x the members' spread: the factor widens the interval to cover it
    assert np.all(scale > 3)
    cov = interval_coverage(mean, std, target, None, scale=scale)
    raw = interval_coverage(mean, std, target)
    assert np.all(raw < 0.4) and np.all((cov > 0.85) & (cov < 0.97))


def test_prediction_file_refuses_unknown_element_names(tmp_path):
    # names read from a file become HDF5 keys only after the symbol check
    from stem2eds.errors import InputError

    path = write_prediction_file(tmp_path / "p.h5", ["O", "Te"], np.zeros((2, 3, 4)))
    with h5py.File(path, "a") as f:
        f.attrs["elements"] = np.array(["O", "../x"], dtype=h5py.string_dtype())
    with pytest.raises(InputError, match="unknown element symbol"):
        read_prediction(path)
