"""The scan side of prediction: transfer onto the run's q grid, the raw stream, placement.

Module-level helpers of :mod:`stem2eds.predict.predictor` that know scans and
settings but not the model: :func:`transferred` (another camera length or
binning resampled onto the run's grid), the raw stream the predictor reads
ahead, how much to read ahead, the crop and the maps' calibration attributes,
and the torch device by name.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import InputError
from ..formats.bundle import ScanBundle
from ..formats.rundir import RunDir

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def transferred(scan: ScanBundle, info: dict[str, Any], transfer: bool = True,
                distributed: bool = False):
    """The raw scan on the run's q grid (``q_grid`` of ``run.json``), or the scan as it is.

    Another camera length or detector binning is resampled onto the run's
    grid before preprocessing (:mod:`stem2eds.preprocess.transfer`); a scan
    of the run's own setup, a preprocessed bundle, a run made before q grids
    were recorded, or ``transfer=False`` yield ``scan`` itself.

    Raises
    ------
    InputError
        From :func:`~stem2eds.preprocess.transfer.plan_transfer` (uncalibrated
        or uncovered setups), or when a scan needing transfer is preprocessed
        on a Dask cluster (its workers read the file itself).
    """
    from ..preprocess.transfer import TransferredScan, plan_transfer

    plan = plan_transfer(info.get("q_grid"), scan.calibration, scan.detector_shape) \
        if transfer and scan.kind == "raw" else None
    if plan is None:
        yield scan
        return
    if distributed:
        raise InputError(f"the scan needs transfer ({plan.describe()}), which runs here, "
                         "not on a Dask cluster", path=scan.path,
                         hint="predict without `scheduler`")
    with TransferredScan(scan, plan) as seen:
        yield seen


def _raw_stream(scan: ScanBundle, settings, batch: int, client=None, forked=None):
    """(start, raw block) of a raw bundle with a run's settings, origins fitted first.

    Without a Dask ``client``: raw blocks with their fitted origins
    (:func:`stem2eds.features.stream.iter_raw_blocks`), read here. With a
    client: :class:`~stem2eds.features.cluster.ClusterBlock` s, one per
    task's block of scan rows, whose patterns stay on the workers
    (:func:`stem2eds.features.cluster.iter_cluster_blocks`). Either way
    :meth:`Predictor._outputs` asks each block for what the model needs
    once it knows the model: ring statistics (fused), preprocessed patterns,
    or the raw patterns; on a cluster the workers compute it and return only
    that (for ring models a few hundred floats per pattern). This starts
    before the model is built (:func:`~stem2eds.predict.bundle.predict_bundle`),
    the origins possibly by a ``forked`` child
    (:class:`~stem2eds.preprocess.forked.ForkedOrigins`).
    """
    if client is None:
        from ..features.stream import iter_raw_blocks

        return iter_raw_blocks(scan, settings, batch, forked=forked)
    from ..features.cluster import iter_cluster_blocks

    return iter_cluster_blocks(scan, settings, batch, client)


@contextlib.contextmanager
def started_stream(scan: ScanBundle, settings, batch: int, client=None, fork: bool = False):
    """A raw scan's blocks (:func:`_raw_stream`) made from now on, in the background.

    The origins are fitted and the first blocks read (background threads; on
    a cluster, its tasks once the model asks) while the caller imports torch
    and builds the model; with ``fork``, the origins are measured by a child
    process (:func:`stem2eds.preprocess.forked.fork_origins`). Yields the
    :class:`~stem2eds.io.stream.Prefetcher`, or None for a preprocessed
    scan; stops both on exit.
    """
    if scan.kind != "raw":
        yield None
        return
    from ..io.stream import Prefetcher

    _cropped_shape(scan.scan_shape, settings.crop, scan.path)
    forked = None
    if fork and client is None:  # before any thread of this process starts
        from ..preprocess.forked import fork_origins

        forked = fork_origins(scan, settings, batch)
    early = None
    try:
        early = Prefetcher(_raw_stream(scan, settings, batch, client, forked),
                           _read_ahead(batch, settings, scan))
        yield early
    finally:
        if forked is not None:  # first: the prefetch thread may be waiting for it
            forked.close()
        if early is not None:
            early.close()


def _read_ahead(batch: int, settings, scan: ScanBundle) -> int:
    """Blocks to buffer: about :data:`READ_AHEAD_BYTES` of raw blocks, at least 2."""
    from ..features.stream import RAW_BLOCK

    qx, qy = scan.detector_shape
    block_bytes = min(batch, RAW_BLOCK) * qx * qy * 2
    return int(max(2, min(64, READ_AHEAD_BYTES // max(block_bytes, 1))))


#: Memory for preprocessed batches made ahead of the model (they pile up
#: while torch loads at start-up, then the queue runs at the model's pace).
READ_AHEAD_BYTES = 128 * 2**20


def scan_step_nm(calibration) -> float | None:
    """The scan step of a :class:`~stem2eds.formats.bundle.PixelCalibration` in nm, or None."""
    if calibration.r_pixel_unit != "nm" or not np.isfinite(calibration.r_pixel_size):
        return None
    return float(calibration.r_pixel_size)


def scan_calibration_attrs(predictor, scan) -> dict[str, Any]:
    """Prediction-file attributes placing the maps on the scan: ``scan_step_nm``, ``scan_offset``."""
    attrs: dict[str, Any] = {"scan_offset": list(predictor._offset(scan))}
    step = scan_step_nm(scan.calibration)
    if step is not None:
        attrs["scan_step_nm"] = step
    return attrs


def _cropped_shape(scan_shape: tuple[int, int], crop: Sequence[int] | None,
                   path) -> tuple[int, int]:
    if crop is None:
        return tuple(scan_shape)  # type: ignore[return-value]
    r0, r1, c0, c1 = (int(v) for v in crop)
    if not (0 <= r0 < r1 <= scan_shape[0] and 0 <= c0 < c1 <= scan_shape[1]):
        raise InputError(f"the run's crop {r0}:{r1},{c0}:{c1} does not fit the "
                         f"{scan_shape[0]}x{scan_shape[1]} scan", path=path,
                         hint="predict scans of the training scans' size")
    return r1 - r0, c1 - c0


def _device(name: str) -> "torch.device":
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError('device="cuda" but no CUDA GPU is available', hint='use device="cpu"')
    return torch.device(name)


def refuse_run_outputs(out: str | os.PathLike, run_dir: str | os.PathLike) -> None:
    """Refuse an output that is, or lies in, the training run (whose files are inputs)."""
    out = Path(out).resolve()
    for product in (Path(run_dir), *RunDir(Path(run_dir)).products()):
        if product.resolve() == out or product.resolve() in out.parents:
            raise InputError("`out` lies in the training run, whose files are inputs",
                             path=out, hint="write the prediction elsewhere")


def check_preprocessed(scan: ScanBundle, settings) -> None:
    """Refuse a preprocessed bundle made with other settings than the run's ``settings``."""
    stored = scan.json_attr("preprocess", {}) or {}
    if not isinstance(stored, dict) or "bin_factor" not in stored:
        raise InputError("bundle says it is preprocessed but does not record its preprocessing",
                         path=scan.path, hint="pass the raw bundle; predict preprocesses it itself")
    mine = settings.to_dict()
    keys = ("bin_factor", "scaling", "scale", "crop", "origin_fit", "dose_ceiling",
            "dose_reference")
    diff = [k for k in keys if k in stored and stored[k] != mine.get(k)]
    if diff:
        raise InputError("bundle was preprocessed with other settings than the run "
                         f"({', '.join(diff)} differ)", path=scan.path,
                         hint="pass the raw bundle; predict preprocesses it itself")
