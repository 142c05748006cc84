"""Figures and the HTML page of the sparse-EDS experiment (strategy ``sparse``).

``draw_beyond_figures`` draws the dose-accuracy curve, the uncertainty maps
and the anomaly map (with the mean diffraction pattern of the flagged
positions beside a typical one); ``write_beyond_report`` writes
``RUN_DIR/report.html`` from ``metrics.json``'s contents.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..formats.metrics_file import FIGURES_FOLDER, figure_file
from .figures import diffraction_comparison, save_figure

_STYLE = {"interp_linear": ("tab:gray", "--", "s"), "interp_gp": ("tab:blue", "--", "^"),
          "model_linear": ("tab:orange", "-", "o"), "model_kriging": ("tab:red", "-", "D"),
          "model_cv": ("tab:purple", ":", "v"), "model_uk_flat": ("tab:olive", ":", "x"),
          "model_uk_unguarded": ("tab:cyan", ":", "P"), "model_uk": ("tab:green", "-", "P")}


def crossings(fractions: Sequence[float], method: Sequence[float],
              baseline: Sequence[float]) -> list[float]:
    """Fractions where two accuracy curves cross (linear in log fraction between points).

    Parameters
    ----------
    fractions : sequence of float, increasing
    method, baseline : sequence of float
        One score per fraction.

    Returns
    -------
    list of float
        Every fraction where ``method - baseline`` changes sign.
    """
    f = np.log(np.asarray(fractions, float))
    d = np.asarray(method, float) - np.asarray(baseline, float)
    out = []
    for i in range(len(d) - 1):
        if d[i] == 0:
            out.append(float(np.exp(f[i])))
        elif d[i] * d[i + 1] < 0:
            t = d[i] / (d[i] - d[i + 1])
            out.append(float(np.exp(f[i] + t * (f[i + 1] - f[i]))))
    return out


def dose_accuracy_curve(doc: Mapping[str, Any]) -> Figure:
    """Mean Pearson r (over elements, unsampled positions) against the sampled fraction.

    One panel per reference (blurred EDS, and the truth when present); the
    model alone (no sparse EDS, uncalibrated) is a horizontal line. The
    fraction where the best interpolation first reaches the model+sparse
    curve's value at 2 % is marked, and so is every fraction where the
    universal-kriging curve crosses the best interpolation.
    """
    refs = list(doc["curve"]["model_kriging"])
    frac = 100 * np.asarray(doc["fractions"])
    fig = Figure(figsize=(6.2 * len(refs), 4.6))
    axes = np.atleast_1d(fig.subplots(1, len(refs)))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.28, top=0.88, wspace=0.25)
    for ax, ref in zip(axes, refs):
        for method, (colour, style, marker) in _STYLE.items():
            if method not in doc["curve"]:  # a run written before the method existed
                continue
            ax.plot(frac, doc["curve"][method][ref], style, color=colour, marker=marker,
                    label=doc["method_labels"][method])
        crossed = crossings(doc["fractions"], doc["curve"]["model_uk"][ref],
                            doc["best_interpolation"][ref])
        if not crossed:
            ax.text(0.4, 0.3, "universal kriging and the best\ninterpolation do not cross "
                    f"\nbetween {frac[0]:g} and {frac[-1]:g} %", transform=ax.transAxes,
                    fontsize=8, color="tab:green")
        for cross in crossed:
            ax.axvline(100 * cross, color="tab:green", lw=0.8, ls=(0, (1, 3)))
            ax.annotate(f"curves cross\nat {100 * cross:.2g} %", (100 * cross, ax.get_ylim()[1]),
                        fontsize=8, xytext=(3, -24), textcoords="offset points",
                        color="tab:green")
        alone = float(np.nanmean(list(doc["model_only"][ref]["pearson"].values())))
        ax.axhline(alone, color="k", lw=0.8, ls=":", label="4D-STEM model alone (no EDS)")
        for entry in doc["dose_saved"][ref]:
            if abs(entry["fraction"] - 0.02) < 1e-9 and entry["reached"]:
                ax.axvline(100 * entry["baseline_fraction"], color="tab:red", lw=0.8, ls="-.")
                ax.annotate(f"interpolation needs {100 * entry['baseline_fraction']:.2g} %\n"
                            f"for the accuracy of 2 % + 4D-STEM ({entry['ratio']:.2g}x dose)",
                            (100 * entry["baseline_fraction"], ax.get_ylim()[0]),
                            fontsize=8, xytext=(-4, 8), textcoords="offset points",
                            ha="right")
        ax.set_xscale("log")
        ax.set_xlabel("EDS positions sampled (%)")
        ax.set_ylabel("mean Pearson r over elements")
        ax.set_title({"eds": "vs blurred EDS", "truth": "vs noise-free truth"}.get(ref, ref))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"Scan {doc['target_scan']}: dose-accuracy ({doc['pattern']} sampling, "
                 f"scored on unsampled positions)")
    return fig


def uncertainty_maps(mean: np.ndarray, std: np.ndarray, reference: np.ndarray,
                     elements: Sequence[str], scan: str) -> Figure:
    """Per element: ensemble mean, ensemble std and |mean - reference| (at.%).

    Parameters
    ----------
    mean, std, reference : ndarray, shape (E, Rx, Ry), atomic fractions
    elements : sequence of str
    scan : str
    """
    n = len(elements)
    fig = Figure(figsize=(2.6 * n, 8))
    axes = fig.subplots(3, n, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.97, bottom=0.03, top=0.9, hspace=0.35, wspace=0.5)
    rows = (("mean (at.%)", 100 * mean, "viridis"), ("ensemble std (at.%)", 100 * std, "magma"),
            ("|mean - EDS| (at.%)", 100 * np.abs(mean - reference), "magma"))
    for r, (label, values, cmap) in enumerate(rows):
        for k, el in enumerate(elements):
            im = axes[r, k].imshow(values[k], cmap=cmap)
            axes[r, k].set_title(f"{el}: {label}", fontsize=8)
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
            fig.colorbar(im, ax=axes[r, k], shrink=0.7)
    fig.suptitle(f"Scan {scan}: deep-ensemble prediction, uncertainty and error (raw, "
                 "uncalibrated)")
    return fig


def anomaly_map(score: np.ndarray, flagged: np.ndarray, grain: np.ndarray | None,
                components: Mapping[str, Any], scan: str, threshold: float) -> Figure:
    """The combined anomaly score with flagged positions (and true grains when known)."""
    return _outlined_map(score, "magma", "anomaly score (mean robust z)", flagged, "cyan",
                         f"flagged (cyan): score > {threshold:g}", grain, ("lime", "green"),
                         f"Scan {scan}: anomaly map ({', '.join(components)})")


def crystallinity_map_figure(score: np.ndarray, crystalline: np.ndarray,
                             grain: np.ndarray | None, scan: str) -> Figure:
    """The Bragg-disk score with the crystalline positions (and true grains when known).

    Parameters
    ----------
    score : ndarray, shape (Rx, Ry)
        Crystallinity score (noise units of the rings).
    crystalline : ndarray of bool, shape (Rx, Ry)
    grain : ndarray of bool, shape (Rx, Ry), or None
        Simulated grain mask.
    scan : str
    """
    return _outlined_map(score, "viridis", "Bragg-disk score (ring noise units)", crystalline,
                         "white", f"crystalline (white): {int(np.sum(crystalline))} positions",
                         grain, ("red", "red"), f"Scan {scan}: crystallinity map")


def _outlined_map(score: np.ndarray, cmap: str, label: str, mask: np.ndarray, colour: str,
                  title: str, grain: np.ndarray | None, grain_colour: tuple[str, str],
                  suptitle: str) -> Figure:
    """A (Rx, Ry) score map with ``mask`` outlined, and the simulated grains dashed when known.

    ``grain_colour`` is (matplotlib colour, its name in the title).
    """
    fig = Figure(figsize=(6, 4.8))
    ax = fig.subplots()
    im = ax.imshow(score, cmap=cmap)
    fig.colorbar(im, ax=ax, label=label)
    yy, xx = np.indices(score.shape)
    if np.any(mask):
        ax.contour(xx, yy, mask.astype(float), levels=[0.5], colors=colour, linewidths=1.5)
    if grain is not None and grain.any():
        ax.contour(xx, yy, grain.astype(float), levels=[0.5], colors=grain_colour[0],
                   linewidths=1, linestyles="--")
        title += f"; simulated grains ({grain_colour[1]}, dashed)"
    ax.set_title(title, fontsize=9)
    fig.suptitle(suptitle, fontsize=10)
    return fig


@dataclass
class SparseFigureData:
    """The arrays the sparse run's figures show (all on the cropped grid).

    Attributes
    ----------
    mean : ndarray, shape (E, Rx, Ry)
        Ensemble mean.
    std : ndarray, shape (E, Rx, Ry), or None
        Ensemble std (None for a single model: no uncertainty figure).
    eds : ndarray, shape (E, Rx, Ry)
        Preprocessed (blurred) EDS of the new scan.
    score : ndarray, shape (Rx, Ry)
        Anomaly score.
    flagged, typical : ndarray of bool, shape (Rx, Ry)
    grain : ndarray of bool, shape (Rx, Ry), or None
        Simulated grain mask.
    mean_flagged, mean_typical : ndarray, shape (Qx, Qy)
        Mean pattern of the flagged and of the typical positions.
    crystallinity : ndarray, shape (Rx, Ry), or None
        Bragg-disk score (no figure when None).
    crystalline : ndarray of bool, shape (Rx, Ry), or None
    """

    mean: np.ndarray
    std: np.ndarray | None
    eds: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    typical: np.ndarray
    grain: np.ndarray | None
    mean_flagged: np.ndarray
    mean_typical: np.ndarray
    crystallinity: np.ndarray | None = None
    crystalline: np.ndarray | None = None


def draw_beyond_figures(run: Path, doc: dict[str, Any],
                        data: SparseFigureData) -> list[dict[str, str]]:
    """Draw the figures of a sparse run into ``run/figures``.

    Parameters
    ----------
    run : Path
    doc : dict
        The metrics document being written.
    data : SparseFigureData

    Returns
    -------
    list of dict
        ``{"file", "title", "caption"}`` per figure (``file`` = ``figures/<name>``,
        relative to ``run``).
    """
    out = []
    folder = run / "figures"
    folder.mkdir(exist_ok=True)

    def save(fig: Figure, name: str, title: str, caption: str) -> None:
        save_figure(fig, folder / name)
        out.append({"file": f"figures/{name}", "title": title, "caption": caption})

    save(dose_accuracy_curve(doc), "dose_accuracy.png", "Dose-accuracy curve",
         "Mean Pearson r over elements on the positions not sampled, for the 4D-STEM model "
         "calibrated on the sparse EDS (with and without kriging its residual) and for "
         "interpolating the sparse EDS alone.")
    if data.std is not None:
        save(uncertainty_maps(data.mean, data.std, data.eds, doc["elements"],
                              doc["target_scan"]), "uncertainty_maps.png",
             "Ensemble uncertainty",
             f"Mean and standard deviation over {doc['ensemble']} models, and the error of "
             "the mean against the blurred EDS.")
    an = doc["anomaly"]
    save(anomaly_map(data.score, data.flagged, data.grain, an["components"],
                     doc["target_scan"], an["threshold"]), "anomaly_map.png", "Anomaly map",
         "Mean robust z-score of " + ", ".join(an["components"]) + ".")
    if data.flagged.any():
        save(diffraction_comparison(data.score, data.flagged, data.typical,
                                    data.mean_flagged, data.mean_typical,
                                    doc["target_scan"], error_label="anomaly score",
                                    region="flagged"),
             "anomaly_patterns.png", "Mean pattern of flagged positions",
             "Mean preprocessed pattern of the flagged positions beside that of typical "
             "positions (|score| < 1).")
    if data.crystallinity is not None and data.crystalline is not None:
        save(crystallinity_map_figure(data.crystallinity, data.crystalline, data.grain,
                                      doc["target_scan"]), "crystallinity_map.png",
             "Crystallinity map",
             "Brightest Bragg-disk-sized spot above the amorphous rings of each pattern, in "
             "units of the rings' own noise (no training data used); white: positions marked "
             "crystalline against the scan's amorphous majority.")
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    return "nan" if np.isnan(v) else f"{v:.{digits}g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _curve_tables(doc: Mapping[str, Any]) -> list[str]:
    """Mean Pearson r per method and fraction, and the dose saved, per reference."""
    parts = []
    fr = doc["fractions"]
    for ref in doc["curve"]["model_kriging"]:
        rows = [[html.escape(doc["method_labels"][m])] + [_fmt(v) for v in doc["curve"][m][ref]]
                for m in doc["curve"]]
        parts.append(f"<h2>Mean Pearson r vs {html.escape(ref)}</h2>")
        header = [f"{100 * f:g} % ({doc['sampled_positions'][f'{100 * f:g}']} pos.)"
                  for f in fr]
        parts.append(_table(["method"] + header, rows))
        saved = [[f"{100 * e['fraction']:g} %",
                  (f"{100 * e['baseline_fraction']:.3g} %" if e["reached"] else
                   f"&gt; {100 * fr[-1]:g} %"),
                  (_fmt(e["ratio"]) if e["reached"] else f"&gt; {_fmt(e['ratio'])}")]
                 for e in doc["dose_saved"][ref]]
        parts.append("<p>Dose saved at equal accuracy (F' = fraction the best interpolation "
                     "needs for the accuracy of model + sparse EDS (universal kriging) "
                     "at F):</p>")
        parts.append(_table(["F", "F'", "F'/F"], saved))
    if doc.get("guard"):
        parts.append(_guard_table(doc["guard"], doc["elements"]))
    return parts


def _guard_table(guard: Mapping[str, Any], elements: Sequence[str]) -> str:
    """The guarded headline's stack weights, per fraction (one column when the elements share them)."""
    shared = all(len({guard[key][el]["choice"] for el in elements}) == 1 for key in guard)
    columns = ["all elements"] if shared else list(elements)
    rows = [[f"{html.escape(key)} %"] + [html.escape(guard[key][el]["choice"])
                                         for el in (elements[:1] if shared else elements)]
            for key in guard]
    return ("<h2>Guard of model + sparse EDS</h2><p>The headline estimate is the calibrated "
            "model plus weighted differences to the universal kriging and to the GP "
            "interpolation of the sparse EDS. The weights are fitted to the leave-one-out "
            "residuals at the sampled positions (pooled over the elements in this version, "
            "so one stack serves them all); a candidate fitted from too few samples gets "
            "none:</p>" + _table(["fraction"] + columns, rows))


