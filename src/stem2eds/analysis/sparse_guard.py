"""The guard of sparse completion: model + sparse EDS not worse than its parts.

The headline estimate is a *stack* on the model calibrated on the sparse EDS
(the base): ``base + sum_c w_c (candidate_c - base)`` over the universal
kriging and the Gaussian-process interpolation of the sparse EDS, ``w_c >=
0``, ``sum w_c <= 1``, the weights fitted to the leave-one-out residuals at
the sampled positions and shrunk toward 0 by a ridge
(:func:`stacking_weights`). One set of weights serves every element
(:func:`pooled_stacking_weights`): each element's residuals are divided by
its base's leave-one-out root mean square and all elements are fitted
together, five times the evidence of a per-element fit, which with 4-40
noisy samples picks up chance agreements of a candidate with the left-out
values. Where a candidate's departure from the base does not predict
left-out samples (a residual that is measurement noise) its weight tends to
0 and the estimate to the calibrated model; where it does, its weight tends
to 1. Used by :func:`stem2eds.analysis.sparse_eds.complete_sparse`; the
leave-one-out residuals of linear interpolation
(:func:`_linear_interp_loo_residuals`) are reported beside it.
"""
from __future__ import annotations

from itertools import combinations

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


#: Prior variance of each stacking weight about 0 (the calibrated model alone), in units
#: of the pooled, standardised left-out residuals: ``w ~ N(0, STACK_PRIOR_VAR)``. Chosen
#: by the fewest failures of the guard's criterion on the design series: first 0.3 among
#: 1, 0.3 and 0.1 (before the slope prior of :mod:`.sparse_calibration`); after it, on the
#: eight series seen by then, 0.1 among 1, 0.3, 0.1, 0.03, 0.01 and 0.001 (21 failures of
#: 376 against 31 for 0.3), then scored on fresh series not used for the choice
#: (docs/beyond.md).
STACK_PRIOR_VAR = 0.1


def _solve_face(X: np.ndarray, a: np.ndarray, lam: float, active: list[int],
                on_sum: bool) -> np.ndarray | None:
    """Ridge least squares on the face ``active`` of the simplex, optionally with sum 1.

    Returns the full weight vector (zeros off ``active``), or None when it
    leaves the face (a negative weight, or a sum above 1 off the sum face).
    """
    Xs = X[:, active]
    G = Xs.T @ Xs + lam * np.eye(len(active))
    b = Xs.T @ a
    try:
        gb = np.linalg.solve(G, b)
        if on_sum:
            g1 = np.linalg.solve(G, np.ones(len(active)))
            gb = gb - g1 * (gb.sum() - 1.0) / g1.sum()
    except np.linalg.LinAlgError:
        return None
    if np.any(gb < -1e-12) or (not on_sum and gb.sum() > 1 + 1e-12):
        return None
    w = np.zeros(X.shape[1])
    w[active] = np.clip(gb, 0, 1)
    return w


def stacking_weights(base: np.ndarray, others: np.ndarray,
                     prior_var: float = STACK_PRIOR_VAR) -> np.ndarray:
    """Weights of a stack on a base estimate from left-out residuals, shrunk toward the base.

    The stacked estimate is ``base + sum_c w_c (candidate_c - base)`` with
    ``w_c >= 0`` and ``sum w_c <= 1`` (a convex combination of the base and
    the candidates). Its left-out residual at sampled position ``i`` is
    ``r_i - sum_c w_c (r_i - r_c,i)`` (``r``: the base's left-out residual);
    the weights minimise the sum of their squares plus ``lam |w|^2``, the
    posterior mode of a regression with prior ``w_c ~ N(0, prior_var)`` and
    noise variance ``lam * prior_var`` taken as the base's leave-one-out mean
    squared error (stacked regression, Breiman 1996, with a ridge toward the
    base). With few samples, or where the candidates' departures from the
    base do not predict the left-out values, the weights shrink to 0: the
    estimate is the base.

    Exact solution of the small quadratic programme: every face of the
    feasible simplex is solved in closed form and the best feasible one kept.

    Parameters
    ----------
    base : ndarray, shape (n,)
        Left-out residuals (value minus estimate) of the base estimate.
    others : ndarray, shape (C, n)
        Those of the candidates; a row with a NaN gets weight 0.
    prior_var : float

    Returns
    -------
    ndarray, shape (C,)
    """
    base = np.asarray(base, np.float64)
    others = np.asarray(others, np.float64)
    C, n = others.shape
    w_best = np.zeros(C)
    usable = [c for c in range(C) if np.all(np.isfinite(others[c]))]
    if n < _MIN_POINTS or not usable or not np.all(np.isfinite(base)):
        return w_best
    # departure of each candidate at each point; an unusable one never enters (0 weight)
    X = np.where(np.isfinite(others), base[None, :] - others, 0.0).T  # (n, C)
    lam = float(np.mean(base ** 2)) / prior_var
    objective = lambda w: float(np.sum((base - X @ w) ** 2) + lam * np.sum(w ** 2))  # noqa: E731
    best = objective(w_best)
    for size in range(1, len(usable) + 1):
        for active in combinations(usable, size):
            for on_sum in (False, True):
                w = _solve_face(X, base, lam, list(active), on_sum)
                if w is not None and objective(w) < best - 1e-15:
                    w_best, best = w, objective(w)
    return w_best


