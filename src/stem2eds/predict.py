"""Prediction from a run directory: EDS atomic-fraction maps and HAADF for any raw scan.

Patterns are streamed from the bundle in batches through
``stem2eds.preprocess.iter_preprocessed`` with the run's stored settings
(so prediction preprocesses exactly as training did) and through the model
under ``torch.inference_mode()``; only the (E, Rx', Ry') output maps are held
in memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch

from .bundle import ScanBundle, open_bundle
from .errors import InputError, atomic_output
from .train import RUN_FORMAT, RUN_FORMAT_VERSION, _read_state, apply_output_activation


@dataclass
class Prediction:
    """Predicted maps of one scan.

    Attributes
    ----------
    eds : ndarray, shape (E, Rx', Ry'), float32
        Atomic fractions in [0, 1] (network outputs clipped to that range).
    haadf : ndarray, shape (Rx', Ry'), float32, or None
        HAADF in the training data's detector units (None if not a target).
    elements : list of str
        Element of each ``eds`` map.
    scan_shape : (Rx', Ry')
        Scan shape after the run's crop.
    """

    eds: np.ndarray
    haadf: np.ndarray | None
    elements: list[str]
    scan_shape: tuple[int, int]


class Predictor:
    """A trained model with its preprocessing settings, ready to predict scans.

    Use :func:`load_run`.

    Attributes
    ----------
    run_dir : Path
    info : dict
        Contents of ``run.json``.
    model : torch.nn.Module
        The network in eval mode, on ``device``.
    settings : PreprocessSettings
        Resolved preprocessing of the training data.
    """

    def __init__(self, run_dir: Path, info: dict[str, Any], model: torch.nn.Module,
                 settings, device: torch.device):
        self.run_dir = run_dir
        self.info = info
        self.model = model
        self.settings = settings
        self.device = device

    @property
    def elements(self) -> list[str]:
        return list(self.info["elements"])

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.info["targets"])

    @property
    def model_name(self) -> str:
        return str(self.info["model"])

    @property
    def haadf_scale(self) -> float | None:
        return self.info.get("target_scales", {}).get("haadf")

    def predict_patterns(self, patterns: np.ndarray) -> np.ndarray:
        """Outputs for preprocessed patterns.

        Parameters
        ----------
        patterns : ndarray, shape (n, Qb, Qb), float32
            Preprocessed patterns (as in a preprocessed bundle).

        Returns
        -------
        ndarray, shape (n, E [+ 1]), float32
            EDS atomic fractions clipped to [0, 1], then HAADF in detector units.
        """
        n_eds = len(self.elements)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(patterns, dtype=np.float32))
            out = apply_output_activation(self.model(x.to(self.device)), n_eds).cpu().numpy()
        out[:, :n_eds] = np.clip(out[:, :n_eds], 0.0, 1.0)
        if out.shape[1] > n_eds:
            out[:, n_eds] *= self.haadf_scale
        return out

    def predict_scan(self, bundle: str | os.PathLike | ScanBundle,
                     batch: int = 1024) -> Prediction:
        """Predict every probe position of a scan.

        Parameters
        ----------
        bundle : path-like or ScanBundle
            A raw bundle (preprocessed on the fly with the run's settings) or
            a bundle preprocessed with those same settings.
        batch : int
            Patterns per batch (memory use is about ``batch`` patterns).

        Returns
        -------
        Prediction
        """
        if isinstance(bundle, ScanBundle):
            return self._predict_open(bundle, batch)
        with open_bundle(bundle) as scan:
            return self._predict_open(scan, batch)

    def _predict_open(self, scan: ScanBundle, batch: int) -> Prediction:
        from .preprocess import iter_preprocessed

        if batch < 1:
            raise InputError(f"batch must be positive, got {batch}")
        if scan.kind == "preprocessed":
            self._check_preprocessed(scan)
            stream = scan.iter_patterns(batch=batch)
            rx, ry = scan.scan_shape
        else:
            stream = iter_preprocessed(scan, self.settings, batch=batch)
            rx, ry = _cropped_shape(scan.scan_shape, self.settings.crop, scan.path)
        n_eds = len(self.elements)
        out = np.empty((rx * ry, n_eds + (1 if "haadf" in self.targets else 0)),
                       dtype=np.float32)
        for start, patterns in stream:
            if patterns.shape[1:] != tuple(self.info["input_shape"]):
                raise InputError(f"preprocessed patterns are {patterns.shape[1]}x"
                                 f"{patterns.shape[2]} but the model takes "
                                 f"{self.info['input_shape'][0]}x{self.info['input_shape'][1]}",
                                 path=scan.path, hint="use scans from the same detector setup")
            out[start:start + len(patterns)] = self.predict_patterns(patterns)
        eds = out[:, :n_eds].T.reshape(n_eds, rx, ry).copy()
        haadf = out[:, n_eds].reshape(rx, ry).copy() if out.shape[1] > n_eds else None
        return Prediction(eds, haadf, self.elements, (rx, ry))

    def _check_preprocessed(self, scan: ScanBundle) -> None:
        stored = scan.json_attr("preprocess", {}) or {}
        mine = self.settings.to_dict()
        keys = ("bin_factor", "scaling", "scale", "crop", "origin_fit")
        diff = [k for k in keys if k in stored and stored[k] != mine.get(k)]
        if diff:
            raise InputError("bundle was preprocessed with other settings than the run "
                             f"({', '.join(diff)} differ)", path=scan.path,
                             hint="pass the raw bundle; predict preprocesses it itself")


def _cropped_shape(scan_shape: tuple[int, int], crop: Sequence[int] | None,
                   path) -> tuple[int, int]:
    if crop is None:
        return tuple(scan_shape)  # type: ignore[return-value]
    r0, r1, c0, c1 = (int(v) for v in crop)
    if not (0 <= r0 < r1 <= scan_shape[0] and 0 <= c0 < c1 <= scan_shape[1]):
        raise InputError(f"the run's crop {r0}:{r1},{c0}:{c1} does not fit the "
                         f"{scan_shape[0]}x{scan_shape[1]} scan", path=path,
                         hint="predict scans of the training scans' size")
    return r1 - r0, c1 - c0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no CUDA GPU is available", hint="use --device cpu")
    return torch.device(name)


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> Predictor:
    """Load a finished run directory for prediction.

    Parameters
    ----------
    run_dir : path-like
        Folder written by :func:`stem2eds.train.train`.
    device : {"cpu", "cuda", "auto"}

    Returns
    -------
    Predictor

    Raises
    ------
    InputError
        If the folder is not a finished run, is from a newer run format, or
        its weights do not match its description.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models import build_model
    from .preprocess import PreprocessSettings

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("no such run folder", path=run_dir)
    info = _read_state(run_dir)
    if info.get("format") != RUN_FORMAT or int(info.get("format_version", 0)) > RUN_FORMAT_VERSION:
        raise InputError(f"run format version {info.get('format_version')} is not supported "
                         f"(this stem2eds reads up to {RUN_FORMAT_VERSION})", path=run_dir,
                         hint="upgrade stem2eds or retrain")
    if info.get("status") != "complete":
        raise InputError("training of this run did not finish", path=run_dir,
                         hint="continue it with 'stem2eds train ... --resume'")
    try:
        settings = PreprocessSettings.from_dict(info["preprocess"])
        model = build_model(info["model"], tuple(info["input_shape"]), int(info["n_outputs"]),
                            info.get("model_params") or {})
        if len(info["elements"]) + ("haadf" in info["targets"]) != int(info["n_outputs"]):
            raise InputError("run.json: outputs do not match elements and targets",
                             path=run_dir)
    except KeyError as exc:
        raise InputError(f"run.json lacks {exc}", path=run_dir) from None
    weights = run_dir / "weights.safetensors"
    if not weights.is_file():
        raise InputError("no weights.safetensors in the run folder", path=run_dir)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise InputError(f"weights do not fit the model described in run.json "
                         f"({str(exc).splitlines()[0]})", path=weights) from None
    dev = _device(device)
    model.to(dev).eval()
    return Predictor(run_dir, info, model, settings, dev)


def write_prediction(prediction: Prediction, out: str | os.PathLike, *,
                     attrs: dict[str, Any] | None = None) -> Path:
    """Write a prediction file (HDF5, atomically).

    Layout: ``eds/<El>`` (Rx', Ry') float32 atomic fractions, ``haadf``
    (Rx', Ry') float32 when predicted; root attributes ``elements`` and any
    given ``attrs`` (dicts stored as JSON).
    """
    out = Path(out)
    with atomic_output(out) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["elements"] = np.array(prediction.elements, dtype=h5py.string_dtype())
            for key, value in (attrs or {}).items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
            grp = f.create_group("eds")
            grp.attrs["unit"] = "atomic fraction"
            for el, values in zip(prediction.elements, prediction.eds):
                grp.create_dataset(el, data=values.astype(np.float32))
            if prediction.haadf is not None:
                f.create_dataset("haadf", data=prediction.haadf.astype(np.float32))
    return out


def predict_bundle(run_dir: str | os.PathLike, bundle: str | os.PathLike,
                   out: str | os.PathLike, *, batch: int = 1024, device: str = "cpu") -> Path:
    """Predict a scan with a trained run and write the prediction file.

    Parameters
    ----------
    run_dir : path-like
        Finished training run.
    bundle : path-like
        Raw scan bundle to predict.
    out : path-like
        Output HDF5 (see :func:`write_prediction`); root attributes
        ``scan_name``, ``model``, ``run_dir``, ``stem2eds_version``,
        ``scan_shape``, ``targets``.
    batch : int
        Patterns per batch.
    device : {"cpu", "cuda", "auto"}

    Returns
    -------
    Path
        ``out``.
    """
    from . import __version__

    predictor = load_run(run_dir, device=device)
    with open_bundle(bundle) as scan:
        prediction = predictor.predict_scan(scan, batch=batch)
        name = scan.name
    return write_prediction(prediction, out, attrs={
        "scan_name": name, "model": predictor.model_name,
        "run_dir": str(Path(run_dir).resolve()), "stem2eds_version": __version__,
        "scan_shape": list(prediction.scan_shape), "targets": list(predictor.targets),
        "source": str(Path(bundle).resolve())})