def _scale_text(scale: Mapping[str, Any]) -> str:
    return ", ".join(f"{el} {_fmt(v, 2)}" for el, v in scale.items())


def _coverage_table(unc: Mapping[str, Any]) -> str:
    """Coverage of the nominal 90 % intervals, per fraction, interval and target."""
    rows = []
    for key, entry in unc["per_fraction"].items():
        for kind in ("model_uk", "ensemble"):
            block = entry.get(kind)
            if not block:
                continue
            for ref in ("measured", "eds", "truth"):
                if ref not in block:
                    continue
                scale = block.get("scale") or block.get(
                    "scale_measured" if ref == "measured" else "scale_map")
                rows.append([f"{key} %", kind, html.escape(ref),
                             _fmt(block[ref]["unscaled_mean"]),
                             _fmt(block[ref]["scaled_mean"]), _scale_text(scale)])
    extra = unc.get("extrapolation")
    if extra:
        for ref in ("eds", "truth"):
            if ref in extra:
                rows.append(["none (held-out scan)", "extrapolation", html.escape(ref),
                             _fmt(extra[ref]["unscaled_mean"]),
                             _fmt(extra[ref]["scaled_mean"]), _scale_text(extra["scale"])])
    return ("<h2>Uncertainty: coverage of the nominal 90 % intervals</h2><ul>"
            + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                      for k, v in unc["intervals"].items()) + "</ul>"
            + _table(["sparse EDS", "interval", "target", "coverage, raw std",
                      "coverage, scaled std", "scale per element"], rows))


