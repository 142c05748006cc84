"""Raw blocks of a scan with their fitted origins: what the fused path streams.

:func:`iter_raw_blocks` measures and fits the origins of a RAW scan once
(:func:`stem2eds.preprocess.pipeline.resolve_origins`, exactly as
:func:`~stem2eds.preprocess.pipeline.iter_preprocessed` does) and then
streams the raw patterns of the scan region through
:func:`stem2eds.io.stream.iter_blocks`, each block with its origins. A
:class:`RawBlock` becomes ring features (:meth:`RawBlock.ring_features`,
the fused path) or the preprocessed patterns of the ordinary path
(:meth:`RawBlock.preprocessed`), so both start from the same reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import h5py
import numpy as np

from ..io.stream import PatternReader, iter_blocks, prefetch
from .rings import RingGeometry, ring_features

#: Most raw patterns per block: 256 patterns of 256x256 uint16 are 32 MiB,
#: so a few blocks in flight keep the memory far below a gigabyte.
RAW_BLOCK = 256


@dataclass
class RawBlock:
    """Raw patterns of consecutive positions, with what centres them.

    Attributes
    ----------
    patterns : ndarray, shape (n, Qx, Qy)
        Raw counts as stored.
    origins : ndarray, shape (n, 2), float64
        Fitted origins, input detector px.
    beam_radius : float
        Input detector px.
    """

    patterns: np.ndarray
    origins: np.ndarray
    beam_radius: float

    def __len__(self) -> int:
        return len(self.patterns)

    def ring_features(self, settings, statistics: tuple[str, ...]) -> np.ndarray:
        """(n, S * R) float32 ring statistics (:func:`~stem2eds.features.ring_features`)."""
        return ring_features(self.patterns, self.origins, self.geometry(settings, statistics))

    def geometry(self, settings, statistics: tuple[str, ...]) -> RingGeometry:
        """The :class:`RingGeometry` of these patterns under ``settings``."""
        return RingGeometry.from_settings(settings, self.patterns.shape[1:], statistics,
                                          beam_radius=self.beam_radius)

    def preprocessed(self, settings) -> np.ndarray:
        """(n, Qx/f, Qy/f) float32 (normalised): the ordinary path's patterns (same functions)."""
        from ..preprocess.patterns import normalise, process_patterns

        values = process_patterns(self.patterns, self.origins, self.beam_radius,
                                  int(settings.bin_factor), settings.scaling, settings.centring)
        return normalise(values, settings.scale, settings.ceiling_reference)


class MappedBlock(RawBlock):
    """A :class:`RawBlock` whose patterns are memory-mapped from the bundle, not copied.

    The fused ring statistics read the mapped file directly
    (:class:`stem2eds.io.mapped.MappedPatterns`); the paths that need an
    array (preprocessing, the GPU) get a copy from :attr:`patterns`.
    """

    def __init__(self, mapped, origins: np.ndarray, beam_radius: float):
        # no RawBlock.__init__: ``patterns`` is made on demand (a property)
        self.mapped = mapped
        self.origins = origins
        self.beam_radius = beam_radius

    def __len__(self) -> int:
        return len(self.mapped)

    def __repr__(self) -> str:
        return f"MappedBlock(n={len(self.mapped)})"

    @property
    def patterns(self) -> np.ndarray:  # type: ignore[override]
        """(n, Qx, Qy) raw counts, copied out of the map."""
        return self.mapped.to_array()

    def ring_features(self, settings, statistics: tuple[str, ...]) -> np.ndarray:
        return ring_features(self.mapped, self.origins, self.geometry(settings, statistics))

    def geometry(self, settings, statistics: tuple[str, ...]) -> RingGeometry:
        return RingGeometry.from_settings(settings, self.mapped.detector_shape, statistics,
                                          beam_radius=self.beam_radius)


def iter_raw_blocks(scan, settings, batch: int = 1024, origins: np.ndarray | None = None,
                    read_ahead: int = 1, forked=None) -> Iterator[tuple[int, RawBlock]]:
    """Stream a RAW scan's region as :class:`RawBlock` s, origins fitted first.

    Parameters
    ----------
    scan : ScanBundle or scan-like
        ``diffraction`` (h5py dataset or BlockSource), ``scan_shape``,
        ``detector_shape``, ``path``.
    settings : PreprocessSettings
        Resolved (``scale`` set); ``crop``, origin settings and ``beam_radius``
        are used.
    batch : int
        Patterns per block (capped at :data:`RAW_BLOCK`; the last may be
        shorter), across scan rows.
    origins : ndarray, shape (Rx', Ry', 2), optional
        Use these instead of measuring.
    read_ahead : int
        Blocks read ahead in a background thread.
    forked : stem2eds.preprocess.forked.ForkedOrigins, optional
        A child measuring the origins (with ``origins`` None): its result is
        used when it has one, else they are measured here.

    Yields
    ------
    start : int
        Flat index in the cropped region of the block's first pattern.
    block : RawBlock
        A :class:`MappedBlock` when the bundle's patterns can be mapped
        (:attr:`stem2eds.io.stream.PatternReader.mappable`), else patterns read
        into memory.
    """
    from ..errors import InputError
    from ..preprocess.maps import check_crop
    from ..preprocess.pipeline import resolve_origins

    if settings.scale is None:
        raise InputError("preprocessing `scale` is not set",
                         hint="use the settings of the training bundle")
    found = forked.result() if forked is not None and origins is None else None
    fitted, beam_radius = found or resolve_origins(scan, settings, max(int(batch), 1), origins)
    flat = np.ascontiguousarray(np.asarray(fitted, dtype=np.float64).reshape(-1, 2))
    r0, r1, c0, c1 = check_crop(settings.crop, scan.scan_shape)
    # the region as flat indices: blocks of exactly ``step`` patterns across scan rows
    region = (np.arange(r0, r1, dtype=np.int64)[:, None] * int(scan.scan_shape[1])
              + np.arange(c0, c1, dtype=np.int64)).ravel()
    step = max(1, min(int(batch), RAW_BLOCK))
    if isinstance(scan.diffraction, h5py.Dataset):
        with PatternReader(scan.diffraction) as reader:
            if reader.mappable:
                blocks = ((lo, MappedBlock(reader.map(region[lo:lo + step]),
                                           flat[lo:lo + step], beam_radius))
                          for lo in range(0, len(region), step))
                yield from (prefetch(blocks, read_ahead) if read_ahead > 0 else blocks)
                return
    for start, raw in iter_blocks(scan.diffraction, flat=region, batch=step,
                                  read_ahead=read_ahead):
        yield start, RawBlock(raw, flat[start:start + len(raw)], beam_radius)
