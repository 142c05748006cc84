"""The sparse-completion guard: model + sparse EDS is not worse than its parts."""

from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from scipy import ndimage

from stem2eds import metrics
from stem2eds.analysis.kriging import fit_universal_kriging, refit_loo_residuals
from stem2eds.analysis.sparse_eds import (GUARD_CANDIDATES, METHODS, STACK_CANDIDATES,
                                          _gp_refit_loo, complete_sparse, interpolate_linear,
                                          sample_positions)
from stem2eds.analysis.sparse_guard import (STACK_PRIOR_VAR, _linear_interp_loo_mse,
                                            pooled_stacking_weights, stacked_estimate,
                                            stacking_weights)

ELEMENTS = ["Ge", "Sb", "Te"]


def _field(shape, sigma, seed):
    """A smooth field in [0.2, 0.8] (Gaussian-filtered white noise)."""
    f = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return 0.2 + 0.6 * (f - f.min()) / np.ptp(f)


def _case(residual: str, shape=(30, 30), fraction=0.1, seed=0, noise=0.02):
    """Truth, measured EDS, a model prediction and the sampled mask.

    The model sees fine structure (length 1 px) of the truth; what it misses is
    ``residual``: ``"none"`` (the truth is the model rescaled, so the
    calibrated model's residual is pure measurement noise) or ``"smooth"`` (a
    strong smooth field, length 5 px, that the samples can krige).
    """
    rng = np.random.default_rng(seed)
    fine = np.stack([_field(shape, 1.0, seed + k) for k in range(len(ELEMENTS))])
    truth = 0.3 + 0.3 * fine
    if residual == "smooth":
        truth = truth + 0.5 * np.stack([_field(shape, 5.0, 50 + seed + k) - 0.5
                                        for k in range(len(ELEMENTS))])
    measured = np.clip(truth + rng.normal(0, noise, truth.shape), 0, 1)
    predicted = 0.5 * fine + 0.1  # right pattern, wrong scale and offset
    mask = sample_positions(shape, fraction, "random", seed)
    return truth, measured.astype(np.float32), predicted.astype(np.float32), mask


def _mean_r(estimate, truth, mask):
    return float(np.mean(list(metrics.element_metrics(estimate, truth, ELEMENTS,
                                                      ~mask)["pearson"].values())))


def _parts_margin(estimates, truth, mask):
    r = {m: _mean_r(v, truth, mask) for m, v in estimates.items()}
    return r["model_uk"] - max(r["model_linear"], r["interp_gp"], r["interp_linear"]), r


def test_pure_noise_residual_gives_the_calibrated_model():
    truth, measured, predicted, mask = _case("none", fraction=0.1)  # 90 points
    details = {}
    est = complete_sparse(predicted, measured, mask, details=details)
    assert set(est) == set(METHODS)
    weight = details["guard"]["weight"]
    assert list(weight) == ["model_linear", *STACK_CANDIDATES]
    np.testing.assert_allclose(sum(weight.values()), 1.0)
    # the kriged residual and the interpolation add (almost) nothing: the samples
    # cannot support a spatial residual that is not there (where the kriging keeps
    # weight, its own GP term has shrunk: it is the calibrated model, too)
    assert np.all(weight["interp_gp"] < 0.2), details["guard"]["choice"]
    rms = np.sqrt(np.mean((est["model_uk"] - est["model_linear"]) ** 2, axis=(1, 2)))
    assert np.all(rms < 0.25 * 0.02), rms  # a quarter of the measurement noise
    margin, _ = _parts_margin(est, truth, mask)
    assert margin >= -0.01


def test_correlated_residual_keeps_the_kriging():
    truth, measured, predicted, mask = _case("smooth", fraction=0.1)
    details = {}
    est = complete_sparse(predicted, measured, mask, details=details)
    weight = details["guard"]["weight"]
    assert np.all(weight["model_uk_unguarded"] > 0.8), details["guard"]["choice"]
    # the prior toward the calibrated model keeps the weight just below 1
    np.testing.assert_allclose(est["model_uk"], est["model_uk_unguarded"], atol=0.03)
    margin, r = _parts_margin(est, truth, mask)
    assert margin > 0.05 and r["model_uk"] > r["model_linear"] + 0.1, r
    assert list(details["guard"]["loo_mse"]) == list(GUARD_CANDIDATES)
    assert all(v.shape == (len(ELEMENTS),) for v in details["guard"]["loo_mse"].values())


