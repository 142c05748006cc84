"""Anomaly maps: where a scan is unlike what the model knows.

Three per-position signals, each turned into a robust z-score (median and
MAD over the scan) and averaged where available:

- *reconstruction error* of the preprocessed diffraction pattern by a
  low-rank PCA model of reference patterns (the training scans;
  scikit-learn ``IncrementalPCA``, streamed batch by batch): Bragg disks of
  a crystal at its own orientation are not in the components that describe
  the known patterns, so crystalline positions reconstruct badly;
- *prediction error* where EDS is known: summed absolute error of the
  (calibrated) composition prediction;
- *uncertainty*: summed ensemble standard deviation.

Positions scoring above a threshold (robust z, default :data:`THRESHOLD`) are flagged;
:func:`detection_scores` measures precision and recall against a reference
mask (for simulated scans, ``simulation/grain_mask``).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

#: Default robust z-score above which a position is flagged (the one definition;
#: the sparse experiment's ``anomaly_threshold`` defaults to it).
THRESHOLD = 3.0
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this = its sigma


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD) over the finite entries; NaN stays NaN.

    Parameters
    ----------
    values : ndarray, shape (Rx, Ry)

    Returns
    -------
    ndarray, shape (Rx, Ry), float64
    """
    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.full(v.shape, np.nan)
    med = np.median(finite)
    mad = _MAD_TO_SIGMA * np.median(np.abs(finite - med))
    if mad <= 0:
        mad = finite.std() or 1.0
    return (v - med) / mad


def _rows(patterns: np.ndarray) -> np.ndarray:
    """(n, Qx, Qy) patterns -> (n, Qx*Qy) float64 rows, square-rooted.

    The square root stabilises the Poisson variance, so bright rings do not
    dominate the residual.
    """
    p = np.asarray(patterns, np.float64)
    return np.sqrt(np.maximum(p, 0)).reshape(len(p), -1)


def reconstruction_error(reference: Iterable[tuple[int, np.ndarray]],
                         batches: Iterable[tuple[int, np.ndarray]], shape: tuple[int, int],
                         n_components: int = 8) -> np.ndarray:
    """Per-position residual of the patterns' reconstruction by a PCA of reference patterns.

    The PCA is fitted on patterns the model knows (its training scans), so a
    diffraction feature of the new scan that those lack (the Bragg disks of a
    grain at an orientation of its own) is left in the residual. Fitted on
    the scan itself, a low-rank model absorbs a feature that covers enough
    positions (the tests show it), so the reference must be other scans.

    Parameters
    ----------
    reference : iterable of (start, patterns)
        Reference batches, ``patterns`` (n, Qx, Qy) preprocessed as the
        scored ones (``start`` ignored), e.g. the chained
        ``ScanBundle.iter_patterns`` of the training scans.
    batches : iterable of (start, patterns)
        The scan to score: ``start`` the flat (C-order) index of the first
        position, ``patterns`` (n, Qx, Qy).
    shape : (Rx, Ry)
        Scan shape.
    n_components : int
        Components of the PCA.

    Returns
    -------
    ndarray, shape (Rx, Ry), float64
        Root-mean-square residual per pattern, in sqrt(pattern units);
        NaN where no pattern came.
    """
    from sklearn.decomposition import IncrementalPCA

    pca = IncrementalPCA(n_components=n_components)
    carry = None
    for _, patterns in reference:
        x = _rows(patterns)
        # IncrementalPCA needs at least n_components rows per partial fit
        carry = x if carry is None else np.concatenate([carry, x])
        if len(carry) >= max(n_components, 256):
            pca.partial_fit(carry)
            carry = None
    if carry is not None and len(carry) >= n_components:
        pca.partial_fit(carry)
    if not hasattr(pca, "components_"):
        raise ValueError(f"fewer reference patterns than the {n_components} PCA components")
    out = np.full(shape[0] * shape[1], np.nan)
    for start, patterns in batches:
        x = _rows(patterns)
        recon = pca.inverse_transform(pca.transform(x))
        out[start:start + len(x)] = np.sqrt(np.mean((x - recon) ** 2, axis=1))
    return out.reshape(shape)


def anomaly_score(components: Mapping[str, np.ndarray | None]) -> np.ndarray:
    """Mean robust z-score of the available components at each position.

    Parameters
    ----------
    components : mapping of str to ndarray, shape (Rx, Ry), or None
        e.g. ``{"reconstruction": ..., "prediction_error": ..., "uncertainty": ...}``;
        None or NaN entries (e.g. positions without EDS) are skipped.

    Returns
    -------
    ndarray, shape (Rx, Ry), float64
    """
    zs = [robust_z(c) for c in components.values() if c is not None]
    if not zs:
        raise ValueError("no anomaly component given")
    stack = np.stack(zs)
    count = np.sum(np.isfinite(stack), axis=0)
    total = np.nansum(stack, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def detection_scores(flagged: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of flagged positions against a reference mask.

    Parameters
    ----------
    flagged, reference : ndarray of bool, shape (Rx, Ry)

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (NaN where undefined), ``flagged``,
        ``reference`` (position counts).
    """
    f = np.asarray(flagged, bool)
    r = np.asarray(reference, bool)
    tp = float(np.sum(f & r))
    precision = tp / f.sum() if f.sum() else float("nan")
    recall = tp / r.sum() if r.sum() else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if precision + recall > 0 else float("nan"))
    return {"precision": precision, "recall": recall, "f1": f1,
            "flagged": int(f.sum()), "reference": int(r.sum())}


def mean_patterns(batches: Iterable[tuple[int, np.ndarray]], shape: tuple[int, int],
                  flagged: np.ndarray, typical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean pattern of the flagged and of the typical positions, in one streamed pass.

    Parameters
    ----------
    batches : iterable of (start, patterns (n, Qx, Qy))
    shape : (Rx, Ry)
    flagged, typical : ndarray of bool, shape (Rx, Ry)

    Returns
    -------
    mean_flagged, mean_typical : ndarray, shape (Qx, Qy), float64
        Zeros where a set is empty.
    """
    f = np.asarray(flagged, bool).ravel()
    t = np.asarray(typical, bool).ravel()
    sums = None
    for start, patterns in batches:
        p = np.asarray(patterns, np.float64)
        if sums is None:
            sums = np.zeros((2,) + p.shape[1:])
        sel = slice(start, start + len(p))
        sums[0] += p[f[sel]].sum(axis=0)
        sums[1] += p[t[sel]].sum(axis=0)
    if sums is None:
        raise ValueError("no patterns")
    return sums[0] / max(f.sum(), 1), sums[1] / max(t.sum(), 1)
