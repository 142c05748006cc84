"""The default model: the log radial profile, a ridge-initialised linear map
and a small neural correction on top of it.

Why this design (numbers in the README, "Models"):

* Amorphous and polycrystalline diffraction is close to rotation-invariant,
  so the (Qx, Qy) pattern is first reduced to its azimuthal average (a fixed,
  parameter-free layer, :class:`RingStatistics`), log-compressed because
  intensities fall by decades with q. A 2D CNN spends most of its weights
  and time learning an invariance the physics already gives.
* On unseen scans a linear model of the log profile is a strong baseline
  (the ``ridge`` model): composition moves the peak positions and heights of
  I(q) nearly linearly. Pure networks fit the training scan better but
  extrapolate worse. So the output is ``linear(x) + correction(x)``, where
  the linear map starts at the closed-form ridge solution of the training
  data (:meth:`RadialNet.init_from_data`) and the correction, a small MLP,
  starts at zero. Training (Adam, early stopping on validation loss) then
  only moves away from the ridge solution as far as validation data
  support, and learns the non-linear part (e.g. the weak Si signal) on top.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ._radial import RingStatistics
from .ridge import ALPHAS


class RadialNet(nn.Module):
    """Log ring statistics -> ridge-initialised linear map + MLP correction.

    Parameters
    ----------
    input_shape : (Qx, Qy)
        Detector shape of the preprocessed (centred, binned) patterns.
    n_outputs : int
        Number of regressed values (EDS elements, plus one for HAADF).
    hidden : int
        Width of the hidden layers of the correction MLP.
    n_hidden : int
        Number of hidden layers of the correction MLP.
    dropout : float
        Dropout after the first hidden layer.
    statistics : tuple of str
        Ring statistics used (see :class:`RingStatistics`). The default is the
        mean only: the standard deviation and maximum respond to crystalline
        grains, whose number differs from scan to scan, and lowered the
        accuracy on unseen scans in our benchmark.
    normalise : bool
        Subtract each pattern's mean log intensity over the rings (removes the
        overall level set by dose and thickness). Off by default: with the
        linear path, the level helped on unseen scans (README, "Models").
    alphas : sequence of float
        Ridge strengths tried by cross-validation for the linear start.

    Notes
    -----
    Input (n, Qx, Qy) float32 patterns in [0, 1]; output (n, n_outputs),
    linear (output activations are applied by the training wrapper).
    """

    name = "radial"
    trainable = True
    #: Predicted EDS maps get the EDS targets' spatial filter (``TrainConfig.filter_predictions``).
    filter_predictions = True
    #: The front end has no parameters, so training may compute it once per
    #: pattern (:meth:`frontend`) and then train :meth:`forward_features` only.
    fixed_frontend = True

    def __init__(self, input_shape: tuple[int, int], n_outputs: int, hidden: int = 64,
                 n_hidden: int = 2, dropout: float = 0.1,
                 statistics: tuple[str, ...] = ("mean",), normalise: bool = False,
                 alphas: Sequence[float] = ALPHAS):
        super().__init__()
        if n_hidden < 1 or hidden < 1:
            raise ValueError("hidden and n_hidden must be at least 1")
        self.hparams: dict[str, Any] = dict(hidden=hidden, n_hidden=n_hidden, dropout=dropout,
                                            statistics=list(statistics),
                                            normalise=bool(normalise),
                                            alphas=[float(a) for a in alphas])
        self.normalise = bool(normalise)
        self.rings = RingStatistics(tuple(input_shape), tuple(statistics))
        n_features = len(statistics) * self.rings.n_rings
        # Fixed standardisation of each (statistic, ring) feature, set from the
        # training data by init_from_data (saved with the weights).
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        self.linear = nn.Linear(n_features, n_outputs)
        layers: list[nn.Module] = [nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout)]
        for _ in range(n_hidden - 1):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        layers.append(nn.Linear(hidden, n_outputs))
        self.correction = nn.Sequential(*layers)

    @property
    def output_layer(self) -> nn.Linear:
        """The linear map (its bias is set to the target means before training)."""
        return self.linear

    def frontend(self, patterns: torch.Tensor) -> torch.Tensor:
        """Log ring statistics, (n, Qx, Qy) -> (n, S, R); fixed, no parameters."""
        feats = torch.log(self.rings(patterns) + 1e-5)
        if self.normalise:
            feats = feats - feats.mean(dim=2, keepdim=True)
        return feats

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Trainable part: (n, S, R) front-end features -> (n, n_outputs)."""
        x = (feats.reshape(len(feats), -1) - self.feature_mean) / self.feature_scale
        return self.linear(x) + self.correction(x)

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.frontend(patterns))

    @torch.no_grad()
    def init_from_data(self, features: torch.Tensor, targets: torch.Tensor) -> float:
        """Start from the ridge solution of the training data.

        Sets the feature standardisation, fits scikit-learn's ``RidgeCV``
        (alpha by leave-one-out cross-validation) from the standardised
        features to the targets, copies it into the linear map and zeroes
        the correction's output layer, so the untrained model *is* the
        ridge baseline.

        Parameters
        ----------
        features : Tensor, shape (n, S, R)
            :meth:`frontend` of the training patterns.
        targets : Tensor, shape (n, n_outputs)
            Training targets (in the units the model regresses).

        Returns
        -------
        float
            The ridge strength chosen.
        """
        from sklearn.linear_model import RidgeCV

        x = features.reshape(len(features), -1).double().cpu().numpy()
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale == 0] = 1.0  # constant rings (e.g. the removed beam) carry nothing
        reg = RidgeCV(alphas=self.hparams["alphas"])
        reg.fit((x - mean) / scale, targets.double().cpu().numpy())
        self.feature_mean.copy_(torch.from_numpy(mean))
        self.feature_scale.copy_(torch.from_numpy(scale))
        self.linear.weight.copy_(torch.from_numpy(np.atleast_2d(reg.coef_)))
        self.linear.bias.copy_(torch.from_numpy(np.atleast_1d(reg.intercept_)))
        self.correction[-1].weight.zero_()
        self.correction[-1].bias.zero_()
        return float(reg.alpha_)
