"""The numba kernel behind :func:`stem2eds.features.rings.ring_features`.

Kept in its own module so that importing :mod:`stem2eds.features` does not
import numba (about a second); the kernel is compiled once per input dtype
and cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _axis_weights(q: int, whole: int, frac: np.float32, f: int, dummy: int,
                  index0: np.ndarray, index1: np.ndarray, weight0: np.ndarray,
                  weight1: np.ndarray) -> None:
    """Binned block(s) and weights each raw row (column) adds to, for one pattern.

    Raw index ``p`` adds ``1 - frac`` to output ``p - whole`` and ``frac`` to
    output ``p - whole - 1``; outputs outside ``0..q-1`` go to the ``dummy``
    block. Where both outputs fall in one block the weight is exactly 1.
    """
    one = np.float32(1.0)
    for p in range(q):
        i0 = p - whole
        i1 = i0 - 1
        j0 = i0 // f if 0 <= i0 < q else dummy
        j1 = i1 // f if 0 <= i1 < q else dummy
        if j0 == j1 and j0 != dummy:
            index0[p], weight0[p], index1[p], weight1[p] = j0, one, dummy, np.float32(0.0)
        else:
            index0[p], weight0[p], index1[p], weight1[p] = j0, one - frac, j1, frac


@numba.njit(cache=True, inline="always")
def _add_strided(dst: np.ndarray, src: np.ndarray, w: np.float32, count: int, f: int) -> None:
    """``dst[j] += w * src[f j]`` for ``j < count``.

    Slices that start at the first index let every index be provably
    non-negative (no wraparound checks), and the common bin factors get a
    stride known at compile time, which LLVM vectorises; together about a
    third of the kernel's time per pattern (``benchmarks/bench_fused.py``).
    """
    if f == 4:
        for j in range(count):
            dst[j] += w * src[4 * j]
    elif f == 2:
        for j in range(count):
            dst[j] += w * src[2 * j]
    elif f == 8:
        for j in range(count):
            dst[j] += w * src[8 * j]
    elif f == 1:
        for j in range(count):
            dst[j] += w * src[j]
    else:
        for j in range(count):
            dst[j] += w * src[f * j]


@numba.njit(cache=True, inline="always")
def _scale(binned: np.ndarray, scaling: int, scale: np.float32,
           dose_reference: float) -> np.float32:
    """Scale and divide one (Qx/f, Qy/f) pattern in place; return its clip ceiling.

    The ceiling is 1, or with ``dose_reference > 0`` ``max(1, mean /
    dose_reference)`` of the divided values
    (:func:`stem2eds.preprocess.patterns.pattern_ceiling`); NaN when a
    binned value is NaN or infinite (a float scan's bad counts, which the
    clip would otherwise turn into numbers).
    """
    bx, by = binned.shape
    level = 0.0
    counts = 0.0  # float64: finite float32 values cannot overflow it
    for i in range(bx):
        for j in range(by):
            v = binned[i, j]
            counts += v
            if scaling == 1:
                v = np.float32(math.sqrt(max(v, np.float32(0.0))))
            elif scaling == 2:
                v = np.float32(math.log1p(max(v, np.float32(0.0))))
            v = v / scale
            binned[i, j] = v
            level += v
    if not math.isfinite(counts):
        return np.float32(np.nan)
    if dose_reference > 0:
        return np.float32(max(level / (bx * by) / dose_reference, 1.0))
    return np.float32(1.0)


@numba.njit(cache=True, inline="always")
def _ring_moments(binned: np.ndarray, ceiling: np.float32, ring: np.ndarray,
                  counts: np.ndarray, out: np.ndarray) -> None:
    """Ring mean, standard deviation and maximum of one scaled pattern clipped to [0, ceiling].

    ``out`` (3, R) is written; all NaN when ``ceiling`` is NaN (non-finite
    counts, :func:`_scale`): the prediction refuses them.
    """
    n_rings = counts.shape[0]
    if math.isnan(ceiling):
        out[:, :] = np.nan
        return
    bx, by = binned.shape
    total = np.zeros(n_rings, np.float64)
    total_sq = np.zeros(n_rings, np.float64)
    peak = np.zeros(n_rings, np.float32)
    for i in range(bx):
        for j in range(by):
            v = min(max(binned[i, j], np.float32(0.0)), ceiling)
            r = ring[i, j]
            total[r] += v
            total_sq[r] += v * v
            if v > peak[r]:
                peak[r] = v
    for r in range(n_rings):
        c = max(counts[r], 1.0)
        mean = total[r] / c
        out[0, r] = mean
        out[1, r] = math.sqrt(max(total_sq[r] / c - mean * mean, 0.0) + 1e-12)
        out[2, r] = peak[r]


@numba.njit(cache=True, parallel=True, fastmath=False)
def fused_ring_stats(buffer, starts, qx, qy, origins, whole, frac, f, beam_radius, scaling, scale,
                     dose_reference, ring, counts, out):  # pragma: no cover - compiled
    """Ring sum, mean square and max of each raw pattern's centred, binned, normalised form.

    Parameters
    ----------
    buffer : ndarray, shape (m,), read-only
        Raw counts (any numeric dtype), each pattern C-ordered from its start:
        an array's data or a mapped file (:class:`stem2eds.io.mapped.MappedPatterns`).
    starts : ndarray, shape (n,), int64
        Index in ``buffer`` of each pattern's first pixel.
    qx, qy : int
        Detector shape.
    origins : ndarray, shape (n, 2), float64
    whole : ndarray, shape (n, 2), int64
    frac : ndarray, shape (n, 2), float32
        :func:`~stem2eds.features.rings.split_shift` of the origins.
    f : int (bin factor)
    beam_radius : float (raw px; pixels within it of the origin count 0)
    scaling : int
        0 none, 1 sqrt, 2 log1p.
    scale : float32
        Divisor before the clip to [0, ceiling].
    dose_reference : float64
        > 0: each pattern's ceiling is ``max(1, mean / dose_reference)`` of its
        scaled values (:func:`stem2eds.preprocess.patterns.normalise`); 0: 1.
    ring : ndarray, shape (Qx/f, Qy/f), int64
    counts : ndarray, shape (R,), float64
        Pixels per ring.
    out : ndarray, shape (n, 3, R), float32
        Written: ring mean, standard deviation, maximum.
    """
    n = starts.shape[0]
    bx, by = qx // f, qy // f
    r2 = beam_radius * beam_radius
    for k in numba.prange(n):
        row_j0 = np.empty(qx, np.int64)
        row_j1 = np.empty(qx, np.int64)
        row_w0 = np.empty(qx, np.float32)
        row_w1 = np.empty(qx, np.float32)
        _axis_weights(qx, whole[k, 0], frac[k, 0], f, bx, row_j0, row_j1, row_w0, row_w1)
        rows = np.zeros((bx + 1, qy), np.float32)   # last row: the dummy block
        line = np.empty(qy, np.float32)
        o_r, o_c = origins[k, 0], origins[k, 1]
        base = starts[k]
        for p in range(qx):
            # a row view: range() indices let LLVM drop index checks and vectorise
            src = buffer[base + p * qy:base + (p + 1) * qy]
            j0, j1, w0, w1 = row_j0[p], row_j1[p], row_w0[p], row_w1[p]
            if j0 == bx and j1 == bx:
                continue
            dr = (p - o_r) * (p - o_r)
            if w1 == 0.0 and not (beam_radius > 0 and dr <= r2):
                for q in range(qy):  # most rows: one contiguous add, no copy
                    rows[j0, q] += np.float32(src[q])
                continue
            for q in range(qy):
                line[q] = np.float32(src[q])
            if beam_radius > 0 and dr <= r2:
                lo = max(0, int(math.floor(o_c - beam_radius)) - 1)
                hi = min(qy, int(math.ceil(o_c + beam_radius)) + 2)
                for q in range(lo, hi):
                    if dr + (q - o_c) * (q - o_c) <= r2:
                        line[q] = 0.0
            for q in range(qy):
                rows[j0, q] += w0 * line[q]
                rows[j1, q] += w1 * line[q]
        # Columns: binned column J takes raw column f J + t + m with weight
        # 1 - r (m = 0), 1 (0 < m < f) or r (m = f); for each m that is a
        # constant-stride loop over the J whose column is on the detector.
        t, r = whole[k, 1], frac[k, 1]
        binned = np.zeros((bx, by), np.float32)
        for m in range(f + 1):
            w = np.float32(1.0) - r if m == 0 else (r if m == f else np.float32(1.0))
            j_lo = max(0, -((t + m) // f))
            count = min(by - 1, (qy - 1 - t - m) // f) + 1 - j_lo
            if count <= 0:
                continue
            first = f * j_lo + t + m
            for i in range(bx):
                _add_strided(binned[i, j_lo:], rows[i, first:], w, count, f)
        _ring_moments(binned, _scale(binned, scaling, scale, dose_reference), ring, counts,
                      out[k])
