"""Per-pattern steps on batches (n, Qx, Qy): centring, beam removal, binning, scaling.

All functions work on a stack of patterns at once (no per-pattern Python
loop). The detector centre is its geometric centre ``((Qx-1)/2, (Qy-1)/2)``
in pixel coordinates (pixel centres at integers): binning by any factor that
divides the detector keeps that point at the geometric centre of the binned
detector, so the radial axis is the same for every bin factor.
"""

from __future__ import annotations

import math

import threading
from functools import lru_cache

import numpy as np

from ..errors import InputError

SCALINGS = ("none", "sqrt", "log")


def detector_centre(shape: tuple[int, int]) -> tuple[float, float]:
    """Geometric centre (row, column) of a (Qx, Qy) detector, in pixels."""
    return (shape[0] - 1) / 2, (shape[1] - 1) / 2


def centre_patterns(patterns: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """Shift every pattern so its origin lands on the detector centre (bilinear, sub-pixel).

    Each pattern's whole-pixel shift is one contiguous window copy out of a
    zero-padded stack (``sliding_window_view`` indexed per pattern), and the
    sub-pixel part is a separable linear blend of shifted slices of it. This is
    hand-written because ``scipy.ndimage.map_coordinates`` on the stack would
    need a float64 coordinate array three times the size of the batch for
    what is a pure translation, and ``ndimage.shift`` works on one pattern at
    a time. Pixels shifted in from outside the detector are 0.

    Parameters
    ----------
    patterns : ndarray, shape (n, Qx, Qy)
    origins : ndarray, shape (n, 2)
        Origin (row, column) of each pattern, in detector pixels.

    Returns
    -------
    ndarray, shape (n, Qx, Qy), float32
        Centred patterns; counts are conserved up to what is shifted across
        the detector edge.
    """
    patterns = np.asarray(patterns)
    n, qx, qy = patterns.shape
    origins = np.asarray(origins, dtype=np.float64).reshape(n, 2)
    if not np.all(np.isfinite(origins)):
        raise ValueError("origins must be finite (use fitted origins)")
    shift = origins - np.array(detector_centre((qx, qy)))  # output i samples input i + shift
    base = np.floor(shift)
    frac = (shift - base).astype(np.float32)
    # beyond one detector width everything is zero anyway
    base = np.clip(base, -max(qx, qy) - 1, max(qx, qy)).astype(np.int64)
    m = int(np.abs(base).max()) + 1
    padded = np.zeros((n, qx + 2 * m + 1, qy + 2 * m + 1), np.float32)
    padded[:, m:m + qx, m:m + qy] = patterns
    views = np.lib.stride_tricks.sliding_window_view(padded, (qx + 1, qy + 1), axis=(1, 2))
    k = np.arange(n)
    win = views[k, base[:, 0] + m, base[:, 1] + m]  # (n, Qx+1, Qy+1)
    # separable blend, columns then rows, in place: a + f (b - a)
    cols = np.subtract(win[:, :, 1:], win[:, :, :-1])
    cols *= frac[:, 1, None, None]
    cols += win[:, :, :-1]
    out = np.subtract(cols[:, 1:], cols[:, :-1])
    out *= frac[:, 0, None, None]
    out += cols[:, :-1]
    return out


@lru_cache(maxsize=16)
def _beam_mask(shape: tuple[int, int], radius: float) -> np.ndarray:
    cr, cc = detector_centre(shape)
    rr = np.arange(shape[0])[:, None] - cr
    cc_ = np.arange(shape[1])[None, :] - cc
    mask = np.hypot(rr, cc_) <= radius
    mask.setflags(write=False)
    return mask


def beam_mask(shape: tuple[int, int], radius: float) -> np.ndarray:
    """Boolean (Qx, Qy) disk of ``radius`` px about the detector centre."""
    return _beam_mask(tuple(int(s) for s in shape), float(radius))


def remove_beam(patterns: np.ndarray, radius: float) -> np.ndarray:
    """Zero the central disk of radius ``radius`` px in centred patterns (n, Qx, Qy).

    Returns a new float32 array; ``radius <= 0`` leaves the patterns as they are.
    """
    out = np.array(patterns, dtype=np.float32, copy=True)
    if radius > 0:
        out[:, beam_mask(out.shape[1:], radius)] = 0
    return out


def bin_patterns(patterns: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor x factor`` detector pixels: (n, Qx, Qy) -> (n, Qx/f, Qy/f).

    Summing (not averaging) keeps the values in counts, so the total per
    pattern is unchanged and sqrt/log scaling keep their meaning.
    """
    n, qx, qy = patterns.shape
    factor = int(factor)
    check_bin_factor(factor, (qx, qy))
    if factor == 1:
        return np.asarray(patterns, dtype=np.float32)
    return block_sum(patterns, factor)


def block_sum(patterns: np.ndarray, factor: int) -> np.ndarray:
    """Sum of ``factor x factor`` blocks of (n, Qx, Qy) -> (n, Qx/f, Qy/f) float32.

    The hot path of preprocessing. Where the result is exact in float32
    (power-of-two factors up to 8 on 8/16-bit counts or float32 data whose
    block sums are exactly representable) the stack is binned as one tall
    image by OpenCV's area resampling (``INTER_AREA`` at an integer factor
    is the block mean, computed in vectorised C, cheaper than numpy's strided
    sums), then multiplied back by ``f**2`` (exact for powers of two).
    Otherwise rows are summed first (contiguous), then columns, with integer
    data summed exactly in uint32/int64 before the conversion.
    """
    n, qx, qy = patterns.shape
    bx, by = qx // factor, qy // factor
    patterns = patterns[:, :bx * factor, :by * factor]
    if _opencv_exact(patterns, factor):
        return _opencv_block_sum(np.ascontiguousarray(patterns, dtype=np.float32), factor)
    acc = np.uint32 if patterns.dtype.kind == "u" and patterns.dtype.itemsize <= 2 else None
    if acc is None and patterns.dtype.kind in "iu":
        acc = np.int64
    rows = patterns.reshape(n, bx, factor, by * factor).sum(axis=2, dtype=acc or np.float32)
    return rows.reshape(n, bx, by, factor).sum(axis=3).astype(np.float32, copy=False)


def _opencv_exact(patterns: np.ndarray, factor: int) -> bool:
    """Whether OpenCV's block mean times f**2 reproduces the exact block sums.

    Unsigned 8/16-bit counts: the sum of 64 values stays below 2**24, so
    float32 holds it exactly and dividing/multiplying by a power of two is
    exact. Other dtypes go through numpy.
    """
    if factor not in (2, 4, 8) or patterns.size == 0:
        return False
    return patterns.dtype in (np.uint8, np.uint16)


def _opencv_block_sum(counts: np.ndarray, factor: int) -> np.ndarray:
    """Block sums of C-contiguous float32 (n, Qx, Qy) integer counts (< 2**24 / f**2).

    The stack is one tall image for a single OpenCV call; the block mean
    times ``f**2`` is exact for power-of-two ``f`` on such values.
    """
    import cv2

    n, qx, qy = counts.shape
    bx, by = qx // factor, qy // factor
    mean = cv2.resize(counts.reshape(n * qx, qy), (by, n * bx), interpolation=cv2.INTER_AREA)
    mean *= np.float32(factor * factor)
    return mean.reshape(n, bx, by)


def _disk_pixels(origins: np.ndarray, radius: float, shape: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (pattern, row, column) of the input pixels within ``radius`` of each origin.

    Only a window of ``2 ceil(r) + 3`` pixels around each origin is examined,
    so this costs nothing next to touching whole patterns.
    """
    origins = np.asarray(origins, dtype=np.float64).reshape(-1, 2)
    half = int(np.ceil(radius)) + 1
    offs = np.arange(-half, half + 1)
    centre = np.rint(origins).astype(np.int64)
    rows = centre[:, 0:1] + offs  # (n, W)
    cols = centre[:, 1:2] + offs
    inside = ((rows - origins[:, 0:1]) ** 2)[:, :, None] \
        + ((cols - origins[:, 1:2]) ** 2)[:, None, :] <= radius * radius
    inside &= (((rows >= 0) & (rows < shape[0]))[:, :, None]
               & ((cols >= 0) & (cols < shape[1]))[:, None, :])
    k, a, b = np.nonzero(inside)
    return k, rows[k, a], cols[k, b]


def apply_scaling(patterns: np.ndarray, scaling: str) -> np.ndarray:
    """Intensity scaling before normalisation: ``none``, ``sqrt`` or ``log`` (log1p of counts)."""
    if scaling == "none":
        return patterns
    if scaling == "sqrt":
        return np.sqrt(np.clip(patterns, 0, None))
    if scaling == "log":
        return np.log1p(np.clip(patterns, 0, None))
    raise InputError(f"unknown scaling {scaling!r}", hint=f"choose one of {', '.join(SCALINGS)}")


#: Where patterns are centred: ``binned`` (after binning, the fast default) or
#: ``full`` (at the input resolution, before binning).
CENTRINGS = ("binned", "full")


def process_patterns(patterns: np.ndarray, origins: np.ndarray, beam_radius: float,
                     bin_factor: int, scaling: str, centring: str = "binned") -> np.ndarray:
    """Centre, remove the beam, bin and scale a batch; values not yet divided by the scale.

    ``centring="binned"`` (default; cheaper, since it shifts the small binned
    patterns): the beam disk is removed in input coordinates around each pattern's origin
    (:func:`beam_counts`), the raw pattern is binned, and the binned pattern
    is shifted (bilinear) by its origin in binned pixels. ``"full"``: shift
    at the input resolution (:func:`centre_patterns`), remove the disk about
    the detector centre, then bin. Both put the origin on the detector centre
    and remove the same disk; the binned shift interpolates between binned
    pixels, which blurs the pattern by up to one binned pixel (measured in
    ``benchmarks/bench_centring.py``).

    Parameters
    ----------
    patterns : ndarray, shape (n, Qx, Qy)
    origins : ndarray, shape (n, 2)
        (Fitted) origins in input detector pixels.
    beam_radius : float
        Radius (input detector px) of the zeroed central disk.
    bin_factor : int
    scaling : {"none", "sqrt", "log"}
    centring : {"binned", "full"}

    Returns
    -------
    ndarray, shape (n, Qx/bin, Qy/bin), float32
    """
    if centring == "full":
        centred = centre_patterns(patterns, origins)
        return finish_patterns(centred, beam_radius, bin_factor, scaling)
    if centring != "binned":
        raise InputError(f"unknown centring {centring!r}",
                         hint=f"choose one of {', '.join(CENTRINGS)}")
    centred = centre_binned(patterns, origins, beam_radius, bin_factor)
    return apply_scaling(centred, scaling).astype(np.float32, copy=False)


def centre_binned(patterns: np.ndarray, origins: np.ndarray, beam_radius: float,
                  bin_factor: int) -> np.ndarray:
    """Remove the beam, centre and bin in one pass: (n, Qx, Qy) -> (n, Qx/f, Qy/f).

    Equals shifting each pattern bilinearly at the input resolution and then
    binning (the ``full`` path), without ever forming the shifted full-size
    pattern. Per axis, with the shift ``s = t + r`` (``t`` whole pixels,
    ``0 <= r < 1``), the binned value of block ``J`` is

        sum_{i in J} ((1 - r) P(i + t) + r P(i + t + 1))
            = S_t(J) + r (P(f J + t + f) - P(f J + t)),

    a block sum on a grid offset by ``t`` plus ``r`` times the difference of
    two rows (columns) per block. The offset's remainder ``t mod f`` is
    applied by where the pattern is placed in a padded buffer (one copy, which
    is also the conversion to float32), the whole-block part by a window copy
    of the small binned result. Rows are done first, then columns on the
    f-times smaller row sums. The disk of ``beam_radius`` input px around
    each origin is zeroed in the buffer first. Values are counts (float32).

    Parameters
    ----------
    patterns : ndarray, shape (n, Qx, Qy)
        Raw patterns (counts).
    origins : ndarray, shape (n, 2)
        Beam origin (row, column) per pattern, input detector px.
    beam_radius : float
        Input detector px; 0 keeps the beam.
    bin_factor : int
        Must divide Qx and Qy.

    Returns
    -------
    ndarray, shape (n, Qx/f, Qy/f), float32
    """
    patterns = np.asarray(patterns)
    n, qx, qy = patterns.shape
    f = int(bin_factor)
    check_bin_factor(f, (qx, qy))
    origins = np.asarray(origins, dtype=np.float64).reshape(n, 2)
    if not np.all(np.isfinite(origins)):
        raise ValueError("origins must be finite (use fitted origins)")
    shift = origins - np.array(detector_centre((qx, qy)))
    whole = np.floor(shift)
    frac = (shift - whole).astype(np.float32)  # (n, 2) in [0, 1)
    whole = np.clip(whole, -max(qx, qy) - f, max(qx, qy) + f).astype(np.int64)
    phase = np.mod(whole, f)
    # Input pixel i sits at buffer index i + f - phase, so buffer block K
    # starts at input pixel f K - f + phase; two spare blocks of padding.
    buf = _padded_buffer((n, qx + 2 * f, qy + 2 * f), f)
    # One slice assignment (copy + conversion to float32, in C) per pattern:
    # cheaper than grouping patterns by phase, where numpy's fancy indexing
    # first gathers a uint16 temporary of the group.
    for k, (pr, pc) in enumerate(phase.tolist()):
        buf[k, f - pr:f - pr + qx, f - pc:f - pc + qy] = patterns[k]
    if beam_radius > 0:
        k, r, c = _disk_pixels(origins, beam_radius, (qx, qy))
        buf[k, r + f - phase[k, 0], c + f - phase[k, 1]] = 0
    bx, by = qx // f + 1, qy // f + 1  # blocks K = 0 .. Q/f
    rows = _axis_block_sum(buf, f, axis=1)[:, :bx]  # (n, bx, Qy + 2f)
    rows += frac[:, 0, None, None] * (buf[:, f:qx + 2 * f:f] - buf[:, 0:qx + f:f])
    cols = _axis_block_sum(rows, f, axis=2)[:, :, :by]  # (n, bx, by)
    cols += frac[:, 1, None, None] * (rows[:, :, f:qy + 2 * f:f] - rows[:, :, 0:qy + f:f])
    # output block J is buffer block J + whole // f + 1: a window copy,
    # zero where it falls outside (exactly integer, so no interpolation)
    q = whole // f + 1
    centre = np.array(detector_centre((bx, by)))
    out = centre_patterns(cols, centre + q)
    return np.ascontiguousarray(out[:, :qx // f, :qy // f])


_BUFFERS = threading.local()


def _padded_buffer(shape: tuple[int, int, int], f: int) -> np.ndarray:
    """A float32 (n, Qx + 2f, Qy + 2f) buffer, reused per thread, zero outside where patterns go.

    Reuse avoids faulting in fresh pages for every chunk (about a fifth of
    the cost of centring). A pattern placed at offset ``f - phase`` (phase in
    0..f-1) covers rows ``f .. Qx`` whatever its phase, so only the first
    ``f`` and the last ``2f`` rows (and columns) need clearing.
    """
    n, h, w = shape
    cached = getattr(_BUFFERS, "buf", None)
    if cached is None or cached.shape[1:] != (h, w) or cached.shape[0] < n:
        cached = np.zeros((max(n, 1), h, w), np.float32)
        _BUFFERS.buf = cached
    buf = cached[:n]
    buf[:, :f] = 0
    buf[:, h - 2 * f:] = 0
    buf[:, :, :f] = 0
    buf[:, :, w - 2 * f:] = 0
    return buf


def _axis_block_sum(values: np.ndarray, f: int, axis: int) -> np.ndarray:
    """Sums of ``f`` consecutive entries along axis 1 or 2 of (n, H, W) float32 (OpenCV)."""
    import cv2

    if f == 1:
        return values.copy()
    n, h, w = values.shape
    if axis == 1:
        tall = np.ascontiguousarray(values).reshape(n * h, w)
        mean = cv2.resize(tall[: n * h], (w, n * h // f), interpolation=cv2.INTER_AREA) \
            if h % f == 0 else None
        if mean is None:
            raise ValueError("height must be a multiple of f")
        return (mean * np.float32(f)).reshape(n, h // f, w)
    cut = w - w % f
    tall = np.ascontiguousarray(values[:, :, :cut]).reshape(n * h, cut)
    mean = cv2.resize(tall, (cut // f, n * h), interpolation=cv2.INTER_AREA)
    return (mean * np.float32(f)).reshape(n, h, cut // f)


def finish_patterns(centred: np.ndarray, beam_radius: float, bin_factor: int,
                    scaling: str) -> np.ndarray:
    """The steps after centring (beam removal, binning, scaling) on (n, Qx, Qy)."""
    out = remove_beam(centred, beam_radius)
    out = bin_patterns(out, bin_factor)
    return apply_scaling(out, scaling).astype(np.float32, copy=False)


def normalise(values: np.ndarray, scale: float,
              dose_reference: float | None = None) -> np.ndarray:
    """Divide by ``scale`` and clip to [0, ceiling] (float32).

    The clip keeps the few brightest pixels (Bragg peaks of grains, hot
    pixels) from dominating ring statistics. A ceiling fixed at 1 is a fixed
    number of counts, which a scan at a higher dose (or a thicker region)
    reaches on its ordinary rings; with ``dose_reference`` each pattern's
    ceiling is ``max(1, m / dose_reference)``, ``m`` its mean scaled value,
    so it follows the pattern's own intensity: at k times the dose a pattern
    as bright as the training median or brighter is clipped at exactly k
    times its training ceiling, and nothing changes where no value exceeds 1.

    Parameters
    ----------
    values : ndarray, shape (..., Qx, Qy)
        Processed (centred, beam-removed, binned, scaled) patterns.
    scale : float
        The run's intensity scale (``PreprocessSettings.scale``).
    dose_reference : float or None
        ``PreprocessSettings.ceiling_reference``; None clips at 1.

    Returns
    -------
    ndarray, shape (..., Qx, Qy), float32
    """
    if not scale > 0:
        raise InputError(f"scale must be positive, got {scale}")
    scaled = np.asarray(values / np.float32(scale), dtype=np.float32)
    return np.clip(scaled, np.float32(0), pattern_ceiling(scaled, dose_reference), out=scaled)


def pattern_ceiling(scaled: np.ndarray, dose_reference: float | None) -> np.ndarray:
    """Upper clip of each scaled pattern: ``max(1, mean / dose_reference)``, float32.

    Parameters
    ----------
    scaled : ndarray, shape (..., Qx, Qy)
        Patterns divided by the intensity scale, not yet clipped.
    dose_reference : float or None
        None: 1 for every pattern (the fixed clip).

    Returns
    -------
    ndarray, shape (..., 1, 1), float32
        Broadcasts against ``scaled``. The mean is accumulated in float64, as
        in the fused kernel (:mod:`stem2eds.features._kernel`).
    """
    if dose_reference is None:
        return np.ones(scaled.shape[:-2] + (1, 1), np.float32)
    if not dose_reference > 0:
        raise InputError(f"`dose_reference` must be positive, got {dose_reference}")
    mean = scaled.mean(axis=(-2, -1), dtype=np.float64, keepdims=True)
    return np.maximum(mean / dose_reference, 1.0).astype(np.float32)


class TopValues:
    """Exact high percentile of a stream of values, keeping only the largest ones.

    For the ``q``-th percentile of ``total`` values only the largest
    ``ceil((1 - q/100) * total)`` are needed, so memory stays at 0.1 % of the
    data for q = 99.9 instead of the whole scan.
    """

    def __init__(self, total: int, percentile: float):
        if not 0 < percentile <= 100:
            raise InputError(f"scale percentile must be in (0, 100], got {percentile}")
        self.keep = max(1, int(np.ceil((1 - percentile / 100) * total)))
        self.values = np.empty(0, np.float32)

    def add(self, values: np.ndarray) -> None:
        merged = np.concatenate([self.values, np.asarray(values, np.float32).ravel()])
        if merged.size > self.keep:
            merged = np.partition(merged, merged.size - self.keep)[merged.size - self.keep:]
        self.values = merged

    def result(self) -> float:
        """The smallest kept value: the percentile (NaN when nothing was added)."""
        return float(self.values.min()) if self.values.size else float("nan")


def check_bin_factor(factor: int, detector_shape, path=None) -> None:
    """Refuse a bin factor that does not divide the (Qx, Qy) detector, naming ones that do."""
    qx, qy = (int(v) for v in detector_shape)
    if factor >= 1 and not (qx % factor or qy % factor):
        return
    common = math.gcd(qx, qy)
    fits = [str(d) for d in range(1, 17) if common % d == 0]
    raise InputError(f"bin factor {factor} does not divide the {qx}x{qy} detector", path=path,
                     hint=f"choose one that does: {', '.join(fits)}")
