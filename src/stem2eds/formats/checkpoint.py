"""Loading files that may come from someone else, without running their code.

Run folders are shared between people and machines. A PyTorch checkpoint is
a pickle, and unpickling can call any function the file names, so every
checkpoint is read with ``torch.load(weights_only=True)`` (PyTorch's
restricted unpickler: tensors, containers and primitive types only) and
every model weight file is safetensors (a JSON header plus raw bytes, no
code at all). Anything the restricted unpickler refuses is an
:class:`~stem2eds.errors.InputError`, never a fallback to full pickle.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from ..errors import InputError


def load_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint",
                    hint: str | None = None) -> dict[str, Any]:
    """Read a PyTorch/Lightning checkpoint with the restricted unpickler.

    Parameters
    ----------
    path : path-like
        A ``.ckpt``/``.pt`` file written by ``torch.save`` (Lightning's
        ``ModelCheckpoint`` included).
    what : str
        How the file is named in the error message.
    hint : str, optional
        How to fix it; defaults to starting a new run.

    Returns
    -------
    dict
        The checkpoint (``state_dict``, ``epoch``, ... for Lightning), on CPU.

    Raises
    ------
    InputError
        If the file is missing, damaged, not a checkpoint, or holds anything
        besides tensors and plain data (such as objects whose unpickling
        would run code). The refused content is never executed.
    """
    import torch

    p = Path(path)
    hint = hint or "start a new run in another folder; never load checkpoints you do not trust"
    if not p.is_file():
        raise InputError(f"no {what} file", path=p, hint=hint)
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols on stderr; the outcome
            # (load or InputError) says all the user needs.
            warnings.simplefilter("ignore")
            data = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is pages long and suggests weights_only=False, which
        # is exactly what must not be done with a file of unknown origin.
        raise InputError(f"{what} holds objects other than tensors and plain data, "
                         f"refused without running them ({_unsafe_detail(str(exc))})",
                         path=p, hint=hint) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            UnicodeDecodeError, KeyError, AttributeError, IndexError, TypeError) as exc:
        raise InputError(f"{what} is damaged or not a PyTorch checkpoint "
                         f"({type(exc).__name__}: {_first_line(exc)})", path=p,
                         hint=hint) from None
    if not isinstance(data, dict):
        raise InputError(f"{what} holds a {type(data).__name__}, not a checkpoint dictionary",
                         path=p, hint=hint)
    return data


def load_safetensors(path: str | os.PathLike, *, hint: str | None = None) -> dict[str, Any]:
    """Read a safetensors weight file into CPU tensors.

    Parameters
    ----------
    path : path-like
    hint : str, optional
        How to fix it (default: retrain).

    Returns
    -------
    dict of str -> torch.Tensor

    Raises
    ------
    InputError
        If the file is missing, truncated or not safetensors (e.g. a pickle
        renamed to ``.safetensors``; it is never unpickled).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    hint = hint or "retrain, or copy the run folder again"
    if not p.is_file():
        raise InputError("no such weights file", path=p, hint=hint)
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:
        raise InputError(f"not a valid safetensors weight file ({_first_line(exc)})",
                         path=p, hint=hint) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _unsafe_detail(message: str) -> str:
    # Keep what torch found ("global builtins.exec", "operand 149") and drop
    # its advice, which is to load the file with weights_only=False.
    found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+|\w+ \S+)", message)
    return f"unsupported {found.group(1).replace('global: GLOBAL', 'global')}" if found \
        else "unsupported content"
