"""Cross-scan experiments: which scans train, which are predicted, and how well.

Strategies (bundles are given in series order):

- ``random``: one scan, or several pooled, split into training and
  validation positions (80:20, ``random`` or spatial ``blocks``); the
  validation positions are the test set.
- ``extrapolate``: train on the first scan, predict all the others.
- ``interpolate``: train on the first and last, predict those between.
- ``leave-one-out``: every scan predicted by a model trained on all others.
- ``sparse``: the last scan predicted from its 4D-STEM scan plus EDS at a
  fraction of its positions (handled by :func:`stem2eds.experiments.sparse.run_sparse_experiment`).

Every part trains the chosen model and the ``ridge`` baseline on the same
data, fits a per-element calibration on the training positions only
(:mod:`stem2eds.analysis.calibrate`), predicts the test scans and scores raw and
calibrated predictions against the preprocessed (blurred, cropped) EDS
target (:mod:`stem2eds.metrics`), and, for simulated scans, against the
noise-free ``truth``.

RUN_DIR layout (tools outside the project rely on these names)::

    metrics.json                 strategy, elements, train_scans, test_scans, split,
                                 scans.<scan>.<metric>.<El>, summary.<metric>.<El>.mean/std,
                                 calibrated.{scans,summary,calibrations},
                                 baseline.{model,scans,summary,calibrated},
                                 truth.{scans,summary,calibrated,baseline,ceiling}
    predictions/<scan>.h5        raw CNN prediction (the ``predict`` layout)
    predictions/calibrated/<scan>.h5, predictions/baseline/<scan>.h5
    targets/<scan>.h5            the maps scored against + the evaluated-position mask
    models/<part>/cnn/, models/<part>/ridge/   the training runs (reused on re-run)
    preprocessed/<scan>_<hash>.h5   scans preprocessed with a run's settings (reused)
    figures/*.png, report.html

Finished training runs are reused when the experiment is run again, so an
interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from .. import metrics
from ..formats.bundle import HAADF, TRUTH, open_bundle
from ..analysis.calibrate import FittedCalibration, fit_calibration
from ..errors import InputError
from ..atomic import atomic_output
from ..formats.prediction import read_prediction, write_prediction_file
from ..formats.rundir import RunDir
from ..train.fit import ensure_trained

STRATEGIES = ("random", "extrapolate", "interpolate", "leave-one-out")
BASELINE_MODEL = "ridge"


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


# -- small file helpers --------------------------------------------------------
def _scan_names(bundles: Sequence[Path]) -> list[str]:
    names = []
    for path in bundles:
        with open_bundle(path, require=("diffraction", "eds")) as scan:
            names.append(scan.name)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"scan name(s) {', '.join(dupes)} appear more than once",
                         hint="give each bundle once; scan names come from the bundles' "
                              "scan_name attribute")
    return names


def _write_maps(path: Path, groups: dict[str, dict[str, np.ndarray]],
                arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Write ``group/<name>`` float32 maps, extra arrays and root attributes atomically."""
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for group, maps in groups.items():
                g = f.create_group(group)
                for name, values in maps.items():
                    g.create_dataset(name, data=np.asarray(values, np.float32))
            for name, values in arrays.items():
                f.create_dataset(name, data=values)
            for key, value in attrs.items():
                f.attrs[key] = value


def _save_prediction(path: Path, eds: np.ndarray, haadf: np.ndarray | None,
                     elements: Sequence[str], scan_name: str, predictor, source: Path,
                     **extra: Any) -> None:
    """Write maps as a prediction file with the attributes ``stem2eds predict`` gives."""
    from .. import __version__

    write_prediction_file(path, elements, eds, haadf=haadf, attrs={
        "scan_name": scan_name, "model": predictor.model_name,
        "run_dir": str(Path(predictor.run_dir).resolve()), "stem2eds_version": __version__,
        "scan_shape": list(np.shape(eds)[1:]), "targets": list(predictor.targets),
        "source": str(Path(source).resolve()), **extra})


