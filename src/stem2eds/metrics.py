"""Accuracy of predicted composition maps: pure functions on arrays.

Every function takes maps shaped (E, Rx, Ry) (E elements, scan rows, scan
columns) or flat stacks (E, n), values in atomic fractions in [0, 1], and an
optional boolean ``mask`` (Rx, Ry) choosing the positions that count (e.g.
the validation positions of a random split). HAADF is handled as a single
"element" of shape (Rx, Ry).

Definitions (the report repeats them):

- Pearson r: linear correlation of predicted and actual values over the
  positions; NaN when either is constant.
- MAE: mean |predicted - actual|, in atomic fraction (HAADF: detector units).
- percentage error: ``100 * MAE / mean(|actual|)`` per element, i.e. the MAE
  relative to the element's mean content, in percent.
- R^2: ``1 - sum((actual - predicted)^2) / sum((actual - mean(actual))^2)``
  (can be negative: worse than predicting the mean).

Summaries over scans use the mean and the population standard deviation
(``ddof=0``) across the predicted scans, ignoring NaN.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

#: Metric names, in the order reports show them.
METRICS = ("pearson", "mae", "percent_error", "r2")
#: Metrics for which larger is better (the others are errors).
HIGHER_IS_BETTER = {"pearson": True, "mae": False, "percent_error": False, "r2": True}


def _flatten(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(E, Rx, Ry) maps -> (E, n) float64, restricted to ``mask`` when given."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"expected maps shaped (E, Rx, Ry), got {arr.shape}")
    if mask is None:
        return arr.reshape(arr.shape[0], -1)
    m = np.asarray(mask, dtype=bool)
    if arr.shape[1:] != m.shape:
        raise ValueError(f"mask shape {m.shape} does not match maps {arr.shape}")
    return arr[:, m]


def _channels(values: np.ndarray) -> np.ndarray:
    """A single (Rx, Ry) map (e.g. HAADF) becomes one channel (1, Rx, Ry)."""
    arr = np.asarray(values)
    return arr[None] if arr.ndim == 2 else arr


def metric_arrays(predicted: np.ndarray, actual: np.ndarray,
                  mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """All metrics per channel, vectorised over channels.

    Parameters
    ----------
    predicted, actual : ndarray, shape (E, Rx, Ry) or (Rx, Ry)
        Predicted and reference maps (same shape). A 2-D input is one channel.
    mask : ndarray of bool, shape (Rx, Ry), optional
        Positions to evaluate; all when None.

    Returns
    -------
    dict
        ``{"pearson", "mae", "percent_error", "r2"}`` -> ndarray, shape (E,).
    """
    p = _flatten(_channels(predicted), mask)
    a = _flatten(_channels(actual), mask)
    if p.shape != a.shape:
        raise ValueError(f"predicted {p.shape} and actual {a.shape} differ in shape")
    if p.shape[1] == 0:
        nan = np.full(p.shape[0], np.nan)
        return {name: nan.copy() for name in METRICS}
    err = p - a
    mae = np.mean(np.abs(err), axis=1)
    mean_abs = np.mean(np.abs(a), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        percent = np.where(mean_abs > 0, 100.0 * mae / mean_abs, np.nan)
        pc = p - p.mean(axis=1, keepdims=True)
        ac = a - a.mean(axis=1, keepdims=True)
        denom = np.sqrt(np.sum(pc ** 2, axis=1) * np.sum(ac ** 2, axis=1))
        pearson = np.where(denom > 0, np.sum(pc * ac, axis=1) / denom, np.nan)
        ss_tot = np.sum(ac ** 2, axis=1)
        r2 = np.where(ss_tot > 0, 1.0 - np.sum(err ** 2, axis=1) / ss_tot, np.nan)
    return {"pearson": np.clip(pearson, -1.0, 1.0), "mae": mae,
            "percent_error": percent, "r2": r2}


def element_metrics(predicted: np.ndarray, actual: np.ndarray, elements: Sequence[str],
                    mask: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Metrics per element as nested dicts ``{metric: {element: value}}``.

    Parameters
    ----------
    predicted, actual : ndarray, shape (E, Rx, Ry)
        Atomic fractions; channel ``k`` is ``elements[k]``.
    elements : sequence of str, length E
    mask : ndarray of bool, shape (Rx, Ry), optional

    Returns
    -------
    dict
        e.g. ``{"pearson": {"O": 0.93, ...}, "mae": {...}, ...}``; NaN where
        undefined (constant maps).
    """
    if len(elements) != np.shape(predicted)[0]:
        raise ValueError(f"{len(elements)} element names for {np.shape(predicted)[0]} maps")
    arrays = metric_arrays(predicted, actual, mask)
    return {name: {el: float(arrays[name][k]) for k, el in enumerate(elements)}
            for name in METRICS}


