"""A LiberTEM dataset that reads a bundle's patterns where they lie in the file.

LiberTEM's own HDF5 reader (``ctx.load("hdf5", ...)``) goes through h5py and
copies every chunk, which costs its workers almost as much CPU as predicting
(``benchmarks/results/distributed.json``). A stem2eds bundle stores its
patterns as plain bytes (one-pattern chunks without filters, or a contiguous
dataset; :class:`stem2eds.io.stream.PatternReader` finds their offsets), so
LiberTEM's memory-mapping backend can read them in place, as ``stem2eds
predict`` does: :class:`DirectHDF5DataSet` describes each run of consecutive
patterns as one LiberTEM :class:`~libertem.io.dataset.base.File` at its byte
offset, and LiberTEM's partitions, tiling, ROI and executors do the rest.

LiberTEM is written for its own file types; this reuses its ``File``,
``FileSet``, ``BasePartition`` and I/O backends and only supplies the
layout (no LiberTEM reader knows HDF5 chunk offsets).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from libertem.common import Shape
from libertem.io.dataset.base import (BasePartition, DataSet, DataSetException, DataSetMeta,
                                      File, FileSet)

#: Most runs of consecutive patterns a dataset describes (LiberTEM opens and
#: maps the file once per run); a layout broken into more is read by h5py.
MAX_RUNS = 256


class Layout(NamedTuple):
    """Where the patterns of a 4D HDF5 dataset lie.

    Attributes
    ----------
    source : str
        File holding the bytes (a virtual dataset's source file).
    shape : (Rx, Ry, Qx, Qy)
    dtype : str
        Stored dtype (native byte order).
    runs : ndarray, shape (k, 3), int64
        Each run of patterns stored back to back: first flat scan index,
        end index (exclusive), byte offset of the first.
    """

    source: str
    shape: tuple[int, int, int, int]
    dtype: str
    runs: np.ndarray


def runs_of(offsets: np.ndarray, pattern_bytes: int) -> np.ndarray:
    """Split flat-order pattern offsets into runs stored back to back.

    Parameters
    ----------
    offsets : ndarray, shape (n,), int64
        Byte offset of each pattern in flat scan order.
    pattern_bytes : int

    Returns
    -------
    ndarray, shape (k, 3), int64
        (start index, end index, byte offset of the start) of each run.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(offsets) != pattern_bytes) + 1])
    ends = np.append(starts[1:], len(offsets))
    return np.stack([starts, ends, offsets[starts]], axis=1).astype(np.int64)


def direct_layout(path: str | os.PathLike, ds_path: str = "diffraction") -> Layout | None:
    """The layout of ``ds_path`` in an HDF5 file, or None if it cannot be read in place.

    Read in place: what :class:`~stem2eds.io.stream.PatternReader` maps
    (native numeric dtype at aligned offsets), in at most :data:`MAX_RUNS` runs.
    """
    import h5py

    from ..io.stream import PatternReader

    try:
        with h5py.File(path, "r") as f:
            ds = f.get(ds_path)
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 4:
                return None
            with PatternReader(ds) as reader:
                if not reader.mappable:
                    return None
                shape = tuple(int(v) for v in ds.shape)
                pattern_bytes = shape[2] * shape[3] * ds.dtype.itemsize
                runs = runs_of(reader.byte_offsets, pattern_bytes)
                if len(runs) > MAX_RUNS:
                    return None
                return Layout(reader.source, shape, ds.dtype.str, runs)
    except (OSError, KeyError, RuntimeError, ValueError):  # a file h5py cannot read as such
        return None


class _RunFile(File):
    """A run of patterns at a byte offset, followed by anything (the rest of the HDF5 file)."""

    def get_offsets_sizes(self, size: int):
        # LiberTEM's File only cuts the end when the file size is not a whole
        # number of frames; an HDF5 file has other bytes after any run.
        slicing = super().get_offsets_sizes(size)
        frame_bytes = slicing.frame_size * np.dtype(self.native_dtype).itemsize
        skip_end = size - self.file_header_bytes - self.num_frames * frame_bytes
        if skip_end < 0:
            raise DataSetException(f"{self.path} is shorter than its patterns: truncated?")
        return slicing._replace(skip_end=skip_end)


