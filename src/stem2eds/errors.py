"""The error that reaches the user.

An :class:`InputError` is raised for anything wrong with what the user gave
(files, flags, shapes, values). The command-line tool turns it into exit
status 2 and one line on stderr; nothing else in the package prints.
"""

from __future__ import annotations

import os


#: What h5py, NumPy and the image libraries raise on a damaged or truncated
#: file. HDF5 errors map to whichever Python type fits the failing call
#: (a bad object header is a KeyError, a bad chunk an OSError, a broken
#: B-tree a RuntimeError), so readers catch this tuple around their reads
#: and turn it into an :class:`InputError` naming the file.
DAMAGED_FILE_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, EOFError,
                       IndexError, UnicodeDecodeError)


class InputError(Exception):
    """Bad input from the user: reported as one line, exit status 2.

    Parameters
    ----------
    message : str
        What is wrong, e.g. ``"has 1100 frames but `scan_shape` 40x30 needs 1200"``.
        Settings are named in backquotes; the command line shows them as
        its flags (``--scan-shape``), a notebook user sees the setting.
    path : str or Path, optional
        The file or folder concerned; put in front of the message.
    hint : str, optional
        How to fix it, e.g. ``"give `scan_shape` as (rows, columns)"``.
    keys_of_file : bool
        The settings named are keys the user wrote in the file ``path`` (a
        TOML configuration): the command line shows them as they are, not as
        flags.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 hint: str | None = None, *, keys_of_file: bool = False):
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        self.keys_of_file = keys_of_file
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.message if self.path is None else f"{self.path}: {self.message}"
        if self.hint:
            text = f"{text} ({self.hint})"
        return " ".join(text.split())  # always one line
