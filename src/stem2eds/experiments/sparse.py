"""The sparse-EDS experiment (strategy ``sparse``): files in, RUN_DIR out.

Trains (or reuses) a deep ensemble on the training scans, predicts the new
scan, estimates its full maps from EDS at a few positions with every method
of :func:`stem2eds.analysis.sparse_eds.complete_sparse`, checks the intervals,
builds the anomaly map and writes ``metrics.json``, predictions, figures and
``report.html``. The array work lives in :mod:`stem2eds.analysis.sparse_eds`,
:mod:`stem2eds.analysis.kriging`, :mod:`stem2eds.analysis.uncertainty` and
:mod:`stem2eds.analysis.anomaly`; the interval checks in
:mod:`.sparse_coverage`.

The runner is a chain of steps, each returning a dataclass:
:func:`plan_sparse` (checks, :class:`SparsePlan`) -> :func:`fit_ensemble`
(:class:`EnsemblePrediction`) -> :func:`load_target_maps`
(:class:`TargetMaps`) -> :func:`score_fractions` (:class:`SparseScores`) ->
:func:`find_anomalies` (:class:`AnomalyMaps`) -> :func:`sparse_document`
(the ``metrics.json`` content).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import metrics
from ..analysis import anomaly
from ..analysis.sparse_eds import (FRACTIONS, HEADLINE, METHOD_LABELS, METHODS, complete_sparse,
                                   dose_saved,
                                   sample_positions)
from ..analysis.uncertainty import Z90
from ..errors import InputError
from ..formats.metrics_file import write_metrics
from ..formats.prediction import write_prediction_file
from ..formats.targets_file import Targets
from .common import PreprocessedCache, load_targets, prepare_run_dir, scan_file, scan_names
from .sparse_anomaly import AnomalyMaps, find_anomalies
from .sparse_coverage import extrapolation_coverage, sparse_coverage

#: What the three nominal 90 % intervals are (stored in ``metrics.json``).
INTERVALS = {
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
                     "every position of the new scan"}

def _summary_r(per_element: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over elements of each metric (NaN-aware)."""
    return {metric: float(np.nanmean(list(values.values())))
            for metric, values in per_element.items()}

#: Models in the deep ensemble of a sparse run (1: no uncertainty).
ENSEMBLE = 5


def _key(fraction: float) -> str:
    """The percent key of a fraction in ``metrics.json`` and file names (0.02 -> "2")."""
    return f"{100 * fraction:g}"


# -- plan: every check before anything is written -------------------------------
@dataclass
class SparsePlan:
    """What a sparse run does, checked.

    Attributes
    ----------
    paths : list of Path
        Training bundles, then the new scan.
    names : list of str
        Their scan names.
    run : Path
        The run folder (not yet created).
    fractions : list of float
        Sampled fractions in (0, 1], increasing.
    pattern : str
    config : TrainConfig
    ensemble : int
        Ensemble size.
    seed : int
        Seed of the sampled positions.
    """

    paths: list[Path]
    names: list[str]
    run: Path
    fractions: list[float]
    pattern: str
    config: Any
    ensemble: int
    seed: int

    @property
    def target_path(self) -> Path:
        return self.paths[-1]

    @property
    def target(self) -> str:
        return self.names[-1]


def plan_sparse(bundles, run_dir, fractions, pattern, config, ensemble: int,
                seed: int) -> SparsePlan:
    """Check the inputs of :func:`run_sparse_experiment` (nothing is written).

    Raises
    ------
    InputError
        Fewer than 2 bundles, ensemble < 1, a fraction outside (0, 1], an
        unknown pattern, a bundle without diffraction or EDS, a scan given
        twice, or an output that is not a folder.
    """
    from ..train.config import TrainConfig

    paths = [Path(b) for b in bundles]
    if len(paths) < 2:
        raise InputError(f"strategy 'sparse' needs at least 2 bundles, got {len(paths)}",
                         hint="give the training bundles first and the new scan last")
    if ensemble < 1:
        raise InputError(f"ensemble must be at least 1, got {ensemble}")
    fractions = sorted(float(f) for f in fractions)
    for f in fractions:
        sample_positions((4, 4), f, pattern)  # validates fraction and pattern up front
    names = scan_names(paths)
    run = prepare_run_dir(run_dir)
    return SparsePlan(paths, names, run, fractions, pattern, config or TrainConfig(),
                      ensemble, seed)


