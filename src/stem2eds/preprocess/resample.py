"""Flux-conserving resampling of diffraction patterns onto a finer or coarser pixel grid.

Plain area resampling (:func:`area_resample`) shares a scan pixel's counts
equally among the run pixels it overlaps. That is exact for the total but
wrong inside a coarse pixel wherever the pattern is not flat over it, and
two places matter to the models:

* the edge of the unscattered beam. A scan pixel straddling the disk edge
  holds thousands of beam counts; shared equally, up to half of them land
  outside the disk, beyond the radius preprocessing removes, and the
  innermost ring features grow (docs/transfer.md gives the numbers);
* the amorphous rings. Replicating coarse pixels blurs their radial profile
  by a scan pixel, which moves the ring means slightly but systematically.

:func:`guided_resample` therefore shares each scan pixel's counts in
proportion to a model of the pattern at the run's resolution: the beam disk
(a disk of fitted radius at each pattern's measured sub-pixel origin, with
the one-pixel edge ramp of pixel coverage) on top of a smooth (bicubic)
interpolation of the rest. The counts of every scan pixel are conserved
exactly; only their distribution inside it comes from the model. The disk
radius is fitted on the scan's own pixels (the disk integrated over each
scan pixel), not taken from a half-maximum area, which is quantised to
whole run pixels and biased by a binned detector's coarse edge.
"""

from __future__ import annotations

import numpy as np

#: Floor of the smooth model, as a fraction of the area-resampled density it
#: interpolates: bicubic overshoot must not leave a scan pixel with counts but a zero model.
MODEL_FLOOR = 0.05
#: Least fraction of the counts' variance around the central spot that the disk
#: model must explain for a pattern to get it (a noisy disk is explained almost
#: entirely, a Gaussian spot is not); other patterns get the smooth model only.
MIN_DISK_R2 = 0.95
#: Gauss-Newton steps refining each disk centre on the scan's pixels.
GAUSS_NEWTON_STEPS = 3
#: Patterns of a batch (spread over it) the shared disk radius is fitted on.
RADIUS_PATTERNS = 32


def area_resample(patterns: np.ndarray, ratio: float) -> np.ndarray:
    """Area (flux-conserving) resampling of (n, Sx, Sy) counts by ``1 / ratio`` per axis.

    Parameters
    ----------
    patterns : ndarray, shape (n, Sx, Sy)
        Counts on the scan's pixels (float32, C-contiguous).
    ratio : float
        Run pixel over scan pixel (0.5: a 2x-binned scan onto the unbinned grid).

    Returns
    -------
    ndarray, shape (n, round(Sx / ratio), round(Sy / ratio)), float32
        Counts per run pixel (OpenCV ``INTER_AREA``: the area overlap both
        when shrinking and when enlarging, times ``ratio**2``).
    """
    import cv2

    k = float(ratio)
    out = [cv2.resize(p, None, fx=1.0 / k, fy=1.0 / k, interpolation=cv2.INTER_AREA)
           for p in patterns]
    stack = np.stack(out) if out else np.zeros((0, *_shape(patterns.shape[1:], k)), np.float32)
    return stack * np.float32(k * k)


def _shape(source: tuple[int, ...], k: float) -> tuple[int, int]:
    return int(round(source[0] / k)), int(round(source[1] / k))


