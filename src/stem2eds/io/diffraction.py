"""Lazy readers of 4D-STEM diffraction data, whatever file it came in.

:func:`open_diffraction` returns a :class:`DiffractionSource`: the scan
seen as an array of shape (Rx, Ry, Qx, Qy) (scan rows, scan columns,
detector rows, detector columns) in the file's own dtype, read block by block
(:meth:`DiffractionSource.read_rows`). Nothing reads the whole array:

* MRC (``.mrc``, ``.mrcs``): a 3D stack of Rx*Ry frames in C order (as
  exported by Velox; the scan shape must be given because MRC does not store
  it) or a 4D volume stack, memory-mapped with ``mrcfile``;
* NumPy ``.npy``: memory-mapped (``np.load(mmap_mode="r")``), 4D or a 3D stack;
* HDF5 (``.h5``, ``.hdf5``, ``.hdf``, ``.emd``, ``.py4dstem``) read by
  ``h5py``: the dataset named by ``dataset``, or the only 4D dataset in the
  file (plain files, py4DSTEM / EMD 1.0 layouts), or, with a scan shape
  given and no 4D dataset, the only 3D stack; ``.emd`` files go to
  RosettaSciIO first (Velox and NCEM EMD), then to the HDF5 search;
* everything else RosettaSciIO reads (DM3/DM4, EMPAD ``.xml``, blockfile
  ``.blo``, MerlinEM ``.mib``, ``.hspy``/``.zspy``, TVIPS, ...), opened with
  ``lazy=True`` so the data is a dask array.

Calibrations are taken from the file where it has them (returned as a
partial :class:`~stem2eds.formats.bundle.PixelCalibration` dictionary, see
:mod:`stem2eds.io.calibration`); the caller's own values override them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DAMAGED_FILE_ERRORS as HDF5_DAMAGE
from ..errors import InputError
from .source import DiffractionSource, SqueezedArray, check_shapes, squeezed_shape
from .hdf5 import check_self_contained
from .calibration import beam_energy_from_signal, check_calibration, hdf5_calibration
from .calibration import is_energy_unit, scalar, standardise, standard_units, unit_token
from .describe import describe_signals, describe_velox

__all__ = ["DiffractionSource", "find_4d_datasets", "open_diffraction", "standard_units",
           "HDF5_EXTENSIONS", "MRC_EXTENSIONS", "NPY_EXTENSIONS"]

#: File extensions read by mrcfile, numpy and h5py here; the rest go to RosettaSciIO.
MRC_EXTENSIONS = (".mrc", ".mrcs")
NPY_EXTENSIONS = (".npy",)
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".emd", ".py4dstem")

#: RosettaSciIO plugin preferred when several claim an extension (e.g. ``.xml``).
_PREFERRED_PLUGIN = {"xml": "EMPAD", "mrc": "MRC"}


def open_diffraction(path: str | os.PathLike, scan_shape: Sequence[int] | None = None,
                     dataset: str | None = None) -> DiffractionSource:
    """Open a 4D-STEM file lazily as an (Rx, Ry, Qx, Qy) source.

    Parameters
    ----------
    path : path-like
        The diffraction file (see the module docstring for formats).
    scan_shape : (Rx, Ry), optional
        Required for flat stacks of frames (3D MRC, 3D ``.npy`` or HDF5, a
        1D-navigation signal); for 4D data it must match when given.
    dataset : str, optional
        HDF5 path of the 4D dataset; found automatically when the file has
        exactly one.

    Returns
    -------
    DiffractionSource
        Close it (or use it as a context manager) when done.

    Raises
    ------
    InputError
        Missing, unreadable, truncated or corrupt file; no or several 4D
        datasets; a frame count that does not match ``scan_shape``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", path=p, hint="check the `diffraction` path")
    if p.is_dir():
        raise InputError("is a folder, expected a diffraction file", path=p)
    if p.stat().st_size == 0:
        raise InputError("file is empty", path=p)
    ext = p.suffix.lower()
    if dataset is not None and ext not in HDF5_EXTENSIONS:
        raise InputError(f"`dataset` applies to HDF5 files, not {p.suffix or 'this'} files",
                         path=p, hint="drop `dataset`")
    if ext in MRC_EXTENSIONS:
        return _open_mrc(p, scan_shape)
    if ext in NPY_EXTENSIONS:
        return _open_npy(p, scan_shape)
    if ext == ".emd" and dataset is None:
        # Velox and NCEM EMD (the latter stores axes reversed) need RosettaSciIO;
        # EMD 1.0 files it cannot place fall back to the plain HDF5 search.
        try:
            return _open_rsciio(p, scan_shape, plugins=_rsciio_plugins("emd"))
        except _NoDiffraction as exc:
            described = exc if "holds no 4D-STEM" in exc.message else None
        try:
            return _open_hdf5(p, scan_shape, dataset)
        except InputError as exc:
            if described is not None and "has no 4D dataset" in exc.message:
                raise described from None
            raise
    if ext in HDF5_EXTENSIONS:
        return _open_hdf5(p, scan_shape, dataset)
    return _open_rsciio(p, scan_shape)


