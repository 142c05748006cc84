"""Sparse EDS completion: a full composition map from the 4D-STEM scan plus EDS at few positions.

EDS needs a high dose; 4D-STEM a small one. Given the whole 4D-STEM scan of
a new sample and EDS measured at a fraction F of its probe positions, the
model trained on other scans predicts every position, and the sparse EDS
calibrates it: a per-element linear correction fitted on the sampled
positions, then Gaussian-process interpolation (kriging) of what the
calibrated model still gets wrong there ("regression kriging"). The
baselines interpolate the sparse EDS alone (linear, and a Gaussian process).

The headline estimate, ``model_uk``, is universal kriging with the model's
prediction as a covariate (:mod:`stem2eds.analysis.kriging`): the model's
weight is fitted jointly with the GP, so a weak model gets a small weight.
It is *guarded* (:mod:`stem2eds.analysis.sparse_guard`): per element, the
model calibrated on the sparse EDS plus weights (>= 0, summing to at most
1) times the kriging's and the GP interpolation's departures from it, the
weights fitted to the leave-one-out errors on the sampled positions and
shrunk toward 0, so each part is kept only as far as left-out samples
support it; the unguarded kriging estimate is ``model_uk_unguarded``.

Pure functions on arrays (maps are (E, Rx, Ry) atomic fractions, masks
(Rx, Ry) bool, positions in scan pixels); the experiment runner that reads
bundles and writes RUN_DIR is :mod:`stem2eds.experiments.sparse`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .sparse_calibration import (SLOPE_PRIOR_STD, _linear_loo_mse, apply_linear,
                                 calibrate_on_sparse)
from .sparse_guard import _linear_interp_loo_residuals, stacked_estimate

FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.10, 0.20)
PATTERNS = ("random", "grid", "lines")
METHODS = ("interp_linear", "interp_gp", "model_linear", "model_kriging", "model_cv",
           "model_uk_flat", "model_uk_unguarded", "model_uk")
#: Estimates whose leave-one-out errors the guard reports (``details["guard"]["loo_mse"]``).
GUARD_CANDIDATES = ("model_linear", "model_uk_unguarded", "interp_gp", "interp_linear")
#: What the headline stacks on the calibrated model (``model_linear``): the kriging,
#: and the GP interpolation for elements the model predicts poorly where the samples
#: are dense enough to interpolate.
STACK_CANDIDATES = ("model_uk_unguarded", "interp_gp")
#: Parameters each stacked candidate fits from the samples. Its left-out residuals are
#: evidence only when a fit without one sample still has more points than these; below
#: that the candidate gets weight 0 and the headline is the calibrated model.
STACK_PARAMETERS = {"model_uk_unguarded": 6,  # offset, slope, variance, length, nugget, tau
                    "interp_gp": 5}  # mean, scale (normalised targets), amplitude, length, noise
METHOD_LABELS = {"interp_linear": "sparse EDS, linear interpolation",
                 "interp_gp": "sparse EDS, Gaussian-process interpolation",
                 "model_linear": "4D-STEM model + sparse EDS, linear calibration",
                 "model_kriging": "4D-STEM model + sparse EDS, calibration + kriged residual",
                 "model_cv": "4D-STEM model + sparse EDS, per element the best of GP, "
                             "kriged and calibrated model by leave-one-out on the sampled "
                             "positions",
                 "model_uk_flat": "4D-STEM model + sparse EDS, universal kriging (model "
                                  "weight fitted jointly with the GP, flat prior)",
                 "model_uk_unguarded": "4D-STEM model + sparse EDS, universal kriging "
                                       "(model weight fitted jointly with the GP, prior "
                                       "1 +/- 0.5)",
                 "model_uk": "4D-STEM model + sparse EDS, guarded: the calibrated model "
                             "stacked with the universal kriging and the GP interpolation, "
                             "one set of weights for all elements from their pooled "
                             "leave-one-out errors on the sampled positions, shrunk toward "
                             "the calibrated model"}
HEADLINE = "model_uk"  # the estimate the dose saved and the stored maps refer to
#: Below this many sampled positions the kriging's leave-one-out residuals (for the
#: guard) are computed by refitting without each point: the closed form keeps the
#: hyperparameters fitted with it, which a handful of points makes far too optimistic.
#: Above it one point moves them little and the refits (one per point) cost too much.
REFIT_BELOW = 20
_MIN_POINTS = 3


# -- sampling patterns -------------------------------------------------------------
def sample_positions(shape: tuple[int, int], fraction: float, pattern: str = "random",
                     seed: int = 0) -> np.ndarray:
    """Probe positions where EDS is measured.

    Parameters
    ----------
    shape : (Rx, Ry)
        Scan shape.
    fraction : float
        Fraction of positions to sample, in (0, 1]. At least 3 positions are
        taken (fewer cannot be interpolated).
    pattern : {"random", "grid", "lines"}
        ``random``: uniformly drawn positions; ``grid``: a regular grid with
        equal spacing in both scan directions, randomly offset; ``lines``:
        equally spaced scan rows (a line-scan acquisition), each sampled at
        a regular step along the row so the total matches ``fraction``.
    seed : int
        Random draw / offset.

    Returns
    -------
    ndarray of bool, shape (Rx, Ry)
    """
    if not 0 < fraction <= 1:
        raise InputError(f"sampling fraction must be in (0, 1], got {fraction}",
                         hint="fractions are shares of the scan's positions, e.g. 0.02 for 2 %")
    if pattern not in PATTERNS:
        raise InputError(f"unknown sampling pattern {pattern!r}",
                         hint=f"use one of {', '.join(PATTERNS)}")
    rx, ry = shape
    n_total = rx * ry
    n = min(n_total, max(_MIN_POINTS, int(round(fraction * n_total))))
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    if pattern == "random":
        mask.flat[rng.choice(n_total, n, replace=False)] = True
    elif pattern == "grid":
        step = max(1.0, np.sqrt(n_total / n))
        off = rng.uniform(0, step, 2)
        rows = np.unique(np.minimum(np.arange(off[0], rx, step).astype(int), rx - 1))
        cols = np.unique(np.minimum(np.arange(off[1], ry, step).astype(int), ry - 1))
        if len(rows) * len(cols) < _MIN_POINTS:
            rows = np.unique(np.linspace(0, rx - 1, 2).astype(int))
            cols = np.unique(np.linspace(0, ry - 1, 2).astype(int))
        mask[np.ix_(rows, cols)] = True
    else:
        n_lines = max(1, min(rx, int(np.ceil(n / ry))))
        rows = np.unique(np.linspace(0, rx - 1, n_lines + 2)[1:-1].round().astype(int))
        per_line = min(ry, max(2, int(round(n / len(rows)))))
        step = ry / per_line
        cols = np.unique((rng.uniform(0, step) + np.arange(per_line) * step).astype(int))
        mask[np.ix_(rows, np.minimum(cols, ry - 1))] = True
    return mask


# -- interpolation of sparse values ------------------------------------------------
def _grid_points(shape: tuple[int, int]) -> np.ndarray:
    """(Rx*Ry, 2) float64 (row, column) of every position, C order."""
    return np.indices(shape).reshape(2, -1).T.astype(np.float64)


def interpolate_linear(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Linear (Delaunay) interpolation of sparse maps, nearest value outside their hull.

    Parameters
    ----------
    values : ndarray, shape (E, Rx, Ry)
        Maps; only the entries at ``mask`` are used.
    mask : ndarray of bool, shape (Rx, Ry)
        Sampled positions (at least one).

    Returns
    -------
    ndarray, shape (E, Rx, Ry), float32
    """
    from scipy.interpolate import griddata

    mask = np.asarray(mask, bool)
    pts = np.argwhere(mask).astype(np.float64)
    known = np.asarray(values, np.float64)[:, mask].T  # (n, E)
    grid = _grid_points(mask.shape)
    nearest = griddata(pts, known, grid, method="nearest")
    try:
        out = griddata(pts, known, grid, method="linear")
        out = np.where(np.isnan(out), nearest, out)
    except Exception:  # scipy's QhullError: collinear or too few points
        out = nearest
    return out.T.reshape(values.shape).astype(np.float32)


