"""A model that looks at the 2D pattern beyond ring means: angular moments of the rings.

The default model (:mod:`.radial`) reduces each pattern to its radial profile,
which is exact for a perfectly isotropic amorphous film. Real nanobeam patterns
are not: speckle from the finite probe volume, medium-range order and small
crystallites make each ring anisotropic, and how anisotropic depends on what
is ordered, i.e. on composition. The rotation-invariant way to keep that signal
is the magnitude of the angular Fourier components of every ring band,

    A_k(q) = | sum_{pixels in band q} I(p) exp(i k theta_p) | / sum I(p),

for even orders k (Friedel symmetry makes odd orders vanish on average). Its
magnitude does not change when the sample is rotated, so nothing has to be
learned about orientation; the log ring means of the default model are kept,
and the moments are appended as further features of the same ridge-initialised
linear map + MLP correction (:class:`~.radial.RadialNet`).

Computed as two fixed matrix products per pattern batch (cosine and sine
weights per pixel and band), like the ring statistics: no per-pattern loop,
any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .radial import RadialParams, RingHeadNet
from .rings import n_rings, ring_index


@dataclass(frozen=True)
class AngularParams(RadialParams):
    """Hyperparameters of :class:`AngularNet` (``model_params`` of an ``angular`` run).

    Attributes
    ----------
    orders : tuple of int
        Angular orders k of the moments (even, >= 2).
    band : int
        Width of a ring band in (binned) detector pixels for the moments; wider
        bands average the speckle's Poisson noise over more pixels.
    (the rest as :class:`~.radial.RadialParams`)
    """

    orders: tuple[int, ...] = (2, 4, 6)
    band: int = 2

    def __post_init__(self):
        super().__post_init__()
        if not self.orders or any(int(k) != k or k < 2 or k % 2 for k in self.orders):
            raise ValueError(f"orders must be even integers >= 2, got {list(self.orders)}")
        if not 1 <= self.band <= 64:
            raise ValueError(f"band must be in 1..64, got {self.band}")


class AngularMoments(nn.Module):
    """Relative angular Fourier magnitudes of ring bands of centred patterns.

    Parameters
    ----------
    detector_shape : (Qx, Qy)
        Shape of the centred (binned) patterns.
    orders : sequence of int
        Angular orders k.
    band : int
        Band width in pixels.

    Notes
    -----
    Input (n, Qx, Qy) float patterns; output (n, K, B) with K orders and
    B = ceil(R / band) bands (R from :func:`~.rings.n_rings`).
    """

    def __init__(self, detector_shape: tuple[int, int], orders=(2, 4, 6), band: int = 2):
        super().__init__()
        qx, qy = (int(v) for v in detector_shape)
        bands = ring_index((qx, qy)) // int(band)
        self.n_bands = int(math.ceil(n_rings((qx, qy)) / int(band)))
        rows = torch.arange(qx, dtype=torch.float64) - (qx - 1) / 2
        cols = torch.arange(qy, dtype=torch.float64) - (qy - 1) / 2
        theta = torch.atan2(rows[:, None].expand(qx, qy), cols[None, :].expand(qx, qy)).reshape(-1)
        pixels = torch.arange(bands.numel())
        weights = torch.zeros(len(orders) * 2 + 1, bands.numel(), self.n_bands,
                              dtype=torch.float64)
        weights[0, pixels, bands] = 1.0
        for j, k in enumerate(orders):
            weights[1 + 2 * j, pixels, bands] = torch.cos(k * theta)
            weights[2 + 2 * j, pixels, bands] = torch.sin(k * theta)
        # one (P, (2K+1) B) matrix: a single product gives sums, cosine and sine parts
        matrix = weights.permute(1, 0, 2).reshape(bands.numel(), -1)
        self.register_buffer("matrix", matrix.float(), persistent=False)
        self.n_orders = len(orders)

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        flat = patterns.reshape(patterns.shape[0], -1)
        parts = (flat @ self.matrix).reshape(len(flat), 2 * self.n_orders + 1, self.n_bands)
        total = parts[:, :1].clamp(min=1e-6)
        cos, sin = parts[:, 1::2], parts[:, 2::2]
        return torch.sqrt(cos * cos + sin * sin) / total


class AngularNet(RingHeadNet):
    """Log ring means + log angular moments -> ridge-initialised linear map + MLP correction.

    Parameters
    ----------
    input_shape : (Qx, Qy)
    n_outputs : int
    params : AngularParams

    Notes
    -----
    Input (n, Qx, Qy) float32 centred patterns; output (n, n_outputs) in target
    units (as :class:`~.radial.RadialNet`; not a ring-only front end, so never
    the fused path). The front end gives (n, 1, F) with
    F = S * R + K * B features.
    """

    name = "angular"
    Params = AngularParams
    filter_predictions = True

    def __init__(self, input_shape: tuple[int, int], n_outputs: int,
                 params: AngularParams = AngularParams()):
        super().__init__(input_shape, n_outputs, params)
        self.moments = AngularMoments(tuple(input_shape), params.orders, params.band)

    def extra_features(self, input_shape: tuple[int, int], params: RadialParams) -> int:
        """K orders x B bands of angular moments."""
        assert isinstance(params, AngularParams)
        return len(params.orders) * int(math.ceil(n_rings(input_shape) / int(params.band)))

    def frontend(self, patterns: torch.Tensor) -> torch.Tensor:
        """(n, Qx, Qy) -> (n, 1, F): log ring statistics then log angular moments."""
        radial = super().frontend(patterns).reshape(len(patterns), -1)
        moments = torch.log(self.moments(patterns) + 1e-4).reshape(len(patterns), -1)
        return torch.cat([radial, moments], dim=1)[:, None, :]
