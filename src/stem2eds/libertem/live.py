"""Live prediction: EDS maps while the scan is acquired (libertem-live).

:func:`predict_live` connects to a detector (Merlin, Dectris, or frames in
memory), runs :class:`LivePredictUDF` on the frames as they arrive and
rewrites the prediction file ``OUT/prediction.h5`` atomically at intervals,
with root attributes ``complete`` (False while acquiring) and
``frames_done``; positions not yet acquired are NaN.

Origins while acquiring: ``stem2eds predict`` fits a smooth origin model (plane, poly2) to origins
measured over the whole scan, which a live scan does not have yet. While
acquiring, each frame is centred on its own measured origin (with the
aperture radius of the training data, ``probe_radius`` of the run) and the
maps are not filtered: a preview. With ``final="exact"`` (the default) the
raw frames are also recorded to ``OUT/frames.npy`` (LiberTEM's ``RecordUDF``:
on disk, so memory does not grow with the scan; disk use is the raw scan's
size), and when the scan is complete the maps are recomputed from that file
with :func:`stem2eds.libertem.engine.predict_dataset`: the final file equals
``stem2eds predict`` on the same frames. The recording is deleted afterwards
unless ``keep_frames``. ``final="live"`` keeps the preview maps (filtered as
the run says) and records nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from .udf import PredictUDF

from .settings import FRAMES, PREDICTION, LiveSettings

__all__ = ["FRAMES", "PREDICTION", "LiveSettings", "LivePredictUDF", "predict_live"]


class LivePredictUDF(PredictUDF):
    """:class:`PredictUDF` for frames whose fitted origins are not known yet.

    Each batch of frames is centred on its own measured origins
    (:func:`~stem2eds.preprocess.origin.find_origins` with the aperture
    ``radius``); where no disk is found, on the median origin of the batch.
    Maps come back unfiltered (a filter would spread the unacquired part).

    Parameters
    ----------
    run : path-like
    radius : float
        Aperture radius (px) for the origins: the training data's probe radius.
    beam_radius : float
    device : str
    """

    def __init__(self, run, radius: float, beam_radius: float, device: str = "cpu",
                 origins=None, filtered: bool = False, method: str = "partition",
                 ood: bool = False):
        # LiberTEM rebuilds a UDF per partition from its parameters (all of them);
        # the preview has no OOD score (ood is always False here)
        super().__init__(run, None, beam_radius, device, filtered=False, method=method,
                         radius=float(radius))

    def handle(self, frames, coords):
        from ..preprocess.origin import find_origins

        p = self.predictor
        origins = find_origins(frames, self.params.radius).origins
        bad = ~np.isfinite(origins).all(axis=1)
        if bad.any():
            fallback = np.nanmedian(origins, axis=0) if (~bad).any() else \
                (np.asarray(frames.shape[1:]) - 1) / 2.0
            origins[bad] = fallback
        return p.predict_raw(frames, origins, self.params.beam_radius)

    def get_results(self):
        names = self.output_names()
        outputs = np.asarray(self.results.outputs)
        return {name: outputs[:, i].copy() for i, name in enumerate(names)}


def open_acquisition(ctx, settings: LiveSettings, data: np.ndarray | None = None):
    """A libertem-live connection and acquisition for the settings (a context manager pair)."""
    if settings.detector == "memory":
        if data is None:
            raise InputError("the memory detector needs frames")
        conn = ctx.make_connection("memory").open(data=data)
        shape = settings.scan_shape or tuple(data.shape[:2])
    else:
        if settings.scan_shape is None:
            raise InputError("`scan_shape` is required for a live acquisition")
        shape = settings.scan_shape
        if settings.detector == "merlin":
            conn = ctx.make_connection("merlin").open(
                data_host=settings.host, data_port=settings.port or 6342,
                api_host=settings.host, api_port=settings.api_port or 6341)
        else:
            conn = ctx.make_connection("dectris").open(
                api_host=settings.host, api_port=settings.port or 80,
                data_host=settings.host, data_port=settings.api_port or 9999)
    kwargs: dict[str, Any] = {"conn": conn, "nav_shape": tuple(shape)}
    if settings.frames_per_partition:
        kwargs["frames_per_partition"] = settings.frames_per_partition
    if settings.detector == "dectris":
        kwargs["controller"] = conn.get_active_controller(trigger_mode="exte")
    return conn, ctx.make_acquisition(**kwargs)


@dataclass
class LiveState:
    """What the terminal view shows after each update.

    Attributes
    ----------
    frames_done, frames_total : int
    elapsed : float
        Seconds since the first frame was processed.
    means : dict of str to float
        Mean predicted atomic fraction of each element over the acquired positions.
    complete : bool
    """

    frames_done: int
    frames_total: int
    elapsed: float
    means: dict[str, float]
    complete: bool = False

    @property
    def fps(self) -> float:
        return self.frames_done / self.elapsed if self.elapsed > 0 else 0.0


def predict_live(run_dir: str | os.PathLike, out: str | os.PathLike, settings: LiveSettings,
                 *, device: str = "cpu", data: np.ndarray | None = None,
                 on_update: Callable[[LiveState], None] | None = None) -> Path:
    """Predict maps during an acquisition; partial files at intervals, the final file at the end.

    Parameters
    ----------
    run_dir : path-like
        Finished training run.
    out : path-like
        Output folder (created); ``prediction.h5`` is rewritten there.
    settings : LiveSettings
    device : {"cpu", "cuda", "auto"}
    data : ndarray, shape (Rx, Ry, Qx, Qy), optional
        Frames for the ``memory`` detector.
    on_update : callable, optional
        Called with a :class:`LiveState` after every partial result.

    Returns
    -------
    Path
        The prediction file.
    """
    from libertem_live.api import LiveContext

    from ..features.normalise import whole_scans_only
    from ..predict.predictor import finished_run

    out = Path(out)
    info, run_settings = finished_run(Path(run_dir))
    why = whole_scans_only(info.get("model_params"))
    if why:
        raise InputError(f"{why}, not live", path=run_dir)
    if out.exists() and not out.is_dir():
        raise InputError("`out` is a file, not a folder", path=out)
    out.mkdir(parents=True, exist_ok=True)
    radius = run_settings.probe_radius or run_settings.beam_radius / run_settings.beam_margin
    if run_settings.beam_radius is None or radius is None:
        raise InputError("the run does not store its beam radius", path=run_dir)
    ctx = LiveContext.make_with("inline")
    try:
        conn, aq = open_acquisition(ctx, settings, data)
        with conn:
            udf = LivePredictUDF(run_dir, radius, run_settings.beam_radius, device)
            try:
                live = _acquire(ctx, aq, udf, out, settings, on_update)
            except BaseException:
                if not settings.keep_frames:  # a partial recording: the raw scan's size
                    (out / FRAMES).unlink(missing_ok=True)
                raise
        if settings.final == "live":
            return _write(out, udf, live[0], live[1], _finish(udf, live[0]), complete=True)
        return _final_exact(run_dir, out, settings, device, on_update, live[2])
    finally:
        ctx.close()


def _acquire(ctx, aq, udf: LivePredictUDF, out: Path, settings: LiveSettings,
             on_update) -> tuple[dict[str, np.ndarray], int, LiveState]:
    """Run the live UDF (and the recorder) over the acquisition; partial files at intervals."""
    udfs = [udf]
    if settings.final == "exact":
        from libertem.udf.record import RecordUDF

        udfs.append(RecordUDF(str(out / FRAMES)))
    start, last_write = None, 0.0
    maps: dict[str, np.ndarray] = {}
    done, total = 0, 0
    state = LiveState(0, 0, 0.0, {})
    for part in ctx.run_udf_iter(dataset=aq, udf=udfs):
        now = time.monotonic()
        start = start or now
        damage = np.asarray(part.damage.data, bool)
        total, done = damage.size, int(damage.sum())
        maps = {name: np.where(damage, np.asarray(buf.data, np.float32), np.nan)
                for name, buf in part.buffers[0].items()}
        state = LiveState(done, total, now - start, _means(udf, maps))
        if on_update is not None:
            on_update(state)
        if now - last_write >= settings.interval and done < total:
            _write(out, udf, maps, done, None, complete=False)
            last_write = now
    return maps, done, state


def _means(udf: LivePredictUDF, maps: dict[str, np.ndarray]) -> dict[str, float]:
    elements = udf.predictor.elements
    return {el: float(np.nanmean(maps[el])) if np.isfinite(maps[el]).any() else float("nan")
            for el in elements}


def _finish(udf: LivePredictUDF, maps: dict[str, np.ndarray]) -> np.ndarray:
    p = udf.predictor
    return p.finish_eds(np.stack([maps[el] for el in p.elements]))


def _write(out: Path, udf: LivePredictUDF, maps: dict[str, np.ndarray], done: int,
           eds: np.ndarray | None, complete: bool) -> Path:
    """(Re)write ``prediction.h5`` atomically; the run's crop is not applied live."""
    p = udf.predictor
    eds = np.stack([maps[el] for el in p.elements]) if eds is None else eds
    attrs = {"complete": bool(complete), "frames_done": int(done), "engine": "libertem-live",
             "run_dir": str(Path(udf.params.run).resolve()), "model": p.model_name,
             "targets": list(p.targets), "origins": "measured per frame (live preview)"}
    return _save(out, p.elements, eds, maps.get("haadf"), attrs)