# -- fit: the ensemble and its prediction of the new scan -------------------------
@dataclass
class EnsemblePrediction:
    """The trained ensemble and its prediction of the new scan.

    Attributes
    ----------
    members : list of Path
        Run folders ``models/member_<k>``.
    predictors : list of Predictor
    mean : ndarray, shape (E, Rx', Ry')
        Ensemble mean (the single model's prediction for ``ensemble=1``).
    std : ndarray, shape (E, Rx', Ry'), or None
        Ensemble std (None for a single model).
    preprocessed : Path
        The new scan preprocessed with the first member's settings.
    """

    members: list[Path]
    predictors: list[Any]
    mean: np.ndarray
    std: np.ndarray | None
    preprocessed: Path

    @property
    def settings(self):
        return self.predictors[0].settings

    @property
    def elements(self) -> list[str]:
        return list(self.predictors[0].elements)


def fit_ensemble(plan: SparsePlan, quiet: bool) -> EnsemblePrediction:
    """Train (or reuse) the ensemble on the training scans and predict the new scan."""
    from ..analysis.uncertainty import ensemble_stats
    from ..predict.predictor import load_run
    from .ensemble import train_ensemble

    run = plan.run
    members = train_ensemble(plan.paths[:-1], run / "models", plan.config, plan.ensemble,
                             quiet)
    predictors = [load_run(m) for m in members]
    settings = predictors[0].settings
    # Keyed by the settings and the scan's data: a changed scan is preprocessed again.
    pre = PreprocessedCache(run / "preprocessed", quiet).get(plan.target_path, plan.target,
                                                             settings)
    preds = []
    for p in predictors:
        same = p.settings.to_dict() == settings.to_dict()
        preds.append(p.predict_scan(pre if same else plan.target_path).eds)
    mean, std = ensemble_stats(preds) if len(preds) > 1 else (preds[0], None)
    return EnsemblePrediction(members, predictors, mean, std, pre)


@dataclass
class TargetMaps:
    """What the new scan's estimates are scored against, on the cropped grid.

    Attributes
    ----------
    targets : Targets
        Preprocessed (blurred) EDS and, for simulated scans, the truth.
    measured : ndarray, shape (E, Rx', Ry'), float32
        Raw (unblurred) EDS as measured, clipped to [0, 1]: the sparse values.
    grain : ndarray of bool, shape (Rx', Ry'), or None
        Simulated grain mask (simulated scans only).
    """

    targets: Targets
    measured: np.ndarray
    grain: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.measured.shape[1:]

    @property
    def references(self) -> dict[str, np.ndarray]:
        """``{"eds": blurred EDS, "truth": truth (when known)}``, each (E, Rx', Ry')."""
        refs = {"eds": self.targets.eds}
        if self.targets.truth is not None:
            refs["truth"] = self.targets.truth
        return refs


def load_target_maps(plan: SparsePlan, ens: EnsemblePrediction) -> TargetMaps:
    """Targets, measured EDS and grain mask of the new scan."""
    from ..formats.bundle import open_bundle
    from ..preprocess import crop_maps

    tgt = load_targets(plan.target_path, ens.settings, ens.elements)
    with open_bundle(plan.target_path) as scan:
        measured = np.clip(crop_maps(scan.eds(ens.elements), tgt.crop), 0, 1).astype(np.float32)
        grain = (crop_maps(scan.file["simulation/grain_mask"][()], tgt.crop).astype(bool)
                 if scan.has("simulation/grain_mask") else None)
    return TargetMaps(tgt, measured, grain)


# -- score: every method at every fraction -----------------------------------------
@dataclass
class SparseScores:
    """Scores of every sparse-completion method, per fraction (keys: percent strings).

    Attributes
    ----------
    methods : dict
        ``{method: {percent: {ref: {metric: {El: value}}}}}`` on unsampled positions.
    model_only : dict
        ``{ref: {metric: {El: value}}}`` of the ensemble mean alone, every position.
    coverage : dict
        ``{percent: interval coverage}`` (see :func:`.sparse_coverage.sparse_coverage`).
    kriging_fits : dict
        ``{percent: {El: fit parameters}}``.
    sampled : dict
        ``{percent: number of sampled positions}``.
    model_cv_choice : dict
        ``{percent: {El: method model_cv picked}}``.
    guard : dict
        ``{percent: {El: {"choice": readable stack, "loo_mse": {candidate: value},
        "weight": {name: weight in the stack}}}}``: how the guarded headline
        ``model_uk`` stacked the kriging and the GP on the calibrated model, and the
        leave-one-out errors behind it.
    extrapolation : dict or None
        Coverage with no EDS of the new scan (None without an ensemble).
    """

    methods: dict[str, dict[str, Any]] = field(default_factory=lambda: {m: {} for m in METHODS})
    model_only: dict[str, Any] = field(default_factory=dict)
    coverage: dict[str, Any] = field(default_factory=dict)
    kriging_fits: dict[str, Any] = field(default_factory=dict)
    sampled: dict[str, int] = field(default_factory=dict)
    model_cv_choice: dict[str, dict[str, str]] = field(default_factory=dict)
    guard: dict[str, dict[str, Any]] = field(default_factory=dict)
    extrapolation: dict[str, Any] | None = None

    def curve(self, fractions: Sequence[float], refs: Sequence[str]) -> dict[str, Any]:
        """``{method: {ref: [mean Pearson r per fraction]}}``."""
        return {m: {ref: [_summary_r(self.methods[m][_key(f)][ref])["pearson"]
                          for f in fractions] for ref in refs} for m in METHODS}


