"""Patterns read by mapping the file into memory instead of copying them.

A bundle's patterns are stored as plain runs of bytes (one-pattern chunks
without filters, or a contiguous dataset; :class:`stem2eds.io.stream.PatternReader`
finds their byte offsets). Copying 1.5 GB of them out of the page cache with
``preadv`` costs about as much CPU as computing their ring statistics; a
read-only memory map lets the fused kernel (:mod:`stem2eds.features`) read
the page cache directly, with no copy and no buffer. Each block maps only
the span of the file its patterns lie in, and the map is released when the
last array that uses it is gone, so resident memory stays at the blocks in
flight however large the scan.
"""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np

from ..errors import InputError


class MappedPatterns:
    """A block of patterns that lie, in C order, at known places of a mapped file.

    Parameters
    ----------
    buffer : ndarray, shape (m,), read-only
        The mapped span of the file, in the patterns' dtype.
    starts : ndarray, shape (n,), int64
        Index in ``buffer`` of each pattern's first pixel.
    detector_shape : (Qx, Qy)
    """

    def __init__(self, buffer: np.ndarray, starts: np.ndarray, detector_shape: tuple[int, int]):
        self.buffer = buffer
        self.starts = starts
        self.detector_shape = (int(detector_shape[0]), int(detector_shape[1]))

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.starts), *self.detector_shape)

    @property
    def dtype(self) -> np.dtype:
        return self.buffer.dtype

    def to_array(self) -> np.ndarray:
        """(n, Qx, Qy) copy of the patterns (for the paths that need an array)."""
        qx, qy = self.detector_shape
        out = np.empty(self.shape, self.buffer.dtype)
        for k, start in enumerate(self.starts):
            out[k] = self.buffer[start:start + qx * qy].reshape(qx, qy)
        return out


def map_patterns(fd: int, byte_offsets: np.ndarray, dtype: np.dtype,
                 detector_shape: tuple[int, int]) -> MappedPatterns:
    """Map the span of an open file that holds patterns at ``byte_offsets``.

    Parameters
    ----------
    fd : int
        File descriptor opened for reading (the map keeps its own duplicate).
    byte_offsets : ndarray, shape (n,), int64
        File offset of each pattern; multiples of the dtype's size, inside
        the file (checked by the caller).
    dtype : numpy dtype
        Stored dtype, native byte order.
    detector_shape : (Qx, Qy)

    Returns
    -------
    MappedPatterns
    """
    dtype = np.dtype(dtype)
    pattern_bytes = int(np.prod(detector_shape)) * dtype.itemsize
    first = int(byte_offsets.min())
    begin = first - first % mmap.ALLOCATIONGRANULARITY
    length = int(byte_offsets.max()) + pattern_bytes - begin
    size = os.fstat(fd).st_size
    if begin + length > size:
        # checked per block, not only at open: touching a mapped page past
        # the end of a file cut short since would kill the process (SIGBUS)
        raise InputError(f"the file is {size} bytes but its patterns run to byte "
                         f"{begin + length}: it was truncated while being read")
    if sys.platform.startswith("linux") and length <= 2 * pattern_bytes * len(byte_offsets):
        # the page tables are filled here, in the reading thread, rather than
        # by page faults in the kernel's threads; not for a block scattered
        # over a long span (e.g. a tiled virtual scan), where it would fill
        # pages no pattern of the block is on
        mapped = mmap.mmap(fd, length, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                           prot=mmap.PROT_READ, offset=begin)
    else:
        mapped = mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=begin)
    buffer = np.frombuffer(mapped, dtype=dtype)  # read-only: the map is
    starts = (np.asarray(byte_offsets, np.int64) - begin) // dtype.itemsize
    return MappedPatterns(buffer, starts, detector_shape)
