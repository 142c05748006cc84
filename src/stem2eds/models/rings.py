"""Azimuthal statistics of diffraction patterns as a fixed torch layer.

Diffraction from amorphous and polycrystalline material is close to
rotation-invariant about the unscattered beam, so the intensity as a function
of scattering angle (one ring per detector-pixel radius) carries most of the
signal. Per ring we take the mean (the radial profile), the standard
deviation and the maximum: Bragg spots from crystallites raise the latter two
while barely moving the mean.

Written in torch rather than with ``stem2eds.preprocess.radial_profile``
(numpy) because the statistics sit inside the models: they run on the same
device as the network, in the same batches, and the maximum passes gradients.
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .numpy_head import NumpyRingHead

#: The statistics :class:`RingStatistics` can compute, in this order.
STATISTICS = ("mean", "std", "max")


def ring_index(detector_shape: tuple[int, int]) -> torch.Tensor:
    """Ring number of every detector pixel about the detector centre.

    Parameters
    ----------
    detector_shape : (Qx, Qy)

    Returns
    -------
    Tensor, shape (Qx * Qy,), int64
        ``floor(r)`` with ``r`` the distance in pixels from the centre
        ``((Qx - 1) / 2, (Qy - 1) / 2)`` of centred patterns.
    """
    qx, qy = detector_shape
    rows = torch.arange(qx, dtype=torch.float64) - (qx - 1) / 2
    cols = torch.arange(qy, dtype=torch.float64) - (qy - 1) / 2
    radius = torch.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2)
    return radius.floor().long().reshape(-1)


def n_rings(detector_shape: tuple[int, int]) -> int:
    """Number of rings :func:`ring_index` produces (up to the detector corners)."""
    qx, qy = detector_shape
    return int(math.floor(math.hypot((qx - 1) / 2, (qy - 1) / 2))) + 1


class RingStatistics(nn.Module):
    """Per-ring mean, standard deviation and maximum of centred patterns.

    The mean and the mean of squares are one matrix product each with a fixed
    (Qx*Qy, R) averaging matrix; the maximum is a ``scatter_reduce``. No
    per-pattern Python loop.

    Parameters
    ----------
    detector_shape : (Qx, Qy)
        Shape of the (centred, binned) patterns.
    statistics : sequence of {"mean", "std", "max"}
        Which statistics to return, in this order.

    Notes
    -----
    Input: (n, Qx, Qy) float patterns. Output: (n, S, R) with S the number of
    statistics and R = :func:`n_rings`.
    """

    def __init__(self, detector_shape: tuple[int, int],
                 statistics: tuple[str, ...] = ("mean", "std", "max")):
        super().__init__()
        unknown = set(statistics) - set(STATISTICS)
        if unknown:
            raise ValueError(f"unknown ring statistics {sorted(unknown)}")
        self.detector_shape = tuple(int(v) for v in detector_shape)
        self.statistics = tuple(statistics)
        index = ring_index(self.detector_shape)
        rings = n_rings(self.detector_shape)
        counts = torch.bincount(index, minlength=rings).double()
        average = torch.zeros(index.numel(), rings, dtype=torch.float64)
        average[torch.arange(index.numel()), index] = 1.0
        average /= counts.clamp(min=1)
        # Buffers (not parameters): moved with .to(device); not persistent, so
        # not saved with the weights (they follow from the detector shape).
        self.register_buffer("average", average.float(), persistent=False)
        self.register_buffer("index", index, persistent=False)
        self.n_rings = rings

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        flat = patterns.reshape(patterns.shape[0], -1)
        mean = flat @ self.average
        out = []
        for name in self.statistics:
            if name == "mean":
                out.append(mean)
            elif name == "std":
                mean_sq = (flat * flat) @ self.average
                # Clamp before sqrt: rounding can make the variance slightly negative,
                # and sqrt'(0) is infinite, so add a tiny floor for the gradient.
                out.append(torch.sqrt((mean_sq - mean * mean).clamp(min=0) + 1e-12))
            else:
                index = self.index.expand(flat.shape[0], -1)
                peak = torch.zeros(flat.shape[0], self.n_rings, dtype=flat.dtype,
                                   device=flat.device)
                out.append(peak.scatter_reduce(1, index, flat, reduce="amax",
                                               include_self=False))
        return torch.stack(out, dim=1)


class RingFrontend(metaclass=abc.ABCMeta):
    """Capability: the model starts with :class:`RingStatistics` of the preprocessed patterns.

    Such a model can be fed ring statistics computed elsewhere, straight
    from the raw patterns (the fused path, :func:`stem2eds.features.ring_features`
    and :mod:`stem2eds.features.torch_rings`): prediction and training then
    never form the centred, binned patterns. For every batch ``x`` of
    preprocessed patterns,
    ``model(x) == model.forward_rings(RingStatistics(shape, model.ring_statistics)(x))``.
    """

    @property
    @abc.abstractmethod
    def ring_statistics(self) -> tuple[str, ...]:
        """The statistics the model's :class:`RingStatistics` computes, in order."""

    @abc.abstractmethod
    def features_from_rings(self, stats: torch.Tensor) -> torch.Tensor:
        """(n, S, R) ring statistics -> the model's front-end features.

        What ``frontend`` (a :class:`~stem2eds.models.base.FixedFrontend`) or
        ``features`` (a :class:`~stem2eds.models.base.ClosedFormModel`) returns
        for the patterns the statistics were taken of.
        """

    @abc.abstractmethod
    def forward_rings(self, stats: torch.Tensor) -> torch.Tensor:
        """(n, S, R) ring statistics -> (n, n_outputs), as ``forward`` on the patterns."""

    @abc.abstractmethod
    def numpy_head(self) -> NumpyRingHead:
        """The model's :meth:`forward_rings` as a torch-free recipe (current weights).

        Written into the run folder at training time (``head.npz``) so that
        CPU prediction need not import torch; ``numpy_head().forward_rings``
        equals :meth:`forward_rings` in eval mode within float32 rounding.
        """