def _gp_regressor(extent: float):
    """Constant x RBF + white noise, normalised targets (the GP of :func:`interpolate_gp`)."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * RBF(extent / 4, (1.0, 4 * extent))
              + WhiteKernel(0.1, (1e-5, 10.0)))
    return GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)


def _gp_refit_loo(pts: np.ndarray, y: np.ndarray, extent: float) -> np.ndarray:
    """Left-out residuals (value minus prediction) of the GP refitted without each point, (n,).

    NaN when the rest is fewer than 3 points (nothing to interpolate).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    n = len(y)
    out = np.full(n, np.nan)
    if n - 1 < _MIN_POINTS:
        return out
    keep = np.ones(n, bool)
    for i in range(n):
        keep[i] = False
        gp = _gp_regressor(extent)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(pts[keep], y[keep])
        out[i] = y[i] - gp.predict(pts[i:i + 1])[0]
        keep[i] = True
    return out


def interpolate_gp(values: np.ndarray, mask: np.ndarray, return_std: bool = False,
                   return_loo: bool = False, loo_residuals: list | None = None,
                   refit_below: int = 0):
    """Gaussian-process regression of sparse maps over the scan, one GP per element.

    The kernel is a constant times an RBF (its length scale fitted by
    marginal likelihood, in scan pixels) plus white noise, so grainy EDS
    values are smoothed rather than passed through exactly.

    Parameters
    ----------
    values : ndarray, shape (E, Rx, Ry)
    mask : ndarray of bool, shape (Rx, Ry)
    return_std : bool
        Also return the posterior standard deviation of the latent map.
    return_loo : bool
        Also return the leave-one-out mean squared error at the sampled
        positions (closed form from the fitted kernel matrix; the kernel's
        hyperparameters are kept from the fit on all points).
    loo_residuals : list, optional
        Receives the leave-one-out residuals of each element, (n,) arrays
        (value minus prediction).
    refit_below : int
        With fewer sampled positions, the residuals ``loo_residuals``
        receives are computed by refitting the GP without each point (the
        closed form keeps the hyperparameters fitted with it).

    Returns
    -------
    mean : ndarray, shape (E, Rx, Ry), float32
    std : ndarray, shape (E, Rx, Ry), float32 (only with ``return_std``)
    loo_mse : ndarray, shape (E,) (only with ``return_loo``)
    """
    import warnings

    from scipy.linalg import cho_solve
    from sklearn.exceptions import ConvergenceWarning

    mask = np.asarray(mask, bool)
    pts = np.argwhere(mask).astype(np.float64)
    grid = _grid_points(mask.shape)
    extent = float(max(mask.shape))
    means, stds, loos = [], [], []
    for channel in np.asarray(values, np.float64):
        y = channel[mask]
        if y.size < _MIN_POINTS or np.ptp(y) == 0:
            means.append(np.full(grid.shape[0], y.mean() if y.size else 0.0))
            stds.append(np.zeros(grid.shape[0]))
            loos.append(float(np.mean((y - y.mean()) ** 2)) if y.size else np.nan)
            if loo_residuals is not None:
                loo_residuals.append(y * len(y) / max(len(y) - 1, 1) - y.sum() / max(len(y) - 1, 1))
            continue
        gp = _gp_regressor(extent)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(pts, y)
        # LOO residual_i = [K^-1 y]_i / [K^-1]_ii (Rasmussen & Williams eq. 5.12)
        k_inv = cho_solve((gp.L_, True), np.eye(len(y)))
        loo = gp.alpha_.ravel() / np.diag(k_inv) * np.ravel(gp._y_train_std)[0]
        loos.append(float(np.mean(loo ** 2)))
        if loo_residuals is not None:
            loo_residuals.append(_gp_refit_loo(pts, y, extent) if y.size < refit_below
                                 else loo)
        # Predict the smooth latent map: drop the white-noise term from the posterior.
        gp.kernel_ = gp.kernel_.k1
        m, s = gp.predict(grid, return_std=True)
        means.append(m)
        stds.append(s)
    mean = np.stack(means).reshape(np.shape(values)).astype(np.float32)
    out = [mean]
    if return_std:
        out.append(np.stack(stds).reshape(np.shape(values)).astype(np.float32))
    if return_loo:
        out.append(np.array(loos))
    return out[0] if len(out) == 1 else tuple(out)


