"""The sparse-completion guard: model + sparse EDS is not worse than its parts."""

from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from scipy import ndimage

from stem2eds import metrics
from stem2eds.analysis.sparse_guard import _linear_interp_loo_mse, guard_choice, guarded_estimate
from stem2eds.analysis.sparse_eds import (GUARD_CANDIDATES, METHODS,
                                          complete_sparse,
                                          interpolate_linear, sample_positions)

ELEMENTS = ["Ge", "Sb", "Te"]


def _field(shape, sigma, seed):
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return 0.2 + 0.6 * (f - f.min()) / np.ptp(f)


def _case(model: str, shape=(24, 20), fraction=0.08, seed=0):
    """Truth, measured (noisy) EDS, a model prediction and the sampled mask.

    ``model="wrong"``: a smooth map unrelated to the truth (the model clearly fails);
    ``model="right"``: the truth rescaled (a model that sees fine structure the
    samples cannot resolve).
    """
    rng = np.random.default_rng(seed)
    sigma = 6.0 if model == "wrong" else 1.2  # fine structure only where the model knows it
    truth = np.stack([_field(shape, sigma, seed + k) for k in range(len(ELEMENTS))])
    measured = np.clip(truth + rng.normal(0, 0.02, truth.shape), 0, 1)
    if model == "wrong":
        predicted = np.stack([_field(shape, 3.0, 100 + seed + k) for k in range(len(ELEMENTS))])
    else:
        predicted = 0.5 * truth + 0.1
    mask = sample_positions(shape, fraction, "random", seed)
    return truth, measured.astype(np.float32), predicted.astype(np.float32), mask


def _mean_r(estimate, truth, mask):
    return float(np.mean(list(metrics.element_metrics(estimate, truth, ELEMENTS,
                                                      ~mask)["pearson"].values())))


def _check_not_worse(estimates, truth, mask):
    r = {m: _mean_r(v, truth, mask) for m, v in estimates.items()}
    parts = max(r["model_linear"], r["interp_gp"], r["interp_linear"])
    assert r["model_uk"] >= parts - 0.01, r
    return r


def test_guard_leaves_a_wrong_model_for_interpolation():
    truth, measured, predicted, mask = _case("wrong")
    details = {}
    estimates = complete_sparse(predicted, measured, mask, details=details)
    assert set(estimates) == set(METHODS)
    # never the calibrated wrong model; the kriging may stay, as it gives the model ~0 weight
    assert "model_linear" not in details["guard"]["choice"], details["guard"]
    loo = details["guard"]["loo_mse"]
    assert np.all(loo["model_linear"] > 3 * np.minimum(loo["interp_gp"], loo["interp_linear"]))
    assert set(details["guard"]["z"]) == set(GUARD_CANDIDATES)
    r = _check_not_worse(estimates, truth, mask)
    assert r["model_linear"] < r["interp_gp"] - 0.2  # the model really is wrong here


def test_guard_keeps_a_right_model():
    truth, measured, predicted, mask = _case("right")
    details = {}
    estimates = complete_sparse(predicted, measured, mask, details=details)
    assert not any(c.startswith("interp") for c in details["guard"]["choice"])
    r = _check_not_worse(estimates, truth, mask)
    assert r["model_uk"] > max(r["interp_gp"], r["interp_linear"]) + 0.2
    # the guard's leave-one-out errors are reported for every candidate and element
    assert list(details["guard"]["loo_mse"]) == list(GUARD_CANDIDATES)
    assert all(v.shape == (len(ELEMENTS),) for v in details["guard"]["loo_mse"].values())


def test_guard_switches_only_on_significant_evidence():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.02, (3, 40))
    first = noise.copy()
    first[0] += 0.2  # element 0: the first candidate is clearly wrong at every point
    res = {"kriging": first, "close": noise * 0.98 + rng.normal(0, 0.005, (3, 40)),
           "bad": noise * 3, "nan": np.full((3, 40), np.nan)}
    choice, sig = guard_choice(res)
    # element 0 leaves the kriging for the (significantly) better "close"; elements 1 and
    # 2 keep it: "close" is barely better, "bad" worse, "nan" unavailable
    np.testing.assert_array_equal(choice, [1, 0, 0])
    assert sig[1, 0] > 10 and sig[1, 1] < 2 and sig[2, 1] < 0 and sig.shape == (4, 3)
    est = {k: np.full((3, 2, 2), i, np.float32) for i, k in enumerate(res)}
    out, choice2, _ = guarded_estimate(est, res)
    np.testing.assert_array_equal(out[:, 0, 0], [1, 0, 0])


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

    truth, measured, predicted, _ = _case("wrong")
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
            assert entry["choice"] in GUARD_CANDIDATES
            # the kriging, or a candidate significantly better than it
            assert (entry["choice"] == "model_uk_unguarded"
                    or entry["z"][entry["choice"]] > 2)
        # the stored headline map is the guarded estimate
        with h5py.File(tmp_path / "predictions" / "sparse" / f"{key}.h5", "r") as f:
            assert f.attrs["method"] == "model_uk"
    assert scores.curve(plan.fractions, ["truth"])["model_uk"]["truth"][0] >= max(
        scores.curve(plan.fractions, ["truth"])["interp_gp"]["truth"][0],
        scores.curve(plan.fractions, ["truth"])["model_linear"]["truth"][0]) - 0.01
