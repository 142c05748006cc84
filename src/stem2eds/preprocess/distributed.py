"""Connecting to a Dask cluster (``scheduler`` setting of preprocessing and prediction).

:func:`dask_client` makes or joins the cluster; what runs on it is the
business of :class:`stem2eds.preprocess.executor.DaskExecutor`. The client
side (fitting the origins, the scale percentile, writing the output, the
model at prediction) stays in this process.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import InputError


@contextmanager
def dask_client(scheduler: Any, workers: int | None = None) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``scheduler``, closed on exit if made here.

    Parameters
    ----------
    scheduler : str or Client
        ``"local"``: a ``LocalCluster`` of one single-threaded worker process
        per CPU core; an address (``tcp://host:8786``): an existing cluster;
        a ``Client``: used as it is (not closed).
    workers : int, optional
        Worker processes of a ``"local"`` cluster (default: one per core).
    """
    from dask.distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler == "local":
        import dask

        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, so glibc gives
        # every freed buffer back to the OS and faults fresh pages in for the
        # next chunk: the tasks' large arrays then cost page faults (and CPU
        # time) the same code does not pay in one process. The workers here
        # keep at most two tasks in flight, so their heap stays bounded
        # without it (benchmarks/bench_distributed.py). Each worker is one
        # core, so the fused ring kernel (numba, parallel over the patterns
        # of a chunk) runs on one thread there: set through the nanny's `env`,
        # applied in the worker process only (the nanny writes its
        # pre-spawn-environ into this process's os.environ for good, and numba
        # refuses a thread count that changes after its pool started).
        environ = {k: v for k, v in
                   dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1,
                                   threads_per_worker=1, processes=True,
                                   dashboard_address=None, env={"NUMBA_NUM_THREADS": "1"})
        client = Client(cluster)
        # the workers import the per-chunk code now, while this process
        # measures the origins, instead of in their first task (one task per
        # worker, not waited for)
        from dask.distributed import fire_and_forget

        for address in client.scheduler_info().get("workers", {}):
            fire_and_forget(client.submit(_warm_imports, pure=False, workers=[address],
                                          allow_other_workers=False))
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
                              "or set `scheduler` to 'local'") from None
    try:
        yield client
    finally:
        client.close()


def _warm_imports() -> None:
    """On a worker: import what every task runs (the passes, the bundle reader, the ring kernel).

    Each worker of the local cluster is one single-threaded process per
    core, so OpenCV is kept to one thread there too (its own pool would put
    two threads on each core). The fused ring kernel is loaded from numba's
    disk cache by one call on a tiny uint16 block (what prediction of a
    ring model runs on the workers).
    """
    import cv2
    import numpy as np

    from ..features.rings import RingGeometry, ring_features
    from ..formats import bundle  # noqa: F401
    from ..io import stream  # noqa: F401
    from . import passes  # noqa: F401

    cv2.setNumThreads(1)
    geometry = RingGeometry((8, 8), 2, 1.0, "none", 1.0)
    ring_features(np.zeros((1, 8, 8), np.uint16), np.full((1, 2), 3.5), geometry)
