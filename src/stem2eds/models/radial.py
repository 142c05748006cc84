"""The default model: log ring statistics, a ridge-initialised linear map, a small
MLP correction, and predictions filtered like the targets.

Why this design (the measurements are in the documentation, "Models"):

* Amorphous and polycrystalline diffraction is close to rotation-invariant,
  so the (Qx, Qy) pattern is first reduced to per-ring statistics (a fixed,
  parameter-free layer, :class:`~stem2eds.models.rings.RingStatistics`),
  log-compressed because intensities fall by decades with q. There are no
  convolutions: the invariance the physics gives need not be learned.
* On unseen scans a linear model of the log profile is a strong baseline
  (the ``ridge`` model): composition moves the peak positions and heights of
  I(q) nearly linearly. The linear map starts at the closed-form ridge
  solution of the training data (:meth:`RadialNet.init_from_data`) and is
  then trained (Adam, early stopping on validation loss) in units of each
  target's standard deviation, so that Adam's fixed step size does not
  swamp a small fraction while it tunes a large one.
* A small MLP correction on top (``n_hidden`` hidden layers, output started
  at zero) learns the non-linear part; ``n_hidden = 0`` gives the linear
  model (``benchmarks/ablation_heads.py`` compares both).
* The EDS targets are filtered maps (the paper's 7x7 Gaussian), so the run
  filters the predicted maps the same way (``filter_predictions = True``,
  applied by :meth:`stem2eds.predict.predictor.Predictor.finish_eds`):
  neighbouring patterns average out the noise of a single pattern, as the
  filter averaged the EDS counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..features.normalise import normalise_mode
from .base import FixedFrontend, ModelParams, StemModel
from .ridge import ALPHAS, LOG_OFFSET, ridge_fit
from .rings import STATISTICS, RingFrontend, RingStatistics

if TYPE_CHECKING:
    from .numpy_head import NumpyRingHead


@dataclass(frozen=True)
class RadialParams(ModelParams):
    """Hyperparameters of :class:`RadialNet` (``model_params`` of a ``radial`` run).

    Attributes
    ----------
    hidden : int
        Width of the hidden layers of the correction MLP.
    n_hidden : int
        Number of hidden layers of the correction MLP; 0: no correction, the
        model is linear in the log ring statistics.
    dropout : float
        Dropout after the first hidden layer.
    statistics : tuple of str
        Ring statistics used (see :class:`RingStatistics`). The default is the
        mean only: the standard deviation and maximum respond to crystalline
        grains, whose number differs from scan to scan, and lowered the
        accuracy on unseen scans in our benchmark.
    normalise : {"pattern", "scan", "none"}
        What cancels the overall intensity level set by dose and thickness.
        ``"pattern"`` (the default; ``true`` in runs made before the choice)
        subtracts each pattern's mean log intensity over the rings: the
        predictions then barely move when a scan is recorded at another dose
        or film thickness, but the intensity differences between the
        positions of a scan, which carry composition (Si most), are lost too.
        ``"scan"`` divides the ring statistics of every scan by the scan's
        own reference intensity (:func:`stem2eds.features.normalise.scan_reference`,
        the geometric mean over all its positions) and keeps the differences
        between positions; a whole scan at another dose predicts the same,
        but a dose that drifts during the scan is not cancelled, and a scan
        must be predicted whole (not frame by frame: no LiberTEM or live
        prediction). ``"none"`` (``false``) keeps the absolute level.
        Runs store it and keep predicting the way they were trained
        (docs, "Other detector setups, dose and OOD").
    alphas : tuple of float
        Ridge strengths tried by cross-validation for the linear start.
    """

    hidden: int = 64
    n_hidden: int = 2
    dropout: float = 0.1
    statistics: tuple[str, ...] = ("mean",)
    normalise: str | bool = "pattern"  # bool: what runs stored before "scan" existed
    alphas: tuple[float, ...] = ALPHAS

    def __post_init__(self):
        object.__setattr__(self, "normalise", normalise_mode(self.normalise))
        if not (0 <= self.n_hidden <= 64 and 1 <= self.hidden <= 65536):
            raise ValueError("hidden must be in 1..65536 and n_hidden in 0..64")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        unknown = sorted(set(self.statistics) - set(STATISTICS))
        if unknown or not self.statistics:
            raise ValueError(f"statistics must be some of {', '.join(STATISTICS)}, "
                             f"got {list(self.statistics)}")
        if not self.alphas or any(not a > 0 for a in self.alphas):
            raise ValueError("alphas must be positive numbers")


class RingHeadNet(StemModel, FixedFrontend):
    """Log ring statistics -> ridge-initialised linear map (+ optional MLP correction).

    The trainable head of :class:`RadialNet`, shared with models whose front
    end adds features after the ring statistics (:meth:`extra_features`,
    e.g. :class:`~stem2eds.models.angular.AngularNet`); only :class:`RadialNet`,
    whose features are the ring statistics alone, is a :class:`RingFrontend`
    (the fused path).

    Parameters
    ----------
    input_shape : (Qx, Qy)
        Detector shape of the preprocessed (centred, binned) patterns.
    n_outputs : int
        Number of regressed values (EDS elements, plus one for HAADF).
    params : RadialParams

    Notes
    -----
    Input (n, Qx, Qy) float32 patterns in [0, 1] (up to the moving dose cap of
    :class:`~stem2eds.preprocess.PreprocessSettings`, ``dose_ceiling``); output (n, n_outputs),
    linear (output activations are applied by the training wrapper), in the
    targets' units: the trainable layers work in standard deviations of each
    target (buffers ``target_mean``, ``target_scale``, set by
    :meth:`init_from_data`).
    """

    name = "radial"
    Params = RadialParams
    #: Predicted EDS maps get the EDS targets' spatial filter (``TrainConfig.filter_predictions``).
    filter_predictions = True

    def __init__(self, input_shape: tuple[int, int], n_outputs: int,
                 params: RadialParams = RadialParams()):
        super().__init__(input_shape, n_outputs, params)
        hidden, n_hidden, dropout = params.hidden, params.n_hidden, params.dropout
        self.normalise = params.normalise
        self.rings = RingStatistics(tuple(input_shape), params.statistics)
        n_features = (len(params.statistics) * self.rings.n_rings
                      + self.extra_features(tuple(input_shape), params))
        # Fixed standardisation of each (statistic, ring) feature, set from the
        # training data by init_from_data (persistent: saved with the weights).
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        # Output units: the trainable layers predict (y - target_mean) / target_scale.
        self.register_buffer("target_mean", torch.zeros(n_outputs))
        self.register_buffer("target_scale", torch.ones(n_outputs))
        self.linear = nn.Linear(n_features, n_outputs)
        self.correction: nn.Sequential | None = None
        if n_hidden:
            layers: list[nn.Module] = [nn.Linear(n_features, hidden), nn.ReLU(),
                                       nn.Dropout(dropout)]
            for _ in range(n_hidden - 1):
                layers += [nn.Linear(hidden, hidden), nn.ReLU()]
            layers.append(nn.Linear(hidden, n_outputs))
            self.correction = nn.Sequential(*layers)

    def extra_features(self, input_shape: tuple[int, int], params: RadialParams) -> int:
        """Features a subclass's front end adds after the ring statistics (none here)."""
        return 0

    @property
    def output_layer(self) -> nn.Linear:
        """The linear map (:meth:`init_from_data` sets it to the ridge solution)."""
        return self.linear

    def start_from_data(self, features: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """The ridge start (:meth:`init_from_data`); returns ``{"ridge_alpha": alpha}``."""
        return {"ridge_alpha": self.init_from_data(features, targets)}

    def frontend(self, patterns: torch.Tensor) -> torch.Tensor:
        """Log ring statistics, (n, Qx, Qy) -> (n, S, R); fixed, no parameters."""
        return self.features_from_rings(self.rings(patterns))

    def features_from_rings(self, stats: torch.Tensor) -> torch.Tensor:
        """(n, S, R) ring statistics -> (n, S, R) log features (:meth:`frontend`)."""
        feats = torch.log(stats + LOG_OFFSET)
        if self.normalise == "pattern":
            feats = feats - feats.mean(dim=2, keepdim=True)
        return feats

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Trainable part: (n, S, R) front-end features -> (n, n_outputs)."""
        x = (feats.reshape(len(feats), -1) - self.feature_mean) / self.feature_scale
        z = self.linear(x)
        if self.correction is not None:
            z = z + self.correction(x)
        return z * self.target_scale + self.target_mean

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        """(n, Qx, Qy) patterns -> (n, n_outputs), in target units."""
        return self.forward_features(self.frontend(patterns))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Runs saved before the output standardisation existed predicted in
        # target units directly: load them with the identity (mean 0, scale 1).
        for name, value in (("target_mean", 0.0), ("target_scale", 1.0)):
            state_dict.setdefault(prefix + name, torch.full_like(getattr(self, name), value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def init_from_data(self, features: torch.Tensor, targets: torch.Tensor) -> float:
        """Start from the ridge solution of the training data.

        Sets the feature and target standardisation, fits scikit-learn's
        ``RidgeCV`` (alpha by leave-one-out cross-validation) from the
        standardised features to the targets, copies it (in target standard
        deviations) into the linear map and zeroes the correction's output
        layer, so the untrained model *is* the ridge baseline.

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
        x = features.reshape(len(features), -1).double().cpu().numpy()
        y = targets.double().cpu().numpy()
        mean, scale, coef, intercept, alpha = ridge_fit(x, y, self.params.alphas)
        y_mean = y.mean(axis=0)
        y_scale = y.std(axis=0)
        y_scale[~(y_scale > 0)] = 1.0  # a constant target: keep its units
        self.feature_mean.copy_(torch.from_numpy(mean))
        self.feature_scale.copy_(torch.from_numpy(scale))
        self.target_mean.copy_(torch.from_numpy(y_mean))
        self.target_scale.copy_(torch.from_numpy(y_scale))
        self.linear.weight.copy_(torch.from_numpy(coef / y_scale[:, None]))
        self.linear.bias.copy_(torch.from_numpy((intercept - y_mean) / y_scale))
        if self.correction is not None:
            self.correction[-1].weight.zero_()
            self.correction[-1].bias.zero_()
        return alpha


class RadialNet(RingHeadNet, RingFrontend):
    """The default model: :class:`RingHeadNet` on the ring statistics alone.

    Its features follow from the ring statistics of the preprocessed patterns,
    so prediction and training can compute those straight from the raw
    patterns (:class:`~stem2eds.models.rings.RingFrontend`, the fused path).
    """

    name = "radial"
    Params = RadialParams
    filter_predictions = True

    @property
    def ring_statistics(self) -> tuple[str, ...]:
        return self.rings.statistics

    def forward_rings(self, stats: torch.Tensor) -> torch.Tensor:
        """(n, S, R) ring statistics -> (n, n_outputs), as :meth:`forward` on the patterns."""
        return self.forward_features(self.features_from_rings(stats))

    def numpy_head(self) -> NumpyRingHead:
        """:meth:`forward_rings` as a torch-free recipe (:mod:`~stem2eds.models.numpy_head`)."""
        from .numpy_head import NumpyRingHead

        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().float().numpy().copy()

        correction = []
        if self.correction is not None:
            layers = list(self.correction)
            linear = [m for m in layers if isinstance(m, nn.Linear)]
            # the recipe knows Linear, ReLU between them, and Dropout (identity in eval)
            if not all(isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout)) for m in layers) \
                    or sum(isinstance(m, nn.ReLU) for m in layers) != len(linear) - 1 \
                    or not isinstance(layers[-1], nn.Linear):
                raise TypeError("the correction is not a ReLU MLP the numpy head can evaluate")
            correction = [(array(m.weight), array(m.bias)) for m in linear]
        return NumpyRingHead(
            model=self.name, statistics=tuple(self.ring_statistics),
            normalise=self.normalise, log_offset=LOG_OFFSET,
            feature_mean=array(self.feature_mean), feature_scale=array(self.feature_scale),
            linear_weight=array(self.linear.weight), linear_bias=array(self.linear.bias),
            target_mean=array(self.target_mean), target_scale=array(self.target_scale),
            correction=tuple(correction))