def _model_cv_choice(estimates: dict[str, np.ndarray], elements: Sequence[str]) -> dict:
    """Which method ``model_cv`` picked per element (the estimate it equals)."""
    return {el: next((m for m in ("model_kriging", "model_linear", "interp_gp")
                      if np.array_equal(estimates["model_cv"][k], estimates[m][k])), "?")
            for k, el in enumerate(elements)}


def score_fractions(plan: SparsePlan, ens: EnsemblePrediction, maps: TargetMaps,
                    attrs: dict[str, Any]) -> SparseScores:
    """Complete, score and store the sparse estimate of every fraction.

    Writes ``predictions/sparse/<percent>.h5`` (the headline estimate with its
    scaled map std and the ``sampled`` mask) for each fraction.

    Parameters
    ----------
    plan : SparsePlan
    ens : EnsemblePrediction
    maps : TargetMaps
    attrs : dict
        Attributes every prediction file of the run gets.

    Returns
    -------
    SparseScores
    """
    elements, refs = ens.elements, maps.references
    out = SparseScores()
    out.model_only = {ref: metrics.element_metrics(ens.mean, values, elements,
                                                   np.ones(maps.shape, bool))
                      for ref, values in refs.items()}
    if ens.std is not None:
        out.extrapolation = extrapolation_coverage(ens.members, ens.predictors,
                                                   plan.paths[:-1], ens.mean, ens.std, refs,
                                                   ens.settings, elements)
    for f in plan.fractions:
        key = _key(f)
        mask = sample_positions(maps.shape, f, plan.pattern, plan.seed)
        out.sampled[key] = int(mask.sum())
        details: dict[str, Any] = {}
        estimates = complete_sparse(ens.mean, maps.measured, mask, ens.std, details)
        out.model_cv_choice[key] = _model_cv_choice(estimates, elements)
        guard = details["guard"]
        out.guard[key] = {el: {"choice": guard["choice"][k],
                               "loo_mse": {c: float(v[k]) for c, v in guard["loo_mse"].items()},
                               "weight": {c: float(v[k]) for c, v in guard["weight"].items()}}
                          for k, el in enumerate(elements)}
        for method, values in estimates.items():
            out.methods[method][key] = {ref: metrics.element_metrics(values, r, elements, ~mask)
                                        for ref, r in refs.items()}
        uk = details["model_uk"]
        out.kriging_fits[key] = {el: {k: v for k, v in fit.items()
                                      if not isinstance(v, np.ndarray)}
                                 for el, fit in zip(elements, uk["fits"])}
        out.coverage[key], uk_std = sparse_coverage(estimates, uk, ens.mean, ens.std,
                                                    maps.measured, refs, mask, elements)
        write_prediction_file(plan.run / "predictions" / "sparse" / f"{key}.h5", elements,
                              estimates[HEADLINE], eds_std=uk_std,
                              attrs={**attrs, "fraction": f, "pattern": plan.pattern,
                                     "method": HEADLINE,
                                     "eds_std": "standard deviation of the noise-free map "
                                                "(universal kriging, leave-one-out scaled)"},
                              extra={"sampled": mask.astype(np.uint8)})
    return out


