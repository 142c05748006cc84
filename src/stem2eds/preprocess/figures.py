"""Figures of the preprocessing, for the README and reports.

* :func:`plot_pattern_steps`: one pattern raw, centred, beam removed and
  binned (the paper's Figure 10);
* :func:`plot_eds_filter`: EDS maps before and after the blur (Figure 9).

Both return the matplotlib Figure and, given ``path``, save it atomically.
"""

from __future__ import annotations

import os

import numpy as np

from ..atomic import atomic_output
from .maps import filter_maps
from .patterns import bin_patterns, centre_patterns, detector_centre, remove_beam


def _save(fig, path) -> None:
    if path is None:
        return
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=os.path.splitext(str(path))[1][1:] or "png", dpi=90,
                    bbox_inches="tight")


def _show(ax, image, title, marker=None, q_pixel=None, unit=None):
    """Log-scaled pattern (counts + 1) so the weak rings show beside the direct beam."""
    shown = np.log10(1 + np.clip(image, 0, None))
    ax.imshow(shown, cmap="magma", interpolation="nearest")
    if marker is not None:
        ax.plot(marker[1], marker[0], "+", color="cyan", ms=10, mew=1.2)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if q_pixel is not None:
        ax.set_xlabel(f"{image.shape[1]} px x {q_pixel:.3g} {unit}", fontsize=8)


def plot_pattern_steps(pattern: np.ndarray, origin, beam_radius: float, bin_factor: int,
                       q_pixel_size: float | None = None, q_unit: str = "1/nm",
                       path=None):
    """Raw, centred, beam-removed and binned versions of one pattern.

    Parameters
    ----------
    pattern : ndarray, shape (Qx, Qy)
        Raw counts.
    origin : (float, float)
        Its (fitted) origin, detector px (row, column).
    beam_radius : float
        Zeroed disk radius, input px.
    bin_factor : int
    q_pixel_size : float, optional
        Input detector pixel in ``q_unit`` (labels only).
    path : path-like, optional
        Where to save the PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    raw = np.asarray(pattern, dtype=np.float32)[None]
    centred = centre_patterns(raw, np.asarray(origin, float)[None])
    removed = remove_beam(centred, beam_radius)
    binned = bin_patterns(removed, bin_factor)
    centre = detector_centre(raw.shape[1:])
    fig, axes = plt.subplots(1, 4, figsize=(11, 3.2))
    _show(axes[0], raw[0], f"raw (origin {origin[0]:.2f}, {origin[1]:.2f})", origin,
          q_pixel_size, q_unit)
    _show(axes[1], centred[0], "centred on the origin", centre, q_pixel_size, q_unit)
    _show(axes[2], removed[0], f"central beam removed (r = {beam_radius:.1f} px)", None,
          q_pixel_size, q_unit)
    _show(axes[3], binned[0], f"binned {bin_factor}x{bin_factor}", None,
          None if q_pixel_size is None else q_pixel_size * bin_factor, q_unit)
    fig.suptitle("Diffraction preprocessing (log10 of counts + 1)", fontsize=10)
    _save(fig, path)
    return fig


def plot_eds_filter(maps: np.ndarray, elements, method: str = "gaussian", kernel: int = 7,
                    sigma: float | None = None, path=None):
    """EDS maps before (top) and after (bottom) the filter, one column per element.

    Parameters
    ----------
    maps : ndarray, shape (E, Rx, Ry)
        Raw maps, atomic fractions.
    elements : sequence of str
    method, kernel, sigma
        As in :func:`stem2eds.preprocess.filter_maps`.
    path : path-like, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    maps = np.asarray(maps, dtype=np.float32)
    smooth = filter_maps(maps, method, kernel, sigma)
    n = len(elements)
    fig, axes = plt.subplots(2, n, figsize=(2.1 * n + 0.6, 4.6), squeeze=False)
    for k, element in enumerate(elements):
        lo, hi = np.percentile(maps[k], [1, 99])
        for row, (data, label) in enumerate(((maps[k], "raw"), (smooth[k], method))):
            ax = axes[row, k]
            im = ax.imshow(100 * data, cmap="viridis", vmin=100 * lo, vmax=100 * hi)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{element} {label}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
    what = f"{kernel}x{kernel}" if sigma is None else f"sigma {sigma:g} px"
    fig.suptitle(f"EDS maps (at.%) before and after the {method} filter ({what})", fontsize=10)
    _save(fig, path)
    return fig


def save_figures(raw_bundle, settings, out_dir, index: int | None = None,
                 prefix: str = "preprocess_") -> list:
    """Write both figures for one raw bundle and resolved settings.

    Parameters
    ----------
    raw_bundle : ScanBundle
        Raw bundle (patterns, EDS maps).
    settings : PreprocessSettings
        Resolved (``beam_radius`` set), e.g. returned by ``preprocess_bundle``.
    out_dir : path-like
    index : int, optional
        Flat index of the pattern to show (default: the scan centre).
    prefix : str

    Returns
    -------
    list of Path
        ``<prefix>pattern_steps.png`` and, when the bundle has EDS maps,
        ``<prefix>eds_blur.png``.
    """
    from pathlib import Path

    import matplotlib.pyplot as plt

    from .pipeline import measure_origins

    out_dir = Path(out_dir)
    rx, ry = raw_bundle.scan_shape
    index = (rx // 2) * ry + ry // 2 if index is None else int(index)
    i, j = divmod(index, ry)
    whole = type(settings)(**{**settings.to_dict(), "crop": None})
    origin = measure_origins(raw_bundle, whole).fitted[i, j]
    cal = raw_bundle.calibration
    paths = [out_dir / f"{prefix}pattern_steps.png"]
    fig = plot_pattern_steps(raw_bundle.diffraction[i, j], origin, settings.beam_radius,
                             settings.bin_factor, cal.q_pixel_size, cal.q_pixel_unit,
                             path=paths[0])
    plt.close(fig)
    if raw_bundle.has("eds"):
        paths.append(out_dir / f"{prefix}eds_blur.png")
        fig = plot_eds_filter(raw_bundle.eds(), raw_bundle.elements, settings.eds_filter,
                              settings.eds_kernel, settings.eds_sigma, path=paths[1])
        plt.close(fig)
    return paths
