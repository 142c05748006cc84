"""Unscattered-beam origin: sub-pixel measurement per pattern and a smooth fit over the scan.

The direct (unscattered) disk moves across the detector as the probe scans
(descan). :func:`find_origins` measures its centre in every pattern of a batch
at once; :func:`fit_origins` fits a plane or second-order polynomial of the
origin against scan position, rejecting outliers, so a few bad measurements
(empty, low-dose or strongly diffracting patterns) do not move any pattern.

Coordinates are detector pixels ``(row, column)`` of the input patterns, with
pixel centres at integer positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

#: Factor by which the coarse search bins the detector (to about 64 px across).
_COARSE_TARGET = 64
#: Aperture radius beyond the disk radius (px) for the centre of mass: covers
#: the blurred disk edge while keeping out most Bragg spots and diffuse signal.
APERTURE_MARGIN = 2.0


@dataclass
class OriginBatch:
    """Origins measured in one batch of patterns.

    Attributes
    ----------
    origins : ndarray, shape (n, 2)
        Disk centres (row, column) in detector pixels; NaN where a pattern
        has no measurable disk (e.g. no counts at all).
    disk_sum : ndarray, shape (2h+1, 2h+1)
        Sum of the windows cut around the rounded origins (for the probe
        radius of the mean pattern); ``h`` is :attr:`half_window`.
    n_summed : int
        Number of windows in ``disk_sum``.
    half_window : int
    probe_radius : float
        Disk radius (px) at half maximum of the mean of the windows aligned on
        the found origins (the given radius when no pattern had a disk).
    """

    origins: np.ndarray
    disk_sum: np.ndarray
    n_summed: int
    half_window: int
    probe_radius: float


def _binned(patterns: np.ndarray) -> tuple[np.ndarray, int]:
    """Patterns binned to about 64 px across for the coarse search, and the factor.

    Only the argmax of a box filter is taken from these, so 8/16-bit counts
    are binned by OpenCV's area resampling in their own dtype (block mean
    rounded to an integer: cheaper than an exact float sum, and
    rounding by at most half a count per pixel cannot move the disk's
    maximum); other dtypes get the exact block sum.
    """
    from .patterns import block_sum

    f = max(1, min(patterns.shape[1:]) // _COARSE_TARGET)
    n, qx, qy = patterns.shape
    bx, by = qx // f, qy // f
    if f > 1 and patterns.dtype in (np.uint8, np.uint16) and n > 0:
        import cv2

        tall = np.ascontiguousarray(patterns[:, :bx * f, :by * f]).reshape(n * bx * f, by * f)
        mean = cv2.resize(tall, (by, n * bx), interpolation=cv2.INTER_AREA)
        return mean.reshape(n, bx, by).astype(np.float32), f
    return block_sum(patterns, f), f


def _coarse_centres(small: np.ndarray, f: int, radius: float) -> np.ndarray:
    """Integer disk positions (n, 2) from the argmax of binned, box-filtered patterns.

    A box of the disk's diameter (``radius`` in input px) sums the whole disk
    at its centre, a matched filter that makes the extended disk win over
    Bragg spots and hot pixels brighter per pixel but with fewer counts.

    Parameters
    ----------
    small : ndarray, shape (n, Qx/f, Qy/f)
        Patterns binned by ``f``.
    """
    n, bx, by = small.shape
    size = 2 * int(round(max(1.0, radius / f))) + 1
    flat = _box_sums(small, size).reshape(n, -1).argmax(axis=1)
    rows, cols = np.divmod(flat, by)
    # centre of the binned pixel in input pixel coordinates
    centres = np.stack([rows * f + (f - 1) / 2, cols * f + (f - 1) / 2], axis=1)
    return np.rint(centres).astype(np.int64)


def _box_sums(stack: np.ndarray, size: int) -> np.ndarray:
    """Sums over ``size x size`` boxes centred on every pixel of (n, H, W), zero outside.

    The same values as ``scipy.ndimage.uniform_filter(mode="constant")``
    times ``size**2``, exact for integer counts: OpenCV's box filter
    (running sums in float64) over the patterns stacked into one tall image,
    ``size // 2`` zero rows after each so that no box reaches into the next
    pattern. One call for the whole batch, about five times faster than a
    summed-area table in numpy; SciPy stays off the prediction path.
    """
    import cv2

    n, h, w = stack.shape
    half = size // 2
    if n == 0 or h == 0 or w == 0:
        return np.zeros((n, h, w))
    tall = np.zeros((n, h + half, w), np.float64)
    tall[:, :h] = stack
    sums = cv2.boxFilter(tall.reshape(n * (h + half), w), cv2.CV_64F, (size, size),
                         normalize=False, borderType=cv2.BORDER_CONSTANT)
    return sums.reshape(n, h + half, w)[:, :h]


def _gaussian(stack: np.ndarray, sigma: float, mode: str) -> np.ndarray:
    """Gaussian filter of (n, H, W) over the last two axes, kernel truncated at 4 sigma.

    ``mode`` is ``np.pad``'s: ``"edge"`` (scipy.ndimage's ``nearest``) or
    ``"symmetric"`` (its ``reflect``). Same kernel as
    ``scipy.ndimage.gaussian_filter``; hand-written only to keep SciPy off
    the prediction path (see :func:`_box_sums`).
    """
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = np.asarray(stack, dtype=np.float64)
    n, h, w = out.shape
    for axis, length in ((1, h), (2, w)):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode=mode)
        acc = np.zeros_like(out)
        for k, weight in enumerate(taps):
            acc += weight * (padded[:, k:k + length] if axis == 1 else padded[:, :, k:k + length])
        out = acc
    return out.astype(stack.dtype if stack.dtype.kind == "f" else np.float64, copy=False)


def _batch_radius(patterns: np.ndarray, small: np.ndarray, f: int) -> float:
    """Disk radius (px) of the batch's mean pattern, where Bragg spots average out."""
    qx, qy = patterns.shape[1:]
    centre = _coarse_centres(small.mean(axis=0, keepdims=True), f, 4.0 * f)
    h0 = max(6, min(qx, qy) // 6)
    mean = patterns.mean(axis=0, dtype=np.float64)[None]
    return disk_radius(_gather_windows(mean, centre, h0)[0])


def _masked_median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median over the last two axes of ``values`` (n, W, W) where ``mask`` (n, W, W) holds.

    Same result as ``np.nanmedian`` of the masked-out-as-NaN rows (NaN where
    a row has no valid value), from one sort: NaNs sort last, so the median
    of the ``k`` valid values sits at positions ``(k-1)//2`` and ``k//2``.
    ``nanmedian`` goes through masked arrays and is several times slower.
    """
    n = len(values)
    filled = np.where(mask, values, np.nan).reshape(n, -1)
    filled.sort(axis=1)
    k = mask.reshape(n, -1).sum(axis=1)
    rows = np.arange(n)
    lo = filled[rows, np.maximum(k - 1, 0) // 2]
    hi = filled[rows, k // 2 if filled.shape[1] else 0]
    med = (lo + hi) / 2
    return np.where(k > 0, med, np.nan)[:, None]


def _gather_windows(patterns: np.ndarray, centres: np.ndarray, half: int) -> np.ndarray:
    """Cut (n, 2h+1, 2h+1) windows around integer centres, zero outside the detector."""
    n, qx, qy = patterns.shape
    offs = np.arange(-half, half + 1)
    rows = centres[:, 0:1] + offs  # (n, W)
    cols = centres[:, 1:2] + offs
    valid = (((rows >= 0) & (rows < qx))[:, :, None] & ((cols >= 0) & (cols < qy))[:, None, :])
    k = np.arange(n)[:, None, None]
    win = patterns[k, np.clip(rows, 0, qx - 1)[:, :, None], np.clip(cols, 0, qy - 1)[:, None, :]]
    return np.where(valid, win, 0).astype(np.float32)


def disk_radius(image: np.ndarray, smooth: float = 1.0) -> float:
    """Radius (px) of the bright disk in a (H, W) image, from its half-maximum area.

    The background is the median of the image border; the disk is the set of
    pixels above half way between background and the maximum. The radius is
    ``sqrt(area / pi)``, which is insensitive to a symmetric edge blur.
    ``smooth`` (px, Gaussian sigma) tames noise in single or few patterns;
    use 0 on a mean of many, where it would only lower the peak of a small disk.
    """
    img = np.asarray(image, dtype=np.float64)
    if smooth > 0:
        img = _gaussian(img[None], smooth, "symmetric")[0]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = float(np.median(border))
    peak = float(img.max())
    if not peak > bg:
        return float("nan")
    area = np.count_nonzero(img > bg + 0.5 * (peak - bg))
    return float(np.sqrt(area / np.pi))


def find_origins(patterns: np.ndarray, probe_radius: float | None = None,
                 n_iter: int = 4) -> OriginBatch:
    """Sub-pixel centre of the unscattered disk in each pattern of a batch.

    Vectorised over the batch: (1) coarse integer position from the argmax of
    the binned pattern box-filtered on the scale of the disk; (2) disk radius
    from the half-maximum area of the windows aligned on (1) (unless given); (3) iterated centre of mass of
    saturating weights inside a circular aperture of ``r + 2`` px centred on
    the current estimate: on the lightly smoothed window, weight
    ``clip((I - bg) / (0.5 (L - bg)), 0, 1)`` with ``bg`` the median of a ring
    outside the aperture and ``L`` the disk's plateau (median of its inner
    60 %). The weight is 1 across the disk and graded over its edge, so shot
    noise inside the disk and Bragg spots brighter than the disk carry no
    weight, and the aperture keeps out spots beyond the disk.

    Parameters
    ----------
    patterns : ndarray, shape (n, Qx, Qy)
        Diffraction patterns (any numeric dtype, counts).
    probe_radius : float, optional
        Disk radius in px; measured from the batch when None.
    n_iter : int
        Centre-of-mass iterations (the aperture is re-centred each time).

    Returns
    -------
    OriginBatch
        ``origins`` (n, 2) as (row, column) detector pixels, NaN where a
        pattern has no counts near its brightest spot.
    """
    patterns = np.asarray(patterns)
    if patterns.ndim != 3:
        raise ValueError(f"patterns must be (n, Qx, Qy), got shape {patterns.shape}")
    if patterns.dtype.kind == "f" and not np.isfinite(patterns).all():  # else: "noise"
        raise InputError("the patterns hold NaN or infinite values",
                         hint="replace them (e.g. dead pixels by 0) and convert the scan again")
    n, qx, qy = patterns.shape
    small, f = _binned(patterns)
    if probe_radius is None:
        # the mean pattern is blurred by descan, so its radius only sets the
        # box size; the radius itself comes from windows aligned per pattern
        rough = _batch_radius(patterns, small, f)
        if not np.isfinite(rough):
            rough = min(qx, qy) / 16
        coarse = _coarse_centres(small, f, rough)
        h0 = int(np.ceil(1.5 * rough)) + 4
        probe_radius = disk_radius(_gather_windows(patterns, coarse, h0).mean(axis=0))
        if not np.isfinite(probe_radius):
            probe_radius = rough
    coarse = _coarse_centres(small, f, float(probe_radius))
    aperture = float(probe_radius) + APERTURE_MARGIN
    half = int(np.ceil(aperture)) + 3
    offs = np.arange(-half, half + 1, dtype=np.float64)
    dist_local = np.hypot(offs[:, None], offs[None, :])
    ring = dist_local > aperture + 0.5  # background pixels, relative to the window centre

    inner = 0.6 * float(probe_radius)
    centre = coarse.astype(np.float64)
    win_centre = coarse
    windows = _gather_windows(patterns, coarse, half)
    smooth = _gaussian(windows, 1.0, "edge")
    for it in range(n_iter):
        if it == 1:
            # re-cut the windows around the first estimate so the aperture
            # and the background ring sit well inside them
            win_centre = np.rint(np.nan_to_num(centre, nan=0.0)).astype(np.int64)
            win_centre[:, 0] = np.clip(win_centre[:, 0], 0, qx - 1)
            win_centre[:, 1] = np.clip(win_centre[:, 1], 0, qy - 1)
            windows = _gather_windows(patterns, win_centre, half)
            smooth = _gaussian(windows, 1.0, "edge")
        rel = np.nan_to_num(centre - win_centre)  # estimate relative to the window centre
        d2 = ((offs[None, :, None] - rel[:, 0, None, None]) ** 2
              + (offs[None, None, :] - rel[:, 1, None, None]) ** 2)
        bg = np.median(smooth[:, ring], axis=1)[:, None, None]
        # plateau level of the disk: median of its inner part
        level = _masked_median(smooth, d2 <= inner ** 2)[:, :, None]
        # Saturating weights: 1 inside the disk, graded across its edge, 0
        # outside. Shot noise inside the disk and Bragg spots brighter than
        # the disk then carry no weight; only the edge position matters.
        contrast = np.maximum(level - bg, 1e-12)
        weights = np.clip((smooth - bg) / (0.5 * contrast), 0, 1) * (d2 <= aperture ** 2)
        weights = np.where(level > bg, weights, 0)
        total = weights.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            com_r = (weights.sum(axis=2) * offs).sum(axis=1) / total
            com_c = (weights.sum(axis=1) * offs).sum(axis=1) / total
        new = np.stack([com_r, com_c], axis=1) + win_centre
        centre = np.where(total[:, None] > 0, new, np.nan)
    final = np.rint(np.nan_to_num(centre, nan=0.0)).astype(np.int64)
    ok = np.all(np.isfinite(centre), axis=1)
    disk_sum = _gather_windows(patterns[ok], final[ok], half).sum(axis=0) if ok.any() \
        else np.zeros((2 * half + 1,) * 2, np.float32)
    if ok.any():
        # the windows aligned on the final origins give a sharper mean disk
        # than the coarse alignment the aperture radius came from
        measured = disk_radius(disk_sum / ok.sum(), smooth=0.0 if ok.sum() >= 20 else 1.0)
        if np.isfinite(measured):
            probe_radius = measured
    return OriginBatch(centre, disk_sum.astype(np.float64), int(ok.sum()), half,
                       float(probe_radius))


@dataclass
class OriginFit:
    """A smooth model of the origin against scan position.

    Attributes
    ----------
    method : str
        ``"plane"``, ``"poly2"`` or ``"none"`` (measured origins kept, gaps
        filled with the median).
    fitted : ndarray, shape (Rx, Ry, 2)
        Fitted origins (row, column) in detector pixels.
    coefficients : ndarray, shape (2, P)
        Per axis (row, column), coefficients of ``1, u, v[, u^2, u v, v^2]``
        with ``u, v`` the scan row and column scaled to [0, 1].
    inliers : ndarray of bool, shape (Rx, Ry)
        Positions used by the final fit (False where not measured).
    rms_residual : float
        RMS distance (px) between measured and fitted origins over inliers.
    sampled : ndarray of bool, shape (Rx, Ry), or None
        Positions whose origin was measured (see :func:`sample_grid`); None
        when every position was.
    """

    method: str
    fitted: np.ndarray
    coefficients: np.ndarray
    inliers: np.ndarray
    rms_residual: float
    sampled: np.ndarray | None = None

    @property
    def n_outliers(self) -> int:
        """Measured positions left out of the fit (no disk found, or rejected)."""
        n_measured = self.inliers.size if self.sampled is None else int(self.sampled.sum())
        return int(n_measured - self.inliers.sum())

    @property
    def drift(self) -> tuple[float, float]:
        """Peak-to-peak range (row, column) of the fitted origin, in px."""
        span = np.ptp(self.fitted.reshape(-1, 2), axis=0)
        return float(span[0]), float(span[1])


def _design(shape: tuple[int, int], method: str) -> np.ndarray:
    rx, ry = shape
    u, v = np.meshgrid(np.arange(rx) / max(rx - 1, 1), np.arange(ry) / max(ry - 1, 1),
                       indexing="ij")
    u, v = u.ravel(), v.ravel()
    cols = [np.ones_like(u), u, v]
    if method == "poly2":
        cols += [u * u, u * v, v * v]
    return np.stack(cols, axis=1)


def sample_grid(shape: tuple[int, int], n_positions: int
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows and columns of a sub-grid of about ``n_positions`` spread evenly over a scan.

    A smooth origin model (plane, poly2) has 3 or 6 coefficients per axis,
    so a few hundred well-spread positions pin it down far better than the
    per-pattern jitter: with 1024 positions and 0.15 px of jitter the fitted
    origins move by about 0.01 px. The grid spans the whole region, first
    and last rows and columns included (a polynomial is least certain at
    the edges), with equal numbers of positions per unit length along both
    scan axes and at least 3 rows and columns where the scan has them.

    Parameters
    ----------
    shape : (Rx, Ry)
        Scan (region) shape.
    n_positions : int
        Target number of positions; 0 (or at least ``Rx * Ry``) means every position.

    Returns
    -------
    (rows, cols) : two sorted int arrays, or None
        Scan rows and columns of the sub-grid (its positions are their outer
        product); None when every position is to be measured.
    """
    rx, ry = (int(v) for v in shape)
    n_positions = int(n_positions)
    if n_positions <= 0 or n_positions >= rx * ry:
        return None
    n_rows = int(np.clip(round(np.sqrt(n_positions * rx / ry)), min(3, rx), rx))
    n_cols = int(np.clip(round(n_positions / n_rows), min(3, ry), ry))
    rows = np.unique(np.rint(np.linspace(0, rx - 1, n_rows)).astype(np.int64))
    cols = np.unique(np.rint(np.linspace(0, ry - 1, n_cols)).astype(np.int64))
    if len(rows) * len(cols) >= rx * ry:
        return None
    return rows, cols


