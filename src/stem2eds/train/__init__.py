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

from ..lazy import lazy_exports

_WHERE = {
    "TrainConfig": "config",
    "train": "fit",
    "is_main_process": "fit",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)


__all__ = list(_WHERE)
