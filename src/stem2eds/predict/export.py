"""Predicted maps into the user's ecosystem: HyperSpy signals, xarray, and files.

One owner per output format (reading our own HDF5 back stays in
:mod:`stem2eds.formats.prediction`):

``hdf5``
    The prediction file (:mod:`stem2eds.formats.prediction`), as ``stem2eds predict`` writes.
``hspy``
    One HyperSpy file (RosettaSciIO): a ``Signal2D`` stack of the EDS maps,
    navigation axis ``element`` and signal axes ``x``/``y`` in nm,
    ``metadata.Sample.elements`` the symbols; the HAADF map and the
    ``eds_std`` stack, where present, as signals in
    ``metadata.stem2eds.haadf`` and ``metadata.stem2eds.eds_std``.
    ``hs.load(path).split()`` gives one map per element.
``zspy``
    The same in HyperSpy's zarr format (a folder). RosettaSciIO 0.15 writes
    it only with zarr 2; with zarr 3 it is refused with a clear error.
``tiff``
    One ImageJ hyperstack (tifffile), one channel per map in the order EDS
    elements, HAADF, ``<El>_std``, float32, labelled with the map names;
    pixel size as ImageJ ``resolution`` with ``unit=nm``, so Fiji shows the
    scale (Image > Properties) and its scale bar is right.
``csv``
    One row per probe position in scan (C) order: ``x_nm, y_nm`` (``x_px,
    y_px`` when uncalibrated; x along scan columns, y along rows, from the
    scan's origin including the run's crop), then one column per map.

Every file is written under a temporary name in the output folder and renamed
when complete (:func:`stem2eds.atomic.atomic_output`); an existing output is
refused unless ``overwrite``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..atomic import atomic_output, check_path_encoding
from ..errors import InputError


class Prediction(Protocol):
    """What the writers read of a prediction (:class:`stem2eds.predict.Prediction` is one).

    Attributes
    ----------
    eds : ndarray, shape (E, Rx, Ry)
    haadf : ndarray, shape (Rx, Ry), or None
    elements : list of str
    scan_shape : (Rx, Ry)
    eds_std : ndarray, shape (E, Rx, Ry), or None
    scan_step_nm : float or None
    source_name : str or None
    offset : (int, int)
        Scan row and column of the first map position in the source scan.
    """

    eds: np.ndarray
    haadf: np.ndarray | None
    elements: list[str]
    scan_shape: tuple[int, int]
    eds_std: np.ndarray | None
    scan_step_nm: float | None
    source_name: str | None
    offset: tuple[int, int]

    def save(self, path: str | os.PathLike, attrs: dict[str, Any] | None = None) -> Path:
        """Write the prediction file (hdf5)."""

#: Output formats and the file name endings each accepts (the first is the usual one).
FORMATS = {"hdf5": (".h5", ".hdf5", ".hdf"), "hspy": (".hspy",), "zspy": (".zspy",),
           "tiff": (".tif", ".tiff"), "csv": (".csv",)}


def format_for(path: str | os.PathLike, format: str | None = None) -> str:
    """The output format: ``format`` when given (checked against the name), else from the ending.

    Raises
    ------
    InputError
        An unknown format, an unknown ending, or a name whose ending is not
        the format's (HyperSpy and Fiji choose their reader by the ending).
        ``hdf5`` accepts any name, as ``stem2eds predict`` always has.
    """
    suffix = Path(path).suffix.lower()
    if format is None:
        found = [name for name, endings in FORMATS.items() if suffix in endings]
        if not found:
            raise InputError(f"cannot tell the output format from the ending {suffix!r}",
                             path=path, hint=f"set `format` (one of {', '.join(FORMATS)})")
        return found[0]
    if format not in FORMATS:
        raise InputError(f"`format` must be one of {', '.join(FORMATS)}, got {format!r}")
    if format != "hdf5" and suffix not in FORMATS[format]:
        raise InputError(f"a {format} file must end in {' or '.join(FORMATS[format])}",
                         path=path, hint=f"name it {Path(path).stem}{FORMATS[format][0]}")
    return format


def export_prediction(pred: Prediction, path: str | os.PathLike, format: str | None = None, *,
                      overwrite: bool = False, attrs: dict[str, Any] | None = None) -> list[Path]:
    """Write a prediction in one of :data:`FORMATS`.

    Parameters
    ----------
    pred : Prediction
    path : path-like
        The output file (a folder for ``zspy``).
    format : {"hdf5", "hspy", "zspy", "tiff", "csv"}, optional
        Default: from the ending of ``path``.
    overwrite : bool
        Replace an existing output (else it is refused).
    attrs : dict, optional
        Further root attributes of an ``hdf5`` file (model, run folder, ...).

    Returns
    -------
    list of Path
        The files written.
    """
    path = Path(path)
    fmt = format_for(path, format)
    check_path_encoding(path)
    if path.exists() and not overwrite:
        raise InputError("output exists", path=path,
                         hint="choose another name, or pass `overwrite`")
    if fmt == "hdf5":
        return [pred.save(path, attrs)]
    if fmt in ("hspy", "zspy"):
        return [_write_hyperspy(pred, path, fmt, attrs or {})]
    if fmt == "tiff":
        return [_write_tiff(pred, path)]
    return [_write_csv(pred, path)]


# -- in memory ----------------------------------------------------------------------

def _maps(pred: Prediction) -> list[tuple[str, np.ndarray]]:
    """(name, (Rx, Ry) map) of every map: elements, ``haadf``, ``<El>_std``."""
    maps = [(el, pred.eds[i]) for i, el in enumerate(pred.elements)]
    if pred.haadf is not None:
        maps.append(("haadf", pred.haadf))
    if pred.eds_std is not None:
        maps += [(f"{el}_std", pred.eds_std[i]) for i, el in enumerate(pred.elements)]
    return maps


def _scan_axes(pred: Prediction) -> tuple[float, str]:
    """(step, unit) of the scan axes: nm when calibrated, else px."""
    if pred.scan_step_nm is None:
        return 1.0, "px"
    return float(pred.scan_step_nm), "nm"


def _set_scan_axes(signal, pred: Prediction) -> None:
    """Name and calibrate a signal's two signal axes as the scan: x = columns, y = rows."""
    step, unit = _scan_axes(pred)
    # HyperSpy lists axes in reverse array order: signal_axes[0] runs along the columns
    for axis, name, first in zip(signal.axes_manager.signal_axes, ("x", "y"),
                                 (pred.offset[1], pred.offset[0])):
        axis.name, axis.units, axis.scale, axis.offset = name, unit, step, first * step


