"""Readers: 4D-STEM diffraction files, element maps, spectrum images, HAADF images.

Files are read here and nowhere else; everything returned is arrays (or a lazy
source of them) in the package's conventions: diffraction (Rx, Ry, Qx, Qy)
in the file's dtype, maps (Rx, Ry), compositions as atomic fractions in [0, 1].
"""

from .diffraction import DiffractionSource, find_4d_datasets, open_diffraction, standard_units
from .maps import (
    ElementMaps,
    eds_unit_of,
    find_map_files,
    read_image,
    read_map_folder,
    to_fractions,
)
from .spectrum import (
    QuantifiedMaps,
    load_spectrum_image,
    parse_k_factors,
    quantify_spectrum_image,
    read_haadf_from_file,
)

__all__ = [
    "DiffractionSource",
    "open_diffraction",
    "find_4d_datasets",
    "standard_units",
    "ElementMaps",
    "find_map_files",
    "read_image",
    "read_map_folder",
    "to_fractions",
    "eds_unit_of",
    "QuantifiedMaps",
    "load_spectrum_image",
    "parse_k_factors",
    "quantify_spectrum_image",
    "read_haadf_from_file",
]
