"""Raw blocks of a scan whose work runs on a Dask cluster: ring statistics come back, not patterns.

With a Dask ``client``, prediction streams :class:`ClusterBlock` s
(:func:`iter_cluster_blocks`) in place of the raw blocks of one process
(:func:`stem2eds.features.stream.iter_raw_blocks`). A cluster block holds no
patterns: it names one task's block of scan rows, with the fitted origins
measured here first, exactly as in one process. What the model asks of the
first block decides what every worker computes from the raw patterns it
reads itself (:class:`~stem2eds.preprocess.executor.DaskExecutor`), and
only that travels back:

* :meth:`ClusterBlock.ring_features` (models with the
  :class:`~stem2eds.models.rings.RingFrontend` capability, the fused path):
  the ring statistics, ``S * R`` float32 per pattern (about 0.5 KB instead
  of the 16 KB binned pattern), through the same
  :func:`~stem2eds.features.rings.ring_features` as in one process; the
  client runs only the model's head;
* :meth:`ClusterBlock.preprocessed` (other models): the preprocessed
  patterns, through the same :meth:`stem2eds.features.stream.RawBlock.preprocessed`;
* :attr:`ClusterBlock.patterns` (the fused path on a GPU, which centres
  raw blocks itself): the raw patterns.

The values are those of one process (the same functions on the same
patterns and origins); only the blocks differ (one task's rows, see
:func:`~stem2eds.preprocess.executor.row_tasks`). The model code does not
know where its blocks come from: it asks a block for what it needs, as it
asks a :class:`~stem2eds.features.stream.RawBlock`.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import ExitStack
from typing import Any, Iterator

import numpy as np

from .rings import RingGeometry, ring_features
from .stream import RawBlock


def ring_chunk(start: int, patterns: np.ndarray, origins: np.ndarray,
               geometry: RingGeometry) -> np.ndarray:
    """On a worker: (n, S * R) ring statistics of one work chunk of the region.

    Parameters
    ----------
    start : int
        Flat index in the region of the chunk's first pattern.
    patterns : ndarray, shape (n, Qx, Qy), or MappedPatterns
        Raw counts, read or memory-mapped (:class:`stem2eds.io.mapped.MappedPatterns`).
    origins : ndarray, shape (N, 2)
        Fitted origins of the whole region (scattered once to every worker).
    geometry : RingGeometry
    """
    return ring_features(patterns, origins[start:start + len(patterns)], geometry)


def preprocessed_chunk(start: int, patterns: np.ndarray, origins: np.ndarray,
                       beam_radius: float, settings) -> np.ndarray:
    """On a worker: (n, Qx/f, Qy/f) preprocessed patterns of one work chunk (as in one process)."""
    block = RawBlock(patterns, origins[start:start + len(patterns)], beam_radius)
    return block.preprocessed(settings)


def raw_chunk(start: int, patterns: np.ndarray) -> np.ndarray:
    """On a worker: the raw patterns of one work chunk, as read."""
    return patterns


class ClusterScan:
    """The blocks of one raw scan on a cluster, and what their workers compute.

    The first request (:meth:`fetch`) fixes the work: every task of the
    region is then submitted in scan order, at most two per worker ahead of
    the consumer (:meth:`~stem2eds.preprocess.executor.DaskExecutor.map`).
    Blocks are expected in order; a block asked out of order, or asked for
    something else than the first request, is computed alone.

    Parameters
    ----------
    executor : DaskExecutor
    scan : ScanBundle
        A raw bundle that every worker can open at ``scan.path``.
    box : (r0, r1, c0, c1)
        The region (the run's crop).
    origins : ndarray, shape (N, 2)
        Fitted origins of the region, flat (C order).
    beam_radius : float
    settings : PreprocessSettings
    on_close : callable, optional
        Called once, when every block has been delivered or the stream is
        closed (e.g. to close a cluster made for this scan).
    """

    def __init__(self, executor, scan, box, origins: np.ndarray, beam_radius: float,
                 settings, on_close=None):
        from ..preprocess.executor import row_tasks

        self.executor = executor
        self.scan = scan
        self.box = tuple(int(v) for v in box)
        self.origins = origins
        self.beam_radius = float(beam_radius)
        self.settings = settings
        self.detector_shape = tuple(int(v) for v in scan.detector_shape)
        self.tasks = row_tasks(self.box)
        width = self.box[3] - self.box[2]
        self.lengths = [(b[1] - b[0]) * width for _, b in self.tasks]
        self._lock = threading.Lock()
        self._request: tuple | None = None
        self._results: Iterator[tuple[int, np.ndarray]] | None = None
        self._next = 0
        self._ahead: dict[int, np.ndarray] = {}
        # the cluster outlives the generator of blocks (the model asks the
        # last blocks after it ends): closed after the last block, or here
        # when the stream is dropped
        self._finalizer = weakref.finalize(self, on_close or (lambda: None))

    def blocks(self) -> Iterator[tuple[int, "ClusterBlock"]]:
        """``(start, block)`` per task's block of rows, in scan order (nothing computed yet)."""
        try:
            for index, ((start, _), n) in enumerate(zip(self.tasks, self.lengths)):
                yield start, ClusterBlock(self, index, n,
                                          self.origins[start:start + n], self.beam_radius)
        except GeneratorExit:  # the consumer stopped early
            self.close()
            raise

    def fetch(self, index: int, request: tuple) -> np.ndarray:
        """The result of ``request`` for block ``index`` (see :class:`ClusterBlock`)."""
        with self._lock:
            if self._request is None:
                self._request = request
                self._results = self._map(request, self.box, self.origins)
            if request == self._request and index >= self._next:
                while self._next <= index:
                    _, value = next(self._results)  # type: ignore[arg-type]
                    self._ahead[self._next] = value
                    self._next += 1
                return self._deliver(index)
            if request == self._request and index in self._ahead:
                return self._deliver(index)
        start, (r0, r1, c0, c1) = self.tasks[index]
        n = self.lengths[index]
        results = self._map(request, (r0, r1, c0, c1), self.origins[start:start + n])
        return next(results)[1]

    def _deliver(self, index: int) -> np.ndarray:
        """Block ``index``'s result; the cluster is let go after the last one (lock held)."""
        value = self._ahead.pop(index)
        if self._next == len(self.tasks) and not self._ahead:
            self._close_locked()
        return value

    def _map(self, request: tuple, box, origins: np.ndarray
             ) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, values)`` per task of ``box``: the request computed on the workers."""
        kind = request[0]
        if kind == "rings":
            fn, args = ring_chunk, (origins, request[1])
        elif kind == "preprocessed":
            fn, args = preprocessed_chunk, (origins, self.beam_radius, request[1])
        else:
            fn, args = raw_chunk, ()
        # ring statistics read mapped blocks (no copy on the workers either)
        for start, chunks in self.executor.map(fn, self.scan, box, args, mapped=kind == "rings"):
            values = [value for _, value in chunks]
            yield start, np.concatenate(values) if len(values) > 1 else values[0]

    def close(self) -> None:
        """Cancel the tasks still in flight."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._results is not None:
            self._results.close()  # type: ignore[attr-defined]
        self._results, self._ahead = None, {}
        self._finalizer()


