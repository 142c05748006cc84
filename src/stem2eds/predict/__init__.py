"""Prediction: load a finished run and predict EDS (and HAADF) maps of new scans.

:func:`load_run` (:mod:`.predictor`) returns a :class:`Predictor`;
:func:`predict_bundle` (:mod:`.bundle`) is the ``stem2eds predict`` step
(bundle in, prediction file out).

Names load on first use, so that importing this package does not import torch.
"""

from importlib import import_module as _import_module

_WHERE = {
    "Prediction": "predictor",
    "Predictor": "predictor",
    "load_run": "predictor",
    "predict_bundle": "bundle",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = list(_WHERE)
