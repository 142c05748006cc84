"""The model interface: what training and prediction may rely on.

Every registered model is a :class:`StemModel`: a torch module built from
``(input_shape, n_outputs, params)`` with ``params`` an instance of its
hyperparameter dataclass (:attr:`StemModel.Params`), mapping (n, Qx, Qy)
float32 patterns to (n, n_outputs) linear outputs. Two optional capabilities
change how it is trained:

* :class:`FixedFrontend`: the first stage has no parameters, so training
  computes :meth:`~FixedFrontend.frontend` once per pattern and then trains
  :meth:`~FixedFrontend.forward_features` only (and prediction keeps the
  front end in float32 under autocast).
* :class:`ClosedFormModel`: fitted in closed form (no gradient descent);
  training calls :meth:`~ClosedFormModel.fit` on front-end features and
  scores it with :meth:`~ClosedFormModel.predict_features`.

A model that is neither is trained end to end by gradient descent and
exposes its last linear layer as :attr:`StemModel.output_layer`.

Hyperparameters are stored as a plain table (``model_params`` in
``config.toml`` and ``run.json``) and validated once into the model's
dataclass by :func:`parse_params`.
"""

from __future__ import annotations

import abc
import dataclasses
import typing
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """Base of the per-model hyperparameter dataclasses (no fields of its own)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-safe table of the hyperparameters (sequences as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


class StemModel(nn.Module, metaclass=abc.ABCMeta):
    """A registered model: patterns (n, Qx, Qy) -> outputs (n, n_outputs).

    Parameters
    ----------
    input_shape : (Qx, Qy)
        Detector shape of the preprocessed patterns.
    n_outputs : int
        Number of regressed values (EDS elements, plus one for HAADF).
    params : ModelParams
        An instance of the class's :attr:`Params`.

    Attributes
    ----------
    name : str
        Registered name (class attribute).
    Params : type
        The hyperparameter dataclass (class attribute).
    filter_predictions : bool
        Whether predicted EDS maps get the targets' spatial filter by default
        (``TrainConfig.filter_predictions = "auto"``; class attribute).
    params : ModelParams
        The hyperparameters this instance was built with.
    """

    name: ClassVar[str]
    Params: ClassVar[type[ModelParams]] = ModelParams
    filter_predictions: ClassVar[bool] = False

    def __init__(self, input_shape: tuple[int, int], n_outputs: int, params: ModelParams):
        super().__init__()
        if not isinstance(params, self.Params):
            raise TypeError(f"{type(self).__name__} takes {self.Params.__name__}, "
                            f"got {type(params).__name__}")
        self.params = params

    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters as a plain table (``model_params`` in ``run.json``)."""
        return self.params.to_dict()

    @property
    def output_layer(self) -> nn.Linear | None:
        """The final linear layer, whose bias training starts at the mean target.

        None for models that set their outputs otherwise (closed form, or a
        data-dependent start, :meth:`FixedFrontend.start_from_data`).
        """
        return None

    @abc.abstractmethod
    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        """(n, Qx, Qy) float32 patterns -> (n, n_outputs) linear outputs."""


class FixedFrontend(metaclass=abc.ABCMeta):
    """Capability: a parameter-free first stage, computed once per pattern in training."""

    @abc.abstractmethod
    def frontend(self, patterns: torch.Tensor) -> torch.Tensor:
        """(n, Qx, Qy) patterns -> (n, ...) features; no parameters, float32."""

    @abc.abstractmethod
    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """The trainable rest: :meth:`frontend` features -> (n, n_outputs)."""

    def start_from_data(self, features: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Set a data-dependent start before training (default: none).

        Parameters
        ----------
        features : Tensor, shape (n, ...)
            :meth:`frontend` of the training patterns.
        targets : Tensor, shape (n, n_outputs)

        Returns
        -------
        dict
            What was chosen, recorded as ``training.start`` in ``run.json``
            (empty: no data-dependent start).
        """
        return {}


class ClosedFormModel(metaclass=abc.ABCMeta):
    """Capability: fitted in closed form on front-end features, not by gradient descent."""

    @abc.abstractmethod
    def features(self, patterns: torch.Tensor) -> torch.Tensor:
        """(n, Qx, Qy) patterns -> (n, F) features."""

    @abc.abstractmethod
    def fit(self, features, targets) -> Any:
        """Fit on features (n, F) and targets (n, n_outputs), both ndarrays."""

    @abc.abstractmethod
    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        """Linear outputs (n, n_outputs) of :meth:`features` (n, F)."""

    @abc.abstractmethod
    def fit_summary(self) -> dict[str, Any]:
        """What the fit chose (``method``, e.g. a regularisation strength), for ``run.json``."""


def check_model_class(cls: Any) -> type[StemModel]:
    """``cls`` if it implements :class:`StemModel` completely; TypeError otherwise."""
    if not (isinstance(cls, type) and issubclass(cls, StemModel)):
        raise TypeError(f"{cls!r} is not a StemModel subclass")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"model {cls.__name__} does not implement {', '.join(missing)}")
    if not (isinstance(getattr(cls, "name", None), str) and dataclasses.is_dataclass(cls.Params)
            and issubclass(cls.Params, ModelParams)):
        raise TypeError(f"model {cls.__name__} needs a name and a ModelParams dataclass")
    return cls


# -- hyperparameter validation -----------------------------------------------

def _kind(hint: Any) -> tuple[type, type | None]:
    """(container or scalar type, element type) of a Params field annotation."""
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return tuple, (args[0] if args else Any)
    return hint, None


def _coerce(value: Any, kind: type, key: str, bad: str) -> Any:
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(kind, True)
    if not ok:
        raise InputError(f"{bad} model_params.{key} must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def parse_params(params_cls: type[ModelParams], table: Mapping[str, Any] | ModelParams | None,
                 model: str = "") -> ModelParams:
    """Validate a ``model_params`` table into the model's hyperparameter dataclass.

    Parameters
    ----------
    params_cls : type
        The model's :attr:`StemModel.Params`.
    table : mapping, ModelParams or None
        Settings given (missing ones take the defaults); an instance of
        ``params_cls`` is returned as is.
    model : str
        Model name, for messages.

    Raises
    ------
    InputError
        Naming the setting ``model_params.<key>``: unknown key, wrong type,
        or a value the dataclass refuses.
    """
    if isinstance(table, params_cls):
        return table
    if table is None:
        table = {}
    if not isinstance(table, Mapping):
        raise InputError(f"model_params must be a table of hyperparameters, got {table!r}")
    bad = f"bad hyperparameters for model {model!r}:"
    hints = typing.get_type_hints(params_cls)
    fields = {f.name for f in dataclasses.fields(params_cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise InputError(f"{bad} unknown setting model_params.{key}",
                             hint=f"known: {', '.join(sorted(fields))}")
        kind, item = _kind(hints[key])
        if kind is tuple:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise InputError(f"{bad} model_params.{key} must be a list, got {value!r}")
            values[key] = tuple(_coerce(v, item, key, bad) for v in value)
        else:
            values[key] = _coerce(value, kind, key, bad)
    try:
        return params_cls(**values)
    except ValueError as exc:
        raise InputError(f"{bad} model_params: {exc}") from None
