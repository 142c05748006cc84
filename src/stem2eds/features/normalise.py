"""How a ring model cancels the overall intensity level: per pattern, per scan, or not at all.

Dose and film thickness scale a pattern's intensity as a whole; a ring
model (``radial``, ``model_params.normalise``) cancels that level in one of
three ways:

``"pattern"``
    each pattern's mean log ring statistic is subtracted (in the model's
    front end): insensitive to dose and thickness, also where they change
    within a scan, but the intensity differences between positions, which
    carry composition, are lost with them;
``"scan"``
    every scan's ring statistics are divided by the scan's reference
    intensity (:func:`scan_reference`, here, before the model), so a whole
    scan at another dose or thickness gives the same features while the
    differences between its positions stay; the reference needs the whole
    scan, so such runs predict whole scans only;
``"none"``
    the absolute level is kept.

Pure functions on arrays; training (:mod:`stem2eds.train.frontend`) and
prediction (:mod:`stem2eds.predict.predictor`) call them with each scan's
statistics.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: The values of ``model_params.normalise``.
NORMALISE_MODES = ("pattern", "scan", "none")
#: Added before the log, as the models' front end does (:data:`stem2eds.models.ridge.LOG_OFFSET`).
_OFFSET = 1e-5


def whole_scans_only(model_params) -> str | None:
    """Why a run cannot predict frame by frame (None when it can).

    Parameters
    ----------
    model_params : dict or None
        ``model_params`` of the run's ``run.json``.
    """
    if (model_params or {}).get("normalise") == "scan":
        return ('this run normalises per scan (model_params.normalise = "scan"): it predicts '
                'whole scans only')
    return None


def normalise_mode(value) -> str:
    """The mode of a ``normalise`` setting: a mode name, or a run's older boolean.

    Runs made before the choice existed stored ``true`` (per pattern) or
    ``false`` (none).

    Raises
    ------
    ValueError
        For anything else.
    """
    if isinstance(value, (bool, np.bool_)):
        return "pattern" if value else "none"
    if isinstance(value, str) and value in NORMALISE_MODES:
        return value
    raise ValueError(f"normalise must be one of {', '.join(NORMALISE_MODES)}, got {value!r}")


class ScanReference:
    """A scan's reference intensity, accumulated block by block (see :func:`scan_reference`)."""

    def __init__(self) -> None:
        self._sum = 0.0
        self._count = 0

    def add(self, stats: np.ndarray) -> "ScanReference":
        """Include the ring statistics ``stats`` (n, ...) of some of the scan's positions."""
        stats = np.asarray(stats)
        self._sum += float(np.log(stats.astype(np.float64) + _OFFSET).sum())
        self._count += stats.size
        return self

    @property
    def value(self) -> float:
        """``exp(mean(log(stats + 1e-5)))`` over everything added.

        Raises
        ------
        ValueError
            When nothing was added, or the reference is not a positive number.
        """
        if self._count == 0:
            raise ValueError("no ring statistics to take a scan reference from")
        ref = float(np.exp(self._sum / self._count))
        if not (np.isfinite(ref) and ref > 0):
            raise ValueError(f"the scan's reference intensity is {ref}: no counts?")
        return ref


def scan_reference(stats: np.ndarray) -> float:
    """A scan's reference intensity: the geometric mean of its ring statistics.

    Parameters
    ----------
    stats : ndarray, shape (n, ...)
        Ring statistics of every position of the scan (the model's
        statistics: mean, and std or max if it uses them), any float dtype.

    Returns
    -------
    float
        ``exp(mean(log(stats + 1e-5)))``; k times the dose gives k times the
        reference (up to the small offset), so dividing by it cancels a
        scan's overall level.

    Raises
    ------
    ValueError
        When there are no statistics or their reference is not a positive number.
    """
    return ScanReference().add(stats).value


def per_scan(stats: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Rows of several scans, each divided by its own :func:`scan_reference`.

    Parameters
    ----------
    stats : ndarray, shape (sum(sizes), ...)
        Ring statistics, scan after scan (as a run's cache holds them).
    sizes : sequence of int
        Positions of each scan.

    Returns
    -------
    ndarray, same shape, float32 (a new array)
    """
    if sum(int(n) for n in sizes) != len(stats):
        raise ValueError(f"{len(stats)} rows for scans of {list(sizes)} positions")
    out = np.array(stats, dtype=np.float32, copy=True)
    lo = 0
    for n in sizes:
        out[lo:lo + n] /= np.float32(scan_reference(out[lo:lo + n]))
        lo += int(n)
    return out
