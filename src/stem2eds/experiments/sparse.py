"""The sparse-EDS experiment (``stem2eds experiment --strategy sparse``): files in, RUN_DIR out.

Trains (or reuses) a deep ensemble on the training scans, predicts the new
scan, estimates its full maps from EDS at a few positions with every method
of :func:`stem2eds.analysis.sparse_eds.complete_sparse`, checks the intervals, builds the
anomaly map and writes ``metrics.json``, predictions, figures and
``report.html``. The array work lives in :mod:`stem2eds.analysis.sparse_eds`,
:mod:`stem2eds.analysis.kriging`, :mod:`stem2eds.analysis.uncertainty` and
:mod:`stem2eds.analysis.anomaly`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..analysis.sparse_eds import (FRACTIONS, HEADLINE, METHOD_LABELS, METHODS, apply_linear,
                                   calibrate_on_sparse, complete_sparse, dose_saved,
                                   sample_positions)


def _chained(paths: Sequence[Path], batch: int = 256):
    """``iter_patterns`` of several bundles one after the other (starts per bundle)."""
    from ..formats.bundle import open_bundle

    for path in paths:
        with open_bundle(path) as scan:
            yield from scan.iter_patterns(batch)


def _summary_r(per_element: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over elements of each metric (NaN-aware)."""
    return {metric: float(np.nanmean(list(values.values())))
            for metric, values in per_element.items()}


