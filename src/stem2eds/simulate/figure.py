"""Overview figures of a simulated scan: patterns, radial profiles, composition and EDS maps.

Run as ``python -m stem2eds.simulate.figure BUNDLE.h5 OUT_PREFIX`` to write
``OUT_PREFIX_pattern.png`` and ``OUT_PREFIX_maps.png`` (the figures of the docs' Simulate page).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..formats.bundle import open_bundle
from ..atomic import atomic_output


def radial_average(pattern: np.ndarray, origin: np.ndarray, n_bins: int) -> np.ndarray:
    """Azimuthal mean of one pattern around ``origin`` in 1 px rings.

    Parameters
    ----------
    pattern : ndarray, shape (Qx, Qy)
    origin : ndarray, shape (2,)
        Beam centre (row, column), px.
    n_bins : int

    Returns
    -------
    ndarray, shape (n_bins,)
        Mean counts per pixel in rings ``k <= r < k + 1`` px.
    """
    rr, cc = np.indices(pattern.shape)
    r = np.hypot(rr - origin[0], cc - origin[1]).astype(int).ravel()
    sums = np.bincount(r, pattern.ravel().astype(np.float64), minlength=n_bins)[:n_bins]
    return sums / np.maximum(np.bincount(r, minlength=n_bins)[:n_bins], 1)


def _save(fig, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=72, format="png")


def overview_figures(bundle_path: str | Path, out_prefix: str | Path) -> list[Path]:
    """Write the pattern/profile figure and the truth-vs-EDS map figure of one simulated bundle.

    Parameters
    ----------
    bundle_path : path-like
        A bundle written by :func:`stem2eds.simulate.simulate_series`.
    out_prefix : path-like
        ``<prefix>_pattern.png`` and ``<prefix>_maps.png`` are written.

    Returns
    -------
    list of Path
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    out_prefix = Path(out_prefix)
    with open_bundle(bundle_path, require=("diffraction", "eds", "truth", "simulation")) as b:
        elements = b.elements
        truth, eds = b.maps("truth"), b.eds()
        origin = b.file["simulation/origin"][()]
        grain_t = b.file["simulation/grain_thickness"][()]
        q_pixel = b.calibration.q_pixel_size
        rx, ry = b.scan_shape
        o_map = truth[elements.index("O")]
        clean = np.unravel_index(np.argmin(o_map + 10 * grain_t), o_map.shape)
        oxide = np.unravel_index(np.argmax(o_map), o_map.shape)
        picks = {"clean Ge-Sb-Te": clean, "oxidised": oxide}
        if grain_t.max() > 0:
            picks["rock-salt grain"] = np.unravel_index(np.argmax(grain_t), grain_t.shape)
        patterns = {k: b.diffraction[v].astype(np.float64) for k, v in picks.items()}
        name = b.name
    n_bins = patterns[next(iter(patterns))].shape[0] // 2

    fig, axes = plt.subplots(1, len(patterns) + 1, figsize=(3.5 * (len(patterns) + 1), 3.2),
                             constrained_layout=True)
    for ax, (label, pattern) in zip(axes, patterns.items()):
        pos = picks[label]
        im = ax.imshow(np.maximum(pattern, 0.5), norm=LogNorm(vmin=0.5), cmap="inferno")
        ax.set_title(f"{label}, position {tuple(int(v) for v in pos)}", fontsize=9)
        ax.set_xlabel("Qy (px)")
        ax.set_ylabel("Qx (px)")
        fig.colorbar(im, ax=ax, shrink=0.8, label="counts (log)")
    q = (np.arange(n_bins) + 0.5) * q_pixel
    for label, pattern in patterns.items():
        axes[-1].semilogy(q, radial_average(pattern, origin[picks[label]], n_bins), label=label)
    axes[-1].set_xlabel("q (1/nm)")
    axes[-1].set_ylabel("mean counts per pixel")
    axes[-1].set_title("radial profiles (true centre)", fontsize=9)
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"{name}: simulated diffraction patterns (uint16 counts)", fontsize=10)
    pattern_png = out_prefix.with_name(out_prefix.name + "_pattern.png")
    _save(fig, pattern_png)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(elements), figsize=(2.3 * len(elements), 2.2 * 2 * rx / ry * 0.75 + 1),
                             constrained_layout=True)
    for i, element in enumerate(elements):
        lo, hi = np.percentile(truth[i], [1, 99])
        pad = 0.1 * (hi - lo) + 1e-3
        for row, (label, maps) in enumerate((("truth", truth), ("EDS", eds))):
            im = axes[row, i].imshow(100 * maps[i], vmin=100 * (lo - pad), vmax=100 * (hi + pad),
                                     cmap="viridis")
            axes[row, i].set_title(f"{element} {label}", fontsize=9)
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
        fig.colorbar(im, ax=axes[:, i], shrink=0.7, label="at.%")
    fig.suptitle(f"{name}: noise-free composition (top) and quantified EDS (bottom)", fontsize=10)
    maps_png = out_prefix.with_name(out_prefix.name + "_maps.png")
    _save(fig, maps_png)
    plt.close(fig)
    return [pattern_png, maps_png]


if __name__ == "__main__":  # pragma: no cover - a documentation helper
    if len(sys.argv) != 3:
        sys.exit("usage: python -m stem2eds.simulate.figure BUNDLE.h5 OUT_PREFIX")
    for p in overview_figures(sys.argv[1], sys.argv[2]):
        print(p)
