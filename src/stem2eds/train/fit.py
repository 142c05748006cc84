"""Training: ``train()`` turns raw bundles into a run folder.

``train(bundles, run_dir, config)`` preprocesses RAW bundles into
``run_dir/preprocessed/`` (the intensity scale fitted on the first bundle and
reused for the others), lets :class:`~stem2eds.train.data.RunData` split the
probe positions into training and validation (random or spatial blocks),
trains (:func:`stem2eds.train.module.fit_lightning`: Adam, MAE loss by
default, early stopping on the validation loss, checkpoints for ``resume``,
CSV and TensorBoard logs) or fits a closed-form model, and writes the run
folder (:class:`~stem2eds.formats.rundir.RunDir` names its files).

This module imports neither Lightning nor the training data stack until
:func:`train` runs.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from ..formats.bundle import fingerprint, open_bundle
from ..formats.rundir import RUN_FORMAT, RUN_FORMAT_VERSION, RunDir, write_json
from .config import TrainConfig
from .frontend import fused_rings, scan_normalised, use_cached_rings


def _versions() -> dict[str, str]:
    import lightning
    import numpy as np
    import safetensors
    import sklearn
    import torch

    from .. import __version__
    return {"stem2eds": __version__, "torch": torch.__version__,
            "lightning": lightning.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "safetensors": safetensors.__version__,
            "python": sys.version.split()[0]}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _is_child_process() -> bool:
    """True in the extra processes a DDP launch starts (they must not redo set-up)."""
    return any(int(os.environ.get(k, "0") or 0) > 0 for k in ("LOCAL_RANK", "NODE_RANK"))


def is_main_process() -> bool:
    """False in the extra processes of a multi-process (DDP) launch."""
    return not _is_child_process()


def _preprocess_all(bundles: Sequence[Path], run: RunDir, config: TrainConfig,
                    reuse: bool, quiet: bool):
    """Preprocess raw bundles into the run's preprocessed/; returns (paths, resolved settings)."""
    from ..preprocess import PreprocessSettings, preprocess_bundle

    run.preprocessed.mkdir(parents=True, exist_ok=True)
    outs = [run.preprocessed_bundle(i, b) for i, b in enumerate(bundles)]
    sources = [str(Path(b).resolve()) for b in bundles]
    made_from = fingerprint(bundles, config.preprocess.to_dict())
    if reuse and run.preprocess_record.is_file():
        try:
            saved = json.loads(run.preprocess_record.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            saved = {}
        if isinstance(saved, dict) and saved.get("sources") == sources \
                and saved.get("fingerprint") == made_from and all(o.is_file() for o in outs):
            return outs, PreprocessSettings.from_dict(saved["settings"])
    settings = config.preprocess
    for src, out in zip(bundles, outs):
        # The first bundle fits what is unresolved (scale, beam radius); the
        # others reuse it so all patterns share one intensity scale.
        settings = preprocess_bundle(src, out, settings, quiet=quiet)
    write_json(run.preprocess_record, {"sources": sources, "fingerprint": made_from,
                                       "settings": settings.to_dict()})
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
                                 hint='train with targets="eds"')
            if elements is None:
                elements = scan.elements
            elif scan.elements != elements:
                raise InputError(f"elements {','.join(scan.elements)} differ from "
                                 f"{','.join(elements)} of the first bundle", path=p)
    return paths, list(elements or [])


#: Settings that decide where and how fast a run trains, not what it learns.
RUNTIME_SETTINGS = ("device", "strategy", "devices", "num_nodes", "num_workers", "threads")


def run_fingerprint(bundles: Sequence[str | os.PathLike], config: TrainConfig) -> str:
    """Fingerprint of a run: its input bundles' data and every setting that decides it.

    Recorded as ``fingerprint`` in ``run.json``; :func:`ensure_trained`
    reuses or resumes a run only when it matches.
    """
    settings = {k: v for k, v in config.to_dict().items() if k not in RUNTIME_SETTINGS}
    return fingerprint(bundles, settings)


