"""``stem2eds predict`` on LiberTEM: any file LiberTEM reads in, the same maps out.

:func:`predict_dataset` runs the UDFs of :mod:`stem2eds.libertem.udf`
on a LiberTEM dataset (two passes: the run's origin sub-grid, measured and
fitted here, then the predicted maps); :func:`predict_file` loads a file with LiberTEM's readers
(``filetype="auto"`` or a named type: mib, k2is, frms6, blo, dm, empad, mrc,
hdf5, npy, ...) and writes the prediction file
(:mod:`stem2eds.formats.prediction`).

Where the UDFs run is a LiberTEM :class:`~libertem.api.Context`:
:func:`open_context` makes one from the same ``scheduler`` values as
``stem2eds predict`` (None: inline, in this process; ``"local"``: a local
Dask cluster, one worker per core; an address: an existing cluster).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError
from ..preprocess.maps import check_crop
from ..preprocess.origin import (OriginFit, disk_radius, find_origins, fit_origins,
                                 origin_problem, sample_grid)

#: As :data:`stem2eds.preprocess.pipeline.RADIUS_SAMPLE` (not imported: that
#: module pulls in the bundle writer): patterns the aperture radius is measured on.
RADIUS_SAMPLE = 256
#: A sub-grid of at most this many bytes of frames is measured in this process
#: when it can read the bundle (1,024 frames of 256x256 uint16 are 128 MiB).
LOCAL_ORIGIN_BYTES = 512 * 2**20


@contextmanager
def open_context(scheduler: Any = None, cpus: int | None = None) -> Iterator[Any]:
    """A LiberTEM ``Context`` for a ``scheduler`` value, closed on exit if made here.

    Parameters
    ----------
    scheduler : None, "inline", "local", str address or libertem Context
        None or ``"inline"``: LiberTEM's inline executor (this process);
        ``"local"``: a local Dask cluster of ``cpus`` workers (default: every
        core); ``tcp://host:port``: an existing Dask scheduler; a Context is
        used as it is.
    cpus : int, optional
        Workers of the local cluster.
    """
    from libertem.api import Context

    if isinstance(scheduler, Context):
        yield scheduler
        return
    if scheduler in (None, "inline"):
        ctx = Context.make_with("inline")
    elif scheduler == "local":
        ctx = Context.make_with("dask", cpus=cpus or os.cpu_count() or 1)
    else:
        from libertem.executor.dask import DaskJobExecutor

        try:
            ctx = Context(executor=DaskJobExecutor.connect(str(scheduler)))
        except OSError as exc:
            raise InputError(f"cannot reach the Dask scheduler {scheduler} ({exc})",
                             hint="start it (dask scheduler) or use `scheduler` local") from None
    try:
        yield ctx
    finally:
        ctx.close()


def load_dataset(ctx, path: str | os.PathLike, input_type: str = "auto",
                 scan_shape: tuple[int, int] | None = None):
    """A LiberTEM dataset from a file, with LiberTEM's readers.

    Parameters
    ----------
    ctx : libertem.api.Context
    path : path-like
        Any file LiberTEM reads (for MIB the ``.hdr`` or a ``.mib`` file).
    input_type : str
        LiberTEM's file type (``"auto"`` detects it).
    scan_shape : (Rx, Ry), optional
        Scan shape when the file does not say (``nav_shape`` in LiberTEM).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=path)
    try:
        ds = _bundle_dataset(ctx, path) if input_type in ("auto", "hdf5") and not scan_shape \
            else None
        if ds is not None:
            return ds
        ds = ctx.load(input_type, path=str(path))
        if scan_shape:
            # a new scan shape keeps the frames (the last two signal axes)
            sig = tuple(int(v) for v in ds.shape)[-2:]
            ds = ctx.load(input_type, path=str(path), nav_shape=tuple(scan_shape),
                          sig_shape=sig)
    except Exception as exc:  # LiberTEM raises DataSetException, ValueError, ...
        raise InputError(f"LiberTEM cannot read this file as {input_type!r} "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                         path=path, hint="name its type (`input_type`) or its `scan_shape`"
                         ) from None
    return ds


