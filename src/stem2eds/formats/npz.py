"""The small ``.npz`` files of a run folder (``head.npz``, ``ood.npz``), read as untrusted input.

``np.load`` trusts an archive's member headers: a damaged copy fails with
``BadZipFile`` or ``EOFError``, and a header that declares a huge shape
allocates it before reading a byte. :func:`read_npz` checks every member's
header (dtype without Python objects, size within a budget) before it reads
the member, and turns every way the file can be broken into one
:class:`~stem2eds.errors.InputError` naming the file. Written by hand because
numpy has no checked loader; it uses numpy's own header and array readers.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import InputError

#: Bytes all arrays of one run-folder ``.npz`` may take together (a head or an
#: OOD reference holds kilobytes to a few megabytes).
MAX_NPZ_BYTES = 64 * 2**20


def read_npz(path: str | os.PathLike, what: str, keys: Iterable[str] | None = None,
             hint: str | None = None, max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, each member's header checked before it is read.

    Parameters
    ----------
    path : path-like
    what : str
        The file's name in messages (e.g. ``"head.npz"``).
    keys : iterable of str, optional
        Read only these members (all must be present); None: every member.
    hint : str, optional
        How to fix a damaged file.
    max_bytes : int
        Largest total size of the arrays read.

    Returns
    -------
    dict of str -> ndarray

    Raises
    ------
    InputError
        If the file is not a readable ``.npz``, lacks one of ``keys``, holds
        Python objects or declares more than ``max_bytes`` of arrays.
    """
    p = Path(path)

    def fail(reason: str) -> InputError:
        return InputError(f"{what} cannot be read ({reason})", path=p, hint=hint)

    try:
        with zipfile.ZipFile(p) as archive:
            members = {n[:-4]: n for n in archive.namelist() if n.endswith(".npy")}
            wanted = list(members) if keys is None else list(keys)
            missing = [k for k in wanted if k not in members]
            if missing:
                raise fail(f"no {', '.join(missing)}")
            out, total = {}, 0
            for key in wanted:
                with archive.open(members[key]) as fh:
                    shape, dtype = _header(fh)
                    if dtype.hasobject:
                        raise fail(f"{key} holds Python objects, which are never loaded")
                    total += math.prod(shape) * dtype.itemsize
                    if total > max_bytes:
                        raise fail(f"its arrays declare more than {max_bytes // 2**20} MiB")
                with archive.open(members[key]) as fh:
                    out[key] = np.lib.format.read_array(fh, allow_pickle=False)
            return out
    except InputError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            KeyError, NotImplementedError) as exc:
        text = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise fail(text) from None


def _header(fh) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an ``.npy`` stream, from numpy's header readers (format 1.0 or 2.0)."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format {version}")
    if any(int(s) < 0 for s in shape):
        raise ValueError(f"negative shape {shape}")
    return tuple(int(s) for s in shape), np.dtype(dtype)
