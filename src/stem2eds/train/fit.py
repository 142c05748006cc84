"""Training: a Lightning module around any registered model, and the ``train()`` API.

``train(bundles, run_dir, config)`` preprocesses RAW bundles into
``run_dir/preprocessed/`` (the intensity scale fitted on the first bundle and
reused for the others), splits probe positions into training and validation
(random or spatial blocks), trains with Adam and an MAE loss by default,
early stopping on the validation loss, checkpoints (``last.ckpt`` for
``--resume``), CSV and TensorBoard logs, and writes the run directory::

    run_dir/
      run.json                 model, hyperparameters, elements, targets, scales,
                               resolved preprocessing, split, seeds, versions, timings
      config.toml              the TrainConfig used
      weights.safetensors      model weights (cannot run code when loaded)
      split.npz                validation mask (Rx', Ry') of every bundle
      checkpoints/             last.ckpt, best.ckpt (Lightning)
      logs/metrics.csv         per-epoch train_loss / val_loss (CSVLogger)
      logs/tensorboard/        TensorBoard event files
      figures/training_curves.png
      preprocessed/            the preprocessed training bundles
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..formats.bundle import open_bundle
from .config import TrainConfig
from .data import (check_same_detector, make_loader, make_split_data, split_positions,
                   target_matrix)
from ..errors import InputError
from ..atomic import atomic_output
# The run format and output activation live in runinfo so that prediction
# can use them without importing Lightning; re-exported here.
from ..formats.rundir import RUN_FORMAT, RUN_FORMAT_VERSION, apply_output_activation
from ..formats.rundir import RunDir
from ..formats.rundir import read_run_info as _read_state

#: Percentile of the training HAADF used as its scale (robust to hot pixels).
HAADF_PERCENTILE = 99.0

log = logging.getLogger(__name__)


# -- the Lightning module -----------------------------------------------------

def _loss_fn(name: str):
    return {"mae": nn.functional.l1_loss, "mse": nn.functional.mse_loss,
            "huber": lambda a, b: nn.functional.huber_loss(a, b, delta=0.05)}[name]


def _lightning():
    import lightning
    return lightning


class Regressor(_lightning().LightningModule):
    """Lightning wrapper: weighted multi-task loss over EDS (and HAADF) outputs.

    Parameters
    ----------
    net : nn.Module
        A registered model mapping (n, Qx, Qy) to (n, E [+ 1]).
    n_eds : int
        Number of EDS outputs (E).
    loss : {"mae", "mse", "huber"}
    loss_weights : dict
        ``{"eds": w, "haadf": w}``; the EDS loss is averaged over elements.
    learning_rate : float
        Adam learning rate.
    on_features : bool
        Batches hold the net's fixed front-end features (``net.frontend``
        computed once, see :func:`frontend_dataset`) instead of patterns.
    """

    def __init__(self, net: nn.Module, n_eds: int, loss: str = "mae",
                 loss_weights: dict[str, float] | None = None, learning_rate: float = 1e-4,
                 on_features: bool = False):
        super().__init__()
        self.net = net
        self.on_features = bool(on_features)
        self.n_eds = int(n_eds)
        self.loss_name = loss
        self._loss = _loss_fn(loss)
        self.loss_weights = dict(loss_weights or {"eds": 1.0, "haadf": 1.0})
        self.learning_rate = float(learning_rate)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        raw = self.net.forward_features(inputs) if self.on_features else self.net(inputs)
        return apply_output_activation(raw, self.n_eds)

    def compute_loss(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-target and weighted total loss of a batch."""
        parts = {"eds": self._loss(pred[:, :self.n_eds], target[:, :self.n_eds])}
        if pred.shape[1] > self.n_eds:
            parts["haadf"] = self._loss(pred[:, self.n_eds:], target[:, self.n_eds:])
        parts["loss"] = sum(self.loss_weights.get(k, 1.0) * v for k, v in parts.items())
        return parts

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


class _EpochLines(_lightning().Callback):
    """One plain line per epoch on stderr (for CI logs and pipes)."""

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        parts = [f"{k} {float(m[k]):.5f}" for k in ("train_loss", "val_loss") if k in m]
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: " + ", ".join(parts),
              file=sys.stderr, flush=True)