class DirectHDF5DataSet(DataSet):
    """A 4D HDF5 dataset (a bundle's ``/diffraction``) read in place by LiberTEM's I/O backends.

    Parameters
    ----------
    path : str
        HDF5 file (a stem2eds bundle).
    ds_path : str
        The (Rx, Ry, Qx, Qy) dataset.
    io_backend : libertem IOBackend, optional
        LiberTEM's default (memory mapping) when None.
    num_partitions : int, optional

    Raises
    ------
    DataSetException
        From :meth:`initialize`, when the dataset cannot be read in place
        (:func:`direct_layout`; use LiberTEM's ``"hdf5"`` reader then).
    """

    def __init__(self, path, ds_path: str = "diffraction", io_backend=None,
                 num_partitions: int | None = None):
        super().__init__(io_backend=io_backend, num_partitions=num_partitions)
        self._path = str(path)
        self._ds_path = ds_path
        self._layout: Layout | None = None
        self._meta = None

    def initialize(self, executor):
        layout = executor.run_function(direct_layout, self._path, self._ds_path)
        if layout is None:
            raise DataSetException(f"{self._ds_path} of {self._path} is not stored as plain "
                                   "patterns (filters, other chunks or too many pieces)")
        self._layout = layout
        rx, ry, qx, qy = layout.shape
        self._meta = DataSetMeta(shape=Shape((rx, ry, qx, qy), sig_dims=2),
                                 raw_dtype=np.dtype(layout.dtype), sync_offset=0,
                                 image_count=rx * ry)
        return self

    @property
    def dtype(self):
        return self._meta.raw_dtype

    @property
    def shape(self):
        return self._meta.shape

    @property
    def layout(self) -> Layout:
        return self._layout

    def read_frames(self, flat: np.ndarray) -> np.ndarray | None:
        """Frames at flat scan indices read in this process, or None if the file is not here.

        For a few frames the client needs (the aperture radius): one memory
        map of the file instead of a LiberTEM pass whose frames travel from
        the workers. None when this process cannot open the file (a cluster
        whose workers see files the client does not).

        Parameters
        ----------
        flat : ndarray, shape (n,), int

        Returns
        -------
        ndarray, shape (n, Qx, Qy), the file's dtype, or None
        """
        from ..io.mapped import map_patterns

        flat = np.asarray(flat, dtype=np.int64)
        runs = self._layout.runs
        qx, qy = self._layout.shape[2:]
        which = np.searchsorted(runs[:, 1], flat, side="right")
        offsets = runs[which, 2] + (flat - runs[which, 0]) * (qx * qy * self.dtype.itemsize)
        try:
            fd = os.open(self._layout.source, os.O_RDONLY)
        except OSError:
            return None
        try:
            return map_patterns(fd, offsets, self.dtype, (qx, qy)).to_array()
        finally:
            os.close(fd)

    def get_base_shape(self, roi):
        # frames lie whole and contiguous: tiles of whole frames read straight
        # from the map (LiberTEM's default base is one detector row)
        return (1, *tuple(self.shape.sig))

    def get_diagnostics(self):
        return [{"name": "dtype", "value": str(self.dtype)},
                {"name": "source", "value": self._layout.source},
                {"name": "runs", "value": str(len(self._layout.runs))}]

    def _fileset(self) -> FileSet:
        sig = tuple(self._layout.shape[2:])
        return FileSet([_RunFile(path=self._layout.source, start_idx=int(a), end_idx=int(b),
                                 native_dtype=self.dtype, sig_shape=sig, file_header=int(off))
                        for a, b, off in self._layout.runs])

    def check_valid(self):
        try:
            with self.get_io_backend().get_impl().open_files(self._fileset()):
                return True
        except (OSError, ValueError, AssertionError) as exc:
            raise DataSetException(f"invalid dataset: {exc}") from None

    def get_cache_key(self):
        return {"path": self._path, "ds_path": self._ds_path, "shape": tuple(self.shape),
                "dtype": str(self.dtype)}

    def get_partitions(self):
        fileset = self._fileset()
        for part_slice, start, stop in self.get_slices():
            yield BasePartition(meta=self._meta, fileset=fileset, partition_slice=part_slice,
                                start_frame=start, num_frames=stop - start,
                                io_backend=self.get_io_backend())

    def __repr__(self):
        return f"<DirectHDF5DataSet {self._ds_path} of {self._path}: {self.dtype} {self.shape}>"
