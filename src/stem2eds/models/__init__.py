"""Model registry: every model is a torch module built by name.

Each model class takes ``(input_shape, n_outputs, **hparams)``, maps
(n, Qx, Qy) float32 patterns to (n, n_outputs) linear outputs, exposes the
hyperparameters it was built with as ``.hparams`` (recorded in ``run.json``)
exposes its last ``nn.Linear`` as ``.output_layer`` (trainable models), and
says with ``.trainable`` whether it is trained by gradient descent
(``False`` for the closed-form ``ridge`` baseline), and with
``.filter_predictions`` whether its predicted EDS maps get the targets'
spatial filter by default (``TrainConfig.filter_predictions``). A model
whose first stage has no parameters sets ``fixed_frontend = True`` and provides
``frontend(patterns)`` and ``forward_features(features)``; training then
computes the front end once per pattern instead of once per epoch.

>>> from stem2eds.models import get_model
>>> net = get_model("radial")((64, 64), n_outputs=5)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import InputError
from .paper import PaperCNN
from .radial import RadialNet
from .ridge import RidgeRadial

#: Registered models by name.
MODELS: dict[str, type[nn.Module]] = {
    "radial": RadialNet,
    "paper": PaperCNN,
    "ridge": RidgeRadial,
}

#: The model trained when none is named.
DEFAULT_MODEL = "radial"


def get_model(name: str) -> type[nn.Module]:
    """The model class registered as ``name``; InputError when unknown."""
    try:
        return MODELS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}",
                         hint=f"choose one of {', '.join(MODELS)}") from None


def build_model(name: str, input_shape: tuple[int, int], n_outputs: int,
                hparams: dict[str, Any] | None = None) -> nn.Module:
    """Build model ``name`` for ``input_shape`` (Qx, Qy) with ``n_outputs`` outputs."""
    cls = get_model(name)
    try:
        return cls(tuple(input_shape), int(n_outputs), **(hparams or {}))
    except TypeError as exc:
        raise InputError(f"bad hyperparameters for model {name!r}: {exc}") from None
    except ValueError as exc:  # e.g. an input too small for the architecture
        raise InputError(f"model {name!r}: {exc}") from None


__all__ = ["MODELS", "DEFAULT_MODEL", "get_model", "build_model",
           "PaperCNN", "RadialNet", "RidgeRadial"]
