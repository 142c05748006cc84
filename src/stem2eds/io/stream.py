"""The one block reader of diffraction patterns, and a prefetch thread.

:func:`iter_blocks` streams the patterns of a scan (or of a region of it, or
of a list of positions) in blocks; every path that reads patterns goes
through it: :meth:`stem2eds.formats.bundle.ScanBundle.iter_patterns`, the
preprocessing passes (:mod:`stem2eds.preprocess.executor`), and
:meth:`stem2eds.io.diffraction.DiffractionSource.iter_rows` (conversion).

Reading a bundle through h5py costs about as much as preprocessing it: each
one-pattern chunk goes through HDF5's chunk cache and type machinery. When the
``diffraction`` dataset is stored without filters (the bundle default), every
chunk is a plain run of bytes in the file, so :class:`PatternReader` asks
HDF5 once for the byte offset of every chunk (``H5Dchunk_iter``) and then
reads blocks of patterns with ``os.preadv`` straight into a numpy buffer:
one system call per run of consecutive chunks, and no GIL held while the
kernel copies. Compressed or otherwise filtered data fall back to h5py
slicing, with the same results. A virtual dataset (HDF5 VDS) whose pieces
are boxes of whole patterns of one such dataset in one file (e.g. a scan
tiled from a real block, :func:`_virtual_offsets`) is read the same way,
from the source file.

:func:`prefetch` runs any iterator in a background thread a few items ahead,
so reading overlaps with computing.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Iterable, Iterator, Protocol, Sequence, TypeVar

import h5py
import numpy as np

T = TypeVar("T")


def _chunk_offsets(ds: h5py.Dataset) -> np.ndarray | None:
    """File byte offset of every pattern (flat scan index), or None if not directly readable.

    Directly readable: native byte order, not float16 (the kernel's dtypes), and a 4D
    dataset of one-pattern chunks ``(1, 1, Qx, Qy)``, no filters, every chunk allocated; or
    a contiguous 4D dataset.
    """
    if ds.ndim != 4 or not ds.dtype.isnative or ds.dtype == np.float16:
        return None
    rx, ry, qx, qy = ds.shape
    n = rx * ry
    pattern_bytes = qx * qy * ds.dtype.itemsize
    if ds.chunks is None:
        base = ds.id.get_offset()
        if base is None:
            return None
        return base + np.arange(n, dtype=np.int64) * pattern_bytes
    if tuple(ds.chunks) != (1, 1, qx, qy) or ds.compression is not None \
            or ds.id.get_create_plist().get_nfilters() > 0:
        return None
    offsets = np.full(n, -1, dtype=np.int64)

    def visit(info) -> None:
        i, j = info.chunk_offset[:2]
        if info.size == pattern_bytes and info.filter_mask == 0:
            offsets[i * ry + j] = info.byte_offset

    try:
        ds.id.chunk_iter(visit)
    except (AttributeError, RuntimeError):  # HDF5 < 1.13: no chunk iterator
        return None
    return offsets if np.all(offsets >= 0) else None


def _box(space, shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(start, size)`` of a dataspace selection that is one box, or None.

    ``shape`` is the extent to use for an "all" selection.
    """
    kind = space.get_select_type()
    if kind == h5py.h5s.SEL_ALL:
        return (0,) * len(shape), tuple(int(v) for v in shape)
    if kind != h5py.h5s.SEL_HYPERSLABS or not space.is_regular_hyperslab():
        return None
    start, stride, count, block = space.get_regular_hyperslab()
    size = []
    for s, c, b in zip(stride, count, block):
        if c == 1:
            size.append(int(b))
        elif b == 1 and s == 1:
            size.append(int(c))
        else:
            return None
    return tuple(int(v) for v in start), tuple(size)


def _virtual_offsets(ds: h5py.Dataset) -> tuple[str, np.ndarray] | None:
    """Source file and byte offset of every pattern of a virtual 4D dataset, or None.

    Supported: every mapping is a box of whole patterns (full ``Qx, Qy``)
    of a directly readable dataset (:func:`_chunk_offsets`) of the same
    dtype, all in one file, and the mappings cover the whole scan. The
    source file is found as :func:`stem2eds.io.hdf5.check_self_contained`
    finds it (same file, or relative to the virtual dataset's folder).
    Anything else returns None (read through h5py).
    """
    from pathlib import Path

    rx, ry, qx, qy = ds.shape
    plist = ds.id.get_create_plist()
    folder = Path(ds.file.filename).resolve().parent
    offsets = np.full(rx * ry, -1, dtype=np.int64)
    source_file = None
    # a tiled scan maps the same source many times: its chunks are looked up once
    sources: dict[str, tuple[np.ndarray | None, tuple[int, ...]]] = {}
    for k in range(plist.get_virtual_count()):
        name = plist.get_virtual_filename(k)
        path = ds.file.filename if name == "." else str((folder / name).resolve())
        if source_file not in (None, path):
            return None
        source_file = path
        dset = plist.get_virtual_dsetname(k)
        if dset not in sources:
            with h5py.File(path, "r") as f:
                src = f.get(dset)
                if not isinstance(src, h5py.Dataset) or src.is_virtual or src.ndim != 4 \
                        or src.dtype != ds.dtype or tuple(src.shape[2:]) != (qx, qy):
                    return None
                sources[dset] = (_chunk_offsets(src), tuple(src.shape))
        src_offsets, src_shape = sources[dset]
        src_ry = src_shape[1]
        vbox = _box(plist.get_virtual_vspace(k), ds.shape)
        sbox = _box(plist.get_virtual_srcspace(k), src_shape)
        if src_offsets is None or vbox is None or sbox is None or vbox[1] != sbox[1] \
                or vbox[1][2:] != (qx, qy) or vbox[0][2:] != (0, 0) or sbox[0][2:] != (0, 0):
            return None
        (vi, vj), (si, sj) = vbox[0][:2], sbox[0][:2]
        ni, nj = vbox[1][:2]
        i, j = np.arange(ni, dtype=np.int64)[:, None], np.arange(nj, dtype=np.int64)
        offsets[((vi + i) * ry + vj + j).ravel()] = src_offsets[((si + i) * src_ry + sj + j).ravel()]
    if source_file is None or np.any(offsets < 0):
        return None
    return source_file, offsets


class PatternReader:
    """Read blocks of consecutive patterns (flat scan order) of a 4D dataset.

    Parameters
    ----------
    ds : h5py.Dataset, shape (Rx, Ry, Qx, Qy)
        The diffraction dataset of an open bundle.
    direct : bool
        Use direct ``preadv`` reads when the layout allows (default); False
        forces h5py (for comparison and tests).

    Attributes
    ----------
    direct : bool
        Whether direct reads are in use.
    mappable : bool
        Whether :meth:`map` can map blocks instead of copying them (direct
        reads, every pattern at an offset aligned for its dtype and inside
        the file).
    source : str or None
        With direct reads, the file read (a virtual dataset's source); else None.
    """

    def __init__(self, ds: h5py.Dataset, direct: bool = True):
        self.ds = ds
        self.scan_shape = tuple(ds.shape[:2])
        self.detector_shape = tuple(ds.shape[2:])
        self.dtype = ds.dtype
        self._offsets, name = None, ds.file.filename
        if direct and getattr(ds, "is_virtual", False):
            try:
                name, self._offsets = _virtual_offsets(ds) or (name, None)
            except (OSError, KeyError, ValueError):  # a source h5py cannot resolve either
                self._offsets = None
        elif direct:
            self._offsets = _chunk_offsets(ds)
        self.direct = self._offsets is not None
        self.source = name if self.direct else None
        self._fd = None
        self.mappable = False
        if self.direct:
            self._fd = os.open(name, os.O_RDONLY)
            pattern_bytes = int(np.prod(self.detector_shape)) * self.dtype.itemsize
            self.mappable = bool(len(self._offsets)) and self.dtype.kind in "uif" and bool(
                np.all(self._offsets % self.dtype.itemsize == 0)) and \
                int(self._offsets.max()) + pattern_bytes <= os.fstat(self._fd).st_size

    @property
    def byte_offsets(self) -> np.ndarray | None:
        """With direct reads, a read-only (Rx*Ry,) int64 array of each pattern's offset in :attr:`source`."""
        if self._offsets is None:
            return None
        view = self._offsets.view()
        view.flags.writeable = False
        return view

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "PatternReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, flat: np.ndarray | range, out: np.ndarray | None = None) -> np.ndarray:
        """Patterns at the given flat scan indices (ascending), as (n, Qx, Qy).

        Parameters
        ----------
        flat : 1D int array or range
            Flat indices ``i * Ry + j``, strictly increasing.
        out : ndarray, shape (>= n, Qx, Qy), optional
            Buffer of the dataset's dtype to read into (reused between calls).

        Returns
        -------
        ndarray, shape (n, Qx, Qy)
            A view of ``out`` when given.
        """
        flat = np.asarray(flat, dtype=np.int64)
        n = len(flat)
        if out is None:
            out = np.empty((n, *self.detector_shape), self.dtype)
        dest = out[:n]
        if n == 0:
            return dest
        if not self.direct:
            self._read_h5py(flat, dest)
            return dest
        offsets = self._offsets[flat]
        nbytes = dest[0].nbytes
        # runs of patterns whose chunks follow each other in the file
        breaks = np.flatnonzero(np.diff(offsets) != nbytes) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [n]])
        raw = dest.reshape(n, -1).view(np.uint8)
        for a, b in zip(starts, ends):
            view = memoryview(raw[a:b]).cast("B")
            got = os.preadv(self._fd, [view], int(offsets[a]))
            if got != view.nbytes:
                raise OSError(f"short read from {self.ds.file.filename} "
                              f"({got} of {view.nbytes} bytes)")
        return dest

    def map(self, flat: np.ndarray | range):
        """The patterns at the given flat scan indices, memory-mapped instead of read.

        Only when :attr:`mappable`. The block stays valid after :meth:`close`
        (its map holds its own file descriptor) and is released with the last
        array that uses it.

        Returns
        -------
        stem2eds.io.mapped.MappedPatterns
        """
        from .mapped import map_patterns

        if not self.mappable:
            raise ValueError("this dataset's patterns cannot be memory-mapped")
        offsets = self._offsets[np.asarray(flat, dtype=np.int64)]
        return map_patterns(self._fd, offsets, self.dtype, self.detector_shape)

    def _read_h5py(self, flat: np.ndarray, dest: np.ndarray) -> None:
        ry = self.scan_shape[1]
        k = 0
        n = len(flat)
        while k < n:
            # a run of consecutive indices within one scan row, or whole rows
            i, j = divmod(int(flat[k]), ry)
            end = k + 1
            while end < n and flat[end] == flat[end - 1] + 1:
                end += 1
            run = end - k
            if j == 0 and run >= ry:
                rows = run // ry
                dest[k:k + rows * ry] = self.ds[i:i + rows].reshape(-1, *self.detector_shape)
                k += rows * ry
            else:
                take = min(run, ry - j)
                dest[k:k + take] = self.ds[i, j:j + take]
                k += take


