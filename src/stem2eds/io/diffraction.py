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
partial :class:`~stem2eds.formats.bundle.Calibration` dictionary); the caller lets
command-line flags override them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import DAMAGED_FILE_ERRORS as HDF5_DAMAGE
from ..errors import InputError

#: File extensions read by mrcfile, numpy and h5py here; the rest go to RosettaSciIO.
MRC_EXTENSIONS = (".mrc", ".mrcs")
NPY_EXTENSIONS = (".npy",)
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".emd", ".py4dstem")

#: RosettaSciIO plugin preferred when several claim an extension (e.g. ``.xml``).
_PREFERRED_PLUGIN = {"xml": "EMPAD", "mrc": "MRC"}


@dataclass
class DiffractionSource:
    """A 4D-STEM scan on disk, seen as an (Rx, Ry, Qx, Qy) array read in blocks.

    Attributes
    ----------
    path : Path
        The file.
    scan_shape : (int, int)
        (Rx, Ry): scan rows, scan columns.
    detector_shape : (int, int)
        (Qx, Qy): detector rows, detector columns.
    dtype : numpy.dtype
        The dtype stored in the file (kept when converting).
    calibration : dict
        Calibration fields found in the file (keys of
        :class:`~stem2eds.formats.bundle.Calibration`: ``r_pixel_size``,
        ``r_pixel_unit``, ``q_pixel_size``, ``q_pixel_unit``,
        ``beam_energy_kev``); absent when the file does not say.
    reader : str
        What read it, e.g. ``"mrcfile (3D stack)"`` or ``"rsciio EMPAD"``.
    chunk_rows : int
        Scan rows per storage chunk of a dask-backed source (1 otherwise):
        reading blocks that are multiples of it reads every chunk once.
    """

    path: Path
    scan_shape: tuple[int, int]
    detector_shape: tuple[int, int]
    dtype: np.dtype
    calibration: dict[str, Any] = field(default_factory=dict)
    reader: str = ""
    chunk_rows: int = 1
    #: Indexable along its first axis: (Rx, Ry, Qx, Qy), or (Rx*Ry, Qx, Qy) for a flat stack.
    _array: Any = field(default=None, repr=False)
    _close: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(Rx, Ry, Qx, Qy)."""
        return (*self.scan_shape, *self.detector_shape)

    @property
    def n_patterns(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Read scan rows ``start:stop`` into memory.

        Parameters
        ----------
        start, stop : int
            Scan-row range (along Rx).

        Returns
        -------
        ndarray, shape (stop - start, Ry, Qx, Qy)
            In the source dtype.
        """
        rx, ry = self.scan_shape
        start, stop = max(0, start), min(rx, stop)
        try:
            if len(self._array.shape) == 3:  # flat stack: pattern k is position (k // Ry, k % Ry)
                block = self._array[start * ry:stop * ry]
            else:
                block = self._array[start:stop]
            if isinstance(block, np.memmap):
                view = block
                block = np.array(view)  # our own copy, so the mapped pages can be let go
                _release_pages(self._array, view)
            else:
                block = np.asarray(block)  # reads from HDF5; computes a dask block
        except HDF5_DAMAGE as exc:  # a damaged chunk is found only when it is read
            raise InputError(f"cannot read scan rows {start}..{stop - 1}: "
                             f"{' '.join(str(exc).split())}", path=self.path,
                             hint="the file is damaged or truncated; re-copy or re-export it"
                             ) from None
        return block.reshape(stop - start, ry, *self.detector_shape)

    def iter_rows(self, rows_per_block: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` with blocks of whole scan rows.

        Parameters
        ----------
        rows_per_block : int
            Scan rows per block (at least 1).

        Yields
        ------
        first_row : int
        block : ndarray, shape (n_rows, Ry, Qx, Qy)
        """
        step = max(1, int(rows_per_block))
        for start in range(0, self.scan_shape[0], step):
            yield start, self.read_rows(start, start + step)

    def close(self) -> None:
        """Release the file (memory map, HDF5 handle)."""
        self._close()
        self._close = lambda: None

    def __enter__(self) -> "DiffractionSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _release_pages(root: np.memmap, view: np.ndarray) -> None:
    """Drop the pages of ``view`` (a slice of the memory map ``root``) from this process.

    Pages of a read-only file mapping stay counted in the process's resident
    memory after they are read, so streaming a 100 GB MRC through a memory map
    would show 100 GB resident at the end (reclaimable, but alarming and
    pushing other data out). ``MADV_DONTNEED`` unmaps them; touching them again
    re-reads the file. Skipped where the platform lacks ``madvise``.
    """
    mm = getattr(root, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    base = root.__array_interface__["data"][0]
    pointer = view.__array_interface__["data"][0]
    # np.memmap maps from the offset rounded down to the allocation granularity
    pos = int(getattr(root, "offset", 0)) % mmap.ALLOCATIONGRANULARITY + (pointer - base)
    start = pos - pos % mmap.PAGESIZE
    stop = min(pos + view.nbytes, len(mm))
    if 0 <= start < stop:
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED, start, stop - start)


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
        raise InputError("no such file", path=p, hint="check the --diffraction path")
    if p.is_dir():
        raise InputError("is a folder, expected a diffraction file", path=p)
    if p.stat().st_size == 0:
        raise InputError("file is empty", path=p)
    ext = p.suffix.lower()
    if dataset is not None and ext not in HDF5_EXTENSIONS:
        raise InputError(f"--dataset applies to HDF5 files, not {p.suffix or 'this'} files",
                         path=p, hint="drop --dataset")
    if ext in MRC_EXTENSIONS:
        return _open_mrc(p, scan_shape)
    if ext in NPY_EXTENSIONS:
        return _open_npy(p, scan_shape)
    if ext == ".emd" and dataset is None:
        # Velox and NCEM EMD (the latter stores axes reversed) need RosettaSciIO;
        # EMD 1.0 files it cannot place fall back to the plain HDF5 search.
        try:
            return _open_rsciio(p, scan_shape, plugins=_rsciio_plugins("emd"))
        except _NoDiffraction:
            pass
    if ext in HDF5_EXTENSIONS:
        return _open_hdf5(p, scan_shape, dataset)
    return _open_rsciio(p, scan_shape)


class _NoDiffraction(InputError):
    """No RosettaSciIO plugin found diffraction patterns in the file."""


# -- shape handling -------------------------------------------------------------

def _shapes(path: Path, shape: Sequence[int], scan_shape: Sequence[int] | None,
            what: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Scan and detector shapes of the data, refusing empty axes (damaged headers)."""
    scan, det = _scan_and_detector(path, shape, scan_shape, what)
    if min(*scan, *det) < 1:
        raise InputError(f"{what} has an empty axis: scan {scan[0]}x{scan[1]}, "
                         f"detector {det[0]}x{det[1]}", path=path,
                         hint="the header is damaged or the export is empty; re-export it")
    return (int(scan[0]), int(scan[1])), (int(det[0]), int(det[1]))


def _scan_and_detector(path: Path, shape: Sequence[int], scan_shape: Sequence[int] | None,
                       what: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Scan and detector shape of an array stored as 4D or as a flat 3D stack."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        if scan_shape is not None and tuple(scan_shape) != shape[:2]:
            raise InputError(f"{what} has scan shape {shape[0]}x{shape[1]} but --scan-shape "
                             f"is {scan_shape[0]}x{scan_shape[1]}", path=path,
                             hint="drop --scan-shape for 4D data")
        return shape[:2], shape[2:]  # type: ignore[return-value]
    if len(shape) == 3:
        if scan_shape is None:
            raise InputError(f"{what} is a stack of {shape[0]} frames of {shape[1]}x{shape[2]} "
                             "and does not say the scan shape", path=path,
                             hint="pass --scan-shape ROWSxCOLS (rows * cols = frames)")
        rx, ry = (int(v) for v in scan_shape)
        if rx * ry != shape[0]:
            raise InputError(f"{what} has {shape[0]} frames but --scan-shape {rx}x{ry} "
                             f"needs {rx * ry}", path=path,
                             hint="pass the scan shape the data was recorded with")
        return (rx, ry), shape[1:]  # type: ignore[return-value]
    raise InputError(f"{what} has {len(shape)} dimensions {shape}; expected a 4D scan "
                     "(Rx, Ry, Qx, Qy) or a 3D stack of frames", path=path)


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
        scan, det = _shapes(path, data.shape, scan_shape, "MRC file")
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
    scan, det = _shapes(path, data.shape, scan_shape, ".npy array")
    mm = getattr(data, "_mmap", None)
    return DiffractionSource(path, scan, det, np.dtype(data.dtype), {}, "numpy (memory map)",
                             _array=data,
                             _close=mm.close if mm is not None else (lambda: None))


# -- HDF5 -----------------------------------------------------------------------

def find_4d_datasets(file) -> list[str]:
    """HDF5 paths of every dataset with 3 or 4 dimensions, 4D ones first.

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
        if isinstance(obj, h5py.Dataset) and obj.ndim in found:
            found[obj.ndim].append("/" + name)

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
                                 hint="4D datasets in the file: "
                                      + (", ".join(_ndim_paths(f, 4)) or "none"))
            ds = f[dataset]
        else:
            four_d = _ndim_paths(f, 4)
            if len(four_d) > 1:
                raise InputError(f"has {len(four_d)} 4D datasets: {', '.join(four_d)}", path=path,
                                 hint="choose one with --dataset PATH")
            stacks = _ndim_paths(f, 3)
            if four_d:
                ds = f[four_d[0]]
            elif scan_shape is not None and len(stacks) == 1:
                ds = f[stacks[0]]  # the only stack of frames, with the scan shape given
            else:
                raise InputError("has no 4D dataset" + (f" (3D: {', '.join(stacks)})" if stacks
                                                        else ""), path=path,
                                 hint="name a 3D stack of frames with --dataset PATH and "
                                      "--scan-shape ROWSxCOLS")
        scan, det = _shapes(path, ds.shape, scan_shape, f"dataset {ds.name}")
        calibration = _hdf5_calibration(f, ds)
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
    return DiffractionSource(path, scan, det, np.dtype(ds.dtype), calibration,
                             f"h5py ({ds.name})", _array=ds, _close=f.close)


def _ndim_paths(f, ndim: int) -> list[str]:
    return [p for p in find_4d_datasets(f) if f[p].ndim == ndim]


def _hdf5_calibration(f, ds) -> dict[str, Any]:
    """Calibration of a 4D HDF5 dataset from the conventions we know.

    * EMD (NCEM ``dim1..dim4``, EMD 1.0 / py4DSTEM ``dim0..dim3``): a vector
      per axis beside the data, with a ``units`` attribute; the step between
      the first two values is the pixel size.
    * py4DSTEM calibration metadata: ``R_pixel_size``, ``R_pixel_units``,
      ``Q_pixel_size``, ``Q_pixel_units`` stored as attributes or scalar
      datasets anywhere in the file; these win over the dim vectors, since
      py4DSTEM keeps dims in pixels and the calibration there.
    * ``beam_energy`` (keV) / ``beam_energy_kev`` / ``voltage`` anywhere.
    """
    import h5py

    cal: dict[str, Any] = {}
    parent = ds.parent
    for first in (1, 0):
        dims = [parent.get(f"dim{first + i}") for i in range(4)]
        if all(isinstance(d, h5py.Dataset) and d.ndim == 1 for d in dims):
            for prefix, d in (("r", dims[0]), ("q", dims[2])):
                step, unit = _dim_step(d)
                if step is not None:
                    cal[f"{prefix}_pixel_size"] = step
                    cal[f"{prefix}_pixel_unit"] = _unit(unit)
            break
    found: dict[str, Any] = {}
    wanted = {"r_pixel_size", "r_pixel_units", "q_pixel_size", "q_pixel_units",
              "beam_energy", "beam_energy_kev"}

    def _collect(obj):
        for key, value in obj.attrs.items():
            if key.lower() in wanted:
                found.setdefault(key.lower(), value)

    def _visit(name, obj):
        _collect(obj)
        leaf = name.rsplit("/", 1)[-1].lower()
        if isinstance(obj, h5py.Dataset) and leaf in wanted and obj.size == 1:
            found.setdefault(leaf, obj[()])

    _collect(f)
    f.visititems(_visit)
    for prefix in ("r", "q"):
        size = _scalar(found.get(f"{prefix}_pixel_size"))
        if size is not None and size > 0:
            cal[f"{prefix}_pixel_size"] = size
            unit = found.get(f"{prefix}_pixel_units")
            if unit is not None:
                cal[f"{prefix}_pixel_unit"] = _unit(_text(unit))
            if _text(cal.get(f"{prefix}_pixel_unit", "px")).lower() in ("pixels", "pixel"):
                cal[f"{prefix}_pixel_unit"] = "px"
    energy = _scalar(found.get("beam_energy_kev", found.get("beam_energy")))
    if energy is not None and energy > 0:
        cal["beam_energy_kev"] = energy
    return _standardise(cal)


def _dim_step(d) -> tuple[float | None, str]:
    unit = _text(d.attrs.get("units", d.attrs.get("unit", "")))
    if d.shape[0] < 2 or unit.lower() in ("", "pixels", "pixel", "px", "[n_m]"):
        return None, unit
    values = d[:2].astype(float)
    step = float(values[1] - values[0])
    return (step, unit) if step > 0 else (None, unit)


def _unit(text: str) -> str:
    """Units as one token: ``"1 / nm"`` (pint's style in RosettaSciIO) -> ``"1/nm"``."""
    return "".join(str(text).split())


#: Lengths in nm. A small table rather than pint: building pint's registry
#: takes seconds, and these are the units microscope files use. "A" is the
#: angstrom (py4DSTEM writes "A^-1"), never the ampere, in a pixel size.
_NM_PER = {"pm": 1e-3, "A": 0.1, "\u00c5": 0.1, "\u212b": 0.1, "angstrom": 0.1, "nm": 1.0,
           "um": 1e3, "\u00b5m": 1e3, "\u03bcm": 1e3, "mm": 1e6, "m": 1e9}
_MRAD_PER = {"mrad": 1.0, "rad": 1e3, "urad": 1e-3, "\u00b5rad": 1e-3, "\u03bcrad": 1e-3}


def _standardise(cal: dict[str, Any]) -> dict[str, Any]:
    """Calibration with R in nm and Q in 1/nm or mrad where the units allow."""
    out = dict(cal)
    for prefix in ("r", "q"):
        size, unit = out.get(f"{prefix}_pixel_size"), out.get(f"{prefix}_pixel_unit")
        if size is not None and unit is not None:
            out[f"{prefix}_pixel_size"], out[f"{prefix}_pixel_unit"] = \
                standard_units(prefix, float(size), unit)
    return out


def standard_units(prefix: str, size: float, unit: str) -> tuple[float, str]:
    """Express a pixel size in the package's units where the unit is known.

    Parameters
    ----------
    prefix : {"r", "q"}
        Scan (real-space length -> ``nm``) or detector pixel (reciprocal
        length -> ``1/nm``, angle -> ``mrad``).
    size : float
    unit : str

    Returns
    -------
    (size, unit)
        Converted, or unchanged when the unit is not one of the known ones.
    """
    unit = _unit(unit)
    if prefix == "r" and unit in _NM_PER:
        return size * _NM_PER[unit], "nm"
    if prefix == "q":
        inverse = unit[2:] if unit.startswith("1/") else (
            unit[:-3] if unit.endswith("^-1") else unit[:-2] if unit.endswith("-1") else None)
        if inverse in _NM_PER:
            return size / _NM_PER[inverse], "1/nm"
        if unit in _MRAD_PER:
            return size * _MRAD_PER[unit], "mrad"
    return size, unit


def _scalar(value) -> float | None:
    if value is None:
        return None
    try:
        return float(np.asarray(value).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    return value.decode() if isinstance(value, bytes) else str(value)


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
        # Some readers (NCEM EMD) do not mark navigation axes; a 3D/4D array
        # is then taken in the usual (frames or Rx, Ry, Qx, Qy) order.
        candidates = [s for s in signals if np.ndim(s["data"]) in (3, 4)
                      and _n_signal_axes(s["axes"]) in (0, 2, len(s["axes"]))]
        four_d = [s for s in candidates if np.ndim(s["data"]) == 4]
        chosen = four_d or candidates
        if len(chosen) > 1:
            titles = [s.get("metadata", {}).get("General", {}).get("title", "?") for s in chosen]
            raise InputError(f"holds {len(chosen)} diffraction datasets ({', '.join(titles)})",
                             path=path, hint="export the one you want to its own file")
        if chosen:
            return _source_from_signal(path, chosen[0], scan_shape, plugin["name"])
        errors.append(f"{plugin['name']}: no dataset with 2 detector axes")
    raise _NoDiffraction("could not read diffraction patterns: " + "; ".join(errors), path=path)


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
    scan, det = _shapes(path, data.shape, scan_shape, f"{plugin} data")
    cal: dict[str, Any] = {}
    # Pixels are taken as square: the first calibrated scan axis gives the R
    # pixel, the first calibrated detector axis the Q pixel.
    for prefix, group in (("r", axes[:-2]), ("q", axes[-2:])):
        for axis in group:
            unit = str(axis.get("units") or "")
            scale = _scalar(axis.get("scale"))
            if unit and unit not in ("<undefined>", "px", "pixels") and scale and scale > 0:
                cal[f"{prefix}_pixel_size"] = scale
                cal[f"{prefix}_pixel_unit"] = _unit(unit)
                break
    tem = signal.get("metadata", {}).get("Acquisition_instrument", {}).get("TEM", {})
    energy = _scalar(tem.get("beam_energy"))
    if energy is not None and energy > 0:
        cal["beam_energy_kev"] = energy
    return DiffractionSource(path, scan, det, np.dtype(data.dtype), _standardise(cal),
                             f"rsciio {plugin}",
                             chunk_rows=_dask_chunk_rows(data, scan[1]), _array=data,
                             _close=lambda: _close_dask(data))


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
