"""What a :class:`~stem2eds.predict.predictor.Predictor` runs: the run's model, torch or numpy.

:class:`Head` is the interface: preprocessed patterns, or raw blocks through
the fused ring statistics, in; linear model outputs (before the output
activations) out, as float32 numpy arrays. Two implementations:

* :class:`TorchHead`: the run's torch model on its device (CPU or CUDA,
  autocast for the trainable layers on CUDA); every model, every path.
* :class:`NumpyHead`: for ring-feature models (``radial``, ``ridge``) on
  the CPU, the head stored in the run folder (``head.npz``,
  :mod:`stem2eds.formats.head`) evaluated in numpy after the numba ring
  statistics, so ``stem2eds predict`` never imports torch (seconds of
  start-up). Preprocessed patterns (the non-fused path) need the torch front
  end: it builds a :class:`TorchHead` on first use and hands them to it.

:func:`load_head` picks one; runs without ``head.npz`` (made before it
existed), other models and CUDA get the :class:`TorchHead`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from ..errors import InputError
from ..formats.rundir import RunDir

if TYPE_CHECKING:  # torch is imported only by TorchHead
    import torch

    from ..features.rings import RingGeometry
    from ..features.stream import RawBlock
    from ..models.numpy_head import NumpyRingHead


class Head(Protocol):
    """The model part of a predictor (see the module docstring)."""

    @property
    def ring_statistics(self) -> tuple[str, ...] | None:
        """Ring statistics the model starts with (the fused path); None: it takes patterns."""

    @property
    def model(self) -> "torch.nn.Module":
        """The run's torch model in eval mode (imports torch; built on first use)."""

    @property
    def device(self) -> "torch.device":
        """Where the model runs (imports torch)."""

    @property
    def device_type(self) -> str:
        """``"cpu"`` or ``"cuda"``: where the model runs (without importing torch)."""

    @property
    def torch_head(self) -> "TorchHead":
        """The run's torch model as a :class:`TorchHead` (built on first use)."""

    def outputs(self, patterns: np.ndarray) -> np.ndarray:
        """(n, Qb, Qb) preprocessed float32 patterns -> (n, O) float32 linear outputs."""

    def stats_outputs(self, stats: np.ndarray) -> np.ndarray:
        """(n, S, R) ring statistics (:attr:`ring_statistics`) -> (n, O) float32 linear outputs."""

    def block_statistics(self, block: "RawBlock", geometry: "RingGeometry",
                         settings) -> np.ndarray:
        """(n, S, R) float32 ring statistics ``geometry.statistics`` of a raw block.

        Computed where the head runs: the numba kernel on the CPU, torch on CUDA.
        """

    def ring_outputs(self, block: "RawBlock", geometry: "RingGeometry", settings,
                     means: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """A raw block through the fused ring statistics and the model.

        Parameters
        ----------
        block : RawBlock
            n raw patterns and their origins.
        geometry : RingGeometry
            Its ring geometry; ``geometry.statistics`` starts with
            :attr:`ring_statistics` (and may add ``"mean"``).
        settings : PreprocessSettings
            The run's preprocessing.
        means : bool
            Also return the ring means (``"mean"`` must be in ``geometry.statistics``).

        Returns
        -------
        outputs : ndarray, shape (n, O), float32
            Linear outputs (activations not applied).
        means : ndarray, shape (n, R), float32, or None
        """


class TorchHead:
    """The run's torch model on ``device`` (:class:`Head`).

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode, on ``device``.
    device : torch.device
    mixed_precision : bool
        Autocast the trainable layers on CUDA (ignored on CPU).
    """

    def __init__(self, model: "torch.nn.Module", device: "torch.device",
                 mixed_precision: bool = True):
        self.model = model
        self.device = device
        self.mixed_precision = mixed_precision

    @property
    def device_type(self) -> str:
        return self.device.type

    @property
    def torch_head(self) -> "TorchHead":
        """Itself; a :class:`NumpyHead` builds its torch head on first use."""
        return self

    @property
    def ring_statistics(self) -> tuple[str, ...] | None:
        from ..models.rings import RingFrontend

        return tuple(self.model.ring_statistics) if isinstance(self.model, RingFrontend) \
            else None

    def outputs(self, patterns: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(patterns, dtype=np.float32))
            if self.device.type == "cuda":
                # pinned staging lets the copy run asynchronously to the host
                x = x.pin_memory().to(self.device, non_blocking=True)
            return self._forward(x).float().cpu().numpy()

    def _forward(self, x: "torch.Tensor") -> "torch.Tensor":
        """The model on a device batch; autocast for the trainable layers on CUDA."""
        import torch

        if self.device.type != "cuda" or not self.mixed_precision:
            return self.model(x)
        from ..models import FixedFrontend

        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if isinstance(self.model, FixedFrontend):
            feats = self.model.frontend(x)  # float32: differences of large sums
            with torch.autocast("cuda", dtype=dtype):
                return self.model.forward_features(feats)
        with torch.autocast("cuda", dtype=dtype):
            return self.model(x)

    def _block_statistics(self, block, geometry, settings) -> "torch.Tensor":
        """(n, S, R) ring statistics of a raw block on the head's device."""
        import torch

        if self.device.type == "cuda":
            from ..features.torch_rings import ring_statistics_torch

            raw = torch.from_numpy(block.patterns).pin_memory()
            return ring_statistics_torch(raw.to(self.device, non_blocking=True),
                                         torch.from_numpy(block.origins), geometry)
        return torch.from_numpy(block.ring_features(settings, geometry.statistics)
                                ).reshape(len(block), -1, geometry.n_rings)

    def block_statistics(self, block, geometry, settings):
        import torch

        with torch.inference_mode():
            return self._block_statistics(block, geometry, settings).float().cpu().numpy()

    def ring_outputs(self, block, geometry, settings, means=False):
        import torch

        used = len(self.ring_statistics or ())
        with torch.inference_mode():
            stats = self._block_statistics(block, geometry, settings)
            mean = stats[:, geometry.statistics.index("mean")].float().cpu().numpy() \
                if means else None
            return self._forward_rings(stats[:, :used]).float().cpu().numpy(), mean

    def stats_outputs(self, stats: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(stats, dtype=np.float32))
            return self._forward_rings(x.to(self.device)).float().cpu().numpy()

    def _forward_rings(self, stats: "torch.Tensor") -> "torch.Tensor":
        """The model on ring statistics; autocast for the trainable layers on CUDA."""
        import torch

        if self.device.type != "cuda" or not self.mixed_precision:
            return self.model.forward_rings(stats)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast("cuda", dtype=dtype):  # log/sums of the front end stay float32
            return self.model.forward_rings(stats)


class NumpyHead:
    """A ring-feature head in numpy on the CPU (:class:`Head`; no torch).

    Parameters
    ----------
    head : NumpyRingHead
        From the run's ``head.npz``.
    torch_head : callable
        Builds the run's :class:`TorchHead` (CPU), for preprocessed patterns
        and :attr:`model`; called at most once.
    """

    def __init__(self, head: "NumpyRingHead", torch_head: Callable[[], TorchHead]):
        self.head = head
        self._build = torch_head
        self._torch: TorchHead | None = None

    @property
    def ring_statistics(self) -> tuple[str, ...]:
        return self.head.statistics

    @property
    def torch_head(self) -> TorchHead:
        """The run's :class:`TorchHead`, built (torch imported) on first use."""
        if self._torch is None:
            self._torch = self._build()
        return self._torch

    @property
    def model(self) -> "torch.nn.Module":
        return self.torch_head.model

    @property
    def device(self) -> "torch.device":
        return self.torch_head.device

    #: The numpy head and the numba ring statistics run on the CPU.
    device_type = "cpu"

    def outputs(self, patterns: np.ndarray) -> np.ndarray:
        return self.torch_head.outputs(patterns)

    def stats_outputs(self, stats: np.ndarray) -> np.ndarray:
        return self.head.forward_rings(stats)

    def block_statistics(self, block, geometry, settings):
        return block.ring_features(settings, geometry.statistics).reshape(
            len(block), -1, geometry.n_rings)

    def ring_outputs(self, block, geometry, settings, means=False):
        stats = self.block_statistics(block, geometry, settings)
        mean = stats[:, geometry.statistics.index("mean")] if means else None
        return self.head.forward_rings(stats[:, :len(self.head.statistics)]), mean


def load_head(run_dir: Path, info: dict[str, Any], settings, device: str = "cpu") -> Head:
    """The run's model for prediction: :class:`NumpyHead` when it can be, else :class:`TorchHead`.

    The numpy head is used on ``device="cpu"`` for runs that centre after
    binning (the fused path) and have a ``head.npz`` exported from their
    current weights; anything else loads the weights with torch.

    A ``head.npz`` exported from other weights is ignored like a missing
    one: the weights, loaded with torch, decide. One exported from these
    weights with other ``model_params`` than ``run.json``'s is refused.

    Raises
    ------
    InputError
        If the weights do not match ``run.json`` or ``head.npz`` cannot be read.
    """
    if len(info["elements"]) + ("haadf" in info["targets"]) != int(info["n_outputs"]):
        raise InputError("run.json: outputs do not match elements and targets", path=run_dir)

    def torch_head() -> TorchHead:
        return _torch_head(run_dir, info, device)

    from ..formats.head import read_head

    run = RunDir(run_dir)
    # read on every device: a head.npz exported from these weights also says which
    # model_params they were trained with (read_head refuses an edited run.json)
    head = read_head(run.head_npz, run.weights, info.get("model_params") or {},
                     info.get("preprocess"))
    if head is None or device != "cpu" or settings.centring != "binned":
        return torch_head()
    qx, qy = info["input_shape"]
    rings = int(math.floor(math.hypot((qx - 1) / 2, (qy - 1) / 2))) + 1
    if head.model != info["model"] or head.n_outputs != int(info["n_outputs"]) \
            or head.n_rings != rings:
        # run.json was changed after training: the registry and the weights
        # (torch) decide whether the run still loads, and say why not
        return torch_head()
    return NumpyHead(head, torch_head)


def _torch_head(run_dir: Path, info: dict[str, Any], device: str) -> TorchHead:
    """Build the run's torch model, load its weights, put it on ``device`` in eval mode."""
    from ..models import build_model
    from .scanning import _device

    run = RunDir(run_dir)
    try:
        model = build_model(info["model"], tuple(info["input_shape"]), int(info["n_outputs"]),
                            info.get("model_params") or {})
    except InputError as exc:
        raise InputError(exc.message, path=run.run_json, hint=exc.hint) from None
    state = run.load_weights()
    _check_weights(model.state_dict(), state, run.weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"weights do not fit the model described in run.json "
                         f"({str(exc).splitlines()[0]})", path=run.weights) from None
    dev = _device(device)
    model.to(dev).eval()
    return TorchHead(model, dev)


def _check_weights(expected: dict, state: dict, path: Path) -> None:
    """Refuse weights that would load but cannot be right: NaN, infinity, or ints for floats."""
    import torch

    for name, tensor in state.items():
        want = expected.get(name)
        if want is not None and want.is_floating_point() and not tensor.is_floating_point():
            raise InputError(f"weights: {name} is {tensor.dtype}, not floating point", path=path,
                             hint="retrain, or copy the run folder again")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"weights: {name} holds NaN or infinite values", path=path,
                             hint="retrain (a diverged training), or copy the run folder again")


def finished_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """``run.json`` of a finished run and its preprocessing settings, without torch.

    For callers that stream or check a run's scans before (or without)
    loading its model: the LiberTEM UDFs, ``stem2eds predict`` (which
    starts reading before the model is built), benchmarks.

    Parameters
    ----------
    run_dir : path-like
        A run folder written by :func:`stem2eds.train.fit.train`.

    Returns
    -------
    info : dict
        ``run.json``.
    settings : PreprocessSettings
        The run's resolved preprocessing settings.

    Raises
    ------
    InputError
        If the folder does not exist or its training did not finish.
    """
    from ..preprocess.pipeline import PreprocessSettings

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("no such run folder", path=run_dir)
    info = RunDir(run_dir).info()
    if info.get("status") != "complete":
        raise InputError("training of this run did not finish", path=run_dir,
                         hint="finish it: train again with resume=True")
    return info, PreprocessSettings.from_dict(info["preprocess"])
