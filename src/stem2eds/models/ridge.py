"""Baseline: radial profile + linear regression (scikit-learn ``RidgeCV``).

What a linear model on the azimuthal average can do shows what the trained
models add. The model is fitted in closed form by scikit-learn (alpha chosen
by efficient leave-one-out cross-validation) and its coefficients are copied
into a torch module, so prediction, saving (safetensors) and devices work
exactly as for the other models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .base import ClosedFormModel, ModelParams, StemModel
from .rings import RingFrontend, RingStatistics

if TYPE_CHECKING:
    from .numpy_head import NumpyRingHead

#: Regularisation strengths tried by cross-validation.
ALPHAS = tuple(float(a) for a in np.logspace(-4, 4, 17))

#: Added to the ring statistics before the log (empty rings stay finite); ``radial`` too.
LOG_OFFSET = 1e-5


def ridge_fit(features: np.ndarray, targets: np.ndarray, alphas, sample_weight=None):
    """Standardise features and fit ``RidgeCV`` (alpha by leave-one-out CV).

    Parameters
    ----------
    features : ndarray, shape (n, F)
    targets : ndarray, shape (n, T)
    alphas : sequence of float
    sample_weight : ndarray, shape (n,), optional

    Returns
    -------
    mean, scale : ndarray, shape (F,)
        Feature standardisation (constant features get scale 1).
    coef : ndarray, shape (T, F)
        Coefficients on the standardised features.
    intercept : ndarray, shape (T,)
    alpha : float
        The ridge strength chosen.
    """
    from sklearn.linear_model import RidgeCV

    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0  # constant rings (e.g. the removed beam) carry nothing
    reg = RidgeCV(alphas=list(alphas))
    reg.fit((x - mean) / scale, np.asarray(targets, dtype=np.float64),
            sample_weight=sample_weight)
    return (mean, scale, np.atleast_2d(reg.coef_), np.atleast_1d(reg.intercept_),
            float(reg.alpha_))


@dataclass(frozen=True)
class RidgeParams(ModelParams):
    """Hyperparameters of :class:`RidgeRadial` (``model_params`` of a ``ridge`` run).

    Attributes
    ----------
    alphas : tuple of float
        Ridge strengths tried by cross-validation in :meth:`RidgeRadial.fit`.
    """

    alphas: tuple[float, ...] = ALPHAS

    def __post_init__(self):
        if not self.alphas or any(not a > 0 for a in self.alphas):
            raise ValueError("alphas must be positive numbers")


class RidgeRadial(StemModel, ClosedFormModel, RingFrontend):
    """Linear map from the log radial profile to the targets.

    Parameters
    ----------
    input_shape : (Qx, Qy)
        Detector shape of the preprocessed patterns.
    n_outputs : int
        Number of regressed values.
    params : RidgeParams

    Notes
    -----
    Input (n, Qx, Qy); output (n, n_outputs). Untrained until :meth:`fit`.
    The coefficients and feature standardisation are persistent buffers,
    saved with the weights.
    """

    name = "ridge"
    Params = RidgeParams
    #: Per-pattern predictions, unfiltered unless the run asks (``TrainConfig.filter_predictions``).
    filter_predictions = False

    def __init__(self, input_shape: tuple[int, int], n_outputs: int,
                 params: RidgeParams = RidgeParams()):
        super().__init__(input_shape, n_outputs, params)
        self.rings = RingStatistics(tuple(input_shape), ("mean",))
        r = self.rings.n_rings
        self.register_buffer("feature_mean", torch.zeros(r))
        self.register_buffer("feature_scale", torch.ones(r))
        self.register_buffer("weight", torch.zeros(n_outputs, r))
        self.register_buffer("bias", torch.zeros(n_outputs))
        self.register_buffer("alpha", torch.tensor(float("nan")))

    def features(self, patterns: torch.Tensor) -> torch.Tensor:
        """Log radial profile: (n, Qx, Qy) -> (n, R)."""
        return self.features_from_rings(self.rings(patterns))

    @property
    def ring_statistics(self) -> tuple[str, ...]:
        return self.rings.statistics

    def features_from_rings(self, stats: torch.Tensor) -> torch.Tensor:
        """(n, 1, R) ring means -> (n, R) log radial profile (:meth:`features`)."""
        return torch.log(stats[:, 0] + LOG_OFFSET)

    def forward_rings(self, stats: torch.Tensor) -> torch.Tensor:
        """(n, 1, R) ring means -> (n, n_outputs), as :meth:`forward` on the patterns."""
        return self.predict_features(self.features_from_rings(stats))

    def numpy_head(self) -> NumpyRingHead:
        """:meth:`forward_rings` as a torch-free recipe (:mod:`~stem2eds.models.numpy_head`)."""
        from .numpy_head import NumpyRingHead

        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().float().numpy().copy()

        n_out = self.weight.shape[0]
        return NumpyRingHead(
            model=self.name, statistics=tuple(self.ring_statistics), normalise=False,
            log_offset=LOG_OFFSET, feature_mean=array(self.feature_mean),
            feature_scale=array(self.feature_scale), linear_weight=array(self.weight),
            linear_bias=array(self.bias), target_mean=np.zeros(n_out, np.float32),
            target_scale=np.ones(n_out, np.float32))

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        """Linear outputs (n, n_outputs) of :meth:`features` (n, R)."""
        x = (features.to(self.weight.dtype) - self.feature_mean) / self.feature_scale
        return x @ self.weight.T + self.bias

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        """(n, Qx, Qy) patterns -> (n, n_outputs)."""
        return self.predict_features(self.features(patterns))

    def fit(self, features: np.ndarray, targets: np.ndarray,
            sample_weight: np.ndarray | None = None) -> "RidgeRadial":
        """Fit on precomputed features.

        Parameters
        ----------
        features : ndarray, shape (n, R)
            Output of :meth:`features` for the training patterns.
        targets : ndarray, shape (n, n_outputs)
        sample_weight : ndarray, shape (n,), optional

        Returns
        -------
        RidgeRadial
            This model, fitted.
        """
        mean, scale, coef, intercept, alpha = ridge_fit(features, targets, self.params.alphas,
                                                        sample_weight)
        with torch.no_grad():
            self.feature_mean.copy_(torch.from_numpy(mean))
            self.feature_scale.copy_(torch.from_numpy(scale))
            self.weight.copy_(torch.from_numpy(coef))
            self.bias.copy_(torch.from_numpy(intercept))
            self.alpha.fill_(alpha)
        return self

    def fit_summary(self) -> dict[str, Any]:
        """``{"method": "closed form (RidgeCV)", "alpha": ...}`` for ``run.json``."""
        return {"method": "closed form (RidgeCV)", "alpha": float(self.alpha)}
