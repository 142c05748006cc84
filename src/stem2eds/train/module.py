"""The Lightning side of training: the module (loss, output activation) and the Trainer.

Imports Lightning; :mod:`stem2eds.train.fit` imports this module only when
it trains, so reading a configuration or predicting never loads Lightning.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
import threading
import warnings
from typing import Any

import lightning as L
import torch
from torch import nn

from ..errors import InputError
from ..formats.rundir import RunDir, apply_output_activation
from ..models import FixedFrontend
from .curves import prepend_epochs, read_metrics


def loss_function(name: str):
    """The per-target loss ``name`` (``mae``, ``mse`` or ``huber``) as f(pred, target)."""
    return {"mae": nn.functional.l1_loss, "mse": nn.functional.mse_loss,
            "huber": lambda a, b: nn.functional.huber_loss(a, b, delta=0.05)}[name]


def weighted_loss(pred: torch.Tensor, target: torch.Tensor, n_eds: int, loss: str,
                  weights: dict[str, float]) -> dict[str, torch.Tensor]:
    """Per-target and weighted total loss of a batch.

    Parameters
    ----------
    pred, target : Tensor, shape (n, E [+ 1])
        After the output activation; EDS columns first, then HAADF.
    n_eds : int
        Number of EDS columns (E); the EDS loss is averaged over them.
    loss : {"mae", "mse", "huber"}
    weights : dict
        ``{"eds": w, "haadf": w}``.

    Returns
    -------
    dict
        ``eds``, ``haadf`` (when there is a HAADF column) and the total ``loss``.
    """
    fn = loss_function(loss)
    parts = {"eds": fn(pred[:, :n_eds], target[:, :n_eds])}
    if pred.shape[1] > n_eds:
        parts["haadf"] = fn(pred[:, n_eds:], target[:, n_eds:])
    parts["loss"] = sum(weights.get(k, 1.0) * v for k, v in parts.items())
    return parts


class Regressor(L.LightningModule):
    """Lightning wrapper: weighted multi-task loss over EDS (and HAADF) outputs.

    Parameters
    ----------
    net : StemModel
        A registered model mapping (n, Qx, Qy) to (n, E [+ 1]).
    n_eds : int
        Number of EDS outputs (E).
    loss : {"mae", "mse", "huber"}
    loss_weights : dict
        ``{"eds": w, "haadf": w}``; the EDS loss is averaged over elements.
    learning_rate : float
        Adam learning rate.
    on_features : bool
        Batches hold the net's fixed front-end features (a
        :class:`~stem2eds.models.FixedFrontend`, computed once by
        :meth:`stem2eds.train.data.RunData.cache_frontend`) instead of patterns.
    """

    def __init__(self, net: nn.Module, n_eds: int, loss: str = "mae",
                 loss_weights: dict[str, float] | None = None, learning_rate: float = 1e-4,
                 on_features: bool = False):
        super().__init__()
        if on_features and not isinstance(net, FixedFrontend):
            raise TypeError(f"{type(net).__name__} has no fixed front end")
        self.net = net
        self.on_features = bool(on_features)
        self.n_eds = int(n_eds)
        self.loss_name = loss
        self.loss_weights = dict(loss_weights or {"eds": 1.0, "haadf": 1.0})
        self.learning_rate = float(learning_rate)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Patterns (or front-end features) -> activated outputs (n, E [+ 1])."""
        raw = self.net.forward_features(inputs) if self.on_features else self.net(inputs)
        return apply_output_activation(raw, self.n_eds)

    def compute_loss(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-target and weighted total loss of a batch (:func:`weighted_loss`)."""
        return weighted_loss(pred, target, self.n_eds, self.loss_name, self.loss_weights)

    def _step(self, batch, stage: str) -> torch.Tensor:
        patterns, target = batch
        parts = self.compute_loss(self(patterns), target)
        for key, value in parts.items():
            name = f"{stage}_loss" if key == "loss" else f"{stage}_{key}_loss"
            self.log(name, value, on_step=False, on_epoch=True, batch_size=len(patterns),
                     sync_dist=True, prog_bar=key == "loss")
        return parts["loss"]

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.learning_rate)


class EpochLines(L.Callback):
    """One plain line per epoch on stderr (for CI logs and pipes)."""

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        parts = [f"{k} {float(m[k]):.5f}" for k in ("train_loss", "val_loss") if k in m]
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: " + ", ".join(parts),
              file=sys.stderr, flush=True)


class quiet_lightning:
    """Silence Lightning's informational log lines and known harmless warnings."""

    PATTERNS = (".*does not have many workers.*", ".*logs directory.*exists.*",
                ".*Checkpoint directory.*exists.*", ".*LeafSpec.*",
                ".*number of training batches.*", ".*treespec, LeafSpec.*")

    def __enter__(self):
        self._levels = {}
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        for pattern in self.PATTERNS:
            warnings.filterwarnings("ignore", message=pattern)
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        return False


class InterruptRecorder(L.Callback):
    """Keeps the exception Lightning caught: it turns Ctrl-C into ``sys.exit(1)``.

    Lightning's ``fit`` catches KeyboardInterrupt (and the CLI's SIGTERM,
    raised as one), shuts down and calls ``sys.exit(1)``; :func:`fit_lightning`
    raises the recorded interrupt instead, so the command exits 130 / 143.
    """

    def __init__(self):
        self.exception: BaseException | None = None

    def on_exception(self, trainer, pl_module, exception):
        self.exception = exception


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full_error(run: RunDir) -> InputError:
    where = "it can resume from its last checkpoint" if run.has_checkpoint() \
        else "nothing was kept"
    return InputError(f"no space left on the device while training ({where})",
                      path=run.path, hint="free space, then train again with `resume`")


@contextlib.contextmanager
def _background_disk_errors(seen: list):
    """A full disk in a logger's writer thread: recorded, no traceback printed."""
    previous = threading.excepthook

    def hook(args):
        if isinstance(args.exc_value, OSError) and args.exc_value.errno in _DISK_FULL:
            seen.append(args.exc_value)
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def accelerator(device: str) -> str:
    """Lightning accelerator for the ``device`` setting; InputError when CUDA is missing."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError('device="cuda" but no CUDA GPU is available',
                             hint='use device="cpu" or device="auto"')
        return "gpu"
    return {"auto": "auto", "cpu": "cpu", "gpu": "gpu", "mps": "mps"}[device]


def _callbacks(run: RunDir, patience: int, quiet: bool) -> list:
    """Early stopping, checkpoints (best.ckpt, last.ckpt) and progress output."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from ..progress import interactive

    checkpoint = ModelCheckpoint(dirpath=run.checkpoints, filename="best",
                                 monitor="val_loss", mode="min", save_last=True,
                                 enable_version_counter=False)
    callbacks: list = [EarlyStopping(monitor="val_loss", mode="min", patience=patience),
                       checkpoint]
    if interactive() and not quiet:
        from lightning.pytorch.callbacks import RichProgressBar
        callbacks.append(RichProgressBar(leave=False))
    elif not quiet:
        callbacks.append(EpochLines())
    return callbacks


@contextlib.contextmanager
def _lightning_settings():
    """Lightning refusing a device setting (e.g. more devices than there are): one line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        yield
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        text = " ".join(str(exc).split())[:200]
        raise InputError(f"Lightning refused the device settings (`device`, `strategy`, "
                         f"`devices`, `num_nodes`): {text}") from None


def _run_fit(trainer, module, data, run: RunDir, ckpt_path, recorder) -> None:
    """``trainer.fit`` with interrupts, a full disk and bad checkpoints made user errors."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    sigint = signal.getsignal(signal.SIGINT) \
        if threading.current_thread() is threading.main_thread() else None
    disk: list[OSError] = []
    try:
        with _background_disk_errors(disk):
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path,
                        weights_only=True if ckpt_path else None)
    except SystemExit:
        if isinstance(recorder.exception, KeyboardInterrupt):
            raise recorder.exception from None
        raise
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise _disk_full_error(run) from None
        raise
    except MisconfigurationException as exc:  # e.g. resuming past `max_epochs`
        text = " ".join(str(exc).split())[:200]
        raise InputError(f"Lightning cannot train this run: {text}", path=run.path,
                         hint="when resuming, give `max_epochs` above the epochs already "
                              "run") from None
    except (RuntimeError, KeyError, ValueError) as exc:
        text = str(exc).lower()
        if ckpt_path is not None and (isinstance(exc, KeyError) or any(
                w in text for w in ("checkpoint", "state_dict", "weights_only"))):
            raise InputError(f"cannot resume from checkpoints/last.ckpt ({exc})",
                             path=run.path, hint="start a new run in another folder") \
                from None
        if "no space left" in text:
            raise _disk_full_error(run) from None
        raise
    finally:
        if sigint is not None:  # Lightning ignores Ctrl-C from its first one on
            signal.signal(signal.SIGINT, sigint)
    if disk:
        raise _disk_full_error(run)


