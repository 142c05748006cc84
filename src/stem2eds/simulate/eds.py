"""EDS: X-ray counts per element and probe position, quantified back to atomic fractions.

The characteristic X-ray count of element i at a probe position is Poisson
distributed with mean::

    N_i = D_x * t * c_i * y_i + B_i,

with ``D_x`` the EDS dose (counts per nm of film of unit yield), ``t`` the
thickness, ``c_i`` the atomic fraction, ``y_i`` a relative yield (ionisation
cross-section x fluorescence yield x detector efficiency: low for O K, whose
soft X-rays are absorbed) and ``B_i`` the bremsstrahlung background under the
peak. Quantification subtracts the expected background and applies the
Cliff-Lorimer ratio method (Cliff & Lorimer, J. Microsc. 103, 203 (1975))::

    c_i = (N_i - B_i) / y_i / sum_j (N_j - B_j) / y_j,

so the maps are grainy, as real low-count EDS maps are.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError

#: Relative X-ray yields (k-factor inverses) per atom: O K, Si K, Ge K (or L), Sb L, Te L.
RELATIVE_YIELD = {"O": 0.35, "Si": 0.9, "Ge": 1.0, "Sb": 0.85, "Te": 0.85}
#: Background under each peak as a fraction of the mean characteristic counts per element.
BACKGROUND_FRACTION = 0.15


def xray_counts(composition: np.ndarray, thickness: np.ndarray, elements: Sequence[str],
                dose: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Poisson X-ray counts of each element at each probe position.

    Parameters
    ----------
    composition : ndarray, shape (E, Rx, Ry)
        True atomic fractions.
    thickness : ndarray, shape (Rx, Ry)
        Film thickness, nm.
    elements : sequence of str
    dose : float
        Counts per nm of film for a pure element of yield 1 (sets the noise).
    rng : numpy.random.Generator

    Returns
    -------
    counts : ndarray of int64, shape (E, Rx, Ry)
    background : ndarray, shape (E,)
        Expected background counts under each peak.
    """
    unknown = [e for e in elements if e not in RELATIVE_YIELD]
    if unknown:
        raise InputError(f"no X-ray yield for {', '.join(unknown)}")
    if dose <= 0:
        raise InputError(f"EDS dose must be positive, got {dose}")
    yields = np.array([RELATIVE_YIELD[e] for e in elements])[:, None, None]
    signal = dose * np.asarray(thickness)[None] * np.asarray(composition) * yields
    # The continuum is roughly even across lines, so one level per peak from the mean signal.
    background = np.full(len(elements), BACKGROUND_FRACTION * signal.mean(axis=(1, 2)).mean())
    return rng.poisson(signal + background[:, None, None]), background


def quantify(counts: np.ndarray, background: np.ndarray, elements: Sequence[str]) -> np.ndarray:
    """Cliff-Lorimer quantification of X-ray counts into atomic fractions.

    Parameters
    ----------
    counts : ndarray, shape (E, Rx, Ry)
    background : ndarray, shape (E,)
        Expected background under each peak, subtracted before quantifying.
    elements : sequence of str

    Returns
    -------
    ndarray, shape (E, Rx, Ry), float32
        Atomic fractions in [0, 1] summing to 1 (uniform where no net counts).
    """
    yields = np.array([RELATIVE_YIELD[e] for e in elements])[:, None, None]
    net = np.maximum(counts - np.asarray(background)[:, None, None], 0.0) / yields
    total = net.sum(axis=0, keepdims=True)
    fractions = np.where(total > 0, net / np.where(total > 0, total, 1.0), 1.0 / len(elements))
    return np.clip(fractions, 0.0, 1.0).astype(np.float32)


def simulate_eds(composition: np.ndarray, thickness: np.ndarray, elements: Sequence[str],
                 dose: float, rng: np.random.Generator) -> np.ndarray:
    """Quantified EDS maps: counts from :func:`xray_counts`, fractions from :func:`quantify`.

    Parameters
    ----------
    composition : ndarray, shape (E, Rx, Ry)
    thickness : ndarray, shape (Rx, Ry), nm
    elements : sequence of str
    dose : float
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape (E, Rx, Ry), float32 atomic fractions
    """
    counts, background = xray_counts(composition, thickness, elements, dose, rng)
    return quantify(counts, background, elements)
