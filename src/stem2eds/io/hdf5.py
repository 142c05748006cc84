"""HDF5 datasets whose bytes live in other files, and shapes too large to read.

An HDF5 dataset can keep its data outside the file: *external storage*
(raw bytes in any file, e.g. ``/etc/passwd``) or a *virtual dataset* (VDS)
mapping other HDF5 files. Reading such a dataset silently copies those
files' bytes, or fills with zeros when a source is missing.
:func:`check_self_contained` refuses both, except a virtual dataset whose
sources all exist in the input's own folder (or below it); every reader of
untrusted HDF5 calls it before reading data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError

#: How to make a self-contained copy (named in every refusal).
SELF_CONTAINED_HINT = ("make a self-contained copy first, e.g. 'h5repack -l CONTI "
                       "IN.h5 OUT.h5' or copy the data with h5py: "
                       "g['name'] = f['name'][()]")


def check_self_contained(dataset, path: str | os.PathLike) -> None:
    """Refuse a dataset whose data lies in other files.

    Parameters
    ----------
    dataset : h5py.Dataset
    path : path-like
        The HDF5 file the dataset is in (named in the error; virtual sources
        must lie in its folder).

    Raises
    ------
    InputError
        External raw storage; a virtual dataset with a source outside the
        file's folder, or a source file that is missing.
    """
    name = getattr(dataset, "name", "dataset")
    try:
        external = dataset.external
    except (AttributeError, OSError, RuntimeError, ValueError):
        external = None
    if external:
        target = os.fsdecode(external[0][0]) if isinstance(external[0][0], bytes) \
            else str(external[0][0])
        raise InputError(f"dataset {name!r} keeps its data in another file "
                         f"({target[:80]!r}, HDF5 external storage) and is refused",
                         path=path, hint=SELF_CONTAINED_HINT)
    if not getattr(dataset, "is_virtual", False):
        return
    folder = Path(path).resolve().parent
    try:
        sources = dataset.virtual_sources()
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"virtual dataset {name!r} cannot be read ({exc})", path=path,
                         hint=SELF_CONTAINED_HINT) from None
    for source in sources:
        file_name = source.file_name
        if file_name == ".":  # a source in the same file
            continue
        src = Path(file_name)
        src = (folder / src if not src.is_absolute() else src).resolve()
        if folder not in (src, *src.parents):
            raise InputError(f"virtual dataset {name!r} reads {file_name!r}, outside the "
                             "file's folder, and is refused", path=path,
                             hint=SELF_CONTAINED_HINT)
        if not src.is_file():
            raise InputError(f"virtual dataset {name!r} reads {file_name!r}, which is "
                             "missing (HDF5 would give zeros)", path=path,
                             hint=SELF_CONTAINED_HINT)


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 2**34


def check_memory(shape, dtype, path: str | os.PathLike, what: str) -> int:
    """Refuse to allocate an array of ``shape`` that would not fit in memory.

    A file can declare any shape (a chunked HDF5 dataset of 1e5 x 1e5
    positions costs a few bytes); the memory it implies is checked before
    an array is allocated.

    Returns
    -------
    int
        The bytes the array needs.

    Raises
    ------
    InputError
        When the array needs more than half the available memory.
    """
    nbytes = int(np.prod([int(v) for v in shape], dtype=object)) * np.dtype(dtype).itemsize
    limit = available_memory() // 2
    if nbytes > limit:
        dims = "x".join(str(int(v)) for v in shape)
        raise InputError(f"{what} declares shape {dims}, which needs {nbytes / 2**30:.1f} GiB "
                         f"of memory ({limit / 2**30:.1f} GiB usable)", path=path,
                         hint="check the file; it is damaged or not what it claims")
    return nbytes
