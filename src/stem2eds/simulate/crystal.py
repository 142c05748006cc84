"""Bragg reflections of metastable rock-salt Ge2Sb2Te5 grains.

Crystallised GST is rock-salt (Fm-3m, a ~ 6.0 Angstrom) with Te on the
anion site and Ge, Sb and 20 % vacancies sharing the cation site (Yamada et
al., J. Appl. Phys. 69, 2849 (1991)). The structure factor per unit cell is::

    F(hkl) = 4 (f_cation + f_Te)   h, k, l all even
    F(hkl) = 4 (f_cation - f_Te)   h, k, l all odd
    F(hkl) = 0                     mixed parity (face-centring),

with ``f_cation = 0.4 f_Ge + 0.4 f_Sb``. A grain viewed along a low-index
zone axis excites the reflections perpendicular to it; the kinematic
intensity of reflection g for a grain of thickness t slightly tilted off the
zone is (Williams & Carter, *Transmission Electron Microscopy*, ch. 13)::

    I_g = (pi t / xi_g)^2 sinc^2(t s_g),   xi_g = pi V_cell / (lambda |F_g|),

with excitation error s_g = g . tilt + lambda g^2 / 2, Debye-Waller factor
exp(-2 B s^2) on F, and the total diffracted fraction capped at
:data:`MAX_DIFFRACTED` (a stand-in for dynamical saturation).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .scattering import electron_wavelength, scattering_factor

LATTICE_A = 6.0                 # Angstrom, rock-salt GST (6.0-6.04 measured)
DEBYE_WALLER_B = 1.5            # Angstrom^2
MAX_DIFFRACTED = 0.6            # largest fraction of the beam that all Bragg disks may take

#: Zone axes a grain may be viewed along (index is stored per grain).
ZONE_AXES = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 1], [1, 1, 2]], dtype=float)


@lru_cache(maxsize=32)
def _zone_reflections(zone_index: int, q_max: float) -> np.ndarray:
    """Allowed hkl perpendicular to zone ``zone_index`` with 0 < |g| <= q_max (1/Angstrom), (m, 3)."""
    zone = ZONE_AXES[zone_index]
    n = int(np.ceil(q_max * LATTICE_A)) + 1
    grid = np.arange(-n, n + 1)
    hkl = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
    parity = hkl % 2
    allowed = (parity.min(axis=1) == parity.max(axis=1))            # all even or all odd
    in_zone = hkl @ zone == 0
    g = np.linalg.norm(hkl, axis=1) / LATTICE_A
    keep = allowed & in_zone & (g > 0) & (g <= q_max)
    return hkl[keep]


def _zone_basis(zone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two orthonormal in-plane vectors perpendicular to ``zone``."""
    z = zone / np.linalg.norm(zone)
    trial = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(z, trial)
    u /= np.linalg.norm(u)
    return u, np.cross(z, u)


def bragg_reflections(zone_index: int, rotation: float, tilt: np.ndarray, grain_thickness_nm: float,
                      q_max: float, energy_kev: float = 200.0) -> tuple[np.ndarray, np.ndarray]:
    """In-plane positions and intensities of the Bragg disks of one grain.

    Parameters
    ----------
    zone_index : int
        Row of :data:`ZONE_AXES` the grain is viewed along.
    rotation : float
        In-plane rotation of the grain about the beam, radians.
    tilt : ndarray, shape (2,)
        Small tilt off the zone axis, radians (components along the two
        in-plane basis vectors); sets the excitation errors.
    grain_thickness_nm : float
        Thickness of crystal the probe passes through, nm.
    q_max : float
        Largest scattering vector to list (detector edge), 1/Angstrom.
    energy_kev : float

    Returns
    -------
    q_xy : ndarray, shape (m, 2)
        Reflection positions (detector row, column directions) in 1/Angstrom.
    fraction : ndarray, shape (m,)
        Fraction of the incident beam in each disk.
    """
    zone = ZONE_AXES[int(zone_index)]
    hkl = _zone_reflections(int(zone_index), float(q_max))
    if len(hkl) == 0 or grain_thickness_nm <= 0:
        return np.zeros((0, 2)), np.zeros(0)
    lam = electron_wavelength(energy_kev)
    gvec = hkl / LATTICE_A                                           # (m, 3) 1/Angstrom
    gmag = np.linalg.norm(gvec, axis=1)
    u, v = _zone_basis(zone)
    gu, gv = gvec @ u, gvec @ v
    cos, sin = np.cos(rotation), np.sin(rotation)
    q_xy = np.stack([cos * gu - sin * gv, sin * gu + cos * gv], axis=1)
    f = scattering_factor(["Ge", "Sb", "Te"], gmag, energy_kev)    # (3, m)
    f_cation = 0.4 * f[0] + 0.4 * f[1]
    even = (hkl % 2 == 0).all(axis=1)
    structure = 4.0 * np.where(even, f_cation + f[2], f_cation - f[2])
    structure *= np.exp(-DEBYE_WALLER_B * (gmag / 2.0) ** 2)
    xi = np.pi * LATTICE_A ** 3 / (lam * np.abs(structure) + 1e-12)  # extinction distance, A
    t = grain_thickness_nm * 10.0
    excitation = gu * tilt[0] + gv * tilt[1] + 0.5 * lam * gmag ** 2
    fraction = (np.pi * t / xi) ** 2 * np.sinc(t * excitation) ** 2
    total = fraction.sum()
    if total > MAX_DIFFRACTED:
        fraction *= MAX_DIFFRACTED / total
    return q_xy, fraction
