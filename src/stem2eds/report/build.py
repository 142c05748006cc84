"""Draw an experiment's figures into RUN_DIR/figures and list them for the report.

Called by :func:`stem2eds.experiments.crossscan.run_crossscan` with the predictions and
targets still in memory; each figure comes from one function of
:mod:`stem2eds.report.figures`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import metrics
from ..formats.bundle import open_bundle
from . import figures as F
from .paper import PAPER_RESULTS


def _pooled(maps: Mapping[str, np.ndarray], scored, names) -> tuple[np.ndarray, np.ndarray]:
    """(E, n) predictions and targets of the evaluated positions of all scans."""
    pred = np.concatenate([np.asarray(maps[s])[:, scored.targets[s].evaluated] for s in names],
                          axis=1)
    act = np.concatenate([scored.targets[s].eds[:, scored.targets[s].evaluated] for s in names],
                         axis=1)
    return pred, act


def _series(doc: Mapping[str, Any], metric: str, elements, with_paper: bool = True):
    """Bars (mean, std) and per-scan dots of every model for one metric."""
    model, base = str(doc.get("model") or "model"), doc["baseline"]["model"]
    blocks = {model: doc, f"{model} calibrated": doc["calibrated"],
              f"{base} baseline": doc["baseline"],
              f"{base} calibrated": doc["baseline"]["calibrated"]}
    series, points = {}, {}
    for label, block in blocks.items():
        summary = block["summary"].get(metric, {})
        series[label] = {el: (summary[el]["mean"], summary[el]["std"]) for el in elements
                         if el in summary}
        points[label] = {el: [block["scans"][s][metric][el] for s in block["scans"]]
                         for el in elements}
    paper = PAPER_RESULTS.get(doc["strategy"], {}).get(metric)
    if with_paper and paper:
        series["paper"] = {el: (v, None) for el, v in paper.items() if el in elements}
    return series, points


def _mean_patterns(path: Path, crop, high: np.ndarray, typical: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, Any]:
    """Mean raw diffraction pattern (Qx, Qy) of two sets of cropped-grid positions.

    Streams the raw bundle once; positions are mapped from the cropped grid
    back onto the raw scan with the crop offset.
    """
    r0, r1, c0, c1 = crop
    with open_bundle(path) as scan:
        rx, ry = scan.scan_shape
        full_high = np.zeros((rx, ry), bool)
        full_typ = np.zeros((rx, ry), bool)
        full_high[r0:r1, c0:c1] = high
        full_typ[r0:r1, c0:c1] = typical
        fh, ft = full_high.ravel(), full_typ.ravel()
        sum_high = np.zeros(scan.detector_shape)
        sum_typ = np.zeros(scan.detector_shape)
        for start, block in scan.iter_patterns(batch=1024):
            sel = slice(start, start + len(block))
            sum_high += block[fh[sel]].sum(axis=0, dtype=np.float64)
            sum_typ += block[ft[sel]].sum(axis=0, dtype=np.float64)
        cal = scan.calibration
    return sum_high / max(1, fh.sum()), sum_typ / max(1, ft.sum()), cal


class _Figures:
    """Collects the figures of one report: saves each PNG and lists its entry."""

    def __init__(self, run: Path):
        self.folder = run / "figures"
        self.folder.mkdir(exist_ok=True)
        self.listed: list[dict[str, str]] = []

    def save(self, fig, file: str, title: str, caption: str) -> None:
        F.save_figure(fig, self.folder / file)
        self.listed.append({"file": file, "title": title, "caption": caption})


def draw_figures(run: Path, doc: dict[str, Any], scored, curves) -> list[dict[str, str]]:
    """Write every figure of the report into ``run/figures``.

    Parameters
    ----------
    run : Path
        The run directory.
    doc : dict
        The metrics document (as written to ``metrics.json``).
    scored : stem2eds.experiments.crossscan.ScoredScans
        Predictions and targets per predicted scan.
    curves : dict
        ``{part: {column: (epochs, loss)}}`` from the training logs.

    Returns
    -------
    list of dict
        ``{"file", "title", "caption"}`` in report order; ``file`` is a name
        in ``run/figures``.
    """
    out = _Figures(run)
    names = list(scored.raw)
    model = str(doc.get("model") or "model")
    history = {f"{part}: {col.replace('_', ' ')}": xy for part, cols in curves.items()
               for col, xy in cols.items()}
    if history:
        out.save(F.training_curves(history, ylabel=f"loss ({doc['config']['loss'].upper()})"),
                 "training_curves.png", "Training curves (paper Fig. 1A)",
                 f"Training and validation loss per epoch of the {model} model of every "
                 "training run.")
    _accuracy_figures(out, doc, scored, names, model)
    with open_bundle(scored.paths[names[0]]) as scan:
        cal = scan.calibration
    _map_figures(out, doc, scored, names, model, cal)
    _crystallinity_figure(out, scored, names, model, cal)
    return out.listed


def _accuracy_figures(out: _Figures, doc, scored, names, model: str) -> None:
    """Predicted-vs-actual scatter plots and the per-element metric bars."""
    elements = doc["elements"]
    raw_maps = {s: scored.raw[s][0] for s in names}
    for label, maps, file in ((f"raw {model}", raw_maps, "pred_vs_actual.png"),
                              (f"calibrated {model}", scored.calibrated,
                               "pred_vs_actual_calibrated.png")):
        pred, act = _pooled(maps, scored, names)
        out.save(F.predicted_vs_actual(pred, act, elements,
                                       f"Predicted vs actual, {label}, all predicted scans"),
                 file, f"Predicted vs actual, {label} (paper Fig. 1B)",
                 "Density of evaluated positions (log colour scale) of every predicted scan; "
                 "dashed line: perfect prediction.")
    for metric, ylabel, file, fig_no in (
            ("pearson", "Pearson r", "pearson_bars.png", "1C, 2, 5"),
            ("percent_error", "percentage error (%)", "percent_error_bars.png", "1D"),
            ("mae", "MAE (atomic fraction)", "mae_bars.png", "2, 5"),
            ("r2", "R\u00b2", "r2_bars.png", "")):
        series, points = _series(doc, metric, elements)
        out.save(F.grouped_bars(series, elements, ylabel,
                                f"{ylabel} per element, mean \u00b1 std over {len(names)} "
                                "scan(s)", points=points),
                 file, f"{ylabel} per element" + (f" (paper Fig. {fig_no})" if fig_no else ""),
                 f"Bars: mean over the predicted scans, error bars: standard deviation, dots: "
                 f"single scans. The {model} model raw and calibrated, the "
                 f"{doc['baseline']['model']} baseline, and the paper where it reports this "
                 "number.")


def _map_figures(out: _Figures, doc, scored, names, model: str, cal) -> None:
    """Real vs predicted maps of every scan and the inter-element correlation."""
    elements = doc["elements"]
    for s in names:
        tgt = scored.targets[s]
        out.save(F.maps_side_by_side(scored.calibrated[s], tgt.eds, elements, s,
                                     cal.r_pixel_size, cal.r_pixel_unit),
                 f"maps_{s}.png", f"Scan {s}: real vs predicted maps (paper Figs. 3, 6)",
                 f"Top: preprocessed EDS (training target); middle: calibrated {model} "
                 "prediction (same colour scale); bottom: absolute error."
                 + ("" if tgt.evaluated.all() else " Only the validation positions are scored."))
    pred, act = _pooled(scored.calibrated, scored, names)
    out.save(F.correlation_matrices(metrics.correlation_matrix(pred[:, None, :]),
                                    metrics.correlation_matrix(act[:, None, :]), elements,
                                    "Inter-element correlation, evaluated positions of all "
                                    "scans"),
             "correlation.png", "Inter-element correlation (paper Figs. 4, 7)",
             "Pearson r between element maps, real EDS (left) and calibrated prediction "
             "(right); a model that learned chemistry reproduces the real pattern of "
             "correlations.")


def _crystallinity_figure(out: _Figures, scored, names, model: str, cal) -> None:
    """HAADF comparisons, then the diffraction of the worst scan's highest-error region."""
    worst_scan, worst_err, error_label, worst_map = None, None, "", None
    for s in names:
        haadf_pred, tgt = scored.raw[s][1], scored.targets[s]
        if haadf_pred is not None and tgt.haadf is not None:
            out.save(F.haadf_comparison(haadf_pred, tgt.haadf, s, cal.r_pixel_size,
                                        cal.r_pixel_unit),
                     f"haadf_{s}.png", f"Scan {s}: HAADF predicted vs real (paper Fig. 8)",
                     f"Real HAADF, the {model} model's auxiliary HAADF output and the "
                     "absolute error.")
            err = np.abs(haadf_pred - tgt.haadf)
            label = "|HAADF error| (detector units)"
        else:
            err = np.abs(scored.calibrated[s] - tgt.eds).sum(axis=0) * 100
            label = "summed |composition error| (at.%)"
        err = np.where(tgt.evaluated, err, np.nan)
        score = np.nanmax(err) / max(np.nanmedian(err), 1e-12)
        if worst_err is None or score > worst_err:
            worst_scan, worst_err, error_label, worst_map = s, score, label, err
    if worst_scan is None:
        return
    tgt = scored.targets[worst_scan]
    high, typical = metrics.high_error_region(np.nan_to_num(worst_map), 0.95, tgt.evaluated,
                                              smooth=1.0)
    mean_high, mean_typ, qcal = _mean_patterns(scored.paths[worst_scan], tgt.crop, high,
                                               typical)
    out.save(F.diffraction_comparison(np.nan_to_num(worst_map), high, typical, mean_high,
                                      mean_typ, worst_scan, cal.r_pixel_size, cal.r_pixel_unit,
                                      qcal.q_pixel_size, qcal.q_pixel_unit, error_label),
             "crystallinity_check.png",
             f"Scan {worst_scan}: diffraction of the highest-error region (paper Fig. 8 check)",
             "Left: per-position error of the scan whose worst region stands out most "
             "(highest max/median error); the top 5 % of positions of the error map "
             "smoothed over about one probe position form the highest-error region (cyan). "
             "Middle and right: mean raw diffraction pattern of that region and of "
             "typical positions (40-60 % error quantile). Sharp spots or rings in the middle "
             "panel point to crystalline material the model has not seen.")
