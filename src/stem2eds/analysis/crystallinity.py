"""Crystallinity map: where the film is crystalline, from the physics of each pattern alone.

An amorphous film scatters into rings: at a fixed distance from the beam
centre the intensity is the same at every angle, up to noise (Poisson, and
speckle for a coherent nanobeam). A crystalline grain adds Bragg disks:
compact spots, each the size of the probe's disk, at the reflections of its
orientation. So the score of a pattern is how far its brightest
disk-sized spot rises above the ring it sits on, in units of that ring's
own spread:

1. polar gather of the ring band (nearest pixel, angles evenly spaced per
   radius): per radius the *median* over angle is the amorphous background
   and ``1.4826 x MAD`` over angle its noise (both robust to the few angles
   a Bragg disk covers);
2. every pixel of the band as a z-score against its ring's background and
   noise;
3. a box filter of the Bragg disk's size (matched filter), scaled so that
   independent unit noise stays unit (:func:`disk_zmaps`);
4. a grain spans several probe positions at one orientation, so its disks
   sit at the same detector pixels in neighbouring patterns, while the
   speckle of an amorphous film changes from position to position: the
   score is the largest geometric mean, over detector pixels, of the
   position's z-score and the mean of its scan neighbours'
   (:func:`coherent_scores`; :func:`bragg_scores` is the score of a pattern
   alone).

The score does not use any training data. It is thresholded against the
scan's own majority: a position is ``crystalline`` when its score's robust
z-score over the scan (median and MAD of all positions, the amorphous
majority) exceeds ``threshold`` *and* the score itself exceeds
``min_score`` (a significance in noise units, so that a scan whose scores
barely vary does not flag a negligible excess). The noise tail of the score
depends on the band's size and the counts per pixel, so the scan's own
spread, not a fixed significance, sets the bar; grains must stay a minority
of the positions for it to hold.

Pure functions on arrays, plus :func:`crystallinity_map`, which streams
blocks of patterns (``(start, patterns)`` pairs as yielded by
:func:`stem2eds.io.stream.iter_blocks`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterable

import numpy as np

from ..errors import InputError
from .anomaly import robust_z

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class CrystallinitySettings:
    """How patterns are scored for Bragg disks and the score thresholded.

    Attributes
    ----------
    r_min : float
        Inner radius of the ring band, detector px of the scored patterns
        (outside the central beam disk).
    r_max : float or None
        Outer radius of the band, px; None: the largest radius inside the
        detector from every origin.
    disk_radius : float
        Radius of a Bragg disk (the probe's disk) in px of the scored
        patterns; sets the matched filter (box of ``2 * ceil(disk_radius) + 1`` px).
    threshold : float
        Robust z-score of the score over the scan above which a position is
        crystalline.
    min_score : float
        Smallest score (in noise units of the rings) that counts as a Bragg disk.
    """

    r_min: float = 3.0
    r_max: float | None = None
    disk_radius: float = 1.0
    threshold: float = 5.0
    min_score: float = 3.0

    def __post_init__(self):
        if not self.r_min >= 0:
            raise InputError(f"`r_min` must be non-negative, got {self.r_min}")
        if self.r_max is not None and not self.r_max > self.r_min + 1:
            raise InputError(f"`r_max` ({self.r_max}) must exceed `r_min` ({self.r_min}) "
                             "by more than one pixel")
        if not self.disk_radius > 0:
            raise InputError(f"`disk_radius` must be positive, got {self.disk_radius}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def box(self) -> int:
        """Side of the matched filter, px (odd)."""
        return 2 * int(np.ceil(self.disk_radius - 0.5)) + 1


def band_limits(shape: tuple[int, int], origins: np.ndarray,
                settings: CrystallinitySettings) -> tuple[float, float]:
    """Inner and outer radius of the ring band, px.

    The outer radius defaults to the largest circle about every origin that
    stays inside the detector.

    Raises
    ------
    InputError
        When the band is empty (origins too close to the edge, or ``r_max``
        beyond the detector is not the problem: it is clipped).
    """
    o = np.asarray(origins, np.float64).reshape(-1, 2)
    inside = float(np.min(np.concatenate([o, np.asarray(shape, np.float64) - 1 - o], axis=1)))
    r_max = inside if settings.r_max is None else min(settings.r_max, inside)
    if r_max <= settings.r_min + 1:
        raise InputError(f"the ring band is empty: `r_min` {settings.r_min:g} px, outer radius "
                         f"{r_max:.1f} px on a {shape[0]}x{shape[1]} detector",
                         hint="lower `r_min`, or check the pattern origins")
    return float(settings.r_min), float(r_max)


def ring_background(patterns: np.ndarray, origins: np.ndarray, r_min: float, r_max: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and robust spread over angle of every ring, by a polar gather.

    Parameters
    ----------
    patterns : ndarray, shape (n, Qx, Qy)
    origins : ndarray, shape (n, 2)
        Beam centre (row, column) of each pattern, px.
    r_min, r_max : float
        Ring band, px (one ring per pixel of radius).

    Returns
    -------
    radii : ndarray, shape (R,)
        Ring radii, px (integers from ``floor(r_min)`` to ``ceil(r_max)``).
    median, sigma : ndarray, shape (n, R), float64
        Per pattern and ring: median over angle and 1.4826 x MAD (floored at
        a small fraction of the band's mean so that a flat ring divides safely).
    """
    p = np.asarray(patterns, np.float64)
    n, qx, qy = p.shape
    radii = np.arange(np.floor(r_min), np.ceil(r_max) + 1)
    # angles per ring: one sample per pixel of the outermost circumference
    n_angles = max(16, int(np.ceil(2 * np.pi * radii[-1])))
    theta = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    dy = radii[:, None] * np.sin(theta)[None, :]
    dx = radii[:, None] * np.cos(theta)[None, :]
    o = np.asarray(origins, np.float64).reshape(n, 2)
    rows = np.clip(np.rint(o[:, 0, None, None] + dy), 0, qx - 1).astype(np.intp)
    cols = np.clip(np.rint(o[:, 1, None, None] + dx), 0, qy - 1).astype(np.intp)
    polar = p.reshape(n, -1)[np.arange(n)[:, None, None], rows * qy + cols]  # (n, R, T)
    median = np.median(polar, axis=2)
    mad = np.median(np.abs(polar - median[:, :, None]), axis=2)
    floor = 1e-3 * np.maximum(polar.mean(axis=(1, 2)), 1e-12)[:, None]
    return radii, median, np.maximum(_MAD_TO_SIGMA * mad, floor)


def disk_zmaps(patterns: np.ndarray, origins: np.ndarray,
               settings: CrystallinitySettings = CrystallinitySettings()) -> np.ndarray:
    """Every band pixel's matched-filter z-score against its ring (0 outside the band).

    Parameters
    ----------
    patterns : ndarray, shape (n, Qx, Qy)
        Raw counts or preprocessed patterns (any intensity scale: the
        z-scores are in units of each ring's own spread).
    origins : ndarray, shape (n, 2)
        Beam centre (row, column) of each pattern, px (for preprocessed,
        centred patterns: the detector centre for every pattern).
    settings : CrystallinitySettings

    Returns
    -------
    ndarray, shape (n, Qx, Qy), float32
        Mean z-score over a disk-sized box times the box side (independent
        unit noise keeps unit variance), at box centres inside the band.
    """
    from scipy.ndimage import uniform_filter

    # square root: stabilises the Poisson variance and its skew, so that the noise
    # tail of the score is close to that of a normal maximum
    p = np.sqrt(np.maximum(np.asarray(patterns, np.float64), 0.0))
    n, qx, qy = p.shape
    if n == 0:
        return np.zeros((0, qx, qy), np.float32)
    o = np.asarray(origins, np.float64).reshape(n, 2)
    r_min, r_max = band_limits((qx, qy), o, settings)
    radii, median, sigma = ring_background(p, o, r_min, r_max)
    yy, xx = np.indices((qx, qy), dtype=np.float64)
    r = np.hypot(yy[None] - o[:, 0, None, None], xx[None] - o[:, 1, None, None])  # (n, Qx, Qy)
    ring = np.clip(np.rint(r - radii[0]).astype(np.intp), 0, len(radii) - 1)
    band = (r >= r_min) & (r <= r_max)
    bg = np.take_along_axis(median, ring.reshape(n, -1), axis=1).reshape(p.shape)
    sd = np.take_along_axis(sigma, ring.reshape(n, -1), axis=1).reshape(p.shape)
    z = np.where(band, (p - bg) / sd, 0.0)
    k = settings.box
    smooth = uniform_filter(z, size=(1, k, k), mode="constant") * k
    # only spots whose centre lies in the band (the filter spreads the band's edge)
    return np.where(band, smooth, 0.0).astype(np.float32)


def bragg_scores(patterns: np.ndarray, origins: np.ndarray,
                 settings: CrystallinitySettings = CrystallinitySettings()) -> np.ndarray:
    """Per-pattern Bragg-disk significance: the brightest disk-sized spot above its ring.

    Parameters
    ----------
    patterns : ndarray, shape (n, Qx, Qy)
    origins : ndarray, shape (n, 2)
    settings : CrystallinitySettings

    Returns
    -------
    ndarray, shape (n,), float64
        Largest value of :func:`disk_zmaps`; about 3-5 for amorphous
        patterns with pure Poisson noise (the maximum of a few thousand unit
        normals), more with speckle.
    """
    z = disk_zmaps(patterns, origins, settings)
    return z.reshape(len(z), -1).max(axis=1).astype(np.float64) if len(z) else np.zeros(0)


def coherent_scores(above: np.ndarray | None, row: np.ndarray, below: np.ndarray | None
                    ) -> np.ndarray:
    """Per position of one scan row: the brightest spot that its scan neighbours share.

    A grain spans several probe positions at one orientation, so its Bragg
    disks sit at the same detector pixels in neighbouring patterns; the
    speckle of an amorphous film does not. The score is the largest, over
    detector pixels, of the smaller of the position's own (positive) z-score
    and the mean of its scan neighbours' (up to four; fewer at the scan's
    edge). The smaller, not a product: an amorphous position beside a grain
    must not borrow the grain's disks.

    Parameters
    ----------
    above, row, below : ndarray, shape (Ry, Qx, Qy), or None
        :func:`disk_zmaps` of the scan rows r - 1, r, r + 1 (None beyond the scan).

    Returns
    -------
    ndarray, shape (Ry,), float64
    """
    pos = np.maximum(np.asarray(row, np.float64), 0.0)
    total = np.zeros_like(pos)
    count = np.zeros(len(pos))
    for other in (above, below):
        if other is not None:
            total += np.maximum(other, 0.0)
            count += 1
    total[1:] += pos[:-1]
    total[:-1] += pos[1:]
    count[1:] += 1
    count[:-1] += 1
    mean = total / np.maximum(count, 1)[:, None, None]
    return np.minimum(pos, mean).reshape(len(pos), -1).max(axis=1)


def crystalline_mask(score: np.ndarray, settings: CrystallinitySettings = CrystallinitySettings()
                     ) -> np.ndarray:
    """Threshold a score map against the scan's own (amorphous) majority.

    Parameters
    ----------
    score : ndarray, shape (Rx, Ry)
    settings : CrystallinitySettings

    Returns
    -------
    ndarray of bool, shape (Rx, Ry)
        ``robust_z(score) > threshold`` and ``score > min_score``; False where NaN.
    """
    s = np.asarray(score, np.float64)
    with np.errstate(invalid="ignore"):
        return (robust_z(s) > settings.threshold) & (s > settings.min_score)


def crystallinity_map(blocks: Iterable[tuple[int, np.ndarray]], origins: np.ndarray | None,
                      shape: tuple[int, int],
                      settings: CrystallinitySettings = CrystallinitySettings()
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Score a whole scan, streamed block by block, and threshold it.

    The score of a position is :func:`coherent_scores`: its Bragg disks
    must be shared by its scan neighbours. Only three scan rows of z-maps
    are held at a time.

    Parameters
    ----------
    blocks : iterable of (start, patterns)
        In scan (C) order: ``start`` the flat index of the block's first
        position, ``patterns`` (n, Qx, Qy), e.g. ``ScanBundle.iter_patterns(batch)``
        or :func:`stem2eds.io.stream.iter_blocks`.
    origins : ndarray, shape (Rx, Ry, 2), or None
        Beam centre of every pattern, px; None: the detector centre (for
        preprocessed, centred patterns).
    shape : (Rx, Ry)
    settings : CrystallinitySettings

    Returns
    -------
    score : ndarray, shape (Rx, Ry), float32
        Coherent Bragg-disk score per position (NaN where no pattern came).
    crystalline : ndarray of bool, shape (Rx, Ry)
        :func:`crystalline_mask` of ``score``.
    """
    rx, ry = shape
    out = np.full(shape, np.nan)
    flat_origins = None if origins is None else np.asarray(origins, np.float64).reshape(-1, 2)
    fixed_band = False

    def band(qx: int, qy: int) -> CrystallinitySettings:
        # one band for the whole scan (from every origin), not one per block
        nonlocal settings, fixed_band
        if not fixed_band and flat_origins is not None:
            settings = replace(settings, r_max=band_limits((qx, qy), flat_origins, settings)[1])
        fixed_band = True
        return settings
    rows: dict[int, np.ndarray] = {}  # scan row -> z-maps (Ry, Qx, Qy), filled in order
    filled = 0  # positions received so far (blocks come in C order)
    done = 0  # rows scored so far

    def finish(r: int) -> None:
        out[r] = coherent_scores(rows.get(r - 1), rows[r], rows.get(r + 1))
        rows.pop(r - 1, None)

    for start, patterns in blocks:
        n = len(patterns)
        if start != filled:
            raise ValueError(f"blocks out of order: expected position {filled}, got {start}")
        if flat_origins is None:
            qx, qy = np.shape(patterns)[1:]
            o = np.tile([(qx - 1) / 2, (qy - 1) / 2], (n, 1))
        else:
            o = flat_origins[start:start + n]
        z = disk_zmaps(patterns, o, band(*np.shape(patterns)[1:]))
        for i in range(n):
            r, c = divmod(start + i, ry)
            if r not in rows:
                rows[r] = np.zeros((ry,) + z.shape[1:], np.float32)
            rows[r][c] = z[i]
        filled += n
        while done < rx and filled >= min((done + 2) * ry, rx * ry):
            finish(done)
            done += 1
    score = out.astype(np.float32)
    return score, crystalline_mask(score, settings)  # the threshold is not band-dependent
