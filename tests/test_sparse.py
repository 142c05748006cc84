"""Sparse EDS completion: sampling, interpolation baselines, calibration, dose saved, CLI."""

import json

import h5py
import numpy as np
import pytest
from scipy import ndimage

from stem2eds.errors import InputError
from stem2eds.analysis.sparse_calibration import _linear_loo_mse, calibrate_on_sparse
from stem2eds.analysis.sparse_eds import (METHODS, complete_sparse,
                                          dose_saved, interpolate_gp, interpolate_linear,
                                          sample_positions)


def _smooth_field(shape, sigma, seed):
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return (f - f.min()) / np.ptp(f)


@pytest.mark.parametrize("pattern", ["random", "grid", "lines"])
@pytest.mark.parametrize("fraction", [0.02, 0.05, 0.2])
def test_sample_positions_count_and_determinism(pattern, fraction):
    shape = (60, 40)
    mask = sample_positions(shape, fraction, pattern, seed=3)
    assert mask.shape == shape and mask.dtype == bool
    # within 40 % of the asked number (grids and lines round to whole steps)
    assert abs(mask.sum() - fraction * mask.size) <= 0.4 * fraction * mask.size + 2
    np.testing.assert_array_equal(mask, sample_positions(shape, fraction, pattern, seed=3))


def test_sample_positions_shapes_of_patterns():
    lines = sample_positions((60, 40), 0.1, "lines")
    assert len(np.unique(np.nonzero(lines)[0])) < 10  # few whole scan rows
    grid = sample_positions((60, 40), 0.04, "grid")
    rows, cols = np.nonzero(grid)
    assert len(np.unique(np.diff(np.unique(rows)))) <= 2  # regular spacing (+/- 1 px rounding)
    assert sample_positions((10, 10), 0.001, "random").sum() == 3  # at least 3 points


@pytest.mark.parametrize("fraction,pattern", [(0, "random"), (1.5, "random"), (0.1, "spiral")])
def test_sample_positions_bad_input(fraction, pattern):
    with pytest.raises(InputError):
        sample_positions((10, 10), fraction, pattern)


def test_linear_interpolation_reproduces_a_plane():
    rows, cols = np.indices((30, 20))
    plane = (0.2 + 0.01 * rows + 0.005 * cols)[None]
    mask = sample_positions((30, 20), 0.05, "random", seed=1)
    out = interpolate_linear(plane, mask)
    np.testing.assert_allclose(out[mask[None]], plane[mask[None]], atol=1e-6)
    # inside the convex hull of the samples a plane is exact
    from scipy.spatial import Delaunay
    inside = Delaunay(np.argwhere(mask)).find_simplex(np.indices((30, 20)).reshape(2, -1).T) >= 0
    np.testing.assert_allclose(out[0].ravel()[inside], plane[0].ravel()[inside], atol=1e-5)


def test_gp_interpolation_smooths_noise():
    truth = _smooth_field((40, 30), 5, seed=0)[None]
    noisy = truth + np.random.default_rng(1).normal(0, 0.05, truth.shape)
    mask = sample_positions((40, 30), 0.1, "random", seed=0)
    gp, sd = interpolate_gp(noisy, mask, return_std=True)
    lin = interpolate_linear(noisy, mask)
    err_gp = np.abs(gp - truth)[:, ~mask].mean()
    err_lin = np.abs(lin - truth)[:, ~mask].mean()
    assert err_gp < err_lin  # the white-noise term smooths the grainy values
    assert np.corrcoef(gp.ravel(), truth.ravel())[0, 1] > 0.9
    assert sd.shape == truth.shape and np.all(sd >= 0)


def test_calibration_recovers_scale_and_offset():
    truth = _smooth_field((30, 30), 3, seed=2)[None] * 0.4 + 0.1
    predicted = (truth - 0.1) / 0.5  # model with the wrong gain and offset
    mask = sample_positions((30, 30), 0.2, "random", seed=0)
    a, b = calibrate_on_sparse(predicted, truth, mask, prior_std=np.inf)
    np.testing.assert_allclose([a[0], b[0]], [0.5, 0.1], atol=1e-6)
    # noise-free values: no residual noise, so the prior costs nothing
    a0, b0 = calibrate_on_sparse(predicted, truth, mask)
    np.testing.assert_allclose([a0[0], b0[0]], [0.5, 0.1], atol=1e-6)