def _signal(data: np.ndarray, title: str, pred: Prediction, quantity: str):
    from hyperspy.signals import Signal2D

    s = Signal2D(np.ascontiguousarray(data, dtype=np.float32))
    s.metadata.General.title = title
    s.metadata.set_item("Signal.quantity", quantity)
    if pred.source_name:
        s.metadata.set_item("General.original_filename", pred.source_name)
    _set_scan_axes(s, pred)
    return s


def to_hyperspy(pred: Prediction) -> dict[str, Any]:
    """HyperSpy ``Signal2D`` maps of a prediction (see :meth:`Prediction.to_hyperspy`).

    Parameters
    ----------
    pred : Prediction

    Returns
    -------
    dict of str to Signal2D, each (Rx, Ry) data with axes (x | y) in nm or px
    """
    out: dict[str, Any] = {}
    for i, el in enumerate(pred.elements):
        s = _signal(pred.eds[i], el, pred, "Atomic fraction")
        s.metadata.set_item("Sample.elements", [el])
        out[el] = s
    if pred.haadf is not None:
        out["haadf"] = _signal(pred.haadf, "HAADF", pred, "HAADF (training data units)")
    if pred.eds_std is not None:
        for i, el in enumerate(pred.elements):
            s = _signal(pred.eds_std[i], f"{el} std", pred, "Atomic fraction (std)")
            s.metadata.set_item("Sample.elements", [el])
            out[f"{el}_std"] = s
    return out


