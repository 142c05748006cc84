"""Physics-based simulator of a Ge-Sb-Te 4D-STEM + EDS + HAADF scan series.

One module per physical part:

* :mod:`.scattering` - electron scattering factors (Peng et al. 1996), wavelength;
* :mod:`.amorphous` - composition-dependent short-range order, S(q), I(q);
* :mod:`.crystal` - Bragg reflections of rock-salt GST grains;
* :mod:`.diffraction` - patterns on the detector (:func:`simulate_patterns`);
* :mod:`.composition` - composition fields evolving over the series;
* :mod:`.specimen` - thickness, grains, descan of the beam origin;
* :mod:`.eds` - X-ray counts and Cliff-Lorimer quantification;
* :mod:`.haadf` - Z-contrast image;
* :mod:`.series` - the driver writing one scan bundle per scan (:func:`simulate_series`).
"""

from .composition import CompositionModel, composition_maps, latent_fields
from .diffraction import (default_probe_radius, default_q_pixel_size, expected_patterns,
                          simulate_patterns)
from .eds import quantify, simulate_eds, xray_counts
from .haadf import haadf_image
from .scattering import electron_wavelength, scattering_factor
from .series import ELEMENTS, SimulationSettings, simulate_scan, simulate_series
from .specimen import Grains, descan_origins, place_grains, thickness_map

__all__ = ["ELEMENTS", "CompositionModel", "Grains", "SimulationSettings", "composition_maps",
           "default_probe_radius", "default_q_pixel_size", "descan_origins", "electron_wavelength",
           "expected_patterns", "haadf_image", "latent_fields", "place_grains", "quantify",
           "scattering_factor", "simulate_eds", "simulate_patterns", "simulate_scan",
           "simulate_series", "thickness_map", "xray_counts"]
