"""The fused ring statistics a ring model trains on, cached in the run folder.

A ring model (:class:`stem2eds.models.rings.RingFrontend`) whose run centres
after binning trains on the ring statistics of the raw bundles, computed
once by the fused front end (:mod:`stem2eds.features.cache`), instead of on
preprocessed patterns; with ``model_params.normalise = "scan"`` each
bundle's statistics are divided by the bundle's reference intensity
(:mod:`stem2eds.features.normalise`), as prediction divides a scan's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..formats.bundle import open_bundle
from ..formats.rundir import RunDir
from .config import TrainConfig


def fused_rings(config: TrainConfig, settings) -> bool:
    """Whether the model trains on fused ring statistics (a ring model, ``binned`` centring)."""
    from ..models import get_model
    from ..models.rings import RingFrontend

    return issubclass(get_model(config.model), RingFrontend) and settings.centring == "binned"


def use_cached_rings(net, data, run: RunDir, paths: Sequence[Path], settings) -> None:
    """Give ``data`` the ring statistics of the raw bundles, cached in the run folder.

    Computed once by the fused front end (:mod:`stem2eds.features.cache`)
    and reused by later runs in this folder with the same bundles and
    preprocessing (another seed, a resume).
    """
    from ..features.cache import cache_key, ring_statistics_cache
    from ..features.normalise import per_scan
    from ..features.rings import RingGeometry

    statistics = tuple(net.ring_statistics)
    with open_bundle(paths[0]) as scan:
        geometry = RingGeometry.from_settings(settings, scan.detector_shape, statistics)
    key = cache_key(paths, settings, statistics)
    stats = ring_statistics_cache(run.frontend_cache(key), paths, settings, statistics,
                                  geometry.n_rings)
    if scan_normalised(net.params):
        # each scan's statistics over its own reference, as predict divides them
        stats = per_scan(stats, [_region_size(p, settings) for p in paths])
    data.use_ring_statistics(stats, net.features_from_rings, len(statistics))


def scan_normalised(params) -> bool:
    """Whether a model's ``normalise`` is ``"scan"`` (ring models of the ``radial`` family)."""
    from ..models.radial import RadialParams

    return isinstance(params, RadialParams) and params.normalise == "scan"


def _region_size(path: Path, settings) -> int:
    """Positions of a bundle's region (its crop), as the feature cache holds them."""
    from ..preprocess.maps import check_crop

    with open_bundle(path) as scan:
        r0, r1, c0, c1 = check_crop(settings.crop, scan.scan_shape)
    return (r1 - r0) * (c1 - c0)
