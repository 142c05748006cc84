"""Calibration after training: per-element maps from predicted to actual values.

A trained model's predictions of a new scan are often correlated with the truth but
offset or compressed (the paper, step 9). A per-element correction
``y = f(y_hat)`` is fitted on the TRAINING data only (predictions of the
training positions against their targets), then applied to every predicted
scan. Three forms:

- ``linear`` (default): ``y = a * y_hat + b`` (least squares);
- ``poly``: a degree-2 polynomial in ``y_hat`` (least squares);
- ``isotonic``: a monotone non-decreasing step function (scikit-learn's
  ``IsotonicRegression``), for curved but order-preserving errors.

The fitted parameters are plain numbers (JSON-safe), so a calibration is
stored beside the run's metrics and can be re-applied without refitting.
Calibrated values are clipped to [0, 1] (atomic fractions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

METHODS = ("linear", "poly", "isotonic", "none")


@dataclass
class ElementCalibration:
    """The correction of one element.

    Attributes
    ----------
    method : {"linear", "poly", "isotonic", "none"}
    coefficients : list of float
        Polynomial coefficients, highest power first (``numpy.polyval``
        order) for ``linear``/``poly``.
    x_knots, y_knots : list of float
        Breakpoints of the isotonic step function (interpolated linearly
        between knots, held constant outside them).
    """

    method: str
    coefficients: list[float] = field(default_factory=list)
    x_knots: list[float] = field(default_factory=list)
    y_knots: list[float] = field(default_factory=list)

    def apply(self, predicted: np.ndarray) -> np.ndarray:
        """Corrected values (same shape as ``predicted``), clipped to [0, 1]."""
        x = np.asarray(predicted, dtype=np.float64)
        if self.method in ("linear", "poly"):
            y = np.polyval(self.coefficients, x)
        elif self.method == "isotonic":
            y = np.interp(x, self.x_knots, self.y_knots)
        else:
            y = x
        return np.clip(y, 0.0, 1.0).astype(np.float32)


@dataclass
class FittedCalibration:
    """Per-element corrections, in the order of ``elements``."""

    method: str
    elements: list[str]
    per_element: list[ElementCalibration]

    def apply(self, predicted: np.ndarray) -> np.ndarray:
        """Calibrate maps.

        Parameters
        ----------
        predicted : ndarray, shape (E, ...)
            Predicted atomic fractions; channel ``k`` is ``elements[k]``.

        Returns
        -------
        ndarray, shape (E, ...), float32 in [0, 1]
        """
        pred = np.asarray(predicted)
        if pred.shape[0] != len(self.per_element):
            raise ValueError(f"{pred.shape[0]} maps for a calibration of "
                             f"{len(self.per_element)} elements")
        return np.stack([c.apply(p) for c, p in zip(self.per_element, pred)])

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "elements": list(self.elements),
                "per_element": {el: vars(c) for el, c in zip(self.elements, self.per_element)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FittedCalibration":
        elements = list(data["elements"])
        return cls(method=data["method"], elements=elements,
                   per_element=[ElementCalibration(**data["per_element"][el]) for el in elements])


def _fit_one(x: np.ndarray, y: np.ndarray, method: str) -> ElementCalibration:
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if method == "none" or x.size < 2 or np.ptp(x) == 0:
        # A constant prediction carries no information to map from: the best
        # correction is the training mean (or nothing when there is no data).
        if method != "none" and x.size:
            return ElementCalibration("linear", coefficients=[0.0, float(np.mean(y))])
        return ElementCalibration("none")
    if method == "linear":
        return ElementCalibration(method, coefficients=np.polyfit(x, y, 1).tolist())
    if method == "poly":
        degree = 2 if np.unique(x).size > 2 else 1
        return ElementCalibration(method, coefficients=np.polyfit(x, y, degree).tolist())
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(x, y)
        return ElementCalibration(method, x_knots=iso.X_thresholds_.tolist(),
                                  y_knots=iso.y_thresholds_.tolist())
    raise ValueError(f"unknown calibration method {method!r}; choose from {METHODS}")


def fit_calibration(predicted: np.ndarray, actual: np.ndarray, elements: Sequence[str],
                    method: str = "linear") -> FittedCalibration:
    """Fit a per-element correction on training data.

    Parameters
    ----------
    predicted, actual : ndarray, shape (E, n)
        Predictions of the training positions and their targets (atomic
        fractions); maps (E, Rx, Ry) are flattened.
    elements : sequence of str, length E
    method : {"linear", "poly", "isotonic", "none"}

    Returns
    -------
    FittedCalibration
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {METHODS}")
    pred = np.asarray(predicted, dtype=np.float64)
    act = np.asarray(actual, dtype=np.float64)
    pred = pred.reshape(pred.shape[0], -1)
    act = act.reshape(act.shape[0], -1)
    if pred.shape != act.shape or pred.shape[0] != len(elements):
        raise ValueError(f"predicted {pred.shape}, actual {act.shape} and "
                         f"{len(elements)} elements do not match")
    return FittedCalibration(method, list(elements),
                       [_fit_one(p, a, method) for p, a in zip(pred, act)])
