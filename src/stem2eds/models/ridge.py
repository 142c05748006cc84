"""Baseline: radial profile + linear regression (scikit-learn ``RidgeCV``).

What a linear model on the azimuthal average can do shows what the neural
networks add. The model is fitted in closed form by scikit-learn (alpha
chosen by efficient leave-one-out cross-validation) and its coefficients are
copied into a torch module, so prediction, saving (safetensors) and devices
work exactly as for the networks.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .rings import RingStatistics

#: Regularisation strengths tried by cross-validation.
ALPHAS = tuple(float(a) for a in np.logspace(-4, 4, 17))


class RidgeRadial(nn.Module):
    """Linear map from the log radial profile to the targets.

    Parameters
    ----------
    input_shape : (Qx, Qy)
        Detector shape of the preprocessed patterns.
    n_outputs : int
        Number of regressed values.
    alphas : sequence of float
        Ridge strengths tried by cross-validation in :meth:`fit`.

    Notes
    -----
    Input (n, Qx, Qy); output (n, n_outputs). Untrained until :meth:`fit`.
    """

    name = "ridge"
    #: Per-pattern predictions, unfiltered unless the run asks (``TrainConfig.filter_predictions``).
    filter_predictions = False
    trainable = False

    def __init__(self, input_shape: tuple[int, int], n_outputs: int,
                 alphas: Sequence[float] = ALPHAS):
        super().__init__()
        self.hparams: dict[str, Any] = dict(alphas=[float(a) for a in alphas])
        self.rings = RingStatistics(tuple(input_shape), ("mean",))
        r = self.rings.n_rings
        self.register_buffer("feature_mean", torch.zeros(r))
        self.register_buffer("feature_scale", torch.ones(r))
        self.register_buffer("weight", torch.zeros(n_outputs, r))
        self.register_buffer("bias", torch.zeros(n_outputs))
        self.register_buffer("alpha", torch.tensor(float("nan")))

    def features(self, patterns: torch.Tensor) -> torch.Tensor:
        """Log radial profile, shape (n, R)."""
        return torch.log(self.rings(patterns)[:, 0] + 1e-5)

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        x = (self.features(patterns) - self.feature_mean) / self.feature_scale
        return x @ self.weight.T + self.bias

    def fit(self, features: np.ndarray, targets: np.ndarray,
            sample_weight: np.ndarray | None = None) -> "RidgeRadial":
        """Fit on precomputed features.

        Parameters
        ----------
        features : ndarray, shape (n, R)
            Output of :meth:`features` for the training patterns.
        targets : ndarray, shape (n, n_outputs)
        sample_weight : ndarray, shape (n,), optional
        """
        from sklearn.linear_model import RidgeCV

        x = np.asarray(features, dtype=np.float64)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale == 0] = 1.0  # constant rings (e.g. the removed beam) carry nothing
        reg = RidgeCV(alphas=self.hparams["alphas"])
        reg.fit((x - mean) / scale, np.asarray(targets, dtype=np.float64),
                sample_weight=sample_weight)
        with torch.no_grad():
            self.feature_mean.copy_(torch.from_numpy(mean))
            self.feature_scale.copy_(torch.from_numpy(scale))
            self.weight.copy_(torch.from_numpy(np.atleast_2d(reg.coef_)))
            self.bias.copy_(torch.from_numpy(np.atleast_1d(reg.intercept_)))
            self.alpha.fill_(float(reg.alpha_))
        return self
