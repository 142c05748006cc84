"""Training: settings, data, the Lightning module and the ``train()`` entry point.

========================  ==========================================================
module                    what it owns
========================  ==========================================================
:mod:`.config`            :class:`TrainConfig`, every setting of a training run
:mod:`.data`              probe-position splits, targets, the Lightning data module
:mod:`.fit`               :func:`train`: preprocess, fit, write the run folder
========================  ==========================================================

Names load on first use: reading a :class:`TrainConfig` must not import
Lightning (seconds), which :mod:`.fit` needs.
"""

from importlib import import_module as _import_module

_WHERE = {
    "TrainConfig": "config",
    "train": "fit",
    "is_main_process": "fit",
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
