"""Electron scattering factors and beam constants.

Atomic electron scattering factors use the five-Gaussian parameterisation of

    L.-M. Peng, G. Ren, S. L. Dudarev and M. J. Whelan (1996),
    "Robust parameterization of elastic and absorptive electron atomic
    scattering factors", Acta Cryst. A52, 257-276,

in the version fitted over 0 <= s <= 6 1/Angstrom, as tabulated in
International Tables for Crystallography Vol. C (2006), Table 4.3.2.3::

    f_e(s) = sum_i a_i exp(-b_i s^2),   s = sin(theta) / lambda = q / 2,

with ``f_e`` in Angstrom, ``b_i`` in Angstrom^2 and ``q = 1/d`` in
1/Angstrom. The tabulated values are non-relativistic;
:func:`scattering_factor` multiplies them by the relativistic mass ratio
gamma of the beam electrons (Kirkland 2010, eq. 5.15).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError

#: Peng et al. (1996), ITC Vol. C Table 4.3.2.3: symbol -> ((a1..a5) in Angstrom,
#: (b1..b5) in Angstrom^2). Ge-Sb-Te, their oxide/substrate partners and
#: chalcogenide neighbours, so that related systems can be simulated too.
PENG_1996: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "H": ((0.0088, 0.0449, 0.1481, 0.2356, 0.0914), (0.1152, 1.0867, 4.9755, 16.5591, 43.2743)),
    "C": ((0.0489, 0.2091, 0.7537, 1.1420, 0.3555), (0.1140, 1.0825, 5.4281, 17.8811, 51.1341)),
    "N": ((0.0267, 0.1328, 0.5301, 1.1020, 0.4215), (0.0541, 0.5165, 2.8207, 10.6297, 34.3764)),
    "O": ((0.0365, 0.1729, 0.5805, 0.8814, 0.3121), (0.0652, 0.6184, 2.9449, 9.6298, 28.2194)),
    "Al": ((0.1165, 0.5504, 1.0179, 2.6295, 1.5711), (0.1295, 1.2619, 6.8242, 28.4577, 88.4750)),
    "Si": ((0.0567, 0.3365, 0.8104, 2.4960, 2.1186), (0.0582, 0.6155, 3.2522, 16.7929, 57.6767)),
    "S": ((0.0915, 0.4312, 1.0847, 2.4671, 1.0852), (0.0838, 0.7788, 4.3462, 15.5846, 44.6365)),
    "Ga": ((0.2135, 0.9768, 1.6669, 2.5662, 1.6790), (0.1020, 1.0219, 4.6275, 22.8742, 80.1535)),
    "Ge": ((0.2135, 0.9761, 1.6555, 2.8938, 1.6356), (0.0989, 0.9845, 4.5527, 21.5563, 70.3903)),
    "As": ((0.2059, 0.9518, 1.6372, 3.0490, 1.4756), (0.0926, 0.9182, 4.3291, 19.2996, 58.9329)),
    "Se": ((0.1574, 0.7614, 1.4834, 3.0016, 1.7978), (0.0686, 0.6808, 3.1163, 14.3458, 44.0455)),
    "In": ((0.3564, 1.3011, 3.2424, 3.4839, 2.0459), (0.1091, 1.0452, 5.0900, 24.6578, 88.0513)),
    "Sn": ((0.2966, 1.1157, 3.0973, 3.8156, 2.5281), (0.0896, 0.8268, 4.2242, 20.6900, 71.3399)),
    "Sb": ((0.2725, 1.0651, 2.9940, 4.0697, 2.5682), (0.0809, 0.7488, 3.8710, 18.8800, 60.6499)),
    "Te": ((0.2422, 0.9692, 2.8114, 4.1509, 2.8161), (0.0708, 0.6472, 3.3609, 16.0752, 50.1724)),
    "Bi": ((0.3530, 1.5258, 3.5815, 4.5532, 3.0714), (0.0661, 0.6324, 3.5906, 15.9962, 57.5760)),
}

_ELECTRON_REST_ENERGY_KEV = 510.99895
_HC_KEV_ANGSTROM = 12.398419843


def relativistic_gamma(energy_kev: float) -> float:
    """Lorentz factor gamma = 1 + E / (m0 c^2) of beam electrons of kinetic energy ``energy_kev``."""
    return 1.0 + energy_kev / _ELECTRON_REST_ENERGY_KEV


def electron_wavelength(energy_kev: float) -> float:
    """Relativistic electron wavelength in Angstrom (0.02508 A at 200 keV).

    Parameters
    ----------
    energy_kev : float
        Kinetic energy of the beam electrons in keV.
    """
    if not energy_kev > 0:
        raise InputError(f"beam energy must be positive, got {energy_kev} keV")
    return _HC_KEV_ANGSTROM / np.sqrt(energy_kev * (2 * _ELECTRON_REST_ENERGY_KEV + energy_kev))


def scattering_factor(elements: Sequence[str], q: np.ndarray, energy_kev: float = 200.0) -> np.ndarray:
    """Elastic electron scattering amplitudes f_e(q) of neutral atoms.

    Parameters
    ----------
    elements : sequence of str
        Element symbols, each a key of :data:`PENG_1996`.
    q : ndarray, shape (...)
        Scattering vector magnitude ``q = 1/d = 2 sin(theta)/lambda`` in 1/Angstrom.
    energy_kev : float
        Beam energy; the relativistic factor gamma multiplies the tabulated values.

    Returns
    -------
    ndarray, shape (E, ...)
        f_e in Angstrom, one row per element, relativistically corrected.
    """
    missing = [e for e in elements if e not in PENG_1996]
    if missing:
        raise InputError(f"no electron scattering factors for {', '.join(missing)}",
                         hint=f"supported: {', '.join(PENG_1996)}")
    a = np.array([PENG_1996[e][0] for e in elements])            # (E, 5)
    b = np.array([PENG_1996[e][1] for e in elements])            # (E, 5)
    s2 = (np.asarray(q, dtype=np.float64) / 2.0) ** 2
    shape = s2.shape
    terms = a[:, :, None] * np.exp(-b[:, :, None] * s2.reshape(1, 1, -1))
    return relativistic_gamma(energy_kev) * terms.sum(axis=1).reshape(len(elements), *shape)
