"""Writing files so that none is left half-done, and checking disk space first.

:func:`atomic_output` writes under a temporary name and renames on success;
:func:`check_free_space` and :func:`reserve_space` refuse (or pre-allocate)
before a large HDF5 write, so a full disk is an error at the start, not a
truncated file at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path
from glob import escape as glob_escape
from typing import Iterator

from .errors import InputError


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def check_free_space(folder: str | os.PathLike, nbytes: int, what: str = "the output") -> None:
    """Refuse to start writing ``nbytes`` into ``folder`` when the disk lacks the room.

    Parameters
    ----------
    folder : path-like
        Existing folder the output goes to.
    nbytes : int
        Expected size of the output in bytes.
    what : str
        Named in the message.

    Raises
    ------
    InputError
        When the file system has less than ``nbytes`` free.
    """
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise InputError(f"not enough free space for {what}: needs about {_mib(nbytes)}, "
                         f"{_mib(free)} free", path=folder,
                         hint="free space or choose another output folder")


def _libc_fallocate():
    # Linux fallocate(2) without glibc's posix_fallocate fallback, which on
    # file systems without fallocate would write every byte of the reservation.
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    func = getattr(libc, "fallocate", None)
    if func is None:
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    func.restype = ctypes.c_int
    return func


def reserve_space(path: str | os.PathLike, nbytes: int, what: str = "the output") -> bool:
    """Allocate disk blocks for the first ``nbytes`` of an open output file.

    HDF5 does not survive a full disk: writes that fail inside its caches are
    reported only while objects are freed, and closing such a file can crash
    the process (seen with h5py 3 on a full tmpfs: segmentation fault, partial
    file left). Reserving the blocks before any data is written makes a full
    disk fail here, cleanly, while the file is still nearly empty; later
    writes inside the reservation cannot run out of space. The file's size is
    unchanged (``FALLOC_FL_KEEP_SIZE``), so HDF5 sees the file it wrote.

    Parameters
    ----------
    path : path-like
        The (temporary) output file, already created.
    nbytes : int
        Bytes to reserve from offset 0.
    what : str
        Named in the message.

    Returns
    -------
    bool
        True if reserved; False where the platform or file system offers no
        fallocate (then only :func:`check_free_space` protects the output).

    Raises
    ------
    InputError
        When the disk has no room for ``nbytes``. Whatever part was
        allocated is released before raising.
    """
    fallocate = _libc_fallocate()
    if fallocate is None or nbytes <= 0:
        return False
    keep_size = 0x01  # FALLOC_FL_KEEP_SIZE
    fd = os.open(path, os.O_RDWR)
    try:
        if fallocate(fd, keep_size, 0, int(nbytes)) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            # Release blocks allocated beyond the data before failing.
            size = os.fstat(fd).st_size
            os.ftruncate(fd, size + 1)
            os.ftruncate(fd, size)
            folder = Path(path).parent
            raise InputError(f"not enough free space for {what}: needs about "
                             f"{_mib(nbytes)}, {_mib(shutil.disk_usage(folder).free)} free",
                             path=folder, hint="free space or choose another output folder")
        return False  # EOPNOTSUPP and the like: no reservation on this file system
    finally:
        os.close(fd)


def release_reservation(path: str | os.PathLike) -> None:
    """Free blocks that :func:`reserve_space` allocated beyond a file's end.

    Call after the file is closed: the reservation is an upper estimate, and
    on most file systems blocks past the end stay allocated until the file is
    truncated.
    """
    p = Path(path)
    size = p.stat().st_size
    # Truncating to the current size can be a no-op; one byte up and back
    # makes the file system drop everything past the end.
    os.truncate(p, size + 1)
    os.truncate(p, size)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(target: str | os.PathLike) -> list[Path]:
    """Delete temporary files of ``target`` left by writers that no longer run.

    A kill (SIGKILL, power loss) gives :func:`atomic_output` no chance to
    clean up; the next write of the same output removes what the dead
    process left. Files of a live process (a concurrent writer) are kept.

    Returns
    -------
    list of Path
        The files removed.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    removed = []
    for tmp in folder.glob(f".{glob_escape(target.name)}.*.partial"):
        pid_text = tmp.name[len(target.name) + 2:].split(".", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike,
                  expected_bytes: int | None = None) -> Iterator[Path]:
    """Write a file under a temporary name and rename it into place on success.

    The temporary file lies in the same folder (so the rename is atomic) and
    starts with a dot and ends with ``.partial``, so it never looks like a
    finished output. On any exception, including KeyboardInterrupt, it is
    removed and the target is left as it was.

    Parameters
    ----------
    path : path-like
        The final output path.
    expected_bytes : int, optional
        Expected size of the output; when given, a disk without that much
        free space is refused before anything is written
        (:func:`check_free_space`).

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
    check_path_encoding(target)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError("output folder does not exist", path=folder,
                         hint="create it first or choose another output folder")
    if target.exists() and not target.is_file():
        # the rename below would replace it: a folder fails only then, and a
        # device such as /dev/null would become a regular file
        kind = "a folder" if target.is_dir() else "not a regular file"
        raise InputError(f"the output exists and is {kind}", path=target,
                         hint="name a new file or an existing regular file to replace")
    if expected_bytes:
        check_free_space(folder, expected_bytes, what=target.name)
    remove_stale_partials(target)
    # The writer's pid is part of the name, so a later run can tell a file
    # left by a killed process from one that another process is still writing.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.",
                                    suffix=".partial", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the output the permissions any
        # other file the user creates would get (0666 less the umask), so
        # bundles and reports can be shared.
        umask = os.umask(0)
        os.umask(umask)
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def check_path_encoding(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse a path that is not valid UTF-8 (HDF5 and JSON records need text names)."""
    try:
        str(os.fspath(path)).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} name is not valid UTF-8", path=os.fsdecode(path).encode(
            "utf-8", "backslashreplace").decode("ascii", "backslashreplace"),
            hint="choose a name of letters, digits, '_', '.' and '-'") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwrite(out: str | os.PathLike, *inputs: str | os.PathLike,
                     what: str = "out", contents: bool = True) -> None:
    """Refuse an output that is one of the inputs (or holds one, for a folder).

    Compares resolved paths and, for existing files, the inode
    (:func:`os.path.samefile`), so hard links, symbolic links and ``./``
    spellings of an input are all caught. For an output folder, an input
    inside it is refused too (the command would write over or beside it).

    Parameters
    ----------
    out : path-like
        The output file or folder.
    *inputs : path-like
        The command's input files.
    what : str
        The setting that names the output (named in the error).
    contents : bool
        For an output folder, refuse inputs inside it too (a folder the
        command fills, e.g. a run's ``preprocessed/``).

    Raises
    ------
    InputError
        Naming the output and the input.
    """
    target = Path(out)
    check_path_encoding(target)
    resolved = target.resolve()
    for item in inputs:
        src = Path(item)
        inside = contents and target.is_dir() and resolved in src.resolve().parents
        if _same_file(target, src) or inside:
            raise InputError(f"`{what}` would overwrite the input {str(src)!r}"
                             + (" (it lies in the output folder)" if inside else ""),
                             path=target, hint="choose another output; no command's output "
                                               "may be one of its inputs")


def refuse_run_file(out: str | os.PathLike, what: str = "out") -> None:
    """Refuse an output that would replace a file of a training run (a folder with ``run.json``).

    A run's files are the inputs of later predictions; a bundle written over
    its ``weights.safetensors`` (found by fuzzing ``convert`` and
    ``preprocess``) breaks the run for good.
    """
    target = Path(out)
    if target.is_file() and (target.parent / "run.json").is_file():
        raise InputError(f"`{what}` would replace a file of the training run in "
                         f"{str(target.parent)!r}", path=target,
                         hint="write it elsewhere; a run's files are inputs of its predictions")


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder/.lock`` (see :meth:`RunDir.lock`); the second writer gets InputError.

    The lock file holds the pid of its holder (named in the error) and is
    removed on release.
    """
    import fcntl

    folder = Path(folder)
    check_path_encoding(folder)
    path = folder / ".lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
            finally:
                os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise InputError(f"in use by {who} (it is writing this folder)", path=folder,
                             hint="wait for it to finish or choose another output folder") \
                from None
        # The holder before us may have removed the file after we opened it:
        # then we hold a lock on a file nobody else sees; try again.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
