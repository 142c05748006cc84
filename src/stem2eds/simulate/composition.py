"""Composition fields of an oxidising, segregating Ge-Sb-Te film, scan after scan.

The six scans of the paper image one region repeatedly, so the simulated
series shares one set of latent random fields (the film's microstructure)
and evolves it:

* matrix near Ge2Sb2Te5 with smooth random variation of Te;
* Ge/Sb segregation into domains with sharp interfaces (a tanh of a smooth
  field), whose contrast grows from scan to scan;
* local heterogeneity on the scale of a few probe steps;
* Si a minor element (a few percent, e.g. from the substrate/capping), varying
  smoothly;
* oxidation rising toward the bottom rows of the scan (the film edge),
  a front with a rough edge that moves up from scan to scan; oxygen binds Ge
  first and Te is lost from the oxide (GeO2 forms preferentially in oxidised
  GST; Te evaporates/segregates);
* a small specimen drift between scans, so the same features sit at
  slightly different scan positions.

Extrapolating from the first scan to the last is therefore harder than
interpolating between the first and the last.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError

#: Latent fields: name -> Gaussian correlation length in probe steps.
_LATENT_SCALES = {"segregation": 5.0, "tellurium": 9.0, "silicon": 12.0, "local_ge": 1.2,
                  "local_sb": 1.2, "front": 6.0, "oxide_patch": 3.0}


@dataclass(frozen=True)
class CompositionModel:
    """Parameters of the composition fields (fractions are atomic fractions).

    Attributes
    ----------
    segregation : float
        Relative Ge/Sb exchange amplitude in the first scan.
    segregation_growth : float
        Relative growth of ``segregation`` from the first to the last scan.
    interface_sharpness : float
        Slope of the tanh that turns the smooth segregation field into domains.
    tellurium_variation : float
        Relative amplitude of smooth Te variation.
    heterogeneity : float
        Relative amplitude of local (1-2 probe steps) Ge/Sb fluctuations.
    silicon : float
        Mean Si content of the non-oxidised film, atomic fraction.
    silicon_variation : float
        Relative amplitude of the Si variation.
    oxygen_background : float
        O fraction of the clean film (surface oxide).
    oxygen_max : float
        O fraction deep in the oxidised band.
    front_start : float
        Oxidation front position in the first scan, as a fraction of the rows
        from the top (1 = bottom edge).
    front_speed : float
        Upward movement of the front per scan, fraction of the rows.
    front_width : float
        Width of the oxidation front, fraction of the rows.
    front_roughness : float
        Amplitude of the front's lateral roughness, fraction of the rows.
    te_loss : float
        Fraction of Te lost where fully oxidised.
    drift : float
        Specimen drift between consecutive scans, probe steps.
    """

    segregation: float = 0.12
    segregation_growth: float = 1.0
    interface_sharpness: float = 2.5
    tellurium_variation: float = 0.05
    heterogeneity: float = 0.04
    silicon: float = 0.03
    silicon_variation: float = 0.35
    oxygen_background: float = 0.02
    oxygen_max: float = 0.50
    front_start: float = 0.80
    front_speed: float = 0.04
    front_width: float = 0.06
    front_roughness: float = 0.05
    te_loss: float = 0.6
    drift: float = 1.5

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _smooth_field(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field of unit standard deviation with correlation length ``scale``."""
    from scipy import ndimage  # here: `stem2eds --help` need not load SciPy
    field = ndimage.gaussian_filter(rng.standard_normal(shape), scale, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def latent_fields(scan_shape: Sequence[int], n_scans: int, rng: np.random.Generator,
                  model: CompositionModel = CompositionModel()) -> dict[str, np.ndarray]:
    """Random microstructure shared by all scans of a series.

    The fields cover the scan plus a margin for the drift between scans.

    Parameters
    ----------
    scan_shape : (Rx, Ry)
    n_scans : int
    rng : numpy.random.Generator
    model : CompositionModel

    Returns
    -------
    dict of ndarray, each shape (Rx + 2m, Ry + 2m)
        Unit-variance fields; ``m = ceil(drift * n_scans) + 1``.
    """
    rx, ry = (int(v) for v in scan_shape)
    margin = int(np.ceil(model.drift * n_scans)) + 1
    shape = (rx + 2 * margin, ry + 2 * margin)
    return {name: _smooth_field(shape, scale, rng) for name, scale in _LATENT_SCALES.items()}


def scan_window(field: np.ndarray, scan_shape: Sequence[int], scan_index: int,
                drift: float) -> np.ndarray:
    """The part of a series-wide field (scan plus margin) that scan ``scan_index`` sees.

    The specimen drifts by ``drift`` probe steps per scan along a fixed
    diagonal, rounded to whole steps (sub-step drift would need resampling).

    Parameters
    ----------
    field : ndarray, shape (Rx + 2m, Ry + 2m)
    scan_shape : (Rx, Ry)
    scan_index : int
    drift : float

    Returns
    -------
    ndarray, shape (Rx, Ry)
    """
    rx, ry = (int(v) for v in scan_shape)
    margin = (field.shape[0] - rx) // 2
    shift = int(round(drift * scan_index))
    r0 = margin - shift // 2
    c0 = margin + shift - shift // 2
    return field[r0:r0 + rx, c0:c0 + ry]


def composition_maps(latent: dict[str, np.ndarray], scan_shape: Sequence[int], scan_index: int,
                     n_scans: int, elements: Sequence[str] = ("O", "Si", "Ge", "Sb", "Te"),
                     model: CompositionModel = CompositionModel()) -> np.ndarray:
    """Noise-free atomic fractions of one scan of the series.

    Parameters
    ----------
    latent : dict
        Output of :func:`latent_fields` for the series.
    scan_shape : (Rx, Ry)
    scan_index : int
        0 for the first scan of the series.
    n_scans : int
    elements : sequence of str
        Output order; must be a permutation of O, Si, Ge, Sb, Te.
    model : CompositionModel

    Returns
    -------
    ndarray, shape (E, Rx, Ry), float64
        Atomic fractions in [0, 1] summing to 1 at every position.
    """
    if sorted(elements) != sorted(("O", "Si", "Ge", "Sb", "Te")):
        raise InputError(f"the Ge-Sb-Te film model needs elements O,Si,Ge,Sb,Te, got {','.join(elements)}")
    rx, ry = (int(v) for v in scan_shape)
    progress = scan_index / max(n_scans - 1, 1)                     # 0 first scan, 1 last
    crop = {k: scan_window(v, scan_shape, scan_index, model.drift) for k, v in latent.items()}

    segregation = model.segregation * (1.0 + model.segregation_growth * progress)
    domains = np.tanh(model.interface_sharpness * crop["segregation"])
    ge = 2.0 * (1.0 + segregation * domains + model.heterogeneity * crop["local_ge"])
    sb = 2.0 * (1.0 - segregation * domains + model.heterogeneity * crop["local_sb"])
    te = 5.0 * (1.0 + model.tellurium_variation * crop["tellurium"])

    depth = (np.arange(rx, dtype=np.float64) / max(rx - 1, 1))[:, None]
    front = (model.front_start - model.front_speed * scan_index
             + model.front_roughness * crop["front"].mean(axis=0, keepdims=True))
    oxidised = 1.0 / (1.0 + np.exp(-(depth - front) / model.front_width))
    # Small oxide patches ahead of the front (oxidation along grain boundaries).
    oxidised = np.clip(oxidised + 0.05 * np.maximum(crop["oxide_patch"] - 1.0, 0.0), 0.0, 1.0)

    te = te * (1.0 - model.te_loss * oxidised)
    ge = ge * (1.0 + 0.5 * oxidised)                                # Ge oxidises and stays (GeO2)
    si = model.silicon * (1.0 + model.silicon_variation * crop["silicon"]) * (1.0 + 0.5 * oxidised)
    metals = np.clip(np.stack([ge, sb, te]), 1e-3, None)
    metals = metals / metals.sum(axis=0) * (1.0 - np.clip(si, 0.0, 0.2))
    oxygen = model.oxygen_background + (model.oxygen_max - model.oxygen_background) * oxidised
    values = {"O": oxygen, "Si": np.clip(si, 0.0, 0.2) * (1 - oxygen),
              "Ge": metals[0] * (1 - oxygen), "Sb": metals[1] * (1 - oxygen),
              "Te": metals[2] * (1 - oxygen)}
    comp = np.stack([values[e] for e in elements])
    return comp / comp.sum(axis=0, keepdims=True)