def _bundle_dataset(ctx, path: Path):
    """A stem2eds bundle's patterns read in place (:mod:`.dataset`), or None if not a bundle.

    A bundle whose patterns are compressed (or otherwise not plain bytes)
    goes through LiberTEM's h5py-based reader, named to its ``/diffraction``.
    """
    from libertem.io.dataset.base import DataSetException

    from .dataset import DirectHDF5DataSet

    import h5py

    if not _is_bundle(path):
        return None  # not a bundle, not HDF5 or unreadable: LiberTEM's own detection decides
    try:
        return ctx.load(DirectHDF5DataSet, path=str(path))
    except DataSetException:
        pass
    with h5py.File(path, "r") as f:
        chunks, shape = f["diffraction"].chunks, f["diffraction"].shape
    if chunks is not None and tuple(chunks[2:]) != tuple(shape[2:]):
        # LiberTEM's HDF5 reader fails inside its tiling on chunks that cut
        # frames into pieces (found by fuzzing); whole-frame chunks work
        raise InputError(f"the bundle's patterns are stored in chunks of {tuple(chunks)}, which "
                         "LiberTEM's HDF5 reader does not take", path=path,
                         hint="predict it with the stem2eds engine (the default)")
    return ctx.load("hdf5", path=str(path), ds_path="/diffraction")


def _is_bundle(path: Path) -> bool:
    """Whether ``path`` is a readable stem2eds bundle with patterns (an HDF5 file saying so)."""
    import h5py

    from ..formats.bundle import FORMAT

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT and "diffraction" in f
    except (OSError, KeyError, RuntimeError, ValueError, TypeError):
        return False


@dataclass
class DatasetOrigins:
    """Fitted origins of a LiberTEM dataset, as ``stem2eds predict`` fits them.

    Attributes
    ----------
    fitted : ndarray, shape (Rx, Ry, 2)
        Origin of every scan position (detector px); NaN outside the crop.
    fit : OriginFit
        On the crop region.
    probe_radius : float
    box : (r0, r1, c0, c1)
        The run's crop in the scan.
    """

    fitted: np.ndarray
    fit: OriginFit
    probe_radius: float
    box: tuple[int, int, int, int]


def crop_roi(settings, nav_shape: tuple[int, int]) -> np.ndarray | None:
    """LiberTEM ``roi`` of the run's crop (None: the whole scan)."""
    box = check_crop(settings.crop, nav_shape)
    if tuple(box) == (0, nav_shape[0], 0, nav_shape[1]):
        return None
    roi = np.zeros(nav_shape, bool)
    roi[box[0]:box[1], box[2]:box[3]] = True
    return roi


