"""A sparse experiment's ``anomaly/<scan>.h5``: where a new scan is unlike the known, and crystalline.

Layout (HDF5, written atomically)::

    score                 float32 (Rx', Ry')  mean robust z-score of the components
    flagged               uint8   (Rx', Ry')  1 where ``score > threshold``
    components/<name>     float32 (Rx', Ry')  reconstruction, prediction_error, uncertainty
    mean_pattern_flagged  float32 (Qx', Qy')  mean preprocessed pattern of the flagged positions
    mean_pattern_typical  float32 (Qx', Qy')  ... of the typical ones (|score| < 1)
    grain_mask            uint8   (Rx', Ry')  simulated scans only: the simulator's grains
    crystallinity         float32 (Rx', Ry')  Bragg-disk score (no training data used)
    crystalline           bool    (Rx', Ry')  positions the score marks crystalline
                                              (attribute ``settings``: JSON of the settings)
    attrs: threshold

Files written before the crystallinity map existed have no ``crystallinity``
or ``crystalline``. :class:`AnomalyFile` is the in-memory record;
:func:`write_anomaly` and :func:`read_anomaly` are the only code that touches
the file (the sparse experiment writes it, the report reads it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..atomic import atomic_output
from ..errors import DAMAGED_FILE_ERRORS, InputError

#: Per-position maps of the file, (Rx', Ry') each.
_MAPS = ("score", "flagged", "grain_mask", "crystallinity", "crystalline")


@dataclass
class AnomalyFile:
    """The content of an ``anomaly/<scan>.h5``.

    Attributes
    ----------
    score : ndarray, shape (Rx', Ry'), float32
    flagged : ndarray of bool, shape (Rx', Ry')
    threshold : float
    components : dict
        ``{name: (Rx', Ry') float32}`` of the components that were computed.
    mean_flagged, mean_typical : ndarray, shape (Qx', Qy'), or None
    grain_mask : ndarray of bool, shape (Rx', Ry'), or None
    crystallinity : ndarray, shape (Rx', Ry'), float32, or None
    crystalline : ndarray of bool, shape (Rx', Ry'), or None
    crystal_settings : dict or None
        :class:`stem2eds.analysis.crystallinity.CrystallinitySettings` as a dict.
    """

    score: np.ndarray
    flagged: np.ndarray
    threshold: float
    components: dict[str, np.ndarray] = field(default_factory=dict)
    mean_flagged: np.ndarray | None = None
    mean_typical: np.ndarray | None = None
    grain_mask: np.ndarray | None = None
    crystallinity: np.ndarray | None = None
    crystalline: np.ndarray | None = None
    crystal_settings: dict[str, Any] | None = None


def write_anomaly(path: str | os.PathLike, record: AnomalyFile) -> None:
    """Write ``record`` to ``path`` atomically (see the module docstring for the layout)."""
    with atomic_output(Path(path)) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("score", data=np.asarray(record.score, np.float32))
            fh.create_dataset("flagged", data=np.asarray(record.flagged).astype(np.uint8))
            for name, values in record.components.items():
                fh.create_dataset(f"components/{name}", data=np.asarray(values, np.float32))
            for key, values in (("mean_pattern_flagged", record.mean_flagged),
                                ("mean_pattern_typical", record.mean_typical)):
                if values is not None:
                    fh.create_dataset(key, data=np.asarray(values, np.float32))
            if record.grain_mask is not None:
                fh.create_dataset("grain_mask", data=np.asarray(record.grain_mask).astype(np.uint8))
            fh.attrs["threshold"] = float(record.threshold)
            if record.crystallinity is not None:
                c = fh.create_dataset("crystallinity",
                                      data=np.asarray(record.crystallinity, np.float32))
                c.attrs["description"] = ("largest disk-sized spot above its ring, in units "
                                          "of the ring's noise (no training data used)")
            if record.crystalline is not None:
                b = fh.create_dataset("crystalline", data=np.asarray(record.crystalline, bool))
                b.attrs["settings"] = json.dumps(record.crystal_settings or {})


def read_anomaly(path: str | os.PathLike) -> AnomalyFile:
    """Read an ``anomaly/<scan>.h5``; its maps are checked to share one 2D shape.

    Raises
    ------
    InputError
        If the file is missing, damaged, has no ``score`` map, or maps of
        another shape than ``score``'s.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such anomaly file", path=path)
    try:
        with h5py.File(path, "r") as f:
            maps = {key: _map(f, key, path) for key in _MAPS}
            components = {}
            if isinstance(f.get("components"), h5py.Group):
                components = {name: _map(f["components"], name, path)
                              for name in f["components"]}
            means = [np.asarray(f[k][()], np.float32) if isinstance(f.get(k), h5py.Dataset)
                     else None for k in ("mean_pattern_flagged", "mean_pattern_typical")]
            threshold = float(f.attrs.get("threshold", np.nan))
            settings = None
            if maps["crystalline"] is not None and "settings" in f["crystalline"].attrs:
                settings = json.loads(f["crystalline"].attrs["settings"])
    except DAMAGED_FILE_ERRORS as exc:  # JSONDecodeError is a ValueError
        raise InputError(f"cannot read the anomaly file ({type(exc).__name__}: {exc})",
                         path=path) from None
    score = maps["score"]
    if score is None:
        raise InputError("the anomaly file has no 2D `score` map", path=path)
    for key, values in [*maps.items(), *components.items()]:
        if values is not None and values.shape != score.shape:
            raise InputError(f"anomaly map `{key}` is {values.shape}, the score "
                             f"{score.shape}", path=path)
    flagged = maps["flagged"]
    as_bool = {k: None if maps[k] is None else maps[k].astype(bool)
               for k in ("grain_mask", "crystalline")}
    return AnomalyFile(score=score.astype(np.float32),
                       flagged=(score > threshold) if flagged is None else flagged.astype(bool),
                       threshold=threshold, components=components,
                       mean_flagged=means[0], mean_typical=means[1],
                       grain_mask=as_bool["grain_mask"],
                       crystallinity=None if maps["crystallinity"] is None
                       else maps["crystallinity"].astype(np.float32),
                       crystalline=as_bool["crystalline"], crystal_settings=settings)


def _map(group: h5py.Group, key: str, path: Path) -> np.ndarray | None:
    """The 2D dataset ``key`` of ``group`` (None when absent); other shapes are refused."""
    obj = group.get(key)
    if obj is None:
        return None
    if not isinstance(obj, h5py.Dataset) or obj.ndim != 2:
        raise InputError(f"anomaly map `{key}` is not a 2D dataset", path=path)
    return np.asarray(obj[()])
