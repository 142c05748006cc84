"""Sparse EDS completion: a full composition map from the 4D-STEM scan plus EDS at few positions.

EDS needs a high dose; 4D-STEM a small one. Given the whole 4D-STEM scan of
a new sample and EDS measured at a fraction F of its probe positions, the
model trained on other scans predicts every position, and the sparse EDS
calibrates it: a per-element linear correction fitted on the sampled
positions, then Gaussian-process interpolation (kriging) of what the
calibrated model still gets wrong there ("regression kriging"). The
baselines interpolate the sparse EDS alone (linear, and a Gaussian process).

Pure functions on arrays (maps are (E, Rx, Ry) atomic fractions, masks
(Rx, Ry) bool, positions in scan pixels); the experiment runner that reads
bundles and writes RUN_DIR is :func:`run_sparse_experiment`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError

FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.10, 0.20)
PATTERNS = ("random", "grid", "lines")
METHODS = ("interp_linear", "interp_gp", "model_linear", "model_kriging", "model_cv")
METHOD_LABELS = {"interp_linear": "sparse EDS, linear interpolation",
                 "interp_gp": "sparse EDS, Gaussian-process interpolation",
                 "model_linear": "4D-STEM model + sparse EDS, linear calibration",
                 "model_kriging": "4D-STEM model + sparse EDS, calibration + kriged residual",
                 "model_cv": "4D-STEM model + sparse EDS, per element the best of GP, "
                             "kriged and calibrated model by leave-one-out on the sampled "
                             "positions"}
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
                         hint="give --fraction in percent, e.g. 2 for 2 %")
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


def interpolate_gp(values: np.ndarray, mask: np.ndarray, return_std: bool = False,
                   return_loo: bool = False):
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

    Returns
    -------
    mean : ndarray, shape (E, Rx, Ry), float32
    std : ndarray, shape (E, Rx, Ry), float32 (only with ``return_std``)
    loo_mse : ndarray, shape (E,) (only with ``return_loo``)
    """
    from scipy.linalg import cho_solve
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
    import warnings

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
            continue
        kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * RBF(extent / 4, (1.0, 4 * extent))
                  + WhiteKernel(0.1, (1e-5, 10.0)))
        gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(pts, y)
        # LOO residual_i = [K^-1 y]_i / [K^-1]_ii (Rasmussen & Williams eq. 5.12)
        k_inv = cho_solve((gp.L_, True), np.eye(len(y)))
        loo = gp.alpha_.ravel() / np.diag(k_inv) * np.ravel(gp._y_train_std)[0]
        loos.append(float(np.mean(loo ** 2)))
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