def single_metrics(predicted: np.ndarray, actual: np.ndarray,
                   mask: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of one (Rx, Ry) map, e.g. HAADF: ``{metric: value}``."""
    arrays = metric_arrays(np.asarray(predicted)[None], np.asarray(actual)[None], mask)
    return {name: float(arrays[name][0]) for name in METRICS}


def summarize(per_scan: Mapping[str, Mapping[str, Mapping[str, float]]]
              ) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and standard deviation over scans.

    Parameters
    ----------
    per_scan : mapping
        ``{scan: {metric: {element: value}}}`` as from :func:`element_metrics`.

    Returns
    -------
    dict
        ``{metric: {element: {"mean": m, "std": s, "n": count}}}``; population
        std (ddof=0) over the scans where the value is defined.
    """
    scans = list(per_scan)
    if not scans:
        return {}
    out: dict[str, dict[str, dict[str, float]]] = {}
    first = per_scan[scans[0]]
    for metric, by_element in first.items():
        if not isinstance(by_element, Mapping):
            continue
        out[metric] = {}
        for el in by_element:
            vals = np.array([per_scan[s][metric].get(el, np.nan) for s in scans], dtype=float)
            vals = vals[np.isfinite(vals)]
            out[metric][el] = {"mean": float(vals.mean()) if vals.size else math.nan,
                               "std": float(vals.std()) if vals.size else math.nan,
                               "n": int(vals.size)}
    return out


def summarize_single(per_scan: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Like :func:`summarize` for single-map metrics ``{scan: {metric: value}}``."""
    wrapped = {s: {m: {"value": v} for m, v in d.items()} for s, d in per_scan.items()}
    return {m: d["value"] for m, d in summarize(wrapped).items()}


def correlation_matrix(maps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Inter-element Pearson correlation matrix.

    Parameters
    ----------
    maps : ndarray, shape (E, Rx, Ry)
    mask : ndarray of bool, shape (Rx, Ry), optional

    Returns
    -------
    ndarray, shape (E, E)
        ``C[i, j]`` = Pearson r between element maps i and j over the
        positions; NaN rows/columns for constant maps.
    """
    flat = _flatten(maps, mask)
    with np.errstate(divide="ignore", invalid="ignore"):
        centred = flat - flat.mean(axis=1, keepdims=True)
        norm = np.sqrt(np.sum(centred ** 2, axis=1))
        corr = (centred @ centred.T) / np.outer(norm, norm)
    return np.clip(corr, -1.0, 1.0)


def absolute_error_map(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per-position absolute error ``|predicted - actual|``, same shape as the inputs."""
    p = np.asarray(predicted, dtype=np.float32)
    a = np.asarray(actual, dtype=np.float32)
    if p.shape != a.shape:
        raise ValueError(f"predicted {p.shape} and actual {a.shape} differ in shape")
    return np.abs(p - a)


def high_error_region(error_map: np.ndarray, quantile: float = 0.95,
                      mask: np.ndarray | None = None,
                      smooth: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into the highest-error ones and typical ones.

    Parameters
    ----------
    error_map : ndarray, shape (Rx, Ry)
        Per-position error (e.g. summed over elements, or HAADF error).
    quantile : float
        Positions at or above this error quantile form the high-error region.
    mask : ndarray of bool, shape (Rx, Ry), optional
        Only these positions are considered.
    smooth : float
        Gaussian sigma (probe positions) applied to the error map first, so
        that a contiguous bad region wins over scattered noisy pixels.

    Returns
    -------
    high, typical : ndarray of bool, shape (Rx, Ry)
        ``typical`` holds positions between the 40 % and 60 % quantiles, i.e.
        the error a position usually has.
    """
    err = np.asarray(error_map, dtype=np.float64)
    valid = np.ones(err.shape, bool) if mask is None else np.asarray(mask, bool)
    if smooth > 0:
        from scipy.ndimage import gaussian_filter

        # normalised convolution: positions outside the mask do not dilute the average
        weight = gaussian_filter(valid.astype(float), smooth)
        err = gaussian_filter(np.where(valid, err, 0.0), smooth) / np.maximum(weight, 1e-12)
    vals = err[valid]
    if vals.size == 0:
        return np.zeros(err.shape, bool), np.zeros(err.shape, bool)
    hi, q40, q60 = np.quantile(vals, [quantile, 0.4, 0.6])
    high = valid & (err >= hi)
    typical = valid & (err >= q40) & (err <= q60)
    return high, typical
