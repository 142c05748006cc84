"""Atomic models for the multislice engine: amorphous films and rock-salt grains.

An amorphous film is cut from a periodic *template*: points at a reference
number density, pushed apart until (almost) no two are closer than a
minimum distance (a random close-packed-ish glass, as from a quench).
Each probe position gets its own patch: the template is scaled to the local
number density (from the composition, :data:`.amorphous.ATOMIC_VOLUME`),
shifted by a random offset (so neighbouring patterns see independent
speckle) and cut to the patch's lateral size and the local film thickness;
the species of each atom are drawn from the local atomic fractions.

A crystalline grain replaces the glass in a slab of the patch by a
rock-salt fragment (Te on the anion site; Ge, Sb and 20 % vacancies on the
cation site in the local Ge:Sb ratio, like metastable GST), oriented along a
zone axis of :data:`.crystal.ZONE_AXES` with an in-plane rotation and a small
tilt.

Positions are in Angstrom, (x, y, z) with z along the beam; species are
indices into the engine's element tuple.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .amorphous import ATOMIC_VOLUME
from .crystal import LATTICE_A, ZONE_AXES

#: Number density of the template, atoms per cubic Angstrom (~ a-GST).
TEMPLATE_DENSITY = 1.0 / 30.0
#: Closest approach in the template at TEMPLATE_DENSITY, Angstrom.
TEMPLATE_MIN_DISTANCE = 2.5
#: Fraction of cation sites left empty in rock-salt GST.
CATION_VACANCIES = 0.2


@dataclass(frozen=True)
class Template:
    """A periodic amorphous point set at :data:`TEMPLATE_DENSITY`.

    Attributes
    ----------
    positions : ndarray, shape (n, 3)
        Angstrom, inside ``[0, box)``.
    box : ndarray, shape (3,)
        Periodic box, Angstrom.
    """

    positions: np.ndarray
    box: np.ndarray


def number_density(composition: np.ndarray, elements: Sequence[str]) -> np.ndarray:
    """Atoms per cubic Angstrom from atomic fractions (Vegard-like mixing of atomic volumes).

    Parameters
    ----------
    composition : ndarray, shape (..., E)
    elements : sequence of str

    Returns
    -------
    ndarray, shape (...)
    """
    volumes = np.array([ATOMIC_VOLUME[e] for e in elements])
    return 1.0 / (np.asarray(composition) @ volumes)


def amorphous_template(box: Sequence[float], rng: np.random.Generator,
                       iterations: int = 40) -> Template:
    """Random points at :data:`TEMPLATE_DENSITY`, relaxed towards a minimum distance.

    Parameters
    ----------
    box : (float, float, float)
        Periodic box, Angstrom.
    rng : numpy.random.Generator
    iterations : int
        Rounds of pushing apart pairs closer than :data:`TEMPLATE_MIN_DISTANCE`.

    Returns
    -------
    Template
    """
    from scipy.spatial import cKDTree  # here: `stem2eds --help` need not load SciPy

    box = np.asarray(box, dtype=np.float64)
    n = int(round(TEMPLATE_DENSITY * np.prod(box)))
    pos = rng.uniform(0.0, 1.0, size=(n, 3)) * box
    d = TEMPLATE_MIN_DISTANCE
    for _ in range(iterations):
        pairs = cKDTree(pos, boxsize=box).query_pairs(d, output_type="ndarray")
        if len(pairs) == 0:
            break
        delta = pos[pairs[:, 0]] - pos[pairs[:, 1]]
        delta -= box * np.round(delta / box)                       # minimum image
        dist = np.linalg.norm(delta, axis=1, keepdims=True)
        # Each atom of a too-close pair moves half the overlap (a little more, to converge).
        push = 0.55 * (d - dist) * delta / np.maximum(dist, 1e-6)
        np.add.at(pos, pairs[:, 0], push)
        np.add.at(pos, pairs[:, 1], -push)
        pos %= box
    return Template(pos, box)


def amorphous_patch(template: Template, density: float, extent: float,
                    thickness: float, rng: np.random.Generator) -> np.ndarray:
    """Atom positions of one probe position's amorphous patch.

    Parameters
    ----------
    template : Template
    density : float
        Local number density, atoms per cubic Angstrom (:func:`number_density`).
    extent : float
        Lateral size of the (square) patch, Angstrom.
    thickness : float
        Film thickness, Angstrom.
    rng : numpy.random.Generator
        Draws the offset and orientation of the cut.

    Returns
    -------
    ndarray, shape (n, 3)
        Positions in ``[0, extent)^2 x [0, thickness)``.
    """
    scale = (TEMPLATE_DENSITY / density) ** (1.0 / 3.0)
    # One of the 48 symmetries of the cube, so the cut is not always the same view.
    axes = rng.permutation(3)
    pos = template.positions[:, axes] * np.where(rng.random(3) < 0.5, -1.0, 1.0)
    box = template.box[axes]
    pos = (pos + rng.uniform(0.0, 1.0, size=3) * box) % box * scale
    if thickness > box[2] * scale:  # thicker than the template: stack copies along the beam
        reps = int(np.ceil(thickness / (box[2] * scale)))
        pos = np.concatenate([pos + [0.0, 0.0, k * box[2] * scale] for k in range(reps)])
    keep = (pos[:, 0] < extent) & (pos[:, 1] < extent) & (pos[:, 2] < thickness)
    return pos[keep]


def draw_species(n: int, composition: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Species indices of ``n`` atoms drawn from atomic fractions ``composition`` (E,)."""
    p = np.clip(np.asarray(composition, dtype=np.float64), 0.0, None)
    return rng.choice(len(p), size=n, p=p / p.sum())


