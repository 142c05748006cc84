"""Front-end features computed straight from raw patterns (the fused path).

:func:`ring_features` turns raw integer patterns (n, Qx, Qy) and their
fitted origins (n, 2) into the ring statistics (n, F) of the centred,
beam-removed, binned and normalised patterns, without forming those;
:class:`RingGeometry` holds what it needs (built from a run's preprocessing
settings with :meth:`RingGeometry.from_settings`). :mod:`.torch_rings` does
the same in torch (on a GPU), :mod:`.cache` keeps a run's training features
on disk.

>>> from stem2eds.features import RingGeometry, ring_features   # doctest: +SKIP
>>> geometry = RingGeometry((256, 256), bin_factor=4, beam_radius=6.0, scaling="none",
...                         scale=120.0, statistics=("mean",))
>>> feats = ring_features(raw_block, origins, geometry)          # (n, 46) float32
"""

from .rings import RingGeometry, ring_features, split_shift

__all__ = ["RingGeometry", "ring_features", "split_shift"]
