"""LiberTEM UDFs: origins and predicted maps of any dataset LiberTEM reads.

The UDFs reproduce ``stem2eds predict`` on LiberTEM's readers and executors
(inline, Dask cluster, libertem-live); :mod:`stem2eds.libertem.engine` runs
them in order:

1. :class:`SampleUDF` brings the first frames of the origin measurement
   set (the run's ``origin_sample`` sub-grid of the cropped scan) here for
   the aperture radius, measured exactly as
   :func:`stem2eds.preprocess.pipeline.measure_origins` measures it, and
2. :class:`OriginUDF` measures the origins of the set on the workers,
   with the disk sum for the probe radius; the engine then fits the run's
   origin model (:func:`stem2eds.preprocess.origin.fit_origins`). Both are
   skipped when the client can read the frames itself
   (:func:`stem2eds.libertem.engine.fit_dataset_origins`);
3. :class:`PredictUDF` runs the run's front end and model on every frame
   with the fitted origins (:meth:`~stem2eds.predict.predictor.Predictor.predict_raw`:
   the fused ring statistics for ring models, else the run's
   preprocessing) and returns one ``kind="nav"`` buffer per element (and
   ``haadf``); :meth:`PredictUDF.get_results` applies the run's map filter
   (:meth:`stem2eds.predict.predictor.Predictor.finish_eds`). For runs
   that normalise per scan, :class:`StatsUDF` returns the ring statistics
   instead, and the engine applies the scan's reference and the model.

The UDFs take frames in stacks (tiles of whole frames, or whole
partitions, :class:`_StackUDF`) and handle them in batches: the array
functions and the model then run on ``(n, Qx, Qy)`` stacks as in
``stem2eds predict``, without LiberTEM's per-frame Python work.
This module imports LiberTEM; ``import stem2eds`` does not.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from libertem.udf.base import UDF

from ..preprocess.origin import find_origins

#: Frames preprocessed and predicted together (per worker, per partition).
FRAME_BATCH = 256
#: Fewer frames than this in a tile are joined with the next tiles' first.
MIN_STACK = 32
#: Preferred bytes of a tile (whole frames): 256 frames of 256x256 uint16.
TILE_BYTES = 32 * 2**20

_PREDICTORS: dict[str, object] = {}
_LOCK = threading.Lock()


def cached_predictor(run: str | os.PathLike, device: str = "cpu"):
    """The run's :class:`~stem2eds.predict.predictor.Predictor`, loaded once per process.

    UDF parameters travel to the workers as plain values (the run folder);
    each worker process builds the model on first use.
    """
    from ..predict.predictor import load_run

    key = f"{Path(run).resolve()}|{device}"
    with _LOCK:
        if key not in _PREDICTORS:
            _PREDICTORS[key] = load_run(run, device=device)
        return _PREDICTORS[key]


class _StackUDF(UDF):
    """Takes whole frames in stacks: ``(n, Qx, Qy)`` tiles or whole partitions.

    LiberTEM's per-frame method costs Python work per frame (buffer views,
    coordinates, a copy of each frame); stacks cost it per tile. With
    ``method="tile"`` (only for datasets whose tiles span whole frames,
    :func:`frames_method`) the tiles are about :data:`FRAME_BATCH` frames;
    with ``method="partition"`` (any dataset) the UDF gets each partition at
    once and cuts it into batches itself. Subclasses implement
    :meth:`process_stack`.
    """

    def get_preferred_input_dtype(self):
        # the offline path measures and bins the counts in their own dtype
        return self.USE_NATIVE_DTYPE

    def get_method(self):
        if self.params.method == "tile":
            return self.UDF_METHOD.TILE
        return self.UDF_METHOD.PARTITION

    def get_tiling_preferences(self):
        return {"depth": FRAME_BATCH, "total_size": TILE_BYTES}

    def process_tile(self, tile: np.ndarray) -> None:
        if tuple(tile.shape[1:]) != tuple(self.meta.dataset_shape.sig):
            raise RuntimeError("tiles do not span whole frames; use method='partition'")
        self.process_stack(tile)

    def process_partition(self, partition: np.ndarray) -> None:
        self.process_stack(partition)

    def process_stack(self, frames: np.ndarray) -> None:
        raise NotImplementedError


def frames_method(ds, roi: np.ndarray | None = None) -> str:
    """``"tile"`` when the dataset's tiles span whole frames, else ``"partition"``."""
    try:
        base = tuple(int(v) for v in ds.get_base_shape(roi))
    except Exception:  # noqa: BLE001 - a reader without base shape: whole partitions are safe
        return "partition"
    return "tile" if base[-2:] == tuple(int(v) for v in ds.shape.sig)[-2:] else "partition"


