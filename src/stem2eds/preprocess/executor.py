"""Where the per-chunk passes run: threads in this process, or a Dask cluster.

An :class:`Executor` is chosen once (:func:`open_executor`) and maps a pure
per-chunk function (:mod:`stem2eds.preprocess.passes`) over a scan region of
a bundle, yielding the results in scan order. The functions know nothing of
the executor, and the executor nothing of what they compute, the way a
LiberTEM UDF knows nothing of partitions.

* :class:`ThreadExecutor` reads blocks of patterns through
  :func:`stem2eds.io.stream.iter_blocks` a few blocks ahead in a background
  thread, cuts them into work chunks of :data:`WORK_CHUNK` patterns and runs
  the function on :data:`PROCESS_THREADS` threads (numpy and OpenCV release
  the GIL, so they use separate cores).
* :class:`DaskExecutor` makes one task per block of whole scan rows
  (:func:`row_tasks`). Every worker opens the bundle itself, once, and keeps
  it open between tasks (:func:`_worker_reader`; the file must be
  readable at the same path on every worker: a shared file system for a
  multi-node cluster) and runs the same function on the same work chunks,
  so the results are identical. Only the function's arguments and results
  travel (origins, disk sums, binned patterns); large array arguments are
  scattered once. At most two tasks per worker are in flight, so the
  client's memory stays flat as scans grow.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict, deque
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..progress import track

#: Patterns given to the per-chunk function at once: bounds its float32 work
#: arrays (about 10 copies of the chunk) whatever block size is read.
WORK_CHUNK = 256
#: Most patterns read in one block by the thread executor (64 MB of
#: 256x256 uint16), whatever block size the caller asks for.
READ_BLOCK = 2 * WORK_CHUNK
#: Threads running the per-chunk function at once in :class:`ThreadExecutor`.
PROCESS_THREADS = max(1, min(4, os.cpu_count() or 1))
#: Patterns per Dask task (rounded to whole scan rows).
TASK_PATTERNS = 1024

#: What a map yields: ``(start, [(chunk_start, result), ...])`` per partition.
Partition = tuple[int, list[tuple[int, Any]]]


class Executor:
    """Maps a per-chunk function over a scan region; results in scan order.

    Subclasses decide where the function runs and how the region is cut
    into partitions (a partition is one unit of scheduling: a work chunk for
    threads, a block of scan rows for Dask).
    """

    def map(self, fn: Callable[..., Any], scan, box: Sequence[int], args: Sequence[Any] = (),
            *, batch: int = 256, description: str = "", quiet: bool = True,
            mapped: bool = False) -> Iterator[Partition]:
        """``fn(chunk_start, patterns, *args)`` for every work chunk of the region.

        Parameters
        ----------
        fn : callable
            A pure per-chunk function, ``fn(start, patterns (n, Qx, Qy), *args)``;
            module-level, so that it can be sent to Dask workers.
        scan : ScanBundle
            (Rx, Ry, Qx, Qy) patterns; only its ``diffraction`` dataset and
            ``path`` are used.
        box : (r0, r1, c0, c1)
            Scan region (end exclusive); ``chunk_start`` counts in it, C order.
        args : sequence
            Further arguments of ``fn``, the same for every chunk.
        batch : int
            The caller's block size; bounds the blocks read in this process.
        description : str
            Progress label.
        quiet : bool
            No progress output.
        mapped : bool
            ``fn`` also takes :class:`stem2eds.io.mapped.MappedPatterns`: where
            the bundle's layout allows, Dask workers map their chunks instead
            of copying them (threads read as ever).

        Yields
        ------
        start : int
            Flat index in the region of the partition's first pattern.
        results : list of (int, object)
            ``(chunk_start, fn(...))`` for the partition's chunks, in order.
        """
        raise NotImplementedError

    def rebatch(self, blocks: Iterable[tuple[int, np.ndarray]], batch: int
                ) -> Iterator[tuple[int, np.ndarray]]:
        """Regroup ``(start, array)`` partition results into the blocks this executor hands out.

        Threads hand out blocks of exactly ``batch`` patterns (the last may be
        shorter); Dask one block per task, as its tasks arrive.
        """
        return iter(blocks)


class ThreadExecutor(Executor):
    """Run the per-chunk function on threads of this process.

    Parameters
    ----------
    threads : int, optional
        Threads running the function; default :data:`PROCESS_THREADS`
        (read when mapping). 1 runs it in the caller's thread.
    """

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def map(self, fn, scan, box, args=(), *, batch=256, description="", quiet=True,
            mapped=False):
        from ..io.stream import iter_blocks, n_blocks

        chunk = WORK_CHUNK
        # raw blocks of at most READ_BLOCK patterns bound the memory of the
        # read-ahead whatever the caller's batch is
        read = max(1, min(int(batch), READ_BLOCK))

        def chunks() -> Iterator[tuple[int, np.ndarray]]:
            blocks = iter_blocks(scan.diffraction, box, read, read_ahead=2)
            for start, patterns in track(blocks, total=n_blocks(box, read),
                                         description=description, quiet=quiet):
                for lo in range(0, len(patterns), chunk):
                    yield start + lo, patterns[lo:lo + chunk]

        threads = PROCESS_THREADS if self.threads is None else self.threads
        for first, result in _ordered_map(fn, chunks(), tuple(args), threads):
            yield first, [(first, result)]

    def rebatch(self, blocks, batch):
        done: list[np.ndarray] = []
        first_done, n_done = 0, 0
        for first, values in blocks:
            if not done:
                first_done = first
            done.append(values)
            n_done += len(values)
            while n_done >= batch:
                joined = np.concatenate(done) if len(done) > 1 else done[0]
                yield first_done, joined[:batch]
                rest = joined[batch:]
                first_done, n_done = first_done + batch, len(rest)
                done = [rest] if n_done else []
        if done:
            yield first_done, np.concatenate(done) if len(done) > 1 else done[0]


def _ordered_map(fn, chunks: Iterator[tuple[int, np.ndarray]], args: tuple, threads: int
                 ) -> Iterator[tuple[int, Any]]:
    """``(start, fn(start, patterns, *args))`` for each chunk, on ``threads`` threads, in order.

    At most ``threads + 1`` chunks are in flight, so memory stays at a few
    work chunks. ``threads <= 1`` computes in the caller's thread.
    """
    if threads <= 1:
        for start, patterns in chunks:
            yield start, fn(start, patterns, *args)
        return
    from concurrent.futures import ThreadPoolExecutor

    pending: deque = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="stem2eds-preprocess") as pool:
        try:
            for start, patterns in chunks:
                pending.append((start, pool.submit(fn, start, patterns, *args)))
                if len(pending) > threads:
                    first, future = pending.popleft()
                    yield first, future.result()
            while pending:
                first, future = pending.popleft()
                yield first, future.result()
        finally:
            for _, future in pending:
                future.cancel()


class DaskExecutor(Executor):
    """Run the per-chunk function on the workers of a Dask cluster, one task per row block.

    Parameters
    ----------
    client : dask.distributed.Client
    """

    def __init__(self, client):
        self.client = client

    def map(self, fn, scan, box, args=(), *, batch=256, description="", quiet=True,
            mapped=False):
        tasks = row_tasks(box)
        path = str(scan.path.resolve())
        # arrays (the origins of the whole region) go to every worker once
        shared = [self.client.scatter(np.ascontiguousarray(a), broadcast=True)
                  if isinstance(a, np.ndarray) else a for a in args]
        results = _bounded(self.client, _run_task, tasks, path, fn, WORK_CHUNK, mapped, *shared)
        for (start, _), chunk_results in track(results, total=len(tasks),
                                               description=description, quiet=quiet):
            yield start, chunk_results


def row_tasks(box: Sequence[int], patterns_per_task: int | None = None
              ) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Split a region into blocks of whole rows: ``[(flat start in the region, sub-box), ...]``.

    Parameters
    ----------
    box : (r0, r1, c0, c1)
    patterns_per_task : int, optional
        Defaults to :data:`TASK_PATTERNS`; rounded down to whole rows (at least one).
    """
    patterns_per_task = patterns_per_task or TASK_PATTERNS
    r0, r1, c0, c1 = box
    width = c1 - c0
    rows = max(1, patterns_per_task // width)
    return [((i - r0) * width, (i, min(i + rows, r1), c0, c1)) for i in range(r0, r1, rows)]


def _bounded(client, fn, items: Sequence, *args) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item, *args))`` computed on the cluster, in order of ``items``.

    At most two tasks per worker are in flight (submitted and not yet
    yielded), so results never pile up on the client.
    """
    limit = max(2, 2 * len(client.scheduler_info().get("workers", {})))
    todo = iter(items)
    pending: deque = deque()

    def submit() -> None:
        item = next(todo, None)
        if item is not None:
            pending.append((item, client.submit(fn, item, *args, pure=False)))

    try:
        for _ in range(limit):
            submit()
        while pending:
            item, future = pending.popleft()
            result = future.result()
            future.release()
            submit()
            yield item, result
    finally:
        for _, future in pending:
            future.cancel()


#: Bundles a worker process keeps open between tasks (most recently used last).
_WORKER_READERS: "OrderedDict[tuple, Any]" = OrderedDict()
_WORKER_READERS_LOCK = threading.Lock()
#: Most bundles a worker keeps open at once.
WORKER_OPEN_BUNDLES = 4


def _worker_reader(path: str):
    """The worker's open :class:`~stem2eds.io.stream.PatternReader` of the bundle at ``path``.

    Opening a bundle checks it and looks up the file offset of every chunk
    (one HDF5 call per pattern of the scan, so linear in the scan): done
    per task, it made the cost of a task grow with the scan (see
    ``benchmarks/bench_distributed.py``). A worker opens each bundle once and keeps it
    (keyed by path, inode, size and modification time, so a file replaced
    at the same path is opened again), at most :data:`WORKER_OPEN_BUNDLES`.
    """
    from ..formats.bundle import open_bundle
    from ..io.stream import PatternReader

    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    with _WORKER_READERS_LOCK:
        if key in _WORKER_READERS:
            _WORKER_READERS.move_to_end(key)
            return _WORKER_READERS[key][1]
        scan = open_bundle(path)
        try:
            reader = PatternReader(scan.diffraction)
        except BaseException:
            scan.close()
            raise
        _WORKER_READERS[key] = (scan, reader)
        while len(_WORKER_READERS) > WORKER_OPEN_BUNDLES:
            _, (old_scan, old_reader) = _WORKER_READERS.popitem(last=False)
            old_reader.close()
            old_scan.close()
        return reader


def _run_task(task, path: str, fn, chunk: int, mapped: bool, *args) -> list[tuple[int, Any]]:
    """On a worker: ``fn`` on every work chunk of one row block of the bundle at ``path``.

    With ``mapped`` (``fn`` takes mapped blocks), chunks are mapped from the
    file when its layout allows, as in one process.
    """
    from ..io.stream import iter_blocks, plan_blocks

    start, box = task
    # a reader is safe to share between a worker's threads: each read makes
    # its own array, with positioned reads (or h5py, which locks itself);
    # each map has its own file descriptor
    reader = _worker_reader(path)
    if mapped and reader.mappable:
        return [(start + local, fn(start + local, reader.map(flat), *args))
                for local, flat in plan_blocks(reader.scan_shape, box, chunk)]
    # one chunk read ahead by a thread: the worker's core computes while the
    # next chunk is copied in (the read releases the GIL)
    return [(start + local, fn(start + local, patterns, *args))
            for local, patterns in iter_blocks(reader, box, chunk, read_ahead=1)]


@contextmanager
def open_executor(scheduler: Any = None) -> Iterator[Executor]:
    """The executor for a ``scheduler`` setting, chosen once for a whole run.

    Parameters
    ----------
    scheduler : None, Executor, str or dask.distributed.Client
        None: threads in this process (:class:`ThreadExecutor`); an
        :class:`Executor`: used as it is; otherwise a Dask cluster, see
        :func:`stem2eds.preprocess.distributed.dask_client` (``"local"``, an
        address, or a ``Client``), closed on exit if made here.

    Yields
    ------
    Executor
    """
    if scheduler is None:
        yield ThreadExecutor()
        return
    if isinstance(scheduler, Executor):
        yield scheduler
        return
    from .distributed import dask_client

    with dask_client(scheduler) as client:
        yield DaskExecutor(client)
