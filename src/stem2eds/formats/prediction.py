"""The prediction file (HDF5): predicted EDS maps, HAADF and their uncertainty.

Every prediction file is written and read here (``stem2eds predict``, the
experiment runners and the ensembles all call this module)::

    /                     attributes: format = "stem2eds-prediction",
                          format_version, elements (str array), scan_name,
                          model, run_dir, stem2eds_version, scan_shape,
                          targets, source, eds_filter, ... (dicts and lists
                          stored as JSON text)
    eds/<El>              (Rx, Ry) float32, atomic fraction (group attr unit)
    haadf                 (Rx, Ry) float32, in the training HAADF's scale (optional)
    eds_std/<El>          (Rx, Ry) float32, ensemble standard deviation (optional)
    <name>                further arrays of a workflow, e.g. ``sampled`` (Rx, Ry) bool

Files are written under a temporary name and renamed when complete
(:func:`stem2eds.atomic.atomic_output`), so a reader never sees half a file.
Element names read back are checked symbols before they become keys.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

from ..atomic import atomic_output
from ..elements import check_element
from ..errors import DAMAGED_FILE_ERRORS, InputError

FORMAT = "stem2eds-prediction"
FORMAT_VERSION = 1

EDS = "eds"
HAADF = "haadf"
EDS_STD = "eds_std"
#: Optional per-position out-of-distribution score (Rx, Ry) float32 (stem2eds.analysis.ood).
OOD = "ood"


@dataclass
class PredictionFile:
    """The content of a prediction file.

    Attributes
    ----------
    elements : list of str
        Element symbols, in the order of ``eds``.
    eds : ndarray, shape (E, Rx, Ry), float32
        Predicted atomic fractions.
    haadf : ndarray, shape (Rx, Ry), or None
    eds_std : ndarray, shape (E, Rx, Ry), or None
        Standard deviation of ``eds`` (ensembles), atomic fraction.
    attrs : dict
        Root attributes (JSON text decoded back into dicts and lists).
    extra : dict of str to ndarray
        Further datasets of a workflow.
    ood : ndarray, shape (Rx, Ry), float32, or None
        Out-of-distribution score per position (Mahalanobis distance of the
        pattern's ring features from the training positions'); root
        attributes ``ood_score``, ``ood_threshold``, ``ood_outside`` give the
        scan's verdict.
    """

    elements: list[str]
    eds: np.ndarray
    haadf: np.ndarray | None = None
    eds_std: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    ood: np.ndarray | None = None


def _set_attrs(f: h5py.File, elements: Sequence[str], attrs: Mapping[str, Any] | None) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["elements"] = np.array([check_element(e) for e in elements],
                                   dtype=h5py.string_dtype())
    for key, value in (attrs or {}).items():
        if key in ("elements", "format", "format_version"):
            continue  # written above, from the arguments
        f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


def _eds_group(f: h5py.File, name: str = EDS) -> h5py.Group:
    grp = f.create_group(name)
    grp.attrs["unit"] = "atomic fraction"
    if name == EDS_STD:
        grp.attrs["meaning"] = "standard deviation over the ensemble members"
    return grp


def write_prediction_file(path: str | os.PathLike, elements: Sequence[str], eds: np.ndarray,
                          *, haadf: np.ndarray | None = None, eds_std: np.ndarray | None = None,
                          attrs: Mapping[str, Any] | None = None,
                          extra: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write a whole prediction file at once, atomically.

    Parameters
    ----------
    path : path-like
    elements : sequence of str
    eds : ndarray, shape (E, Rx, Ry)
        Predicted atomic fractions.
    haadf : ndarray, shape (Rx, Ry), optional
    eds_std : ndarray, shape (E, Rx, Ry), optional
    attrs : dict, optional
        Root attributes (dicts and lists stored as JSON).
    extra : dict, optional
        Further ``name -> array`` datasets.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    eds = np.asarray(eds, np.float32)
    if eds.ndim != 3 or len(eds) != len(elements):
        raise ValueError(f"eds must be (E, Rx, Ry) with E = {len(elements)}, got {eds.shape}")
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _set_attrs(f, elements, attrs)
            grp = _eds_group(f)
            for el, values in zip(elements, eds):
                grp.create_dataset(check_element(el), data=values)
            if haadf is not None:
                f.create_dataset(HAADF, data=np.asarray(haadf, np.float32))
            if eds_std is not None:
                std_grp = _eds_group(f, EDS_STD)
                for el, values in zip(elements, np.asarray(eds_std, np.float32)):
                    std_grp.create_dataset(check_element(el), data=values)
            for name, values in (extra or {}).items():
                f.create_dataset(name, data=values)
    return path


class PredictionWriter:
    """A prediction file filled position by position while a scan is predicted.

    Use :func:`open_prediction_writer`; outputs arrive as flat position ranges
    (n, K) with the K columns in output order (EDS elements, then HAADF).
    """

    def __init__(self, f: h5py.File, elements: Sequence[str], haadf: bool,
                 shape: tuple[int, int], attrs: Mapping[str, Any] | None):
        _set_attrs(f, elements, attrs)
        grp = _eds_group(f)
        self.shape = tuple(int(s) for s in shape)
        self.eds = [grp.create_dataset(check_element(el), shape=self.shape, dtype=np.float32)
                    for el in elements]
        self.columns = list(self.eds)
        if haadf:
            self.columns.append(f.create_dataset(HAADF, shape=self.shape, dtype=np.float32))

    def write_flat(self, start: int, values: np.ndarray) -> None:
        """Write outputs (n, K) of flat positions ``start .. start + n``."""
        write_flat(self.columns, start, values, self.shape[1])

    def write_ood(self, scores: np.ndarray, attrs: Mapping[str, Any]) -> None:
        """The per-position OOD score (Rx, Ry) as dataset ``ood``, its verdict as root attributes."""
        f = self.eds[0].file
        f.create_dataset(OOD, data=np.asarray(scores, np.float32).reshape(self.shape))
        for key, value in attrs.items():
            f.attrs[key] = value

    def read_eds(self) -> np.ndarray:
        """The EDS maps written so far, (E, Rx, Ry) float32."""
        return np.stack([ds[()] for ds in self.eds])

    def replace_eds(self, eds: np.ndarray) -> None:
        """Overwrite the EDS maps (E, Rx, Ry), e.g. with their filtered version."""
        for ds, values in zip(self.eds, eds):
            ds[...] = values


@contextlib.contextmanager
def open_prediction_writer(path: str | os.PathLike, elements: Sequence[str], *, haadf: bool,
                           shape: tuple[int, int], attrs: Mapping[str, Any] | None = None
                           ) -> Iterator[PredictionWriter]:
    """Create a prediction file to fill in place; it appears under ``path`` only when complete.

    Parameters
    ----------
    path : path-like
    elements : sequence of str
    haadf : bool
        Whether a HAADF map is predicted (the last output column).
    shape : (int, int)
        Scan shape (Rx, Ry) of the maps.
    attrs : dict, optional
        Root attributes.
    """
    with atomic_output(Path(path)) as tmp:
        with h5py.File(tmp, "w") as f:
            yield PredictionWriter(f, elements, haadf, shape, attrs)


def write_flat(datasets: Sequence[h5py.Dataset], start: int, values: np.ndarray,
               width: int) -> None:
    """Write outputs (n, K) of flat positions ``start..start+n`` into K (Rx, Ry) maps.

    Whole rows are written as one slab per dataset (HDF5 writes are far
    cheaper per call than per element), partial rows at either end row by row.
    """
    k, n = 0, len(values)
    while k < n:
        i, j = divmod(start + k, width)
        if j == 0 and n - k >= width:
            rows = (n - k) // width
            block = values[k:k + rows * width].reshape(rows, width, -1)
            for col, ds in enumerate(datasets):
                ds[i:i + rows] = block[:, :, col]
            k += rows * width
        else:
            take = min(n - k, width - j)
            for col, ds in enumerate(datasets):
                ds[i, j:j + take] = values[k:k + take, col]
            k += take


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_prediction(path: str | os.PathLike) -> PredictionFile:
    """Read a prediction file; InputError when it is not one or is damaged.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    PredictionFile
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such prediction file", path=path)
    try:
        with h5py.File(path, "r") as f:
            if EDS not in f or "elements" not in f.attrs:
                raise InputError("not a stem2eds prediction file (no eds/ or elements)",
                                 path=path)
            elements = [check_element(_decode(e), source=path) for e in f.attrs["elements"]]
            missing = [e for e in elements if e not in f[EDS]]
            if missing:
                raise InputError(f"prediction file lacks eds/{missing[0]}", path=path)
            eds = np.stack([f[EDS][e][()] for e in elements]).astype(np.float32)
            haadf = f[HAADF][()] if HAADF in f else None
            eds_std = (np.stack([f[EDS_STD][e][()] for e in elements]).astype(np.float32)
                       if EDS_STD in f else None)
            attrs = {k: _decode(v) for k, v in f.attrs.items() if k != "elements"}
            ood = f[OOD][()].astype(np.float32) if OOD in f else None
            extra = {name: f[name][()] for name in f
                     if name not in (EDS, HAADF, EDS_STD, OOD)
                     and isinstance(f[name], h5py.Dataset)}
    except InputError:
        raise
    except DAMAGED_FILE_ERRORS as exc:
        raise InputError(f"cannot read the prediction file ({type(exc).__name__}: {exc})",
                         path=path) from None
    return PredictionFile(elements, eds, haadf, eds_std, attrs, extra, ood)
