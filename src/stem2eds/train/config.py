"""Training configuration: one dataclass, read from TOML and CLI flags, saved in every run.

Example ``train.toml``::

    model = "radial"
    targets = ["eds", "haadf"]
    learning_rate = 1e-4
    max_epochs = 200
    split = "blocks"

    [loss_weights]
    eds = 1.0
    haadf = 0.5

    [preprocess]
    bin_factor = 4
    scaling = "sqrt"
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from ..atomic import atomic_output

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TARGETS = ("eds", "haadf")
LOSSES = ("mae", "mse", "huber")
SPLITS = ("random", "blocks")
FILTER_CHOICES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda", "gpu", "mps")
#: Lightning strategies a run may name (Lightning's registry, without importing it).
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook",
              "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false",
              "fsdp", "deepspeed", "single_device", "single_xla", "xla")
#: Sane ranges of the integer settings (an absurd value is a typo, not a wish).
INT_RANGES = {"batch_size": (1, 2**20), "max_epochs": (1, 10**6), "patience": (1, 10**6),
              "block_size": (1, 10**5), "num_nodes": (1, 4096), "num_workers": (0, 1024),
              "threads": (0, 4096), "seed": (0, 2**32 - 1)}


def _default_preprocess():
    # Imported here so that reading a config does not import the preprocessing stack.
    from ..preprocess import PreprocessSettings
    return PreprocessSettings()


def _default_model() -> str:
    from ..models import DEFAULT_MODEL
    return DEFAULT_MODEL


@dataclass
class TrainConfig:
    """Everything that decides a training run.

    Attributes
    ----------
    model : str
        Registered model (``stem2eds.models.MODELS``): ``radial`` (ring
        statistics of the centred pattern, linear head with a small MLP
        correction), ``paper`` (the paper's 2D CNN) or ``ridge`` (radial
        profile + ridge regression baseline).
    model_params : dict
        Hyperparameters of the model, a table validated once into the
        model's dataclass (``RadialParams``, ``PaperParams``, ``RidgeParams``
        in ``stem2eds.models``); missing ones take its defaults.
    targets : tuple of str
        What the model predicts: ``eds``, or ``eds,haadf`` (HAADF as an
        auxiliary output).
    loss_weights : dict
        Weight of each target's loss, e.g. ``{"eds": 1.0, "haadf": 0.5}``.
    loss : {"mae", "mse", "huber"}
        Per-target loss (the paper: MAE).
    learning_rate : float
        Adam learning rate (the paper: 1e-4).
    batch_size : int
        Mini-batch size.
    max_epochs : int
        Maximum number of epochs.
    patience : int
        Epochs without validation improvement before early stopping.
    split : {"random", "blocks"}
        Train/validation split of probe positions: random, or square blocks of
        ``block_size`` positions so neighbours (which share blurred EDS signal)
        do not leak across the split.
    val_fraction : float
        Fraction of positions held out for validation (0.2 = the paper's 80:20).
    block_size : int
        Side of the blocks of ``split = "blocks"``, in probe positions.
    seed : int
        Seed of the split, initial weights and shuffling.
    device : {"auto", "cpu", "cuda"}
        Accelerator; ``auto`` uses a GPU when present.
    strategy : str
        Lightning strategy (``"auto"``, ``"ddp"``, ...).
    devices : int or "auto"
        Devices per node.
    num_nodes : int
        Nodes for multi-node DDP.
    num_workers : int
        DataLoader worker processes (0 = load in the training process).
    threads : int
        CPU threads used by torch (0 = half the cores, at most 8).
    filter_predictions : {"auto", "on", "off"}
        Filter the predicted EDS maps with the filter the EDS targets got in
        preprocessing (``preprocess.eds_filter``, ``eds_kernel``,
        ``eds_sigma``: the paper's 7x7 Gaussian). The targets are filtered
        maps, so a per-pattern prediction filtered the same way predicts
        them better (neighbouring patterns average out their noise; docs,
        "Models"). ``auto``: the model's own default (on for ``radial``, off
        for ``paper`` and ``ridge``, which predict pattern by pattern as the
        paper and the baseline do). HAADF predictions are never filtered
        (their target is not).
    preprocess : PreprocessSettings
        How raw bundles are preprocessed (``stem2eds.preprocess``); the
        resolved settings (scale, beam radius) are stored in ``run.json``.
    """

    model: str = field(default_factory=_default_model)
    model_params: dict[str, Any] = field(default_factory=dict)
    targets: tuple[str, ...] = ("eds",)
    loss_weights: dict[str, float] = field(default_factory=lambda: {"eds": 1.0, "haadf": 1.0})
    loss: str = "mae"
    learning_rate: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 10
    split: str = "random"
    val_fraction: float = 0.2
    block_size: int = 8
    seed: int = 0
    device: str = "auto"
    strategy: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    num_workers: int = 0
    threads: int = 0
    filter_predictions: str = "auto"
    preprocess: Any = field(default_factory=_default_preprocess)

    def __post_init__(self) -> None:
        from ..models import model_params
        from ..preprocess import PreprocessSettings

        if isinstance(self.preprocess, Mapping):
            self.preprocess = PreprocessSettings.from_dict(dict(self.preprocess))
        if not isinstance(self.preprocess, PreprocessSettings):
            raise InputError(f"preprocess must be a table of settings, got {self.preprocess!r:.60}")
        if isinstance(self.targets, str):
            self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        self.targets = tuple(self.targets)
        self.loss_weights = {**{"eds": 1.0, "haadf": 1.0},
                             **{k: float(v) for k, v in dict(self.loss_weights).items()}}
        if not isinstance(self.model_params, Mapping):
            raise InputError(f"model_params must be a table, got {self.model_params!r}")
        self.model_params = dict(self.model_params)
        # The one check of the model name and its hyperparameters.
        self._hparams = model_params(self.model, self.model_params)
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or "eds" not in self.targets or len(set(self.targets)) != len(self.targets):
            raise InputError(f"targets {','.join(self.targets)!r} not understood",
                             hint="use 'eds' or 'eds,haadf'")
        bad = [k for k in self.loss_weights if k not in TARGETS]
        if bad or any(not (w >= 0 and math.isfinite(w)) for w in self.loss_weights.values()):
            raise InputError(f"loss_weights {self.loss_weights} must map eds/haadf to "
                             "non-negative numbers")
        _choice("loss", self.loss, LOSSES)
        _choice("split", self.split, SPLITS)
        _choice("device", self.device, DEVICES)
        _choice("filter_predictions", self.filter_predictions, FILTER_CHOICES)
        if not (isinstance(self.learning_rate, (int, float))
                and not isinstance(self.learning_rate, bool)
                and self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise InputError(f"learning_rate must be positive, got {self.learning_rate}")
        for name, (low, high) in INT_RANGES.items():
            setattr(self, name, _int_setting(name, getattr(self, name), low, high))
        if not (isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction < 1):
            raise InputError(f"`val_fraction` must be between 0 and 1, got {self.val_fraction}")
        if not (isinstance(self.strategy, str) and self.strategy in STRATEGIES):
            raise InputError(f"`strategy` {str(self.strategy)[:40]!r} not understood",
                             hint=f"use one of {', '.join(STRATEGIES)}")
        if self.devices != "auto":
            self.devices = _int_setting("devices", self.devices, 1, 4096,
                                        also="a number of devices or 'auto'")

    @property
    def hparams(self):
        """``model_params`` validated into the model's ``Params`` dataclass."""
        return self._hparams

    def resolved_filter(self) -> bool:
        """Whether predictions of this run are filtered (``auto`` asks the model class)."""
        from ..models import get_model

        if self.filter_predictions == "auto":
            return bool(get_model(self.model).filter_predictions)
        return self.filter_predictions == "on"

    # -- conversions --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-safe dictionary (the preprocess settings nested)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["targets"] = list(self.targets)
        out["preprocess"] = self.preprocess.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source=None) -> "TrainConfig":
        """Build from a dictionary; unknown keys are an InputError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        in_file = source is not None  # the user wrote keys, not flags
        if unknown:
            raise InputError(f"unknown training setting(s) {', '.join(unknown)}", path=source,
                             hint=f"known: {', '.join(sorted(names))}", keys_of_file=in_file)
        try:
            return cls(**dict(data))
        except InputError as exc:
            raise InputError(exc.message, path=source, hint=exc.hint,
                             keys_of_file=in_file) from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"bad training settings: {exc}", path=source,
                             keys_of_file=in_file) from None

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a TOML file (see the module docstring for an example)."""
        p = Path(path)
        if not p.is_file():
            raise InputError("no such configuration file", path=p)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"not valid TOML ({exc})", path=p) from None
        return cls.from_dict(data, source=p)

    def to_toml(self, path: str | os.PathLike) -> Path:
        """Write the configuration as TOML (atomically); returns the path."""
        text = dumps_toml(self.to_dict())
        with atomic_output(path) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
        return Path(path)

    def replace(self, **overrides: Any) -> "TrainConfig":
        """A copy with some settings changed (``None`` values are ignored).

        ``preprocess`` may be a PreprocessSettings or a dict of its fields to change.
        """
        changes = {k: v for k, v in overrides.items() if v is not None}
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InputError(f"unknown training setting(s) {', '.join(unknown)}")
        if isinstance(changes.get("preprocess"), Mapping):
            merged = {**self.preprocess.to_dict(), **changes["preprocess"]}
            changes["preprocess"] = type(self.preprocess).from_dict(merged)
        data = {**self.to_dict(), **changes}
        return type(self).from_dict(data)


