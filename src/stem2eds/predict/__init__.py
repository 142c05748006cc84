"""Prediction: load a finished run and predict EDS (and HAADF) maps of new scans.

:func:`load_run` (:mod:`.predictor`) returns a :class:`Predictor`;
:func:`predict_bundle` (:mod:`.bundle`) is the ``stem2eds predict`` step
(bundle in, prediction file out). :meth:`Predictor.predict` also takes
scans in memory (:mod:`.sources`: numpy, dask, HyperSpy, py4DSTEM) and
returns a :class:`Prediction` (:mod:`.result`), which converts to HyperSpy
and xarray and exports files (:mod:`.export`).

Names load on first use, so that importing this package does not import torch.
"""

from ..lazy import lazy_exports

_WHERE = {
    "Prediction": "result",
    "Predictor": "predictor",
    "load_run": "predictor",
    "finished_run": "predictor",
    "predict_bundle": "bundle",
    "ArrayScan": "sources",
    "as_scan": "sources",
    "export_prediction": "export",
    "FORMATS": "export",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)


__all__ = list(_WHERE)
