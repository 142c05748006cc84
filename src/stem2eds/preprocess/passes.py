"""The per-chunk passes of preprocessing: pure functions on arrays of patterns.

Each takes ``(start, patterns, ...)``, a work chunk of patterns and the flat
index (in the scan region) of its first one, and returns arrays. They know
nothing of threads, Dask, files or progress:
:class:`stem2eds.preprocess.executor.Executor` maps them over a bundle, and
:mod:`stem2eds.preprocess.pipeline` combines what they return. The same
function on the same chunk gives the same values on any executor.
"""

from __future__ import annotations

import numpy as np

from .origin import OriginBatch, find_origins
from .patterns import apply_scaling, centre_binned, centre_patterns, finish_patterns
from .patterns import process_patterns as _process_patterns
from .settings import PreprocessSettings


def measure_chunk(start: int, patterns: np.ndarray, radius: float) -> OriginBatch:
    """Pass 1 on one chunk: the origin of every pattern and the aligned disk sum.

    Parameters
    ----------
    start : int
        Flat index of the chunk's first pattern (unused: origins depend on
        the pattern only; kept so every pass has the same signature).
    patterns : ndarray, shape (n, Qx, Qy)
    radius : float
        Aperture (probe) radius in px, fixed for the whole scan so every
        pattern is measured the same way whatever chunk it falls in.

    Returns
    -------
    OriginBatch
        ``origins`` (n, 2), ``disk_sum`` and ``n_summed`` for the probe radius.
    """
    return find_origins(patterns, radius)



def measure_blocks(blocks, places: np.ndarray, n: int
                   ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Origins of a stream of pattern blocks, with the aperture radius of the first block.

    Parameters
    ----------
    blocks : iterable of (int, ndarray (b, Qx, Qy))
        Blocks of patterns and the index of their first pattern in the stream.
    places : ndarray of int, shape (m,)
        Where the stream's i-th pattern goes in the (n, 2) result.
    n : int
        Length of the result.

    Returns
    -------
    measured : ndarray, shape (n, 2)
        Origins (pixels); NaN where no pattern of the stream goes.
    disk_sum : ndarray or None
        Sum of the centred disks (None for an empty stream).
    n_summed : int
    """
    measured = np.full((n, 2), np.nan)
    disk_sum, n_sum, radius = None, 0, None
    for lo, patterns in blocks:
        if radius is None:
            radius = find_origins(patterns).probe_radius
        found = measure_chunk(lo, patterns, radius)
        measured[places[lo:lo + len(patterns)]] = found.origins
        disk_sum = found.disk_sum if disk_sum is None else disk_sum + found.disk_sum
        n_sum += found.n_summed
    return measured, disk_sum, n_sum

def process_chunk(start: int, patterns: np.ndarray, origins: np.ndarray, beam_radius: float,
                  settings: PreprocessSettings, adf: bool = False
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Pass 2 on one chunk: centre, remove the beam, bin and scale (not normalise).

    Parameters
    ----------
    start : int
        Flat index (in the scan region) of the chunk's first pattern.
    patterns : ndarray, shape (n, Qx, Qy)
        Raw counts.
    origins : ndarray, shape (N, 2)
        Fitted origins of the whole region, flat; rows ``start:start + n``
        belong to this chunk.
    beam_radius : float
        Radius of the zeroed central disk, input px.
    settings : PreprocessSettings
        ``bin_factor``, ``scaling`` and ``centring`` are used.
    adf : bool
        Also return the virtual annular dark-field signal of the centred
        counts (for registration of the EDS maps).

    Returns
    -------
    values : ndarray, shape (n, Qx/bin, Qy/bin), float32
    adf : ndarray, shape (n,), float64
        Only when ``adf`` is true.
    """
    chunk_origins = origins[start:start + len(patterns)]
    f = int(settings.bin_factor)
    if not adf:
        return _process_patterns(patterns, chunk_origins, beam_radius, f, settings.scaling,
                                 settings.centring)
    from .register import annular_sum  # SciPy: only when registering

    qx, qy = patterns.shape[1:]
    if settings.centring == "full":
        centred = centre_patterns(patterns, chunk_origins)
        signal = annular_sum(centred, beam_radius, min(qx, qy) / 2)
        return finish_patterns(centred, beam_radius, f, settings.scaling), signal
    centred = centre_binned(patterns, chunk_origins, beam_radius, f)
    signal = annular_sum(centred, beam_radius / f, min(qx, qy) / (2 * f))
    return apply_scaling(centred, settings.scaling).astype(np.float32, copy=False), signal