def fit_origins(origins: np.ndarray, method: str = "plane", n_sigma: float = 3.5,
                max_iter: int = 20, sampled: np.ndarray | None = None) -> OriginFit:
    """Least-squares fit of origin vs scan position with iterative outlier rejection.

    Parameters
    ----------
    origins : ndarray, shape (Rx, Ry, 2)
        Measured origins (row, column) in detector pixels; NaN = missing.
    method : {"plane", "poly2", "none"}
    n_sigma : float
        A position is an outlier when its residual distance exceeds
        ``n_sigma`` robust standard deviations (from the median residual,
        which for Gaussian errors is 1.177 sigma per axis).
    max_iter : int
    sampled : ndarray of bool, shape (Rx, Ry), optional
        Positions that were measured (a sub-grid, :func:`sample_grid`); the
        others are not fitted and not counted as outliers. ``none`` needs
        every position measured.

    Returns
    -------
    OriginFit
        ``fitted`` covers every position (Rx, Ry).
    """
    origins = np.asarray(origins, dtype=np.float64)
    rx, ry, _ = origins.shape
    flat = origins.reshape(-1, 2)
    finite = np.all(np.isfinite(flat), axis=1)
    if sampled is not None:
        sampled = np.asarray(sampled, dtype=bool).reshape(rx, ry)
        finite &= sampled.ravel()
        if method == "none" and not sampled.all():
            raise ValueError("origin fit 'none' needs the origin of every position")
    if not finite.any():
        raise ValueError("no pattern has a measurable unscattered disk")
    if method == "none":
        med = np.median(flat[finite], axis=0)
        fitted = np.where(finite[:, None], flat, med).reshape(rx, ry, 2)
        return OriginFit("none", fitted, med[:, None], finite.reshape(rx, ry), 0.0)
    if method not in ("plane", "poly2"):
        raise ValueError(f"unknown origin fit {method!r}")
    design = _design((rx, ry), method)
    inliers = finite.copy()
    if inliers.sum() <= design.shape[1]:
        # too few positions to fit a surface: a constant is all the data supports
        design = design[:, :1]
    coef = np.zeros((design.shape[1], 2))
    for _ in range(max_iter):
        coef, *_ = np.linalg.lstsq(design[inliers], flat[inliers], rcond=None)
        resid = np.full(len(flat), np.inf)
        resid[finite] = np.linalg.norm(flat[finite] - design[finite] @ coef, axis=1)
        sigma = max(np.median(resid[inliers]) / 1.177, 1e-3)
        new = finite & (resid <= n_sigma * sigma)
        if np.array_equal(new, inliers) or new.sum() <= design.shape[1]:
            break
        inliers = new
    fitted = (design @ coef).reshape(rx, ry, 2)
    rms = float(np.sqrt(np.mean(resid[inliers] ** 2))) if inliers.any() else float("nan")
    return OriginFit(method, fitted, coef.T, inliers.reshape(rx, ry), rms, sampled)