def _int_setting(name: str, value: Any, low: int, high: int, also: str = "") -> int:
    """``value`` as an int in ``low..high`` (whole floats such as 64.0 accepted)."""
    ok = not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)
                                   and value.is_integer()))
    if not ok and isinstance(value, str):
        try:
            value, ok = int(value), True
        except ValueError:
            pass
    if not ok:
        raise InputError(f"`{name}` must be {also or 'an integer'}, got {str(value)[:40]}")
    if int(value) < low:
        raise InputError(f"`{name}` must be at least {low}, got {value}")
    if int(value) > high:
        raise InputError(f"`{name}` must be at most {high}, got {value}")
    return int(value)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{name} {value!r} not understood", hint=f"use one of {', '.join(allowed)}")


# -- TOML writing -------------------------------------------------------------
# The standard library reads TOML but cannot write it; our settings are flat
# values plus one level of tables, which this small writer covers exactly.

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Serialise a dict of scalars, lists and one level of tables to TOML.

    ``None`` values are left out (TOML has no null); readers fall back to the
    default, which is ``None`` for every optional setting.
    """
    lines, tables = [], []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, table in tables:
        lines.append(f"\n[{key}]")
        for sub, value in table.items():
            if value is None:
                continue
            if isinstance(value, Mapping):
                raise TypeError(f"nested table {key}.{sub} not supported")
            lines.append(f"{sub} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