class ClusterBlock(RawBlock):
    """A :class:`~stem2eds.features.stream.RawBlock` whose patterns stay on the cluster.

    Its results are computed by the workers of its :class:`ClusterScan`;
    ``origins`` and ``beam_radius`` are here, as in a raw block.
    """

    def __init__(self, scan: ClusterScan, index: int, n: int, origins: np.ndarray,
                 beam_radius: float):
        # no RawBlock.__init__: ``patterns`` is fetched on demand (a property)
        self._scan, self._index, self._n = scan, index, n
        self.origins = origins
        self.beam_radius = beam_radius

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"ClusterBlock(index={self._index}, n={self._n})"

    @property
    def patterns(self) -> np.ndarray:  # type: ignore[override]
        """(n, Qx, Qy) raw counts, brought from the workers (only the GPU path asks)."""
        return self._scan.fetch(self._index, ("raw",))

    def geometry(self, settings, statistics: tuple[str, ...]) -> RingGeometry:
        return RingGeometry.from_settings(settings, self._scan.detector_shape, statistics,
                                          beam_radius=self.beam_radius)

    def ring_features(self, settings, statistics: tuple[str, ...]) -> np.ndarray:
        """(n, S * R) float32 ring statistics, computed on a worker."""
        return self._scan.fetch(self._index, ("rings", self.geometry(settings, statistics)))

    def preprocessed(self, settings) -> np.ndarray:
        """(n, Qx/f, Qy/f) float32 preprocessed patterns, made on a worker."""
        return self._scan.fetch(self._index, ("preprocessed", settings))


def iter_cluster_blocks(scan, settings, batch: int, client: Any
                        ) -> Iterator[tuple[int, ClusterBlock]]:
    """Stream a RAW bundle's region as :class:`ClusterBlock` s of a Dask cluster.

    The origins are measured and fitted first, as in one process
    (:func:`stem2eds.preprocess.pipeline.resolve_origins`: the sub-grid here,
    or every pattern on the cluster when the run fits none).

    Parameters
    ----------
    scan : ScanBundle
        Raw bundle, readable at ``scan.path`` by every worker.
    settings : PreprocessSettings
        Resolved (``scale`` set).
    batch : int
        Patterns per block read here (the origin sub-grid).
    client : dask.distributed.Client, str or Executor
        See :func:`stem2eds.preprocess.executor.open_executor`.

    Yields
    ------
    start : int
        Flat index in the cropped region of the block's first position.
    block : ClusterBlock
        One task's rows.
    """
    from ..errors import InputError
    from ..preprocess.executor import DaskExecutor, open_executor
    from ..preprocess.maps import check_crop
    from ..preprocess.pipeline import resolve_origins

    if settings.scale is None:
        raise InputError("preprocessing `scale` is not set",
                         hint="use the settings of the training bundle")
    stack = ExitStack()  # a cluster made here lives until the last block is delivered
    try:
        executor = stack.enter_context(open_executor(client))
        if not isinstance(executor, DaskExecutor):
            raise InputError("cluster blocks need a Dask `client`")
        fitted, beam_radius = resolve_origins(scan, settings, max(int(batch), 1),
                                              client=executor)
        flat = np.ascontiguousarray(np.asarray(fitted, dtype=np.float64).reshape(-1, 2))
        box = check_crop(settings.crop, scan.scan_shape)
        cluster = ClusterScan(executor, scan, box, flat, beam_radius, settings, stack.close)
    except BaseException:
        stack.close()
        raise
    yield from cluster.blocks()