def test_calibration_keeps_a_noisy_elements_sign():
    """Noise several times the variation: least squares can invert the map, the prior not."""
    rng = np.random.default_rng(1)
    truth = 0.03 + 0.005 * _smooth_field((20, 20), 2, seed=5)[None]
    predicted = truth.copy()
    mask = sample_positions((20, 20), 0.1, "random", seed=1)  # 40 samples
    inverted = 0
    for k in range(20):
        measured = truth + rng.normal(0, 0.02, truth.shape)
        ls, _ = calibrate_on_sparse(predicted, measured, mask, prior_std=np.inf)
        a, _ = calibrate_on_sparse(predicted, measured, mask)
        inverted += int(ls[0] < 0)
        assert a[0] > 0 and abs(a[0] - 1) < abs(ls[0] - 1) + 1e-12
    assert inverted >= 3  # least squares inverts the map in a good share of draws


def test_model_plus_sparse_beats_interpolation_when_the_model_sees_the_structure():
    # fine structure the sparse points cannot resolve, which a (biased) model predicts
    truth = 0.3 + 0.3 * _smooth_field((40, 40), 1.0, seed=4)[None]
    predicted = 0.8 * truth + 0.05 + np.random.default_rng(0).normal(0, 0.01, truth.shape)
    mask = sample_positions((40, 40), 0.02, "random", seed=0)
    est = complete_sparse(predicted.astype(np.float32), truth, mask)
    assert set(est) == set(METHODS)
    r = {m: np.corrcoef(v[0][~mask], truth[0][~mask])[0, 1] for m, v in est.items()}
    assert r["model_kriging"] > max(r["interp_linear"], r["interp_gp"]) + 0.3
    assert all(0 <= v.min() and v.max() <= 1 for v in est.values())


