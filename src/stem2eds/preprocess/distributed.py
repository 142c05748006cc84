"""Preprocessing over a Dask cluster, chunked by scan rows.

Both passes of the streaming driver (origins, then centring/binning) become
one task per block of scan rows. Every worker opens the bundle itself (the
file must be readable at the same path on every worker: a shared file system
for a multi-node cluster) and runs the same functions, on the same work
chunks, as the single-process path, so the results are identical. Only
small arrays travel: origins, the disk sums, and the binned patterns
(``bin_factor**2`` times smaller than the raw ones). At most two tasks per
worker are in flight, so the client's memory stays flat as scans grow.

The client side (fitting the origins, the scale percentile, writing the
output, the model at prediction) is unchanged; see
:func:`stem2eds.preprocess.preprocess_bundle` and
:func:`stem2eds.predict.predictor.predict_bundle` (``scheduler=``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from ..errors import InputError

#: Patterns per task (rounded to whole scan rows).
TASK_PATTERNS = 1024


@contextmanager
def dask_client(scheduler: Any) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``scheduler``, closed on exit if made here.

    Parameters
    ----------
    scheduler : str or Client
        ``"local"``: a ``LocalCluster`` of one single-threaded worker process
        per CPU core; an address (``tcp://host:8786``): an existing cluster;
        a ``Client``: used as it is (not closed).
    """
    from dask.distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler == "local":
        cluster = LocalCluster(n_workers=os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    try:
        client = Client(str(scheduler), timeout=30)
    except OSError as exc:
        raise InputError(f"cannot connect to the Dask scheduler {scheduler} ({exc})",
                         hint="start one with 'dask scheduler' and 'dask worker ADDRESS', "
                              "or use --scheduler local") from None
    try:
        yield client
    finally:
        client.close()


def row_tasks(box: tuple[int, int, int, int], patterns_per_task: int | None = None
              ) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Split a crop box into blocks of whole rows: [(flat start in the box, sub-box), ...].

    ``patterns_per_task`` defaults to :data:`TASK_PATTERNS`.
    """
    patterns_per_task = patterns_per_task or TASK_PATTERNS
    r0, r1, c0, c1 = box
    width = c1 - c0
    rows = max(1, patterns_per_task // width)
    return [((i - r0) * width, (i, min(i + rows, r1), c0, c1)) for i in range(r0, r1, rows)]


def _bounded(client, fn, items, *args) -> Iterator[tuple[Any, Any]]:
    """Submit ``fn(item, *args)`` keeping at most 2 tasks per worker in flight; yield (item, result)."""
    from dask.distributed import as_completed

    limit = max(2, 2 * len(client.scheduler_info().get("workers", {})))
    pending = list(items)[::-1]
    futures = {}
    ac = as_completed()
    while pending and len(futures) < limit:
        item = pending.pop()
        fut = client.submit(fn, item, *args, pure=False)
        futures[fut] = item
        ac.add(fut)
    for fut in ac:
        item = futures.pop(fut)
        result = fut.result()
        fut.release()
        if pending:
            nxt = pending.pop()
            new = client.submit(fn, nxt, *args, pure=False)
            futures[new] = nxt
            ac.add(new)
        yield item, result


# -- tasks (run on the workers) --------------------------------------------------

def _origins_task(task, path: str, radius: float):
    from ..formats.bundle import open_bundle
    from .origin import find_origins
    from .pipeline import WORK_CHUNK, iter_region

    start, box = task
    origins, disk_sum, n_sum = [], None, 0
    with open_bundle(path) as scan:
        for _, patterns in iter_region(scan, box, WORK_CHUNK, read_ahead=0):
            found = find_origins(patterns, radius)
            origins.append(found.origins)
            disk_sum = found.disk_sum if disk_sum is None else disk_sum + found.disk_sum
            n_sum += found.n_summed
    return np.concatenate(origins), disk_sum, n_sum


def _process_task(task, path: str, settings: dict, origins: np.ndarray, beam_radius: float):
    from ..formats.bundle import open_bundle
    from .patterns import process_patterns
    from .pipeline import WORK_CHUNK, iter_region

    start, box = task
    out = []
    with open_bundle(path) as scan:
        for local, patterns in iter_region(scan, box, WORK_CHUNK, read_ahead=0):
            first = start + local
            out.append(process_patterns(patterns, origins[first:first + len(patterns)],
                                        beam_radius, settings["bin_factor"],
                                        settings["scaling"], settings["centring"]))
    return np.concatenate(out)


# -- client side ------------------------------------------------------------------

def measure_origins_distributed(client, scan, box, radius: float
                                ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Pass 1 on the cluster: measured origins (flat, in box order), disk sum and count."""
    n = (box[1] - box[0]) * (box[3] - box[2])
    measured = np.full((n, 2), np.nan)
    disk_sum, n_sum = None, 0
    path = str(scan.path.resolve())
    for (start, _), (origins, dsum, count) in _bounded(client, _origins_task, row_tasks(box),
                                                       path, radius):
        measured[start:start + len(origins)] = origins
        if dsum is not None:
            disk_sum = dsum if disk_sum is None else disk_sum + dsum
        n_sum += count
    return measured, disk_sum, n_sum


def processed_distributed(client, scan, settings, origins: np.ndarray, beam_radius: float,
                          box) -> Iterator[tuple[int, np.ndarray]]:
    """Pass 2 on the cluster: (flat start in the box, unscaled processed patterns), any order."""
    flat = np.ascontiguousarray(origins.reshape(-1, 2))
    scattered = client.scatter(flat, broadcast=True)
    path = str(scan.path.resolve())
    for (start, _), values in _bounded(client, _process_task, row_tasks(box), path,
                                       settings.to_dict(), scattered, beam_radius):
        yield start, values