def rotation_matrix(zone_index: int, rotation: float, tilt: Sequence[float]) -> np.ndarray:
    """Rotation taking crystal coordinates to the lab frame with the zone axis along z (beam).

    Parameters
    ----------
    zone_index : int
        Row of :data:`.crystal.ZONE_AXES`.
    rotation : float
        In-plane rotation, radians.
    tilt : (float, float)
        Small tilts about x and y, radians.

    Returns
    -------
    ndarray, shape (3, 3)
    """
    z = ZONE_AXES[zone_index] / np.linalg.norm(ZONE_AXES[zone_index])
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    align = np.stack([x, y, z])                                     # rows: lab axes in crystal coords
    c, s = np.cos(rotation), np.sin(rotation)
    spin = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    tx, ty = tilt
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(tx), -np.sin(tx)], [0.0, np.sin(tx), np.cos(tx)]])
    rot_y = np.array([[np.cos(ty), 0.0, np.sin(ty)], [0.0, 1.0, 0.0], [-np.sin(ty), 0.0, np.cos(ty)]])
    return rot_y @ rot_x @ spin @ align


def rocksalt_slab(extent: float, z_range: tuple[float, float], matrix: np.ndarray,
                  ge_fraction: float, rng: np.random.Generator,
                  elements: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """A rock-salt GST fragment filling ``[0, extent)^2 x [z0, z1)`` in the given orientation.

    Parameters
    ----------
    extent : float
        Lateral size of the patch, Angstrom.
    z_range : (float, float)
        Slab of the film the grain occupies, Angstrom.
    matrix : ndarray, shape (3, 3)
        :func:`rotation_matrix` of the grain.
    ge_fraction : float
        Ge / (Ge + Sb) on the cation sites.
    rng : numpy.random.Generator
        Draws cation species and vacancies.
    elements : sequence of str
        Element order of the species indices (must hold Ge, Sb, Te).

    Returns
    -------
    positions : ndarray, shape (n, 3)
    species : ndarray of int, shape (n,)
    """
    z0, z1 = z_range
    centre = np.array([extent / 2, extent / 2, (z0 + z1) / 2])
    radius = np.sqrt(2 * (extent / 2) ** 2 + ((z1 - z0) / 2) ** 2) + LATTICE_A
    m = int(np.ceil(radius / LATTICE_A)) + 1
    cells = np.stack(np.meshgrid(*[np.arange(-m, m)] * 3, indexing="ij"), -1).reshape(-1, 3)
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    cation = (cells[:, None, :] + fcc[None]).reshape(-1, 3) * LATTICE_A
    anion = cation + np.array([0.5, 0.0, 0.0]) * LATTICE_A
    sites = np.concatenate([cation, anion]) @ matrix.T + centre
    is_cation = np.arange(len(sites)) < len(cation)
    keep = ((sites[:, 0] >= 0) & (sites[:, 0] < extent) & (sites[:, 1] >= 0)
            & (sites[:, 1] < extent) & (sites[:, 2] >= z0) & (sites[:, 2] < z1))
    sites, is_cation = sites[keep], is_cation[keep]
    index = {e: i for i, e in enumerate(elements)}
    species = np.full(len(sites), index["Te"])
    draw = rng.random(len(sites))
    species[is_cation] = np.where(draw[is_cation] < ge_fraction * (1 - CATION_VACANCIES),
                                  index["Ge"], index["Sb"])
    vacant = is_cation & (draw >= 1 - CATION_VACANCIES)
    return sites[~vacant], species[~vacant]