def test_dose_saved_interpolates_in_log_fraction():
    fr = [0.01, 0.02, 0.04]
    out = dose_saved(fr, [0.8, 0.9, 0.95], [0.5, 0.7, 0.9])
    assert out[0]["reached"] and out[0]["baseline_fraction"] == pytest.approx(0.02 * 2 ** 0.5)
    assert out[0]["ratio"] == pytest.approx(2 * 2 ** 0.5)
    assert out[1]["baseline_fraction"] == pytest.approx(0.04)
    assert not out[2]["reached"] and out[2]["ratio"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from stem2eds.simulate import SimulationSettings, simulate_series

    folder = tmp_path_factory.mktemp("sim")
    # scan 0035 of this series has crystalline grains (15 % of positions)
    return simulate_series(folder, SimulationSettings(n_scans=3, scan_shape=(24, 20),
                                                      detector=64, seed=0, workers=1))


def test_cli_sparse_end_to_end(series, tmp_path, run_cli):
    out = tmp_path / "run"
    code, stdout, err = run_cli("experiment", "--strategy", "sparse", "--model", "ridge",
                                "--ensemble", "2", "--fraction", "2,10", "--out", out,
                                "--quiet", *series)
    assert code == 0, err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["strategy"] == "sparse" and doc["target_scan"] == "scan_0035"
    assert doc["fractions"] == [0.02, 0.1] and doc["sampled_positions"] == {"2": 10, "10": 48}
    for ref in ("eds", "truth"):
        for m in METHODS:
            assert len(doc["curve"][m][ref]) == 2 and all(np.isfinite(doc["curve"][m][ref]))
        # more EDS, better maps, for the model and for interpolation
        assert doc["curve"]["model_cv"][ref][1] > doc["curve"]["model_cv"][ref][0]
        assert doc["curve"]["interp_gp"][ref][1] > doc["curve"]["interp_gp"][ref][0]
    # the stored estimate is what was scored
    from stem2eds import metrics
    from stem2eds.experiments.common import load_targets
    from stem2eds.predict.predictor import load_run

    member = load_run(out / "models" / "member_0")
    tgt = load_targets(series[-1], member.settings, member.elements)
    with h5py.File(out / "predictions" / "sparse" / "10.h5", "r") as f:
        est = np.stack([f["eds"][e][()] for e in member.elements])
        std = np.stack([f["eds_std"][e][()] for e in member.elements])
        sampled = f["sampled"][()].astype(bool)
    assert sampled.sum() == 48 and np.all(std >= 0) and std.max() > 0
    elements = member.elements
    r = metrics.element_metrics(est, tgt.eds, member.elements, ~sampled)["pearson"]
    assert r == pytest.approx(doc["methods"]["model_uk"]["10"]["eds"]["pearson"])
    with h5py.File(out / "predictions" / "scan_0035.h5", "r") as f:
        assert set(f["eds_std"]) == set(member.elements) and f.attrs["ensemble"] == 2
    html = (out / "report.html").read_text()
    assert "Dose saved" in html and "figures/dose_accuracy.png" in html
    # 'stem2eds report' rebuilds the sparse page (not the cross-scan one) from metrics.json
    (out / "report.html").unlink()
    code, stdout, err = run_cli("report", out)
    assert code == 0, err
    assert (out / "report.html").read_text() == html
    for name in ("dose_accuracy", "uncertainty_maps", "anomaly_map"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
    # the grains of scan 0035 are found (measured when written: precision 1.0, recall 0.93)
    assert doc["anomaly"]["grain_positions"] == 73
    assert doc["anomaly"]["combined"]["precision"] > 0.8
    assert doc["anomaly"]["combined"]["recall"] > 0.8
    unc = doc["uncertainty"]
    for key in ("2", "10"):
        for kind, refs in (("model_uk", ("measured", "eds", "truth")),
                           ("ensemble", ("measured", "eds", "truth"))):
            for ref in refs:
                cov = unc["per_fraction"][key][kind][ref]
                assert 0 <= cov["scaled_mean"] <= 1 and set(cov["scaled"]) == set(elements)
    assert set(doc["kriging_fits"]["10"]) == set(elements)
    # with no EDS of the new scan the raw ensemble std is far too small; the factor fitted
    # on the members' validation positions widens it (measured when written: 0.05 -> 0.85)
    extra = unc["extrapolation"]
    assert all(v > 1 for v in extra["scale"].values())
    assert extra["eds"]["scaled_mean"] > extra["eds"]["unscaled_mean"] + 0.3


def test_cli_sparse_bad_inputs(series, tmp_path, run_cli):
    out = tmp_path / "r"
    for extra, needle in ((["--fraction", "abc"], "--fraction"), (["--fraction", "150"], "(0, 1]"),
                          (["--ensemble", "0"], "--ensemble")):
        code, _, err = run_cli("experiment", "--strategy", "sparse", "--model", "ridge",
                               "--out", out, *extra, *series)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("experiment", "--strategy", "extrapolate", "--fraction", "2",
                           "--out", out, *series)
    assert code == 2 and "sparse only" in err
    code, _, err = run_cli("experiment", "--strategy", "sparse", "--out", out, series[0])
    assert code == 2 and "at least 2" in err
    assert not out.exists()  # refused before anything is written


def test_gp_leave_one_out_error_matches_refitting():
    from sklearn.gaussian_process import GaussianProcessRegressor

    truth = _smooth_field((20, 20), 3, seed=5)[None]
    noisy = truth + np.random.default_rng(2).normal(0, 0.03, truth.shape)
    mask = sample_positions((20, 20), 0.08, "random", seed=2)
    _, loo = interpolate_gp(noisy, mask, return_loo=True)
    # brute force with the hyperparameters of the fit on all points (normalize_y off, so
    # that the closed form and the refit use the same prior mean: compare on centred data)
    pts = np.argwhere(mask).astype(float)
    y = noisy[0][mask]
    full = GaussianProcessRegressor(normalize_y=True, random_state=0)
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
    full.kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * RBF(5.0, (1.0, 80.0))
                   + WhiteKernel(0.1, (1e-5, 10.0)))
    full.fit(pts, y)
    errs = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        one = GaussianProcessRegressor(full.kernel_, optimizer=None, normalize_y=False)
        # normalise with the statistics of all points, as the closed form does
        m, sd = y.mean(), y.std()
        one.fit(pts[keep], (y[keep] - m) / sd)
        errs.append(y[i] - (m + sd * one.predict(pts[i:i + 1])[0]))
    assert loo[0] == pytest.approx(np.mean(np.square(errs)), rel=1e-6)


def test_cross_validated_choice_leaves_a_useless_model_to_the_gp():
    good = 0.3 + 0.3 * _smooth_field((40, 40), 1.0, seed=4)
    smooth = 0.2 + 0.3 * _smooth_field((40, 40), 6.0, seed=6)
    truth = np.stack([good, smooth])
    noise = np.random.default_rng(0).normal(0, 0.05, (40, 40))
    predicted = np.stack([0.8 * good + 0.05, 0.3 + noise]).astype(np.float32)  # 2nd: no signal
    mask = sample_positions((40, 40), 0.05, "random", seed=1)
    est = complete_sparse(predicted, truth, mask)
    np.testing.assert_array_equal(est["model_cv"][0], est["model_kriging"][0])
    np.testing.assert_array_equal(est["model_cv"][1], est["interp_gp"][1])


def test_linear_leave_one_out_error_matches_refitting():
    rng = np.random.default_rng(3)
    predicted = rng.random((2, 15, 15))
    measured = 0.6 * predicted + 0.1 + rng.normal(0, 0.05, predicted.shape)
    mask = sample_positions((15, 15), 0.1, "random", seed=3)
    loo = _linear_loo_mse(predicted, measured, mask)
    from stem2eds.analysis.sparse_calibration import SLOPE_PRIOR_STD, _slope_penalty

    # the closed form keeps the full fit's penalty (as the GP's keep its hyperparameters)
    penalty = _slope_penalty(predicted[:, mask], measured[:, mask], SLOPE_PRIOR_STD)
    assert np.all(penalty > 0)
    idx = np.argwhere(mask)
    errs = np.zeros(2)
    for r, c in idx:
        keep = mask.copy()
        keep[r, c] = False
        a, b = calibrate_on_sparse(predicted, measured, keep, penalty=penalty)
        errs += (measured[:, r, c] - (a * predicted[:, r, c] + b)) ** 2
    np.testing.assert_allclose(loo, errs / len(idx), rtol=1e-6)


def _gp_sample(shape, length, seed):
    """A smooth zero-mean field with unit variance (a Gaussian-filtered white field)."""
    f = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), length)
    return (f - f.mean()) / f.std()