def fit_lightning(net: nn.Module, data, run: RunDir, config, resume: bool,
                  quiet: bool) -> tuple[dict[str, Any], nn.Module, bool]:
    """Train ``net`` on ``data`` (a :class:`~stem2eds.train.data.RunData`) with Lightning.

    Checkpoints go to ``run.checkpoints`` (``last.ckpt`` for resuming,
    ``best.ckpt`` by validation loss), logs to ``run.logs`` (CSV, flushed
    every step so a killed run keeps its curve, and TensorBoard).

    Returns
    -------
    summary : dict
        ``training`` of ``run.json`` (empty in the extra DDP processes).
    net : nn.Module
        With the best weights, on the CPU.
    is_rank_zero : bool
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from ..formats.checkpoint import load_checkpoint

    on_features = isinstance(net, FixedFrontend)
    start: dict[str, Any] = {}
    if on_features:
        data.cache_frontend(net.frontend)
        # Data-dependent start (radial: the ridge solution); identical on every
        # DDP rank since each holds the whole training set before sharding.
        start = net.start_from_data(*data.train_set.tensors)
    module = Regressor(net, len(data.elements), config.loss, config.loss_weights,
                       config.learning_rate, on_features=on_features)
    callbacks = _callbacks(run, config.patience, quiet)
    checkpoint, stopper = callbacks[1], callbacks[0]
    recorder = InterruptRecorder()
    callbacks.append(recorder)
    loggers = [CSVLogger(save_dir=run.path, name=run.logs.name, version="",
                         flush_logs_every_n_steps=1),
               TensorBoardLogger(save_dir=run.logs, name="tensorboard", version="",
                                 default_hp_metric=False)]
    acc = accelerator(config.device)
    ckpt_path = run.last_checkpoint if resume else None
    # The CSVLogger starts metrics.csv afresh; the epochs before a resume are
    # put back in front afterwards (the training curves need them).
    earlier = read_metrics(run.metrics_csv) if resume else []
    with quiet_lightning(), _lightning_settings():
        trainer = L.Trainer(
            max_epochs=config.max_epochs, accelerator=acc, devices=config.devices,
            strategy=config.strategy, num_nodes=config.num_nodes, callbacks=callbacks,
            logger=loggers,
            # Deterministic kernels on CPU; on GPU some (scatter_reduce) have
            # no deterministic version, so only warn there.
            deterministic=True if acc == "cpu" else "warn",
            enable_progress_bar=any(type(c).__name__ == "RichProgressBar" for c in callbacks),
            enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0)
    with quiet_lightning():
        _run_fit(trainer, module, data, run, ckpt_path, recorder)
    if trainer.interrupted:
        raise KeyboardInterrupt
    if not trainer.is_global_zero:
        return {}, net, False
    prepend_epochs(run.metrics_csv, earlier)
    best = load_checkpoint(checkpoint.best_model_path or run.last_checkpoint)
    module.load_state_dict(best["state_dict"])
    summary = {
        "method": "Adam (Lightning)", "epochs_run": int(trainer.current_epoch),
        "start": start or None,
        "best_epoch": int(best.get("epoch", -1)) + 1,
        "best_val_loss": float(checkpoint.best_model_score)
        if checkpoint.best_model_score is not None else None,
        "stopped_early": bool(stopper.stopped_epoch > 0),
        "device": str(trainer.strategy.root_device), "strategy": type(trainer.strategy).__name__,
        "world_size": int(trainer.world_size),
    }
    return summary, module.net.cpu(), True