def _save(out: Path, elements, eds, haadf, attrs) -> Path:
    from ..formats.prediction import write_prediction_file

    return write_prediction_file(out / PREDICTION, elements, eds, haadf=haadf, attrs=attrs)


def _final_exact(run_dir, out: Path, settings: LiveSettings, device: str, on_update,
                 state: LiveState) -> Path:
    """Maps of the recorded frames with the fitted origins (as ``stem2eds predict``)."""
    from .. import __version__
    from .engine import open_context, predict_dataset
    from .udf import cached_predictor

    frames = out / FRAMES
    if state.frames_done < state.frames_total:
        raise InputError(f"the acquisition stopped after {state.frames_done} of "
                         f"{state.frames_total} frames; the partial maps are in {PREDICTION}")
    try:
        with open_context() as ctx:
            ds = ctx.load("npy", path=str(frames))
            pred = predict_dataset(ctx, ds, run_dir, device=device)
        p = cached_predictor(run_dir, device)
        attrs = {"complete": True, "frames_done": int(state.frames_done),
                 "engine": "libertem-live", "run_dir": str(Path(run_dir).resolve()),
                 "model": p.model_name, "targets": list(p.targets),
                 "stem2eds_version": __version__, "scan_shape": list(pred.scan_shape),
                 "origins": "fitted over the whole scan (as stem2eds predict)"}
        path = _save(out, p.elements, pred.eds, pred.haadf, attrs)
    finally:
        if not settings.keep_frames:
            frames.unlink(missing_ok=True)
    if on_update is not None:
        on_update(LiveState(state.frames_done, state.frames_total, state.elapsed,
                            {el: float(np.mean(pred.eds[i])) for i, el in enumerate(p.elements)},
                            complete=True))
    return path