def guided_resample(patterns: np.ndarray, ratio: float) -> np.ndarray:
    """Resample (n, Sx, Sy) counts by ``1 / ratio``, each scan pixel shared by a pattern model.

    Parameters
    ----------
    patterns : ndarray, shape (n, Sx, Sy)
        Counts on the scan's pixels (any numeric dtype).
    ratio : float
        Run pixel over scan pixel.

    Returns
    -------
    ndarray, shape as :func:`area_resample`, float32
        Counts per run pixel; every scan pixel's counts are conserved (up
        to float32 rounding), distributed over the run pixels it overlaps in
        proportion to the model (see the module docstring).
    """
    import cv2

    from .origin import find_origins

    src = np.ascontiguousarray(patterns, dtype=np.float32)
    k = float(ratio)
    area = area_resample(src, k)
    if len(src) == 0:
        return area
    # first estimates on the scan's own pixels (fewer than the run's), in run px:
    # scan coordinate u is run coordinate (u + 0.5) / k - 0.5
    found = find_origins(src)
    radius, origins, level, _ = fit_disk(src, (found.origins + 0.5) / k - 0.5, k,
                                         found.probe_radius / k)
    out = np.empty_like(area)
    tx, ty = area.shape[1:]
    sx, sy = src.shape[1:]
    pixel = np.float32(1.0 / (k * k))  # a scan pixel's area in run pixels
    for i in range(len(src)):
        beam = disk_image((tx, ty), origins[i], radius) * np.float32(level[i]) \
            if level[i] > 0 else np.zeros((tx, ty), np.float32)
        beam_counts = cv2.resize(beam, (sy, sx), interpolation=cv2.INTER_AREA) * pixel
        # the rest of the pattern as a density per run pixel; scan pixels the
        # disk touches get the local background instead (their counts are the
        # beam's, whose smooth interpolation would spread it out again)
        rest = np.where(beam_counts > 0, rim_background(area[i], origins[i], radius, k),
                        np.maximum(src[i] - beam_counts, 0) / pixel)
        smooth = cv2.resize(rest, (ty, tx), interpolation=cv2.INTER_CUBIC)
        floor = MODEL_FLOOR * cv2.resize(rest, (ty, tx), interpolation=cv2.INTER_AREA)
        model = beam + np.maximum(smooth, floor + np.float32(1e-3))
        # share each scan pixel's counts in proportion to the model
        per_pixel = cv2.resize(model, (sy, sx), interpolation=cv2.INTER_AREA) * pixel
        share = src[i] / np.maximum(per_pixel, np.float32(1e-12))
        out[i] = model * cv2.resize(share, (ty, tx), interpolation=cv2.INTER_AREA)
    return out


def rim_background(pattern: np.ndarray, origin: np.ndarray, radius: float, k: float
                   ) -> np.float32:
    """Median counts per run px just outside the scan pixels a disk touches.

    Parameters
    ----------
    pattern : ndarray, shape (H, W)
        Area-resampled counts, run px.
    origin : ndarray, shape (2,)
        Disk centre, run px (not finite: 0).
    radius : float
        Disk radius, run px.
    k : float
        Run pixel over scan pixel.
    """
    if not np.all(np.isfinite(origin)) or radius <= 0:
        return np.float32(0)
    foot = radius + 0.5 + np.sqrt(2) / k  # a scan pixel touching the disk reaches this far
    outer = foot + 1 / k + 1
    half = int(np.ceil(outer)) + 1
    r0, c0 = (int(v) for v in np.rint(origin))
    rows = np.arange(max(r0 - half, 0), min(r0 + half + 1, pattern.shape[0]))
    cols = np.arange(max(c0 - half, 0), min(c0 + half + 1, pattern.shape[1]))
    dist = np.hypot(rows[:, None] - origin[0], cols[None, :] - origin[1])
    rim = pattern[np.ix_(rows, cols)][(dist > foot) & (dist <= outer)]
    return np.float32(np.median(rim)) if rim.size else np.float32(0)


def disk_image(shape: tuple[int, int], origin: np.ndarray, radius: float) -> np.ndarray:
    """(H, W) float32 coverage of a disk (1 inside, a one-pixel linear edge ramp, 0 outside).

    Zero everywhere when ``origin`` is not finite (no disk found).
    """
    image = np.zeros(shape, np.float32)
    if not np.all(np.isfinite(origin)):
        return image
    half = int(np.ceil(radius)) + 2
    r0, c0 = (int(v) for v in np.rint(origin))
    rows = np.arange(max(r0 - half, 0), min(r0 + half + 1, shape[0]))
    cols = np.arange(max(c0 - half, 0), min(c0 + half + 1, shape[1]))
    if len(rows) and len(cols):
        dist = np.hypot(rows[:, None] - origin[0], cols[None, :] - origin[1])
        image[np.ix_(rows, cols)] = np.clip(radius + 0.5 - dist, 0.0, 1.0)
    return image