def _prepare_run_dir(run: RunDir, resume: bool, config: TrainConfig) -> TrainConfig:
    """Check the run folder; on resume return the stored config (runtime fields updated).

    A run that never reached its first checkpoint (killed, out of disk, or
    a bad setting found late) cannot be resumed, so it is started over,
    with or without ``resume``: such a folder is never a dead end.
    """
    if _is_child_process():
        return _stored_config(run, config) if resume else config
    resumable = run.has_checkpoint()
    if not resume:
        if run.holds_run() and (resumable or run.is_complete()):
            raise InputError("folder already holds a training run", path=run.path,
                             hint="set resume=True to continue it, or choose another run_dir")
        run.remove_products()  # nothing here can be resumed: start over
        return config
    if not resumable:
        if not run.holds_run():
            raise InputError("nothing to resume: no checkpoints/last.ckpt", path=run.path,
                             hint="start a new run without resume=True")
        if run.is_complete():
            raise InputError("the run is finished and has no checkpoints/last.ckpt to "
                             "continue from", path=run.path,
                             hint="choose another run_dir for a new run")
        run.remove_products()  # interrupted before its first checkpoint: start over
        return config
    # Before any work, and before Lightning opens it: a checkpoint that holds
    # anything but tensors and plain data is refused unexecuted.
    from ..formats.checkpoint import load_checkpoint

    new_run = "start a new run in another folder"
    ckpt = load_checkpoint(run.last_checkpoint,
                           hint=f"{new_run}; resume only checkpoints you trust")
    if "state_dict" not in ckpt or "epoch" not in ckpt:
        raise InputError("not a Lightning checkpoint (no state_dict/epoch)",
                         path=run.last_checkpoint, hint=new_run)
    state = run.info()
    major = _versions()["lightning"].split(".")[0]
    if state.get("format_version") != RUN_FORMAT_VERSION or \
            str(state.get("versions", {}).get("lightning", "")).split(".")[0] != major:
        raise InputError("run was made by an incompatible stem2eds/Lightning version "
                         f"({state.get('versions')})", path=run.path, hint=new_run)
    return _stored_config(run, config)


def _stored_config(run: RunDir, config: TrainConfig) -> TrainConfig:
    """The run's config.toml with the runtime settings of ``config``."""
    stored = TrainConfig.from_toml(run.config_toml)
    return stored.replace(max_epochs=config.max_epochs, device=config.device,
                          strategy=config.strategy, devices=config.devices,
                          num_nodes=config.num_nodes, num_workers=config.num_workers,
                          threads=config.threads)