class _NoDiffraction(InputError):
    """No RosettaSciIO plugin found diffraction patterns in the file."""


# -- MRC ------------------------------------------------------------------------

def _open_mrc(path: Path, scan_shape) -> DiffractionSource:
    import warnings

    import mrcfile

    try:
        with warnings.catch_warnings():
            # mrcfile warns about odd but readable headers (e.g. from Velox); a
            # truncated or garbage file raises ValueError, handled below.
            warnings.simplefilter("ignore", RuntimeWarning)
            mrc = mrcfile.mmap(path, mode="r")
    except (ValueError, OSError, OverflowError, MemoryError) as exc:
        # OverflowError / MemoryError: a damaged header gives negative or huge sizes.
        reason = str(exc).strip().rstrip(".")
        if "mmap length is greater than file size" in reason:
            reason = "file is shorter than its header says (truncated?)"
        raise InputError(f"not a readable MRC file: {reason}", path=path,
                         hint="re-export or re-copy the file") from None
    try:
        data = mrc.data
        if data is None:
            raise InputError("MRC file has no data block", path=path)
        if data.ndim < 3:
            raise InputError(f"MRC holds a single {'x'.join(map(str, data.shape))} image, "
                             "not a stack of diffraction patterns", path=path,
                             hint="export the 4D-STEM scan as a stack of frames")
        scan, det = check_shapes(path, data.shape, scan_shape, "MRC file")
    except BaseException:
        mrc.close()
        raise
    # MRC voxel sizes are in angstrom for real-space images; for a stack of
    # diffraction patterns they carry no usable Q calibration, so none is read.
    kind = "4D volume stack" if data.ndim == 4 else "3D stack"
    return DiffractionSource(path, scan, det, np.dtype(data.dtype), {}, f"mrcfile ({kind})",
                             _array=data, _close=mrc.close)


# -- NumPy ----------------------------------------------------------------------

def _open_npy(path: Path, scan_shape) -> DiffractionSource:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"not a readable .npy file: {str(exc).strip()}", path=path) from None
    if not isinstance(data, np.ndarray):
        raise InputError("not a single .npy array", path=path)
    scan, det = check_shapes(path, data.shape, scan_shape, ".npy array")
    mm = getattr(data, "_mmap", None)
    return DiffractionSource(path, scan, det, np.dtype(data.dtype), {}, "numpy (memory map)",
                             _array=data,
                             _close=mm.close if mm is not None else (lambda: None))


# -- HDF5 -----------------------------------------------------------------------

#: Smallest detector axis (pixels) of a diffraction pattern. Real detectors have
#: 64 to 4096 pixels a side; arrays with a shorter axis are metadata stored
#: beside the patterns (e.g. Medipix DAC settings, 1x27 per position).
MIN_DETECTOR_PIXELS = 16


