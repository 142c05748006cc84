"""Errors that reach the user, and writing files so that none is left half-done.

An :class:`InputError` is raised for anything wrong with what the user gave
(files, flags, shapes, values). The command-line tool turns it into exit
status 2 and one line on stderr; nothing else in the package prints.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


class InputError(Exception):
    """Bad input from the user: reported as one line, exit status 2.

    Parameters
    ----------
    message : str
        What is wrong, e.g. ``"has 1100 frames but --scan-shape 40x30 needs 1200"``.
    path : str or Path, optional
        The file or folder concerned; put in front of the message.
    hint : str, optional
        How to fix it, e.g. ``"pass --scan-shape ROWSxCOLS"``.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 hint: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.message if self.path is None else f"{self.path}: {self.message}"
        if self.hint:
            text = f"{text} ({self.hint})"
        return " ".join(text.split())  # always one line


def require(condition: bool, message: str, path=None, hint: str | None = None) -> None:
    """Raise :class:`InputError` unless ``condition`` holds."""
    if not condition:
        raise InputError(message, path=path, hint=hint)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file under a temporary name and rename it into place on success.

    The temporary file lies in the same folder (so the rename is atomic) and
    starts with a dot and ends with ``.partial``, so it never looks like a
    finished output. On any exception, including KeyboardInterrupt, it is
    removed and the target is left as it was.

    Parameters
    ----------
    path : path-like
        The final output path.

    Yields
    ------
    Path
        The temporary path to write to.

    Examples
    --------
    >>> with atomic_output("out.h5") as tmp:          # doctest: +SKIP
    ...     h5py.File(tmp, "w").close()
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError("output folder does not exist", path=folder,
                         hint="create it first or choose another --out")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial",
                                    dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
