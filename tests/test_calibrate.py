"""Calibration fitted on training data and applied to new predictions."""

import json

import numpy as np
import pytest

from stem2eds.analysis.calibrate import FittedCalibration, fit_calibration


def test_linear_recovers_gain_and_offset(rng):
    y = rng.uniform(0.1, 0.6, size=(2, 400))
    y_hat = 0.5 * y + 0.1 + rng.normal(0, 1e-3, size=y.shape)
    cal = fit_calibration(y_hat, y, ["Ge", "Te"], "linear")
    a, b = cal.per_element[0].coefficients
    assert a == pytest.approx(2.0, rel=0.02) and b == pytest.approx(-0.2, abs=0.01)
    new = rng.uniform(0.1, 0.6, size=(2, 5, 4))
    corrected = cal.apply(0.5 * new + 0.1)
    np.testing.assert_allclose(corrected, new, atol=0.01)


def test_poly_and_isotonic_fit_curved_response(rng):
    y = rng.uniform(0.0, 0.8, size=(1, 500))
    y_hat = np.sqrt(y)  # monotone but curved
    for method in ("poly", "isotonic"):
        cal = fit_calibration(y_hat, y, ["O"], method)
        lin = fit_calibration(y_hat, y, ["O"], "linear")
        err = np.abs(cal.apply(y_hat) - y).mean()
        err_lin = np.abs(lin.apply(y_hat) - y).mean()
        assert err < err_lin, method


def test_output_clipped_to_fractions(rng):
    y = rng.uniform(0.0, 1.0, size=(1, 100))
    cal = fit_calibration(y, y, ["Sb"], "linear")
    out = cal.apply(np.array([[-0.5, 2.0]]))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_round_trip_json(rng):
    y = rng.uniform(size=(2, 50))
    for method in ("linear", "poly", "isotonic", "none"):
        cal = fit_calibration(y ** 2, y, ["O", "Si"], method)
        again = FittedCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
        x = rng.uniform(size=(2, 7))
        np.testing.assert_array_equal(again.apply(x), cal.apply(x))


def test_constant_prediction_maps_to_training_mean():
    cal = fit_calibration(np.full((1, 10), 0.2), np.linspace(0, 0.4, 10)[None], ["O"])
    assert cal.apply(np.array([[0.2, 0.9]])) == pytest.approx(0.2)


def test_bad_method():
    with pytest.raises(ValueError):
        fit_calibration(np.zeros((1, 3)), np.zeros((1, 3)), ["O"], "spline")