def why_not_patterns(shape, dtype) -> str | None:
    """Why an array of this shape and dtype cannot be a stack of diffraction patterns, or None.

    Length-1 axes are dropped first (down to 4 axes, :func:`squeezed_shape`).
    """
    dtype = np.dtype(dtype)
    shape = squeezed_shape(shape)
    if dtype.kind not in "uif":
        return f"holds {dtype} values, not detector counts"
    if len(shape) not in (3, 4):
        return (f"has {len(shape)} dimensions {tuple(shape)}; expected a 4D scan "
                "(Rx, Ry, Qx, Qy) or a 3D stack of frames")
    if min(shape[-2:]) < MIN_DETECTOR_PIXELS:
        return (f"would hold patterns of {shape[-2]}x{shape[-1]} pixels; a detector has at "
                f"least {MIN_DETECTOR_PIXELS} pixels a side (metadata, not patterns?)")
    return None


def find_4d_datasets(file) -> list[str]:
    """HDF5 paths of every dataset that can hold diffraction patterns, 4D ones first.

    A dataset qualifies when it holds numbers and, with length-1 axes
    dropped (Medipix stores (Rx, Ry, 1, Qx, Qy)), has 3 or 4 dimensions whose
    last two are at least :data:`MIN_DETECTOR_PIXELS` (and a 3D one more
    than one frame); metadata arrays stored beside the patterns (settings per
    position, a summed pattern) never do.

    Parameters
    ----------
    file : h5py.File or h5py.Group

    Returns
    -------
    list of str
        Paths of 4D datasets followed by paths of 3D datasets.
    """
    import h5py

    found: dict[int, list[str]] = {4: [], 3: []}

    def _visit(name, obj):
        if isinstance(obj, h5py.Dataset) and why_not_patterns(obj.shape, obj.dtype) is None:
            shape = squeezed_shape(obj.shape)
            if len(shape) == 4 or shape[0] > 1:  # one frame (a sum pattern) is not a scan
                found[len(shape)].append("/" + name)

    file.visititems(_visit)
    return found[4] + found[3]


def _open_hdf5(path: Path, scan_shape, dataset: str | None) -> DiffractionSource:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"not a readable HDF5 file ({' '.join(str(exc).split())})",
                         path=path) from None
    try:
        if dataset is not None:
            if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                raise InputError(f"no dataset {dataset!r}", path=path,
                                 hint="datasets that can hold patterns: "
                                      + (", ".join(find_4d_datasets(f)) or "none"))
            ds = f[dataset]
            why = why_not_patterns(ds.shape, ds.dtype)
            if why is not None:
                raise InputError(f"dataset {ds.name} {tuple(ds.shape)} {ds.dtype} is not a scan "
                                 f"of diffraction patterns: it {why}", path=path,
                                 hint="datasets that can hold patterns: "
                                      + (", ".join(find_4d_datasets(f)) or "none"))
        else:
            four_d = _ndim_paths(f, 4)
            if len(four_d) > 1:
                raise InputError(f"has {len(four_d)} 4D datasets: {', '.join(four_d)}", path=path,
                                 hint="choose one with `dataset`")
            # with the scan shape given, a lone stack may hold a single frame (a 1x1 scan)
            stacks = [p for p in _visit_paths(f) if len(squeezed_shape(f[p].shape)) == 3
                      and why_not_patterns(f[p].shape, f[p].dtype) is None]
            if four_d:
                ds = f[four_d[0]]
            elif scan_shape is not None and len(stacks) == 1:
                ds = f[stacks[0]]  # the only stack of frames, with the scan shape given
            else:
                velox = describe_velox(f)
                if velox is not None:
                    raise InputError(velox[0], path=path, hint=velox[1])
                raise InputError("has no 4D dataset" + (f" (3D: {', '.join(stacks)})" if stacks
                                                        else ""), path=path,
                                 hint="name a 3D stack of frames with `dataset` and "
                                      "give its `scan_shape`")
        # bytes in other files (external storage, virtual sources) are refused
        # before anything is read: they could be any file on the machine
        check_self_contained(ds, path)
        array = SqueezedArray(ds) if ds.ndim > 4 else ds
        scan, det = check_shapes(path, array.shape, scan_shape, f"dataset {ds.name}")
        calibration = hdf5_calibration(f, ds)
    except InputError:
        f.close()
        raise
    except HDF5_DAMAGE as exc:
        # A damaged file opens but its object headers fail to parse; h5py
        # raises whichever type the HDF5 error maps to (KeyError, RuntimeError, ...).
        f.close()
        raise InputError(f"damaged HDF5 file ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})", path=path,
                         hint="the file is damaged or truncated; re-copy or re-export it"
                         ) from None
    except BaseException:
        f.close()
        raise
    calibration, problems = check_calibration(calibration)
    return DiffractionSource(path, scan, det, _native(ds.dtype), calibration,
                             f"h5py ({ds.name})", _array=array, _close=f.close,
                             calibration_problems=problems)