# -- what one scan is scored against -------------------------------------------
@dataclass
class Targets:
    """The maps a prediction of one scan is scored against, on the cropped grid.

    Attributes
    ----------
    eds : ndarray, shape (E, Rx', Ry')
        Preprocessed (blurred, cropped) EDS maps: the training target.
    haadf : ndarray, shape (Rx', Ry'), or None
    truth : ndarray, shape (E, Rx', Ry'), or None
        Noise-free composition (simulated scans), cropped, not blurred.
    evaluated : ndarray of bool, shape (Rx', Ry')
        Positions that count (all, or the validation positions of a random split).
    train_positions : ndarray of bool, shape (Rx', Ry')
        Positions the model was trained on (used to fit the calibration).
    """

    eds: np.ndarray
    haadf: np.ndarray | None
    truth: np.ndarray | None
    evaluated: np.ndarray
    train_positions: np.ndarray
    crop: tuple[int, int, int, int]


def load_targets(bundle: Path, settings, elements: Sequence[str],
                 evaluated: np.ndarray | None = None,
                 train_positions: np.ndarray | None = None) -> Targets:
    """Read the target maps of a raw bundle, preprocessed as the model saw them.

    Parameters
    ----------
    bundle : Path
        Raw scan bundle.
    settings : PreprocessSettings
        The training run's resolved settings (blur and crop are applied
        exactly as in training, by :func:`stem2eds.preprocess.preprocess_maps`).
    elements : sequence of str
    evaluated, train_positions : ndarray of bool, shape (Rx', Ry'), optional
        Default: every position evaluated / none trained on.
    """
    from ..preprocess import crop_maps, preprocess_maps
    from ..preprocess.maps import check_crop

    with open_bundle(bundle, require=("eds",)) as scan:
        box = check_crop(getattr(settings, "crop", None), scan.scan_shape)
        eds = preprocess_maps(scan.eds(elements), settings)
        haadf = scan.haadf
        haadf = None if haadf is None else crop_maps(haadf, box)
        truth = None
        if scan.has(TRUTH) and all(e in scan.file[TRUTH] for e in elements):
            truth = crop_maps(scan.maps(TRUTH, elements), box)
    shape = eds.shape[1:]
    if evaluated is None:
        evaluated = np.ones(shape, bool)
    if train_positions is None:
        train_positions = np.zeros(shape, bool)
    return Targets(np.clip(eds, 0, 1), haadf, truth, evaluated, train_positions, box)


# -- scoring (pure) --------------------------------------------------------------
def score_scan(eds_pred: np.ndarray, haadf_pred: np.ndarray | None, targets: Targets,
               elements: Sequence[str]) -> dict[str, Any]:
    """Metrics of one predicted scan on its evaluated positions.

    Returns
    -------
    dict
        ``{metric: {El: value}}`` plus ``haadf: {metric: value}`` when both
        predicted and real HAADF exist.
    """
    out: dict[str, Any] = metrics.element_metrics(eds_pred, targets.eds, elements, targets.evaluated)
    if haadf_pred is not None and targets.haadf is not None:
        out["haadf"] = metrics.single_metrics(haadf_pred, targets.haadf, targets.evaluated)
    return out


def _summary(per_scan: dict[str, dict[str, Any]]) -> dict[str, Any]:
    summary = metrics.summarize({s: {k: v for k, v in d.items() if k != "haadf"}
                           for s, d in per_scan.items()})
    haadf = {s: d["haadf"] for s, d in per_scan.items() if "haadf" in d}
    if haadf:
        summary["haadf"] = metrics.summarize_single(haadf)
    return summary


# -- the runner -------------------------------------------------------------------
class _PreprocessedCache:
    """Each scan preprocessed once per set of settings, shared by the CNN and the baseline.

    Predicting from a preprocessed bundle gives the same numbers as predicting
    the raw bundle (``Predictor.predict_scan`` checks the settings match) but
    spares repeating the centring and binning for every model that predicts
    the scan. Files: ``RUN_DIR/preprocessed/<scan>_<settings hash>.h5``.
    """

    def __init__(self, folder: Path, quiet: bool):
        self.folder = folder
        self.quiet = quiet

    def get(self, source: Path, name: str, settings) -> Path:
        import hashlib

        from ..preprocess import preprocess_bundle

        key = hashlib.sha1(json.dumps(settings.to_dict(), sort_keys=True).encode()).hexdigest()
        out = self.folder / f"{name}_{key[:12]}.h5"
        if not out.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            preprocess_bundle(source, out, settings, quiet=self.quiet)
        return out

    def predict(self, predictor, source: Path, name: str):
        """``predictor.predict_scan`` of the cached preprocessed scan."""
        return predictor.predict_scan(self.get(source, name, predictor.settings))


