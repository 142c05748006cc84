"""The model registry: every registered model by name, built and validated here."""


from __future__ import annotations

from typing import Any, Mapping

from ..errors import InputError
from .base import (ClosedFormModel, FixedFrontend, ModelParams, StemModel, check_model_class,
                   parse_params)
from .angular import AngularNet
from .paper import PaperCNN, PaperParams
from .radial import RadialNet, RadialParams
from .ridge import RidgeParams, RidgeRadial

#: Registered models by name (use :func:`register_model` to add one).
MODELS: dict[str, type[StemModel]] = {}

def register_model(cls: type[StemModel]) -> type[StemModel]:
    """Register a model class under its ``name``.

    Raises
    ------
    TypeError
        If ``cls`` does not implement :class:`~.base.StemModel` (abstract
        methods left, no ``name`` or no ``Params`` dataclass).
    """
    check_model_class(cls)
    MODELS[cls.name] = cls
    return cls


for _cls in (RadialNet, PaperCNN, RidgeRadial, AngularNet):
    register_model(_cls)


def get_model(name: str) -> type[StemModel]:
    """The model class registered as ``name``; InputError when unknown.

    A class placed in :data:`MODELS` by hand that does not implement the
    interface is refused with a TypeError.
    """
    try:
        cls = MODELS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown model {name!r}",
                         hint=f"choose one of {', '.join(MODELS)}") from None
    return check_model_class(cls)


def model_params(name: str, hparams: Mapping[str, Any] | ModelParams | None) -> ModelParams:
    """The ``model_params`` table of model ``name`` validated into its ``Params`` dataclass."""
    return parse_params(get_model(name).Params, hparams, name)


def build_model(name: str, input_shape: tuple[int, int], n_outputs: int,
                hparams: Mapping[str, Any] | ModelParams | None = None) -> StemModel:
    """Build model ``name``.

    Parameters
    ----------
    name : str
        Registered model name.
    input_shape : (Qx, Qy)
        Detector shape of the preprocessed patterns.
    n_outputs : int
        Number of outputs (EDS elements, plus one for HAADF).
    hparams : mapping or ModelParams, optional
        ``model_params`` table or the model's ``Params``; defaults otherwise.

    Raises
    ------
    InputError
        Unknown model, bad hyperparameters (naming ``model_params.<key>``), or
        an input the architecture cannot take.
    """
    cls = get_model(name)
    params = parse_params(cls.Params, hparams, name)
    try:
        return cls(tuple(int(v) for v in input_shape), int(n_outputs), params)
    except ValueError as exc:  # e.g. an input too small for the architecture
        raise InputError(f"model {name!r}: {exc}") from None


__all__ = ["MODELS", "get_model", "build_model", "register_model",
           "model_params", "StemModel", "FixedFrontend", "ClosedFormModel", "ModelParams",
           "parse_params", "PaperCNN", "PaperParams", "RadialNet", "RadialParams",
           "RidgeRadial", "RidgeParams"]