def measurement_roi(settings, nav_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions whose origins are measured, and the sub-grid mask of the crop region.

    Returns
    -------
    roi : ndarray, shape (Rx, Ry), bool
    sampled : ndarray, shape (Rx', Ry'), bool, or None
        None when every position of the crop is measured.
    """
    r0, r1, c0, c1 = check_crop(settings.crop, nav_shape)
    shape = (r1 - r0, c1 - c0)
    grid = sample_grid(shape, settings.origin_sample) if settings.origin_fit != "none" else None
    sampled = None
    local = np.ones(shape, bool)
    if grid is not None:
        sampled = np.zeros(shape, bool)
        sampled[np.ix_(*grid)] = True
        local = sampled
    roi = np.zeros(nav_shape, bool)
    roi[r0:r1, c0:c1] = local
    return roi, sampled


def fit_dataset_origins(ctx, ds, settings) -> DatasetOrigins:
    """Origins of every position: measured on the run's sub-grid, fitted as the run says.

    As :func:`stem2eds.preprocess.pipeline.measure_origins` measures: the
    aperture radius from the first :data:`RADIUS_SAMPLE` frames of the
    measured positions, then every origin with it.

    When the dataset is a bundle this process can open and the measured
    frames (typically the ``origin_sample`` sub-grid) take at most
    :data:`LOCAL_ORIGIN_BYTES`, they are read and measured here (:func:`_local_origins`, the single-process code).
    Otherwise the radius frames come here (read directly, or by a
    :class:`~stem2eds.libertem.udf.SampleUDF` pass) and the workers measure
    the origins (:class:`~stem2eds.libertem.udf.OriginUDF`), sending back
    two numbers a position. On a 2-worker cluster the worker pass took
    0.5-0.57 s for 1,024 frames of 256x256 uint16 and the local one 0.3 s:
    a ``roi`` of scattered positions reaches the UDF as one-frame tiles,
    each with LiberTEM's per-tile work. (Sending those frames from the
    workers here would cost more than the pass.)
    """
    from .udf import OriginUDF, SampleUDF, frames_method

    nav_shape = _nav_shape(ds)
    roi, sampled = measurement_roi(settings, nav_shape)
    local = _local_origins(ds, roi)
    if local is not None:
        measured, disk_sum, n_sum = local
    else:
        method = frames_method(ds, roi)
        first = np.zeros(nav_shape, bool)
        first.flat[np.flatnonzero(roi)[:RADIUS_SAMPLE]] = True
        frames = _local_frames(ds, first)
        if frames is None:
            frames = ctx.run_udf(ds, SampleUDF(tuple(ds.shape.sig), method),
                                 roi=first)["frames"].raw_data
        radius = find_origins(frames).probe_radius
        del frames
        res = ctx.run_udf(ds, OriginUDF(radius, method), roi=roi)
        measured = np.asarray(res["origin"].data)
        disk_sum = np.asarray(res["disk_sum"].data)
        n_sum = int(np.asarray(res["n_summed"].data).sum())
    box = check_crop(settings.crop, nav_shape)
    measured = measured[box[0]:box[1], box[2]:box[3]]
    if n_sum == 0:
        raise InputError("no diffraction pattern has counts: cannot find the unscattered beam")
    probe_radius = disk_radius(disk_sum / n_sum, smooth=0.0 if n_sum >= 20 else 1.0)
    try:
        fit = fit_origins(measured, settings.origin_fit, sampled=sampled)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    problem = origin_problem(measured, fit, probe_radius)
    if problem:
        raise InputError(f"{problem}; the patterns cannot be centred",
                         hint="check that the patterns show the direct beam, or `crop` to "
                              "the positions where they do")
    fitted = np.full((*nav_shape, 2), np.nan)
    fitted[box[0]:box[1], box[2]:box[3]] = fit.fitted
    return DatasetOrigins(fitted, fit, float(probe_radius), box)


def _local_origins(ds, roi: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Origins of the ``roi``'s frames measured in this process, or None.

    None unless ``ds`` is a bundle this process can open and the frames take
    at most :data:`LOCAL_ORIGIN_BYTES`. The frames are read in blocks of
    :data:`RADIUS_SAMPLE` (one block ahead, in a thread) and measured by
    :func:`stem2eds.preprocess.passes.measure_blocks`, the code of
    ``stem2eds predict``: the same origins.

    Returns
    -------
    measured : ndarray, shape (Rx, Ry, 2)
        NaN outside the ``roi``.
    disk_sum : ndarray
    n_summed : int
    """
    from ..io.stream import prefetch
    from ..preprocess.passes import measure_blocks
    from .dataset import DirectHDF5DataSet

    if not isinstance(ds, DirectHDF5DataSet):
        return None
    flat = np.flatnonzero(roi)
    frame_bytes = int(np.prod(tuple(ds.shape.sig))) * np.dtype(ds.dtype).itemsize
    if not len(flat) or len(flat) * frame_bytes > LOCAL_ORIGIN_BYTES:
        return None
    first = ds.read_frames(flat[:RADIUS_SAMPLE])
    if first is None:
        return None

    def blocks():
        yield 0, first
        for lo in range(RADIUS_SAMPLE, len(flat), RADIUS_SAMPLE):
            frames = ds.read_frames(flat[lo:lo + RADIUS_SAMPLE])
            if frames is None:  # the file went away since the first block
                raise InputError("the bundle could not be read any more while measuring origins")
            yield lo, frames

    measured, disk_sum, n_sum = measure_blocks(prefetch(blocks(), 1), flat, roi.size)
    return measured.reshape(*roi.shape, 2), disk_sum, n_sum