@dataclass
class ScoredScans:
    """Predictions and targets of every predicted scan, for metrics and figures.

    Attributes
    ----------
    raw : dict
        ``{scan: (eds (E, Rx', Ry'), haadf (Rx', Ry') or None)}`` of the CNN.
    calibrated, base_raw, base_calibrated : dict
        ``{scan: eds (E, Rx', Ry')}``: calibrated CNN, baseline, calibrated baseline.
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


def _fit_part_calibration(predictor, bundles: Sequence[Path], names: Sequence[str],
                          targets: Sequence[Targets], elements: Sequence[str], method: str,
                          cache: _PreprocessedCache) -> FittedCalibration:
    """Calibration of one model fitted on its training positions only."""
    preds, acts = [], []
    for path, name, tgt in zip(bundles, names, targets):
        pred = cache.predict(predictor, path, name).eds
        preds.append(pred[:, tgt.train_positions])
        acts.append(tgt.eds[:, tgt.train_positions])
    return fit_calibration(np.concatenate(preds, axis=1), np.concatenate(acts, axis=1),
                           elements, method)


def run_experiment(bundles: Sequence[str | os.PathLike], run_dir: str | os.PathLike,
                   strategy: str, config=None, *, calibration: str = "linear",
                   quiet: bool = False, figures: bool = True,
                   sparse: dict[str, Any] | None = None) -> Path:
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
    sparse : dict, optional
        Keyword arguments of :func:`stem2eds.experiments.sparse.run_sparse_experiment`
        (``fractions``, ``pattern``, ``ensemble``) for ``strategy="sparse"``.

    Returns
    -------
    Path
        ``run_dir``.
    """
    from ..train.config import TrainConfig
    from ..predict.predictor import load_run

    if strategy == "sparse":
        from .sparse import run_sparse_experiment

        return run_sparse_experiment(bundles, run_dir, config=config, quiet=quiet,
                                     figures=figures, **(sparse or {}))
    paths = [Path(b) for b in bundles]
    parts = plan(strategy, len(paths))
    names = _scan_names(paths)
    config = config or TrainConfig()
    if calibration not in ("linear", "poly", "isotonic"):
        raise InputError(f"calibration {calibration!r} not understood",
                         hint="use linear, poly or isotonic")
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise InputError("output exists and is not a folder", path=run,
                         hint="choose another --out")
    run.mkdir(parents=True, exist_ok=True)
    (run / "predictions" / "calibrated").mkdir(parents=True, exist_ok=True)
    (run / "predictions" / "baseline").mkdir(parents=True, exist_ok=True)
    (run / "targets").mkdir(exist_ok=True)
    base_config = config.replace(model=BASELINE_MODEL)

    scored = ScoredScans(calibration_method=calibration)
    cache = _PreprocessedCache(run / "preprocessed", quiet)
    calibrations: dict[str, Any] = {}
    base_calibrations: dict[str, Any] = {}
    part_records = []
    elements: list[str] = []
    settings = None
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for part in parts:
        train_paths = [paths[i] for i in part.train]
        cnn_dir = ensure_trained(train_paths, run / "models" / part.name / "cnn", config,
                                 quiet=quiet)
        base_dir = ensure_trained(train_paths, run / "models" / part.name / BASELINE_MODEL,
                                  base_config, quiet=quiet)
        curves[part.name] = RunDir(cnn_dir).training_curves()
        cnn, base = load_run(cnn_dir), load_run(base_dir)
        elements = list(cnn.elements)
        settings = cnn.settings
        train_targets = []
        for k, path in enumerate(train_paths):
            shape = _cropped_shape(path, settings)
            val = RunDir(cnn_dir).validation_mask(k, shape)
            train_targets.append(load_targets(path, settings, elements,
                                              evaluated=val, train_positions=~val))
        train_names = [names[i] for i in part.train]
        cal = _fit_part_calibration(cnn, train_paths, train_names, train_targets, elements,
                                    calibration, cache)
        base_cal = _fit_part_calibration(base, train_paths, train_names, train_targets,
                                         elements, calibration, cache)
        calibrations[part.name] = cal.to_dict()
        base_calibrations[part.name] = base_cal.to_dict()
        for i in part.test:
            name = names[i]
            if part.held_out_positions:
                tgt = train_targets[part.train.index(i)]
            else:
                tgt = load_targets(paths[i], settings, elements)
            pred = cache.predict(cnn, paths[i], name)
            base_pred = cache.predict(base, paths[i], name).eds
            scored.raw[name] = (pred.eds, pred.haadf)
            scored.calibrated[name] = cal.apply(pred.eds)
            scored.base_raw[name] = base_pred
            scored.base_calibrated[name] = base_cal.apply(base_pred)
            if cnn.filter_predictions and not base.filter_predictions:
                scored.base_filtered[name] = base.finish_eds(base_pred, filtered=True)
            scored.targets[name] = tgt
            scored.paths[name] = paths[i]
            _write_scan_files(run, name, scored, elements, cnn, base)
        part_records.append({"name": part.name, "train_scans": [names[i] for i in part.train],
                             "test_scans": [names[i] for i in part.test],
                             "model_dir": str(cnn_dir.relative_to(run)),
                             "baseline_dir": str(base_dir.relative_to(run))})

    result = _metrics_document(strategy, config, calibration, names, parts, part_records,
                               elements, settings, scored, calibrations, base_calibrations)
    if figures:
        from ..report.build import draw_figures

        result["figures"] = draw_figures(run, result, scored, curves)
    _write_json(run / "metrics.json", result)
    from ..report import write_report

    write_report(run)
    return run


