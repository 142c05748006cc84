"""A 4D-STEM scan on disk seen as an (Rx, Ry, Qx, Qy) array read in blocks.

:class:`DiffractionSource` is what :func:`stem2eds.io.open_diffraction`
returns for every file type; the readers there only decide how to index the
file. :func:`check_shapes` turns a stored array shape (4D, or a flat 3D stack
with a given scan shape) into scan and detector shapes.
"""

from __future__ import annotations

import contextlib
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import DAMAGED_FILE_ERRORS as HDF5_DAMAGE
from ..errors import InputError


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
    calibration_problems : dict
        Calibrations the file has but that cannot be right, left out of
        ``calibration``: ``{"r_pixel" | "q_pixel" | "beam_energy_kev": why}``
        (e.g. a detector pixel in cm). :func:`stem2eds.convert.convert`
        refuses the file unless the caller gives those values.
    """

    path: Path
    scan_shape: tuple[int, int]
    detector_shape: tuple[int, int]
    dtype: np.dtype
    calibration: dict[str, Any] = field(default_factory=dict)
    reader: str = ""
    chunk_rows: int = 1
    calibration_problems: dict[str, str] = field(default_factory=dict)
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
            if block.dtype != self.dtype:  # e.g. big-endian in the file -> native
                block = block.astype(self.dtype)
        except HDF5_DAMAGE as exc:  # a damaged chunk is found only when it is read
            raise InputError(f"cannot read scan rows {start}..{stop - 1}: "
                             f"{' '.join(str(exc).split())}", path=self.path,
                             hint="the file is damaged or truncated; re-copy or re-export it"
                             ) from None
        return block.reshape(stop - start, ry, *self.detector_shape)

    def read(self, flat: np.ndarray | Sequence[int]) -> np.ndarray:
        """Patterns at ascending flat scan indices, as (n, Qx, Qy).

        Reads the scan rows the indices span (:meth:`read_rows`) and keeps
        the wanted patterns; blocks of whole rows, as
        :func:`stem2eds.io.stream.iter_blocks` cuts them, read nothing twice.
        This makes a source a block source for that reader.

        Parameters
        ----------
        flat : 1D int array
            Flat indices ``i * Ry + j``, ascending.

        Returns
        -------
        ndarray, shape (n, Qx, Qy)
            In the source dtype.
        """
        flat = np.asarray(flat, dtype=np.int64)
        if len(flat) == 0:
            return np.empty((0, *self.detector_shape), self.dtype)
        ry = self.scan_shape[1]
        first = int(flat[0]) // ry
        block = self.read_rows(first, int(flat[-1]) // ry + 1)
        block = block.reshape(-1, *self.detector_shape)
        wanted = flat - first * ry
        if len(wanted) == len(block) and wanted[-1] == len(block) - 1:
            return block  # whole rows: no copy
        return block[wanted]

    def iter_rows(self, rows_per_block: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` with blocks of whole scan rows.

        Read through :func:`stem2eds.io.stream.iter_blocks`, like every
        other stream of patterns.

        Parameters
        ----------
        rows_per_block : int
            Scan rows per block (at least 1).

        Yields
        ------
        first_row : int
        block : ndarray, shape (n_rows, Ry, Qx, Qy)
        """
        from .stream import iter_blocks

        ry = self.scan_shape[1]
        for start, patterns in iter_blocks(self, batch=max(1, int(rows_per_block)) * ry):
            yield start // ry, patterns.reshape(-1, ry, *self.detector_shape)

    def close(self) -> None:
        """Release the file (memory map, HDF5 handle)."""
        self._close()
        self._close = lambda: None

    def __enter__(self) -> "DiffractionSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SqueezedArray:
    """A stored array of more than 4 axes seen as 4D, indexed lazily along its first axis.

    Some layouts keep length-1 axes, e.g. Medipix (fpd) HDF5 files store
    (Rx, Ry, 1, Qx, Qy) with one "colour" axis. :func:`squeezed_shape` says
    which axes are dropped. Only slices along the first kept axis are
    supported, which is all :class:`DiffractionSource` uses.
    """

    def __init__(self, array):
        self.array = array
        full = tuple(int(n) for n in array.shape)
        self.shape = squeezed_shape(full)
        self.dtype = array.dtype
        self.ndim = len(self.shape)
        kept = _kept_axes(full)
        self._lead = kept[0] if kept else 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError("SqueezedArray supports slices along its first axis only")
        block = np.asarray(self.array[(0,) * self._lead + (key,)])
        return block.reshape(-1, *self.shape[1:])


def _kept_axes(shape: Sequence[int]) -> list[int]:
    """Axes kept by :func:`squeezed_shape`."""
    shape = [int(n) for n in shape]
    kept = list(range(len(shape)))
    # drop length-1 axes before the two detector axes, last first, down to 4 axes
    for axis in range(len(shape) - 3, -1, -1):
        if len(kept) <= 4:
            break
        if shape[axis] == 1:
            kept.remove(axis)
    return kept


def squeezed_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` with length-1 axes (other than the detector axes) dropped down to 4 axes.

    ``(2, 2, 1, 256, 256)`` -> ``(2, 2, 256, 256)``; arrays of at most 4 axes
    are unchanged, so a one-row scan ``(1, Ry, Qx, Qy)`` stays a scan.
    """
    shape = tuple(int(n) for n in shape)
    return tuple(shape[i] for i in _kept_axes(shape))


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


def check_shapes(path: Path, shape: Sequence[int], scan_shape: Sequence[int] | None,
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
            raise InputError(f"{what} has scan shape {shape[0]}x{shape[1]} but `scan_shape` "
                             f"is {scan_shape[0]}x{scan_shape[1]}", path=path,
                             hint="drop `scan_shape` for 4D data")
        return shape[:2], shape[2:]  # type: ignore[return-value]
    if len(shape) == 3:
        if scan_shape is None:
            raise InputError(f"{what} is a stack of {shape[0]} frames of {shape[1]}x{shape[2]} "
                             "and does not say the scan shape", path=path,
                             hint="give `scan_shape`, rows x columns (rows * columns = frames)")
        rx, ry = (int(v) for v in scan_shape)
        if rx * ry != shape[0]:
            raise InputError(f"{what} has {shape[0]} frames but `scan_shape` {rx}x{ry} "
                             f"needs {rx * ry}", path=path,
                             hint="pass the scan shape the data was recorded with")
        return (rx, ry), shape[1:]  # type: ignore[return-value]
    raise InputError(f"{what} has {len(shape)} dimensions {shape}; expected a 4D scan "
                     "(Rx, Ry, Qx, Qy) or a 3D stack of frames", path=path)