def _sparse_coverage(estimates: dict[str, np.ndarray], uk: dict[str, Any], mean: np.ndarray,
                     std: np.ndarray | None, measured: np.ndarray,
                     references: dict[str, np.ndarray], mask: np.ndarray,
                     elements: Sequence[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Coverage of the nominal 90 % intervals of one sampled fraction, unsampled positions.

    ``model_uk``: the universal-kriging interval, scaled by the factor from
    the leave-one-out residuals of the sampled values; the interval of a
    measurement (with noise) is checked against the measured EDS, that of the
    noise-free map against the blurred EDS and the truth. ``ensemble``: the
    calibrated ensemble mean +/- scale x |slope| x ensemble std, its scale
    fitted on the sampled positions against the measured EDS (for the
    measured target) or with the kriging fit's noise variance removed from
    each error (for the map targets).

    Returns
    -------
    entry : dict
        ``{"model_uk": {...}, "ensemble": {...}}`` with scales and, per
        target, :func:`stem2eds.analysis.uncertainty.coverage_summary`.
    uk_std : ndarray, shape (E, Rx, Ry), float32
        The scaled map std of the universal-kriging estimate.
    """
    from ..analysis.uncertainty import coverage_summary, fit_std_scale, loo_std_scale

    held_out = ~mask
    fits = uk["fits"]
    targets = {"measured": measured, **references}
    scale = loo_std_scale([f["loo_residual"] for f in fits], [f["loo_std"] for f in fits])
    entry: dict[str, Any] = {"fitted_on": int(mask.sum())}
    entry["model_uk"] = {"scale": dict(zip(elements, scale.tolist()))}
    for ref, values in targets.items():
        sd = uk["std_measured"] if ref == "measured" else uk["std_map"]
        entry["model_uk"][ref] = coverage_summary(estimates["model_uk"], sd, values, held_out,
                                                  elements, scale)
    if std is not None:
        slopes, _ = calibrate_on_sparse(mean, measured, mask)
        cal_std = (np.abs(slopes)[:, None, None] * std).astype(np.float32)
        noise_var = np.array([f["noise_std"] ** 2 for f in fits])
        scales = {"measured": fit_std_scale(estimates["model_linear"], cal_std, measured, mask),
                  "map": fit_std_scale(estimates["model_linear"], cal_std, measured, mask,
                                       noise_var=noise_var)}
        ens: dict[str, Any] = {f"scale_{k}": dict(zip(elements, v.tolist()))
                               for k, v in scales.items()}
        for ref, values in targets.items():
            ens[ref] = coverage_summary(estimates["model_linear"], cal_std, values, held_out,
                                        elements, scales["measured" if ref == "measured"
                                                         else "map"])
        entry["ensemble"] = ens
    return entry, (uk["std_map"] * scale[:, None, None]).astype(np.float32)


def _extrapolation_coverage(members: Sequence[Path], predictors: Sequence[Any],
                            train_paths: Sequence[Path], mean: np.ndarray, std: np.ndarray,
                            references: dict[str, np.ndarray], settings,
                            elements: Sequence[str]) -> dict[str, Any]:
    """Coverage of the ensemble interval on the new scan with no EDS of it at all.

    The std factor comes from the training scans: each member's error on its
    own validation positions (read from its ``split.npz``) in units of the
    ensemble std there (:func:`stem2eds.analysis.uncertainty.validation_std_scale`),
    pooled over scans and members. The interval ``mean +/- 1.645 x factor x
    std`` of the raw ensemble mean is then counted on every position of the
    new scan.
    """
    from .crossscan import load_targets
    from ..analysis.uncertainty import Z90, coverage_summary, validation_std_scale

    splits = [np.load(m / "split.npz") for m in members]
    rel = predictors[0].info.get("preprocessed", [])
    ratios = []
    for i, path in enumerate(train_paths):
        pre = members[0] / rel[i] if i < len(rel) and (members[0] / rel[i]).is_file() else path
        preds = [p.predict_scan(pre).eds for p in predictors]
        target = load_targets(path, settings, elements).eds
        r, _ = validation_std_scale(preds, [sp[f"val_mask_{i}"] for sp in splits], target)
        ratios.append(r)
    ratios = np.concatenate(ratios, axis=1)
    scale = np.array([np.nanquantile(r, 0.9) / Z90 for r in ratios])
    out: dict[str, Any] = {"scale": dict(zip(elements, scale.tolist())),
                           "fitted_on": int(np.isfinite(ratios[0]).sum()),
                           "split": predictors[0].info.get("split", {}).get("mode")}
    for ref, values in references.items():
        out[ref] = coverage_summary(mean, std, values, None, elements, scale)
    return out


def run_sparse_experiment(bundles: Sequence[str | os.PathLike], run_dir: str | os.PathLike,
                          fractions: Sequence[float] = FRACTIONS, pattern: str = "random",
                          config=None, *, ensemble: int = 5, seed: int = 0,
                          anomaly_threshold: float = 3.0, quiet: bool = False,
                          figures: bool = True) -> Path:
    """Sparse-EDS completion, ensemble uncertainty and anomaly map of one new scan.

    The last bundle is the new scan (``TARGET``); the others train an
    ensemble of ``ensemble`` models. For every fraction the target's raw
    (unblurred, as measured) EDS is sampled at that share of positions and
    the full map is estimated by every method of
    :func:`stem2eds.analysis.sparse_eds.complete_sparse`;
    each is scored on the positions *not* sampled against the preprocessed
    (blurred) EDS and, for simulated scans, the noise-free truth.

    Writes ``RUN_DIR/metrics.json`` (``strategy: "sparse"``, ``fractions``,
    ``methods.<method>.<percent>.{eds,truth}.<metric>.<El>``,
    ``curve.<method>.{eds,truth}`` mean Pearson r per fraction,
    ``dose_saved`` (of ``model_uk``), ``uncertainty``, ``kriging_fits``,
    ``anomaly``), ``predictions/<scan>.h5`` (ensemble mean with
    ``eds_std/<El>``), ``predictions/sparse/<percent>.h5`` (the ``model_uk``
    estimate; ``eds_std`` = its noise-free map std scaled by the
    leave-one-out factor; ``sampled`` mask),
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

    from .. import __version__, metrics
    from ..analysis import anomaly
    from ..formats.bundle import open_bundle
    from ..train.config import TrainConfig
    from ..atomic import atomic_output
    from .crossscan import load_targets
    from ..predict.predictor import load_run
    from ..preprocess import crop_maps, preprocess_bundle
    from ..analysis.uncertainty import Z90, ensemble_stats
    from .ensemble import train_ensemble
    from ..formats.prediction import write_prediction_file

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
    write_prediction_file(run / "predictions" / f"{target}.h5", elements, mean, eds_std=std,
                          attrs={**common, "ensemble": len(preds),
                                 "members": [str(m.relative_to(run)) for m in members]})

    extrapolation = (_extrapolation_coverage(members, predictors, paths[:-1], mean, std,
                                             references, settings, elements)
                     if std is not None else None)
    all_positions = np.ones(shape, bool)
    methods: dict[str, dict[str, Any]] = {m: {} for m in METHODS}
    model_only = {ref: metrics.element_metrics(mean, values, elements, all_positions)
                  for ref, values in references.items()}
    coverage: dict[str, Any] = {}
    kriging_fits: dict[str, Any] = {}
    sampled_counts = {}
    model_chosen: dict[str, dict[str, str]] = {}
    for f in fractions:
        key = f"{100 * f:g}"
        mask = sample_positions(shape, f, pattern, seed)
        sampled_counts[key] = int(mask.sum())
        details: dict[str, Any] = {}
        estimates = complete_sparse(mean, measured, mask, std, details)
        held_out = ~mask
        model_chosen[key] = {el: next((m for m in ("model_kriging", "model_linear",
                                                   "interp_gp")
                                       if np.array_equal(estimates["model_cv"][k],
                                                         estimates[m][k])), "?")
                             for k, el in enumerate(elements)}
        for method, maps in estimates.items():
            methods[method][key] = {ref: metrics.element_metrics(maps, values, elements,
                                                                 held_out)
                                    for ref, values in references.items()}
        uk = details["model_uk"]
        fits = uk["fits"]
        kriging_fits[key] = {el: {k: v for k, v in fit.items() if not isinstance(v, np.ndarray)}
                             for el, fit in zip(elements, fits)}
        entry, uk_std = _sparse_coverage(estimates, uk, mean, std, measured, references,
                                         mask, elements)
        coverage[key] = entry
        write_prediction_file(run / "predictions" / "sparse" / f"{key}.h5", elements,
                              estimates[HEADLINE], eds_std=uk_std,
                              attrs={**common, "fraction": f, "pattern": pattern,
                                     "method": HEADLINE,
                                     "eds_std": "standard deviation of the noise-free map "
                                                "(universal kriging, leave-one-out scaled)"},
                              extra={"sampled": mask.astype(np.uint8)})

    curve = {m: {ref: [_summary_r(methods[m][f"{100 * f:g}"][ref])["pearson"]
                       for f in fractions] for ref in references}
             for m in METHODS}
    best_interp = {ref: np.maximum(curve["interp_linear"][ref], curve["interp_gp"][ref])
                   for ref in references}
    saved = {ref: dose_saved(fractions, curve[HEADLINE][ref], best_interp[ref])
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
        "uncertainty": {
            "nominal": 0.9, "z": Z90,
            "intervals": {
                "model_uk": "universal-kriging estimate +/- 1.645 x scale x its predictive "
                            "std (of a measurement against the measured EDS, of the "
                            "noise-free map against blurred EDS and truth); scale per "
                            "element from the leave-one-out residuals of the sampled values",
                "ensemble": "calibrated ensemble mean +/- 1.645 x scale x |slope| x "
                            "ensemble std; scale per element fitted on the sampled positions "
                            "(against the measured EDS; for the map targets with the "
                            "kriging fit's noise variance taken out of each error)",
                "extrapolation": "raw ensemble mean +/- 1.645 x scale x ensemble std, no "
                                 "EDS of the new scan; scale from each member's error on its "
                                 "validation positions of the training scans, counted on "
                                 "every position of the new scan"},
            "per_fraction": coverage, "extrapolation": extrapolation}
        if std is not None else None,
        "kriging_fits": kriging_fits,
        "anomaly": anomaly_doc, "preprocess": settings.to_dict(), "config": config.to_dict(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stem2eds_version": __version__,
    }
    if figures:
        from ..report.beyond import draw_beyond_figures

        doc["figures"] = draw_beyond_figures(run, doc, {
            "mean": mean, "std": std, "measured": measured, "eds": tgt.eds,
            "truth": tgt.truth, "score": score, "flagged": flagged, "typical": typical,
            "grain": grain, "mean_flagged": mean_flagged, "mean_typical": mean_typical,
            "r_pixel": predictors[0].info.get("r_pixel_size")})
    with atomic_output(run / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics.to_jsonable(doc), indent=1), encoding="utf-8")
    from ..report.beyond import write_beyond_report

    write_beyond_report(run, doc)
    return run
