"""The client's side of the LiberTEM UDFs: prediction maps and the OOD verdict from their results.

:func:`~stem2eds.libertem.engine.predict_dataset` runs the UDFs
(:mod:`.udf`); these functions turn what comes back (flat ``kind="nav"``
buffers over the scan) into a :class:`~stem2eds.predict.predictor.Prediction`
on the run's crop box ``(r0, r1, c0, c1)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def maps_from_results(res, predictor, box) -> "Any":
    """A :class:`~stem2eds.predict.predictor.Prediction` from PredictUDF's results (crop box)."""
    from ..predict.predictor import Prediction

    r0, r1, c0, c1 = box
    eds = np.stack([np.asarray(res[el].data)[r0:r1, c0:c1] for el in predictor.elements])
    haadf = np.asarray(res["haadf"].data)[r0:r1, c0:c1] if "haadf" in res else None
    return Prediction(eds.astype(np.float32), None if haadf is None else
                      haadf.astype(np.float32), predictor.elements, (r1 - r0, c1 - c0))


def maps_from_statistics(stats: np.ndarray, predictor, box, filtered: bool | None = None):
    """A :class:`~stem2eds.predict.predictor.Prediction` from StatsUDF's statistics.

    Parameters
    ----------
    stats : ndarray, shape (Rx, Ry, S * R)
        Ring statistics of every frame (the run's crop ``box`` is used).
    predictor : Predictor
        A run that normalises per scan.
    box : (r0, r1, c0, c1)
    filtered : bool, optional
        Filter the EDS maps (default: as the run says).
    """
    from ..features.normalise import scan_reference
    from ..predict.predictor import Prediction

    r0, r1, c0, c1 = box
    shape = (r1 - r0, c1 - c0)
    n_stats = len(predictor.head.ring_statistics)
    flat = np.ascontiguousarray(stats[r0:r1, c0:c1], np.float32).reshape(
        shape[0] * shape[1], n_stats, -1)
    out = predictor.statistics_outputs(flat, scan_reference(flat))
    n_eds = len(predictor.elements)
    eds = predictor.finish_eds(out[:, :n_eds].T.reshape(n_eds, *shape).copy(), filtered)
    haadf = out[:, n_eds].reshape(shape).copy() if out.shape[1] > n_eds else None
    return Prediction(eds.astype(np.float32), haadf, predictor.elements, shape)


def ood_from_results(res, predictor, box):
    """The OOD verdict (:class:`~stem2eds.analysis.ood.ScanScore`) of PredictUDF's ring means."""
    r0, r1, c0, c1 = box
    means = np.asarray(res["ring_means"].data)[r0:r1, c0:c1]
    monitor = predictor.start_ood((r1 - r0, c1 - c0))
    monitor.observe_means(0, means.reshape((r1 - r0) * (c1 - c0), -1))
    return monitor.result()
