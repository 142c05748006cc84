"""Model registry: every model is a :class:`~.base.StemModel` built by name.

The interface (``models/base.py``): a model class has a registered ``name``,
a frozen hyperparameter dataclass ``Params`` (validated from the
``model_params`` table by :func:`~.base.parse_params`), a class attribute
``filter_predictions``, and maps (n, Qx, Qy) float32 patterns to
(n, n_outputs) linear outputs. The optional capabilities
:class:`~.base.FixedFrontend` and :class:`~.base.ClosedFormModel` change how
it is trained; training and prediction test them with ``isinstance``.

>>> from stem2eds.models import build_model
>>> net = build_model("radial", (64, 64), n_outputs=5, hparams={"n_hidden": 0})
"""

from ..lazy import lazy_exports

#: The model trained when none is named (a plain name, so that reading a
#: TrainConfig or building ``--help`` does not import torch).
DEFAULT_MODEL = "radial"

#: Where each public name lives; modules (and torch) load on first use.
_WHERE = {
    **{name: "registry" for name in ("MODELS", "get_model", "build_model", "register_model",
                                     "model_params")},
    **{name: "base" for name in ("StemModel", "FixedFrontend", "ClosedFormModel",
                                 "ModelParams", "parse_params", "check_model_class")},
    "PaperCNN": "paper", "PaperParams": "paper",
    "RadialNet": "radial", "RadialParams": "radial",
    "RidgeRadial": "ridge", "RidgeParams": "ridge",
}

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)

__all__ = ["DEFAULT_MODEL", *_WHERE]