def _kriging_table(fits: Mapping[str, Any]) -> str:
    rows = [[f"{key} %", html.escape(el), _fmt(v["slope"]), _fmt(v["slope_std"]),
             _fmt(v["length_scale"]), _fmt(v["noise_std"]), _fmt(v["tau"])]
            for key, per in fits.items() for el, v in per.items()]
    return ("<h2>Universal kriging fits</h2><p>Weight of the model's prediction "
            "(GLS slope and its standard error), GP length scale (pixels), "
            "measurement-noise std (atomic fraction), model-error factor on the "
            "ensemble std.</p>"
            + _table(["F", "element", "slope", "+/-", "length", "noise std", "tau"], rows))


def _anomaly_section(an: Mapping[str, Any]) -> str:
    text = (f"<h2>Anomaly map</h2><p>{an['flagged']} of {an['positions']} positions "
            f"flagged (score &gt; {an['threshold']:g}; components: "
            f"{html.escape(', '.join(an['components']))}).</p>")
    if "combined" in an:
        rows = [["combined"] + [_fmt(an["combined"][k]) for k in ("precision", "recall", "f1")]]
        rows += [[html.escape(k)] + [_fmt(v[k2]) for k2 in ("precision", "recall", "f1")]
                 for k, v in an["per_component"].items()]
        text += (f"<p>Against the simulated grain mask ({an['grain_positions']} "
                 "positions):</p>" + _table(["score", "precision", "recall", "F1"], rows))
    cr = an.get("crystallinity")
    if cr is not None:
        text += (f"<h2>Crystallinity map</h2><p>{cr['crystalline']} positions crystalline "
                 "(Bragg disks above the amorphous rings; independent of the training "
                 "scans).</p>")
        if "detection" in cr:
            d = cr["detection"]
            text += _table(["against the simulated grains", "precision", "recall", "F1"],
                           [["crystalline"] + [_fmt(d[k]) for k in ("precision", "recall",
                                                                      "f1")]])
    return text


