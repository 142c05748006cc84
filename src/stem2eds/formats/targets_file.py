"""An experiment's ``targets/<scan>.h5``: the maps a prediction of one scan is scored against.

Layout (HDF5, written atomically)::

    eds/<El>            float32 (Rx', Ry')  preprocessed (blurred, cropped) EDS
    truth/<El>          float32 (Rx', Ry')  noise-free composition (simulated scans only)
    haadf               float32 (Rx', Ry')  cropped HAADF (when the bundle has one)
    evaluated           uint8   (Rx', Ry')  1 where the position is scored
    train_positions     uint8   (Rx', Ry')  1 where the model was trained
    attrs: elements, scan_name, source (raw bundle path), crop [r0, r1, c0, c1]

:class:`Targets` is the in-memory record; :func:`write_targets` and
:func:`read_targets` are the only code that touches the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from ..atomic import atomic_output
from ..errors import DAMAGED_FILE_ERRORS, InputError
from .bundle import HAADF, TRUTH


@dataclass
class Targets:
    """The maps a prediction of one scan is scored against, on the cropped grid.

    Attributes
    ----------
    eds : ndarray, shape (E, Rx', Ry')
        Preprocessed (blurred, cropped) EDS maps: the training target.
    haadf : ndarray, shape (Rx', Ry'), or None
    truth : ndarray, shape (E, Rx', Ry'), or None
        Noise-free composition (simulated scans), cropped, not blurred.
    evaluated : ndarray of bool, shape (Rx', Ry')
        Positions that count (all, or the validation positions of a random split).
    train_positions : ndarray of bool, shape (Rx', Ry')
        Positions the model was trained on (used to fit the calibration).
    crop : (int, int, int, int)
        ``(r0, r1, c0, c1)`` of the cropped grid on the raw scan.
    """

    eds: np.ndarray
    haadf: np.ndarray | None
    truth: np.ndarray | None
    evaluated: np.ndarray
    train_positions: np.ndarray
    crop: tuple[int, int, int, int]


def write_targets(path: str | os.PathLike, targets: Targets, elements: Sequence[str],
                  scan_name: str, source: str | os.PathLike) -> None:
    """Write one scan's targets file atomically (layout in the module docstring).

    Parameters
    ----------
    path : path-like
    targets : Targets
    elements : sequence of str
        Names of the E maps, in order.
    scan_name : str
    source : path-like
        The raw bundle the targets were read from (stored as given).
    """
    elements = list(elements)
    with atomic_output(Path(path)) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("eds")
            for name, values in zip(elements, targets.eds):
                g.create_dataset(name, data=np.asarray(values, np.float32))
            if targets.truth is not None:
                g = f.create_group(TRUTH)
                for name, values in zip(elements, targets.truth):
                    g.create_dataset(name, data=np.asarray(values, np.float32))
            f.create_dataset("evaluated", data=targets.evaluated.astype(np.uint8))
            f.create_dataset("train_positions", data=targets.train_positions.astype(np.uint8))
            if targets.haadf is not None:
                f.create_dataset(HAADF, data=targets.haadf.astype(np.float32))
            f.attrs["elements"] = elements
            f.attrs["scan_name"] = scan_name
            f.attrs["source"] = str(source)
            f.attrs["crop"] = list(targets.crop)


def read_targets(path: str | os.PathLike) -> tuple[Targets, list[str]]:
    """Read a targets file (``truth`` is not read back: it is for figures only).

    Parameters
    ----------
    path : path-like

    Returns
    -------
    targets : Targets
        ``truth`` is None.
    elements : list of str

    Raises
    ------
    InputError
        The file is missing, damaged or not a targets file.
    """
    try:
        with h5py.File(path, "r") as f:
            elements = [e.decode() if isinstance(e, bytes) else str(e)
                        for e in f.attrs["elements"]]
            tgt = Targets(np.stack([f["eds"][e][()] for e in elements]),
                          f[HAADF][()] if HAADF in f else None, None,
                          f["evaluated"][()].astype(bool),
                          f["train_positions"][()].astype(bool),
                          tuple(int(v) for v in f.attrs["crop"]))
    except DAMAGED_FILE_ERRORS as exc:
        raise InputError(f"not a readable experiment targets file ({exc})", path=path) from None
    return tgt, elements
