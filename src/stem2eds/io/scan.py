"""What prediction needs from a scan, and 4D arrays in memory read in blocks.

:class:`ScanSource` is the interface :meth:`stem2eds.predict.Predictor.iter_outputs`
and :func:`stem2eds.preprocess.iter_preprocessed` read a scan through: an
open scan bundle (:class:`stem2eds.formats.bundle.ScanBundle`) is one, and
:class:`stem2eds.predict.sources.ArrayScan` wraps numpy and dask arrays,
HyperSpy/pyxem signals and py4DSTEM DataCubes as one.

Its ``diffraction`` is read only through :func:`stem2eds.io.stream.iter_blocks`:
an HDF5 dataset (a bundle) or a :class:`~stem2eds.io.stream.BlockSource`;
:class:`ArrayPatterns` is the block source of an array in memory or a dask
array (computing only the scan rows each block needs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError


@runtime_checkable
class ScanSource(Protocol):
    """A raw (or preprocessed) 4D-STEM scan as prediction reads it.

    Attributes
    ----------
    path : Path or None
        The file, for messages and for Dask workers (which reopen it); None
        for a scan held in memory.
    name : str
        Scan name (a safe file name).
    kind : {"raw", "preprocessed"}
    scan_shape : (Rx, Ry)
    detector_shape : (Qx, Qy)
    calibration : PixelCalibration
        Scan step and detector pixel (:class:`stem2eds.formats.bundle.PixelCalibration`).
    diffraction : h5py.Dataset or BlockSource
        The (Rx, Ry, Qx, Qy) patterns, read with :func:`stem2eds.io.stream.iter_blocks`.
    """

    @property
    def path(self) -> Path | None: ...

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def scan_shape(self) -> tuple[int, int]: ...

    @property
    def detector_shape(self) -> tuple[int, int] | None: ...

    @property
    def calibration(self) -> Any: ...

    @property
    def diffraction(self) -> Any: ...

    def json_attr(self, key: str, default: Any = None) -> Any:
        """A stored JSON record (``preprocess`` of a preprocessed bundle), or ``default``."""


def is_dask_array(data: Any) -> bool:
    """Whether ``data`` is a dask array (without importing dask when it is not loaded)."""
    import sys

    dask_array = sys.modules.get("dask.array")
    return dask_array is not None and isinstance(data, dask_array.Array)


def check_patterns_array(data: Any, what: str = "data") -> None:
    """Refuse an array that is not a 4D scan of real numbers.

    Parameters
    ----------
    data : numpy or dask array, shape (Rx, Ry, Qx, Qy)
    what : str
        How the message names the array.

    Raises
    ------
    InputError
        Not 4D, empty, or not of an integer or floating dtype (bool and
        complex are refused). Finiteness is checked block by block as the
        patterns are read (:meth:`ArrayPatterns.read`), so a dask array is
        not computed twice.
    """
    shape = tuple(getattr(data, "shape", ()))
    if len(shape) != 4:
        raise InputError(f"{what} has shape {shape}; a 4D-STEM scan is (Rx, Ry, Qx, Qy)",
                         hint="reshape a flat stack of patterns to (rows, columns, Qx, Qy)")
    if min(shape) < 1:
        raise InputError(f"{what} has shape {shape}: no patterns")
    dtype = np.dtype(data.dtype)
    if dtype == np.bool_ or dtype.kind not in "iuf":
        raise InputError(f"{what} has dtype {dtype}; patterns are counts (integers) or floats")


class ArrayPatterns:
    """Block source over an (Rx, Ry, Qx, Qy) numpy or dask array.

    Parameters
    ----------
    data : numpy or dask array, shape (Rx, Ry, Qx, Qy)
        Checked with :func:`check_patterns_array`.

    Attributes
    ----------
    scan_shape, detector_shape : (int, int)
    dtype : numpy.dtype
    """

    def __init__(self, data: Any):
        check_patterns_array(data)
        self.data = data
        self.scan_shape = (int(data.shape[0]), int(data.shape[1]))
        self.detector_shape = (int(data.shape[2]), int(data.shape[3]))
        self.dtype = np.dtype(data.dtype)
        self.lazy = is_dask_array(data)
        self._cache: tuple[int, int, np.ndarray] | None = None

    def read(self, flat: np.ndarray | range) -> np.ndarray:
        """Patterns at ascending flat indices ``i * Ry + j``, as (n, Qx, Qy).

        A dask array computes only the scan rows holding the requested
        positions (a range of rows, or the listed rows for a sparse
        sub-grid), so memory stays at about one block.

        Raises
        ------
        InputError
            If a floating-point pattern holds NaN or infinity.
        """
        flat = np.asarray(flat, dtype=np.int64)
        ry = self.scan_shape[1]
        if len(flat) == 0:
            return np.empty((0, *self.detector_shape), self.dtype)
        rows, cols = np.divmod(flat, ry)
        if self.lazy:
            block, local = self._rows(rows)
            patterns = block[local, cols]
        else:
            patterns = np.asarray(self.data[rows, cols])
        if self.dtype.kind == "f" and not np.isfinite(patterns).all():
            bad = int(flat[np.flatnonzero(~np.isfinite(patterns).reshape(len(flat), -1)
                                          .all(axis=1))[0]])
            raise InputError(f"the pattern at scan position {divmod(bad, ry)} holds NaN "
                             "or infinite values", hint="replace or crop them before predicting")
        return patterns

    def _rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The scan rows ``rows`` computed, and each position's row in the result.

        Consecutive rows are computed as whole row chunks of the dask array
        (up to :data:`CACHE_BYTES`) and kept until a read leaves them: blocks
        of a part of a row, or of fewer rows than a chunk, would otherwise
        compute the same chunk again for each block.
        """
        first, last = int(rows[0]), int(rows[-1])
        if last - first + 1 != len(np.unique(rows)):  # a sub-grid: only the listed rows
            wanted, local = np.unique(rows, return_inverse=True)
            return np.asarray(self.data[wanted].compute()), local
        cached = self._cache
        if cached is None or not cached[0] <= first <= last < cached[1]:
            lo, hi = self._chunk_span(first, last)
            cached = (lo, hi, np.asarray(self.data[lo:hi].compute()))
            self._cache = cached  # one reader thread per pass: a plain swap suffices
        return cached[2], rows - cached[0]

    def _chunk_span(self, first: int, last: int) -> tuple[int, int]:
        """Rows [lo, hi) of the row chunks holding rows ``first..last`` (within :data:`CACHE_BYTES`)."""
        bounds = np.cumsum((0, *self.data.chunks[0]))
        lo = int(bounds[np.searchsorted(bounds, first, side="right") - 1])
        hi = int(bounds[np.searchsorted(bounds, last, side="right")])
        row_bytes = self.scan_shape[1] * int(np.prod(self.detector_shape)) * self.dtype.itemsize
        if (hi - lo) * row_bytes > CACHE_BYTES:
            return first, last + 1
        return lo, hi


#: Most memory :class:`ArrayPatterns` keeps of a dask array's computed row chunks.
CACHE_BYTES = 256 * 2**20
