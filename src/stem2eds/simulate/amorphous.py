"""Kinematic diffraction from an amorphous film whose short-range order follows its composition.

The elastically scattered intensity per atom of a homogeneous amorphous
mixture in the Faber-Ziman form is::

    I(q) = <f^2> + <f>^2 (S(q) - 1),   <f^n> = sum_i c_i f_i(q)^n

with c_i atomic fractions and f_i electron scattering factors
(:mod:`.scattering`). The structure factor S is built from a pair
distribution of Gaussian coordination shells on top of a uniform continuum
(Waseda 1980, *The Structure of Non-Crystalline Materials*, ch. 2)::

    S(k) = 1 + sum_s N_s sinc(k r_s) exp(-sigma_s^2 k^2 / 2)
             - 4 pi rho (sin kR - kR cos kR) / k^3 exp(-sigma_c^2 k^2 / 2),
    k = 2 pi q,

where the shells follow the composition:

* first shell: the bond length is the mean of tabulated pair bond lengths
  weighted by c_i c_j times a chemical bonding preference (oxygen binds to
  the cations, not to itself); its width grows with the spread of the pair
  lengths; the coordination number is the mean of the elements' valences;
* second shell: r2 = 2 r1 sin(theta/2), with the bond angle theta moving from
  ~95 degrees (p-bonded, octahedral-like Ge-Sb-Te) towards the tetrahedral
  109.5 degrees as the share of Si-O/Ge-O bonds grows;
* third shell at about 2 r1, broad;
* the continuum radius R is chosen so that S(0) is small (~0.05, an almost
  incompressible solid), which makes the atomic number density ``rho`` (from
  additive atomic volumes) consistent with the shells.

This is a model of short-range order, not a fit to measured S(Q): for
a-Ge2Sb2Te5 its peaks fall at k = 2 pi q ~ 1.6, 3.0 and 5.0 1/Angstrom,
about 15-20 % below the measured ~2.0, 3.4 and 5.7; what matters here is
that peak positions, widths and heights move with the composition.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from .scattering import scattering_factor

#: Bond valence (coordination number) of each element in amorphous chalcogenide/oxide films
#: (Ge 4, Sb 3, Te 2-3 as in a-GST; Kolobov et al., Nature Mater. 3, 703 (2004)).
COORDINATION = {"O": 2.0, "Si": 4.0, "Ge": 4.0, "Sb": 3.0, "Te": 2.5}

#: Atomic volume in Angstrom^3 per atom, additive; gives 0.031 atoms/A^3 for
#: a-Ge2Sb2Te5 and 0.066 for a-SiO2, as measured.
ATOMIC_VOLUME = {"O": 12.7, "Si": 20.0, "Ge": 28.0, "Sb": 33.0, "Te": 34.0}

#: Pair bond lengths in Angstrom (a-GST from EXAFS/AIMD: Ge-Te 2.62, Sb-Te 2.92;
#: oxides: Si-O 1.62, Ge-O 1.75, Sb-O 1.98, Te-O 1.90).
_BOND_LENGTH = {
    ("Ge", "Te"): 2.62, ("Sb", "Te"): 2.92, ("Te", "Te"): 2.78, ("Ge", "Ge"): 2.48,
    ("Sb", "Sb"): 2.88, ("Ge", "Sb"): 2.70, ("Si", "O"): 1.62, ("Ge", "O"): 1.75,
    ("Sb", "O"): 1.98, ("Te", "O"): 1.90, ("Si", "Si"): 2.35, ("Si", "Ge"): 2.40,
    ("Si", "Te"): 2.52, ("Si", "Sb"): 2.60, ("O", "O"): 2.60,
}

#: Relative bonding preference of a pair (heteropolar bonds are favoured; O-O never bonds).
_BOND_PREFERENCE = {
    ("Ge", "Te"): 1.0, ("Sb", "Te"): 1.0, ("Te", "Te"): 0.3, ("Ge", "Ge"): 0.25,
    ("Sb", "Sb"): 0.25, ("Ge", "Sb"): 0.25, ("Si", "O"): 3.0, ("Ge", "O"): 2.0,
    ("Sb", "O"): 1.5, ("Te", "O"): 0.8, ("Si", "Si"): 0.25, ("Si", "Ge"): 0.25,
    ("Si", "Te"): 0.6, ("Si", "Sb"): 0.3, ("O", "O"): 0.0,
}

#: Pairs whose bonds are tetrahedral (sp3): they open the bond angle towards 109.5 degrees.
_TETRAHEDRAL = {("Si", "O"), ("Ge", "O"), ("Si", "Si"), ("Si", "Ge")}

_S0 = 0.05                     # S(q -> 0) of a nearly incompressible amorphous solid
_SIGMA_1_MIN = 0.08            # Angstrom, thermal + static width of the first shell
_SIGMA_2, _SIGMA_3, _SIGMA_C = 0.25, 0.45, 0.5   # Angstrom


def _pair_tables(elements: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    unknown = [e for e in elements if e not in COORDINATION]
    if unknown:
        raise InputError(f"no amorphous-structure parameters for {', '.join(unknown)}",
                         hint=f"the simulator knows {', '.join(COORDINATION)}")
    n = len(elements)
    length, pref, tetra = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    for i, a in enumerate(elements):
        for j, b in enumerate(elements):
            key = (a, b) if (a, b) in _BOND_LENGTH else (b, a)
            length[i, j] = _BOND_LENGTH[key]
            pref[i, j] = _BOND_PREFERENCE[key]
            tetra[i, j] = key in _TETRAHEDRAL
    return length, pref, tetra


def shell_parameters(composition: np.ndarray, elements: Sequence[str]) -> dict[str, np.ndarray]:
    """Coordination shells and number density implied by a local composition.

    Parameters
    ----------
    composition : ndarray, shape (n, E)
        Atomic fractions (rows sum to 1), columns in the order of ``elements``.
    elements : sequence of str

    Returns
    -------
    dict of ndarray, each shape (n,)
        ``r1, r2, r3`` shell radii (Angstrom), ``n1, n2, n3`` coordination
        numbers, ``sigma1`` first-shell width (Angstrom), ``rho`` number
        density (atoms/Angstrom^3), ``radius_c`` continuum radius (Angstrom),
        ``bond_angle`` (degrees).
    """
    c = np.asarray(composition, dtype=np.float64)
    length, pref, tetra = _pair_tables(elements)
    weight = c[:, :, None] * c[:, None, :] * pref                      # (n, E, E)
    wsum = weight.sum(axis=(1, 2)) + 1e-12
    r1 = (weight * length).sum(axis=(1, 2)) / wsum
    spread = np.sqrt((weight * (length - r1[:, None, None]) ** 2).sum(axis=(1, 2)) / wsum)
    sigma1 = np.hypot(_SIGMA_1_MIN, spread)
    tetra_share = (weight * tetra).sum(axis=(1, 2)) / wsum
    # a-GST has about a third of its Ge tetrahedral (Caravati et al., APL 91, 171906 (2007)).
    ge = list(elements).index("Ge") if "Ge" in elements else None
    if ge is not None:
        tetra_share = np.clip(tetra_share + 0.33 * c[:, ge], 0.0, 1.0)
    angle = 95.0 + (109.47 - 95.0) * tetra_share
    r2 = 2.0 * r1 * np.sin(np.radians(angle) / 2.0)
    r3 = 2.0 * r1 * (0.9 + 0.1 * tetra_share)
    cn = np.array([COORDINATION[e] for e in elements])
    n1 = c @ cn
    n2 = n1 * (n1 - 1.0)
    n3 = 2.0 * n2
    volume = c @ np.array([ATOMIC_VOLUME[e] for e in elements])
    rho = 1.0 / volume
    # Continuum radius giving S(0) = _S0: 1 + N1 + N2 + N3 - (4/3) pi rho R^3 = _S0.
    radius_c = np.cbrt(3.0 * (1.0 - _S0 + n1 + n2 + n3) / (4.0 * np.pi * rho))
    return dict(r1=r1, r2=r2, r3=r3, n1=n1, n2=n2, n3=n3, sigma1=sigma1, rho=rho,
                radius_c=radius_c, bond_angle=angle)


def structure_factor(q: np.ndarray, shells: dict[str, np.ndarray]) -> np.ndarray:
    """Average structure factor S(q) of the shell model (clipped at 0).

    Parameters
    ----------
    q : ndarray, shape (nq,)
        Scattering vector ``1/d`` in 1/Angstrom.
    shells : dict
        Output of :func:`shell_parameters` for n compositions.

    Returns
    -------
    ndarray, shape (n, nq)
    """
    k = 2.0 * np.pi * np.maximum(np.asarray(q, dtype=np.float64), 1e-6)[None, :]
    col = {name: np.asarray(v, dtype=np.float64)[:, None] for name, v in shells.items()}
    s = np.ones((len(col["r1"]), k.shape[1]))
    for r, n, sig in ((col["r1"], col["n1"], col["sigma1"]), (col["r2"], col["n2"], _SIGMA_2),
                      (col["r3"], col["n3"], _SIGMA_3)):
        s += n * np.sin(k * r) / (k * r) * np.exp(-0.5 * (sig * k) ** 2)
    kr = k * col["radius_c"]
    # Small-k series of (sin x - x cos x)/x^3 -> 1/3 avoids 0/0 cancellation.
    ratio = np.where(kr > 1e-2, (np.sin(kr) - kr * np.cos(kr)) / np.maximum(kr, 1e-2) ** 3,
                     1.0 / 3.0 - kr ** 2 / 30.0)
    s -= 4.0 * np.pi * col["rho"] * col["radius_c"] ** 3 * ratio * np.exp(-0.5 * (_SIGMA_C * k) ** 2)
    return np.maximum(s, 0.0)


def amorphous_intensity(q: np.ndarray, composition: np.ndarray, elements: Sequence[str],
                        energy_kev: float = 200.0) -> tuple[np.ndarray, np.ndarray]:
    """Elastic intensity per atom, ``<f^2> + <f>^2 (S(q) - 1)``, and the number density.

    Parameters
    ----------
    q : ndarray, shape (nq,)
        Scattering vector ``1/d`` in 1/Angstrom.
    composition : ndarray, shape (n, E)
        Atomic fractions, columns in the order of ``elements``.
    elements : sequence of str
    energy_kev : float
        Beam energy (relativistic scaling of f).

    Returns
    -------
    intensity : ndarray, shape (n, nq)
        Differential cross-section per atom, Angstrom^2 (per steradian / lambda^2).
    rho : ndarray, shape (n,)
        Atomic number density in atoms/Angstrom^3.
    """
    c = np.asarray(composition, dtype=np.float64)
    f = scattering_factor(elements, q, energy_kev)                  # (E, nq)
    mean_f = c @ f
    mean_f2 = c @ f ** 2
    shells = shell_parameters(c, elements)
    s = structure_factor(q, shells)
    return np.maximum(mean_f2 + mean_f ** 2 * (s - 1.0), 0.0), shells["rho"]
