"""A run's ring statistics, computed once from the raw bundles and kept on disk.

Training a ring-statistics model (:class:`stem2eds.models.rings.RingFrontend`)
needs only the ring statistics of every training and validation pattern,
a few hundred bytes each instead of the pattern. :func:`ring_statistics_cache`
computes them straight from the RAW bundles with the fused front end
(:func:`stem2eds.features.ring_features`, the same numbers prediction
uses) and stores them as one ``.npy`` file in the run folder
(:meth:`stem2eds.formats.rundir.RunDir.frontend_cache`), opened memory-mapped.
The file name carries a fingerprint (:func:`cache_key`) of the bundles
(name, size, modification time, provenance), the resolved preprocessing
settings and the ring geometry, so a later training in the same folder
with another seed, a resumed run, or a retrained run with the same data
and preprocessing reuses it; anything else gets a file of its own.

Rows: every position of the first bundle's region (after the crop, in C
order), then of the second, and so on; columns: the statistics (F = S * R).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from .stream import iter_raw_blocks

#: Bumped when the kernel's numbers change, so older cache files are not reused.
CACHE_VERSION = 1


def cache_key(bundles: Sequence[str | os.PathLike], settings, statistics: Sequence[str]) -> str:
    """Hex fingerprint of what decides the cached statistics (see the module docstring)."""
    from ..formats.bundle import fingerprint

    return fingerprint(bundles, {"preprocess": settings.to_dict(),
                                 "statistics": list(statistics), "version": CACHE_VERSION})


def ring_statistics_cache(path: str | os.PathLike, bundles: Sequence[str | os.PathLike],
                          settings, statistics: Sequence[str], n_rings: int,
                          batch: int = 1024) -> np.ndarray:
    """The ring statistics of every position of ``bundles``, from ``path`` or computed into it.

    Parameters
    ----------
    path : path-like
        The ``.npy`` file (written atomically when missing or unreadable).
    bundles : sequence of path-like
        RAW bundles (Rx, Ry, Qx, Qy).
    settings : PreprocessSettings
        Resolved (``scale`` and ``beam_radius`` set), as the run's.
    statistics : sequence of str
        The model's ring statistics.
    n_rings : int
        R, to check a stored file against.
    batch : int
        Patterns per block read.

    Returns
    -------
    ndarray, shape (N, S * R), float32, memory-mapped read-only
        N: the positions of the bundles' cropped regions, bundle after bundle.
    """
    from ..atomic import atomic_output
    from ..formats.bundle import open_bundle
    from ..preprocess.maps import check_crop

    path = Path(path)
    statistics = tuple(statistics)
    sizes = []
    for b in bundles:
        with open_bundle(b) as scan:
            r0, r1, c0, c1 = check_crop(settings.crop, scan.scan_shape)
            sizes.append((r1 - r0) * (c1 - c0))
    shape = (int(sum(sizes)), len(statistics) * int(n_rings))
    stored = _open(path, shape)
    if stored is not None:
        return stored
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, expected_bytes=shape[0] * shape[1] * 4) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        offset = 0
        for b, size in zip(bundles, sizes):
            with open_bundle(b) as scan:
                for start, block in iter_raw_blocks(scan, settings, batch):
                    out[offset + start:offset + start + len(block)] = \
                        block.ring_features(settings, statistics)
            offset += size
        out.flush()
        del out
    stored = _open(path, shape, finite=False)
    if stored is None:
        raise InputError("the front-end cache just written cannot be read back", path=path)
    if not np.isfinite(stored).all():
        raise InputError("the ring statistics of the training scans hold NaN or infinite "
                         "values", path=path, hint="check the scans' counts for NaN or infinity")
    return stored


def _open(path: Path, shape: tuple[int, int], finite: bool = True) -> np.ndarray | None:
    """The stored array when it is a float32 .npy of ``shape`` (and finite); None otherwise.

    A cache left damaged (e.g. NaN written over it) is computed again, like a missing one.
    """
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return None
    if arr.shape != shape or arr.dtype != np.float32:
        return None
    if finite and not np.isfinite(arr).all():
        return None
    return arr