class _BatchingUDF(_StackUDF):
    """Handles the frames of a partition in batches of :data:`FRAME_BATCH`, in frame order.

    Subclasses implement :meth:`handle` on ``(frames (n, Qx, Qy), coordinates
    (n, 2))`` and return per-frame rows; :meth:`postprocess` writes the rows
    of the partition, in frame order, into the ``kind="nav"`` buffers named
    by :meth:`columns`. Stacks of fewer than :data:`MIN_STACK` frames (a
    reader's thin tiles, or single frames where a reader applies a ``roi``
    frame by frame) are copied and joined until a batch is full, so the
    model never runs on a handful of frames.
    """

    def preprocess(self) -> None:
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._n_pending = 0
        self._rows: list[np.ndarray] = []

    def process_stack(self, frames: np.ndarray) -> None:
        coords = np.asarray(self.meta.coordinates)
        if len(coords) != len(frames):  # pragma: no cover - a LiberTEM contract, checked anyway
            raise RuntimeError(f"{len(frames)} frames but {len(coords)} coordinates")
        for lo in range(0, len(frames), FRAME_BATCH):
            part, where = frames[lo:lo + FRAME_BATCH], coords[lo:lo + FRAME_BATCH]
            if len(part) < MIN_STACK:
                # LiberTEM reuses its tile buffers: keep copies
                self._pending.append((np.array(part), np.array(where)))
                self._n_pending += len(part)
                if self._n_pending >= FRAME_BATCH:
                    self._flush()
            else:
                self._flush()  # what came before, in frame order
                self._rows.append(self.handle(part, where))

    def _flush(self) -> None:
        if self._pending:
            frames = np.concatenate([f for f, _ in self._pending])
            coords = np.concatenate([c for _, c in self._pending])
            self._pending, self._n_pending = [], 0
            self._rows.append(self.handle(frames, coords))

    def postprocess(self) -> None:
        self._flush()
        columns = self.columns()
        n = len(getattr(self.results, columns[0][0]))
        rows = np.concatenate(self._rows) if self._rows else np.zeros((0, 1))
        if len(rows) != n:  # pragma: no cover - a LiberTEM contract, checked anyway
            raise RuntimeError(f"partition has {n} frames but {len(rows)} were processed")
        for name, cols in columns:
            buf = getattr(self.results, name)
            buf[:] = rows[:, cols].reshape(buf.shape)
        self._rows = []

    def handle(self, frames: np.ndarray, coords: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def columns(self) -> list[tuple[str, slice | int]]:
        raise NotImplementedError


class SampleUDF(_StackUDF):
    """The raw frames of a ``roi`` (in scan order), in the dataset's dtype.

    Parameters
    ----------
    sig_shape : (Qx, Qy)
    method : {"partition", "tile"}
        See :func:`frames_method`.
    """

    def __init__(self, sig_shape, method: str = "partition"):
        super().__init__(sig_shape=tuple(int(v) for v in sig_shape), method=method)

    def get_result_buffers(self):
        return {"frames": self.buffer(kind="nav", extra_shape=self.params.sig_shape,
                                      dtype=self.meta.input_dtype)}

    def process_stack(self, frames: np.ndarray) -> None:
        self.results.frames[:] = frames


class OriginUDF(_BatchingUDF):
    """Origins of the frames of a ``roi``, measured with a fixed aperture radius.

    Per frame the same :func:`~stem2eds.preprocess.origin.find_origins` as
    pass 1 of preprocessing; ``disk_sum``/``n_summed`` give the probe radius
    of the mean disk.

    Parameters
    ----------
    radius : float
        Aperture radius (px), from the first frames of the measurement set.
    method : {"partition", "tile"}
        How frames arrive (:func:`frames_method`).

    Notes
    -----
    Result buffers: ``origin`` (``kind="nav"``, extra shape (2,), float64:
    row, column in detector px, NaN where no disk was found), ``disk_sum``
    (``kind="single"``, (2h+1, 2h+1)) and ``n_summed`` (``kind="single"``).
    """

    def __init__(self, radius: float, method: str = "partition"):
        super().__init__(radius=float(radius), method=method)

    def _half(self) -> int:
        # find_origins' window half-size for this radius
        from ..preprocess.origin import APERTURE_MARGIN

        return int(np.ceil(self.params.radius + APERTURE_MARGIN)) + 3

    def get_result_buffers(self):
        size = 2 * self._half() + 1
        return {"origin": self.buffer(kind="nav", extra_shape=(2,), dtype=np.float64),
                "disk_sum": self.buffer(kind="single", extra_shape=(size, size),
                                        dtype=np.float64),
                "n_summed": self.buffer(kind="single", dtype=np.int64)}

    def handle(self, frames, coords):
        found = find_origins(frames, self.params.radius)
        self.results.disk_sum[:] += found.disk_sum
        self.results.n_summed[:] += found.n_summed
        return found.origins

    def columns(self):
        return [("origin", slice(0, 2))]

    def merge(self, dest, src) -> None:
        dest.origin[:] = src.origin
        dest.disk_sum[:] += src.disk_sum
        dest.n_summed[:] += src.n_summed


class PredictUDF(_BatchingUDF):
    """Predicted EDS maps (and HAADF) of every frame, as ``stem2eds predict`` makes them.

    Parameters
    ----------
    run : path-like
        Finished training run (``stem2eds train``).
    origins : ndarray, shape (Rx, Ry, 2)
        Fitted origin of every scan position (detector px; NaN outside the
        run's crop), e.g. from :func:`stem2eds.libertem.engine.fit_dataset_origins`.
    beam_radius : float
        Radius of the removed disk, detector px (the run's, if it stores one).
    device : {"cpu", "cuda", "auto"}
        Where the model runs on each worker.
    filtered : bool, optional
        Filter the EDS maps in :meth:`get_results` (default: as the run says).
    method : {"partition", "tile"}
        How frames arrive (:func:`frames_method`): ``"tile"`` (stacks of
        about :data:`FRAME_BATCH` whole frames) only for datasets whose tiles
        span whole frames; ``"partition"`` works for any.
    ood : bool
        Also return each frame's ring means (``ring_means``, (R,) float32),
        which the run's OOD score takes (fused ring models only).

    Notes
    -----
    Result buffers: one ``kind="nav"`` float32 map per element of the run,
    named by its symbol (atomic fraction), and ``haadf`` when the run
    predicts HAADF (detector units). A private ``outputs`` buffer holds all
    of them while frames are processed.
    """

    def __init__(self, run, origins, beam_radius: float, device: str = "cpu",
                 filtered: bool | None = None, method: str = "partition", ood: bool = False,
                 **params):
        super().__init__(run=str(run),
                         origins=None if origins is None else np.asarray(origins, np.float64),
                         beam_radius=float(beam_radius), device=device, filtered=filtered,
                         method=method, ood=bool(ood), **params)

    @property
    def predictor(self):
        return cached_predictor(self.params.run, self.params.device)

    def get_result_buffers(self):
        # One private (n_outputs,) buffer while processing (LiberTEM sets a
        # view per buffer per frame); the named maps are made in get_results.
        names = self.output_names()
        buffers = {name: self.buffer(kind="nav", dtype=np.float32, use="result_only")
                   for name in names}
        buffers["outputs"] = self.buffer(kind="nav", extra_shape=(len(names),),
                                         dtype=np.float32, use="private")
        if self.params.ood:
            buffers["ring_means"] = self.buffer(kind="nav", extra_shape=(self._n_rings(),),
                                                dtype=np.float32)
        return buffers

    def _n_rings(self) -> int:
        from ..features.rings import RingGeometry

        p = self.predictor
        return RingGeometry.from_settings(p.settings, tuple(self.meta.dataset_shape.sig),
                                          ("mean",), self.params.beam_radius).n_rings

    def output_names(self) -> list[str]:
        p = self.predictor
        return [*p.elements, *(["haadf"] if "haadf" in p.targets else [])]

    def handle(self, frames, coords):
        p = self.predictor
        origins = self.params.origins[tuple(coords.T)]
        if self.params.ood:  # the ring means of the OOD score come from the same pass
            out, means = p.predict_raw_with_means(frames, origins, self.params.beam_radius)
            return np.concatenate([out, means], axis=1)
        # fused ring statistics for ring models (as stem2eds predict), else preprocessing
        return p.predict_raw(frames, origins, self.params.beam_radius)

    def columns(self):
        n = len(self.output_names())
        return [("outputs", slice(0, n))] + ([("ring_means", slice(n, None))]
                                             if self.params.ood else [])

    def get_results(self):
        # LiberTEM hands nav buffers over flat, only the roi's positions
        # (the run's crop box), in scan order
        p = self.predictor
        n_eds = len(p.elements)
        names = self.output_names()
        outputs = np.asarray(self.results.outputs)
        shape = _roi_box_shape(self.meta.roi, tuple(self.meta.dataset_shape.nav))
        eds = p.finish_eds(outputs[:, :n_eds].T.reshape(n_eds, *shape), self.params.filtered)
        out = {name: outputs[:, i].copy() for i, name in enumerate(names) if i >= n_eds}
        out.update({name: eds[i].reshape(-1).astype(np.float32)
                    for i, name in enumerate(names[:n_eds])})
        if self.params.ood:
            out["ring_means"] = np.asarray(self.results.ring_means)
        return out


class StatsUDF(_BatchingUDF):
    """The ring statistics of every frame, for runs that normalise per scan.

    A run with ``model_params.normalise = "scan"`` divides a scan's ring
    statistics by the scan's reference, which needs every frame
    (:mod:`stem2eds.features.normalise`): the workers compute the statistics
    (:meth:`~stem2eds.predict.predictor.Predictor.raw_statistics`) and the
    client the reference and the model
    (:func:`stem2eds.libertem.engine.maps_from_statistics`).

    Parameters
    ----------
    run, origins, beam_radius, device, method
        As :class:`PredictUDF`.

    Notes
    -----
    Result buffer: ``stats`` (``kind="nav"``, extra shape (S * R,), float32;
    statistic-major), about 180 MB for a million frames and 45 rings.
    """

    def __init__(self, run, origins, beam_radius: float, device: str = "cpu",
                 method: str = "partition"):
        super().__init__(run=str(run), origins=np.asarray(origins, np.float64),
                         beam_radius=float(beam_radius), device=device, method=method)

    @property
    def predictor(self):
        return cached_predictor(self.params.run, self.params.device)

    def get_result_buffers(self):
        from ..features.rings import RingGeometry

        p = self.predictor
        geometry = RingGeometry.from_settings(p.settings, tuple(self.meta.dataset_shape.sig),
                                              p.head.ring_statistics, self.params.beam_radius)
        return {"stats": self.buffer(kind="nav", extra_shape=(geometry.n_features,),
                                     dtype=np.float32)}

    def handle(self, frames, coords):
        origins = self.params.origins[tuple(coords.T)]
        stats = self.predictor.raw_statistics(frames, origins, self.params.beam_radius)
        return stats.reshape(len(frames), -1)

    def columns(self):
        return [("stats", slice(None))]


def _roi_box_shape(roi: np.ndarray | None, nav_shape: tuple[int, ...]) -> tuple[int, int]:
    """Shape of the rectangular ``roi`` (the run's crop) or of the whole 2D scan."""
    if roi is None:
        return nav_shape  # type: ignore[return-value]
    rows = np.flatnonzero(roi.any(axis=1))
    cols = np.flatnonzero(roi.any(axis=0))
    return len(rows), len(cols)
