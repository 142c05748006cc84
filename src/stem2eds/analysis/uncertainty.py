"""Per-position predictive uncertainty from a deep ensemble, and its calibration check.

A deep ensemble is N models trained on the same data from different seeds
(different weight initialisations, shuffling and train/validation splits).
Where they disagree the prediction is unreliable: the ensemble's mean is the
prediction and its standard deviation the uncertainty. The spread of an
ensemble is usually too small (it misses the noise and the bias every member
shares), so :func:`fit_std_scale` fits one factor per element on positions
where EDS is known, and :func:`interval_coverage` checks how often the target
falls in ``mean +/- z * std``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Z90 = 1.6448536269514722  # two-sided 90 % interval of a normal distribution


def ensemble_stats(predictions: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over ensemble members.

    Parameters
    ----------
    predictions : sequence of ndarray, each shape (E, Rx, Ry)
        One prediction per member (at least 2).

    Returns
    -------
    mean, std : ndarray, shape (E, Rx, Ry), float32
        ``std`` with Bessel's correction (ddof=1).
    """
    stack = np.stack([np.asarray(p, np.float64) for p in predictions])
    if stack.shape[0] < 2:
        raise ValueError("an ensemble needs at least 2 members")
    return stack.mean(axis=0).astype(np.float32), stack.std(axis=0, ddof=1).astype(np.float32)


def interval_coverage(mean: np.ndarray, std: np.ndarray, target: np.ndarray,
                      mask: np.ndarray | None = None, z: float = Z90,
                      scale: np.ndarray | float = 1.0) -> np.ndarray:
    """Fraction of positions whose target lies within ``mean +/- z * scale * std``.

    Parameters
    ----------
    mean, std, target : ndarray, shape (E, Rx, Ry)
    mask : ndarray of bool, shape (Rx, Ry), optional
        Positions to count (all when None).
    z : float
        Half width in standard deviations (1.645: 90 % for a normal error).
    scale : float or ndarray, shape (E,)
        Factor on the standard deviation (see :func:`fit_std_scale`).

    Returns
    -------
    ndarray, shape (E,)
        Coverage per element, in [0, 1].
    """
    m = np.ones(np.shape(mean)[1:], bool) if mask is None else np.asarray(mask, bool)
    s = np.broadcast_to(np.asarray(scale, np.float64), (np.shape(mean)[0],))
    err = np.abs(np.asarray(target, np.float64) - mean)[:, m]
    half = z * s[:, None] * np.asarray(std, np.float64)[:, m]
    return np.mean(err <= half, axis=1)


def fit_std_scale(mean: np.ndarray, std: np.ndarray, target: np.ndarray,
                  mask: np.ndarray, coverage: float = 0.9, z: float = Z90,
                  noise_var: np.ndarray | float | None = None) -> np.ndarray:
    """Per-element factor on the std that gives the nominal coverage on known positions.

    The factor is the ``coverage`` quantile of ``|target - mean| / (z * std)``
    over the positions in ``mask``: scaled by it, exactly that share of those
    positions falls inside the interval.

    When the known values are noisy measurements of a smoother map (grainy
    EDS) and the interval is meant for the map, ``noise_var`` separates the
    two: the factor ``c`` is the smallest for which the *measurement*
    interval ``z * sqrt(c^2 std^2 + noise_var)`` holds the nominal share of
    the known values, i.e. the quantile of
    ``sqrt(max(err^2 - z^2 noise_var, 0)) / (z * std)``; the map's interval
    is then ``z * c * std``. Fitted on the noisy values without it, the
    map's interval comes out too wide.

    Parameters
    ----------
    mean, std, target : ndarray, shape (E, Rx, Ry)
    mask : ndarray of bool, shape (Rx, Ry)
        Positions with known EDS used for the fit (never the ones scored).
    coverage : float
        Nominal coverage in (0, 1).
    z : float
    noise_var : float or ndarray, shape (E,), optional
        Variance of one measured value about the map (atomic fraction squared).

    Returns
    -------
    ndarray, shape (E,)
        Factors (1 where the fit is impossible: no positions or zero spread).
    """
    m = np.asarray(mask, bool)
    err = np.abs(np.asarray(target, np.float64) - mean)[:, m]
    if noise_var is not None:
        nv = np.broadcast_to(np.asarray(noise_var, np.float64), (err.shape[0],))
        err = np.sqrt(np.maximum(err ** 2 - z ** 2 * nv[:, None], 0.0))
    sd = np.asarray(std, np.float64)[:, m]
    return np.array([_quantile_ratio(err[k], sd[k], coverage, z) for k in range(err.shape[0])])


