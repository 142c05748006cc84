"""The streaming driver: raw bundle -> preprocessed bundle, or preprocessed patterns.

Three passes over the patterns, never holding the 4D scan in memory:

1. measure the origin of every pattern (and the probe radius from the mean
   disk), then fit origin vs scan position;
2. centre, remove the beam, bin, scale every pattern and write it (and the
   virtual ADF image, for registration);
3. when the scale is not given, divide the written (binned, 16x smaller)
   patterns by the percentile found in pass 2.

The per-chunk work of passes 1 and 2 is in :mod:`stem2eds.preprocess.passes`
and runs on the executor chosen once per run
(:mod:`stem2eds.preprocess.executor`: threads here, or a Dask cluster); this
module fits, combines and writes. :func:`iter_preprocessed` runs passes 1-2
on any raw bundle with fixed settings, so prediction sees exactly what
training saw.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from ..formats.bundle import EDS, PixelCalibration, ScanBundle, create_bundle, open_bundle
from ..io.stream import iter_blocks
from .executor import Executor, open_executor
from .maps import check_crop
from .origin import OriginFit, disk_radius, find_origins, fit_origins, origin_problem
from .origin import sample_grid
from .output import normalise_in_place, write_calibration, write_maps
from .passes import measure_blocks, measure_chunk, process_chunk
from .patterns import TopValues, normalise
from .settings import EDS_UNREGISTERED, PreprocessSettings

#: Patterns the aperture radius of pass 1 is measured on (the first ones of
#: the region or of the sub-grid), whatever the block size: every pattern is
#: then measured the same way in preprocessing and at prediction.
RADIUS_SAMPLE = 256


def raw_calibration(scan: ScanBundle) -> PixelCalibration:
    """Pixel calibration of the input detector: undoes the binning recorded in a preprocessed bundle."""
    cal = scan.calibration
    if scan.kind == "preprocessed" and "raw_q_pixel_size" in scan.file.attrs:
        cal.q_pixel_size = float(scan.file.attrs["raw_q_pixel_size"])
    return cal


@dataclass
class OriginMeasurement:
    """Measured and fitted origins of a scan region.

    Attributes
    ----------
    measured : ndarray, shape (Rx', Ry', 2)
        NaN where no disk was found or (sub-grid measurement) not measured.
    fit : OriginFit
        ``fit.sampled`` marks the measured positions (None: all).
    probe_radius : float
        Disk radius (input px) at half maximum of the mean disk.
    """

    measured: np.ndarray
    fit: OriginFit
    probe_radius: float

    @property
    def fitted(self) -> np.ndarray:
        return self.fit.fitted


def measure_origins(scan: ScanBundle, settings: PreprocessSettings, batch: int = 256,
                    quiet: bool = True, client=None) -> OriginMeasurement:
    """Pass 1: origins in the (cropped) scan, the probe radius and the fit.

    With a smooth fit (plane, poly2) only the positions of a sub-grid of
    about ``settings.origin_sample`` positions are read and measured, here
    (:func:`stem2eds.preprocess.origin.sample_grid`; a small fraction of the
    scan); otherwise every pattern is, on the executor.

    Parameters
    ----------
    scan : ScanBundle
        A raw bundle, (Rx, Ry, Qx, Qy).
    settings : PreprocessSettings
        ``crop``, ``origin_fit`` and ``origin_sample`` are used.
    batch : int
        Patterns per block read.
    quiet : bool
        No progress output.
    client : Executor, dask.distributed.Client or str, optional
        Where every pattern is measured (see
        :func:`stem2eds.preprocess.executor.open_executor`); identical results.

    Returns
    -------
    OriginMeasurement
        ``measured`` and fitted origins of shape (Rx', Ry', 2) for the cropped
        region, and the probe radius.
    """
    box = check_crop(settings.crop, scan.scan_shape)
    shape = (box[1] - box[0], box[3] - box[2])
    grid = None
    if settings.origin_fit != "none":
        grid = sample_grid(shape, settings.origin_sample)
    if grid is None:
        with open_executor(client) as executor:
            measured, disk_sum, n_sum = _measure_all(scan, box, batch, quiet, executor)
        sampled = None
    else:
        measured, disk_sum, n_sum = _measure_grid(scan, box, *grid)
        sampled = np.zeros(shape, dtype=bool)
        sampled[np.ix_(*grid)] = True
    if n_sum == 0:
        raise InputError("no diffraction pattern has counts: cannot find the unscattered beam",
                         path=scan.path)
    probe_radius = disk_radius(disk_sum / n_sum, smooth=0.0 if n_sum >= 20 else 1.0)
    measured = measured.reshape(shape[0], shape[1], 2)
    try:
        fit = fit_origins(measured, settings.origin_fit, sampled=sampled)
    except ValueError as exc:
        raise InputError(str(exc), path=scan.path) from None
    problem = origin_problem(measured, fit, probe_radius)
    if problem:
        raise InputError(f"{problem}; the patterns cannot be centred", path=scan.path,
                         hint="check that the patterns show the direct beam, or `crop` to "
                              "the positions where they do")
    return OriginMeasurement(measured, fit, probe_radius)


def _measure_all(scan: ScanBundle, box, batch: int, quiet: bool, executor: Executor
                 ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Origins (flat, box order) of every pattern of the region, disk sum and count."""
    n = (box[1] - box[0]) * (box[3] - box[2])
    measured = np.full((n, 2), np.nan)
    disk_sum, n_sum = None, 0
    with contextlib.closing(iter_blocks(scan.diffraction, box, RADIUS_SAMPLE)) as blocks:
        _, sample = next(blocks)
    radius = find_origins(sample).probe_radius
    del sample
    for _, chunks in executor.map(measure_chunk, scan, box, (radius,), batch=batch,
                                  description="finding origins", quiet=quiet):
        for start, found in chunks:
            measured[start:start + len(found.origins)] = found.origins
            disk_sum = found.disk_sum if disk_sum is None else disk_sum + found.disk_sum
            n_sum += found.n_summed
    return measured, disk_sum, n_sum