def test_stacking_weights_shrink_to_the_base():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.02, 40)
    # a candidate that is the base plus noise: its departures predict nothing
    assert stacking_weights(base, (base + rng.normal(0, 0.02, 40))[None])[0] < 0.2
    # one that removes most of the error: weight near 1, the ridge's closed form
    # 0.9 S / (0.81 S + lam), lam = S / (n STACK_PRIOR_VAR), keeps it below
    good = 0.1 * base
    w = stacking_weights(base, good[None])[0]
    assert w == pytest.approx(0.9 / (0.81 + 1 / (40 * STACK_PRIOR_VAR)), rel=1e-9)
    assert w > 0.8
    # two candidates: the useful one takes the weight, the sum stays <= 1, NaN gets 0
    w2 = stacking_weights(base, np.stack([good, base + rng.normal(0, 0.02, 40)]))
    assert w2[0] > 0.8 and w2[1] < 0.1 and w2.sum() <= 1 + 1e-12
    w3 = stacking_weights(base, np.stack([good, np.full(40, np.nan)]))
    assert w3[1] == 0 and w3[0] == pytest.approx(w, abs=1e-9)
    # too few points: the base alone
    np.testing.assert_array_equal(stacking_weights(base[:2], good[None, :2]), [0.0])


def test_stacking_weights_solve_the_constrained_ridge_exactly():
    rng = np.random.default_rng(5)
    base = rng.normal(0, 1, 25)
    others = np.stack([0.3 * base + rng.normal(0, 0.5, 25), 0.6 * base + rng.normal(0, 0.5, 25)])
    w = stacking_weights(base, others)
    X = (base[None] - others).T
    lam = np.mean(base ** 2) / STACK_PRIOR_VAR
    objective = lambda v: np.sum((base - X @ v) ** 2) + lam * np.sum(v ** 2)  # noqa: E731
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 201), np.linspace(0, 1, 201)), -1).reshape(-1, 2)
    grid = grid[grid.sum(1) <= 1]
    assert objective(w) <= min(objective(g) for g in grid) + 1e-9
    est = {"b": np.zeros((1, 2, 2)), "c1": np.ones((1, 2, 2)), "c2": 2 * np.ones((1, 2, 2))}
    out, weights = stacked_estimate("b", {k: v * 0.1 for k, v in est.items()},
                                    {"b": base[None], "c1": others[:1], "c2": others[1:]})
    np.testing.assert_allclose(weights[:, 0], w)
    np.testing.assert_allclose(out[0, 0, 0], 0.1 * w[0] + 0.2 * w[1], rtol=1e-6)


def test_refitted_leave_one_out_of_kriging_and_gp():
    shape = (20, 20)
    rng = np.random.default_rng(2)
    model = _field(shape, 1.0, 3)
    y_map = 0.1 + 0.5 * model + 0.2 * _field(shape, 4.0, 4)
    mask = sample_positions(shape, 0.03, "random", 2)  # 12 points
    pts = np.argwhere(mask).astype(float)
    F = np.stack([np.ones(mask.sum()), model[mask]], axis=1)
    y = y_map[mask] + rng.normal(0, 0.01, mask.sum())
    res = refit_loo_residuals(pts, y, F, extent=20.0)
    keep = np.arange(len(y)) != 4
    fit = fit_universal_kriging(pts[keep], y[keep], F[keep], extent=20.0)
    assert res[4] == pytest.approx(y[4] - fit.predict(pts[4:5], F[4:5])["mean"][0])
    # two covariates cannot be fitted on two points: no honest left-out residual
    assert np.all(np.isnan(refit_loo_residuals(pts[:3], y[:3], F[:3], extent=20.0)))
    assert np.all(np.isnan(_gp_refit_loo(pts[:3], y[:3], 20.0)))
    assert np.all(np.isfinite(_gp_refit_loo(pts[:5], y[:5], 20.0)))


def test_linear_interpolation_loo_matches_leaving_each_point_out():
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 1, (2, 12, 10)).astype(np.float32)
    mask = sample_positions((12, 10), 0.2, "random", 1)
    expected = []
    for idx in np.argwhere(mask):
        rest = mask.copy()
        rest[tuple(idx)] = False
        est = interpolate_linear(values, rest)[:, idx[0], idx[1]]
        expected.append(np.clip(est, 0, 1) - values[:, idx[0], idx[1]])
    np.testing.assert_allclose(_linear_interp_loo_mse(values, mask),
                               np.mean(np.square(expected), axis=0), rtol=1e-4)


