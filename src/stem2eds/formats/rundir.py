"""The run folder: what a training run writes and what everything else reads from it.

Layout (written by :func:`stem2eds.train.fit.train`)::

    RUN_DIR/
      run.json                 model, hyperparameters, elements, targets, scales,
                               resolved preprocessing, split, seeds, versions, timings
      config.toml              the TrainConfig used
      weights.safetensors      model weights (cannot run code when loaded)
      split.npz                validation mask (Rx', Ry') of every training bundle
      checkpoints/             last.ckpt, best.ckpt (Lightning)
      logs/metrics.csv         per-epoch train_loss / val_loss (CSVLogger)
      logs/tensorboard/        TensorBoard event files
      figures/                 training_curves.png
      preprocessed/            the preprocessed training bundles

:class:`RunDir` names these paths once and reads them; nothing else in the
package builds a path inside a run folder by hand. This module imports
neither torch nor Lightning (``stem2eds predict`` reads ``run.json`` and starts
preprocessing while torch loads); torch is imported only by
:func:`apply_output_activation`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

RUN_FORMAT = "stem2eds-run"
RUN_FORMAT_VERSION = 1


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Contents of ``run_dir/run.json``; InputError when missing or not a run description."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise InputError("no run.json: not a stem2eds run folder", path=run_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"run.json is not valid JSON ({exc})", path=run_dir) from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise InputError("run.json is not a stem2eds run description", path=run_dir)
    return data


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