def _measure_grid(scan: ScanBundle, box, rows: np.ndarray, cols: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Origins (flat, box order; NaN off the grid) of the sub-grid ``rows x cols`` of the region.

    The aperture radius comes from the first :data:`RADIUS_SAMPLE` grid
    positions, which spread over several scan rows.
    """
    r0, r1, c0, c1 = box
    width = c1 - c0
    local = (rows[:, None] * width + cols[None, :]).ravel()  # ascending
    in_file = ((rows[:, None] + r0) * scan.scan_shape[1] + (cols[None, :] + c0)).ravel()
    return measure_blocks(iter_blocks(scan.diffraction, flat=in_file, batch=RADIUS_SAMPLE,
                                      read_ahead=2), local, (r1 - r0) * width)


def _resolve_beam_radius(settings: PreprocessSettings, probe_radius: float) -> float:
    if settings.beam_radius is not None:
        return float(settings.beam_radius)
    if not np.isfinite(probe_radius):
        raise InputError("could not measure the probe radius", hint="set `beam_radius` (px)")
    return float(probe_radius * settings.beam_margin)


def _processed(scan: ScanBundle, settings: PreprocessSettings, origins: np.ndarray,
               beam_radius: float, batch: int, quiet: bool, executor: Executor,
               adf: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Pass 2: (start, unscaled processed patterns) in scan order; fills ``adf`` (flat) if given.

    Blocks are as the executor hands them out (:meth:`Executor.rebatch`):
    ``batch`` patterns from threads, one task's rows from Dask.
    """
    box = check_crop(settings.crop, scan.scan_shape)
    flat_origins = np.ascontiguousarray(origins.reshape(-1, 2))
    args = (flat_origins, beam_radius, settings, adf is not None)

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        for start, chunks in executor.map(process_chunk, scan, box, args, batch=batch,
                                          description="preprocessing patterns", quiet=quiet):
            if adf is not None:
                for first, (_, signal) in chunks:
                    adf[first:first + len(signal)] = signal
                values = [result[0] for _, result in chunks]
            else:
                values = [result for _, result in chunks]
            yield start, np.concatenate(values) if len(values) > 1 else values[0]

    yield from executor.rebatch(blocks(), batch)


def iter_preprocessed(scan: ScanBundle, settings: PreprocessSettings, batch: int = 1024,
                      origins: np.ndarray | None = None, client=None
                      ) -> Iterator[tuple[int, np.ndarray]]:
    """Stream the preprocessed patterns of a RAW bundle without writing a file.

    The origins of this scan are measured and fitted first (on a sub-grid
    for a smooth fit, see ``settings.origin_sample``; descan differs between
    scans), then every pattern goes through the same functions as in
    :func:`preprocess_bundle`, with the given scale.

    Parameters
    ----------
    scan : ScanBundle
        A raw bundle (Rx, Ry, Qx, Qy).
    settings : PreprocessSettings
        Resolved settings (``scale`` set, typically those of the training
        data); a missing ``beam_radius`` is measured on this scan.
    batch : int
        Patterns per block.
    origins : ndarray, shape (Rx', Ry', 2), optional
        Origins to use instead of measuring them.
    client : dask.distributed.Client, Executor or str, optional
        Where both passes run (see
        :func:`stem2eds.preprocess.executor.open_executor`); on a Dask
        cluster each block is one task's block of scan rows (the values are
        identical).

    Yields
    ------
    start : int
        Flat index in the cropped scan of the block's first pattern.
    patterns : ndarray, shape (n, Qx/bin, Qy/bin), float32 in [0, ceiling] (``normalise``)
    """
    if settings.scale is None:
        raise InputError("preprocessing scale is not set",
                         hint="use the settings of the training bundle (stem2eds preprocess "
                              "writes them), or set `scale`")
    with open_executor(client) as executor:
        origins, beam_radius = resolve_origins(scan, settings, batch, origins, executor)
        for start, values in _processed(scan, settings, origins, beam_radius, batch, True,
                                        executor):
            yield start, normalise(values, settings.scale, settings.ceiling_reference)


def resolve_origins(scan: ScanBundle, settings: PreprocessSettings, batch: int = 1024,
                    origins: np.ndarray | None = None, client=None
                    ) -> tuple[np.ndarray, float]:
    """The fitted origins and the beam radius a RAW scan is processed with.

    What :func:`iter_preprocessed` centres with, for callers that process the
    raw patterns themselves (the fused ring features,
    :mod:`stem2eds.features`): origins measured and fitted on this scan as
    in :func:`measure_origins` (unless given), and ``settings.beam_radius``
    or, when unset, the probe radius measured here times ``beam_margin``.

    Returns
    -------
    origins : ndarray, shape (Rx', Ry', 2)
        Fitted origins of the cropped region, input detector px.
    beam_radius : float
        Input detector px.
    """
    _check_detector(scan, settings)
    beam_radius = settings.beam_radius
    if origins is None or beam_radius is None:
        found = measure_origins(scan, settings, batch, client=client)
        origins = found.fitted if origins is None else origins
        beam_radius = _resolve_beam_radius(settings, found.probe_radius)
    return origins, float(beam_radius)


def _check_detector(scan: ScanBundle, settings: PreprocessSettings) -> None:
    qx, qy = scan.detector_shape
    from .patterns import check_bin_factor

    check_bin_factor(int(settings.bin_factor), (qx, qy), scan.path)
    if settings.detector_shape is not None and tuple(settings.detector_shape) != (qx, qy):
        raise InputError(f"detector is {qx}x{qy} but the settings were made for "
                         f"{settings.detector_shape[0]}x{settings.detector_shape[1]}",
                         path=scan.path, hint="preprocess scans from the same detector setup")


def preprocess_bundle(src: str | os.PathLike, out: str | os.PathLike,
                      settings: PreprocessSettings | None = None, *, quiet: bool = False,
                      register: bool = False, batch: int = 256,
                      scheduler=None) -> PreprocessSettings:
    """Preprocess a raw bundle into a preprocessed bundle (streamed, atomic).

    Parameters
    ----------
    src : path-like
        Raw bundle (``kind = "raw"``).
    out : path-like
        Output bundle (``kind = "preprocessed"``); only written on success.
    settings : PreprocessSettings, optional
        Defaults to ``PreprocessSettings()``.
    quiet : bool
        No progress output.
    register : bool
        Resample ``eds_unregistered``/``haadf_unregistered`` maps onto the
        scan grid (see :mod:`stem2eds.preprocess.register`) instead of using
        ``eds``/``haadf``.
    batch : int
        Patterns per streamed block (memory ~ ``batch * Qx * Qy * 40`` bytes).
    scheduler : str or dask.distributed.Client, optional
        Run the two passes over the patterns on a Dask cluster (``"local"``
        for a local cluster of one worker process per core, or a scheduler
        address) or an :class:`~stem2eds.preprocess.executor.Executor`; see
        :func:`stem2eds.preprocess.executor.open_executor`.

    Returns
    -------
    PreprocessSettings
        The settings with scale, beam radius, probe radius and detector shape
        filled in, as stored in the output's ``preprocess`` attribute. What
        was measured (origins and their fit, registration offset) is in the
        output bundle; :func:`summarise` reads it back.
    """
    from ..atomic import refuse_overwrite, refuse_run_file

    refuse_overwrite(out, src)
    refuse_run_file(out)
    settings = PreprocessSettings(**asdict(settings or PreprocessSettings()))
    if scheduler is not None and register:
        raise InputError("registration (`register`) is not available with a Dask `scheduler`",
                         hint="register without `scheduler`")
    with open_executor(scheduler) as executor:
        return _preprocess_bundle(src, out, settings, quiet, register, batch, executor)


def _preprocess_bundle(src, out, settings: PreprocessSettings, quiet: bool, register: bool,
                       batch: int, executor: Executor) -> PreprocessSettings:
    with open_bundle(src) as scan:
        box = _check_raw(scan, settings, register)
        found = measure_origins(scan, settings, batch, quiet, client=executor)
        settings.beam_radius = _resolve_beam_radius(settings, found.probe_radius)
        settings.probe_radius = float(found.probe_radius)
        settings.detector_shape = tuple(scan.detector_shape)
        shape = (box[1] - box[0], box[3] - box[2])
        adf = np.zeros(shape[0] * shape[1]) if register else None
        with _create_output(scan, src, out, settings, shape) as builder:
            _write_patterns(scan, builder, settings, found.fitted, batch, quiet, executor, adf)
            write_maps(scan, builder, settings, box, register, adf)
            write_calibration(builder, found, settings)
            builder.set_attrs(preprocess=settings.to_dict(),
                              raw_q_pixel_size=float(scan.calibration.q_pixel_size))
    return settings


def _check_raw(scan: ScanBundle, settings: PreprocessSettings, register: bool
               ) -> tuple[int, int, int, int]:
    """Refuse what would fail late (after the long pass over the patterns); the crop box."""
    if scan.kind != "raw":
        raise InputError(f"bundle is {scan.kind!r}, expected a raw bundle", path=scan.path,
                         hint="preprocess the raw bundle made by 'stem2eds convert' "
                              "or 'stem2eds simulate'")
    _check_detector(scan, settings)
    box = check_crop(settings.crop, scan.scan_shape)
    if register:
        from .register import load_unregistered

        load_unregistered(scan)  # check the maps before the long pass over the patterns
    if not register and EDS not in scan.file and EDS_UNREGISTERED in scan.file:
        raise InputError("EDS maps are not on the scan grid (eds_unregistered)",
                         path=scan.path, hint="register them (`register`)")
    return box


def _create_output(scan: ScanBundle, src, out, settings: PreprocessSettings,
                   shape: tuple[int, int]):
    """The preprocessed bundle's builder: binned detector, pixel sizes, provenance."""
    qx, qy = scan.detector_shape
    qb = (qx // settings.bin_factor, qy // settings.bin_factor)
    raw_cal = scan.calibration
    cal = PixelCalibration(**asdict(raw_cal))
    cal.q_pixel_size = raw_cal.q_pixel_size * settings.bin_factor
    prov = {"command": "preprocess", "source": str(Path(src).resolve()),
            "source_scan": scan.name, "source_provenance": scan.provenance}
    return create_bundle(out, scan_shape=shape, detector_shape=qb, dtype=np.float32,
                         elements=scan.elements, calibration=cal, scan_name=scan.name,
                         provenance=prov, kind="preprocessed")


def _write_patterns(scan: ScanBundle, builder, settings: PreprocessSettings,
                    origins: np.ndarray, batch: int, quiet: bool, executor: Executor,
                    adf: np.ndarray | None) -> None:
    """Passes 2 and 3 into the builder.

    Sets ``settings.scale`` when it was not given, and with it
    ``settings.dose_reference`` (the median pattern mean in units of the
    scale) when ``dose_ceiling`` is on.
    """
    n_values = int(np.prod(builder.diffraction.shape))
    top = TopValues(n_values, settings.scale_percentile) if settings.scale is None else None
    means = []  # each pattern's mean processed value, for dose_reference
    for start, values in _processed(scan, settings, origins, settings.beam_radius, batch, quiet,
                                    executor, adf):
        if top is None:
            builder.write_patterns(start, normalise(values, settings.scale,
                                                    settings.ceiling_reference))
        else:
            top.add(values)
            means.append(values.mean(axis=(-2, -1), dtype=np.float64).ravel())
            builder.write_patterns(start, values)
    if top is None:
        return
    scale = top.result()
    if not scale > 0:
        raise InputError(f"the {settings.scale_percentile} percentile of the "
                         "processed patterns is 0: nothing left to scale", path=scan.path,
                         hint="lower `beam_radius` or check the data")
    settings.scale = scale
    settings.dose_reference = float(np.median(np.concatenate(means)) / scale) \
        if settings.dose_ceiling else None
    normalise_in_place(builder.diffraction, scale, batch, settings.ceiling_reference)
