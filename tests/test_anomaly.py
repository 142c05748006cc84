"""Anomaly maps: robust scores, PCA reconstruction error, detection scores, mean patterns."""

import numpy as np
import pytest

from stem2eds.analysis.anomaly import (anomaly_score, detection_scores, mean_patterns,
                                       reconstruction_error, robust_z)


def _ring_patterns(n, q=24, seed=0):
    """Rotationally symmetric ring patterns with varying radius, Poisson noise (n, q, q)."""
    rng = np.random.default_rng(seed)
    y, x = np.indices((q, q)) - (q - 1) / 2
    r = np.hypot(y, x)
    radii = rng.uniform(6, 8, n)
    clean = 200 * np.exp(-((r[None] - radii[:, None, None]) ** 2) / 2) + 20
    return clean, rng


def _with_grains(shape=(20, 15), q=24):
    n = shape[0] * shape[1]
    clean, rng = _ring_patterns(n, q)
    grain = np.zeros(shape, bool)
    grain[4:8, 5:9] = True
    # a crystal adds Bragg spots at an orientation of its own
    spots = np.zeros((q, q))
    for dy, dx in ((5, 3), (-5, -3), (3, -5), (-3, 5)):
        spots[q // 2 + dy, q // 2 + dx] = 400
    clean[grain.ravel()] += spots
    return rng.poisson(clean).astype(np.float32), grain


def _batches(patterns, size=64):
    for start in range(0, len(patterns), size):
        yield start, patterns[start:start + size]


def test_robust_z_ignores_outliers_and_nan():
    rng = np.random.default_rng(0)
    v = rng.normal(5, 2, (50, 50))
    v[0, :10] = 1e6
    v[1, 0] = np.nan
    z = robust_z(v)
    assert abs(np.nanmedian(z)) < 0.05 and 0.9 < np.nanstd(z[2:]) < 1.1
    assert np.isnan(z[1, 0]) and np.all(z[0, :10] > 1e4)


def test_reconstruction_error_finds_the_crystalline_positions():
    patterns, grain = _with_grains()
    reference, rng = _ring_patterns(400, seed=1)  # amorphous scans the model knows
    reference = rng.poisson(reference).astype(np.float32)
    err = reconstruction_error(_batches(reference), _batches(patterns), grain.shape)
    scores = detection_scores(robust_z(err) > 3, grain)
    assert scores["precision"] >= 0.9 and scores["recall"] >= 0.9
    # fitted on the scan itself the low-rank model absorbs the grains: the reason for a reference
    self_fit = reconstruction_error(_batches(patterns), _batches(patterns), grain.shape)
    assert detection_scores(robust_z(self_fit) > 3, grain)["recall"] < 0.5
    with pytest.raises(ValueError):
        reconstruction_error(_batches(reference[:3]), _batches(patterns), grain.shape)


def test_anomaly_score_averages_available_components():
    a = np.random.default_rng(0).normal(size=(10, 10))
    b = np.full((10, 10), np.nan)
    b[:5] = a[:5]
    s = anomaly_score({"a": a, "b": b, "c": None})
    np.testing.assert_allclose(s[5:], robust_z(a)[5:])
    np.testing.assert_allclose(s[:5], (robust_z(a)[:5] + robust_z(b)[:5]) / 2)
    with pytest.raises(ValueError):
        anomaly_score({"c": None})


def test_detection_scores_counts():
    flagged = np.array([[1, 1, 0], [0, 0, 0]], bool)
    ref = np.array([[1, 0, 0], [1, 0, 0]], bool)
    s = detection_scores(flagged, ref)
    assert s["precision"] == 0.5 and s["recall"] == 0.5 and s["f1"] == 0.5
    assert np.isnan(detection_scores(np.zeros((2, 2), bool), ref[:, :2])["precision"])


def test_mean_patterns_of_flagged_and_typical():
    patterns, grain = _with_grains()
    mf, mt = mean_patterns(_batches(patterns, 50), grain.shape, grain, ~grain)
    np.testing.assert_allclose(mf, patterns[grain.ravel()].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(mt, patterns[~grain.ravel()].mean(axis=0), rtol=1e-6)
    q = patterns.shape[1]
    assert mf[q // 2 + 5, q // 2 + 3] > mt[q // 2 + 5, q // 2 + 3] + 300