# -- the run directory ---------------------------------------------------------

def _versions() -> dict[str, str]:
    import lightning
    import safetensors
    import sklearn

    from .. import __version__
    return {"stem2eds": __version__, "torch": torch.__version__,
            "lightning": lightning.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "safetensors": safetensors.__version__,
            "python": sys.version.split()[0]}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file (never a half-written file)."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, default=_json_default) + "\n",
                             encoding="utf-8")


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def save_weights(net: nn.Module, path: Path) -> None:
    """Save a model's state (parameters and buffers) as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata={"format": RUN_FORMAT})


def _is_child_process() -> bool:
    """True in the extra processes a DDP launch starts (they must not redo set-up)."""
    return any(int(os.environ.get(k, "0") or 0) > 0 for k in ("LOCAL_RANK", "NODE_RANK"))


def is_main_process() -> bool:
    """False in the extra processes of a multi-process (DDP) launch."""
    return not _is_child_process()


def _preprocess_all(bundles: Sequence[Path], run_dir: Path, config: TrainConfig,
                    reuse: bool, quiet: bool):
    """Preprocess raw bundles into run_dir/preprocessed; returns (paths, resolved settings)."""
    from ..preprocess import PreprocessSettings, preprocess_bundle

    folder = run_dir / "preprocessed"
    folder.mkdir(parents=True, exist_ok=True)
    outs = [folder / f"{i:02d}_{Path(b).stem}.h5" for i, b in enumerate(bundles)]
    record = folder / "settings.json"
    sources = [str(Path(b).resolve()) for b in bundles]
    if reuse and record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("sources") == sources and all(o.is_file() for o in outs):
            return outs, PreprocessSettings.from_dict(saved["settings"])
    settings = config.preprocess
    for src, out in zip(bundles, outs):
        # The first bundle fits what is unresolved (scale, beam radius); the
        # others reuse it so all patterns share one intensity scale.
        settings = preprocess_bundle(src, out, settings, quiet=quiet)
    write_json(record, {"sources": sources, "settings": settings.to_dict()})
    return outs, settings


def _check_raw_bundles(bundles: Sequence[str | os.PathLike],
                       targets: Sequence[str]) -> tuple[list[Path], list[str]]:
    if not bundles:
        raise InputError("no training bundles given")
    paths = [Path(b) for b in bundles]
    elements: list[str] | None = None
    for p in paths:
        with open_bundle(p, require=("diffraction", "eds")) as scan:
            if scan.kind != "raw":
                raise InputError(f"bundle is {scan.kind!r}; train takes raw bundles and "
                                 "preprocesses them itself", path=p,
                                 hint="pass the bundle made by convert or simulate")
            if "haadf" in targets and not scan.has("haadf"):
                raise InputError("targets include haadf but the bundle has none", path=p,
                                 hint="train with --targets eds")
            if elements is None:
                elements = scan.elements
            elif scan.elements != elements:
                raise InputError(f"elements {','.join(scan.elements)} differ from "
                                 f"{','.join(elements)} of the first bundle", path=p)
    return paths, list(elements or [])


def _prepare_run_dir(run_dir: Path, resume: bool, config: TrainConfig) -> TrainConfig:
    """Check the run folder; on resume return the stored config (runtime fields updated)."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not ckpt.is_file():
            raise InputError("nothing to resume: no checkpoints/last.ckpt", path=run_dir,
                             hint="start a new run without --resume")
        # Before any work, and before Lightning touches it: a checkpoint that
        # holds anything but tensors and plain data is refused unexecuted.
        from ..formats.checkpoint import load_checkpoint

        load_checkpoint(ckpt, hint="start a new run in another folder; resume only "
                                   "checkpoints you trust")
        state = _read_state(run_dir)
        versions = _versions()
        if state.get("format_version") != RUN_FORMAT_VERSION or \
                state.get("versions", {}).get("lightning", "").split(".")[0] != \
                versions["lightning"].split(".")[0]:
            raise InputError("run was made by an incompatible stem2eds/Lightning version "
                             f"({state.get('versions')})", path=run_dir,
                             hint="start a new run in another folder")
        _check_checkpoint(ckpt)
        stored = TrainConfig.from_toml(run_dir / "config.toml")
        return stored.replace(max_epochs=config.max_epochs, device=config.device,
                              strategy=config.strategy, devices=config.devices,
                              num_nodes=config.num_nodes, num_workers=config.num_workers,
                              threads=config.threads)
    if not _is_child_process() and run_dir.exists() and any(
            (run_dir / n).exists() for n in ("run.json", "checkpoints", "weights.safetensors")):
        raise InputError("folder already holds a training run", path=run_dir,
                         hint="pass --resume to continue it or choose another --out")
    return config


