"""Cross-scan experiments: which scans train, which are predicted, and how well.

Strategies (bundles are given in series order):

- ``random``: one scan, or several pooled, split into training and
  validation positions (80:20, ``random`` or spatial ``blocks``); the
  validation positions are the test set.
- ``extrapolate``: train on the first scan, predict all the others.
- ``interpolate``: train on the first and last, predict those between.
- ``leave-one-out``: every scan predicted by a model trained on all others.

(The ``sparse`` strategy is a workflow of its own,
:func:`stem2eds.experiments.sparse.run_sparse_experiment`;
:func:`stem2eds.experiments.run_experiment` runs either.)

Every part trains the chosen model and the ``ridge`` baseline on the same
data, fits a per-element calibration on the training positions only
(:mod:`stem2eds.analysis.calibrate`), predicts the test scans and scores raw and
calibrated predictions against the preprocessed (blurred, cropped) EDS
target (:mod:`stem2eds.metrics`), and, for simulated scans, against the
noise-free ``truth``.

The runner is four steps: :func:`plan` (which runs), :func:`fit_part`
(train or reuse, calibrate), :func:`score_part` (predict the test scans,
write their files) and :func:`metrics_document` (the numbers), then
``metrics.json``, figures and ``report.html`` are written.

RUN_DIR layout (tools outside the project rely on these names)::

    metrics.json                 strategy, elements, train_scans, test_scans, split,
                                 scans.<scan>.<metric>.<El>, summary.<metric>.<El>.mean/std,
                                 calibrated.{scans,summary,calibrations},
                                 baseline.{model,scans,summary,calibrated},
                                 truth.{scans,summary,calibrated,baseline,ceiling}
                                 (written by :mod:`stem2eds.formats.metrics_file`)
    predictions/<scan>.h5        raw prediction of the chosen model (the ``predict`` layout)
    predictions/calibrated/<scan>.h5, predictions/baseline/<scan>.h5
    targets/<scan>.h5            the maps scored against + the evaluated-position mask
                                 (:mod:`stem2eds.formats.targets_file`)
    models/<part>/<model>/, models/<part>/ridge/   the training runs (reused on re-run);
                                 ``<model>`` is the chosen model's name, ``ridge_main``
                                 when that is ridge too (:func:`.common.model_folder`)
    preprocessed/<scan>_<hash>.h5   scans preprocessed with a run's settings (reused)
    figures/*.png, report.html

Finished training runs are reused when the experiment is run again, so an
interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import metrics
from ..analysis.calibrate import FittedCalibration, fit_calibration
from ..errors import InputError
from ..formats.metrics_file import write_metrics
from ..formats.prediction import read_prediction
from ..formats.rundir import RunDir
from ..formats.targets_file import Targets, read_targets, write_targets
from ..train.fit import ensure_trained
from .common import (BASELINE_MODEL, PreprocessedCache, cropped_shape, load_targets,
                     model_folder, prepare_run_dir, save_prediction, scan_file, scan_names,
                     score_scan, summarize_scores)

__all__ = ["STRATEGIES", "CALIBRATIONS", "Part", "plan", "TrainedPart", "ScoredScans",
           "fit_part", "score_part", "metrics_document", "run_crossscan", "recompute_metrics",
           "load_targets", "score_scan", "Targets", "BASELINE_MODEL"]

STRATEGIES = ("random", "extrapolate", "interpolate", "leave-one-out")
CALIBRATIONS = ("linear", "poly", "isotonic")


# -- planning (pure) -----------------------------------------------------------
@dataclass
class Part:
    """One training run of an experiment and the scans it predicts.

    Attributes
    ----------
    name : str
        Folder name under ``RUN_DIR/models``.
    train : list of int
        Indices (into the bundle list) of the training scans.
    test : list of int
        Indices of the predicted scans. For ``random`` these are the training
        scans themselves, scored on their validation positions only.
    held_out_positions : bool
        True when the test scans are the training scans (``random``): only
        their validation positions are scored.
    """

    name: str
    train: list[int]
    test: list[int]
    held_out_positions: bool = False


def plan(strategy: str, n_scans: int) -> list[Part]:
    """The training runs of a strategy over ``n_scans`` bundles in series order.

    Raises
    ------
    InputError
        Unknown strategy, or too few scans for it.
    """
    need = {"random": 1, "extrapolate": 2, "interpolate": 3, "leave-one-out": 2}
    if strategy not in need:
        raise InputError(f"unknown strategy {strategy!r}", hint=f"use one of {', '.join(STRATEGIES)}")
    if n_scans < need[strategy]:
        raise InputError(f"strategy {strategy!r} needs at least {need[strategy]} bundles, "
                         f"got {n_scans}",
                         hint="give the bundles in series order, e.g. scan_0033.h5 ... scan_0038.h5")
    every = list(range(n_scans))
    if strategy == "random":
        return [Part("random", every, every, held_out_positions=True)]
    if strategy == "extrapolate":
        return [Part("extrapolate", [0], every[1:])]
    if strategy == "interpolate":
        return [Part("interpolate", [0, n_scans - 1], every[1:-1])]
    return [Part(f"without_{k}", [i for i in every if i != k], [k]) for k in every]


# -- fitting: train (or reuse) one part's models and calibrate them ------------
@dataclass
class TrainedPart:
    """One part's trained models and the calibrations fitted on their training positions.

    Attributes
    ----------
    part : Part
    model_dir, base_dir : Path
        Run folders of the chosen model and of the baseline.
    model, base : Predictor
        The loaded runs.
    calibration, base_calibration : FittedCalibration
    train_targets : list of Targets
        One per training scan; ``evaluated`` = its validation positions.
    curves : dict
        ``{column: (epochs, loss)}`` of the chosen model's training log.
    """

    part: Part
    model_dir: Path
    base_dir: Path
    model: Any
    base: Any
    calibration: FittedCalibration
    base_calibration: FittedCalibration
    train_targets: list[Targets]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]

    def record(self, names: Sequence[str], run: Path) -> dict[str, Any]:
        """The part's entry of ``metrics.json``'s ``parts``."""
        return {"name": self.part.name, "train_scans": [names[i] for i in self.part.train],
                "test_scans": [names[i] for i in self.part.test],
                "model_dir": str(self.model_dir.relative_to(run)),
                "baseline_dir": str(self.base_dir.relative_to(run))}


def _fit_calibration(predictor, bundles: Sequence[Path], names: Sequence[str],
                     targets: Sequence[Targets], elements: Sequence[str], method: str,
                     cache: PreprocessedCache) -> FittedCalibration:
    """Calibration of one model fitted on its training positions only."""
    preds, acts = [], []
    for path, name, tgt in zip(bundles, names, targets):
        pred = cache.predict(predictor, path, name).eds
        preds.append(pred[:, tgt.train_positions])
        acts.append(tgt.eds[:, tgt.train_positions])
    return fit_calibration(np.concatenate(preds, axis=1), np.concatenate(acts, axis=1),
                           elements, method)


def fit_part(part: Part, paths: Sequence[Path], names: Sequence[str], run: Path, config,
             calibration: str, cache: PreprocessedCache, quiet: bool) -> TrainedPart:
    """Train (or reuse) the chosen model and the baseline of one part, and calibrate both.

    Parameters
    ----------
    part : Part
    paths, names : sequence
        Every bundle of the experiment and its scan name.
    run : Path
        The experiment's run folder; runs go to ``models/<part>/<folder>``.
    config : TrainConfig
        Settings of the chosen model (the baseline: the same with ``model="ridge"``).
    calibration : {"linear", "poly", "isotonic"}
    cache : PreprocessedCache
    quiet : bool

    Returns
    -------
    TrainedPart
    """
    from ..predict.predictor import load_run

    train_paths = [paths[i] for i in part.train]
    folder = run / "models" / part.name
    model_dir = ensure_trained(train_paths, folder / model_folder(config.model), config,
                               quiet=quiet)
    base_dir = ensure_trained(train_paths, folder / BASELINE_MODEL,
                              config.replace(model=BASELINE_MODEL), quiet=quiet)
    model, base = load_run(model_dir), load_run(base_dir)
    elements = list(model.elements)
    train_targets = []
    for k, path in enumerate(train_paths):
        val = RunDir(model_dir).validation_mask(k, cropped_shape(path, model.settings))
        train_targets.append(load_targets(path, model.settings, elements,
                                          evaluated=val, train_positions=~val))
    train_names = [names[i] for i in part.train]
    cals = [_fit_calibration(p, train_paths, train_names, train_targets, elements,
                             calibration, cache) for p in (model, base)]
    return TrainedPart(part, model_dir, base_dir, model, base, cals[0], cals[1],
                       train_targets, RunDir(model_dir).training_curves())


# -- scoring: predict the test scans ---------------------------------------------
@dataclass
class ScoredScans:
    """Predictions and targets of every predicted scan, for metrics and figures.

    Attributes
    ----------
    raw : dict
        ``{scan: (eds (E, Rx', Ry'), haadf (Rx', Ry') or None)}`` of the chosen model.
    calibrated, base_raw, base_calibrated : dict
        ``{scan: eds (E, Rx', Ry')}``: calibrated model, baseline, calibrated baseline.
    base_filtered : dict
        ``{scan: eds}``: the baseline through the main model's EDS filter, when
        the main model filters its predictions and the baseline does not (so
        the filter's share of the difference between them is visible).
    targets : dict
        ``{scan: Targets}``.
    paths : dict
        ``{scan: raw bundle path}``.
    calibration_method : str
    """

    raw: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    calibrated: dict[str, np.ndarray] = field(default_factory=dict)
    base_raw: dict[str, np.ndarray] = field(default_factory=dict)
    base_calibrated: dict[str, np.ndarray] = field(default_factory=dict)
    base_filtered: dict[str, np.ndarray] = field(default_factory=dict)
    targets: dict[str, Targets] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    calibration_method: str = "linear"


def score_part(trained: TrainedPart, paths: Sequence[Path], names: Sequence[str],
               scored: ScoredScans, cache: PreprocessedCache, run: Path) -> None:
    """Predict one part's test scans into ``scored`` and write their files.

    Writes ``predictions/{,calibrated/,baseline/}<scan>.h5`` and
    ``targets/<scan>.h5`` of every test scan of the part.
    """
    part, model, base = trained.part, trained.model, trained.base
    elements = list(model.elements)
    for i in part.test:
        name = names[i]
        if part.held_out_positions:
            tgt = trained.train_targets[part.train.index(i)]
        else:
            tgt = load_targets(paths[i], model.settings, elements)
        pred = cache.predict(model, paths[i], name)
        base_pred = cache.predict(base, paths[i], name).eds
        scored.raw[name] = (pred.eds, pred.haadf)
        scored.calibrated[name] = trained.calibration.apply(pred.eds)
        scored.base_raw[name] = base_pred
        scored.base_calibrated[name] = trained.base_calibration.apply(base_pred)
        if model.filter_predictions and not base.filter_predictions:
            scored.base_filtered[name] = base.finish_eds(base_pred, filtered=True)
        scored.targets[name] = tgt
        scored.paths[name] = paths[i]
        _write_scan_files(run, name, scored, elements, model, base)


def _write_scan_files(run: Path, name: str, scored: ScoredScans, elements: list[str],
                      model, base) -> None:
    """predictions/{,calibrated/,baseline/}<scan>.h5 and targets/<scan>.h5 of one scan."""
    eds, haadf = scored.raw[name]
    source = scored.paths[name]
    save_prediction(scan_file(run / "predictions", name), eds, haadf, elements, name, model,
                    source)
    save_prediction(scan_file(run / "predictions" / "calibrated", name),
                    scored.calibrated[name], haadf, elements, name, model, source,
                    calibration=scored.calibration_method)
    save_prediction(scan_file(run / "predictions" / "baseline", name), scored.base_raw[name],
                    None, elements, name, base, source)
    write_targets(scan_file(run / "targets", name), scored.targets[name], elements, name,
                  source)


# -- the runner -------------------------------------------------------------------
def _check_inputs(bundles, run_dir, strategy: str, calibration: str):
    """Paths, parts, scan names and run folder, all checked before anything is written."""
    paths = [Path(b) for b in bundles]
    parts = plan(strategy, len(paths))
    names = scan_names(paths)
    if calibration not in CALIBRATIONS:
        raise InputError(f"calibration {calibration!r} not understood",
                         hint=f"use one of {', '.join(CALIBRATIONS)}")
    return paths, parts, names, prepare_run_dir(run_dir)


def run_crossscan(bundles: Sequence[str | os.PathLike], run_dir: str | os.PathLike,
                  strategy: str, config=None, *, calibration: str = "linear",
                  quiet: bool = False, figures: bool = True) -> Path:
    """Run a cross-scan experiment and write RUN_DIR (see the module docstring).

    Parameters
    ----------
    bundles : sequence of path-like
        Raw scan bundles with ``eds`` maps, in series order.
    run_dir : path-like
        Output folder (created; finished training runs inside are reused).
    strategy : {"random", "extrapolate", "interpolate", "leave-one-out"}
    config : TrainConfig, optional
        Training settings of the main model (the baseline uses the same with
        ``model = "ridge"``).
    calibration : {"linear", "poly", "isotonic"}
    quiet : bool
    figures : bool
        Draw the figures (``report.html`` is written either way).

    Returns
    -------
    Path
        ``run_dir``.
    """
    from ..train.config import TrainConfig

    paths, parts, names, run = _check_inputs(bundles, run_dir, strategy, calibration)
    config = config or TrainConfig()
    for sub in ("predictions/calibrated", "predictions/baseline", "targets"):
        (run / sub).mkdir(parents=True, exist_ok=True)

    scored = ScoredScans(calibration_method=calibration)
    cache = PreprocessedCache(run / "preprocessed", quiet)
    trained = []
    for part in parts:
        trained.append(fit_part(part, paths, names, run, config, calibration, cache, quiet))
        score_part(trained[-1], paths, names, scored, cache, run)

    doc = metrics_document(strategy, config, names, parts, trained, scored, run)
    if figures:
        from ..report.build import draw_figures

        curves = {t.part.name: t.curves for t in trained}
        doc["figures"] = draw_figures(run, doc, scored, curves)
    write_metrics(run, doc)
    from ..report import write_report

    write_report(run)
    return run


# -- the numbers ------------------------------------------------------------------
def metrics_document(strategy: str, config, names: Sequence[str], parts: Sequence[Part],
                     trained: Sequence[TrainedPart], scored: ScoredScans,
                     run: Path) -> dict[str, Any]:
    """The content of ``metrics.json`` (layout in the module docstring).

    Parameters
    ----------
    strategy : str
    config : TrainConfig
    names : sequence of str
        Scan names of every bundle.
    parts : sequence of Part
    trained : sequence of TrainedPart
        In the order of ``parts``.
    scored : ScoredScans
    run : Path
        The run folder (model folders are recorded relative to it).

    Returns
    -------
    dict
    """
    from .. import __version__

    calibration = scored.calibration_method
    elements = list(trained[-1].model.elements)
    settings = trained[-1].model.settings
    test_names = list(scored.raw)

    def scores(maps, with_haadf=False):
        return {s: score_scan(*(maps[s] if with_haadf else (maps[s], None)),
                              scored.targets[s], elements) for s in maps}

    raw = scores(scored.raw, with_haadf=True)
    cal, base = scores(scored.calibrated), scores(scored.base_raw)
    base_cal, base_filt = scores(scored.base_calibrated), scores(scored.base_filtered)
    train_names = sorted({names[i] for p in parts for i in p.train}, key=names.index)
    doc: dict[str, Any] = {
        "strategy": strategy, "elements": elements, "train_scans": train_names,
        "test_scans": test_names, "split": config.split,
        "split_description": _split_description(strategy, config),
        "model": config.model, "baseline_model": BASELINE_MODEL,
        "calibration": calibration, "targets": list(config.targets),
        "epochs": config.max_epochs, "seed": config.seed,
        "parts": [t.record(names, run) for t in trained],
        "evaluated_positions": {s: int(scored.targets[s].evaluated.sum()) for s in test_names},
        "preprocess": settings.to_dict() if settings is not None else None,
        "config": config.to_dict(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stem2eds_version": __version__,
        "scans": raw, "summary": summarize_scores(raw),
        "calibrated": {"method": calibration, "scans": cal, "summary": summarize_scores(cal),
                       "calibrations": {t.part.name: t.calibration.to_dict()
                                        for t in trained}},
        "baseline": {"model": BASELINE_MODEL, "scans": base, "summary": summarize_scores(base),
                     "calibrated": {"scans": base_cal, "summary": summarize_scores(base_cal),
                                    "calibrations": {t.part.name: t.base_calibration.to_dict()
                                                     for t in trained}}},
        "filter_predictions": config.resolved_filter(),
        "correlation": {s: {"predicted": metrics.correlation_matrix(
                                scored.calibrated[s], scored.targets[s].evaluated),
                            "real": metrics.correlation_matrix(
                                scored.targets[s].eds, scored.targets[s].evaluated)}
                        for s in test_names},
    }
    if base_filt:
        doc["baseline"]["filtered"] = {
            "scans": base_filt, "summary": summarize_scores(base_filt),
            "note": f"{BASELINE_MODEL} predictions through the {config.model} run's EDS "
                    "filter (uncalibrated; Pearson r does not change under the linear "
                    "calibration)"}
    truth = _truth_block(scored, elements, config.model)
    if truth:
        doc["truth"] = truth
    return doc


def _truth_block(scored: ScoredScans, elements: Sequence[str], model: str) -> dict | None:
    """Scores against the noise-free composition of simulated scans (None without truth)."""
    with_truth = [s for s in scored.raw if scored.targets[s].truth is not None]
    if not with_truth:
        return None

    def vs_truth(maps):
        return {s: metrics.element_metrics(maps[s], scored.targets[s].truth, elements,
                                           scored.targets[s].evaluated) for s in with_truth}

    raw_t = vs_truth({s: scored.raw[s][0] for s in with_truth})
    return {"scans": raw_t, "summary": summarize_scores(raw_t),
            "calibrated": summarize_scores(vs_truth(scored.calibrated)),
            "baseline": summarize_scores(vs_truth(scored.base_calibrated)),
            "ceiling": summarize_scores(vs_truth({s: scored.targets[s].eds
                                                  for s in with_truth})),
            "note": f"{model} (raw), {model} calibrated, {BASELINE_MODEL} calibrated and the "
                    "measured (blurred) EDS target itself, each scored against the "
                    "noise-free simulated composition"}


def _split_description(strategy: str, config) -> str:
    if strategy == "random":
        kind = ("spatial blocks of %d x %d positions" % (config.block_size, config.block_size)
                if config.split == "blocks" else "random positions")
        return (f"{100 * (1 - config.val_fraction):.0f}:{100 * config.val_fraction:.0f} split "
                f"of probe positions ({kind}); the validation positions are the test set")
    return {"extrapolate": "whole scans: train on the first scan, predict all later ones",
            "interpolate": "whole scans: train on the first and last, predict those between",
            "leave-one-out": "whole scans: each scan predicted by a model trained on all others",
            }[strategy] + f" (early stopping on a {config.split} {100 * config.val_fraction:.0f} % " \
                          "validation split of the training scans)"


def recompute_metrics(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Scores recomputed from the files in RUN_DIR (``predictions/`` and ``targets/``).

    Used to check that ``metrics.json`` agrees with the predictions written
    beside it.

    Returns
    -------
    dict
        ``{"raw": {scan: metrics}, "calibrated": {...}, "baseline": {...}}``.
    """
    run = Path(run_dir)
    out: dict[str, dict[str, Any]] = {"raw": {}, "calibrated": {}, "baseline": {}}
    for tpath in sorted((run / "targets").glob("*.h5")):
        name = tpath.stem
        tgt, elements = read_targets(tpath)
        for key, sub in (("raw", ""), ("calibrated", "calibrated"), ("baseline", "baseline")):
            saved = read_prediction(run / "predictions" / sub / f"{name}.h5")
            out[key][name] = score_scan(saved.eds, saved.haadf if key == "raw" else None, tgt,
                                        elements)
    return out