#: Limits of a usable central beam: the disk found in at least 10 % of the measured
#: patterns (simulated low-dose scans: ~40 %), at least half of those kept by the
#: fit, and an rms fit residual (jitter) under max(3 px, disk radius). Scans with
#: a beam give 0.003-0.2 px (simulator, blockfile, Medipix); a TIA scan without one 105 px.
MIN_FOUND_FRACTION = 0.1
MIN_INLIER_FRACTION = 0.5
MAX_JITTER_PX = 3.0


def origin_problem(measured: np.ndarray, fit: OriginFit, probe_radius: float) -> str | None:
    """Why the measured origins cannot be the unscattered beam (one sentence), or None.

    Parameters
    ----------
    measured : ndarray, shape (Rx, Ry, 2)
        NaN where no disk was found or (sub-grid) not measured.
    fit : OriginFit
    probe_radius : float
        Disk radius (px) of the mean disk.
    """
    n_measured = measured[..., 0].size if fit.sampled is None else int(fit.sampled.sum())
    n_found = int(np.isfinite(measured[..., 0]).sum())
    n_used = int(fit.inliers.sum())
    if n_measured and n_found < MIN_FOUND_FRACTION * n_measured:
        return (f"the unscattered beam (central disk) was found in only {n_found} of "
                f"{n_measured} measured patterns")
    limit = max(MAX_JITTER_PX, float(probe_radius) if np.isfinite(probe_radius) else 0.0)
    if fit.method != "none" and (fit.rms_residual > limit
                                 or n_used < MIN_INLIER_FRACTION * n_found):
        return (f"the measured beam origins are noise, not a descan: the {fit.method} fit "
                f"leaves an rms residual of {fit.rms_residual:.3g} px (jitter is at most "
                f"{limit:.3g} px), uses {n_used} of {n_found} patterns, and its origin "
                f"moves {max(fit.drift):.4g} px across the scan")
    return None
