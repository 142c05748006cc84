"""Calibrating a model's prediction on the sparse EDS positions.

The model calibrated on the sampled EDS (``model_linear`` of
:func:`stem2eds.analysis.sparse_eds.complete_sparse`) is the base of the
guarded headline, so its slope prior matters: it is the kriging's prior on
the model weight, :data:`SLOPE_PRIOR_STD`.
"""

from __future__ import annotations

import numpy as np

#: Prior standard deviation of the model's weight about 1, in ``model_uk`` and in the
#: calibration: the model was trained to predict this element, so its gain on a new scan
#: is taken as 1 +/- 0.5 until the sampled EDS says otherwise; a handful of points cannot
#: pin a weight down, and with a flat prior (``model_uk_flat``) their noise decides it.
#: Set once; no other value was tried on the simulated series.
SLOPE_PRIOR_STD = 0.5


def _slope_penalty(x: np.ndarray, y: np.ndarray, prior_std: float) -> np.ndarray:
    """Ridge penalty of the calibration slope: noise variance / prior variance, (E,).

    The slope's prior is ``N(1, prior_std^2)``; the noise variance is that of
    the residuals of the penalised fit itself (a fixed point, three passes
    from slope 1), on ``n - 2`` degrees of freedom.
    """
    if not np.isfinite(prior_std):
        return np.zeros(x.shape[0])
    n = x.shape[1]
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    sxx, sxy = np.sum(xc ** 2, axis=1), np.sum(xc * yc, axis=1)
    slopes = np.ones(x.shape[0])
    for _ in range(3):
        noise = np.sum((yc - slopes[:, None] * xc) ** 2, axis=1) / max(n - 2, 1)
        lam = noise / prior_std ** 2
        den = sxx + lam
        slopes = np.where(den > 0, (sxy + lam) / np.where(den > 0, den, 1), 1.0)
    return lam


def calibrate_on_sparse(predicted: np.ndarray, measured: np.ndarray,
                        mask: np.ndarray, prior_std: float | None = None,
                        penalty: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-element linear correction ``a * y_hat + b`` fitted on the sampled positions.

    The slope has the prior of the kriging's model weight, ``N(1,
    SLOPE_PRIOR_STD^2)`` (the model was trained to predict this element), and
    its estimate is the posterior mode: a ridge toward 1 whose strength is the
    residual noise variance over the prior variance. An element whose EDS
    noise is large against its variation (Si, Ge in the simulated series)
    then keeps a slope near 1 unless many samples say otherwise; a penalty
    worth a fixed number of positions (the previous form) let 40 noisy
    samples invert such a map (slope -0.33 for Si on a multislice scan).
    With many positions, or little noise, the slope tends to the
    least-squares one.

    Parameters
    ----------
    predicted : ndarray, shape (E, Rx, Ry)
        Model prediction of every position (atomic fractions).
    measured : ndarray, shape (E, Rx, Ry)
        EDS; only the entries at ``mask`` are used.
    mask : ndarray of bool, shape (Rx, Ry)
    prior_std : float, optional
        Prior standard deviation of the slope about 1 (default
        :data:`SLOPE_PRIOR_STD`; ``inf``: least squares).
    penalty : ndarray, shape (E,), optional
        The ridge penalty itself, instead of estimating it (leave-one-out
        refits keep the one of the full fit).

    Returns
    -------
    slopes, offsets : ndarray, shape (E,)
    """
    mask = np.asarray(mask, bool)
    x = np.asarray(predicted, np.float64)[:, mask]
    y = np.asarray(measured, np.float64)[:, mask]
    lam = (_slope_penalty(x, y, SLOPE_PRIOR_STD if prior_std is None else prior_std)
           if penalty is None else np.asarray(penalty, np.float64))
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    sxx = np.sum(xc ** 2, axis=1) + lam
    slopes = np.where(sxx > 0, (np.sum(xc * yc, axis=1) + lam) / np.where(sxx > 0, sxx, 1), 1.0)
    offsets = y.mean(axis=1) - slopes * x.mean(axis=1)
    return slopes, offsets


def _linear_loo_mse(predicted: np.ndarray, measured: np.ndarray, mask: np.ndarray,
                    residuals: bool = False) -> np.ndarray:
    """Leave-one-out mean squared error of :func:`calibrate_on_sparse`, per element.

    Closed form with the penalty of the full fit kept (as the GP's closed
    forms keep its hyperparameters): the fit is then linear in the measured
    values (free offset, slope ridge-penalised toward 1), so each left-out
    residual is the in-sample one divided by ``1 - h_ii`` with the leverage
    ``h_ii = 1/n + xc_i^2 / (sum xc^2 + lambda)``. With ``residuals``: the
    (E, n) left-out residuals instead.
    """
    mask = np.asarray(mask, bool)
    x = np.asarray(predicted, np.float64)[:, mask]
    y = np.asarray(measured, np.float64)[:, mask]
    n = x.shape[1]
    lam = _slope_penalty(x, y, SLOPE_PRIOR_STD)
    slopes, offsets = calibrate_on_sparse(predicted, measured, mask, penalty=lam)
    resid = y - (slopes[:, None] * x + offsets[:, None])
    xc = x - x.mean(axis=1, keepdims=True)
    sxx = np.sum(xc ** 2, axis=1, keepdims=True) + lam[:, None]
    lev = 1.0 / n + xc ** 2 / np.where(sxx > 0, sxx, 1)
    loo = resid / np.maximum(1 - lev, 1e-6)
    return loo if residuals else np.mean(loo ** 2, axis=1)


def apply_linear(predicted: np.ndarray, slopes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``slopes * predicted + offsets`` per element, clipped to [0, 1]; (E, Rx, Ry) float32."""
    out = slopes[:, None, None] * np.asarray(predicted, np.float64) + offsets[:, None, None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)