def to_xarray(pred: Prediction):
    """An ``xarray.Dataset`` of a prediction (see :meth:`Prediction.to_xarray`).

    Returns
    -------
    xarray.Dataset
        ``eds`` (element, y, x); ``haadf`` (y, x) and ``eds_std``
        (element, y, x) where present; coordinates in nm or px.
    """
    try:
        import xarray as xr
    except ImportError:
        raise ImportError("to_xarray needs xarray: pip install 'stem2eds[ecosystem]'") from None

    step, unit = _scan_axes(pred)
    rx, ry = pred.scan_shape
    coords = {"element": list(pred.elements),
              "y": ("y", (pred.offset[0] + np.arange(rx)) * step, {"units": unit}),
              "x": ("x", (pred.offset[1] + np.arange(ry)) * step, {"units": unit})}
    data = {"eds": (("element", "y", "x"), pred.eds, {"units": "atomic fraction"})}
    if pred.haadf is not None:
        data["haadf"] = (("y", "x"), pred.haadf, {"units": "training HAADF units"})
    if pred.eds_std is not None:
        data["eds_std"] = (("element", "y", "x"), pred.eds_std, {"units": "atomic fraction"})
    attrs = {k: v for k, v in (("source_name", pred.source_name),
                               ("scan_step_nm", pred.scan_step_nm)) if v is not None}
    return xr.Dataset(data, coords=coords, attrs=attrs)


# -- files --------------------------------------------------------------------------

def _stack_signal(stack: np.ndarray, names: list[str], pred: Prediction, title: str):
    """A Signal2D stack (n, Rx, Ry): navigation axis ``element``, signal axes x/y."""
    s = _signal(stack, title, pred, "Atomic fraction")
    nav = s.axes_manager.navigation_axes[0]
    nav.name = "element"
    s.metadata.set_item("Sample.elements", list(names))
    return s


def _write_hyperspy(pred: Prediction, path: Path, fmt: str, attrs: dict[str, Any]) -> Path:
    s = _stack_signal(pred.eds, pred.elements, pred, pred.source_name or "stem2eds prediction")
    if pred.haadf is not None:
        s.metadata.set_item("stem2eds.haadf", _signal(pred.haadf, "HAADF", pred,
                                                      "HAADF (training data units)"))
    if pred.eds_std is not None:
        s.metadata.set_item("stem2eds.eds_std", _stack_signal(pred.eds_std, pred.elements,
                                                              pred, "eds_std"))
    s.metadata.set_item("stem2eds.map_names", [name for name, _ in _maps(pred)])
    for key, value in attrs.items():  # the run and source, as in the prediction file
        s.metadata.set_item(f"stem2eds.{key}", value)
    if fmt == "hspy":
        with atomic_output(path) as tmp:
            s.save(tmp, overwrite=True, file_format="HSPY")
        return path
    check_zspy_writable()
    return _atomic_folder(path, lambda tmp: s.save(tmp, overwrite=True, file_format="ZSPY"))


def check_zspy_writable() -> None:
    import zarr

    if int(zarr.__version__.split(".")[0]) >= 3:
        import rsciio

        raise InputError(f"RosettaSciIO {rsciio.__version__} cannot write zspy with "
                         f"zarr {zarr.__version__} (it needs zarr 2)",
                         hint="choose hspy (same content, one HDF5 file)")


def _atomic_folder(path: Path, write) -> Path:
    """Write a folder output under a temporary name beside it, then move it into place."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError("output folder does not exist", path=folder)
    tmp = folder / f".{path.name}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if path.is_dir():
            shutil.rmtree(path)  # overwrite was allowed by the caller
        elif path.exists():
            path.unlink()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_tiff(pred: Prediction, path: Path) -> Path:
    import tifffile

    maps = _maps(pred)
    stack = np.stack([values for _, values in maps]).astype(np.float32)
    step, unit = _scan_axes(pred)
    metadata = {"axes": "CYX", "unit": unit, "Labels": [name for name, _ in maps]}
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, stack, imagej=True, resolution=(1.0 / step, 1.0 / step),
                         metadata=metadata)
    return path


def _write_csv(pred: Prediction, path: Path) -> Path:
    maps = _maps(pred)
    step, unit = _scan_axes(pred)
    rx, ry = pred.scan_shape
    rows, cols = np.mgrid[0:rx, 0:ry]
    columns = [((cols + pred.offset[1]) * step).ravel(), ((rows + pred.offset[0]) * step).ravel()]
    columns += [values.ravel() for _, values in maps]
    header = ",".join([f"x_{unit}", f"y_{unit}", *(name for name, _ in maps)])
    with atomic_output(path) as tmp:
        np.savetxt(tmp, np.column_stack(columns), delimiter=",", header=header, comments="",
                   fmt="%.7g")
    return path