def pooled_stacking_weights(base: np.ndarray, others: np.ndarray,
                            prior_var: float = STACK_PRIOR_VAR) -> np.ndarray:
    """One set of stacking weights for every element, from their pooled left-out residuals.

    Each element's residuals (the base's and the candidates') are divided by
    the base's left-out root mean square, so that every element weighs the
    same whatever its concentration range, and :func:`stacking_weights` is
    solved on all elements' standardised residuals at once. An element whose
    base residuals are all zero or not finite is left out; a candidate with a
    non-finite residual in a pooled element gets weight 0.

    Parameters
    ----------
    base : ndarray, shape (E, n)
        Left-out residuals (value minus estimate) of the base, per element.
    others : ndarray, shape (C, E, n)
        Those of the candidates.
    prior_var : float
        Prior variance of each weight, in units of the standardised residuals.

    Returns
    -------
    ndarray, shape (C,)
    """
    base = np.asarray(base, np.float64)
    others = np.asarray(others, np.float64)
    with np.errstate(invalid="ignore"):
        scale = np.sqrt(np.mean(base ** 2, axis=1))  # (E,)
    use = np.isfinite(scale) & (scale > 0) & np.all(np.isfinite(base), axis=1)
    if not np.any(use):
        return np.zeros(others.shape[0])
    z_base = (base[use] / scale[use, None]).ravel()
    z_others = (others[:, use] / scale[None, use, None]).reshape(others.shape[0], -1)
    return stacking_weights(z_base, z_others, prior_var)


def stacked_estimate(base: str, estimates: dict[str, np.ndarray],
                     loo_residuals: dict[str, np.ndarray],
                     prior_var: float = STACK_PRIOR_VAR) -> tuple[np.ndarray, np.ndarray]:
    """The base estimate stacked with the candidates by :func:`pooled_stacking_weights`.

    Parameters
    ----------
    base : str
        Key of the base estimate (the calibrated model).
    estimates : dict
        ``{name: (E, Rx, Ry) estimate}`` for ``base`` and every key of ``loo_residuals``.
    loo_residuals : dict
        ``{name: (E, n) left-out residuals (value minus estimate) at the sampled
        positions}``, ``base`` included.
    prior_var : float

    Returns
    -------
    estimate : ndarray, shape (E, Rx, Ry), float32
    weights : ndarray, shape (C, E)
        Weight of each candidate (the keys of ``loo_residuals`` other than
        ``base``, in order), the same for every element; the base gets ``1 - sum``.
    """
    names = [k for k in loo_residuals if k != base]
    b = np.asarray(loo_residuals[base], np.float64)
    others = np.stack([np.asarray(loo_residuals[k], np.float64) for k in names])  # (C, E, n)
    w = pooled_stacking_weights(b, others, prior_var)
    weights = np.repeat(w[:, None], b.shape[0], axis=1)  # (C, E)
    out = np.asarray(estimates[base], np.float64).copy()
    for c, name in enumerate(names):
        out += w[c] * (np.asarray(estimates[name], np.float64) - estimates[base])
    return np.clip(out, 0, 1).astype(np.float32), weights
