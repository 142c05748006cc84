"""Training data: probe positions of preprocessed bundles, their targets, and the split.

:class:`RunData` (a ``LightningDataModule``) owns the data of a run: it
builds the split, the target matrices, the HAADF scale and the datasets once
(:meth:`RunData.setup`), and optionally replaces the patterns by a model's
fixed front-end features (:meth:`RunData.cache_frontend`).

A *sample* is one probe position: its preprocessed pattern (Qx, Qy) float32
in [0, 1] and its target vector ``[eds_1 .. eds_E, haadf / haadf_scale]``.
Targets are small (E + 1 numbers per position) and always held in memory;
patterns are held in memory when they fit in ``memory_limit`` bytes and are
otherwise read from the bundle file on demand (one pattern per HDF5 chunk),
so a scan larger than memory still trains.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import h5py
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import InputError
from ..formats.bundle import DIFFRACTION, open_bundle

#: Patterns up to this many bytes are copied into memory for training.
MEMORY_LIMIT = 2 << 30

#: Percentile of the training HAADF used as its scale (robust to hot pixels).
HAADF_PERCENTILE = 99.0


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
                                 path=bundle_path, hint='train with targets="eds"')
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
                         hint="preprocess them with the same bin_factor")
    return distinct.pop()


#: Smallest spread (standard deviation, atomic fraction) of an EDS target over the
#: training positions, and smallest share of positions off its median: below
#: either, the map is (nearly) constant and there is nothing to learn.
MIN_TARGET_STD = 1e-3
MIN_VARYING_FRACTION = 0.01


def check_target_variation(values: np.ndarray, elements: Sequence[str],
                           bundles: Sequence[str | os.PathLike]) -> None:
    """Refuse EDS targets that do not vary over the training positions.

    An all-zero map (no counts in that line) trains to a loss of 0 and
    predicts nothing; the same holds for a map that is zero but at a few
    positions.

    Parameters
    ----------
    values : ndarray, shape (n, E [+ 1])
        Targets of the training positions, EDS columns first.
    """
    for k, element in enumerate(elements):
        column = values[:, k].astype(np.float64)
        varying = np.mean(np.abs(column - np.median(column)) > 1e-6) if len(column) else 0.0
        if column.std() < MIN_TARGET_STD or varying < MIN_VARYING_FRACTION:
            raise InputError(f"EDS target {element} does not vary over the {len(column)} training "
                             f"positions (mean {column.mean():.4g}, std {column.std():.2g}, "
                             f"{100 * varying:.2g} % of positions off the median): nothing to "
                             "learn", path=bundles[0] if len(bundles) == 1 else None,
                             hint=f"drop {element} from `elements`, or check the EDS maps "
                                  "(an all-zero map has no counts in that line)")


def make_split(shapes: Sequence[tuple[int, int]], mode: str, val_fraction: float, seed: int,
               block_size: int) -> list[np.ndarray]:
    """Validation mask (Rx, Ry) bool of every scan; a different stream per scan, one seed."""
    return [split_positions(shape, mode, val_fraction, seed=seed + 7919 * i,
                            block_size=block_size) for i, shape in enumerate(shapes)]


def haadf_scale(bundles: Sequence[str | os.PathLike], masks: Sequence[np.ndarray]) -> float:
    """The :data:`HAADF_PERCENTILE` percentile of the HAADF at the training positions."""
    values = []
    for p, m in zip(bundles, masks):
        with open_bundle(p) as scan:
            haadf = scan.haadf
            if haadf is None:
                raise InputError("targets include haadf but the bundle has none", path=p,
                                 hint='train with targets="eds"')
            values.append(haadf[~m])
    scale = float(np.percentile(np.concatenate(values), HAADF_PERCENTILE))
    if not scale > 0:
        raise InputError("HAADF of the training positions is zero everywhere", path=bundles[0])
    return scale


def map_dataset(fn: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset,
                batch: int = 1024) -> TensorDataset:
    """Apply a fixed function (a model's front end) to every pattern of a dataset, once.

    Parameters
    ----------
    fn : callable
        (n, Qx, Qy) patterns -> (n, ...) features, e.g. ``net.frontend``.
    dataset : Dataset
        Items (pattern (Qx, Qy), target (T,)).
    batch : int
        Patterns per batch (streamed; lazy datasets stay on disk).

    Returns
    -------
    TensorDataset
        Items (features, target (T,)): a few hundred numbers per position
        instead of Qx*Qy, so every later epoch skips the front end.
    """
    feats, targets = [], []
    with torch.inference_mode():
        for x, y in make_loader(dataset, batch, False, 0):
            feats.append(fn(x))
            targets.append(y)
    return TensorDataset(torch.cat(feats).clone(), torch.cat(targets).clone())


class RunData(L.LightningDataModule):
    """The data of a training run: split, targets, HAADF scale, datasets and loaders.

    Parameters
    ----------
    bundles : sequence of Path
        Preprocessed training bundles (same detector shape).
    elements : sequence of str
        Element order of the EDS outputs.
    config : TrainConfig
        ``targets``, ``split``, ``val_fraction``, ``block_size``, ``seed``,
        ``batch_size`` and ``num_workers`` are used.
    load_patterns : bool
        Copy the patterns into memory when they fit (default). False when
        the model will train on cached ring statistics
        (:meth:`use_ring_statistics`), which never need the patterns.

    Attributes
    ----------
    masks : list of ndarray, each (Rx, Ry) bool
        Validation positions of each bundle (after :meth:`setup`).
    haadf_scale : float or None
        HAADF targets are divided by it (None without a HAADF target).
    train_set, val_set : Dataset
        Items (pattern (Qx, Qy) or front-end features, target (E [+ 1],)).
    """

    def __init__(self, bundles: Sequence[Path], elements: Sequence[str], config,
                 load_patterns: bool = True) -> None:
        super().__init__()
        self.bundles = [Path(b) for b in bundles]
        self.elements = list(elements)
        self.config = config
        self.load_patterns = bool(load_patterns)
        self.masks: list[np.ndarray] = []
        self.haadf_scale: float | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.on_features = False
        self._rings: tuple[np.ndarray, Callable, int] | None = None

    @property
    def n_outputs(self) -> int:
        """E EDS columns, plus one for HAADF."""
        return len(self.elements) + (1 if "haadf" in self.config.targets else 0)

    def setup(self, stage: str | None = None) -> None:
        """Split, targets and datasets; done once (Lightning calls it again on fit)."""
        if self.train_set is not None:
            return
        c = self.config
        shapes = []
        for p in self.bundles:
            with open_bundle(p) as scan:
                shapes.append(scan.scan_shape)
        self.masks = make_split(shapes, c.split, c.val_fraction, c.seed, c.block_size)
        if "haadf" in c.targets:
            self.haadf_scale = haadf_scale(self.bundles, self.masks)
        targets = [target_matrix(p, self.elements, c.targets, self.haadf_scale)
                   for p in self.bundles]
        train_pos = [np.flatnonzero(~m.ravel()) for m in self.masks]
        val_pos = [np.flatnonzero(m.ravel()) for m in self.masks]
        check_target_variation(np.concatenate([t[p] for t, p in zip(targets, train_pos)]),
                               self.elements, self.bundles)
        limit = MEMORY_LIMIT if self.load_patterns else 0
        self.train_set = PositionDataset(self.bundles, train_pos, targets, limit)
        self.val_set = PositionDataset(self.bundles, val_pos, targets, limit)

    @property
    def train_targets(self) -> torch.Tensor:
        """(n_train, E [+ 1]) targets of the training positions."""
        return self.train_set.tensors[1] if self.on_features else self.train_set.targets

    def use_ring_statistics(self, stats: np.ndarray, features_from_rings: Callable,
                            n_statistics: int) -> None:
        """Train on precomputed ring statistics instead of the patterns (the fused path).

        Parameters
        ----------
        stats : ndarray, shape (N, S * R), float32
            Ring statistics of every position of :attr:`bundles`, bundle
            after bundle (:func:`stem2eds.features.cache.ring_statistics_cache`,
            memory-mapped).
        features_from_rings : callable
            (n, S, R) statistics -> the model's front-end features
            (:meth:`stem2eds.models.rings.RingFrontend.features_from_rings`).
        n_statistics : int
            S.
        """
        self._rings = (stats, features_from_rings, int(n_statistics))

    def cache_frontend(self, frontend: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the patterns by ``frontend(patterns)``, computed once.

        With ring statistics given (:meth:`use_ring_statistics`) the features
        come from them (``frontend`` must be the model's front end on patterns,
        of which they are the fused form); otherwise ``frontend`` runs over
        the patterns (:func:`map_dataset`).
        """
        self.setup()
        if self._rings is None:
            self.train_set = map_dataset(frontend, self.train_set)
            self.val_set = map_dataset(frontend, self.val_set)
        else:
            self.train_set = self._ring_dataset(self.train_set)
            self.val_set = self._ring_dataset(self.val_set)
        self.on_features = True

    def _ring_dataset(self, dataset: "PositionDataset") -> TensorDataset:
        """(features, targets) of a dataset's positions from the ring statistics."""
        stats, features_from_rings, n_stats = self._rings
        sizes = []
        for p in self.bundles:
            with open_bundle(p) as scan:
                sizes.append(scan.n_patterns)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        rows = np.concatenate([offsets[i] + pos for i, pos in enumerate(dataset.positions)])
        if len(stats) != int(np.sum(sizes)):
            raise InputError(f"{len(stats)} cached ring statistics for {int(np.sum(sizes))} "
                             "positions of the preprocessed bundles")
        x = torch.from_numpy(np.asarray(stats[np.sort(rows)], dtype=np.float32))
        x = x[torch.from_numpy(np.argsort(np.argsort(rows)))]  # back to dataset order
        with torch.inference_mode():
            feats = features_from_rings(x.reshape(len(rows), n_stats, -1))
        return TensorDataset(feats.clone(), dataset.targets.clone())

    def _workers(self) -> int:
        # Features are in memory already: worker processes would only add overhead.
        return 0 if self.on_features else self.config.num_workers

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.config.batch_size, True, self.config.seed,
                           self._workers())

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, 1024, False, self.config.seed, self._workers())
