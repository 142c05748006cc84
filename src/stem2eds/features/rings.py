"""Fused ring statistics: raw integer patterns + origins -> per-ring mean/std/max.

The default path forms, for every pattern, a centred, beam-removed, binned
float32 pattern (:func:`stem2eds.preprocess.patterns.process_patterns`),
divides it by the intensity scale and clips it to [0, ceiling] (1, or
one that follows the pattern's mean with ``dose_reference``;
:func:`~stem2eds.preprocess.patterns.normalise`), and then reduces it to
ring statistics (:class:`stem2eds.models.rings.RingStatistics`). Here the
same numbers come straight from the raw counts, one pattern at a time,
without any of those (n, Qx/f, Qy/f) intermediates in memory.

Per axis the sub-pixel centring followed by ``f x f`` binning is a fixed
linear map of the raw rows: with the shift ``s = t + r`` (``t`` whole
pixels, ``0 <= r < 1``), output row ``i`` is ``(1 - r) P(i + t) + r P(i + t + 1)``
(0 outside the detector), so raw row ``p`` adds ``1 - r`` to binned row
``(p - t) // f`` and ``r`` to binned row ``(p - t - 1) // f``; both are the
same block except on block boundaries. The kernel applies that map to the
rows (a contiguous add of each raw row into one or two rows of a
``(Qx/f, Qy)`` scratch), then to the columns, zeroing the beam disk of
``beam_radius`` input pixels around the origin on the way (the disk
removal of the binned path, :func:`~stem2eds.preprocess.patterns.centre_binned`),
and then scales, normalises, clips and reduces the ``(Qx/f, Qy/f)`` scratch
(16 KiB at 64x64, in the CPU's cache) to ring statistics. The clip to
[0, 1] is why the binned values are formed at all: it is not linear, so
plain weighted ring sums of the raw counts cannot reproduce it.

Written with numba because no array-at-a-time numpy form avoids the
intermediates this module exists to avoid: each raw pixel is touched once
and added to one (sometimes two) scratch entries, which numba compiles to
vectorised loops; ``parallel=True`` spreads the patterns of a block over
the cores, and ``cache=True`` keeps the compiled kernel on disk so a new
process loads it instead of compiling (compiling takes seconds).
:mod:`stem2eds.features.torch_rings` computes the same in torch for GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import InputError

#: Ring statistics, in the order of :data:`stem2eds.models.rings.STATISTICS`.
STATISTICS = ("mean", "std", "max")
#: Scalings the kernel implements, by code (as in ``PreprocessSettings.scaling``).
SCALING_CODES = {"none": 0, "sqrt": 1, "log": 2}


@dataclass(frozen=True)
class RingGeometry:
    """Everything the fused front end needs besides the patterns and their origins.

    Attributes
    ----------
    detector_shape : (Qx, Qy)
        Raw detector shape.
    bin_factor : int
        Detector binning ``f`` (divides Qx and Qy).
    beam_radius : float
        Radius of the removed beam disk around each origin, raw px (0: none).
    scaling : {"none", "sqrt", "log"}
        Intensity scaling of the binned counts.
    scale : float
        Divisor mapping the scaled values into [0, 1] (then clipped).
    statistics : tuple of {"mean", "std", "max"}
        Ring statistics returned, in this order.
    dose_reference : float or None
        ``PreprocessSettings.ceiling_reference``: each pattern is clipped at
        ``max(1, mean / dose_reference)`` instead of 1 (None: at 1).
    """

    detector_shape: tuple[int, int]
    bin_factor: int
    beam_radius: float
    scaling: str
    scale: float
    statistics: tuple[str, ...] = ("mean",)
    dose_reference: float | None = None

    def __post_init__(self) -> None:
        from ..preprocess.patterns import check_bin_factor

        qx, qy = (int(v) for v in self.detector_shape)
        f = int(self.bin_factor)
        check_bin_factor(f, (qx, qy))
        if self.scaling not in SCALING_CODES:
            raise InputError(f"unknown scaling {self.scaling!r}",
                             hint=f"choose one of {', '.join(SCALING_CODES)}")
        if not (self.scale is not None and self.scale > 0):
            raise InputError(f"`scale` must be positive, got {self.scale}")
        if self.dose_reference is not None and not self.dose_reference > 0:
            raise InputError(f"`dose_reference` must be positive, got {self.dose_reference}")
        if not self.statistics or set(self.statistics) - set(STATISTICS):
            raise InputError(f"statistics must be some of {', '.join(STATISTICS)}, "
                             f"got {list(self.statistics)}")
        object.__setattr__(self, "detector_shape", (qx, qy))
        object.__setattr__(self, "bin_factor", f)
        object.__setattr__(self, "beam_radius", float(self.beam_radius or 0.0))
        object.__setattr__(self, "statistics", tuple(self.statistics))

    @classmethod
    def from_settings(cls, settings, detector_shape: tuple[int, int],
                      statistics: tuple[str, ...] = ("mean",),
                      beam_radius: float | None = None) -> "RingGeometry":
        """The geometry of a run's resolved :class:`~stem2eds.preprocess.PreprocessSettings`.

        Parameters
        ----------
        settings : PreprocessSettings
            ``bin_factor``, ``scaling``, ``scale``, ``beam_radius`` and
            ``ceiling_reference`` are used.
        detector_shape : (Qx, Qy)
            Raw detector of the scan.
        statistics : tuple of str
            The model's ring statistics.
        beam_radius : float, optional
            Overrides ``settings.beam_radius`` (e.g. measured on this scan).
        """
        radius = settings.beam_radius if beam_radius is None else beam_radius
        if radius is None:
            raise InputError("`beam_radius` is not set", hint="measure it on the scan first")
        return cls(tuple(detector_shape), int(settings.bin_factor), float(radius),
                   str(settings.scaling), settings.scale, tuple(statistics),
                   settings.ceiling_reference)

    @property
    def binned_shape(self) -> tuple[int, int]:
        """(Qx/f, Qy/f): the patterns the model's rings are defined on."""
        f = self.bin_factor
        return self.detector_shape[0] // f, self.detector_shape[1] // f

    @property
    def n_rings(self) -> int:
        """R: rings about the binned detector's centre, up to its corners."""
        return n_rings(self.binned_shape)

    @property
    def n_features(self) -> int:
        """F = S * R: the statistics, each over all rings."""
        return len(self.statistics) * self.n_rings

    def ring_index(self) -> np.ndarray:
        """(Qx/f, Qy/f) int64 ring of every binned pixel (as ``models.rings.ring_index``)."""
        return _ring_index(self.binned_shape)