class BlockSource(Protocol):
    """What :func:`iter_blocks` reads from: patterns addressed by flat scan index.

    :class:`PatternReader` (an HDF5 dataset) and
    :class:`stem2eds.io.diffraction.DiffractionSource` (any vendor file) are
    block sources.
    """

    scan_shape: tuple[int, int]

    def read(self, flat: np.ndarray) -> np.ndarray:
        """Patterns (n, Qx, Qy) at ascending flat indices ``i * Ry + j``."""


def plan_blocks(scan_shape: Sequence[int], box: Sequence[int] | None = None,
                batch: int = 256) -> Iterator[tuple[int, np.ndarray]]:
    """How a scan region is cut into blocks: ``(start, flat indices)`` in C order.

    Blocks are whole region rows when ``batch`` is at least the region's
    width (``batch // width`` rows each, which matches the one-pattern chunks
    on disk and the row blocks of memory-mapped files); otherwise pieces of
    at most ``batch`` patterns within one row, so a block never spans rows.

    Parameters
    ----------
    scan_shape : (Rx, Ry)
    box : (r0, r1, c0, c1) or None
        Region (end exclusive); None is the whole scan.
    batch : int
        Most patterns per block (at least 1).

    Yields
    ------
    start : int
        Flat index, in the region, of the block's first pattern.
    flat : ndarray of int64, shape (n,)
        Flat indices in the whole scan of the block's patterns (ascending).
    """
    rx, ry = (int(v) for v in scan_shape)
    r0, r1, c0, c1 = (0, rx, 0, ry) if box is None else (int(v) for v in box)
    width = c1 - c0
    batch = max(1, int(batch))
    cols = np.arange(c0, c1, dtype=np.int64)
    if batch >= width:
        rows = batch // width
        for i in range(r0, r1, rows):
            flat = (np.arange(i, min(i + rows, r1), dtype=np.int64)[:, None] * ry + cols).ravel()
            yield (i - r0) * width, flat
    else:
        for i in range(r0, r1):
            for j in range(c0, c1, batch):
                yield (i - r0) * width + (j - c0), i * ry + np.arange(j, min(j + batch, c1),
                                                                    dtype=np.int64)


