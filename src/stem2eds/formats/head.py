"""``head.npz``: a run's ring-feature head as plain arrays, for prediction without torch.

Written by training beside ``weights.safetensors`` for models with ring
statistics as their front end (``radial``, ``ridge``); read by CPU
prediction (:mod:`stem2eds.predict.heads`). Contents (``np.savez``, loaded
with ``allow_pickle=False``, so loading cannot run code)::

    recipe         0-d unicode array: JSON of the layer recipe
                   (:meth:`stem2eds.models.numpy_head.NumpyRingHead.to_arrays`)
                   plus ``weights_sha256``, the SHA-256 of the weights file
                   it was exported with, and ``model_params``, the model's
                   hyperparameters as written to ``run.json``
    feature_mean, feature_scale, linear_weight, linear_bias,
    target_mean, target_scale, correction_<i>_weight, correction_<i>_bias
                   float32 arrays

The weights file and ``run.json`` stay the source of truth: a sidecar whose
``weights_sha256`` does not match the weights next to it (a run trained
again, weights copied in by hand) is ignored, and prediction builds the torch
model from the weights instead (which validates both). Where the weights
match but ``run.json``'s ``model_params`` do not (edited after training),
the run is refused: the torch model built from the edited description would
load the same weights without complaint and predict nonsense. This module imports neither torch nor
safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..features.normalise import normalise_mode
from ..models.numpy_head import NumpyRingHead
from .npz import read_npz

#: ``format`` of the recipe JSON.
HEAD_FORMAT = "stem2eds-ring-head"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_head(path: str | os.PathLike, head: NumpyRingHead,
               weights: str | os.PathLike, model_params: dict[str, Any],
               preprocess: dict[str, Any] | None = None) -> None:
    """Write ``head`` to ``path`` (atomically), tied to the weights file it came from.

    Parameters
    ----------
    path : path-like
        ``head.npz`` of the run folder.
    head : NumpyRingHead
        The model's ``numpy_head()``, exported from the weights in ``weights``.
    weights : path-like
        The run's ``weights.safetensors``, already written.
    model_params : dict
        The hyperparameters ``run.json`` records for the model.
    preprocess : dict, optional
        The resolved preprocessing settings ``run.json`` records (the head's
        features were computed with them).
    """
    from ..atomic import atomic_output

    recipe, arrays = head.to_arrays()
    recipe = {"format": HEAD_FORMAT, **recipe, "weights_sha256": file_sha256(weights),
              "model_params": model_params}
    if preprocess is not None:
        recipe["preprocess"] = preprocess
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, recipe=np.array(json.dumps(recipe)), **arrays)


def _same_as_trained(trained: Any, stated: dict[str, Any], field: str,
                     weights: str | os.PathLike) -> None:
    """Refuse a ``run.json`` field edited after training (the weights would load all the same)."""
    stated = json.loads(json.dumps(stated))
    if trained == stated:
        return
    trained = trained if isinstance(trained, dict) else {}
    keys = sorted(k for k in set(trained) | set(stated) if trained.get(k) != stated.get(k))
    changes = ", ".join(str(k)[:40] for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
    if len(keys) == 1:
        changes += f": {str(trained.get(keys[0]))[:40]} -> {str(stated.get(keys[0]))[:40]}"
    raise InputError(f"run.json's {field} differ from those the weights were trained "
                     f"with, recorded in head.npz ({changes})",
                     path=Path(weights).parent / "run.json",
                     hint=f"restore run.json's {field}; they are fixed by training")


def read_head(path: str | os.PathLike, weights: str | os.PathLike,
              model_params: dict[str, Any],
              preprocess: dict[str, Any] | None = None) -> NumpyRingHead | None:
    """The head stored in ``path``; None when there is none or it is not from these files.

    Parameters
    ----------
    path : path-like
        ``head.npz`` of a run folder.
    weights : path-like
        The run's ``weights.safetensors``.
    model_params : dict
        ``model_params`` of the run's ``run.json``.
    preprocess : dict, optional
        ``preprocess`` of the run's ``run.json``: compared with the settings
        recorded at training (heads written since they are recorded).

    Returns
    -------
    NumpyRingHead or None
        None for runs made without the file, and when the weights file is
        missing or not the one the head was exported from, or the
        hyperparameters differ from ``model_params`` (the caller then
        loads the weights with torch, which reports a damaged weights file).

    Raises
    ------
    InputError
        If the file exists but cannot be read or does not describe a head.
    """
    p = Path(path)
    if not p.is_file() or not Path(weights).is_file():
        return None
    hint = "delete it: prediction then loads the weights with torch"
    arrays = read_npz(p, "head.npz", hint=hint)
    try:
        recipe = json.loads(str(arrays.pop("recipe")))
    except (KeyError, ValueError, RecursionError) as exc:
        raise InputError(f"head.npz cannot be read (recipe: {exc})", path=p, hint=hint) from None
    if not isinstance(recipe, dict) or recipe.get("format") != HEAD_FORMAT:
        raise InputError("head.npz does not describe a ring-feature head", path=p, hint=hint)
    if recipe.get("weights_sha256") != file_sha256(weights):
        return None
    _same_as_trained(recipe.get("model_params"), model_params, "model_params", weights)
    if preprocess is not None and "preprocess" in recipe:
        _same_as_trained(recipe["preprocess"], preprocess, "preprocess", weights)
    try:
        head = NumpyRingHead.from_arrays(recipe, arrays)
        stated = (normalise_mode(model_params.get("normalise", head.normalise)),
                  tuple(model_params.get("statistics", head.statistics)))
    except (ValueError, TypeError, InputError) as exc:
        raise InputError(f"head.npz: {getattr(exc, 'message', exc)}", path=p, hint=hint) from None
    if stated != (head.normalise, head.statistics):
        raise InputError(f"head.npz's layers ({head.normalise}, {list(head.statistics)}) disagree "
                         f"with its model_params", path=p, hint=hint)
    return head
