"""The guard of sparse completion: model + sparse EDS not worse than its parts.

The headline estimate (universal kriging with the model as covariate) is
compared, per element and on the sampled positions only, with the model
calibrated on the sparse EDS and with interpolating the sparse EDS alone,
by their leave-one-out residuals; another candidate replaces it only where
it is significantly better (paired z-score of the squared residuals above
:data:`GUARD_Z`). Used by :func:`stem2eds.analysis.sparse_eds.complete_sparse`.
"""

from __future__ import annotations

import numpy as np

_MIN_POINTS = 3


def _linear_interp_loo_mse(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Leave-one-out mean squared error of :func:`interpolate_linear`, (E,)."""
    return np.mean(_linear_interp_loo_residuals(values, mask) ** 2, axis=1)


def _linear_interp_loo_residuals(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Leave-one-out residuals of :func:`interpolate_linear` at the sampled positions.

    Each sampled position is interpolated (linearly, nearest outside the
    hull) from all the others; one triangulation per position.

    Returns
    -------
    ndarray, shape (E, n)
        Estimate minus value, sampled positions in C order.
    """
    from scipy.interpolate import griddata

    mask = np.asarray(mask, bool)
    pts = np.argwhere(mask).astype(np.float64)
    known = np.asarray(values, np.float64)[:, mask].T  # (n, E)
    n = len(pts)
    if n < _MIN_POINTS:
        return np.full((known.shape[1], n), np.nan)
    errors = np.empty_like(known)
    keep = np.ones(n, bool)
    for i in range(n):
        keep[i] = False
        guess = griddata(pts[keep], known[keep], pts[i:i + 1], method="nearest")
        try:
            lin = griddata(pts[keep], known[keep], pts[i:i + 1], method="linear")
            guess = np.where(np.isnan(lin), guess, lin)
        except Exception:  # scipy's QhullError: collinear or too few points
            pass
        errors[i] = np.clip(guess[0], 0, 1) - known[i]
        keep[i] = True
    return errors.T


#: Paired z-score by which a candidate's squared leave-one-out errors must beat the
#: kriging's before the guard uses it instead: a few noisy samples cannot tell close
#: candidates apart, and then the kriging (the estimate of both parts) stays.
GUARD_Z = 2.0


def guard_choice(loo_residuals: dict[str, np.ndarray], z: float = GUARD_Z
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per element, the first candidate unless another is significantly better.

    For each other candidate the paired differences of squared leave-one-out
    residuals ``d_i = e_first,i^2 - e_c,i^2`` give a z-score ``mean(d) / (sd(d) /
    sqrt(n))``; among those above ``z`` the one of least mean squared error
    is chosen, else the first.

    Parameters
    ----------
    loo_residuals : dict
        ``{candidate: (E, n) leave-one-out residuals at the same sampled
        positions}``, the default (the kriging) first; NaN: not available.
    z : float

    Returns
    -------
    choice : ndarray of int, shape (E,)
        Index into ``list(loo_residuals)`` per element.
    significance : ndarray, shape (C, E)
        The z-score of each candidate against the first (0 for the first).
    """
    sq = np.stack([np.asarray(v, np.float64) ** 2 for v in loo_residuals.values()])  # (C, E, n)
    n = sq.shape[-1]
    d = sq[:1] - sq
    with np.errstate(invalid="ignore", divide="ignore"):
        sig = np.nan_to_num(d.mean(-1) / (d.std(-1, ddof=1) / np.sqrt(max(n, 1))),
                            nan=0.0, posinf=0.0, neginf=0.0) if n > 1 else np.zeros(sq.shape[:2])
    mse = np.where(sig > z, sq.mean(-1), np.inf)  # (C, E): the significant ones
    mse[0] = np.where(np.any(sig > z, axis=0), np.inf, 0.0)  # the first unless beaten
    return np.argmin(mse, axis=0), sig


def guarded_estimate(estimates: dict[str, np.ndarray], loo_residuals: dict[str, np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The guarded headline: per element the estimate of the candidate :func:`guard_choice` picks.

    Parameters
    ----------
    estimates : dict
        ``{candidate: (E, Rx, Ry) estimate}`` for every key of ``loo_residuals``.
    loo_residuals : dict
        ``{candidate: (E, n) leave-one-out residuals on the sampled positions}``.

    Returns
    -------
    estimate : ndarray, shape (E, Rx, Ry), float32
    choice : ndarray of int, shape (E,)
    significance : ndarray, shape (C, E)
    """
    choice, sig = guard_choice(loo_residuals)
    stack = np.stack([estimates[name] for name in loo_residuals])
    return stack[choice, np.arange(len(choice))].astype(np.float32), choice, sig