def fit_disk(patterns: np.ndarray, origins: np.ndarray, ratio: float, rough_radius: float
             ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Fit the beam disk on the scan's own pixels: a shared radius, per-pattern origin and levels.

    The disk model (coverage with a one-run-pixel edge ramp) is integrated
    over the scan's pixels around each disk, so a coarse pixel on the edge
    weighs the part of it the disk covers. Per pattern, level and background
    are the linear least-squares fit of the scan pixels' counts; the radius
    minimises the summed squared residual (golden-section search between
    0.5 and 1.5 times ``rough_radius``); then each origin is refined by
    Gauss-Newton steps on the same residual (sub-pixel centres measured on
    the run's grid are biased by the coarse pixels), and the radius fitted
    again about the refined origins.

    Parameters
    ----------
    patterns : ndarray, shape (n, Sx, Sy), float32
        Counts on the scan's pixels.
    origins : ndarray, shape (n, 2)
        First estimates of the disk centres, run px (of the area-resampled
        patterns); NaN: no disk.
    ratio : float
        Run pixel over scan pixel.
    rough_radius : float
        A first estimate of the radius, run px (e.g. the half-maximum area's).

    Returns
    -------
    radius : float
        Run px (0 when no pattern has a disk).
    origins : ndarray, shape (n, 2)
        Refined disk centres, run px (NaN where given NaN).
    level, background : ndarray, shape (n,)
        Counts per run pixel inside the disk and around it; level 0 where
        no disk was found or the disk model explains less than
        :data:`MIN_DISK_R2` of the variance of the counts around it.
    """
    k = float(ratio)
    n = len(patterns)
    level, background = np.zeros(n), np.zeros(n)
    refined = np.array(origins, dtype=np.float64, copy=True)
    ok = np.all(np.isfinite(refined), axis=1)
    if not ok.any() or not rough_radius > 0:
        return 0.0, refined, level, background
    lo, hi = 0.5 * rough_radius, 1.5 * rough_radius
    # run px j is centred on scan coordinate (j + 0.5) k - 0.5
    centres = (refined[ok] + 0.5) * k - 0.5
    half = int(np.ceil((hi + 2.0) * k)) + 1  # scan px: the disk, its edge and a background rim
    windows, offsets = _windows(patterns[ok], centres, half, k)
    m = len(windows)
    y = windows.reshape(m, -1)
    shift = np.zeros((m, 2), np.float32)  # refinement of the origins, run px
    # the radius is shared: a few dozen patterns spread over the batch fix it
    few = np.unique(np.linspace(0, m - 1, min(m, RADIUS_PATTERNS)).astype(int))

    def radius_fit(at: np.ndarray, lo: float, hi: float) -> float:
        def cost(radius: float) -> float:
            x = _cover(offsets[few], at[few], radius)[0]
            return float((_line_fit(x, y[few])[2] ** 2).sum())
        return _golden(cost, lo, hi)

    radius = radius_fit(shift, lo, hi)
    for _ in range(GAUSS_NEWTON_STEPS):
        x, dx_row, dx_col = _cover(offsets, shift, radius)
        slope, intercept, resid = _line_fit(x, y)
        jac = np.stack([x, np.ones_like(x), slope * dx_row, slope * dx_col], axis=2)
        normal = np.einsum("mpi,mpj->mij", jac, jac) + 1e-9 * np.eye(4)
        delta = np.linalg.solve(normal, np.einsum("mpi,mp->mi", jac, resid)[..., None])[..., 0]
        shift = np.clip(shift + delta[:, 2:], -1.0, 1.0).astype(np.float32)
    radius = radius_fit(shift, max(lo, radius - 0.25), min(hi, radius + 0.25))
    x = _cover(offsets, shift, radius)[0]
    slope, intercept, resid = _line_fit(x, y)
    # a central spot the disk does not explain (not a disk) gets no disk model
    spread = ((y - y.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    disk = (resid ** 2).sum(axis=1) <= (1 - MIN_DISK_R2) * spread
    pixel = 1.0 / (k * k)  # a scan pixel's area in run pixels
    level[ok] = np.where(disk, np.maximum(slope[:, 0], 0) / pixel, 0)
    background[ok] = np.maximum(intercept[:, 0], 0) / pixel
    refined[ok] += np.where(disk[:, None], shift, 0)
    return radius, refined, level, background


def _cover(offsets: np.ndarray, shift: np.ndarray, radius: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disk coverage of scan pixels (m, P) and its derivatives along the centre's row and column.

    ``offsets`` (m, W, W, s*s, 2) are the sub-samples relative to the first
    centre estimates and ``shift`` (m, 2) moves each centre, both in run px.
    """
    m = len(offsets)
    rel = offsets - shift[:, None, None, None, :]
    dist = np.sqrt(rel[..., 0] ** 2 + rel[..., 1] ** 2)
    ramp = radius + 0.5 - dist
    cover = np.clip(ramp, 0.0, 1.0).mean(axis=-1).reshape(m, -1)
    # d cover / d shift = rel / dist on the ramp (0 < ramp < 1), 0 elsewhere
    edge = ((ramp > 0) & (ramp < 1)) / np.maximum(dist, 1e-6)
    d_row = (edge * rel[..., 0]).mean(axis=-1).reshape(m, -1)
    d_col = (edge * rel[..., 1]).mean(axis=-1).reshape(m, -1)
    return cover, d_row, d_col


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the least-squares ``y = slope x + intercept``: slope, intercept (m, 1), residual."""
    mx, my = x.mean(axis=1, keepdims=True), y.mean(axis=1, keepdims=True)
    slope = ((x - mx) * (y - my)).sum(axis=1, keepdims=True) / np.maximum(
        ((x - mx) ** 2).sum(axis=1, keepdims=True), 1e-12)
    intercept = my - slope * mx
    return slope, intercept, y - slope * x - intercept


def _windows(patterns: np.ndarray, centres: np.ndarray, half: int, k: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Scan-pixel windows around each disk and the sub-sample offsets from its centre (run px).

    Returns
    -------
    windows : ndarray, shape (m, W, W), float32
        Counts (0 outside the detector), ``W = 2 half + 1``.
    offsets : ndarray, shape (m, W, W, s*s, 2), float32
        Position of every sub-sample (about two per run px and axis) of
        every window pixel relative to the disk centre, in run px.
    """
    m, sx, sy = patterns.shape
    rounded = np.rint(centres).astype(np.int64)
    grid = np.arange(-half, half + 1)
    rows, cols = rounded[:, 0:1] + grid, rounded[:, 1:2] + grid  # (m, W)
    inside = (((rows >= 0) & (rows < sx))[:, :, None] & ((cols >= 0) & (cols < sy))[:, None, :])
    windows = patterns[np.arange(m)[:, None, None], np.clip(rows, 0, sx - 1)[:, :, None],
                       np.clip(cols, 0, sy - 1)[:, None, :]]
    windows = np.where(inside, windows, 0).astype(np.float32)
    s = max(2, int(np.ceil(2 / k)))  # about two sub-samples per run px
    sub = (np.arange(s) + 0.5) / s - 0.5
    pos = (grid[:, None] + sub[None, :]).ravel()  # (W s,) scan px from the window centre
    rel = (rounded - centres)[:, :, None] + pos[None, None, :]  # (m, 2, W s)
    w = 2 * half + 1
    rr = rel[:, 0].reshape(-1, w, 1, s, 1)
    cc = rel[:, 1].reshape(-1, 1, w, 1, s)
    offsets = np.stack(np.broadcast_arrays(rr, cc), axis=-1).reshape(-1, w, w, s * s, 2)
    return windows, (offsets / k).astype(np.float32)


def _golden(f, lo: float, hi: float, tol: float = 1e-3) -> float:
    """Minimiser of a unimodal ``f`` on [lo, hi] by golden-section search."""
    g = (np.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2
