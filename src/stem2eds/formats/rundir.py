"""The run folder: what a training run writes and what everything else reads from it.

Layout (written by :func:`stem2eds.train.fit.train`)::

    RUN_DIR/
      run.json                 model, hyperparameters, elements, targets, scales,
                               resolved preprocessing, split, seeds, versions, timings
      config.toml              the TrainConfig used
      weights.safetensors      model weights (cannot run code when loaded)
      head.npz                 ring-feature models: the head as plain arrays, for
                               prediction without torch (stem2eds.formats.head)
      split.npz                validation mask (Rx', Ry') of every training bundle
      checkpoints/             last.ckpt, best.ckpt (Lightning)
      logs/metrics.csv         per-epoch train_loss / val_loss (CSVLogger)
      logs/tensorboard/        TensorBoard event files
      figures/                 training_curves.png
      preprocessed/            the preprocessed training bundles
      features/                ring statistics cached for training (rings_<key>.npy)
      ood.npz                  the training scans' feature distribution (analysis.ood)

:class:`RunDir` names these paths once and reads them; nothing else in the
package builds a path inside a run folder by hand. This module imports
neither torch nor Lightning (``stem2eds predict`` reads ``run.json`` and starts
preprocessing while torch loads); torch is imported only by
:func:`apply_output_activation` and the weight methods of :class:`RunDir`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:  # torch is imported only where it is used
    import torch

RUN_FORMAT = "stem2eds-run"
RUN_FORMAT_VERSION = 1


#: Largest detector side (pixels) and number of outputs a run may describe.
MAX_INPUT_SIDE = 4096
MAX_OUTPUTS = 64


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Contents of ``run_dir/run.json``, checked by :func:`check_run_info`.

    Raises
    ------
    InputError
        When missing, not JSON, not a run description, or a field is invalid.
    """
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise InputError("no run.json: not a stem2eds run folder", path=run_dir)
    from .jsonfile import read_json

    data = read_json(path, "run.json", shown=run_dir)
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise InputError("run.json is not a stem2eds run description", path=run_dir)
    check_run_info(data, path)
    return data


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_run_info(data: dict[str, Any], path: str | os.PathLike) -> None:
    """The one validation of ``run.json`` fields (types and sane ranges).

    Checks ``format_version`` (not newer than this package reads), ``model`` (a name), ``model_params`` (a table; its values are
    checked by the model's ``Params`` when built), ``input_shape`` (two ints
    in 1..4096, the preprocess detector binned), ``n_outputs`` (1..64), ``elements``
    (distinct chemical symbols), ``targets`` (``eds`` [, ``haadf``]), ``target_scales``
    (positive numbers), ``preprocess`` (valid settings with a ``scale``:
    :func:`stem2eds.preprocess.settings.run_settings`), ``filter_predictions``
    (true, false or absent) and ``status``. The registered-model check is
    the registry's (:func:`stem2eds.models.get_model`, when the run is loaded).

    Raises
    ------
    InputError
        Naming the file and the field.
    """
    import math

    from ..elements import check_element
    from ..preprocess.settings import run_settings

    def bad(field: str, why: str):
        return InputError(f"run.json field {field!r} {why}, got {data.get(field)!r}"[:300],
                          path=path)

    version = data.get("format_version")
    if not _is_int(version, 1, 10**6):
        raise bad("format_version", "must be a positive integer")
    if version > RUN_FORMAT_VERSION:
        raise InputError(f"run format version {version} is not supported (this stem2eds "
                         f"reads up to {RUN_FORMAT_VERSION})", path=path,
                         hint="upgrade stem2eds or retrain")
    model = data.get("model")
    if not (isinstance(model, str) and model.replace("_", "").isalnum() and len(model) < 64):
        raise bad("model", "must be a model name")
    if not isinstance(data.get("model_params", {}), dict):
        raise bad("model_params", "must be a table")
    shape = data.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 2
            and all(_is_int(v, 1, MAX_INPUT_SIDE) for v in shape)):
        raise bad("input_shape", f"must be two integers in 1..{MAX_INPUT_SIDE}")
    if not _is_int(data.get("n_outputs"), 1, MAX_OUTPUTS):
        raise bad("n_outputs", f"must be an integer in 1..{MAX_OUTPUTS}")
    elements = data.get("elements")
    if not (isinstance(elements, list) and 1 <= len(elements) <= MAX_OUTPUTS
            and all(isinstance(e, str) for e in elements)):
        raise bad("elements", "must be a list of element symbols")
    for e in elements:
        if check_element(e, source=path) != e:
            raise bad("elements", "must hold element symbols as written by train")
    if len(set(elements)) != len(elements):
        raise bad("elements", "must not name an element twice")
    targets = data.get("targets")
    if not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)
            and len(set(targets)) == len(targets) and set(targets) in ({"eds"}, {"eds", "haadf"})):
        raise bad("targets", "must be ['eds'] or ['eds', 'haadf']")
    scales = data.get("target_scales", {})
    if not (isinstance(scales, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v > 0 for v in scales.values())):
        raise bad("target_scales", "must map targets to positive numbers")
    if "haadf" in targets and "haadf" not in scales:
        raise bad("target_scales", "must hold the haadf scale of a run with a haadf target")
    if not isinstance(data.get("preprocess"), dict):
        raise bad("preprocess", "must be a table of preprocessing settings")
    settings = run_settings(data, path)  # what preprocessing makes of a scan: the model's input
    if settings.detector_shape is not None:
        (qx, qy), f = settings.detector_shape, settings.bin_factor
        if shape != [qx // f, qy // f]:
            raise bad("input_shape", f"must be {[qx // f, qy // f]} (the {qx}x{qy} detector "
                                     f"of 'preprocess' binned by {f})")
    if not isinstance(data.get("filter_predictions", False), (bool, type(None))):
        raise bad("filter_predictions", "must be true or false")
    if data.get("status") not in ("training", "complete"):
        raise bad("status", "must be 'training' or 'complete'")
    fingerprint = data.get("fingerprint")
    if fingerprint is not None and not (isinstance(fingerprint, str) and len(fingerprint) == 64
                                        and all(c in "0123456789abcdef" for c in fingerprint)):
        raise bad("fingerprint", "must be a SHA-256 hex digest")
    seed = data.get("seed", 0)
    if not _is_int(seed, 0, 2**32 - 1):
        raise bad("seed", "must be an integer in 0..2**32-1")
    if "q_grid" in data and not _valid_q_grid(data["q_grid"]):
        raise bad("q_grid", "must hold detector_shape, q_pixel_size > 0, q_pixel_unit "
                            "(1/nm, mrad or px) and beam_energy_kev (a number or null)")


def _valid_q_grid(grid: Any) -> bool:
    """``q_grid`` of run.json (optional: runs made before it still load)."""
    import math

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return (isinstance(grid, dict) and isinstance(grid.get("detector_shape"), list)
            and len(grid["detector_shape"]) == 2
            and all(_is_int(v, 1, MAX_INPUT_SIDE) for v in grid["detector_shape"])
            and number(grid.get("q_pixel_size")) and grid["q_pixel_size"] > 0
            and grid.get("q_pixel_unit") in ("1/nm", "mrad", "px")
            and (grid.get("beam_energy_kev") is None or number(grid["beam_energy_kev"])))


@dataclass(frozen=True)
class RunDir:
    """A training run's folder and the files in it.

    Parameters
    ----------
    path : Path
        The folder (it need not exist yet).
    """

    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    # -- paths ----------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def config_toml(self) -> Path:
        return self.path / "config.toml"

    @property
    def weights(self) -> Path:
        return self.path / "weights.safetensors"

    @property
    def head_npz(self) -> Path:
        """``head.npz`` (:mod:`stem2eds.formats.head`): the weights of a ring-feature head as numpy."""
        return self.path / "head.npz"

    @property
    def split_npz(self) -> Path:
        return self.path / "split.npz"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def metrics_csv(self) -> Path:
        return self.logs / "metrics.csv"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def preprocessed(self) -> Path:
        return self.path / "preprocessed"

    # -- state ----------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """``run.json`` (InputError when missing or not a run description)."""
        return read_run_info(self.path)

    def holds_run(self) -> bool:
        """True when any trace of a training run is here (finished or not)."""
        return self.path.exists() and any(
            p.exists() for p in (self.run_json, self.checkpoints, self.weights))

    def has_checkpoint(self) -> bool:
        """True when an interrupted run can resume from ``checkpoints/last.ckpt``."""
        return self.last_checkpoint.is_file()

    def is_complete(self) -> bool:
        """True when ``run.json`` says the run finished and its weights are there.

        This checks the files, not that the weights load; prediction
        (:func:`stem2eds.predict.predictor.load_run`) does that.
        """
        if not (self.run_json.is_file() and self.weights.is_file()):
            return False
        try:
            return self.info().get("status") == "complete"
        except InputError:
            return False

    def write_info(self, state: dict[str, Any]) -> None:
        """Write ``run.json`` (atomically, never a half-written file)."""
        write_json(self.run_json, state)

    @property
    def preprocess_record(self) -> Path:
        """``preprocessed/settings.json``: sources and resolved settings of the preprocessed bundles."""
        return self.preprocessed / "settings.json"

    def preprocessed_bundle(self, index: int, source: str | os.PathLike) -> Path:
        """Path of the ``index``-th training bundle after preprocessing."""
        return self.preprocessed / f"{int(index):02d}_{Path(source).stem}.h5"

    @property
    def features(self) -> Path:
        """``features/``: front-end features cached for training (not a product: reused on restart)."""
        return self.path / "features"

    def frontend_cache(self, key: str) -> Path:
        """``features/rings_<key>.npy``: ring statistics of the training bundles.

        ``key`` fingerprints the bundles, preprocessing and ring geometry
        (:func:`stem2eds.features.cache.cache_key`); only its first 16 hex
        digits name the file.
        """
        return self.features / f"rings_{str(key)[:16]}.npy"

    @property
    def curves_png(self) -> Path:
        return self.figures / "training_curves.png"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def products(self) -> list[Path]:
        """Every file and folder a training run writes here (what a restart removes)."""
        return [self.run_json, self.config_toml, self.weights, self.head_npz, self.split_npz,
                self.checkpoints, self.logs, self.figures, self.preprocessed, self.ood_npz]

    def remove_products(self) -> None:
        """Delete what a training run wrote here (the folder and other files stay)."""
        for p in self.products():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def recorded_fingerprint(self) -> str | None:
        """``fingerprint`` of ``run.json`` (None when absent or unreadable)."""
        try:
            return self.info().get("fingerprint")
        except InputError:
            return None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's write lock (``.lock``); InputError when another process holds it.

        The lock is an OS lock (:func:`fcntl.flock`), so the kernel releases
        it when the holder dies, however it dies; a lock file left behind by
        a killed process never blocks. The folder must exist.
        """
        from ..atomic import folder_lock

        with folder_lock(self.path):
            yield

    # -- weights ------------------------------------------------------------------
    def save_weights(self, state_dict: dict[str, Any]) -> None:
        """Save a model's state (parameters and buffers) as safetensors, atomically."""
        from safetensors.torch import save_file

        from ..atomic import atomic_output

        state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        with atomic_output(self.weights) as tmp:
            save_file(state, str(tmp), metadata={"format": RUN_FORMAT})

    def load_weights(self) -> dict[str, Any]:
        """The weights as CPU tensors (safetensors only: no code can run on load)."""
        from .checkpoint import load_safetensors

        if not self.weights.is_file():
            raise InputError("no weights.safetensors in the run folder", path=self.path)
        return load_safetensors(self.weights)

    # -- split.npz --------------------------------------------------------------
    def write_split(self, masks: list[np.ndarray], bundle_names: list[str]) -> None:
        """Store the validation mask (Rx', Ry') bool of every training bundle, atomically."""
        from ..atomic import atomic_output

        with atomic_output(self.split_npz) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{f"val_mask_{i}": m for i, m in enumerate(masks)},
                         bundles=np.array(bundle_names))

    def validation_mask(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        """Validation positions (Rx', Ry') bool of the ``index``-th training scan.

        Parameters
        ----------
        index : int
            Position of the scan among the run's training bundles.
        shape : (int, int)
            Expected (cropped) scan shape; a mask of another shape is an InputError.
        """
        split = self.split_npz
        key = f"val_mask_{int(index)}"
        if not split.is_file():
            raise InputError("training run has no split.npz (which positions were "
                             "validation?)", path=self.path,
                             hint="delete the folder so the experiment retrains it")
        try:
            with np.load(split, allow_pickle=False) as z:
                if key not in z.files:
                    raise InputError(f"split.npz has no {key}", path=split)
                mask = np.asarray(z[key], bool)
        except (ValueError, OSError) as exc:
            raise InputError(f"split.npz cannot be read ({exc})", path=split) from None
        if mask.shape != tuple(shape):
            raise InputError(f"split.npz mask {key} is {mask.shape}, the cropped scan {shape}",
                             path=split, hint="delete the folder so the experiment retrains it")
        return mask

    # -- ood.npz: the training scans' feature distribution (stem2eds.analysis.ood) --
    @property
    def ood_npz(self) -> Path:
        return self.path / "ood.npz"

    def write_ood(self, arrays: dict[str, np.ndarray]) -> None:
        """Store the out-of-distribution reference (plain arrays), atomically."""
        from ..atomic import atomic_output

        with atomic_output(self.ood_npz) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    def read_ood(self) -> dict[str, np.ndarray] | None:
        """The arrays of ``ood.npz``; None for runs made without one."""
        from .npz import read_npz

        if not self.ood_npz.is_file():
            return None
        return read_npz(self.ood_npz, "ood.npz",
                        hint="delete it: prediction then skips the OOD score")

    # -- logs -------------------------------------------------------------------
    def training_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Training and validation loss per epoch from the CSVLogger's ``metrics.csv``.

        Returns
        -------
        dict
            ``{"train_loss": (epochs, values), "val_loss": (epochs, values)}``
            for the columns present; empty when there is no log.
        """
        files = sorted(self.path.glob("logs/**/metrics.csv"))
        if not files:
            return {}
        with open(files[-1], newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "epoch" not in rows[0]:
            return {}
        curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # the total (weighted) losses; per-target parts would crowd the plot
        for col in ("train_loss", "val_loss"):
            if col not in rows[0]:
                continue
            by_epoch: dict[float, float] = {}
            for r in rows:
                if r.get(col) not in (None, "") and r.get("epoch") not in (None, ""):
                    by_epoch[float(r["epoch"])] = float(r[col])
            if by_epoch:
                ep = sorted(by_epoch)
                curves[col] = (np.array(ep), np.array([by_epoch[e] for e in ep]))
        return curves


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file (numpy scalars and paths converted)."""
    from ..atomic import atomic_output

    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, default=_json_default) + "\n",
                             encoding="utf-8")


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def apply_output_activation(raw: torch.Tensor, n_eds: int) -> torch.Tensor:
    """Output activations: EDS columns linear, the HAADF column (if any) ReLU.

    Parameters
    ----------
    raw : Tensor, shape (n, E [+ 1])
    n_eds : int
        Number of EDS columns (E); a column after them is HAADF.
    """
    import torch

    if raw.shape[1] == n_eds:
        return raw
    return torch.cat([raw[:, :n_eds], torch.relu(raw[:, n_eds:])], dim=1)