def _check_checkpoint(path: Path) -> None:
    """Refuse a checkpoint that is not plain tensors and data before Lightning opens it.

    ``torch.load(weights_only=True)`` never runs code from the file; anything
    it rejects (a pickle that would call functions, a damaged file) is an
    InputError naming the file.
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"refused to load the checkpoint: it is damaged or holds objects "
                         f"other than tensors and plain data ({first[:160]})", path=path,
                         hint="resume only run folders you trust, or start a new run") from None
    if not isinstance(state, dict) or "state_dict" not in state or "epoch" not in state:
        raise InputError("not a Lightning checkpoint (no state_dict/epoch)", path=path,
                         hint="start a new run in another folder")


def _make_split(shapes: Sequence[tuple[int, int]], config: TrainConfig) -> list[np.ndarray]:
    # A different stream per bundle, all derived from the one seed.
    return [split_positions(
        shape, config.split, config.val_fraction, seed=config.seed + 7919 * i,
        block_size=config.block_size) for i, shape in enumerate(shapes)]


def _haadf_scale(paths: Sequence[Path], masks: Sequence[np.ndarray]) -> float:
    values = []
    for p, m in zip(paths, masks):
        with open_bundle(p) as scan:
            haadf = scan.haadf
            if haadf is None:
                raise InputError("targets include haadf but the bundle has none", path=p,
                                 hint="train with --targets eds")
            values.append(haadf[~m])
    scale = float(np.percentile(np.concatenate(values), HAADF_PERCENTILE))
    if not scale > 0:
        raise InputError("HAADF of the training positions is zero everywhere", path=paths[0])
    return scale


def _accelerator(device: str) -> str:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda but no CUDA GPU is available",
                             hint="use --device cpu or auto")
        return "gpu"
    return {"auto": "auto", "cpu": "cpu", "gpu": "gpu", "mps": "mps"}[device]


def _set_threads(config: TrainConfig) -> None:
    # Half the cores by default: small models gain nothing from more threads,
    # and on a shared machine a thread waiting for a busy core stalls every op
    # (we measured a 6x slower step with 2 threads than with 1 on 2 busy cores).
    threads = config.threads or max(1, min((os.cpu_count() or 2) // 2, 8))
    torch.set_num_threads(threads)


def train(bundles: Sequence[str | os.PathLike], run_dir: str | os.PathLike,
          config: TrainConfig | None = None, *, resume: bool = False,
          quiet: bool = False) -> Path:
    """Train a model on raw bundles and write a run directory.

    Parameters
    ----------
    bundles : sequence of path-like
        RAW scan bundles with ``diffraction`` (Rx, Ry, Qx, Qy) and ``eds``
        (and ``haadf`` for ``targets = ("eds", "haadf")``).
    run_dir : path-like
        Output folder (created; must not hold a run unless ``resume``).
    config : TrainConfig, optional
        Defaults to ``TrainConfig()``. On ``resume`` the stored config is used,
        with ``max_epochs`` and the device settings taken from this one.
    resume : bool
        Continue from ``run_dir/checkpoints/last.ckpt`` after a crash or kill.
    quiet : bool
        No progress output.

    Returns
    -------
    Path
        ``run_dir``.
    """
    config = config or TrainConfig()
    run_dir = Path(run_dir)
    config = _prepare_run_dir(run_dir, resume, config)
    paths, elements = _check_raw_bundles(bundles, config.targets)
    run_dir.mkdir(parents=True, exist_ok=True)
    _set_threads(config)
    started = time.perf_counter()
    child = _is_child_process()
    pre_paths, settings = _preprocess_all(paths, run_dir, config, reuse=resume or child,
                                          quiet=quiet)
    detector = check_same_detector(pre_paths)
    shapes = []
    for p in pre_paths:
        with open_bundle(p) as scan:
            shapes.append(scan.scan_shape)
    masks = _make_split(shapes, config)
    haadf_scale = _haadf_scale(pre_paths, masks) if "haadf" in config.targets else None
    targets = [target_matrix(p, elements, config.targets, haadf_scale) for p in pre_paths]
    data = make_split_data(pre_paths, masks, targets)

    from ..models import build_model
    _lightning().seed_everything(config.seed, workers=True, verbose=False)
    n_outputs = len(elements) + (1 if "haadf" in config.targets else 0)
    net = build_model(config.model, detector, n_outputs, config.model_params)
    if net.trainable:
        _init_output_bias(net, data.train.targets)

    state: dict[str, Any] = {
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "status": "training",
        "model": config.model, "model_params": dict(net.hparams),
        "input_shape": list(detector), "n_outputs": n_outputs,
        "elements": elements, "targets": list(config.targets),
        "output_columns": elements + (["haadf"] if "haadf" in config.targets else []),
        "target_scales": {"haadf": haadf_scale} if haadf_scale else {},
        "preprocess": settings.to_dict(),
        "filter_predictions": config.resolved_filter(),
        "split": {"mode": config.split, "val_fraction": config.val_fraction,
                  "block_size": config.block_size, "seed": config.seed,
                  "file": "split.npz", "n_train": len(data.train), "n_val": len(data.val)},
        "sources": [str(p.resolve()) for p in paths],
        "preprocessed": [str(p.relative_to(run_dir)) for p in pre_paths],
        "seed": config.seed, "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if not child:
        with atomic_output(run_dir / "split.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{f"val_mask_{i}": m for i, m in enumerate(masks)},
                         bundles=np.array([p.name for p in paths]))
        config.to_toml(run_dir / "config.toml")
        if not resume:
            write_json(run_dir / "run.json", state)

    if net.trainable:
        training, net, is_zero = _fit_lightning(net, data, run_dir, config, len(elements),
                                                resume, quiet)
    else:
        training, is_zero = _fit_closed_form(net, data, config, len(elements)), True
    if not is_zero:
        return run_dir
    training["seconds"] = round(time.perf_counter() - started, 2)
    save_weights(net, run_dir / "weights.safetensors")
    state.update(status="complete", training=training, model_params=dict(net.hparams),
                 finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    write_json(run_dir / "run.json", state)
    curves = run_dir / "logs" / "metrics.csv"
    if curves.is_file():
        plot_training_curves(curves, run_dir / "figures" / "training_curves.png",
                             title=f"{config.model} on {', '.join(p.stem for p in paths)}",
                             loss=config.loss)
    return run_dir


def ensure_trained(bundles: Sequence[str | os.PathLike], run_dir: str | os.PathLike,
                   config: TrainConfig | None = None, *, quiet: bool = False) -> Path:
    """Train unless ``run_dir`` already holds a finished run; resume an interrupted one.

    The one "train unless already done" of the package: experiments and
    ensembles call it for every model they need.

    Parameters
    ----------
    bundles : sequence of path-like
        Raw training bundles.
    run_dir : path-like
        The run folder.
    config : TrainConfig, optional
    quiet : bool

    Returns
    -------
    Path
        ``run_dir``.

    Raises
    ------
    InputError
        When finished weights are there but no longer load (e.g. the model
        changed since): resuming would mix two models, so the user decides.
    """
    from ..predict.predictor import load_run

    run = RunDir(run_dir)
    if run.run_json.is_file() and run.weights.is_file():
        try:
            load_run(run.path)
        except InputError as exc:
            if run.is_complete():
                raise InputError(f"finished run cannot be reused ({exc})", path=run.path,
                                 hint="delete that folder (or use another output folder) "
                                      "to retrain it") from None
        else:
            return run.path
    run.path.parent.mkdir(parents=True, exist_ok=True)
    return Path(train(list(bundles), run.path, config, resume=run.has_checkpoint(),
                      quiet=quiet))


def _init_output_bias(net: nn.Module, targets: torch.Tensor) -> None:
    """Start the output layer at the mean training target.

    With a ReLU output (HAADF) a start below zero gives no gradient at all,
    and for every target it saves the first epochs of learning the offset.
    """
    with torch.no_grad():
        net.output_layer.bias.copy_(targets.mean(dim=0))


def _fit_closed_form(net: nn.Module, data, config: TrainConfig, n_eds: int) -> dict[str, Any]:
    """Fit a closed-form model (ridge) on the training positions; report losses."""
    def features(ds):
        loader = make_loader(ds, 1024, False, config.seed)
        feats, ys = [], []
        with torch.inference_mode():
            for x, y in loader:
                feats.append(net.features(x))
                ys.append(y)
        return torch.cat(feats).numpy(), torch.cat(ys).numpy()

    x_train, y_train = features(data.train)
    x_val, y_val = features(data.val)
    net.fit(x_train, y_train)
    module = Regressor(net, n_eds, config.loss, config.loss_weights)
    with torch.inference_mode():
        losses = {}
        for stage, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
            xs = (torch.from_numpy(x) - net.feature_mean) / net.feature_scale
            pred = apply_output_activation(xs @ net.weight.T + net.bias, n_eds)
            losses[f"{stage}_loss"] = float(module.compute_loss(pred, torch.from_numpy(y))["loss"])
    return {"method": "closed form (RidgeCV)", "alpha": float(net.alpha), **losses,
            "best_val_loss": losses["val_loss"], "epochs_run": 0}


def frontend_dataset(net: nn.Module, dataset, batch: int = 1024) -> TensorDataset:
    """Apply a model's fixed front end to every pattern of a dataset, once.

    Parameters
    ----------
    net : nn.Module
        A model with ``fixed_frontend`` (e.g. ``radial``).
    dataset : PositionDataset
        Items (pattern (Qx, Qy), target (T,)).
    batch : int
        Patterns per front-end batch (streamed; lazy datasets stay on disk).

    Returns
    -------
    TensorDataset
        Items (features (S, R), target (T,)): a few hundred numbers per
        position instead of Qx*Qy, so every later epoch skips the front end.
    """
    feats, targets = [], []
    with torch.inference_mode():
        for x, y in make_loader(dataset, batch, False, 0):
            feats.append(net.frontend(x))
            targets.append(y)
    return TensorDataset(torch.cat(feats).clone(), torch.cat(targets).clone())


def _fit_lightning(net: nn.Module, data, run_dir: Path, config: TrainConfig, n_eds: int,
                   resume: bool, quiet: bool):
    """Train with Lightning; returns (summary, net with the best weights, is rank 0)."""
    L = _lightning()
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from ..progress import interactive

    on_features = bool(getattr(net, "fixed_frontend", False))
    module = Regressor(net, n_eds, config.loss, config.loss_weights, config.learning_rate,
                       on_features=on_features)
    train_set, val_set = data.train, data.val
    if on_features:
        train_set, val_set = frontend_dataset(net, train_set), frontend_dataset(net, val_set)
    start_alpha = None
    if on_features and hasattr(net, "init_from_data"):
        # Data-dependent start (radial: the ridge solution); identical on every
        # DDP rank since each holds the whole training set before sharding.
        start_alpha = net.init_from_data(*train_set.tensors)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best",
                                 monitor="val_loss", mode="min", save_last=True,
                                 enable_version_counter=False)
    callbacks: list = [EarlyStopping(monitor="val_loss", mode="min", patience=config.patience),
                       checkpoint]
    show_bar = interactive() and not quiet
    if show_bar:
        from lightning.pytorch.callbacks import RichProgressBar
        callbacks.append(RichProgressBar(leave=False))
    elif not quiet:
        callbacks.append(_EpochLines())
    # Flushed every step so a killed run keeps its curve up to the kill.
    loggers = [CSVLogger(save_dir=run_dir, name="logs", version="", flush_logs_every_n_steps=1),
               TensorBoardLogger(save_dir=run_dir / "logs", name="tensorboard", version="",
                                 default_hp_metric=False)]
    accelerator = _accelerator(config.device)
    # Deterministic kernels on CPU; on GPU some (scatter_reduce) have no
    # deterministic version, so only warn there.
    deterministic: Any = True if accelerator == "cpu" else "warn"
    # Features are in memory already: worker processes would only add overhead.
    workers = 0 if on_features else config.num_workers
    train_loader = make_loader(train_set, config.batch_size, True, config.seed, workers)
    val_loader = make_loader(val_set, 1024, False, config.seed, workers)
    ckpt_path = run_dir / "checkpoints" / "last.ckpt" if resume else None
    metrics_csv = run_dir / "logs" / "metrics.csv"
    before = _read_csv(metrics_csv) if resume else []
    with _quiet_lightning():
        trainer = L.Trainer(
            max_epochs=config.max_epochs, accelerator=accelerator, devices=config.devices,
            strategy=config.strategy, num_nodes=config.num_nodes, callbacks=callbacks,
            logger=loggers, deterministic=deterministic, enable_progress_bar=show_bar,
            enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0)
        try:
            trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path,
                        weights_only=True if ckpt_path else None)
        except (RuntimeError, KeyError, ValueError) as exc:
            if ckpt_path is not None and ("checkpoint" in str(exc).lower()
                                          or "state_dict" in str(exc).lower()
                                          or "weights_only" in str(exc).lower()
                                          or isinstance(exc, KeyError)):
                raise InputError(f"cannot resume from checkpoints/last.ckpt ({exc})",
                                 path=run_dir, hint="start a new run in another folder") \
                    from None
            raise
    if trainer.interrupted:
        raise KeyboardInterrupt
    if not trainer.is_global_zero:
        return {}, net, False
    if resume:
        _merge_metrics(metrics_csv, before)
    best_path = checkpoint.best_model_path or str(run_dir / "checkpoints" / "last.ckpt")
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(best["state_dict"])
    stopper = callbacks[0]
    summary = {
        "method": "Adam (Lightning)", "epochs_run": int(trainer.current_epoch),
        "start": None if start_alpha is None else {"ridge_alpha": start_alpha},
        "best_epoch": int(best.get("epoch", -1)) + 1,
        "best_val_loss": float(checkpoint.best_model_score)
        if checkpoint.best_model_score is not None else None,
        "stopped_early": bool(stopper.stopped_epoch > 0),
        "device": str(trainer.strategy.root_device), "strategy": type(trainer.strategy).__name__,
        "world_size": int(trainer.world_size),
    }
    return summary, module.net.cpu(), True


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _merge_metrics(path: Path, before: list[dict[str, str]]) -> None:
    """Put the epochs logged before a resume back in front of the resumed ones.

    Lightning's CSVLogger rewrites ``metrics.csv`` when a run resumes, losing
    the earlier epochs; they are needed for the training curves.
    """
    import csv

    after = _read_csv(path)
    if not before:
        return
    first_new = min((int(r["epoch"]) for r in after if r.get("epoch")), default=None)
    kept = [r for r in before if first_new is None or int(r["epoch"]) < first_new]
    rows = kept + after
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


class _quiet_lightning:
    """Silence Lightning's informational log lines and known harmless warnings."""

    def __enter__(self):
        self._levels = {}
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        for pattern in (".*does not have many workers.*", ".*logs directory.*exists.*", ".*Checkpoint directory.*exists.*",
                        ".*LeafSpec.*", ".*number of training batches.*",
                        ".*treespec, LeafSpec.*"):
            warnings.filterwarnings("ignore", message=pattern)
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        return False


def plot_training_curves(metrics_csv: Path, out: Path, title: str = "",
                         loss: str = "mae") -> Path:
    """Training and validation loss against epoch, from Lightning's ``metrics.csv``.

    Parameters
    ----------
    metrics_csv : Path
        CSVLogger output with ``epoch``, ``train_loss`` and ``val_loss`` columns.
    out : Path
        PNG to write (atomically).
    title : str
    loss : str
        Name of the loss, for the axis label.
    """
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[int, float]] = {"train_loss": {}, "val_loss": {}}
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            for key in curves:
                if row.get(key):
                    curves[key][int(row["epoch"]) + 1] = float(row[key])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        if curves[key]:
            epochs = sorted(curves[key])
            ax.plot(epochs, [curves[key][e] for e in epochs], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{loss.upper()} loss (weighted over targets)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