def _local_frames(ds, roi: np.ndarray) -> np.ndarray | None:
    """The ``roi``'s frames read in this process when ``ds`` is a bundle it can open, else None."""
    from .dataset import DirectHDF5DataSet

    if not isinstance(ds, DirectHDF5DataSet):
        return None
    return ds.read_frames(np.flatnonzero(roi))


def beam_radius_for(settings, probe_radius: float) -> float:
    """The run's beam radius, or the margin on this scan's probe radius when it has none."""
    if settings.beam_radius is not None:
        return float(settings.beam_radius)
    if not np.isfinite(probe_radius):
        raise InputError("could not measure the probe radius", hint="set `beam_radius` (px)")
    return float(probe_radius * settings.beam_margin)


def check_bundle(run_dir: str | os.PathLike, path: str | os.PathLike) -> str:
    """Refuse a stem2eds bundle that ``stem2eds predict`` would refuse, or that needs transfer.

    Returns the scan's name: a bundle's own, else the file's stem.

    A bundle is opened as the stem2eds engine opens it first
    (:func:`~stem2eds.formats.bundle.open_bundle`: numeric patterns, sizes
    that fit in memory, no data in other files). That engine also resamples
    a scan from another camera length or detector binning onto the run's q
    grid (:mod:`stem2eds.preprocess.transfer`); the UDFs take the frames as
    recorded, so such a scan is refused here, where its calibration is
    known. Other formats carry no calibration this engine reads: LiberTEM's
    readers check them, and they are predicted as recorded.
    """
    from ..formats.bundle import open_bundle
    from ..predict.predictor import finished_run
    from ..preprocess.transfer import plan_transfer

    info, _ = finished_run(Path(run_dir))
    if not _is_bundle(Path(path)):
        return Path(path).stem
    with open_bundle(path) as scan:
        plan = plan_transfer(info.get("q_grid"), scan.calibration, scan.detector_shape)
        name = scan.name
    if plan is not None:
        raise InputError(f"the scan needs transfer onto the run's q grid ({plan.describe()}), "
                         "which the LiberTEM engine does not do", path=path,
                         hint="predict it with the stem2eds engine (the default), which resamples")
    return name


def check_dataset(ds, settings) -> None:
    """Refuse a dataset the run cannot predict (scan not 2D, other detector, bad binning)."""
    _nav_shape(ds)
    if len(ds.shape.sig) != 2:
        raise InputError(f"frames have {len(ds.shape.sig)} axes {tuple(ds.shape.sig)}, not 2",
                         hint="give the `scan_shape` (an MRC volume is read as one frame)")
    qx, qy = (int(v) for v in ds.shape.sig)
    f = int(settings.bin_factor)
    if qx % f or qy % f:
        raise InputError(f"the {qx}x{qy} detector is not binned by the run's bin factor {f}",
                         hint="predict scans from the training data's detector")
    if settings.detector_shape is not None and tuple(settings.detector_shape) != (qx, qy):
        raise InputError(f"detector is {qx}x{qy} but the run was trained on "
                         f"{settings.detector_shape[0]}x{settings.detector_shape[1]}",
                         hint="predict scans from the same detector setup")


def _nav_shape(ds) -> tuple[int, int]:
    nav = tuple(int(v) for v in ds.shape.nav)
    if len(nav) != 2:
        raise InputError(f"the scan has {len(nav)} navigation axes {nav}, not 2",
                         hint="give its `scan_shape` (Rx x Ry)")
    return nav  # type: ignore[return-value]