def stack_inputs(residuals: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The left-out residuals the guard stacks: the base's and :data:`STACK_CANDIDATES`'.

    A candidate whose left-out fits (on ``n - 1`` samples) have no more points
    than its :data:`STACK_PARAMETERS` gets NaN residuals, hence weight 0.

    Parameters
    ----------
    residuals : dict
        ``{name: (E, n) left-out residuals}`` with ``model_linear`` and every
        stack candidate.
    n : int
        Number of sampled positions.
    """
    out = {"model_linear": residuals["model_linear"]}
    for k in STACK_CANDIDATES:
        out[k] = (residuals[k] if n - 1 > STACK_PARAMETERS[k]
                  else np.full(np.shape(residuals[k]), np.nan))
    return out


def complete_sparse(predicted: np.ndarray | None, measured: np.ndarray,
                    mask: np.ndarray, predicted_std: np.ndarray | None = None,
                    details: dict | None = None) -> dict[str, np.ndarray]:
    """Every full-map estimate from sparse EDS, with and without the model.

    Parameters
    ----------
    predicted : ndarray, shape (E, Rx, Ry), or None
        The 4D-STEM model's prediction of every position (None: baselines only).
    measured : ndarray, shape (E, Rx, Ry)
        EDS atomic fractions; only the entries at ``mask`` are used.
    mask : ndarray of bool, shape (Rx, Ry)
        Sampled positions.
    predicted_std : ndarray, shape (E, Rx, Ry), optional
        Ensemble standard deviation of ``predicted``: the universal-kriging
        estimate then models the model's error as proportional to it.
    details : dict, optional
        Filled with ``model_uk``: ``std_map``, ``std_measured`` (E, Rx, Ry)
        and the per-element ``fits`` of
        :func:`stem2eds.analysis.kriging.krige_with_model` (the unguarded
        kriging), and ``guard``: ``loo_mse`` ``{candidate: (E,)}`` for
        :data:`GUARD_CANDIDATES`, ``weight`` ``{name: (E,)}`` of the
        calibrated model and of :data:`STACK_CANDIDATES` in the guarded
        ``model_uk`` (summing to 1), and ``choice`` (E strings, e.g.
        ``"0.30 model_linear + 0.70 model_uk_unguarded"``) and
        ``loo_residual`` ``{candidate: (E, n)}`` (value minus estimate).

    Returns
    -------
    dict
        ``{method: maps (E, Rx, Ry) float32 in [0, 1]}`` for the names in
        :data:`METHODS` (the ``model_*`` ones only with ``predicted``).
    """
    gp_residuals: list = []
    gp, loo_gp = interpolate_gp(measured, mask, return_loo=True, loo_residuals=gp_residuals,
                                refit_below=REFIT_BELOW if predicted is not None else 0)
    out = {"interp_linear": np.clip(interpolate_linear(measured, mask), 0, 1),
           "interp_gp": np.clip(gp, 0, 1)}
    if predicted is not None:
        slopes, offsets = calibrate_on_sparse(predicted, measured, mask)
        calibrated = apply_linear(predicted, slopes, offsets)
        residual = np.where(mask, np.asarray(measured, np.float32) - calibrated, 0)
        kriged, loo_model = interpolate_gp(residual, mask, return_loo=True)
        out["model_linear"] = calibrated
        out["model_kriging"] = np.clip(calibrated + kriged, 0, 1)
        # an element the model predicts poorly is better left to the GP, and a
        # residual that does not krige is better left alone; the choice uses
        # the sampled positions only
        loo = np.stack([loo_gp, loo_model, _linear_loo_mse(predicted, measured, mask)])
        best = np.argmin(np.where(np.isfinite(loo), loo, np.inf), axis=0)
        candidates = np.stack([out["interp_gp"], out["model_kriging"], calibrated])
        out["model_cv"] = candidates[best, np.arange(len(best))]
        from .kriging import krige_with_model

        out["model_uk_flat"] = krige_with_model(predicted, measured, mask, predicted_std)[0]
        uk, std_map, std_measured, fits = krige_with_model(predicted, measured, mask,
                                                           predicted_std, SLOPE_PRIOR_STD,
                                                           refit_below=REFIT_BELOW)
        out["model_uk_unguarded"] = uk
        # left-out residuals (value minus estimate) of every part at the sampled positions:
        # exact for the calibrated model; refitted for the kriging and the GP below
        # REFIT_BELOW samples, above it their closed forms (hyperparameters kept)
        residuals = {"model_linear": _linear_loo_mse(predicted, measured, mask, residuals=True),
                     "model_uk_unguarded": np.stack([f.get("loo_residual_refit",
                                                           f["loo_residual"]) for f in fits]),
                     "interp_gp": np.stack(gp_residuals),
                     "interp_linear": -_linear_interp_loo_residuals(measured, mask)}
        out["model_uk"], weights = stacked_estimate(
            "model_linear", out, stack_inputs(residuals, int(np.count_nonzero(mask))))
        if details is not None:
            details["model_uk"] = {"std_map": std_map, "std_measured": std_measured,
                                   "fits": fits}
            details["guard"] = _guard_details(residuals, weights)
    return out


# -- dose saved ----------------------------------------------------------------------
def dose_saved(fractions: Sequence[float], method_score: Sequence[float],
               baseline_score: Sequence[float]) -> list[dict[str, Any]]:
    """Fraction the baseline needs to match the method, per fraction of the method.

    The baseline curve is made monotone (running maximum) and the fraction
    ``F'`` where it first reaches the method's score at ``F`` is found by
    linear interpolation in log(fraction).

    Parameters
    ----------
    fractions : sequence of float, increasing
    method_score, baseline_score : sequence of float
        Higher is better (e.g. mean Pearson r), one per fraction.

    Returns
    -------
    list of dict
        Per fraction: ``fraction``, ``baseline_fraction`` (F', None when the
        baseline never reaches it within the fractions tried), ``ratio`` (F'/F;
        a lower bound ``max(fractions)/F`` when not reached, with
        ``reached`` False).
    """
    f = np.asarray(fractions, float)
    base = np.maximum.accumulate(np.asarray(baseline_score, float))
    out = []
    for fk, target in zip(f, method_score):
        above = np.nonzero(base >= target)[0]
        if len(above) == 0:
            out.append({"fraction": float(fk), "baseline_fraction": None,
                        "ratio": float(f[-1] / fk), "reached": False})
            continue
        j = int(above[0])
        if j == 0:
            fprime = float(f[0])
        else:
            lo, hi = base[j - 1], base[j]
            t = (target - lo) / (hi - lo) if hi > lo else 1.0
            fprime = float(np.exp(np.log(f[j - 1]) + t * (np.log(f[j]) - np.log(f[j - 1]))))
        out.append({"fraction": float(fk), "baseline_fraction": fprime,
                    "ratio": fprime / float(fk), "reached": True})
    return out


def _guard_details(residuals: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, Any]:
    """``details["guard"]`` of :func:`complete_sparse`: errors, weights, a readable choice.

    ``weights`` (C, E) are those of :data:`STACK_CANDIDATES`; the calibrated
    model gets the rest.
    """
    names = ["model_linear", *STACK_CANDIDATES]
    w = np.vstack([1 - weights.sum(axis=0, keepdims=True), weights])  # (1 + C, E)
    choice = [" + ".join(f"{w[c, e]:.2f} {names[c]}" for c in range(len(names))
                         if w[c, e] > 0.005) for e in range(w.shape[1])]
    return {"loo_mse": {k: np.mean(np.asarray(v, np.float64) ** 2, axis=1)
                        for k, v in residuals.items()},
            "weight": dict(zip(names, w)), "choice": choice, "loo_residual": residuals}
