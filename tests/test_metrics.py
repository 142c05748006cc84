"""Metrics on arrays with known answers."""

import json
import math

import numpy as np
import pytest

from stem2eds import metrics
from stem2eds.formats.metrics_file import to_jsonable


def test_perfect_prediction(rng):
    y = rng.uniform(0.1, 0.5, size=(3, 8, 6))
    m = metrics.element_metrics(y, y, ["O", "Si", "Ge"])
    for el in ("O", "Si", "Ge"):
        assert m["pearson"][el] == pytest.approx(1.0)
        assert m["mae"][el] == 0.0
        assert m["percent_error"][el] == 0.0
        assert m["r2"][el] == pytest.approx(1.0)


def test_values_match_scipy_and_definitions(rng):
    from scipy.stats import pearsonr

    y = rng.uniform(0.0, 0.6, size=(2, 10, 7))
    p = y + rng.normal(0, 0.05, size=y.shape)
    m = metrics.metric_arrays(p, y)
    for k in range(2):
        a, b = y[k].ravel(), p[k].ravel()
        assert m["pearson"][k] == pytest.approx(pearsonr(b, a)[0], abs=1e-12)
        mae = np.mean(np.abs(b - a))
        assert m["mae"][k] == pytest.approx(mae)
        assert m["percent_error"][k] == pytest.approx(100 * mae / np.mean(np.abs(a)))
        r2 = 1 - np.sum((a - b) ** 2) / np.sum((a - a.mean()) ** 2)
        assert m["r2"][k] == pytest.approx(r2)


def test_mask_restricts_positions(rng):
    y = rng.uniform(size=(1, 5, 5))
    p = y.copy()
    p[0, 0, :] += 0.5  # error only in the first row
    mask = np.ones((5, 5), bool)
    mask[0] = False
    assert metrics.metric_arrays(p, y, mask)["mae"][0] == 0.0
    assert metrics.metric_arrays(p, y)["mae"][0] == pytest.approx(0.5 * 5 / 25)


def test_offset_prediction_keeps_pearson_but_not_r2(rng):
    y = rng.uniform(0.2, 0.4, size=(1, 6, 6))
    m = metrics.metric_arrays(y + 0.3, y)
    assert m["pearson"][0] == pytest.approx(1.0)
    assert m["r2"][0] < 0


def test_constant_map_gives_nan_and_json_none():
    y = np.full((1, 4, 4), 0.3)
    m = metrics.element_metrics(y, y, ["Te"])
    assert math.isnan(m["pearson"]["Te"])
    text = json.dumps(to_jsonable(m))
    assert json.loads(text)["pearson"]["Te"] is None


def test_single_map_haadf(rng):
    h = rng.uniform(size=(7, 5))
    s = metrics.single_metrics(2 * h, h)
    assert s["pearson"] == pytest.approx(1.0)
    assert s["mae"] == pytest.approx(np.mean(h))


def test_summarize_mean_and_std():
    per_scan = {"a": {"pearson": {"O": 0.2}}, "b": {"pearson": {"O": 0.6}},
                "c": {"pearson": {"O": float("nan")}}}
    s = metrics.summarize(per_scan)
    assert s["pearson"]["O"]["mean"] == pytest.approx(0.4)
    assert s["pearson"]["O"]["std"] == pytest.approx(0.2)
    assert s["pearson"]["O"]["n"] == 2
    single = metrics.summarize_single({"a": {"mae": 1.0}, "b": {"mae": 3.0}})
    assert single["mae"]["mean"] == 2.0


def test_correlation_matrix_matches_corrcoef(rng):
    maps = rng.uniform(size=(4, 6, 5))
    maps[1] = 1 - maps[0]  # anticorrelated pair
    c = metrics.correlation_matrix(maps)
    np.testing.assert_allclose(c, np.corrcoef(maps.reshape(4, -1)), atol=1e-12)
    assert c[0, 1] == pytest.approx(-1.0)


def test_high_error_region():
    err = np.zeros((10, 10))
    err[2:4, 2:4] = 5.0
    err += np.linspace(0, 1, 100).reshape(10, 10)
    high, typical = metrics.high_error_region(err, quantile=0.96)
    assert high[2:4, 2:4].all() and high.sum() == 4
    assert typical.any() and not (typical & high).any()


def test_absolute_error_map_shape_check():
    with pytest.raises(ValueError):
        metrics.absolute_error_map(np.zeros((2, 3)), np.zeros((3, 2)))


def test_high_error_region_smoothing_prefers_a_contiguous_patch(rng):
    err = rng.uniform(0, 1, size=(30, 30))
    err[rng.uniform(size=err.shape) > 0.97] = 3.0  # scattered single hot pixels
    err[10:15, 20:25] = 2.5                         # one contiguous bad patch
    high, _ = metrics.high_error_region(err, 0.97, smooth=1.0)
    assert high[10:15, 20:25].sum() >= 0.8 * high.sum()
