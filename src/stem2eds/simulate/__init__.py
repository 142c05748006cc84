"""Physics-based simulator of a Ge-Sb-Te 4D-STEM + EDS + HAADF scan series.

One module per physical part:

* :mod:`.scattering` - electron scattering factors (Peng et al. 1996), wavelength;
* :mod:`.amorphous` - composition-dependent short-range order, S(q), I(q);
* :mod:`.crystal` - Bragg reflections of rock-salt GST grains;
* :mod:`.diffraction` - patterns on the detector (:func:`simulate_patterns`).
"""

from .diffraction import (default_probe_radius, default_q_pixel_size, expected_patterns,
                          simulate_patterns)
from .scattering import electron_wavelength, scattering_factor

#: Elements of the simulated film, in bundle order.
ELEMENTS = ("O", "Si", "Ge", "Sb", "Te")

__all__ = ["ELEMENTS", "default_probe_radius", "default_q_pixel_size", "electron_wavelength",
           "expected_patterns", "scattering_factor", "simulate_patterns"]