def predict_dataset(ctx, ds, run: str | os.PathLike, *, device: str = "cpu",
                    filtered: bool | None = None):
    """Predicted maps of a LiberTEM dataset: equal to ``stem2eds predict`` on the same frames.

    Parameters
    ----------
    ctx : libertem.api.Context
    ds : libertem DataSet (or a libertem-live acquisition of a finished scan)
    run : path-like
        Finished training run.
    device : {"cpu", "cuda", "auto"}
    filtered : bool, optional
        Filter the EDS maps (default: as the run says).

    Returns
    -------
    stem2eds.predict.predictor.Prediction
        Maps of the run's crop of the scan.
    """
    return _predict(ctx, ds, run, device, filtered, ood=False)[0]


def _predict(ctx, ds, run, device: str, filtered: bool | None, ood: bool):
    """:func:`predict_dataset`, and with ``ood`` the scan's OOD verdict (None without one)."""
    from ..features.normalise import whole_scans_only
    from ..formats.rundir import RunDir
    from ..predict.predictor import finished_run
    from .results import maps_from_results, maps_from_statistics, ood_from_results
    from .udf import PredictUDF, StatsUDF, cached_predictor, frames_method

    info, settings = finished_run(Path(run))
    check_dataset(ds, settings)
    origins = fit_dataset_origins(ctx, ds, settings)
    roi = crop_roi(settings, _nav_shape(ds))
    beam_radius = beam_radius_for(settings, origins.probe_radius)
    if whole_scans_only(info.get("model_params")):
        udf = StatsUDF(run, origins.fitted, beam_radius, device=device,
                       method=frames_method(ds, roi))
        res = ctx.run_udf(ds, udf, roi=roi)
        return maps_from_statistics(np.asarray(res["stats"].data), udf.predictor, origins.box,
                                    filtered), None
    # the OOD score, as the stem2eds engine gives it, where the run has one
    ood = ood and cached_predictor(run, device).fused and RunDir(Path(run)).ood_npz.is_file()
    udf = PredictUDF(run, origins.fitted, beam_radius, device=device, filtered=filtered,
                     method=frames_method(ds, roi), ood=ood)
    res = ctx.run_udf(ds, udf, roi=roi)
    pred = maps_from_results(res, udf.predictor, origins.box)
    return pred, (ood_from_results(res, udf.predictor, origins.box) if ood else None)


def predict_file(run_dir: str | os.PathLike, path: str | os.PathLike,
                 out: str | os.PathLike, *, input_type: str = "auto",
                 scan_shape: tuple[int, int] | None = None, scheduler: Any = None,
                 device: str = "cpu") -> Path:
    """``stem2eds predict --engine libertem``: a file LiberTEM reads in, a prediction file out.

    Parameters
    ----------
    run_dir : path-like
    path : path-like
        Scan in any format LiberTEM reads.
    out : path-like
        Prediction file to write (atomically).
    input_type : str
        LiberTEM file type, ``"auto"`` to detect.
    scan_shape : (Rx, Ry), optional
    scheduler : None, "local" or address
        Where the UDFs run (:func:`open_context`).
    device : {"cpu", "cuda", "auto"}

    Returns
    -------
    Path
        ``out``.
    """
    from .. import __version__
    from ..atomic import refuse_overwrite
    from ..predict.bundle import _filter_description
    from ..predict.scanning import refuse_run_outputs

    refuse_overwrite(out, path)
    refuse_run_outputs(out, run_dir)  # the run's own files are inputs too
    name = check_bundle(run_dir, path)
    with open_context(scheduler) as ctx:
        ds = load_dataset(ctx, path, input_type, scan_shape)
        pred, ood = _predict(ctx, ds, run_dir, device, None, ood=True)
        from .udf import cached_predictor

        predictor = cached_predictor(run_dir, device)
    attrs = {"scan_name": name, "model": predictor.model_name,
             "run_dir": str(Path(run_dir).resolve()), "stem2eds_version": __version__,
             "scan_shape": list(pred.scan_shape), "targets": list(predictor.targets),
             "source": str(Path(path).resolve()), "engine": "libertem",
             "eds_filter": _filter_description(predictor)}
    if ood is None:
        return pred.save(out, attrs=attrs)
    from ..predict.bundle import ood_attrs, warn_ood

    warn_ood(ood, name)
    return pred.save(out, attrs={**attrs, **ood_attrs(ood)}, extra={"ood": ood.positions})