def test_universal_kriging_recovers_a_known_model_weight():
    from stem2eds.analysis.kriging import krige_with_model

    shape = (40, 40)
    model = 0.3 + 0.1 * _gp_sample(shape, 1.0, seed=1)  # fine structure the model sees
    smooth = 0.03 * _gp_sample(shape, 6.0, seed=2)  # what it misses, spatially smooth
    truth = 0.05 + 0.6 * model + smooth
    measured = truth + np.random.default_rng(3).normal(0, 0.01, shape)
    mask = sample_positions(shape, 0.1, "random", seed=0)
    est, std_map, std_meas, fits = krige_with_model(model[None], measured[None], mask)
    fit = fits[0]
    assert abs(fit["slope"] - 0.6) < 3 * fit["slope_std"] and fit["slope_std"] < 0.1
    assert np.all(std_meas >= std_map) and np.all(std_map >= 0)
    # a model with no signal gets a weight compatible with 0, and the estimate is that of
    # kriging without it (a constant "prediction" drops the covariate)
    useless = 0.3 + 0.1 * _gp_sample(shape, 1.0, seed=9)
    est_u, _, _, fits_u = krige_with_model(useless[None], measured[None], mask)
    assert abs(fits_u[0]["slope"]) < 3 * fits_u[0]["slope_std"]
    est_none = krige_with_model(np.full((1, *shape), 0.3), measured[None], mask)[0]
    gp = interpolate_gp(measured[None], mask)
    r = {name: np.corrcoef(v[0][~mask], truth[~mask])[0, 1]
         for name, v in (("uk", est), ("useless", est_u), ("none", est_none), ("gp", gp))}
    assert r["uk"] > r["gp"] + 0.2  # the model carries the fine structure
    assert abs(r["useless"] - r["none"]) < 0.05  # and a useless one costs (almost) nothing