def _set_threads(config: TrainConfig) -> None:
    import torch

    # Half the cores by default: small models gain nothing from more threads,
    # and on a shared machine a thread waiting for a busy core stalls every op.
    threads = config.threads or max(1, min((os.cpu_count() or 2) // 2, 8))
    torch.set_num_threads(threads)


def _fit_closed_form(net, data, config: TrainConfig) -> dict[str, Any]:
    """Fit a :class:`~stem2eds.models.ClosedFormModel` on the training positions."""
    import torch

    from ..formats.rundir import apply_output_activation
    from .module import weighted_loss

    n_eds = len(data.elements)
    data.cache_frontend(net.features)  # from the cached ring statistics when there are
    sets = {"train": data.train_set, "val": data.val_set}
    x, y = sets["train"].tensors
    net.fit(x.numpy(), y.numpy())
    losses = {}
    with torch.inference_mode():
        for stage, ds in sets.items():
            x, y = ds.tensors
            pred = apply_output_activation(net.predict_features(x), n_eds)
            losses[f"{stage}_loss"] = float(weighted_loss(pred, y, n_eds, config.loss,
                                                          config.loss_weights)["loss"])
    return {**net.fit_summary(), **losses, "best_val_loss": losses["val_loss"],
            "epochs_run": 0}


def _run_state(config: TrainConfig, net, data, settings, paths, pre_paths,
               run: RunDir) -> dict[str, Any]:
    """``run.json`` of a run whose training starts now (status ``training``)."""
    elements = data.elements
    return {
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "status": "training",
        "fingerprint": run_fingerprint(paths, config),
        "model": config.model, "model_params": net.hparams,
        "input_shape": list(data.train_set.detector_shape), "n_outputs": data.n_outputs,
        "elements": elements, "targets": list(config.targets),
        "output_columns": elements + (["haadf"] if "haadf" in config.targets else []),
        "target_scales": {"haadf": data.haadf_scale} if data.haadf_scale else {},
        "preprocess": settings.to_dict(),
        "filter_predictions": config.resolved_filter(),
        "split": {"mode": config.split, "val_fraction": config.val_fraction,
                  "block_size": config.block_size, "seed": config.seed,
                  "file": run.split_npz.name, "n_train": len(data.train_set),
                  "n_val": len(data.val_set)},
        "sources": [str(p.resolve()) for p in paths],
        "preprocessed": [str(p.relative_to(run.path)) for p in pre_paths],
        "seed": config.seed, "versions": _versions(), "created": _now(),
    }


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
    run = RunDir(run_dir)
    config = config or TrainConfig()
    _refuse_inputs_in_run(run, bundles)
    if run.path.exists() and not run.path.is_dir():
        raise InputError("output exists and is not a folder", path=run.path,
                         hint="choose another run_dir")
    from ..atomic import check_path_encoding

    check_path_encoding(run.path, "run_dir")
    if _is_child_process():  # DDP: the launching process holds the lock and did the checks
        return _train(bundles, run, config, resume, quiet)
    created = _make_folder(run.path)
    started = False
    try:
        with run.lock():
            try:
                config = _prepare_run_dir(run, resume, config)
                started = True
                return _train(bundles, run, config, resume and run.has_checkpoint(), quiet)
            except BaseException:
                # Keep an interrupted run that can resume; anything else is
                # removed, so a failed train leaves no half-made run behind.
                if started and not run.has_checkpoint():
                    run.remove_products()
                raise
    except BaseException:
        if created and not run.holds_run():
            import shutil

            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _make_folder(path: Path) -> bool:
    """Create ``path`` (and parents); True when this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        return False
    return True


def _refuse_inputs_in_run(run: RunDir, bundles: Sequence[str | os.PathLike]) -> None:
    """No training input may be a file that the run writes (or the run folder itself)."""
    from ..atomic import refuse_overwrite

    for b in bundles:
        refuse_overwrite(run.path, b, what="run_dir", contents=False)
        for product in run.products():
            refuse_overwrite(product, b, what="run_dir")


def _train(bundles, run: RunDir, config: TrainConfig, resume: bool, quiet: bool) -> Path:
    """The work of :func:`train`, in a folder that is locked and checked."""
    import lightning

    from ..formats.head import write_head
    from ..models import ClosedFormModel, build_model
    from ..models.rings import RingFrontend
    from .data import RunData, check_same_detector

    paths, elements = _check_raw_bundles(bundles, config.targets)
    q_grid = _q_grid(paths)
    _set_threads(config)
    started = time.perf_counter()
    child = _is_child_process()
    pre_paths, settings = _preprocess_all(paths, run, config, reuse=resume or child,
                                          quiet=quiet)
    detector = check_same_detector(pre_paths)
    fused = fused_rings(config, settings)
    if scan_normalised(config.hparams) and not fused:
        raise InputError(f'model_params.normalise = "scan" needs the fused ring statistics, '
                         f'which model {config.model!r} with centring {settings.centring!r} '
                         f'does not train on',
                         hint='use model "radial" with preprocess centring = "binned" (the '
                              'defaults), or another normalise')
    data = RunData(pre_paths, elements, config, load_patterns=not fused)
    data.setup("fit")
    lightning.seed_everything(config.seed, workers=True, verbose=False)
    net = build_model(config.model, detector, data.n_outputs, config.hparams)
    closed_form = isinstance(net, ClosedFormModel)
    if fused:
        use_cached_rings(net, data, run, paths, settings)
    if net.output_layer is not None:
        # Start at the mean target: with a ReLU output (HAADF) a start below
        # zero gives no gradient, and it saves the first epochs for the offset.
        net.output_layer.bias.data.copy_(data.train_targets.mean(dim=0))
    state = _run_state(config, net, data, settings, paths, pre_paths, run)
    state["q_grid"] = q_grid
    if not child:
        run.write_split(data.masks, [p.name for p in paths])
        config.to_toml(run.config_toml)
        if not resume:
            run.write_info(state)
    if closed_form:
        training, is_zero = _fit_closed_form(net, data, config), True
    else:
        from .module import fit_lightning

        training, net, is_zero = fit_lightning(net, data, run, config, resume, quiet)
    if not is_zero:
        return run.path
    _store_ood(run, pre_paths, data.masks, settings, config.seed)
    training["seconds"] = round(time.perf_counter() - started, 2)
    run.save_weights(net.state_dict())
    if isinstance(net, RingFrontend):  # CPU prediction then needs no torch
        write_head(run.head_npz, net.numpy_head(), run.weights, net.hparams,
                   state["preprocess"])
    state.update(status="complete", training=training, model_params=net.hparams,
                 finished=_now())
    run.write_info(state)
    if run.metrics_csv.is_file():
        from .curves import plot_training_curves

        plot_training_curves(run.metrics_csv, run.curves_png,
                             title=f"{config.model} on {', '.join(p.stem for p in paths)}",
                             loss=config.loss)
    return run.path


def _q_grid(paths: Sequence[Path]) -> dict[str, Any]:
    """The physical q grid the run learns on (``q_grid`` of run.json); one for all bundles."""
    from ..preprocess.transfer import grid_of_bundles

    return grid_of_bundles(paths).to_dict()


def _store_ood(run: RunDir, pre_paths: Sequence[Path], masks, settings, seed: int) -> None:
    """The training scans' front-end feature distribution, for the OOD score at prediction."""
    import numpy as np

    from ..analysis.ood import first_ring, fit_reference, ring_features

    first = first_ring(settings.beam_radius, settings.bin_factor)
    fit, held = [], []
    for path, val in zip(pre_paths, masks):
        flat_val = np.asarray(val, bool).ravel()
        with open_bundle(path) as scan:
            for start, patterns in scan.iter_patterns(batch=1024):
                feats = ring_features(patterns, first)
                is_val = flat_val[start:start + len(patterns)]
                fit.append(feats[~is_val])
                held.append(feats[is_val])
    run.write_ood(fit_reference(np.concatenate(fit), np.concatenate(held), seed,
                                first).to_arrays())


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

    Notes
    -----
    A run is reused, or resumed, only when the ``fingerprint`` in its
    ``run.json`` matches the one of these bundles (name, size, modification
    time, provenance) and this config (every setting but the runtime ones):
    a run made from other data or settings is stale. Such a run is a product
    of the workflow that asked for it (it recorded a fingerprint), so it is
    removed and trained again; a finished run *without* a fingerprint (made
    by ``train`` itself, or an older stem2eds) may be the user's own and is
    never removed: that is an InputError.

    Raises
    ------
    InputError
        When a finished run without a fingerprint is there, or finished
        weights no longer load (e.g. the model
        changed since): resuming would mix two models, so the user decides.
    """
    from ..predict.predictor import load_run

    config = config or TrainConfig()
    run = RunDir(run_dir)
    want = run_fingerprint(bundles, config)
    have = run.recorded_fingerprint() if run.run_json.is_file() else None
    if run.is_complete():
        try:
            load_run(run.path)
        except InputError as exc:
            raise InputError(f"finished run cannot be reused ({exc})", path=run.path,
                             hint="delete that folder (or use another output folder) "
                                  "to retrain it") from None
        if have is None:
            raise InputError("folder holds a finished run without a fingerprint of its "
                             "inputs and settings, so whether it can be reused is unknown",
                             path=run.path, hint="delete that folder (or use another "
                                                 "output folder) to retrain it")
        if have == want:
            return run.path
    stale = run.holds_run() and have != want
    if stale:
        with run.lock():  # not while another process writes it
            run.remove_products()
    run.path.parent.mkdir(parents=True, exist_ok=True)
    return Path(train(list(bundles), run.path, config, resume=run.has_checkpoint(),
                      quiet=quiet))