def n_blocks(box: Sequence[int], batch: int) -> int:
    """Number of blocks :func:`plan_blocks` cuts the region ``box`` into (for progress bars)."""
    r0, r1, c0, c1 = box
    width = c1 - c0
    batch = max(1, int(batch))
    if batch >= width:
        return -(-(r1 - r0) // (batch // width))
    return (r1 - r0) * -(-width // batch)


def iter_blocks(data: Any, box: Sequence[int] | None = None, batch: int = 256, *,
                flat: np.ndarray | None = None, read_ahead: int = 0
                ) -> Iterator[tuple[int, np.ndarray]]:
    """Stream patterns in blocks: the one reader behind every pattern stream.

    Parameters
    ----------
    data : h5py.Dataset, shape (Rx, Ry, Qx, Qy), or BlockSource
        A bundle's ``diffraction`` dataset (read by a :class:`PatternReader`,
        closed at the end) or any object with ``scan_shape`` and
        ``read(flat)`` (:class:`PatternReader`, ``DiffractionSource``).
    box : (r0, r1, c0, c1) or None
        Scan region, cut as in :func:`plan_blocks`; None is the whole scan.
    batch : int
        Most patterns per block.
    flat : ndarray of int, shape (m,), optional
        Read these flat scan indices (ascending) instead of a region, in
        consecutive blocks of ``batch``; ``box`` is then ignored.
    read_ahead : int
        Blocks read ahead by a background thread (:func:`prefetch`), so that
        reading overlaps with the caller's work; 0 reads in the caller's
        thread.

    Yields
    ------
    start : int
        Position of the block's first pattern in the region (C order) or in
        ``flat``.
    patterns : ndarray, shape (n, Qx, Qy)
        In the stored dtype; a new array the caller may keep.
    """
    own = isinstance(data, h5py.Dataset)
    reader = PatternReader(data) if own else data
    if flat is not None:
        indices = np.asarray(flat, dtype=np.int64)
        step = max(1, int(batch))
        plan: Iterable = ((lo, indices[lo:lo + step]) for lo in range(0, len(indices), step))
    else:
        plan = plan_blocks(reader.scan_shape, box, batch)
    blocks = ((start, reader.read(index)) for start, index in plan)
    try:
        yield from (prefetch(blocks, read_ahead) if read_ahead > 0 else blocks)
    finally:
        if own:
            reader.close()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate over ``items`` produced by a background thread up to ``depth`` items ahead.

    Exceptions raised by the producer are re-raised in the consumer. When the
    consumer stops early (break, error, garbage collection) the producer is
    told to stop and is joined. The thread starts at the first ``next``; see
    :class:`Prefetcher` to start it at once.

    Parameters
    ----------
    items : iterable
        Typically a generator that reads blocks from disk; it runs in the
        background thread, so it must not share unsynchronised state with
        the consumer (reuse of buffers must allow ``depth + 2`` items alive).
    depth : int
        Items buffered ahead (memory: ``depth`` blocks).
    """
    with Prefetcher(items, depth) as ahead:
        yield from ahead


class Prefetcher:
    """An iterator over ``items`` whose background thread starts when it is made.

    Same behaviour as :func:`prefetch`; use it to get work going before the
    consumer is ready (e.g. preprocessing while a model loads). Call
    :meth:`close` (or use it as a context manager) when stopping early.
    """

    def __init__(self, items: Iterable[T], depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._worker = threading.Thread(target=self._produce, args=(items,),
                                        name="stem2eds-prefetch", daemon=True)
        self._worker.start()

    def _produce(self, items: Iterable[T]) -> None:
        q, stop = self._queue, self._stop
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer  # noqa: BLE001
            q.put(_Failure(exc))
        finally:
            # close the producer here, in its own thread (a generator cannot
            # be closed from another thread while it runs)
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the producer and wait for its thread (idempotent)."""
        self._done = True
        self._stop.set()
        # unblock a producer waiting on a full queue, then wait for it
        while self._worker.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._worker.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
