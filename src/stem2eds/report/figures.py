"""Report figures: one function per figure, arrays in, matplotlib Figure out.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot
state), so they work headless and in threads. Compositions arrive as atomic
fractions and are shown in atomic percent (the plot is the edge where percent
is allowed). Every axis names its quantity, unit and element. Save with
:func:`save_figure`.

Maps are (Rx, Ry) = (scan rows, scan columns) and are drawn with real-space
extents in the bundle's R unit (e.g. nm); diffraction patterns are (Qx, Qy)
drawn in the bundle's Q unit.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

#: Colours of series with a fixed name.
SERIES_COLOURS = {"paper": "#d62728"}
#: Colours by position: the report lists the model, the model calibrated, the
#: baseline and the baseline calibrated first (labels carry the model names,
#: which vary), so each role keeps its colour from report to report.
_BY_POSITION = ["#1f77b4", "#ff7f0e", "#7f7f7f", "#bcbd22", "#2ca02c", "#9467bd", "#8c564b",
                "#e377c2", "#17becf"]


def _colour(label: str, k: int) -> str:
    return SERIES_COLOURS.get(label, _BY_POSITION[k % len(_BY_POSITION)])


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 90) -> None:
    """Write ``fig`` as PNG atomically (temporary name, then rename).

    No ``bbox_inches="tight"``: the figures lay themselves out, and the tight
    box would draw every figure twice.
    """
    from ..atomic import atomic_output

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def _extent(shape: tuple[int, int], pixel_size: float) -> list[float]:
    rx, ry = shape
    return [0.0, ry * pixel_size, rx * pixel_size, 0.0]


def training_curves(history: Mapping[str, tuple[np.ndarray, np.ndarray]],
                    ylabel: str = "loss (MAE, atomic fraction)",
                    title: str = "Training curves") -> Figure:
    """Loss against epoch (paper Fig. 1A).

    Parameters
    ----------
    history : mapping
        ``{label: (epochs, values)}``, e.g. ``{"train": (e, l), "validation": (e, v)}``.
    ylabel : str
        Loss name and unit.
    """
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for k, (label, (x, y)) in enumerate(history.items()):
        x, y = np.asarray(x, float), np.asarray(y, float)
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], marker="o", ms=3, label=label, color=_colour(label, k))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if history:
        ax.legend()
    ax.grid(alpha=0.3)
    return fig


def predicted_vs_actual(predicted: np.ndarray, actual: np.ndarray, elements: Sequence[str],
                        title: str = "Predicted vs actual") -> Figure:
    """Density scatter of predicted against actual composition, one panel per element (Fig. 1B).

    Parameters
    ----------
    predicted, actual : ndarray, shape (E, n)
        Atomic fractions of the evaluated positions.
    elements : sequence of str, length E
    """
    from ..metrics import metric_arrays

    pred = np.asarray(predicted, float).reshape(len(elements), -1) * 100
    act = np.asarray(actual, float).reshape(len(elements), -1) * 100
    stats = metric_arrays(pred[:, None, :] / 100, act[:, None, :] / 100)
    ncol = min(len(elements), 5)
    nrow = int(np.ceil(len(elements) / ncol))
    fig = Figure(figsize=(3.3 * ncol, 3.3 * nrow + 0.5))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.82, wspace=0.45, hspace=0.45)
    for k, el in enumerate(elements):
        ax = axes[k]
        lo = float(min(pred[k].min(), act[k].min()))
        hi = float(max(pred[k].max(), act[k].max()))
        if hi <= lo:
            hi = lo + 1.0
        ax.hexbin(act[k], pred[k], gridsize=40, bins="log", cmap="viridis", mincnt=1,
                  extent=(lo, hi, lo, hi))
        ax.plot([lo, hi], [lo, hi], "r--", lw=1, label="y = x")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel(f"actual {el} (at.%)")
        ax.set_ylabel(f"predicted {el} (at.%)")
        ax.set_title(f"{el}: r = {stats['pearson'][k]:.3f}")
    for ax in axes[len(elements):]:
        ax.set_visible(False)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return fig


def grouped_bars(series: Mapping[str, Mapping[str, tuple[float, float | None]]],
                 elements: Sequence[str], ylabel: str, title: str,
                 points: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> Figure:
    """Bars per element for several series, with error bars (Figs. 1C, 1D, 2, 5).

    Parameters
    ----------
    series : mapping
        ``{label: {element: (value, std or None)}}``, e.g. the model's mean
        Pearson r over the predicted scans with its standard deviation.
        Missing elements leave a gap.
    elements : sequence of str
    ylabel, title : str
        ``ylabel`` names the metric and its unit.
    points : mapping, optional
        ``{label: {element: per-scan values}}`` drawn as dots on the bars.
    """
    fig = Figure(figsize=(max(6.0, 1.3 * len(elements) + 4.0), 4), layout="constrained")
    ax = fig.add_subplot()
    labels = list(series)
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(elements))
    for k, label in enumerate(labels):
        vals = np.array([series[label].get(el, (np.nan, None))[0] for el in elements], float)
        errs = np.array([(series[label].get(el, (np.nan, None))[1] or 0.0)
                         if series[label].get(el) is not None else 0.0 for el in elements], float)
        errs = np.where(np.isfinite(errs), errs, 0.0)
        pos = x - 0.4 + width * (k + 0.5)
        ax.bar(pos, np.nan_to_num(vals), width, yerr=errs if errs.any() else None,
               capsize=3, label=label, color=_colour(label, k))
        if points and label in points:
            for j, el in enumerate(elements):
                pv = np.asarray(points[label].get(el, []), float)
                ax.plot(np.full(pv.size, pos[j]), pv, "k.", ms=4, alpha=0.7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, list(elements))
    ax.set_xlabel("element")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    # outside the axes: inside, the legend hides bars whatever corner it takes
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def maps_side_by_side(predicted: np.ndarray, actual: np.ndarray, elements: Sequence[str],
                      scan: str, pixel_size: float = 1.0, unit: str = "px") -> Figure:
    """Real, predicted and absolute-error maps per element of one scan (Figs. 3, 6).

    Parameters
    ----------
    predicted, actual : ndarray, shape (E, Rx, Ry)
        Atomic fractions.
    elements : sequence of str, length E
    scan : str
        Scan name for the title.
    pixel_size, unit : float, str
        Real-space pixel size and unit for the axes.
    """
    pred = np.asarray(predicted, float) * 100
    act = np.asarray(actual, float) * 100
    n = len(elements)
    # No layout engine: constrained layout with 3 x E colour bars takes
    # seconds per figure; fixed spacing is enough for this regular grid.
    fig = Figure(figsize=(2.9 * n + 0.5, 7.6))
    axes = fig.subplots(3, n, squeeze=False)
    fig.subplots_adjust(left=0.05, right=0.97, bottom=0.06, top=0.91, wspace=0.55, hspace=0.42)
    ext = _extent(act.shape[1:], pixel_size)
    for k, el in enumerate(elements):
        lo = float(np.percentile(act[k], 1))
        hi = float(np.percentile(act[k], 99))
        if hi <= lo:
            lo, hi = float(act[k].min()), float(act[k].max()) + 1e-6
        panels = ((act[k], "real (EDS)", "viridis", lo, hi, f"{el} (at.%)"),
                  (pred[k], "predicted", "viridis", lo, hi, f"{el} (at.%)"),
                  (np.abs(pred[k] - act[k]), "|error|", "magma", None, None,
                   f"|error| {el} (at.%)"))
        for row, (img, name, cmap, vmin, vmax, label) in enumerate(panels):
            ax = axes[row, k]
            im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, extent=ext)
            ax.set_title(f"{el} {name}", fontsize=9)
            cbar = fig.colorbar(im, ax=ax, shrink=0.85)
            cbar.set_label(label, fontsize=8)
            cbar.ax.tick_params(labelsize=7)
    for ax in axes.ravel():
        ax.set_xlabel(f"x ({unit})", fontsize=8)
        ax.set_ylabel(f"y ({unit})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Scan {scan}: real vs predicted composition (real and predicted share "
                 "one colour scale per element)")
    return fig


def correlation_matrices(predicted: np.ndarray, actual: np.ndarray, elements: Sequence[str],
                         title: str = "Inter-element correlation") -> Figure:
    """Inter-element Pearson matrices of predicted and real maps side by side (Figs. 4, 7).

    Parameters
    ----------
    predicted, actual : ndarray, shape (E, E)
        Correlation matrices (e.g. from :func:`stem2eds.metrics.correlation_matrix`).
    elements : sequence of str, length E
    """
    fig = Figure(figsize=(10, 4.4))
    axes = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.86, bottom=0.14, top=0.86, wspace=0.25)
    for ax, mat, name in zip(axes, (actual, predicted), ("real EDS", "predicted")):
        mat = np.asarray(mat, float)
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(elements)), list(elements))
        ax.set_yticks(range(len(elements)), list(elements))
        ax.set_xlabel("element")
        ax.set_ylabel("element")
        ax.set_title(name)
        for i in range(len(elements)):
            for j in range(len(elements)):
                v = mat[i, j]
                ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center",
                        va="center", fontsize=8, color="white" if abs(v) > 0.6 else "black")
    fig.colorbar(im, cax=fig.add_axes((0.885, 0.14, 0.015, 0.72)), label="Pearson r")
    fig.suptitle(title)
    return fig


def haadf_comparison(predicted: np.ndarray, actual: np.ndarray, scan: str,
                     pixel_size: float = 1.0, unit: str = "px",
                     signal_unit: str = "detector counts") -> Figure:
    """Real and predicted HAADF and the absolute-error map (Fig. 8).

    Parameters
    ----------
    predicted, actual : ndarray, shape (Rx, Ry)
    scan : str
    pixel_size, unit : float, str
        Real-space pixel size and unit.
    signal_unit : str
        Unit of the HAADF values.
    """
    pred = np.asarray(predicted, float)
    act = np.asarray(actual, float)
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.05, right=0.96, bottom=0.14, top=0.85, wspace=0.45)
    ext = _extent(act.shape, pixel_size)
    lo, hi = np.percentile(act, [1, 99])
    for ax, img, name in zip(axes[:2], (act, pred), ("real HAADF", "predicted HAADF")):
        im = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1e-6, extent=ext)
        ax.set_title(name)
        fig.colorbar(im, ax=ax, label=f"HAADF ({signal_unit})", shrink=0.8)
    im = axes[2].imshow(np.abs(pred - act), cmap="magma", extent=ext)
    axes[2].set_title("|predicted - real|")
    fig.colorbar(im, ax=axes[2], label=f"|error| ({signal_unit})", shrink=0.8)
    for ax in axes:
        ax.set_xlabel(f"x ({unit})")
        ax.set_ylabel(f"y ({unit})")
    fig.suptitle(f"Scan {scan}: HAADF")
    return fig


def diffraction_comparison(error_map: np.ndarray, high: np.ndarray, typical: np.ndarray,
                           mean_high: np.ndarray, mean_typical: np.ndarray, scan: str,
                           pixel_size: float = 1.0, unit: str = "px",
                           q_pixel_size: float = 1.0, q_unit: str = "px",
                           error_label: str = "error", region: str = "highest-error") -> Figure:
    """Mean diffraction pattern of the highest-error region next to a typical one (Fig. 8 check).

    A region whose prediction fails often diffracts differently (e.g. a
    crystalline inclusion in an amorphous film); comparing the two mean
    patterns shows it.

    Parameters
    ----------
    error_map : ndarray, shape (Rx, Ry)
        Per-position error used to pick the regions.
    high, typical : ndarray of bool, shape (Rx, Ry)
        The highest-error positions and typical positions.
    mean_high, mean_typical : ndarray, shape (Qx, Qy)
        Mean patterns of those positions (detector counts).
    scan : str
    pixel_size, unit : float, str
        Real-space pixel size and unit.
    q_pixel_size, q_unit : float, str
        Detector pixel size and unit.
    error_label : str
        What ``error_map`` measures, with its unit.
    region : str
        Name of the ``high`` region in titles (e.g. ``"flagged"`` for an anomaly map).
    """
    fig = Figure(figsize=(14, 4.3))
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.05, right=0.96, bottom=0.13, top=0.85, wspace=0.45)
    ext = _extent(np.shape(error_map), pixel_size)
    im = axes[0].imshow(error_map, cmap="magma", extent=ext)
    fig.colorbar(im, ax=axes[0], label=error_label, shrink=0.8)
    yy, xx = (np.indices(np.shape(error_map)) + 0.5) * pixel_size
    axes[0].contour(xx, yy, high.astype(float), levels=[0.5], colors="cyan", linewidths=1.5)
    axes[0].set_title(f"{error_label} (cyan outline: {region} region)", fontsize=9)
    axes[0].set_xlabel(f"x ({unit})")
    axes[0].set_ylabel(f"y ({unit})")
    qx, qy = np.shape(mean_high)
    qext = [-qy / 2 * q_pixel_size, qy / 2 * q_pixel_size,
            qx / 2 * q_pixel_size, -qx / 2 * q_pixel_size]
    both = np.log10(np.maximum(np.stack([mean_high, mean_typical]).astype(float), 0) + 1)
    lo, hi = np.percentile(both, [1, 99.9])
    for ax, img, name, n in ((axes[1], both[0], f"{region} region", int(high.sum())),
                             (axes[2], both[1], "typical region", int(typical.sum()))):
        im = ax.imshow(img, cmap="inferno", vmin=lo, vmax=hi, extent=qext)
        ax.set_title(f"mean pattern, {name} ({n} positions)", fontsize=9)
        ax.set_xlabel(f"q_y ({q_unit})")
        ax.set_ylabel(f"q_x ({q_unit})")
        fig.colorbar(im, ax=ax, label="log10(1 + mean counts)", shrink=0.8)
    fig.suptitle(f"Scan {scan}: mean diffraction of the {region} region vs typical positions")
    return fig
