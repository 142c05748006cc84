"""HAADF image: incoherent Z-contrast, thickness and grain contrast, detector noise.

High-angle annular dark-field intensity is close to incoherent Rutherford-like
scattering, roughly proportional to ``Z^1.7`` per atom (Hartel et al.,
Ultramicroscopy 63, 93 (1996)) and to the number of atoms under the probe::

    H = t * rho * sum_i c_i Z_i^1.7 * (1 + g * t_grain / t) + noise,

where a crystalline grain scatters more to high angles than the glass
(channelling and thermal diffuse scattering), modelled by the relative
contrast ``g``. The result is scaled so that 30 nm of Ge2Sb2Te5 gives 1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..elements import atomic_number
from .amorphous import ATOMIC_VOLUME

_Z_EXPONENT = 1.7
_GST = {"Ge": 2 / 9, "Sb": 2 / 9, "Te": 5 / 9}


def _z_signal(fractions: dict[str, np.ndarray] | dict[str, float]) -> np.ndarray:
    density = 1.0 / sum(ATOMIC_VOLUME[e] * c for e, c in fractions.items())
    return density * sum(c * atomic_number(e) ** _Z_EXPONENT for e, c in fractions.items())


def haadf_image(composition: np.ndarray, thickness: np.ndarray, elements: Sequence[str],
                rng: np.random.Generator, grain_thickness: np.ndarray | None = None,
                grain_contrast: float = 0.25, noise: float = 0.02) -> np.ndarray:
    """Simulated HAADF image in units of 30 nm of Ge2Sb2Te5.

    Parameters
    ----------
    composition : ndarray, shape (E, Rx, Ry)
        Atomic fractions.
    thickness : ndarray, shape (Rx, Ry)
        Film thickness, nm.
    elements : sequence of str
    rng : numpy.random.Generator
    grain_thickness : ndarray, shape (Rx, Ry), optional
        Crystal thickness under the probe, nm.
    grain_contrast : float
        Extra relative signal of fully crystalline material.
    noise : float
        Standard deviation of the additive Gaussian detector noise, in the
        output units.

    Returns
    -------
    ndarray, shape (Rx, Ry), float32, non-negative
    """
    thickness = np.asarray(thickness, dtype=np.float64)
    signal = thickness * _z_signal({e: composition[i] for i, e in enumerate(elements)})
    if grain_thickness is not None:
        signal = signal * (1.0 + grain_contrast * np.asarray(grain_thickness) / np.maximum(thickness, 1e-9))
    signal /= 30.0 * _z_signal(_GST)
    signal = signal + rng.normal(0.0, noise, size=signal.shape)
    return np.maximum(signal, 0.0).astype(np.float32)
