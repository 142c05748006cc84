"""Preprocessing of 4D-STEM scans and EDS maps (the paper's data preparation).

Pure functions on batches of patterns (n, Qx, Qy) and maps (E, Rx, Ry), and
a streaming driver over bundles:

>>> from stem2eds.preprocess import PreprocessSettings, preprocess_bundle   # doctest: +SKIP
>>> settings = preprocess_bundle("scan.h5", "scan_pre.h5", PreprocessSettings(bin_factor=4))
>>> settings.scale, settings.beam_radius                                      # doctest: +SKIP

Training and prediction use the same functions with the stored settings
(:func:`iter_preprocessed`), so preprocessing is never done differently at
prediction time.
"""

from .figures import plot_eds_filter, plot_pattern_steps, save_figures
from .maps import crop_maps, filter_maps, parse_crop, preprocess_maps
from .origin import OriginBatch, OriginFit, disk_radius, find_origins, fit_origins
from .patterns import (apply_scaling, beam_mask, bin_patterns, centre_patterns,
                       detector_centre, normalise, process_patterns, remove_beam)
from .pipeline import (PreprocessSettings, iter_preprocessed, iter_region, load_settings,
                       measure_origins, preprocess_bundle, raw_calibration, summarise)
from .radial import radial_axis, radial_profile, ring_radii

__all__ = [
    "PreprocessSettings", "preprocess_bundle", "iter_preprocessed", "preprocess_maps",
    "radial_profile", "radial_axis", "ring_radii", "raw_calibration", "load_settings",
    "measure_origins", "iter_region", "summarise",
    "find_origins", "fit_origins", "disk_radius", "OriginBatch", "OriginFit",
    "centre_patterns", "remove_beam", "beam_mask", "bin_patterns", "apply_scaling",
    "process_patterns", "normalise", "detector_centre",
    "filter_maps", "crop_maps", "parse_crop",
    "plot_pattern_steps", "plot_eds_filter", "save_figures",
]
