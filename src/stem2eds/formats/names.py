"""Names that come from inside files and become file names or HDF5 keys.

A scan bundle's ``scan_name`` attribute names the experiment's
``predictions/<scan>.h5``; a name like ``../../x`` or ``/etc/x`` would write
outside the run folder. :func:`check_file_name` is the one check: it is
applied where a bundle is read (:func:`stem2eds.formats.bundle.open_bundle`)
and again where a name becomes a path (:func:`name_in_folder`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InputError

#: Longest accepted name (file systems allow 255 bytes; suffixes are added).
MAX_NAME_LENGTH = 128

_ALLOWED = re.compile(r"[^\W]|[.\- ]")  # letters, digits, underscore, dot, hyphen, space


def is_file_name(name: object) -> bool:
    """True when ``name`` is safe as one path component (see :func:`check_file_name`)."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH
            and not name.startswith((".", "-")) and name == name.strip() and all(_ALLOWED.fullmatch(c) for c in name))


def check_file_name(name: object, what: str = "scan_name",
                    source: str | os.PathLike | None = None) -> str:
    """Return ``name`` when it is a safe file name, else raise InputError.

    Accepted: letters, digits, ``_``, ``.``, ``-`` and inner spaces (``scan
    0033`` from a microscope's metadata); not starting with a dot or a hyphen; at most :data:`MAX_NAME_LENGTH` characters. So no
    folder separators, no ``..``, no absolute paths and no hidden files.

    Parameters
    ----------
    name : object
        The name read from a file.
    what : str
        The attribute or field it came from (named in the error).
    source : path-like, optional
        The file it came from.
    """
    if not is_file_name(name):
        shown = repr(name)[:80]
        raise InputError(f"{what} {shown} is not a safe name (letters, digits, '_', '.', '-', spaces; "
                         f"no leading dot, at most {MAX_NAME_LENGTH} characters)", path=source,
                         hint="rename the scan, e.g. with h5py: "
                              "f.attrs['scan_name'] = 'scan_0033'")
    return name  # type: ignore[return-value]


def safe_file_name(text: str) -> str:
    """``text`` made into a safe name (other characters become ``_``), for defaults."""
    name = "".join(c if _ALLOWED.fullmatch(c) else "_" for c in str(text))[:MAX_NAME_LENGTH]
    name = name.strip().lstrip(".-").strip() or "scan"
    return name


def name_in_folder(folder: str | os.PathLike, name: str, suffix: str = "",
                   what: str = "scan_name") -> Path:
    """``folder/<name><suffix>``, checked to be a file directly inside ``folder``."""
    check_file_name(name, what)
    path = Path(folder) / f"{name}{suffix}"
    if path.parent != Path(folder):  # cannot happen after the check; belt and braces
        raise InputError(f"{what} {name!r} would leave the folder", path=folder)
    return path