def _cropped_shape(path: Path, settings) -> tuple[int, int]:
    from ..preprocess.maps import check_crop

    with open_bundle(path) as scan:
        r0, r1, c0, c1 = check_crop(getattr(settings, "crop", None), scan.scan_shape)
    return r1 - r0, c1 - c0


def _write_scan_files(run: Path, name: str, scored: ScoredScans, elements: list[str],
                      cnn, base) -> None:
    """predictions/{,calibrated/,baseline/}<scan>.h5 and targets/<scan>.h5 of one scan."""
    eds, haadf = scored.raw[name]
    tgt = scored.targets[name]
    source = scored.paths[name]
    _save_prediction(run / "predictions" / f"{name}.h5", eds, haadf, elements, name, cnn,
                     source)
    _save_prediction(run / "predictions" / "calibrated" / f"{name}.h5",
                     scored.calibrated[name], haadf, elements, name, cnn, source,
                     calibration=scored.calibration_method)
    _save_prediction(run / "predictions" / "baseline" / f"{name}.h5", scored.base_raw[name],
                     None, elements, name, base, source)
    groups = {"eds": dict(zip(elements, tgt.eds))}
    if tgt.truth is not None:
        groups[TRUTH] = dict(zip(elements, tgt.truth))
    arrays = {"evaluated": tgt.evaluated.astype(np.uint8),
              "train_positions": tgt.train_positions.astype(np.uint8)}
    if tgt.haadf is not None:
        arrays[HAADF] = tgt.haadf.astype(np.float32)
    _write_maps(run / "targets" / f"{name}.h5", groups, arrays,
                {"elements": elements, "scan_name": name, "source": str(scored.paths[name]),
                 "crop": list(tgt.crop)})