# -- the document and the runner ----------------------------------------------------
def sparse_document(plan: SparsePlan, ens: EnsemblePrediction, maps: TargetMaps,
                    scores: SparseScores, anomalies: AnomalyMaps) -> dict[str, Any]:
    """The content of ``metrics.json`` of a sparse run (keys: see :func:`run_sparse_experiment`)."""
    from .. import __version__

    fractions, refs = plan.fractions, list(maps.references)
    curve = scores.curve(fractions, refs)
    best_interp = {ref: np.maximum(curve["interp_linear"][ref], curve["interp_gp"][ref])
                   for ref in refs}
    config = plan.config
    return {
        "strategy": "sparse", "elements": ens.elements, "train_scans": plan.names[:-1],
        "test_scans": [plan.target], "target_scan": plan.target, "pattern": plan.pattern,
        "fractions": fractions, "sampled_positions": scores.sampled,
        "positions": int(np.prod(maps.shape)), "ensemble": len(ens.predictors),
        "sampling_seed": plan.seed,
        "model": config.model, "epochs": config.max_epochs, "seed": config.seed,
        "scored_on": "positions not sampled; 'eds' = preprocessed (blurred) EDS, "
                     "'truth' = noise-free simulated composition",
        "sparse_values": "raw (unblurred) EDS of the sampled positions, as measured",
        "method_labels": METHOD_LABELS, "model_only": scores.model_only,
        "methods": scores.methods, "curve": curve, "model_cv_choice": scores.model_cv_choice,
        "guard": scores.guard,
        "best_interpolation": {ref: v.tolist() for ref, v in best_interp.items()},
        "dose_saved": {ref: dose_saved(fractions, curve[HEADLINE][ref], best_interp[ref])
                       for ref in refs},
        "uncertainty": {"nominal": 0.9, "z": Z90, "intervals": INTERVALS,
                        "per_fraction": scores.coverage, "extrapolation": scores.extrapolation}
        if ens.std is not None else None,
        "kriging_fits": scores.kriging_fits,
        "anomaly": anomalies.summary(maps.grain), "preprocess": ens.settings.to_dict(),
        "config": config.to_dict(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stem2eds_version": __version__,
    }


def run_sparse_experiment(bundles: Sequence[str | os.PathLike], run_dir: str | os.PathLike,
                          fractions: Sequence[float] = FRACTIONS, pattern: str = "random",
                          config=None, *, ensemble: int = ENSEMBLE, seed: int = 0,
                          anomaly_threshold: float = anomaly.THRESHOLD, quiet: bool = False,
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
    ``dose_saved`` (of ``model_uk``), ``guard`` (per fraction and element the
    weights of the guarded ``model_uk``'s stack and the leave-one-out errors
    behind them), ``uncertainty``, ``kriging_fits``, ``anomaly`` (with
    ``crystallinity``)), ``predictions/<scan>.h5`` (ensemble mean with
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
        Robust z-score above which a position is flagged
        (default :data:`stem2eds.analysis.anomaly.THRESHOLD`).
    quiet, figures : bool

    Returns
    -------
    Path
        ``run_dir``.
    """
    plan = plan_sparse(bundles, run_dir, fractions, pattern, config, ensemble, seed)
    run = plan.run
    for sub in ("predictions/sparse", "preprocessed", "anomaly", "figures"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    ens = fit_ensemble(plan, quiet)
    maps = load_target_maps(plan, ens)
    from .. import __version__

    attrs = {"elements": ens.elements, "scan_name": plan.target, "run_dir": str(run.resolve()),
             "stem2eds_version": __version__, "source": str(plan.target_path.resolve())}
    write_prediction_file(scan_file(run / "predictions", plan.target), ens.elements, ens.mean,
                          eds_std=ens.std,
                          attrs={**attrs, "ensemble": len(ens.predictors),
                                 "members": [str(m.relative_to(run)) for m in ens.members]})
    scores = score_fractions(plan, ens, maps, attrs)
    anomalies = find_anomalies(ens, maps, anomaly_threshold)
    anomalies.write(scan_file(run / "anomaly", plan.target), maps.grain)
    doc = sparse_document(plan, ens, maps, scores, anomalies)
    if figures:
        from ..report.beyond import SparseFigureData, draw_beyond_figures

        doc["figures"] = draw_beyond_figures(run, doc, SparseFigureData(
            mean=ens.mean, std=ens.std, eds=maps.targets.eds, score=anomalies.score,
            flagged=anomalies.flagged, typical=anomalies.typical, grain=maps.grain,
            mean_flagged=anomalies.mean_flagged, mean_typical=anomalies.mean_typical,
            crystallinity=anomalies.crystallinity, crystalline=anomalies.crystalline))
    write_metrics(run, doc)
    from ..report.beyond import write_beyond_report

    write_beyond_report(run, doc)
    return run
