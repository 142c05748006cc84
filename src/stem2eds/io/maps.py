"""Readers of 2D maps: per-element EDS maps in a folder, and HAADF images.

A map folder holds one file per element whose stem is the element symbol
(``Ge.tif``, ``O.png``, ``Si.npy``, ``Te.csv``; a line name may follow after
``_``, ``-`` or a space, e.g. ``Ge_K.tif``). Values are atomic fractions in
[0, 1] or atomic percent in [0, 100]. The unit is decided once for all maps
of a scan (so they stay on one scale) from the largest value ``m`` of any
map (:func:`eds_unit_of`):

* ``m <= 1``: atomic fractions;
* ``m > 1.5`` (:data:`AMBIGUOUS_MAX`): percent, divided by 100;
* ``1 < m <= 1.5``: ambiguous, refused: it may be a fraction whose noise
  pushes a nearly pure element above 1, or the percent map of minor
  elements only. The user says which (``unit="fraction"``, which clips the
  values above 1 to 1, or ``unit="percent"``; the ``eds_unit`` setting of
  the convert step).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..elements import ELEMENT_SYMBOLS, check_element
from ..errors import InputError

#: Largest value of a scan's maps that is still ambiguous between a noisy
#: atomic fraction (just above 1) and percent (a minor element, 1-1.5 at.%).
#: Quantified fractions overshoot 1 by noise far less than 50 %, and the
#: maps of a scan with any major element reach well above 1.5 at.%.
AMBIGUOUS_MAX = 1.5

#: Units of EDS maps accepted by :func:`to_fractions`.
EDS_UNITS = ("auto", "fraction", "percent")

#: Image files read as 2D maps.
MAP_EXTENSIONS = (".tif", ".tiff", ".png", ".npy", ".csv")

_STEM = re.compile(r"^([A-Za-z]{1,2})(?:[ _\-].*)?$")
#: Stems of other detectors' images that Velox and others export beside the maps.
_DETECTOR_IMAGE = re.compile(r"^(HAADF|ADF|ABF|BF|DF\d*)(?:[ _\-].*)?$", re.IGNORECASE)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one 2D image (TIFF, PNG, NPY or CSV) as float64.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    ndarray, shape (rows, cols)
        float64 values as stored (no rescaling).

    Raises
    ------
    InputError
        Missing or unreadable file, not 2D (e.g. an RGB picture or a stack),
        or NaN / infinite values.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=p)
    ext = p.suffix.lower()
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(p)
        elif ext == ".png":
            from PIL import Image

            with Image.open(p) as img:
                if img.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                    raise InputError(f"PNG mode {img.mode} is a colour picture, not a "
                                     "quantitative map", path=p,
                                     hint="export a greyscale (8/16-bit) or float map")
                arr = np.asarray(img)
        elif ext == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif ext == ".csv":
            arr = _read_csv(p)
        else:
            raise InputError(f"unknown image type {p.suffix!r}", path=p,
                             hint="use TIFF, PNG, NPY or CSV")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - each library fails its own way on a bad file
        raise InputError(f"cannot read image: {' '.join(str(exc).split())}", path=p) from None
    arr = _drop_extra_axes(np.asarray(arr))
    if arr.ndim != 2:
        raise InputError(f"image has shape {arr.shape}; expected one 2D map", path=p,
                         hint="save a single greyscale map per file")
    if arr.size == 0:
        raise InputError(f"image is empty (shape {arr.shape})", path=p,
                         hint="export the map again")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"image dtype {arr.dtype} is not real numbers", path=p)
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"map contains {bad} NaN or infinite values", path=p,
                         hint="fill or mask the bad pixels before converting")
    return arr


def _drop_extra_axes(arr: np.ndarray) -> np.ndarray:
    """Drop single-page and single-channel axes, keeping a 2D map's own axes.

    ``np.squeeze`` would also collapse a map of one scan row (1, W) or one
    position (1, 1), which are valid scans.
    """
    while arr.ndim > 2 and arr.shape[0] == 1:   # (1, H, W): one TIFF page
        arr = arr[0]
    while arr.ndim > 2 and arr.shape[-1] == 1:  # (H, W, 1): one channel
        arr = arr[..., 0]
    return arr


def _read_csv(path: Path) -> np.ndarray:
    with open(path, encoding="utf-8-sig") as fh:
        first = fh.readline()
    delimiter = next((d for d in (",", ";", "\t") if d in first), None)
    try:
        with warnings.catch_warnings():
            # An empty file warns and returns nothing; the caller reports it
            # as one InputError line instead.
            warnings.simplefilter("ignore", UserWarning)
            return np.loadtxt(path, delimiter=delimiter, ndmin=2, encoding="utf-8-sig")
    except ValueError as exc:
        raise InputError(f"CSV is not a table of numbers ({exc})", path=path) from None


@dataclass
class ElementMaps:
    """Element maps read from a folder.

    Attributes
    ----------
    elements : list of str
        Symbols, in output order.
    fractions : dict of str to ndarray, shape (Rx, Ry)
        float32 atomic fractions in [0, 1].
    was_percent : bool
        True when the files held percent (and were divided by 100).
    files : dict of str to Path
        The file each map came from.
    """

    elements: list[str]
    fractions: dict[str, np.ndarray]
    was_percent: bool
    files: dict[str, Path]


def find_map_files(folder: str | os.PathLike,
                   elements: Sequence[str] | None = None) -> dict[str, Path]:
    """Map files in a folder, keyed by the element symbol of their stem.

    Images of other detectors exported beside the maps (``HAADF``, ``ADF``,
    ``ABF``, ``BF``, ``DF2``, ...) are skipped.

    Parameters
    ----------
    folder : path-like
    elements : sequence of str, optional
        Only these elements, in this order; other files are skipped, even
        ones not named after an element.

    Returns
    -------
    dict of str to Path
        In ``elements`` order, else in the order of the sorted file names.

    Raises
    ------
    InputError
        Missing folder, no map files, two files for one element, a missing
        element, or (without ``elements``) a file not named after an element.
    """
    p = Path(folder)
    if not p.is_dir():
        raise InputError("no such folder" if not p.exists() else "not a folder", path=p,
                         hint="give `eds` a folder of per-element maps or a spectrum image")
    wanted = None if elements is None else [check_element(e) for e in elements]
    files: dict[str, Path] = {}
    for f in sorted(p.iterdir()):
        if (not f.is_file() or f.suffix.lower() not in MAP_EXTENSIONS
                or f.name.startswith(".") or _DETECTOR_IMAGE.match(f.stem)):
            continue
        m = _STEM.match(f.stem)
        symbol = m.group(1).capitalize() if m else None
        if wanted is not None and symbol not in wanted:
            continue
        if symbol not in ELEMENT_SYMBOLS:
            raise InputError(f"map file {f.name!r} is not named after an element", path=p,
                             hint="name each map by its element symbol (Ge.tif, O.png) "
                                  "or select maps with `elements`")
        if symbol in files:
            raise InputError(f"two maps for {symbol}: {files[symbol].name} and {f.name}",
                             path=p, hint="keep one file per element")
        files[symbol] = f
    if wanted is not None:
        missing = [e for e in wanted if e not in files]
        if missing:
            raise InputError(f"no map for {', '.join(missing)}", path=p,
                             hint="add <Element>.tif (or .png/.npy/.csv) or drop it from "
                                  "`elements`")
        return {e: files[e] for e in wanted}
    if not files:
        raise InputError("folder has no element maps (" + ", ".join(MAP_EXTENSIONS) + ")",
                         path=p, hint="name each map by its element symbol, e.g. Ge.tif")
    return files


def read_map_folder(folder: str | os.PathLike,
                    elements: Sequence[str] | None = None,
                    unit: str = "auto") -> ElementMaps:
    """Read per-element maps from a folder as atomic fractions.

    Parameters
    ----------
    folder : path-like
        Folder with one map per element (see the module docstring).
    elements : sequence of str, optional
        Elements to read, in this order; default: every map found, sorted by
        file name. With ``elements`` given, other files in the folder are
        ignored (even ones not named after an element).
    unit : {"auto", "fraction", "percent"}
        Unit of the files; ``auto`` decides by the rule of the module
        docstring.

    Returns
    -------
    ElementMaps
        Maps as float32 atomic fractions in [0, 1].

    Raises
    ------
    InputError
        Unknown element, missing map, maps of different shapes, values < 0,
        > 100, NaN or infinite.
    """
    p = Path(folder)
    files = find_map_files(p, elements)
    elements = list(files)
    raw = {e: read_image(f) for e, f in files.items()}
    shapes = {e: a.shape for e, a in raw.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{e} {s[0]}x{s[1]}" for e, s in shapes.items())
        raise InputError(f"maps differ in shape ({listing})", path=p,
                         hint="all maps of one scan must share its grid")
    fractions, was_percent = to_fractions(raw, p, unit)
    return ElementMaps(list(elements), fractions, was_percent, files)


def eds_unit_of(maps: dict[str, np.ndarray], source=None) -> str:
    """Decide whether a scan's maps hold atomic fractions or percent.

    Parameters
    ----------
    maps : dict of str to ndarray, shape (Rx, Ry)
        Finite, non-negative values.
    source : path-like, optional
        Named in error messages.

    Returns
    -------
    {"fraction", "percent"}

    Raises
    ------
    InputError
        When the largest value lies in (1, :data:`AMBIGUOUS_MAX`].
    """
    name, top = max(((n, float(a.max())) for n, a in maps.items()), key=lambda t: t[1])
    if top <= 1.0:
        return "fraction"
    if top > AMBIGUOUS_MAX:
        return "percent"
    raise InputError(f"EDS maps are ambiguous: the largest value ({top:.4g}, map {name}) "
                     "is just above 1, a noisy atomic fraction or a percent map of minor "
                     "elements", path=source,
                     hint="say which with `eds_unit` fraction (values above 1 are clipped) "
                          "or `eds_unit` percent")


def to_fractions(maps: dict[str, np.ndarray], source=None,
                 unit: str = "auto") -> tuple[dict[str, np.ndarray], bool]:
    """Convert maps in atomic fraction or percent to float32 fractions.

    With ``unit="auto"`` the unit is decided for all maps together by
    :func:`eds_unit_of` (one scan's maps stay on one scale).

    Parameters
    ----------
    maps : dict of str to ndarray, shape (Rx, Ry)
    source : path-like, optional
        Named in error messages.
    unit : {"auto", "fraction", "percent"}
        ``fraction`` accepts values up to :data:`AMBIGUOUS_MAX` and clips
        them to 1 (quantification noise); ``percent`` divides by 100.

    Returns
    -------
    fractions : dict of str to ndarray, shape (Rx, Ry), float32 in [0, 1]
    was_percent : bool

    Raises
    ------
    InputError
        Negative values, values above 100, NaN or infinite values, an
        ambiguous scale with ``unit="auto"``, or fractions above
        :data:`AMBIGUOUS_MAX`.
    """
    if unit not in EDS_UNITS:
        raise InputError(f"EDS unit {unit!r} is not one of {', '.join(EDS_UNITS)}",
                         hint="use `eds_unit` auto, fraction or percent")
    if not maps:
        raise InputError("no EDS maps", path=source)
    for name, arr in maps.items():
        if not np.all(np.isfinite(arr)):
            raise InputError(f"map {name} contains NaN or infinite values", path=source,
                             hint="fill or mask the bad pixels before converting")
        if arr.min() < 0:
            raise InputError(f"map {name} has negative values (min {arr.min():.4g})",
                             path=source, hint="EDS maps must be atomic fractions or percent")
        if arr.max() > 100:
            raise InputError(f"map {name} has values above 100 (max {arr.max():.4g}); "
                             "neither atomic fraction nor percent", path=source,
                             hint="export quantified maps (at.%), not counts")
    if unit == "auto":
        unit = eds_unit_of(maps, source)
    was_percent = unit == "percent"
    if not was_percent:
        for name, arr in maps.items():
            if arr.max() > AMBIGUOUS_MAX:
                raise InputError(f"map {name} has values up to {arr.max():.4g}, too large "
                                 "for atomic fractions", path=source,
                                 hint="these look like percent: use `eds_unit` percent")
    # Divide in float64, then store float32, so x/100 is rounded once; a
    # fraction's noise above 1 is clipped (only when the user said fraction).
    fractions = {name: np.clip(np.asarray(arr, np.float64) / (100.0 if was_percent else 1.0),
                               0.0, 1.0).astype(np.float32) for name, arr in maps.items()}
    return fractions, was_percent
