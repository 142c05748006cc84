"""Training data: probe positions of preprocessed bundles, their targets, and the split.

A *sample* is one probe position: its preprocessed pattern (Qx, Qy) float32
in [0, 1] and its target vector ``[eds_1 .. eds_E, haadf / haadf_scale]``.
Targets are small (E + 1 numbers per position) and always held in memory;
patterns are held in memory when they fit in ``memory_limit`` bytes and are
otherwise read from the bundle file on demand (one pattern per HDF5 chunk),
so a scan larger than memory still trains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..formats.bundle import DIFFRACTION, open_bundle
from ..errors import InputError

#: Patterns up to this many bytes are copied into memory for training.
MEMORY_LIMIT = 2 << 30


def split_positions(scan_shape: tuple[int, int], mode: str = "random",
                    val_fraction: float = 0.2, seed: int = 0,
                    block_size: int = 8) -> np.ndarray:
    """Choose the validation probe positions of one scan.

    Parameters
    ----------
    scan_shape : (Rx, Ry)
    mode : {"random", "blocks"}
        ``random``: positions drawn independently (the paper's split; blurred
        EDS maps make neighbours correlated, so this is optimistic).
        ``blocks``: the scan is tiled into ``block_size`` x ``block_size``
        squares and whole squares go to validation until the fraction is
        reached, so most validation positions have no training neighbour.
    val_fraction : float
        Target fraction of validation positions, in (0, 1).
    seed : int
    block_size : int
        Side of the squares, in probe positions (``blocks`` only).

    Returns
    -------
    ndarray, shape (Rx, Ry), bool
        True at validation positions. At least one position is in each set.
    """
    rx, ry = (int(v) for v in scan_shape)
    n = rx * ry
    if n < 2:
        raise InputError(f"a scan of {rx}x{ry} positions cannot be split into "
                         "training and validation")
    rng = np.random.default_rng(seed)
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    mask = np.zeros(n, dtype=bool)
    if mode == "random":
        mask[rng.permutation(n)[:n_val]] = True
        return mask.reshape(rx, ry)
    if mode != "blocks":
        raise InputError(f"split {mode!r} not understood", hint="use random or blocks")
    block_rows = np.arange(rx) // block_size
    block_cols = np.arange(ry) // block_size
    block_id = (block_rows[:, None] * (block_cols[-1] + 1) + block_cols[None, :]).ravel()
    order = rng.permutation(block_id.max() + 1)
    sizes = np.bincount(block_id)
    # Take whole blocks while they fit; the last block is taken only if that
    # brings the count closer to the target.
    taken = 0
    for b in order:
        if taken + sizes[b] > n_val and abs(taken + sizes[b] - n_val) >= abs(taken - n_val):
            continue
        mask[block_id == b] = True
        taken += sizes[b]
        if taken >= n_val:
            break
    if taken == 0 or taken == n:  # scan smaller than two blocks
        mask[:] = False
        mask[rng.permutation(n)[:n_val]] = True
    return mask.reshape(rx, ry)


def target_matrix(bundle_path: str | os.PathLike, elements: Sequence[str],
                  targets: Sequence[str], haadf_scale: float | None) -> np.ndarray:
    """Target vector of every position of a preprocessed bundle.

    Parameters
    ----------
    bundle_path : path-like
        Preprocessed bundle with ``eds/<El>`` (and ``haadf`` when asked for).
    elements : sequence of str
        Element order of the outputs.
    targets : sequence of {"eds", "haadf"}
    haadf_scale : float or None
        HAADF is divided by it (so training targets are about [0, 1]).

    Returns
    -------
    ndarray, shape (Rx * Ry, E [+ 1]), float32
        Columns: atomic fractions of ``elements``, then HAADF / haadf_scale.
    """
    with open_bundle(bundle_path, require=(DIFFRACTION, "eds")) as scan:
        eds = scan.eds(elements)                      # (E, Rx, Ry)
        columns = [eds.reshape(len(elements), -1).T]
        if "haadf" in targets:
            haadf = scan.haadf
            if haadf is None:
                raise InputError("targets include haadf but the bundle has none",
                                 path=bundle_path, hint="train with --targets eds")
            columns.append((haadf.reshape(-1, 1) / haadf_scale))
    return np.concatenate(columns, axis=1).astype(np.float32)


class PositionDataset(Dataset):
    """Selected probe positions of one or more preprocessed bundles.

    Parameters
    ----------
    bundles : sequence of path-like
        Preprocessed bundles (same detector shape).
    positions : sequence of ndarray
        Flat position indices (``i * Ry + j``) used from each bundle.
    targets : sequence of ndarray
        (Rx * Ry, T) target matrix of each bundle (:func:`target_matrix`).
    memory_limit : int
        Copy the selected patterns into memory when they take at most this
        many bytes; otherwise read each pattern from its file when asked.

    Notes
    -----
    Item ``k``: (pattern (Qx, Qy) float32, target (T,) float32).
    """

    def __init__(self, bundles: Sequence[str | os.PathLike], positions: Sequence[np.ndarray],
                 targets: Sequence[np.ndarray], memory_limit: int = MEMORY_LIMIT):
        self.bundles = [str(b) for b in bundles]
        self.positions = [np.asarray(p, dtype=np.int64) for p in positions]
        self._which = np.concatenate([np.full(len(p), i) for i, p in enumerate(self.positions)])
        self._flat = np.concatenate(self.positions)
        self.targets = torch.from_numpy(np.concatenate(
            [t[p] for t, p in zip(targets, self.positions)]).astype(np.float32))
        with h5py.File(self.bundles[0], "r") as f:
            self.detector_shape = tuple(f[DIFFRACTION].shape[2:])
        nbytes = len(self._flat) * int(np.prod(self.detector_shape)) * 4
        self._files: dict[int, h5py.Dataset] = {}
        self.patterns = self._load_all() if nbytes <= memory_limit else None

    def _load_all(self) -> torch.Tensor:
        # Stream each file once in scan order and keep only the selected positions,
        # so the peak memory is the selection plus one block.
        out = np.empty((len(self._flat), *self.detector_shape), dtype=np.float32)
        offset = 0
        for path, pos in zip(self.bundles, self.positions):
            with open_bundle(path) as scan:
                n = scan.n_patterns
                wanted = np.zeros(n, dtype=bool)
                wanted[pos] = True
                rank = np.full(n, -1)
                rank[pos] = np.arange(len(pos))
                for start, block in scan.iter_patterns(batch=1024):
                    sel = np.nonzero(wanted[start:start + len(block)])[0]
                    out[offset + rank[start + sel]] = block[sel]
            offset += len(pos)
        return torch.from_numpy(out)

    def __len__(self) -> int:
        return len(self._flat)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.patterns is not None:
            return self.patterns[k], self.targets[k]
        which = int(self._which[k])
        if which not in self._files:  # opened lazily, once per worker process
            self._files[which] = h5py.File(self.bundles[which], "r")[DIFFRACTION]
        ds = self._files[which]
        i, j = divmod(int(self._flat[k]), ds.shape[1])
        return torch.from_numpy(np.asarray(ds[i, j], dtype=np.float32)), self.targets[k]

    def __getstate__(self):  # h5py handles cannot cross into worker processes
        state = dict(self.__dict__)
        state["_files"] = {}
        return state


@dataclass
class SplitData:
    """Training and validation sets of a run, and where they came from.

    Attributes
    ----------
    train, val : PositionDataset
    val_masks : list of ndarray, each (Rx, Ry) bool
        Validation positions of each bundle (True = validation).
    """

    train: PositionDataset
    val: PositionDataset
    val_masks: list[np.ndarray]


def make_split_data(bundles: Sequence[str | os.PathLike], val_masks: Sequence[np.ndarray],
                    targets: Sequence[np.ndarray],
                    memory_limit: int = MEMORY_LIMIT) -> SplitData:
    """Build the training and validation datasets from per-bundle validation masks."""
    train_pos = [np.flatnonzero(~m.ravel()) for m in val_masks]
    val_pos = [np.flatnonzero(m.ravel()) for m in val_masks]
    return SplitData(PositionDataset(bundles, train_pos, targets, memory_limit),
                     PositionDataset(bundles, val_pos, targets, memory_limit),
                     [np.asarray(m, dtype=bool) for m in val_masks])


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader with a seeded shuffle (same order on every run with the same seed)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      drop_last=False)


def check_same_detector(bundles: Sequence[str | os.PathLike]) -> tuple[int, int]:
    """Detector shape shared by all bundles; InputError when they differ."""
    shapes = {}
    for b in bundles:
        with open_bundle(b) as scan:
            shapes[str(b)] = scan.detector_shape
    distinct = set(shapes.values())
    if len(distinct) != 1:
        raise InputError("bundles have different detector shapes after preprocessing: "
                         + ", ".join(f"{Path(k).name} {v}" for k, v in shapes.items()),
                         hint="preprocess them with the same --bin setting")
    return distinct.pop()