# -- calibrating a model's prediction on the sparse positions ------------------------
def calibrate_on_sparse(predicted: np.ndarray, measured: np.ndarray,
                        mask: np.ndarray, prior_points: float = 10.0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per-element linear correction ``a * y_hat + b`` fitted on the sampled positions.

    The slope is shrunk toward 1 (the model taken as it is) by a ridge
    penalty worth ``prior_points`` positions: a least-squares slope from a
    handful of noisy EDS values can come out near zero or negative for an
    element the model predicts weakly, which would flatten or invert its
    map. With many positions the slope tends to the least-squares one.

    Parameters
    ----------
    predicted : ndarray, shape (E, Rx, Ry)
        Model prediction of every position (atomic fractions).
    measured : ndarray, shape (E, Rx, Ry)
        EDS; only the entries at ``mask`` are used.
    mask : ndarray of bool, shape (Rx, Ry)
    prior_points : float
        Strength of the pull toward slope 1, in positions.

    Returns
    -------
    slopes, offsets : ndarray, shape (E,)
    """
    mask = np.asarray(mask, bool)
    pred = np.asarray(predicted, np.float64)
    x = pred[:, mask]
    y = np.asarray(measured, np.float64)[:, mask]
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    # penalty in units of the prediction's variance over the whole scan (known everywhere)
    lam = prior_points * pred.reshape(pred.shape[0], -1).var(axis=1)
    sxx = np.sum(xc ** 2, axis=1) + lam
    slopes = np.where(sxx > 0, (np.sum(xc * yc, axis=1) + lam) / np.where(sxx > 0, sxx, 1), 1.0)
    offsets = y.mean(axis=1) - slopes * x.mean(axis=1)
    return slopes, offsets


def _linear_loo_mse(predicted: np.ndarray, measured: np.ndarray, mask: np.ndarray,
                    prior_points: float = 10.0) -> np.ndarray:
    """Leave-one-out mean squared error of :func:`calibrate_on_sparse`, per element.

    Closed form: the fit is linear in the measured values (free offset,
    slope ridge-penalised toward 1), so each left-out residual is the
    in-sample one divided by ``1 - h_ii`` with the leverage
    ``h_ii = 1/n + xc_i^2 / (sum xc^2 + lambda)``.
    """
    mask = np.asarray(mask, bool)
    pred = np.asarray(predicted, np.float64)
    x = pred[:, mask]
    y = np.asarray(measured, np.float64)[:, mask]
    n = x.shape[1]
    slopes, offsets = calibrate_on_sparse(predicted, measured, mask, prior_points)
    resid = y - (slopes[:, None] * x + offsets[:, None])
    xc = x - x.mean(axis=1, keepdims=True)
    lam = prior_points * pred.reshape(pred.shape[0], -1).var(axis=1)
    sxx = np.sum(xc ** 2, axis=1, keepdims=True) + lam[:, None]
    lev = 1.0 / n + xc ** 2 / np.where(sxx > 0, sxx, 1)
    return np.mean((resid / np.maximum(1 - lev, 1e-6)) ** 2, axis=1)


def apply_linear(predicted: np.ndarray, slopes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``slopes * predicted + offsets`` per element, clipped to [0, 1]; (E, Rx, Ry) float32."""
    out = slopes[:, None, None] * np.asarray(predicted, np.float64) + offsets[:, None, None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def complete_sparse(predicted: np.ndarray | None, measured: np.ndarray,
                    mask: np.ndarray) -> dict[str, np.ndarray]:
    """Every full-map estimate from sparse EDS, with and without the model.

    Parameters
    ----------
    predicted : ndarray, shape (E, Rx, Ry), or None
        The 4D-STEM model's prediction of every position (None: baselines only).
    measured : ndarray, shape (E, Rx, Ry)
        EDS atomic fractions; only the entries at ``mask`` are used.
    mask : ndarray of bool, shape (Rx, Ry)
        Sampled positions.

    Returns
    -------
    dict
        ``{method: maps (E, Rx, Ry) float32 in [0, 1]}`` for the names in
        :data:`METHODS` (the ``model_*`` ones only with ``predicted``).
    """
    gp, loo_gp = interpolate_gp(measured, mask, return_loo=True)
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


# -- the experiment (files) --------------------------------------------------------------
def _chained(paths: Sequence[Path], batch: int = 256):
    """``iter_patterns`` of several bundles one after the other (starts per bundle)."""
    from .bundle import open_bundle

    for path in paths:
        with open_bundle(path) as scan:
            yield from scan.iter_patterns(batch)


def _summary_r(per_element: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over elements of each metric (NaN-aware)."""
    return {metric: float(np.nanmean(list(values.values())))
            for metric, values in per_element.items()}


def run_sparse_experiment(bundles: Sequence[str | os.PathLike], run_dir: str | os.PathLike,
                          fractions: Sequence[float] = FRACTIONS, pattern: str = "random",
                          config=None, *, ensemble: int = 5, seed: int = 0,
                          anomaly_threshold: float = 3.0, quiet: bool = False,
                          figures: bool = True) -> Path:
    """Sparse-EDS completion, ensemble uncertainty and anomaly map of one new scan.

    The last bundle is the new scan (``TARGET``); the others train an
    ensemble of ``ensemble`` models. For every fraction the target's raw
    (unblurred, as measured) EDS is sampled at that share of positions and
    the full map is estimated by every method of :func:`complete_sparse`;
    each is scored on the positions *not* sampled against the preprocessed
    (blurred) EDS and, for simulated scans, the noise-free truth.

    Writes ``RUN_DIR/metrics.json`` (``strategy: "sparse"``, ``fractions``,
    ``methods.<method>.<percent>.{eds,truth}.<metric>.<El>``,
    ``curve.<method>.{eds,truth}`` mean Pearson r per fraction,
    ``dose_saved``, ``uncertainty``, ``anomaly``), ``predictions/<scan>.h5``
    (ensemble mean with ``eds_std/<El>``), ``predictions/sparse/<percent>.h5``
    (the ``model_cv`` estimate; ``eds_std`` = |slope| x scale x ensemble std, the
    interval of ``model_linear``; ``sampled`` mask),
    ``anomaly/<scan>.h5``, ``figures/*.png`` and ``report.html``.

    Parameters
    ----------
    bundles : sequence of path-like
        Raw bundles: training scans first, the new scan last.
    run_dir : path-like
    fractions : sequence of float
        Sampled fractions in (0, 1] (0.02 = 2 %).
    pattern : {"random", "grid", "lines"}
    config : TrainConfig, optional
    ensemble : int
        Ensemble size (1: a single model, no uncertainty).
    seed : int
        Seed of the sampled positions.
    anomaly_threshold : float
        Robust z-score above which a position is flagged.
    quiet, figures : bool

    Returns
    -------
    Path
        ``run_dir``.
    """
    import datetime as _dt

    import h5py

    from . import __version__, anomaly, metrics
    from .bundle import open_bundle
    from .config import TrainConfig
    from .errors import atomic_output
    from .experiment import load_targets
    from .predict import load_run
    from .preprocess import crop_maps, preprocess_bundle
    from .uncertainty import (Z90, ensemble_stats, fit_std_scale, interval_coverage,
                              train_ensemble, write_prediction_with_std)

    paths = [Path(b) for b in bundles]
    if len(paths) < 2:
        raise InputError(f"strategy 'sparse' needs at least 2 bundles, got {len(paths)}",
                         hint="give the training bundles first and the new scan last")
    if ensemble < 1:
        raise InputError(f"--ensemble must be at least 1, got {ensemble}")
    fractions = sorted(float(f) for f in fractions)
    for f in fractions:
        sample_positions((4, 4), f, pattern)  # validates fraction and pattern up front
    names = []
    for p in paths:
        with open_bundle(p, require=("diffraction", "eds")) as scan:
            names.append(scan.name)
    if len(set(names)) != len(names):
        raise InputError("a scan appears more than once", hint="give each bundle once")
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise InputError("output exists and is not a folder", path=run,
                         hint="choose another --out")
    config = config or TrainConfig()
    target_path, target = paths[-1], names[-1]
    run.mkdir(parents=True, exist_ok=True)
    for sub in ("predictions/sparse", "preprocessed", "anomaly", "figures"):
        (run / sub).mkdir(parents=True, exist_ok=True)

    members = train_ensemble(paths[:-1], run / "models", config, ensemble, quiet)
    predictors = [load_run(m) for m in members]
    settings = predictors[0].settings
    elements = list(predictors[0].elements)
    pre = run / "preprocessed" / f"{target}.h5"
    if not pre.is_file():
        preprocess_bundle(target_path, pre, settings, quiet=quiet)
    preds = []
    for p in predictors:
        same = p.settings.to_dict() == settings.to_dict()
        preds.append(p.predict_scan(pre if same else target_path).eds)
    mean, std = ensemble_stats(preds) if len(preds) > 1 else (preds[0], None)

    tgt = load_targets(target_path, settings, elements)
    with open_bundle(target_path) as scan:
        measured = np.clip(crop_maps(scan.eds(elements), tgt.crop), 0, 1).astype(np.float32)
        grain = (crop_maps(scan.file["simulation/grain_mask"][()], tgt.crop).astype(bool)
                 if scan.has("simulation/grain_mask") else None)
    shape = measured.shape[1:]
    references = {"eds": tgt.eds}
    if tgt.truth is not None:
        references["truth"] = tgt.truth

    common = {"elements": elements, "scan_name": target, "run_dir": str(run.resolve()),
              "stem2eds_version": __version__, "source": str(target_path.resolve())}
    write_prediction_with_std(run / "predictions" / f"{target}.h5", mean, std, elements,
                              {**common, "ensemble": len(preds),
                               "members": [str(m.relative_to(run)) for m in members]})

    all_positions = np.ones(shape, bool)
    methods: dict[str, dict[str, Any]] = {m: {} for m in METHODS}
    model_only = {ref: metrics.element_metrics(mean, values, elements, all_positions)
                  for ref, values in references.items()}
    coverage: dict[str, Any] = {}
    sampled_counts = {}
    model_chosen: dict[str, dict[str, str]] = {}
    for f in fractions:
        key = f"{100 * f:g}"
        mask = sample_positions(shape, f, pattern, seed)
        sampled_counts[key] = int(mask.sum())
        estimates = complete_sparse(mean, measured, mask)
        held_out = ~mask
        if "model_cv" in estimates:
            model_chosen[key] = {el: next((m for m in ("model_kriging", "model_linear",
                                                       "interp_gp")
                                           if np.array_equal(estimates["model_cv"][k],
                                                             estimates[m][k])), "?")
                                 for k, el in enumerate(elements)}
        for method, maps in estimates.items():
            methods[method][key] = {ref: metrics.element_metrics(maps, values, elements,
                                                                 held_out)
                                    for ref, values in references.items()}
        cal_std = None
        if std is not None:
            slopes, _ = calibrate_on_sparse(mean, measured, mask)
            cal_std = (np.abs(slopes)[:, None, None] * std).astype(np.float32)
            scale = fit_std_scale(estimates["model_linear"], cal_std, measured, mask)
            entry = {"scale": dict(zip(elements, scale.tolist())), "fitted_on": int(mask.sum())}
            for ref, values in {"measured": measured, **references}.items():
                raw_cov = interval_coverage(estimates["model_linear"], cal_std, values, held_out)
                cov = interval_coverage(estimates["model_linear"], cal_std, values, held_out,
                                        scale=scale)
                entry[ref] = {"unscaled": dict(zip(elements, raw_cov.tolist())),
                              "scaled": dict(zip(elements, cov.tolist())),
                              "scaled_mean": float(cov.mean()),
                              "unscaled_mean": float(raw_cov.mean())}
            coverage[key] = entry
            cal_std = cal_std * scale[:, None, None].astype(np.float32)
        write_prediction_with_std(run / "predictions" / "sparse" / f"{key}.h5",
                                  estimates["model_cv"], cal_std, elements,
                                  {**common, "fraction": f, "pattern": pattern,
                                   "method": "model_cv"},
                                  {"sampled": mask.astype(np.uint8)})

    curve = {m: {ref: [_summary_r(methods[m][f"{100 * f:g}"][ref])["pearson"]
                       for f in fractions] for ref in references}
             for m in METHODS}
    best_interp = {ref: np.maximum(curve["interp_linear"][ref], curve["interp_gp"][ref])
                   for ref in references}
    saved = {ref: dose_saved(fractions, curve["model_cv"][ref], best_interp[ref])
             for ref in references}

    # -- anomaly map --
    reference = [members[0] / rel for rel in predictors[0].info.get("preprocessed", [])]
    recon = None
    if reference and all(r.is_file() for r in reference):
        with open_bundle(pre) as p_scan:
            recon = anomaly.reconstruction_error(_chained(reference), p_scan.iter_patterns(256),
                                                 shape)
    slopes, offsets = calibrate_on_sparse(mean, tgt.eds, all_positions)
    pred_error = np.abs(apply_linear(mean, slopes, offsets) - tgt.eds).sum(axis=0)
    parts = {"reconstruction": recon, "prediction_error": pred_error,
             "uncertainty": None if std is None else std.sum(axis=0)}
    score = anomaly.anomaly_score(parts)
    flagged = score > anomaly_threshold
    typical = np.abs(score) < 1
    with open_bundle(pre) as p_scan:
        mean_flagged, mean_typical = anomaly.mean_patterns(p_scan.iter_patterns(256), shape,
                                                           flagged, typical)
    anomaly_doc: dict[str, Any] = {"threshold": anomaly_threshold,
                                   "components": [k for k, v in parts.items() if v is not None],
                                   "flagged": int(flagged.sum()), "positions": int(flagged.size)}
    if grain is not None:
        anomaly_doc["grain_positions"] = int(grain.sum())
        anomaly_doc["combined"] = anomaly.detection_scores(flagged, grain)
        anomaly_doc["per_component"] = {
            k: anomaly.detection_scores(anomaly.robust_z(v) > anomaly_threshold, grain)
            for k, v in parts.items() if v is not None}
    with atomic_output(run / "anomaly" / f"{target}.h5") as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("score", data=score.astype(np.float32))
            fh.create_dataset("flagged", data=flagged.astype(np.uint8))
            for k, v in parts.items():
                if v is not None:
                    fh.create_dataset(f"components/{k}", data=np.asarray(v, np.float32))
            fh.create_dataset("mean_pattern_flagged", data=mean_flagged.astype(np.float32))
            fh.create_dataset("mean_pattern_typical", data=mean_typical.astype(np.float32))
            if grain is not None:
                fh.create_dataset("grain_mask", data=grain.astype(np.uint8))
            fh.attrs["threshold"] = anomaly_threshold

    doc: dict[str, Any] = {
        "strategy": "sparse", "elements": elements, "train_scans": names[:-1],
        "test_scans": [target], "target_scan": target, "pattern": pattern,
        "fractions": fractions, "sampled_positions": sampled_counts,
        "positions": int(np.prod(shape)), "ensemble": len(preds), "sampling_seed": seed,
        "model": config.model, "epochs": config.max_epochs, "seed": config.seed,
        "scored_on": "positions not sampled; 'eds' = preprocessed (blurred) EDS, "
                     "'truth' = noise-free simulated composition",
        "sparse_values": "raw (unblurred) EDS of the sampled positions, as measured",
        "method_labels": METHOD_LABELS, "model_only": model_only,
        "methods": methods, "curve": curve, "model_cv_choice": model_chosen,
        "best_interpolation": {ref: v.tolist() for ref, v in best_interp.items()},
        "dose_saved": saved,
        "uncertainty": {"nominal": 0.9, "z": Z90, "interval": "calibrated ensemble mean "
                        "+/- 1.645 x scale x |slope| x ensemble std; scale fitted per element "
                        "on the sampled positions (against the measured EDS), coverage counted "
                        "on the other positions", "per_fraction": coverage} if std is not None
        else None,
        "anomaly": anomaly_doc, "preprocess": settings.to_dict(), "config": config.to_dict(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stem2eds_version": __version__,
    }
    if figures:
        from .report.beyond import draw_beyond_figures

        doc["figures"] = draw_beyond_figures(run, doc, {
            "mean": mean, "std": std, "measured": measured, "eds": tgt.eds,
            "truth": tgt.truth, "score": score, "flagged": flagged, "typical": typical,
            "grain": grain, "mean_flagged": mean_flagged, "mean_typical": mean_typical,
            "r_pixel": predictors[0].info.get("r_pixel_size")})
    with atomic_output(run / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics.to_jsonable(doc), indent=1), encoding="utf-8")
    from .report.beyond import write_beyond_report

    write_beyond_report(run, doc)
    return run