def _native(dtype) -> np.dtype:
    """The dtype in this machine's byte order (Medipix HDF5 stores big-endian)."""
    return np.dtype(dtype).newbyteorder("=")


def _visit_paths(f) -> list[str]:
    """Paths of every dataset in the file."""
    import h5py

    paths: list[str] = []
    f.visititems(lambda name, obj: paths.append("/" + name)
                 if isinstance(obj, h5py.Dataset) else None)
    return paths


def _ndim_paths(f, ndim: int) -> list[str]:
    return [p for p in find_4d_datasets(f) if len(squeezed_shape(f[p].shape)) == ndim]


# -- RosettaSciIO -----------------------------------------------------------------

def _rsciio_plugins(ext: str) -> list[dict]:
    from rsciio import IO_PLUGINS

    ext = ext.lower().lstrip(".")
    plugins = [p for p in IO_PLUGINS if ext in (e.lower() for e in p["file_extensions"])]
    preferred = _PREFERRED_PLUGIN.get(ext)
    plugins.sort(key=lambda p: p["name"] != preferred)
    return plugins


def _open_rsciio(path: Path, scan_shape, plugins: list[dict] | None = None) -> DiffractionSource:
    import importlib

    plugins = _rsciio_plugins(path.suffix) if plugins is None else plugins
    if not plugins:
        raise InputError(f"unknown diffraction file type {path.suffix!r}", path=path,
                         hint="use MRC, .npy, HDF5 or a format RosettaSciIO reads "
                              "(.emd, .dm4, .xml, .blo, .mib, .hspy, ...)")
    errors = []
    for plugin in plugins:
        reader = importlib.import_module(plugin["api"]).file_reader
        try:
            signals = reader(str(path), lazy=True)
        except Exception as exc:  # noqa: BLE001 - each plugin fails its own way on foreign files
            errors.append(f"{plugin['name']}: {' '.join(str(exc).split()) or type(exc).__name__}")
            continue
        chosen = _diffraction_signals(signals)
        if len(chosen) > 1:
            titles = [s.get("metadata", {}).get("General", {}).get("title", "?") for s in chosen]
            raise InputError(f"holds {len(chosen)} diffraction datasets ({', '.join(titles)})",
                             path=path, hint="export the one you want to its own file")
        if chosen:
            return _source_from_signal(path, chosen[0], scan_shape, plugin["name"])
        if signals:
            # The file was read: say what it holds instead of how the readers failed.
            what, instead = describe_signals(signals)
            raise _NoDiffraction(f"holds no 4D-STEM diffraction scan: {what}", path=path,
                                 hint=instead)
        errors.append(f"{plugin['name']}: no dataset with 2 detector axes")
    raise _NoDiffraction("could not read diffraction patterns: " + "; ".join(errors), path=path)