def _metrics_document(strategy, config, calibration, names, parts, part_records, elements,
                      settings, scored: ScoredScans, calibrations, base_calibrations) -> dict:
    from .. import __version__

    test_names = list(scored.raw)
    raw = {s: score_scan(*scored.raw[s], scored.targets[s], elements) for s in test_names}
    cal = {s: score_scan(scored.calibrated[s], None, scored.targets[s], elements)
           for s in test_names}
    base = {s: score_scan(scored.base_raw[s], None, scored.targets[s], elements)
            for s in test_names}
    base_cal = {s: score_scan(scored.base_calibrated[s], None, scored.targets[s], elements)
                for s in test_names}
    base_filt = {s: score_scan(scored.base_filtered[s], None, scored.targets[s], elements)
                 for s in scored.base_filtered}
    train_names = sorted({names[i] for p in parts for i in p.train}, key=names.index)
    doc: dict[str, Any] = {
        "strategy": strategy, "elements": elements, "train_scans": train_names,
        "test_scans": test_names, "split": config.split,
        "split_description": _split_description(strategy, config),
        "model": config.model, "baseline_model": BASELINE_MODEL,
        "calibration": calibration, "targets": list(config.targets),
        "epochs": config.max_epochs, "seed": config.seed, "parts": part_records,
        "evaluated_positions": {s: int(scored.targets[s].evaluated.sum()) for s in test_names},
        "preprocess": settings.to_dict() if settings is not None else None,
        "config": config.to_dict(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stem2eds_version": __version__,
        "scans": raw, "summary": _summary(raw),
        "calibrated": {"method": calibration, "scans": cal, "summary": _summary(cal),
                       "calibrations": calibrations},
        "baseline": {"model": BASELINE_MODEL, "scans": base, "summary": _summary(base),
                     "calibrated": {"scans": base_cal, "summary": _summary(base_cal),
                                    "calibrations": base_calibrations}},
        "filter_predictions": config.resolved_filter(),
        "correlation": {s: {"predicted": metrics.correlation_matrix(scored.calibrated[s],
                                                              scored.targets[s].evaluated),
                            "real": metrics.correlation_matrix(scored.targets[s].eds,
                                                         scored.targets[s].evaluated)}
                        for s in test_names},
    }
    if base_filt:
        doc["baseline"]["filtered"] = {
            "scans": base_filt, "summary": _summary(base_filt),
            "note": f"{BASELINE_MODEL} predictions through the {config.model} run's EDS "
                    "filter (uncalibrated; Pearson r does not change under the linear "
                    "calibration)"}
    with_truth = [s for s in test_names if scored.targets[s].truth is not None]
    if with_truth:
        def vs_truth(maps):
            return {s: metrics.element_metrics(maps[s], scored.targets[s].truth, elements,
                                         scored.targets[s].evaluated) for s in with_truth}

        raw_t = vs_truth({s: scored.raw[s][0] for s in with_truth})
        cal_t = vs_truth(scored.calibrated)
        base_t = vs_truth(scored.base_calibrated)
        ceil_t = vs_truth({s: scored.targets[s].eds for s in with_truth})
        doc["truth"] = {"scans": raw_t, "summary": _summary(raw_t),
                        "calibrated": _summary(cal_t), "baseline": _summary(base_t),
                        "ceiling": _summary(ceil_t),
                        "note": "CNN (raw), CNN calibrated, ridge calibrated and the measured "
                                "(blurred) EDS target itself, each scored against the "
                                "noise-free simulated composition"}
    return doc


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


def _write_json(path: Path, data: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(metrics.to_jsonable(data), indent=1), encoding="utf-8")


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
        with h5py.File(tpath, "r") as f:
            elements = [e.decode() if isinstance(e, bytes) else str(e)
                        for e in f.attrs["elements"]]
            tgt = Targets(np.stack([f["eds"][e][()] for e in elements]),
                          f[HAADF][()] if HAADF in f else None, None,
                          f["evaluated"][()].astype(bool), f["train_positions"][()].astype(bool),
                          tuple(f.attrs["crop"]))
        for key, sub in (("raw", ""), ("calibrated", "calibrated"), ("baseline", "baseline")):
            saved = read_prediction(run / "predictions" / sub / f"{name}.h5")
            eds, haadf = saved.eds, saved.haadf
            out[key][name] = score_scan(eds, haadf if key == "raw" else None, tgt, elements)
    return out
