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
        scan's verdict, ``empty_positions`` the positions without counts.
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
    The maps are kept in memory, (K, Rx, Ry) float32 (24 MB for a million
    positions and six outputs; the whole maps are read back for the run's
    filter anyway), and each dataset is written once, by :meth:`flush`:
    block by block, the dozen small HDF5 writes per block cost about 0.1 s
    of a 12,000-pattern prediction.
    """

    def __init__(self, f: h5py.File, elements: Sequence[str], haadf: bool,
                 shape: tuple[int, int], attrs: Mapping[str, Any] | None):
        _set_attrs(f, elements, attrs)
        self._file = f
        self.shape = tuple(int(s) for s in shape)
        self.elements = [check_element(el) for el in elements]
        grp = _eds_group(f)
        # the datasets exist from the start (a full disk or a bad name fails
        # before the scan is read); their values are written by flush()
        self.columns = [grp.create_dataset(el, shape=self.shape, dtype=np.float32)
                        for el in self.elements]
        if haadf:
            self.columns.append(f.create_dataset(HAADF, shape=self.shape, dtype=np.float32))
        self._maps = np.zeros((len(self.columns), *self.shape), np.float32)
        self._ood: tuple[np.ndarray, dict[str, Any]] | None = None

    def write_flat(self, start: int, values: np.ndarray) -> None:
        """Outputs (n, K) of flat positions ``start .. start + n``."""
        values = np.asarray(values, np.float32)
        flat = self._maps.reshape(len(self._maps), -1)
        if values.ndim != 2 or values.shape[1] != len(flat) or \
                not 0 <= start <= flat.shape[1] - len(values):
            raise ValueError(f"outputs of shape {values.shape} at position {start} do not fit "
                             f"{len(flat)} maps of {flat.shape[1]} positions")
        flat[:, start:start + len(values)] = values.T

    def write_ood(self, scores: np.ndarray, attrs: Mapping[str, Any]) -> None:
        """The per-position OOD score (Rx, Ry) as dataset ``ood``, its verdict as root attributes."""
        self._ood = (np.asarray(scores, np.float32).reshape(self.shape), dict(attrs))

    def read_eds(self) -> np.ndarray:
        """The EDS maps written so far, (E, Rx, Ry) float32."""
        return self._maps[:len(self.elements)].copy()

    def replace_eds(self, eds: np.ndarray) -> None:
        """Overwrite the EDS maps (E, Rx, Ry), e.g. with their filtered version."""
        self._maps[:len(self.elements)] = eds

    def flush(self) -> None:
        """Write the maps (and the OOD score) into the file (once, when the scan is done)."""
        for ds, values in zip(self.columns, self._maps):
            ds[...] = values
        if self._ood is not None:
            scores, attrs = self._ood
            self._file.create_dataset(OOD, data=scores)
            for key, value in attrs.items():
                self._file.attrs[key] = value


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
            writer = PredictionWriter(f, elements, haadf, shape, attrs)
            yield writer
            writer.flush()


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