def render_beyond_report(doc: Mapping[str, Any], explorer: str = "") -> str:
    """The HTML page of a sparse run (the map explorer, tables of every number, the figures).

    Parameters
    ----------
    doc : mapping
        The sparse run's ``metrics.json`` content.
    explorer : str
        The interactive maps section
        (:func:`stem2eds.report.interactive.render_interactive`), shown first.

    Returns
    -------
    str
        An HTML document; figures are linked as ``figures/<name>`` (only files
        in the run's own ``figures/`` folder, see
        :func:`stem2eds.formats.metrics_file.figure_file`).
    """
    parts = [f"<h1>Sparse EDS, uncertainty and anomalies: scan "
             f"{html.escape(doc['target_scan'])}</h1>",
             f"<p>Model {html.escape(str(doc['model']))} (ensemble of {doc['ensemble']}) "
             f"trained on {html.escape(', '.join(doc['train_scans']))}; "
             f"{html.escape(doc['pattern'])} sampling of the new scan's EDS. "
             f"Sparse values: {html.escape(doc['sparse_values'])}. "
             f"Scored on {html.escape(doc['scored_on'])}.</p>", explorer]
    parts += _curve_tables(doc)
    if doc.get("uncertainty"):
        parts.append(_coverage_table(doc["uncertainty"]))
    if doc.get("kriging_fits"):
        parts.append(_kriging_table(doc["kriging_fits"]))
    parts.append(_anomaly_section(doc["anomaly"]))
    for fig in doc.get("figures", []):
        src = f"{FIGURES_FOLDER}/{figure_file(fig['file'])}"
        parts.append(f"<h3>{html.escape(fig['title'])}</h3><img src=\"{html.escape(src)}\""
                     f" style=\"max-width:100%\"><p>{html.escape(fig['caption'])}</p>")
    style = ("<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px}</style>")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>stem2eds sparse "
            f"{html.escape(doc['target_scan'])}</title>{style}</head><body>"
            + "\n".join(parts) + "</body></html>")


def write_beyond_report(run: Path, doc: Mapping[str, Any], quiet: bool = True) -> Path:
    """Write ``run/report.html`` (atomically) for a sparse run (``quiet``: no progress)."""
    from ..atomic import atomic_output
    from .interactive import render_interactive
    from .interactive_data import collect_views

    out = Path(run) / "report.html"
    explorer = render_interactive(collect_views(run, doc, quiet))
    with atomic_output(out) as tmp:
        tmp.write_text(render_beyond_report(doc, explorer), encoding="utf-8")
    return out