def n_rings(shape: tuple[int, int]) -> int:
    """Rings of unit width about the centre of a (H, W) pattern, up to its corners."""
    return int(math.floor(math.hypot((shape[0] - 1) / 2, (shape[1] - 1) / 2))) + 1


@lru_cache(maxsize=8)
def _ring_index(shape: tuple[int, int]) -> np.ndarray:
    rows = np.arange(shape[0], dtype=np.float64) - (shape[0] - 1) / 2
    cols = np.arange(shape[1], dtype=np.float64) - (shape[1] - 1) / 2
    index = np.floor(np.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2)).astype(np.int64)
    index.setflags(write=False)
    return index


def split_shift(origins: np.ndarray, geometry: RingGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Whole and fractional parts of each pattern's shift onto the detector centre.

    As in :func:`stem2eds.preprocess.patterns.centre_binned`: ``whole`` is
    ``floor(origin - centre)`` (int64, clipped beyond the detector, where
    everything is zero anyway) and ``frac`` the remainder as float32.

    Parameters
    ----------
    origins : ndarray, shape (n, 2)
    geometry : RingGeometry

    Returns
    -------
    whole : ndarray, shape (n, 2), int64
    frac : ndarray, shape (n, 2), float32, in [0, 1)
    """
    qx, qy = geometry.detector_shape
    f = geometry.bin_factor
    origins = np.asarray(origins, dtype=np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(origins)):
        raise InputError("origins must be finite (use fitted origins)")
    shift = origins - np.array([(qx - 1) / 2, (qy - 1) / 2])
    whole = np.floor(shift)
    frac = (shift - whole).astype(np.float32)
    lim = max(qx, qy) + f
    return np.clip(whole, -lim, lim).astype(np.int64), frac


def ring_features(raw_patterns, origins: np.ndarray, geometry: RingGeometry) -> np.ndarray:
    """Ring statistics of raw patterns about their origins, without intermediates.

    Equals ``RingStatistics(geometry.binned_shape, statistics)`` applied to
    ``normalise(process_patterns(raw, origins, beam_radius, f, scaling), scale,
    dose_reference)``
    (the default ``binned`` centring), up to float32 rounding.

    Parameters
    ----------
    raw_patterns : ndarray, shape (n, Qx, Qy), or MappedPatterns
        Raw counts, any integer or float dtype (uint16 typically); C-contiguous
        blocks avoid a copy, and a :class:`stem2eds.io.mapped.MappedPatterns`
        block is read straight from the mapped file.
    origins : ndarray, shape (n, 2)
        Fitted origin (row, column) of each pattern, raw detector px.
    geometry : RingGeometry

    Returns
    -------
    ndarray, shape (n, F), float32
        F = S * R, statistic-major: the R ring values of the first statistic,
        then of the second, as ``RingStatistics(...)(x).reshape(n, -1)``.
    """
    buffer, starts, shape = _flat_patterns(raw_patterns)
    if shape != geometry.detector_shape:
        raise InputError(f"patterns of shape {(len(starts), *shape)} do not match the "
                         f"{geometry.detector_shape[0]}x{geometry.detector_shape[1]} detector")
    n = len(starts)
    whole, frac = split_shift(origins, geometry)
    if len(whole) != n:
        raise InputError(f"{len(whole)} origins for {n} patterns")
    origins = np.asarray(origins, dtype=np.float64).reshape(n, 2)
    ring = geometry.ring_index()
    counts = np.bincount(ring.ravel(), minlength=geometry.n_rings).astype(np.float64)
    stats = np.zeros((n, 3, geometry.n_rings), np.float32)
    if n:
        _kernel()(buffer, starts, np.int64(shape[0]), np.int64(shape[1]), origins, whole, frac,
                  np.int64(geometry.bin_factor), np.float64(geometry.beam_radius),
                  np.int64(SCALING_CODES[geometry.scaling]), np.float32(geometry.scale),
                  np.float64(geometry.dose_reference or 0.0), ring, counts, stats)
    pick = [STATISTICS.index(s) for s in geometry.statistics]
    return np.ascontiguousarray(stats[:, pick].reshape(n, geometry.n_features))


def _flat_patterns(raw_patterns) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The kernel's view of a block: read-only flat buffer, pattern starts, detector shape.

    Arrays are passed read-only, like memory-mapped blocks, so the kernel is
    compiled (and cached) once per dtype rather than once per dtype and
    writability.
    """
    from ..io.mapped import MappedPatterns

    if isinstance(raw_patterns, MappedPatterns):
        return raw_patterns.buffer, raw_patterns.starts, raw_patterns.detector_shape
    raw = np.ascontiguousarray(raw_patterns)
    if raw.ndim != 3:
        raise InputError(f"patterns must be (n, Qx, Qy), got shape {raw.shape}")
    if not raw.dtype.isnative:  # big-endian files: the kernel reads native numbers
        raw = raw.astype(raw.dtype.newbyteorder("="))
    if raw.dtype.kind not in "uif" or raw.dtype.itemsize > 8 or raw.dtype == np.float16:
        raw = raw.astype(np.float32)
    n, qx, qy = raw.shape
    buffer = raw.reshape(-1).view()
    buffer.flags.writeable = False
    return buffer, np.arange(n, dtype=np.int64) * (qx * qy), (qx, qy)


def load_kernel(settings, detector_shape: tuple[int, int], dtype, statistics: tuple[str, ...]):
    """Load the compiled kernel for patterns of ``dtype`` in a background thread.

    Loading the cached numba kernel (numba, its typing and lowering
    registries) is the slowest step of the fused path's start-up; a caller
    starts it here so that it overlaps the origin measurement instead of
    following it.

    Returns
    -------
    threading.Thread
        The daemon thread (joining it is optional: the first block waits for
        numba's compiler lock anyway).
    """
    import threading

    shape = tuple(int(v) for v in detector_shape)
    centre = np.array([[(shape[0] - 1) / 2, (shape[1] - 1) / 2]], np.float64)

    def load() -> None:
        try:  # one zero pattern of the scan's dtype: the same kernel signature
            geometry = RingGeometry.from_settings(settings, shape, statistics, beam_radius=1.0)
            ring_features(np.zeros((1, *shape), dtype), centre, geometry)
        except Exception:  # noqa: BLE001 - the real first block reports any problem
            pass

    thread = threading.Thread(target=load, name="stem2eds-kernel-load", daemon=True)
    thread.start()
    return thread


@lru_cache(maxsize=1)
def _kernel():
    """The compiled kernel (numba imported and the kernel loaded on first use)."""
    _skip_numba_blas_probe()
    from ._kernel import fused_ring_stats

    return fused_ring_stats


def _skip_numba_blas_probe() -> None:
    """Import numba's array functions without their BLAS probe, unless SciPy's BLAS is loaded.

    The first numba function a process loads (even from numba's on-disk
    cache) imports ``numba.np.arraymath``, which probes for BLAS by
    importing ``scipy.linalg.cython_blas``: SciPy's linear algebra, about a
    quarter of a second of imports while ``stem2eds predict`` is measuring
    the origins on the other core, for a kernel that calls no BLAS. The
    probe's answer (``arraymath._HAVE_BLAS``) only picks the BLAS inner
    product for ``np.correlate``/``np.convolve`` inside numba code; without
    it they use their own loop (same values). ``np.dot`` and ``np.linalg``
    in numba code look for BLAS themselves when they are compiled, so they
    still work. Skipped where SciPy's BLAS is already imported (the probe is
    then free) or numba's layout is not the one this was written for
    (numba 0.59-0.68): then the import is the ordinary one.
    """
    import sys

    if "numba.np.arraymath" in sys.modules or "scipy.linalg.cython_blas" in sys.modules:
        return
    try:
        import numba.np.linalg as linalg

        probe = linalg.ensure_blas
    except (ImportError, AttributeError):  # pragma: no cover - another numba layout
        return

    def no_blas() -> None:
        raise ImportError("BLAS probe skipped by stem2eds")

    linalg.ensure_blas = no_blas
    try:
        import numba.np.arraymath as arraymath
    finally:
        linalg.ensure_blas = probe
    if vars(arraymath).get("ensure_blas") is no_blas:
        arraymath.ensure_blas = probe