@pytest.mark.slow
def test_sparse_experiment_reports_the_guard(tmp_path):
    from stem2eds.experiments.sparse import (EnsemblePrediction, SparsePlan, TargetMaps,
                                             score_fractions)
    from stem2eds.formats.targets_file import Targets

    truth, measured, predicted, _ = _case("smooth", shape=(24, 20))
    (tmp_path / "predictions" / "sparse").mkdir(parents=True)
    plan = SparsePlan(paths=[tmp_path / "a.h5", tmp_path / "b.h5"], names=["a", "b"],
                      run=tmp_path, fractions=[0.05, 0.2], pattern="random", config=None,
                      ensemble=1, seed=0)
    ens = EnsemblePrediction(members=[], predictors=[SimpleNamespace(elements=ELEMENTS)],
                             mean=predicted, std=None, preprocessed=tmp_path / "p.h5")
    ones = np.ones(truth.shape[1:], bool)
    maps = TargetMaps(Targets(eds=truth, haadf=None, truth=truth, evaluated=ones,
                              train_positions=ones, crop=(0, 24, 0, 20)), measured, None)
    scores = score_fractions(plan, ens, maps, {"elements": ELEMENTS})
    assert set(scores.guard) == {"5", "20"}
    for key, per in scores.guard.items():
        assert set(per) == set(ELEMENTS)
        for el, entry in per.items():
            assert sum(entry["weight"].values()) == pytest.approx(1.0)
            assert set(entry["loo_mse"]) == set(GUARD_CANDIDATES)
            assert "model_linear" in entry["choice"] or "model_uk" in entry["choice"]
        # the stored headline map is the guarded estimate
        with h5py.File(tmp_path / "predictions" / "sparse" / f"{key}.h5", "r") as f:
            assert f.attrs["method"] == "model_uk"
    curve = scores.curve(plan.fractions, ["truth"])
    for k in range(2):
        assert curve["model_uk"]["truth"][k] >= max(curve["interp_gp"]["truth"][k],
                                                    curve["model_linear"]["truth"][k]) - 0.01


def test_pooled_weights_are_one_stack_for_every_element():
    rng = np.random.default_rng(7)
    E, n = 3, 30
    base = rng.normal(0, 1, (E, n)) * np.array([1e-3, 1e-1, 1.0])[:, None]
    # candidate 0 removes most of each element's error, candidate 1 adds noise
    others = np.stack([0.2 * base + 0.05 * base.std(axis=1, keepdims=True) * rng.normal(size=(E, n)),
                       base + base.std(axis=1, keepdims=True) * rng.normal(size=(E, n))])
    w = pooled_stacking_weights(base, others)
    scale = np.sqrt(np.mean(base ** 2, axis=1))[:, None]
    np.testing.assert_allclose(w, stacking_weights((base / scale).ravel(),
                                                   (others / scale).reshape(2, -1),
                                                   STACK_PRIOR_VAR))
    assert w[0] > 0.7 and w[1] < 0.1
    # every element weighs the same whatever its concentration range
    np.testing.assert_allclose(pooled_stacking_weights(base * [[1e3], [1], [1]],
                                                       others * [[1e3], [1], [1]]), w)
    # an element the base fits exactly (no residual) is left out, not a NaN
    base0, others0 = base.copy(), others.copy()
    base0[0], others0[:, 0] = 0.0, 0.0
    w0 = pooled_stacking_weights(base0, others0)
    assert np.all(np.isfinite(w0))
    np.testing.assert_allclose(w0, pooled_stacking_weights(base[1:], others[:, 1:]))
    # the stacked estimate gives every element the same weights
    est = {"b": np.zeros((E, 2, 2)), "c1": np.full((E, 2, 2), 0.1), "c2": np.full((E, 2, 2), 0.2)}
    out, weights = stacked_estimate("b", est, {"b": base, "c1": others[0], "c2": others[1]})
    np.testing.assert_allclose(weights, np.repeat(w[:, None], E, axis=1))
    np.testing.assert_allclose(out, 0.1 * w[0] + 0.2 * w[1], rtol=1e-6)


def test_too_few_samples_for_the_candidates_fits_give_the_calibrated_model():
    from stem2eds.analysis.sparse_eds import STACK_PARAMETERS

    # a residual the kriging would pick up, but 6 samples: every candidate's left-out fit
    # (5 points) has no more points than parameters, so none gets weight
    truth, measured, predicted, mask = _case("smooth", fraction=6 / 900)
    assert mask.sum() - 1 <= min(STACK_PARAMETERS.values())
    details = {}
    est = complete_sparse(predicted, measured, mask, details=details)
    np.testing.assert_array_equal(est["model_uk"], est["model_linear"])
    assert details["guard"]["weight"]["model_linear"] == pytest.approx(np.ones(len(ELEMENTS)))
    # the residuals are still reported (the GP's were refitted on 5 points)
    assert np.all(np.isfinite(details["guard"]["loo_residual"]["interp_gp"]))


def test_report_guard_table_has_one_column_when_the_elements_share_the_stack():
    from stem2eds.report.beyond import _guard_table

    shared = {"2": {el: {"choice": "0.70 model_linear + 0.30 interp_gp"} for el in ELEMENTS}}
    html_text = _guard_table(shared, ELEMENTS)
    assert "all elements" in html_text and html_text.count("0.70 model_linear") == 1
    apart = {"2": {el: {"choice": f"{k / 10:.2f} model_linear"} for k, el in enumerate(ELEMENTS)}}
    html_text = _guard_table(apart, ELEMENTS)  # older experiments: a stack per element
    assert "all elements" not in html_text
    assert all(f">{el}<" in html_text for el in ELEMENTS)
