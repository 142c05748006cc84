"""JSON files that come from users (``run.json``, ``metrics.json``, settings), read as untrusted input.

``json.loads`` fails in more ways than ``JSONDecodeError``: a file that is
not UTF-8, an integer of thousands of digits (``ValueError``) or brackets
nested a hundred thousand deep (``RecursionError``). :func:`read_json`
turns each into one :class:`~stem2eds.errors.InputError` naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError


def read_json(path: str | os.PathLike, what: str, shown: str | os.PathLike | None = None) -> Any:
    """The parsed contents of a JSON file.

    Parameters
    ----------
    path : path-like
    what : str
        How the message names the file's contents (e.g. ``"run.json"``).
    shown : path-like, optional
        The path named in the message (default ``path``).

    Raises
    ------
    InputError
        ``"{what} is not valid JSON (...)"``, or the file cannot be read.
    """
    shown = path if shown is None else shown
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except RecursionError:
        raise InputError(f"{what} is not valid JSON (nested too deeply)", path=shown) from None
    except ValueError as exc:  # not JSON, not UTF-8, an integer of thousands of digits
        raise InputError(f"{what} is not valid JSON ({str(exc).split(';')[0][:120]})",
                         path=shown) from None
    except OSError as exc:
        raise InputError(f"cannot read {what} ({exc.strerror or exc})", path=shown) from None
