"""LiberTEM integration: a prediction UDF, ``predict --engine libertem`` and live prediction.

:class:`PredictUDF` (:mod:`.udf`) predicts the EDS maps (and HAADF) of every
frame of any dataset LiberTEM reads, on any of its executors;
:func:`predict_dataset` and :func:`predict_file` (:mod:`.engine`) run it after
the origin passes so the maps equal ``stem2eds predict`` (for runs that
normalise per scan, :class:`StatsUDF` and :func:`maps_from_statistics`);
:mod:`.live` does it during an acquisition with libertem-live.

Names load on first use: ``import stem2eds`` never imports LiberTEM.
"""

from ..lazy import lazy_exports

_WHERE = {
    "PredictUDF": "udf",
    "OriginUDF": "udf",
    "SampleUDF": "udf",
    "StatsUDF": "udf",
    "predict_dataset": "engine",
    "predict_file": "engine",
    "maps_from_statistics": "results",
    "fit_dataset_origins": "engine",
    "open_context": "engine",
    "load_dataset": "engine",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)


__all__ = list(_WHERE)
