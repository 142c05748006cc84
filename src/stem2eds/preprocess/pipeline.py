"""Settings and the streaming driver: raw bundle -> preprocessed bundle.

Three passes over the patterns, never holding the 4D scan in memory:

1. measure the origin of every pattern (and the probe radius from the mean
   disk), then fit origin vs scan position;
2. centre, remove the beam, bin, scale every pattern and write it (and the
   virtual ADF image, for registration);
3. when the scale is not given, divide the written (binned, 16x smaller)
   patterns by the percentile found in pass 2.

:func:`iter_preprocessed` runs passes 1-2 on any raw bundle with fixed
settings, so prediction sees exactly what training saw.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..formats.bundle import (CALIBRATION, EDS, EDS_RAW, HAADF, TRUTH, PixelCalibration,
                              ScanBundle, create_bundle, open_bundle)
from ..errors import InputError
from ..progress import track
from .maps import EDS_FILTERS, check_crop, crop_maps, filter_maps, preprocess_maps
from .origin import OriginFit, disk_radius, find_origins, fit_origins, sample_grid
from .patterns import (CENTRINGS, SCALINGS, TopValues, centre_patterns, finish_patterns,
                       normalise, process_patterns)

ORIGIN_FITS = ("plane", "poly2", "none")
#: Patterns transformed at once inside a read block: bounds the float32 work
#: arrays (~10 copies of the chunk) whatever block size the caller reads.
WORK_CHUNK = 256
#: Most patterns read in one block by pass 2 (64 MB of 256x256 uint16).
READ_BLOCK = 2 * WORK_CHUNK
#: Default of :attr:`PreprocessSettings.origin_sample`.
ORIGIN_SAMPLE = 1024
#: Threads transforming work chunks at once in pass 2 (numpy and OpenCV
#: release the GIL, so they run on separate cores).
PROCESS_THREADS = max(1, min(4, os.cpu_count() or 1))
#: Groups of a raw bundle holding maps that are not yet on the scan grid.
EDS_UNREGISTERED = "eds_unregistered"
HAADF_UNREGISTERED = "haadf_unregistered"


@dataclass
class PreprocessSettings:
    """Every choice of the preprocessing, stored in the output and reused at prediction.

    Attributes
    ----------
    bin_factor : int
        Detector binning (sum of ``f x f`` pixels); 4 turns 256x256 into 64x64.
    scaling : {"none", "sqrt", "log"}
        Intensity scaling after binning (log is ``log1p`` of counts).
    beam_radius : float or None
        Radius of the zeroed central disk in input detector px; None:
        ``probe_radius * beam_margin``.
    beam_margin : float
        Margin on the measured probe radius for the default beam radius.
    origin_fit : {"plane", "poly2", "none"}
        Model of the origin vs scan position (descan); ``none`` uses each
        pattern's measured origin.
    origin_sample : int
        For a smooth ``origin_fit`` (plane, poly2), measure the origin on a
        sub-grid of about this many positions spread over the scan region
        (:func:`stem2eds.preprocess.origin.sample_grid`) instead of on every
        pattern: the fitted origins agree to about 0.01 px and the pass over
        the patterns for origins shrinks to that many reads. 0, ``none``, or
        a region with no more positions measure every pattern. Settings
        stored before this option existed load with the default.
    crop : (r0, r1, c0, c1) or None
        Scan region kept (end exclusive); None keeps the whole scan.
    eds_filter : {"gaussian", "median", "none"}
    eds_kernel : int
        Filter window (odd, scan px); 7 is the paper's 7x7 Gaussian.
    eds_sigma : float or None
        Gaussian sigma in scan px; None derives it from the kernel (OpenCV).
    scale : float or None
        Divisor mapping processed values into [0, 1]; None fits it on this
        scan as the ``scale_percentile`` of the processed values.
    scale_percentile : float
    probe_radius : float or None
        Measured disk radius (input px); filled in by preprocessing.
    detector_shape : (Qx, Qy) or None
        Input detector; filled in by preprocessing.
    centring : {"binned", "full"}
        Shift patterns onto the detector centre after binning (fast, default)
        or at the input resolution (see
        :func:`stem2eds.preprocess.patterns.process_patterns`).
    """

    bin_factor: int = 4
    scaling: str = "none"
    beam_radius: float | None = None
    beam_margin: float = 1.25
    origin_fit: str = "plane"
    origin_sample: int = ORIGIN_SAMPLE
    crop: tuple[int, int, int, int] | None = None
    eds_filter: str = "gaussian"
    eds_kernel: int = 7
    eds_sigma: float | None = None
    scale: float | None = None
    scale_percentile: float = 99.9
    probe_radius: float | None = None
    detector_shape: tuple[int, int] | None = None
    centring: str = "binned"

    def __post_init__(self) -> None:
        for name in ("bin_factor", "eds_kernel", "origin_sample"):
            value = getattr(self, name)
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise InputError(f"{name} must be an integer, got {value!r}")
            setattr(self, name, int(float(value)))
        if self.crop is not None:
            self.crop = tuple(int(v) for v in self.crop)  # type: ignore[assignment]
        if self.detector_shape is not None:
            self.detector_shape = tuple(int(v) for v in self.detector_shape)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise InputError for impossible values."""
        if int(self.bin_factor) < 1:
            raise InputError(f"bin factor must be >= 1, got {self.bin_factor}")
        for what, value, choices in (("scaling", self.scaling, SCALINGS),
                                     ("centring", self.centring, CENTRINGS),
                                     ("origin fit", self.origin_fit, ORIGIN_FITS),
                                     ("EDS filter", self.eds_filter, EDS_FILTERS)):
            if value not in choices:
                raise InputError(f"unknown {what} {value!r}",
                                 hint=f"choose one of {', '.join(choices)}")
        if int(self.origin_sample) < 0:
            raise InputError(f"origin sample must be >= 0 (0: every position), "
                             f"got {self.origin_sample}")
        if int(self.eds_kernel) < 1 or int(self.eds_kernel) % 2 == 0:
            raise InputError(f"EDS filter kernel must be odd and positive, got {self.eds_kernel}")
        if self.beam_radius is not None and self.beam_radius < 0:
            raise InputError(f"beam radius must be >= 0, got {self.beam_radius}")
        if self.scale is not None and not self.scale > 0:
            raise InputError(f"scale must be positive, got {self.scale}")
        if self.crop is not None and len(self.crop) != 4:
            raise InputError(f"crop must be (r0, r1, c0, c1), got {self.crop}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        out = asdict(self)
        for key in ("crop", "detector_shape"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreprocessSettings":
        """Inverse of :meth:`to_dict`; unknown keys are an InputError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown preprocessing setting(s) {', '.join(unknown)}")
        return cls(**dict(data))

    @property
    def resolved(self) -> bool:
        """True when scale and beam radius are known (what prediction needs)."""
        return self.scale is not None and self.beam_radius is not None


def load_settings(path: str | os.PathLike) -> PreprocessSettings:
    """Settings from a JSON file or from a preprocessed bundle's ``preprocess`` attribute."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such settings file", path=p)
    if p.suffix.lower() in (".h5", ".hdf5"):
        with open_bundle(p) as scan:
            data = scan.json_attr("preprocess")
        if data is None:
            raise InputError("bundle has no preprocessing settings", path=p,
                             hint="pass a bundle written by 'stem2eds preprocess'")
        return PreprocessSettings.from_dict(data)
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not a JSON settings file ({exc})", path=p) from None
    if not isinstance(data, dict):
        raise InputError("settings JSON must be an object", path=p)
    # a bare settings object, or one nested as in a training run's
    # preprocessed/settings.json ({"sources": ..., "settings": ...})
    for key in ("preprocess", "settings"):
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    return PreprocessSettings.from_dict(data)


def raw_calibration(scan: ScanBundle) -> PixelCalibration:
    """Pixel calibration of the input detector: undoes the binning recorded in a preprocessed bundle."""
    cal = scan.calibration
    if scan.kind == "preprocessed" and "raw_q_pixel_size" in scan.file.attrs:
        cal.q_pixel_size = float(scan.file.attrs["raw_q_pixel_size"])
    return cal


# -- streaming ---------------------------------------------------------------

def iter_region(scan: ScanBundle, crop=None, batch: int = 256,
                read_ahead: int = 2) -> Iterator[tuple[int, np.ndarray]]:
    """Stream the patterns of a scan region in C order, whole region rows at a time.

    Blocks are read by :class:`stem2eds.io.stream.PatternReader` (direct reads
    of uncompressed chunks) in a background thread ``read_ahead`` blocks
    ahead of the caller, so reading overlaps with processing. Each block is
    a new array the caller may keep.

    Parameters
    ----------
    scan : ScanBundle
        (Rx, Ry, Qx, Qy) patterns.
    crop : (r0, r1, c0, c1) or None
    batch : int
        Patterns per block (whole region rows when ``batch`` >= the region's width).
    read_ahead : int
        Blocks read ahead in a background thread; 0 reads in the caller's thread.

    Yields
    ------
    start : int
        Flat index in the cropped scan of the first pattern.
    patterns : ndarray, shape (n, Qx, Qy)
    """
    from ..io.stream import PatternReader, prefetch

    box = check_crop(crop, scan.scan_shape)
    reader = PatternReader(scan.diffraction)
    blocks = _read_blocks(reader, box, scan.scan_shape[1], batch)
    try:
        yield from (prefetch(blocks, read_ahead) if read_ahead > 0 else blocks)
    finally:
        reader.close()


def _read_blocks(reader, box, ry: int, batch: int) -> Iterator[tuple[int, np.ndarray]]:
    r0, r1, c0, c1 = box
    width = c1 - c0
    cols = np.arange(c0, c1)
    if batch >= width:
        rows = batch // width
        for i in range(r0, r1, rows):
            flat = (np.arange(i, min(i + rows, r1))[:, None] * ry + cols).ravel()
            yield (i - r0) * width, reader.read(flat)
    else:
        for i in range(r0, r1):
            for j in range(c0, c1, batch):
                flat = i * ry + np.arange(j, min(j + batch, c1))
                yield (i - r0) * width + (j - c0), reader.read(flat)


def _n_batches(crop_box, batch: int) -> int:
    r0, r1, c0, c1 = crop_box
    width = c1 - c0
    if batch >= width:
        return -(-(r1 - r0) // (batch // width))
    return (r1 - r0) * -(-width // batch)


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
    about ``settings.origin_sample`` positions are read and measured
    (:func:`stem2eds.preprocess.origin.sample_grid`); otherwise every
    pattern is. ``client`` (a ``dask.distributed.Client``) measures blocks
    of scan rows on its workers instead, with identical results; a
    sub-grid is measured here (it is a small fraction of the scan).
    """
    box = check_crop(settings.crop, scan.scan_shape)
    shape = (box[1] - box[0], box[3] - box[2])
    grid = None
    if settings.origin_fit != "none":
        grid = sample_grid(shape, settings.origin_sample)
    if grid is None:
        measured, disk_sum, n_sum = _measure_all(scan, box, batch, quiet, client)
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
    return OriginMeasurement(measured, fit, probe_radius)


def _measure_all(scan: ScanBundle, box, batch: int, quiet: bool, client
                 ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Origins (flat, box order) of every pattern of the region, disk sum and count."""
    n = (box[1] - box[0]) * (box[3] - box[2])
    measured = np.full((n, 2), np.nan)
    disk_sum, n_sum = None, 0
    # The aperture radius comes from the first rows (at most 256 patterns,
    # whatever ``batch`` is), so every pattern is measured the same way in
    # preprocessing and at prediction, whatever block it falls in.
    _, sample = next(iter_region(scan, box, 256))
    radius = find_origins(sample).probe_radius
    del sample
    if client is not None:
        from .distributed import measure_origins_distributed

        return measure_origins_distributed(client, scan, box, radius)
    for start, patterns in track(iter_region(scan, box, batch), total=_n_batches(box, batch),
                                 description="finding origins", quiet=quiet):
        for lo in range(0, len(patterns), WORK_CHUNK):
            found = find_origins(patterns[lo:lo + WORK_CHUNK], radius)
            measured[start + lo:start + lo + len(found.origins)] = found.origins
            disk_sum = found.disk_sum if disk_sum is None else disk_sum + found.disk_sum
            n_sum += found.n_summed
    return measured, disk_sum, n_sum


def _measure_grid(scan: ScanBundle, box, rows: np.ndarray, cols: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Origins (flat, box order; NaN off the grid) of the sub-grid ``rows x cols`` of the region.

    The aperture radius comes from the first (at most) 256 grid positions,
    which spread over several scan rows.
    """
    from ..io.stream import PatternReader, prefetch

    r0, r1, c0, c1 = box
    width = c1 - c0
    local = (rows[:, None] * width + cols[None, :]).ravel()  # ascending
    in_file = ((rows[:, None] + r0) * scan.scan_shape[1] + (cols[None, :] + c0)).ravel()
    measured = np.full(((r1 - r0) * width, 2), np.nan)
    disk_sum, n_sum, radius = None, 0, None
    reader = PatternReader(scan.diffraction)

    def blocks():
        for lo in range(0, len(local), WORK_CHUNK):
            yield lo, reader.read(in_file[lo:lo + WORK_CHUNK])

    try:
        for lo, patterns in prefetch(blocks(), 2):
            if radius is None:
                radius = find_origins(patterns).probe_radius
            found = find_origins(patterns, radius)
            measured[local[lo:lo + len(patterns)]] = found.origins
            disk_sum = found.disk_sum if disk_sum is None else disk_sum + found.disk_sum
            n_sum += found.n_summed
    finally:
        reader.close()
    return measured, disk_sum, n_sum


def _resolve_beam_radius(settings: PreprocessSettings, probe_radius: float) -> float:
    if settings.beam_radius is not None:
        return float(settings.beam_radius)
    if not np.isfinite(probe_radius):
        raise InputError("could not measure the probe radius", hint="pass --beam-radius PX")
    return float(probe_radius * settings.beam_margin)


def _processed_batches(scan: ScanBundle, settings: PreprocessSettings, origins: np.ndarray,
                       beam_radius: float, batch: int, quiet: bool, adf: np.ndarray | None = None,
                       client=None, threads: int | None = None
                       ) -> Iterator[tuple[int, np.ndarray]]:
    """Pass 2: (start, unscaled processed patterns); fills ``adf`` (flat) when given.

    Blocks of ``batch`` patterns are read ahead in a background thread and
    cut into work chunks of :data:`WORK_CHUNK` patterns, which ``threads``
    threads (default :data:`PROCESS_THREADS`) transform at once; blocks of
    ``batch`` patterns come out in scan order. With a Dask ``client`` the
    blocks come from its workers, in any order.
    """
    box = check_crop(settings.crop, scan.scan_shape)
    if client is not None:
        from .distributed import processed_distributed

        if adf is not None:
            raise InputError("registration (--register) is not available with --scheduler",
                             hint="register without --scheduler")
        yield from processed_distributed(client, scan, settings, origins, beam_radius, box)
        return
    flat_origins = origins.reshape(-1, 2)
    qx, qy = scan.detector_shape
    f = int(settings.bin_factor)
    if adf is not None:
        from .register import annular_sum

    def transform(first: int, chunk: np.ndarray) -> np.ndarray:
        chunk_origins = flat_origins[first:first + len(chunk)]
        if adf is None:
            return process_patterns(chunk, chunk_origins, beam_radius, f, settings.scaling,
                                    settings.centring)
        # registration also needs the virtual ADF of the centred counts
        if settings.centring == "full":
            centred = centre_patterns(chunk, chunk_origins)
            adf[first:first + len(chunk)] = annular_sum(centred, beam_radius, min(qx, qy) / 2)
            return finish_patterns(centred, beam_radius, f, settings.scaling)
        from .patterns import apply_scaling, centre_binned

        centred = centre_binned(chunk, chunk_origins, beam_radius, f)
        adf[first:first + len(chunk)] = annular_sum(centred, beam_radius / f,
                                                    min(qx, qy) / (2 * f))
        return apply_scaling(centred, settings.scaling).astype(np.float32, copy=False)

    # raw blocks of at most READ_BLOCK patterns bound the memory of the
    # read-ahead whatever ``batch`` is; outputs are regrouped into ``batch``
    read = min(batch, READ_BLOCK)

    def chunks():
        for start, patterns in track(iter_region(scan, box, read), total=_n_batches(box, read),
                                     description="preprocessing patterns", quiet=quiet):
            for lo in range(0, len(patterns), WORK_CHUNK):
                yield None, None, start + lo, patterns[lo:lo + WORK_CHUNK]

    done: list[np.ndarray] = []
    first_done, n_done = 0, 0
    threads = PROCESS_THREADS if threads is None else threads
    for (_, _, first, _), values in _ordered_map(transform, chunks(), threads):
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


def _ordered_map(fn, items: Iterator[tuple], threads: int) -> Iterator[tuple[tuple, Any]]:
    """``(item, fn(*item[2:]))`` for each item, computed by ``threads`` threads, in input order.

    At most ``threads + 1`` items are in flight, so memory stays at a few
    work chunks. ``threads <= 1`` computes in the caller's thread.
    """
    if threads <= 1:
        for item in items:
            yield item, fn(*item[2:])
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pending: deque = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="stem2eds-preprocess") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(fn, *item[2:])))
                if len(pending) > threads:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()


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
    client : dask.distributed.Client, optional
        Run both passes on a Dask cluster, blocks of scan rows per task
        (blocks then arrive in any order; the values are identical).

    Yields
    ------
    start : int
        Flat index in the cropped scan of the block's first pattern.
    patterns : ndarray, shape (n, Qx/bin, Qy/bin), float32 in [0, 1]
    """
    if settings.scale is None:
        raise InputError("preprocessing scale is not set",
                         hint="use the settings of the training bundle (stem2eds preprocess "
                              "writes them), or pass --scale")
    _check_detector(scan, settings)
    beam_radius = settings.beam_radius
    if origins is None or beam_radius is None:
        found = measure_origins(scan, settings, batch, client=client)
        origins = found.fitted if origins is None else origins
        beam_radius = _resolve_beam_radius(settings, found.probe_radius)
    for start, values in _processed_batches(scan, settings, origins, beam_radius, batch, True,
                                            client=client):
        yield start, normalise(values, settings.scale)


def _check_detector(scan: ScanBundle, settings: PreprocessSettings) -> None:
    qx, qy = scan.detector_shape
    f = int(settings.bin_factor)
    if qx % f or qy % f:
        raise InputError(f"bin factor {f} does not divide the {qx}x{qy} detector",
                         path=scan.path, hint="choose a divisor such as 1, 2, 4 or 8")
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
        address); see :mod:`stem2eds.preprocess.distributed`.

    Returns
    -------
    PreprocessSettings
        The settings with scale, beam radius, probe radius and detector shape
        filled in, as stored in the output's ``preprocess`` attribute. What
        was measured (origins and their fit, registration offset) is in the
        output bundle; :func:`summarise` reads it back.
    """
    settings = PreprocessSettings(**asdict(settings or PreprocessSettings()))
    if scheduler is not None and register:
        raise InputError("registration (--register) is not available with --scheduler",
                         hint="register without --scheduler")
    if scheduler is None:
        return _preprocess_bundle(src, out, settings, quiet, register, batch, None)
    from .distributed import dask_client

    with dask_client(scheduler) as client:
        return _preprocess_bundle(src, out, settings, quiet, register, batch, client)


def _preprocess_bundle(src, out, settings: PreprocessSettings, quiet: bool, register: bool,
                       batch: int, client) -> PreprocessSettings:
    with open_bundle(src) as scan:
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
                             path=scan.path, hint="add --register")
        found = measure_origins(scan, settings, batch, quiet, client=client)
        beam_radius = _resolve_beam_radius(settings, found.probe_radius)
        settings.beam_radius = beam_radius
        settings.probe_radius = float(found.probe_radius)
        settings.detector_shape = tuple(scan.detector_shape)
        qx, qy = scan.detector_shape
        qb = (qx // settings.bin_factor, qy // settings.bin_factor)
        shape = (box[1] - box[0], box[3] - box[2])
        raw_cal = scan.calibration
        cal = PixelCalibration(**asdict(raw_cal))
        cal.q_pixel_size = raw_cal.q_pixel_size * settings.bin_factor
        prov = {"command": "preprocess", "source": str(Path(src).resolve()),
                "source_scan": scan.name, "source_provenance": scan.provenance}
        adf = np.zeros(shape[0] * shape[1]) if register else None
        with create_bundle(out, scan_shape=shape, detector_shape=qb, dtype=np.float32,
                           elements=scan.elements, calibration=cal, scan_name=scan.name,
                           provenance=prov, kind="preprocessed") as builder:
            top = TopValues(shape[0] * shape[1] * qb[0] * qb[1], settings.scale_percentile) \
                if settings.scale is None else None
            for start, values in _processed_batches(scan, settings, found.fitted, beam_radius,
                                                    batch, quiet, adf, client=client):
                if top is None:
                    builder.write_patterns(start, normalise(values, settings.scale))
                else:
                    top.add(values)
                    builder.write_patterns(start, values)
            if top is not None:
                scale = top.result()
                if not scale > 0:
                    raise InputError(f"the {settings.scale_percentile} percentile of the "
                                     "processed patterns is 0: nothing left to scale",
                                     path=scan.path,
                                     hint="lower --beam-radius or check the data")
                settings.scale = scale
                _normalise_in_place(builder.diffraction, scale, batch)
            _write_maps(scan, builder, settings, box, register, adf)
            _write_calibration(builder, found, settings)
            builder.set_attrs(preprocess=settings.to_dict(),
                              raw_q_pixel_size=float(raw_cal.q_pixel_size))
    return settings


def summarise(path: str | os.PathLike) -> dict[str, Any]:
    """What preprocessing measured, read back from a preprocessed bundle.

    Returns
    -------
    dict
        ``scan_shape``, ``detector_shape`` (binned), ``origin_fit`` (method),
        ``origin_drift_px`` (peak-to-peak of the fitted origin, rows and
        columns), ``origin_rms_residual_px``, ``origin_outliers``,
        ``probe_radius_px``, ``beam_radius_px``, ``scale`` and, after
        registration, ``registration``.
    """
    with open_bundle(path) as pre:
        fit = pre.file[f"{CALIBRATION}/origin_fit"]
        cal = pre.file[CALIBRATION].attrs
        fitted = fit[()].reshape(-1, 2)
        out = {"scan_shape": list(pre.scan_shape), "detector_shape": list(pre.detector_shape),
               "origin_fit": str(fit.attrs["method"]),
               "origin_drift_px": [float(v) for v in np.ptp(fitted, axis=0)],
               "origin_rms_residual_px": float(fit.attrs["rms_residual_px"]),
               "origin_outliers": int(fit.attrs["n_outliers"]),
               "probe_radius_px": float(cal["probe_radius_px"]),
               "beam_radius_px": float(cal["beam_radius_px"]), "scale": float(cal["scale"])}
        registration = pre.json_attr("registration")
        if registration is not None:
            out["registration"] = registration
    return out


def _normalise_in_place(ds, scale: float, batch: int) -> None:
    """Pass 3: divide the written (binned) patterns by the scale, one block of rows at a time."""
    rx, ry = ds.shape[:2]
    rows = max(1, batch // ry)
    for i in range(0, rx, rows):
        ds[i:i + rows] = normalise(ds[i:i + rows], scale)


def _write_maps(scan: ScanBundle, builder, settings: PreprocessSettings, box, register: bool,
                adf: np.ndarray | None) -> None:
    """EDS targets (filtered), raw EDS, HAADF, truth and simulation records, on the cropped grid."""
    elements = scan.elements
    eds_raw = blurred = haadf = None
    if register:
        from .register import register_bundle_maps

        shape = (box[1] - box[0], box[3] - box[2])
        eds_raw, haadf, reg = register_bundle_maps(scan, adf.reshape(shape))
        builder.set_attrs(registration=reg.to_dict())
        if eds_raw is not None:
            # registered maps are already on the cropped grid
            blurred = filter_maps(eds_raw, settings.eds_filter, settings.eds_kernel,
                                  settings.eds_sigma)
    # maps already on the scan grid (all of them, or those not registered)
    if eds_raw is None and EDS in scan.file and elements:
        raw_full = scan.eds()
        blurred = preprocess_maps(raw_full, settings)
        eds_raw = crop_maps(raw_full, box)
    if haadf is None and HAADF in scan.file:
        haadf = crop_maps(scan.haadf, box)
    if eds_raw is not None:
        builder.write_maps(EDS, dict(zip(elements, blurred)))
        builder.write_maps(EDS_RAW, dict(zip(elements, eds_raw)))
    if haadf is not None:
        builder.write_haadf(haadf)
    if TRUTH in scan.file:
        truth = {name: crop_maps(scan.file[TRUTH][name][()], box) for name in scan.file[TRUTH]}
        builder.write_maps(TRUTH, truth)
    if "simulation" in scan.file:
        _copy_cropped(scan.file["simulation"], builder.file, scan.scan_shape, box)


def _copy_cropped(group, out_file, scan_shape, crop) -> None:
    """Copy a group, cropping every dataset whose first two axes are the scan's."""
    r0, r1, c0, c1 = crop

    def visit(name, obj):
        import h5py

        if isinstance(obj, h5py.Dataset):
            data = obj[()]
            if data.ndim >= 2 and data.shape[:2] == tuple(scan_shape):
                data = data[r0:r1, c0:c1]
            ds = out_file.create_dataset(f"{group.name}/{name}", data=data)
            for key, value in obj.attrs.items():
                ds.attrs[key] = value

    out_group = out_file.require_group(group.name)
    for key, value in group.attrs.items():
        out_group.attrs[key] = value
    group.visititems(visit)


def _write_calibration(builder, found: OriginMeasurement, settings: PreprocessSettings) -> None:
    fit = found.fit
    sampled = "every position" if fit.sampled is None else \
        f"sub-grid of {int(fit.sampled.sum())} positions (origin_sample)"
    builder.write_array(f"{CALIBRATION}/origin", found.measured.astype(np.float32),
                        axes="Rx,Ry,(row,col)", unit="px of the input detector",
                        description="measured unscattered-beam origin, NaN where none "
                                    "was found or the position was not measured",
                        measured_at=sampled)
    builder.write_array(f"{CALIBRATION}/origin_fit", fit.fitted.astype(np.float32),
                        axes="Rx,Ry,(row,col)", unit="px of the input detector",
                        method=fit.method, coefficients=fit.coefficients,
                        rms_residual_px=fit.rms_residual, n_outliers=fit.n_outliers)
    builder.write_array(f"{CALIBRATION}/origin_inliers", fit.inliers)
    grp = builder.file[CALIBRATION]
    grp.attrs["probe_radius_px"] = float(found.probe_radius)
    grp.attrs["beam_radius_px"] = float(settings.beam_radius)
    grp.attrs["scale"] = float(settings.scale)
    grp.attrs["bin_factor"] = int(settings.bin_factor)
