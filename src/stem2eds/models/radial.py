"""The default model: azimuthal ring statistics followed by a small 1D CNN.

Why this design: amorphous and polycrystalline diffraction is nearly
rotation-invariant, so a 2D CNN spends most of its weights and time learning
an invariance the physics already gives. Here the (Qx, Qy) pattern is reduced
to per-ring statistics (the mean, i.e. the radial profile, by default; the
standard deviation and maximum, which Bragg spots raise, on request) by a
fixed, parameter-free layer (:class:`RingStatistics`), log-compressed,
normalised to the profile's shape and standardised, and a 1D convolution
along the scattering angle followed by a small dense head regresses the
targets. Tens of thousands of weights instead of hundreds of
thousands: it trains in minutes on a CPU and overfits one scan less.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._radial import RingStatistics


class RadialNet(nn.Module):
    """Ring statistics -> 1D CNN along q -> dense head.

    Parameters
    ----------
    input_shape : (Qx, Qy)
        Detector shape of the preprocessed (centred, binned) patterns.
    n_outputs : int
        Number of regressed values (EDS elements, plus one for HAADF).
    channels : int
        Feature maps of each 1D convolution.
    n_conv : int
        Number of 1D convolution layers (kernel 5, stride 1).
    hidden : int
        Width of the dense hidden layer.
    dropout : float
        Dropout before the output layer.
    statistics : tuple of str
        Ring statistics used (see :class:`RingStatistics`). The default is the
        mean only: the standard deviation and maximum respond to crystalline
        grains, whose number differs from scan to scan, and lowered the
        accuracy on unseen scans in our benchmark.
    normalise : bool
        Subtract each pattern's mean log intensity over the rings, so the
        model sees the shape of the profile, not its overall level (dose,
        thickness). This gave the largest gain on unseen scans.
    linear_skip : bool
        Add a linear path from the standardised features to the outputs.

    Notes
    -----
    Input (n, Qx, Qy) float32 patterns in [0, 1]; output (n, n_outputs),
    linear (output activations are applied by the training wrapper).
    """

    name = "radial"
    trainable = True

    def __init__(self, input_shape: tuple[int, int], n_outputs: int, channels: int = 24,
                 n_conv: int = 3, hidden: int = 64, dropout: float = 0.1,
                 statistics: tuple[str, ...] = ("mean",), normalise: bool = True,
                 linear_skip: bool = False):
        super().__init__()
        self.hparams: dict[str, Any] = dict(channels=channels, n_conv=n_conv, hidden=hidden,
                                            dropout=dropout, statistics=list(statistics),
                                            normalise=bool(normalise),
                                            linear_skip=bool(linear_skip))
        self.normalise = bool(normalise)
        self.rings = RingStatistics(tuple(input_shape), tuple(statistics))
        n_stats, n_rings = len(statistics), self.rings.n_rings
        # Standardise each (statistic, ring) feature: intensities fall by decades with q.
        self.norm = nn.BatchNorm1d(n_stats * n_rings)
        layers: list[nn.Module] = []
        width = n_stats
        for _ in range(n_conv):
            layers += [nn.Conv1d(width, channels, kernel_size=5, padding=2), nn.ReLU()]
            width = channels
        self.conv = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(width * n_rings, hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, n_outputs))
        # Optional linear path from the standardised features straight to the
        # outputs: the network then learns a correction to a linear model.
        self.skip = nn.Linear(n_stats * n_rings, n_outputs, bias=False) if linear_skip else None

    @property
    def output_layer(self) -> nn.Linear:
        """The final dense layer (its bias is set to the target means before training)."""
        return self.head[-1]

    #: The front end has no parameters, so training may compute it once per
    #: pattern (:meth:`frontend`) and then train :meth:`forward_features` only.
    fixed_frontend = True

    def frontend(self, patterns: torch.Tensor) -> torch.Tensor:
        """Log ring statistics, (n, Qx, Qy) -> (n, S, R); fixed, no parameters."""
        # log compresses the decades of intensity between low and high q.
        feats = torch.log(self.rings(patterns) + 1e-5)
        if self.normalise:
            # Dose and film thickness scale a whole pattern; composition sets the
            # shape of I(q). Removing each pattern's mean log level keeps the shape.
            feats = feats - feats.mean(dim=2, keepdim=True)
        return feats

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Trainable part: (n, S, R) front-end features -> (n, n_outputs)."""
        n, s, r = feats.shape
        flat = self.norm(feats.reshape(n, s * r))
        out = self.head(self.conv(flat.reshape(n, s, r)))
        return out if self.skip is None else out + self.skip(flat)

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.frontend(patterns))
