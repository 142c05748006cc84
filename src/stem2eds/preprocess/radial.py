"""Azimuthal averages of centred patterns, and their q axis.

The average is a sparse matrix product: a precomputed (Qx*Qy, R) matrix maps
pixels to rings of width one pixel about the detector centre, so a batch of
profiles is one multiplication.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import sparse

from .patterns import detector_centre


def default_n_bins(shape: tuple[int, int]) -> int:
    """Rings that fit inside the detector: ``min(Qx, Qy) // 2``."""
    return min(shape) // 2


@lru_cache(maxsize=16)
def _ring_matrix(shape: tuple[int, int], n_bins: int):
    cr, cc = detector_centre(shape)
    radius = np.hypot(np.arange(shape[0])[:, None] - cr,
                      np.arange(shape[1])[None, :] - cc).ravel()
    ring = np.floor(radius).astype(np.int64)
    keep = ring < n_bins
    pix = np.flatnonzero(keep)
    counts = np.bincount(ring[keep], minlength=n_bins).astype(np.float64)
    mean_radius = np.bincount(ring[keep], weights=radius[keep], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_radius = mean_radius / counts
        weights = 1.0 / counts[ring[keep]]
    matrix = sparse.csr_matrix((weights.astype(np.float32), (pix, ring[keep])),
                               shape=(shape[0] * shape[1], n_bins))
    return matrix, mean_radius


def ring_radii(shape: tuple[int, int], n_bins: int | None = None) -> np.ndarray:
    """Mean radius (px) of the pixels in each ring: (R,)."""
    shape = tuple(int(s) for s in shape)
    return _ring_matrix(shape, n_bins or default_n_bins(shape))[1].copy()


def radial_profile(patterns: np.ndarray, n_bins: int | None = None) -> np.ndarray:
    """Azimuthal average of centred patterns about the detector centre.

    Parameters
    ----------
    patterns : ndarray, shape (n, Q, Q) or (Q, Q)
        Centred patterns (origin at the detector centre, as preprocessing
        leaves them).
    n_bins : int, optional
        Number of one-pixel rings; default ``min(Qx, Qy) // 2`` (the corners
        beyond the inscribed circle are left out).

    Returns
    -------
    ndarray, shape (n, R) (or (R,) for one pattern), float32
        Mean value per ring; ring ``k`` holds the pixels at radius [k, k+1).
    """
    arr = np.asarray(patterns, dtype=np.float32)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    n, qx, qy = arr.shape
    matrix, _ = _ring_matrix((qx, qy), int(n_bins or default_n_bins((qx, qy))))
    prof = (matrix.T @ arr.reshape(n, -1).T).T
    prof = np.asarray(prof, dtype=np.float32)
    return prof[0] if single else prof


def radial_axis(settings, calibration, n_bins: int | None = None) -> np.ndarray:
    """q value of each ring of :func:`radial_profile` on preprocessed patterns.

    Parameters
    ----------
    settings : PreprocessSettings
        Resolved settings (``detector_shape`` of the input detector known).
    calibration : PixelCalibration
        Calibration of the RAW scan (``q_pixel_size`` per input detector
        pixel); the binned pixel is ``bin_factor`` times larger. For a
        preprocessed bundle, whose own ``q_pixel_size`` is already binned,
        pass ``stem2eds.preprocess.raw_calibration(bundle)``.
    n_bins : int, optional
        As in :func:`radial_profile` (default: all rings inside the binned detector).

    Returns
    -------
    ndarray, shape (R,)
        Mean q of each ring, in ``calibration.q_pixel_unit``.
    """
    if settings.detector_shape is None:
        raise ValueError("settings are not resolved (detector_shape unknown); "
                         "use the settings returned by preprocess_bundle")
    binned = tuple(int(s) // int(settings.bin_factor) for s in settings.detector_shape)
    return ring_radii(binned, n_bins) * float(calibration.q_pixel_size) * settings.bin_factor
