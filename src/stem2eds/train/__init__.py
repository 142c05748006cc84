"""Training: settings, data, the Lightning module and the ``train()`` entry point.

========================  ==========================================================
module                    what it owns
========================  ==========================================================
:mod:`.config`            :class:`TrainConfig`, every setting of a training run
:mod:`.data`              split, targets, HAADF scale, front-end cache (``RunData``)
:mod:`.module`            the LightningModule (loss, output activation), the Trainer
:mod:`.curves`            ``metrics.csv`` across resumes, the training-curve plot
:mod:`.fit`               :func:`train`: preprocess, fit, write the run folder
========================  ==========================================================

Names load on first use, and :mod:`.fit` imports Lightning (seconds) only
when :func:`train` runs: reading a :class:`TrainConfig` must not load it.
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
