"""The report's interactive map explorer: arrays in, one HTML section out.

Each predicted scan becomes a panel like HyperSpy's ``plot()``: a navigator
image (a predicted map, and a second map chosen from the measured EDS, the
error, the uncertainty, OOD, crystallinity or the pattern sum) with a
movable marker, a signal panel with the diffraction pattern under the
marker, and a readout of the predicted vs measured composition at that
position. Clicking either map or pressing the arrow keys moves the marker.

Everything is embedded (no network): maps as 16-bit quantised arrays with
an offset and a scale per map (base64), patterns as one 8-bit grayscale PNG
sprite sheet of a subsampled grid of positions (base64), and the page's
script and style from ``assets/``. :func:`render_interactive` is pure;
:mod:`stem2eds.report.interactive_data` reads a run folder into
:class:`ScanView` records.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Sequence

import numpy as np

#: Most sampled positions along one scan axis in the pattern sprite: a
#: 256 x 256 scan gets every 11th position, 23 x 23 patterns in all (the
#: explorer's size for such a scan: benchmarks/results/report_size.json).
MAX_GRID = 24
#: Largest pattern side in the sprite (detector pixels are summed in bins).
MAX_CELL = 64
#: Quantised value that marks a missing (NaN) map value.
MISSING = 65535


@dataclass
class PatternSprite:
    """Diffraction patterns of a subsampled grid, as one 8-bit PNG mosaic.

    Attributes
    ----------
    png : bytes
        Grayscale PNG of shape (len(rows) * cell, len(cols) * cell); the
        pattern of grid position (a, b) is the cell at rows
        ``a*cell .. (a+1)*cell``, columns ``b*cell .. (b+1)*cell``.
    rows, cols : list of int
        Scan rows and columns (on the map grid) of the sampled positions.
    cell : int
        Side of one pattern in the sprite, in pixels.
    scaling : str
        How counts became 0..255, shown in the page.
    """

    png: bytes
    rows: list[int]
    cols: list[int]
    cell: int
    scaling: str


@dataclass
class ScanView:
    """What the explorer shows of one scan (all maps on the same (Rx, Ry) grid).

    Attributes
    ----------
    name : str
    elements : list of str
    predicted : ndarray, shape (E, Rx, Ry)
        Predicted atomic fractions.
    measured : ndarray, shape (E, Rx, Ry), or None
        Measured (preprocessed) EDS.
    std : ndarray, shape (E, Rx, Ry), or None
        Uncertainty of ``predicted`` (``eds_std``), atomic fraction.
    scores : dict of str to ndarray (Rx, Ry) or None
        Per-position scores shown in the readout and as navigator layers,
        e.g. ``{"OOD score": ..., "crystallinity": ...}``; None: "not computed".
    layers : dict of str to ndarray (Rx, Ry)
        Further navigator images (e.g. ``"pattern sum"``, ``"HAADF"``).
    sprite : PatternSprite or None
        None: the raw patterns were not available (the panel says why).
    note : str
        Shown under the panel (e.g. which prediction is shown).
    pixel_size : float
    pixel_unit : str
    """

    name: str
    elements: list[str]
    predicted: np.ndarray
    measured: np.ndarray | None = None
    std: np.ndarray | None = None
    scores: dict[str, np.ndarray | None] = field(default_factory=dict)
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    sprite: PatternSprite | None = None
    note: str = ""
    pixel_size: float = 1.0
    pixel_unit: str = "px"


def sample_grid(shape: tuple[int, int], max_grid: int = MAX_GRID) -> tuple[list[int], list[int]]:
    """Rows and columns of the positions whose patterns go into the sprite.

    One step for both axes (``ceil(max(Rx, Ry) / max_grid)``), each sampled
    position at the centre of its ``step x step`` block.

    Parameters
    ----------
    shape : (int, int)
        Scan shape (Rx, Ry).
    max_grid : int
        Most sampled positions along an axis.

    Returns
    -------
    rows, cols : list of int
    """
    step = max(1, math.ceil(max(shape) / max_grid))
    return ([int(r) for r in range(step // 2, shape[0], step)],
            [int(c) for c in range(step // 2, shape[1], step)])


def bin_factor(detector_shape: tuple[int, int], max_cell: int = MAX_CELL) -> int:
    """Detector binning that brings the larger side to at most ``max_cell`` pixels."""
    return max(1, math.ceil(max(detector_shape) / max_cell))


def bin_patterns(patterns: np.ndarray, binning: int = 1) -> np.ndarray:
    """Sum ``binning x binning`` detector pixels (edges that do not fill a bin are dropped).

    Parameters
    ----------
    patterns : ndarray, shape (n, Qx, Qy)
    binning : int

    Returns
    -------
    ndarray of float64, shape (n, Qx // binning, Qy // binning)
    """
    p = np.asarray(patterns, np.float64)
    n, qx, qy = p.shape
    bx, by = qx // binning, qy // binning
    return p[:, :bx * binning, :by * binning].reshape(n, bx, binning, by, binning).sum((2, 4))


def to_uint8(binned: np.ndarray, binning: int = 1) -> tuple[np.ndarray, str]:
    """Binned patterns as 8-bit images: ``log1p``, 255 at the 99.9th percentile.

    Parameters
    ----------
    binned : ndarray, shape (n, qx, qy)
        Counts, already binned (:func:`bin_patterns`).
    binning : int
        The binning used, for the description.

    Returns
    -------
    cells : ndarray of uint8, shape (n, qx, qy)
    scaling : str
        The scaling in words.
    """
    logged = np.log1p(np.clip(np.asarray(binned, np.float64), 0, None))
    top = float(np.percentile(logged, 99.9)) if logged.size else 0.0
    top = top if top > 0 else 1.0
    cells = np.clip(np.rint(logged / top * 255), 0, 255).astype(np.uint8)
    return cells, (f"log(1 + counts) of {binning} x {binning} binned detector pixels, "
                   "255 = the 99.9th percentile of the sampled patterns")


def quantise_patterns(patterns: np.ndarray, binning: int = 1) -> tuple[np.ndarray, str]:
    """:func:`bin_patterns` then :func:`to_uint8`: (n, Qx, Qy) counts to 8-bit cells."""
    return to_uint8(bin_patterns(patterns, binning), binning)


def sprite_sheet(cells: np.ndarray, rows: Sequence[int], cols: Sequence[int],
                 scaling: str) -> PatternSprite:
    """Lay out 8-bit patterns of a grid into one PNG.

    Parameters
    ----------
    cells : ndarray of uint8, shape (len(rows) * len(cols), c, c) or (len(rows), len(cols), c, c)
        Row-major over the grid.
    rows, cols : sequence of int
        Scan positions of the grid.
    scaling : str

    Returns
    -------
    PatternSprite
    """
    from PIL import Image

    nr, nc = len(rows), len(cols)
    c = cells.shape[-1]
    mosaic = np.asarray(cells, np.uint8).reshape(nr, nc, cells.shape[-2], c)
    mosaic = mosaic.transpose(0, 2, 1, 3).reshape(nr * cells.shape[-2], nc * c)
    buf = io.BytesIO()
    Image.fromarray(mosaic, mode="L").save(buf, format="PNG", optimize=True)
    return PatternSprite(buf.getvalue(), [int(r) for r in rows], [int(v) for v in cols],
                         int(c), scaling)


def quantise_map(values: np.ndarray) -> dict[str, Any]:
    """One map as base64 uint16 with offset and scale (``value = lo + q * scale``).

    NaN (and inf) become :data:`MISSING`; the quantisation error is at most
    ``scale / 2``.

    Parameters
    ----------
    values : ndarray, shape (Rx, Ry)

    Returns
    -------
    dict
        ``{"b64", "lo", "scale"}`` (``lo``/``scale`` plain floats).
    """
    v = np.asarray(values, np.float64)
    finite = np.isfinite(v)
    lo = float(v[finite].min()) if finite.any() else 0.0
    hi = float(v[finite].max()) if finite.any() else 0.0
    scale = (hi - lo) / (MISSING - 1) if hi > lo else 1.0
    q = np.full(v.shape, MISSING, np.uint16)
    q[finite] = np.clip(np.rint((v[finite] - lo) / scale), 0, MISSING - 1).astype(np.uint16)
    return {"b64": base64.b64encode(q.astype("<u2").tobytes()).decode("ascii"),
            "lo": lo, "scale": scale}


def dequantise_map(entry: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`quantise_map` (NaN where missing), as the page's script decodes it."""
    q = np.frombuffer(base64.b64decode(entry["b64"]), "<u2").reshape(shape)
    out = entry["lo"] + q.astype(np.float64) * entry["scale"]
    return np.where(q == MISSING, np.nan, out)


def _stack(maps: np.ndarray | None, elements: Sequence[str]) -> dict[str, Any] | None:
    if maps is None:
        return None
    return {el: quantise_map(m) for el, m in zip(elements, maps)}


def view_payload(view: ScanView) -> dict[str, Any]:
    """The JSON-ready record of one scan that the page's script reads."""
    shape = tuple(int(s) for s in view.predicted.shape[1:])
    sprite = None
    if view.sprite is not None:
        sprite = {"png": base64.b64encode(view.sprite.png).decode("ascii"),
                  "rows": view.sprite.rows, "cols": view.sprite.cols,
                  "cell": view.sprite.cell, "scaling": view.sprite.scaling}
    return {"name": view.name, "elements": list(view.elements), "shape": shape,
            "predicted": _stack(view.predicted, view.elements),
            "measured": _stack(view.measured, view.elements),
            "std": _stack(view.std, view.elements),
            "scores": {k: (None if v is None else quantise_map(v))
                       for k, v in view.scores.items()},
            "layers": {k: quantise_map(v) for k, v in view.layers.items()},
            "sprite": sprite, "note": view.note,
            "pixel": [float(view.pixel_size), str(view.pixel_unit)]}


def _colormap(name: str = "viridis") -> str:
    """256 RGB colours of a Matplotlib colormap, base64 (768 bytes)."""
    from matplotlib import colormaps

    rgb = np.rint(colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return base64.b64encode(rgb.tobytes()).decode("ascii")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def render_interactive(views: Sequence[ScanView]) -> str:
    """The explorer section (HTML with its style, data and script inline).

    Parameters
    ----------
    views : sequence of ScanView
        One panel per scan, in this order.

    Returns
    -------
    str
        An HTML fragment; empty when ``views`` is empty.
    """
    if not views:
        return ""
    data = {"colormap": _colormap(), "scans": [view_payload(v) for v in views]}
    # "</" cannot end the script element early inside JSON once "/" is escaped.
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    notes = "".join(f"<li><b>{html.escape(v.name)}</b>: {html.escape(v.note)}</li>"
                    for v in views if v.note)
    return (f"<section id='explorer'><h2>Maps: click a position</h2>"
            "<p class=note>Click any position on a predicted or measured map (or focus a "
            "panel and use the arrow keys) to see its diffraction pattern, the predicted "
            "vs measured composition, the uncertainty and the OOD and crystallinity scores. "
            "Patterns are stored for a subsampled grid of positions; the pattern panel "
            "shows the nearest sampled position.</p>"
            f"{'<ul>' + notes + '</ul>' if notes else ''}"
            f"<div id='s2e-scans'></div>"
            f"<style>{_asset('interactive.css')}</style>"
            f"<script type='application/json' id='s2e-data'>{text}</script>"
            f"<script>{_asset('interactive.js')}</script></section>")
