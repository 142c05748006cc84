"""The trainable head of a ring-statistics model, evaluated in numpy (no torch).

Models with the :class:`~stem2eds.models.rings.RingFrontend` capability
(``radial``, ``ridge``) map per-ring statistics to their outputs with a small,
fixed recipe: log, optional per-pattern centring over the rings,
standardisation, a linear map plus an optional ReLU MLP correction, and the
targets' units. Importing torch takes seconds, longer than the fused
prediction of a scan of thousands of patterns, so CPU prediction of such a
run evaluates that recipe here instead (:mod:`stem2eds.predict.heads`).

Torch stays the single definition of the maths: each model exports its own
recipe (``numpy_head()``, written into the run folder at training time as
``head.npz``, :mod:`stem2eds.formats.head`), and the tests check this module
against the torch model's ``forward_rings``. This module must not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ..features.normalise import normalise_mode

#: Version of the recipe this module evaluates (stored in ``head.npz``).
HEAD_VERSION = 1


@dataclass(frozen=True)
class NumpyRingHead:
    """Ring statistics (n, S, R) -> outputs (n, O), before the output activations.

    ``x = (log(stats + log_offset) [- its mean over the rings]).reshape(n, S*R)``,
    ``x = (x - feature_mean) / feature_scale``,
    ``z = x @ linear_weight.T + linear_bias [+ mlp(x)]``,
    ``out = z * target_scale + target_mean``, all in float32 as the torch models.

    Attributes
    ----------
    model : str
        Registered name of the model the recipe came from.
    statistics : tuple of str
        Ring statistics the head takes, in order (S of them).
    normalise : {"pattern", "scan", "none"}
        The run's ``model_params.normalise``: ``"pattern"`` subtracts each
        pattern's mean log statistic over the rings; ``"scan"`` takes
        statistics already divided by their scan's reference
        (:mod:`stem2eds.features.normalise`), as ``"none"`` takes them raw.
    log_offset : float
        Added before the log.
    feature_mean, feature_scale : ndarray, shape (S*R,), float32
    linear_weight : ndarray, shape (O, S*R), float32
    linear_bias : ndarray, shape (O,), float32
    correction : tuple of (weight, bias)
        Linear layers of the MLP correction (ReLU after each but the last);
        empty: no correction.
    target_mean, target_scale : ndarray, shape (O,), float32
    """

    model: str
    statistics: tuple[str, ...]
    normalise: str
    log_offset: float
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    linear_weight: np.ndarray
    linear_bias: np.ndarray
    target_mean: np.ndarray
    target_scale: np.ndarray
    correction: tuple[tuple[np.ndarray, np.ndarray], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalise", normalise_mode(self.normalise))
        n_out, n_feat = np.shape(self.linear_weight)
        want = {"feature_mean": (n_feat,), "feature_scale": (n_feat,),
                "linear_bias": (n_out,), "target_mean": (n_out,), "target_scale": (n_out,)}
        for name, shape in want.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"{name} is {np.shape(getattr(self, name))}, expected {shape}")
        width = n_feat
        for i, (w, b) in enumerate(self.correction):
            if np.ndim(w) != 2 or np.shape(w)[1] != width or np.shape(b) != np.shape(w)[:1]:
                raise ValueError(f"correction layer {i} does not fit its input ({width})")
            width = np.shape(w)[0]
        if self.correction and width != n_out:
            raise ValueError(f"the correction ends with {width} outputs, not {n_out}")
        if not self.statistics or n_feat % len(self.statistics):
            raise ValueError(f"{n_feat} features do not split into {self.statistics}")
        arrays = {name: getattr(self, name) for name in want}
        arrays["linear_weight"] = self.linear_weight
        arrays.update({f"correction_{i}": np.concatenate([np.ravel(w), np.ravel(b)])
                       for i, (w, b) in enumerate(self.correction)})
        bad = [name for name, a in arrays.items() if not np.all(np.isfinite(a))]
        if bad:
            raise ValueError(f"non-finite values in {', '.join(bad)}")
        if not (np.all(self.feature_scale > 0) and np.all(self.target_scale > 0)):
            raise ValueError("feature_scale and target_scale must be positive")
        if not (math.isfinite(self.log_offset) and self.log_offset > 0):
            raise ValueError(f"log_offset must be a positive number, got {self.log_offset}")

    @property
    def n_outputs(self) -> int:
        return int(np.shape(self.linear_weight)[0])

    @property
    def n_rings(self) -> int:
        return int(np.shape(self.linear_weight)[1]) // len(self.statistics)

    def forward_rings(self, stats: np.ndarray) -> np.ndarray:
        """Outputs of ring statistics, as the torch model's ``forward_rings``.

        Parameters
        ----------
        stats : ndarray, shape (n, S, R)
            Ring statistics (:attr:`statistics`, R rings).

        Returns
        -------
        ndarray, shape (n, O), float32
            Linear outputs in the targets' units (activations not applied).
        """
        f32 = np.float32
        stats = np.asarray(stats, dtype=f32)
        if stats.ndim != 3 or stats.shape[1:] != (len(self.statistics), self.n_rings):
            raise ValueError(f"ring statistics are {stats.shape}, the head takes "
                             f"(n, {len(self.statistics)}, {self.n_rings})")
        feats = np.log(stats + f32(self.log_offset))
        if self.normalise == "pattern":
            feats = feats - feats.mean(axis=2, keepdims=True, dtype=f32)
        x = (feats.reshape(len(feats), -1) - self.feature_mean) / self.feature_scale
        # The products are small ((n, F) by (F, hidden)): BLAS threads cost
        # more to wake than they save, and they spin on the cores the ring
        # kernel uses (far slower on a busy machine), so one thread.
        with _blas_threads().limit(limits=1, user_api="blas"):
            z = x @ self.linear_weight.T + self.linear_bias
            if self.correction:
                h = x
                for i, (w, b) in enumerate(self.correction):
                    h = h @ w.T + b
                    if i < len(self.correction) - 1:
                        h = np.maximum(h, f32(0.0))
                z = z + h
        return (z * self.target_scale + self.target_mean).astype(f32, copy=False)

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(recipe, arrays)``: plain JSON data and named float32 arrays (for ``head.npz``)."""
        recipe = {"version": HEAD_VERSION, "model": self.model,
                  "statistics": list(self.statistics), "normalise": self.normalise,
                  "log_offset": float(self.log_offset), "n_correction": len(self.correction)}
        arrays = {name: np.asarray(getattr(self, name), np.float32)
                  for name in ("feature_mean", "feature_scale", "linear_weight", "linear_bias",
                               "target_mean", "target_scale")}
        for i, (w, b) in enumerate(self.correction):
            arrays[f"correction_{i}_weight"] = np.asarray(w, np.float32)
            arrays[f"correction_{i}_bias"] = np.asarray(b, np.float32)
        return recipe, arrays

    @classmethod
    def from_arrays(cls, recipe: dict[str, Any], arrays: dict[str, np.ndarray]) -> NumpyRingHead:
        """Inverse of :meth:`to_arrays`; ValueError when they do not describe a head."""
        if recipe.get("version") != HEAD_VERSION:
            raise ValueError(f"head recipe version {recipe.get('version')!r} is not "
                             f"{HEAD_VERSION}")
        try:
            n = int(recipe["n_correction"])
            correction = tuple((arrays[f"correction_{i}_weight"], arrays[f"correction_{i}_bias"])
                               for i in range(n))
            return cls(model=str(recipe["model"]),
                       statistics=tuple(str(s) for s in recipe["statistics"]),
                       normalise=recipe["normalise"],
                       log_offset=float(recipe["log_offset"]),
                       correction=tuple((np.asarray(w, np.float32), np.asarray(b, np.float32))
                                        for w, b in correction),
                       **{k: np.asarray(arrays[k], np.float32)
                          for k in ("feature_mean", "feature_scale", "linear_weight",
                                    "linear_bias", "target_mean", "target_scale")})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"head recipe incomplete ({exc})") from None


@lru_cache(maxsize=1)
def _blas_threads():
    """threadpoolctl's view of the BLAS libraries loaded (built once: it scans them)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