def test_universal_kriging_leave_one_out_matches_refitting():
    from stem2eds.analysis.kriging import _rbf, fit_universal_kriging

    shape = (20, 20)
    rng = np.random.default_rng(4)
    model = _gp_sample(shape, 1.0, seed=5)
    y_map = 0.2 + 0.5 * model + 0.3 * _gp_sample(shape, 4.0, seed=6)
    mask = sample_positions(shape, 0.1, "random", seed=4)
    pts = np.argwhere(mask).astype(float)
    F = np.stack([np.ones(mask.sum()), model[mask]], axis=1)
    y = y_map[mask] + rng.normal(0, 0.05, mask.sum())
    for prior_std in (np.array([np.inf, np.inf]), np.array([np.inf, 0.3])):
        mu = np.array([0.0, 1.0])
        fit = fit_universal_kriging(pts, y, F, extent=20, prior_mean=mu, prior_std=prior_std)
        K = fit.signal_var * _rbf(pts, pts, fit.length_scale) + fit.noise_var * np.eye(len(y))
        prec = np.where(np.isfinite(prior_std), 1 / prior_std ** 2, 0.0)
        res, sds = [], []
        for i in range(len(y)):  # refit without point i, hyperparameters kept
            keep = np.arange(len(y)) != i
            Ki = np.linalg.inv(K[np.ix_(keep, keep)])
            A = F[keep].T @ Ki @ F[keep] + np.diag(prec)
            beta = np.linalg.solve(A, F[keep].T @ Ki @ y[keep] + prec * mu)
            k = K[i, keep]
            res.append(y[i] - (F[i] @ beta + k @ Ki @ (y[keep] - F[keep] @ beta)))
            u = F[i] - F[keep].T @ Ki @ k
            sds.append(np.sqrt(K[i, i] - k @ Ki @ k + u @ np.linalg.solve(A, u)))
        np.testing.assert_allclose(fit.loo_residual, res, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(fit.loo_std, sds, rtol=1e-5)


def test_universal_kriging_intervals_with_known_noise_and_model_error():
    from stem2eds.analysis.kriging import krige_with_model
    from stem2eds.analysis.uncertainty import interval_coverage

    # heteroscedastic model error proportional to a known "ensemble std", plus a known
    # measurement noise: the map interval should cover the map, the measurement one a
    # new measurement, both near 90 %
    shape = (50, 40)
    rng = np.random.default_rng(7)
    model = 0.3 + 0.08 * _gp_sample(shape, 1.0, seed=8)
    ens_std = np.where(np.indices(shape)[1] < 20, 0.005, 0.03)  # two regions
    truth = 0.02 + 0.9 * model + 0.02 * _gp_sample(shape, 5.0, seed=9) \
        + ens_std * rng.normal(size=shape)
    noise = 0.02
    measured = truth + rng.normal(0, noise, shape)
    mask = sample_positions(shape, 0.1, "random", seed=1)
    est, std_map, std_meas, fits = krige_with_model(model[None], measured[None], mask,
                                                    ens_std[None])
    assert fits[0]["noise_std"] == pytest.approx(noise, rel=0.25)  # measured 0.019
    assert fits[0]["tau"] == pytest.approx(1.0, rel=0.3)  # measured 0.94
    held = ~mask
    cov_map = interval_coverage(est, std_map, truth[None], held)[0]
    cov_meas = interval_coverage(est, std_meas, measured[None], held)[0]
    assert 0.84 <= cov_map <= 0.96 and 0.84 <= cov_meas <= 0.96
    # the interval is wider where the ensemble disagrees more
    assert np.median(std_map[0][:, 20:]) > 2 * np.median(std_map[0][:, :20])


def test_universal_kriging_slope_prior_holds_with_few_points_and_yields_to_many():
    from stem2eds.analysis.kriging import krige_with_model

    shape = (40, 40)
    model = 0.3 + 0.1 * _gp_sample(shape, 1.0, seed=11)
    truth = 0.1 + 0.5 * model + 0.02 * _gp_sample(shape, 6.0, seed=12)  # true weight 0.5
    measured = truth + np.random.default_rng(13).normal(0, 0.02, shape)
    few = sample_positions(shape, 0.005, "random", seed=0)  # 8 points
    many = sample_positions(shape, 0.2, "random", seed=0)
    f_few = krige_with_model(model[None], measured[None], few, slope_prior_std=0.3)[3][0]
    flat_few = krige_with_model(model[None], measured[None], few)[3][0]
    f_many = krige_with_model(model[None], measured[None], many, slope_prior_std=0.3)[3][0]
    # with 8 points the posterior weight sits between prior (1) and data, with a smaller
    # standard error than the flat fit's; with 320 points the data decide
    assert f_few["slope_std"] < flat_few["slope_std"]
    assert min(1.0, flat_few["slope"]) - 0.05 <= f_few["slope"] <= max(1.0, flat_few["slope"])
    assert abs(f_many["slope"] - 0.5) < 3 * f_many["slope_std"] < 0.3