def _diffraction_signals(signals: list[dict]) -> list[dict]:
    """The signals that can be a diffraction scan: 3D or 4D, no energy axis, real detector."""
    # Some readers (NCEM EMD) do not mark navigation axes; a 3D/4D array is
    # then taken in the usual (frames or Rx, Ry, Qx, Qy) order.
    candidates = [s for s in signals if np.ndim(s["data"]) in (3, 4)
                  and _n_signal_axes(s["axes"]) in (0, 2, len(s["axes"]))
                  and not any(is_energy_unit(a.get("units")) for a in s["axes"])
                  and why_not_patterns(_signal_last(s), s["data"].dtype) is None]
    four_d = [s for s in candidates if np.ndim(s["data"]) == 4]
    return four_d or candidates


def _signal_last(signal: dict) -> tuple[int, ...]:
    """Shape of a signal with its detector (signal) axes last."""
    shape = tuple(int(n) for n in np.shape(signal["data"]))
    axes = signal["axes"]
    if len(axes) != len(shape):
        return shape
    nav = [i for i, a in enumerate(axes) if a.get("navigate", True)]
    sig = [i for i, a in enumerate(axes) if not a.get("navigate", True)]
    return tuple(shape[i] for i in nav + sig) if len(sig) == 2 else shape


def _n_signal_axes(axes: list[dict]) -> int:
    return sum(not a.get("navigate", True) for a in axes)


def _source_from_signal(path: Path, signal: dict, scan_shape, plugin: str) -> DiffractionSource:
    """Wrap one RosettaSciIO signal dictionary (lazy dask data) as a source."""
    data = signal["data"]
    axes = signal["axes"]
    # RosettaSciIO lists axes in array order; put navigation (scan) axes first,
    # lazily, in case a reader stores the detector axes first.
    nav = [i for i, a in enumerate(axes) if a.get("navigate", True)]
    sig = [i for i, a in enumerate(axes) if not a.get("navigate", True)]
    order = nav + sig
    if len(sig) == 2 and order != list(range(len(axes))):
        data = data.transpose(order)
        axes = [axes[i] for i in order]
    scan, det = check_shapes(path, data.shape, scan_shape, f"{plugin} data")
    cal: dict[str, Any] = {}
    # Pixels are taken as square: the first calibrated scan axis gives the R
    # pixel, the first calibrated detector axis the Q pixel. A negative scale
    # (TIA stores scan rows bottom-up) is a direction, not a size.
    for prefix, group in (("r", axes[:-2]), ("q", axes[-2:])):
        for axis in group:
            unit = str(axis.get("units") or "")
            scale = scalar(axis.get("scale"))
            if unit and unit not in ("<undefined>", "px", "pixels") and scale:
                cal[f"{prefix}_pixel_size"] = abs(scale)
                cal[f"{prefix}_pixel_unit"] = unit_token(unit)
                break
    energy = beam_energy_from_signal(signal)
    if energy is not None:
        cal["beam_energy_kev"] = energy
    cal, problems = check_calibration(standardise(cal))
    if "q_pixel" in problems and path.suffix.lower() == ".ser":
        problems["q_pixel"] += (" (RosettaSciIO reads a TIA .ser without its .emi in metres; "
                                "open the .emi file instead)")
    return DiffractionSource(path, scan, det, _native(data.dtype), cal,
                             f"rsciio {plugin}",
                             chunk_rows=_dask_chunk_rows(data, scan[1]), _array=data,
                             _close=lambda: _close_dask(data), calibration_problems=problems)


def _dask_chunk_rows(data, ry: int) -> int:
    """Scan rows in the first dask chunk (1 when chunks do not hold whole rows)."""
    chunks = getattr(data, "chunks", None)
    if not chunks:
        return 1
    first = int(chunks[0][0])
    if data.ndim == 4:
        return max(1, first)
    return first // ry if first % ry == 0 else 1


def _close_dask(data) -> None:
    """Close HDF5 files that a lazily loaded RosettaSciIO signal keeps open."""
    with contextlib.suppress(Exception):
        from rsciio.utils.file import get_file_handle

        handle = get_file_handle(data, warn=False)
        if handle is not None:
            handle.close()