def _quantile_ratio(err: np.ndarray, sd: np.ndarray, coverage: float, z: float) -> float:
    """``coverage`` quantile of ``err / (z * sd)`` where ``sd > 0`` (1 with fewer than 2)."""
    ok = sd > 0
    if ok.sum() < 2:
        return 1.0
    return float(np.quantile(np.abs(err[ok]) / (z * sd[ok]), coverage))


def loo_std_scale(residuals: Sequence[np.ndarray], stds: Sequence[np.ndarray],
                  coverage: float = 0.9, z: float = Z90) -> np.ndarray:
    """Per-element std factor from leave-one-out residuals at the known positions.

    Each known value is predicted with itself left out; the factor is the
    ``coverage`` quantile of ``|residual| / (z * std)``, so the interval of a
    new measurement covers that share of the left-out ones.

    Parameters
    ----------
    residuals, stds : sequence (one per element) of ndarray, shape (n,)
        Leave-one-out residuals and the predictive standard deviations of
        those left-out measured values.

    Returns
    -------
    ndarray, shape (E,)
    """
    return np.array([_quantile_ratio(np.asarray(r, np.float64), np.asarray(s, np.float64),
                                     coverage, z) for r, s in zip(residuals, stds)])


def validation_std_scale(member_predictions: Sequence[np.ndarray],
                         validation_masks: Sequence[np.ndarray], target: np.ndarray,
                         coverage: float = 0.9, z: float = Z90) -> tuple[np.ndarray, np.ndarray]:
    """Std factor for scans without any EDS, from the members' validation positions.

    Every member's error on its own validation positions (never trained on)
    is measured in units of the ensemble's std there; pooled over members,
    its ``coverage`` quantile is the factor. A single member's error is a
    little larger than the ensemble mean's, so the factor errs on the wide
    side for positions like the validation ones.

    Parameters
    ----------
    member_predictions : sequence of ndarray, shape (E, Rx, Ry)
        One scan predicted by each member (at least 2).
    validation_masks : sequence of ndarray of bool, shape (Rx, Ry)
        Each member's validation positions of that scan.
    target : ndarray, shape (E, Rx, Ry)
        The map the members were trained to predict.

    Returns
    -------
    ratios : ndarray, shape (E, n)
        ``|error| / std`` of every (member, validation position) pair, to
        pool over several scans before taking the quantile.
    scale : ndarray, shape (E,)
        The factor from this scan alone.
    """
    stack = np.stack([np.asarray(p, np.float64) for p in member_predictions])
    _, std = ensemble_stats(stack)
    ratios = []
    for pred, val in zip(stack, validation_masks):
        v = np.asarray(val, bool)
        sd = np.asarray(std, np.float64)[:, v]
        err = np.abs(np.asarray(target, np.float64)[:, v] - pred[:, v])
        ratios.append(np.where(sd > 0, err / np.where(sd > 0, sd, 1), np.nan))
    ratios = np.concatenate(ratios, axis=1)
    scale = np.array([np.nanquantile(r, coverage) / z if np.isfinite(r).sum() >= 2 else 1.0
                      for r in ratios])
    return ratios, scale


def coverage_summary(mean: np.ndarray, std: np.ndarray, target: np.ndarray,
                     mask: np.ndarray | None, elements: Sequence[str],
                     scale: np.ndarray | float = 1.0, z: float = Z90) -> dict:
    """Coverage of ``mean +/- z * std`` unscaled and scaled, per element and mean.

    Parameters
    ----------
    mean, std, target : ndarray, shape (E, Rx, Ry)
    mask : ndarray of bool, shape (Rx, Ry), or None (all positions)
    elements : sequence of str
    scale : float or ndarray, shape (E,)

    Returns
    -------
    dict
        ``unscaled`` and ``scaled`` ({element: share}), ``unscaled_mean``,
        ``scaled_mean``.
    """
    raw = interval_coverage(mean, std, target, mask, z)
    cov = interval_coverage(mean, std, target, mask, z, scale=scale)
    return {"unscaled": dict(zip(elements, raw.tolist())),
            "scaled": dict(zip(elements, cov.tolist())),
            "unscaled_mean": float(raw.mean()), "scaled_mean": float(cov.mean())}
