"""The paper's CNN: Conv2D + ReLU + MaxPool blocks, Flatten, Dense, Dropout, Dense.

The reference architecture of "Prediction of EDS Maps from 4DSTEM Diffraction
Patterns Using Convolutional Neural Networks". The paper names the layer
types, not every size; the channel counts below are the usual doubling
scheme, and the number of blocks adapts to the input size so any (Qx, Qy)
works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import ModelParams, StemModel


@dataclass(frozen=True)
class PaperParams(ModelParams):
    """Hyperparameters of :class:`PaperCNN` (``model_params`` of a ``paper`` run).

    Attributes
    ----------
    channels : tuple of int
        Output channels of each Conv2D(3x3) + ReLU + MaxPool(2) block; blocks
        are dropped from the end when the input is too small to pool again.
    dense : int
        Width of the hidden dense layer.
    dropout : float
        Dropout rate before the output layer.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    dense: int = 128
    dropout: float = 0.3

    def __post_init__(self):
        if not (self.channels and all(1 <= c <= 4096 for c in self.channels)
                and len(self.channels) <= 16 and 1 <= self.dense <= 65536):
            raise ValueError("channels must be 1 to 16 widths in 1..4096 and dense in 1..65536")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class PaperCNN(StemModel):
    """2D CNN regressing targets from whole diffraction patterns.

    Parameters
    ----------
    input_shape : (Qx, Qy)
        Detector shape of the preprocessed patterns.
    n_outputs : int
        Number of regressed values.
    params : PaperParams

    Notes
    -----
    Input (n, Qx, Qy) float32; output (n, n_outputs), linear.
    """

    name = "paper"
    Params = PaperParams
    #: Per-pattern predictions, unfiltered unless the run asks (``TrainConfig.filter_predictions``).
    filter_predictions = False

    def __init__(self, input_shape: tuple[int, int], n_outputs: int,
                 params: PaperParams = PaperParams()):
        super().__init__(input_shape, n_outputs, params)
        channels, dense, dropout = params.channels, params.dense, params.dropout
        qx, qy = (int(v) for v in input_shape)
        blocks: list[nn.Module] = []
        width = 1
        for out in channels:
            if min(qx, qy) < 2:
                break
            blocks += [nn.Conv2d(width, out, kernel_size=3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(2)]
            width, qx, qy = out, qx // 2, qy // 2
        if not blocks:
            raise ValueError(f"input {tuple(input_shape)} too small for the paper CNN")
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * qx * qy, dense), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(dense, n_outputs))

    @property
    def output_layer(self) -> nn.Linear:
        """The final dense layer (its bias is set to the target means before training)."""
        return self.head[-1]

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        """(n, Qx, Qy) patterns -> (n, n_outputs)."""
        return self.head(self.features(patterns.unsqueeze(1)))
