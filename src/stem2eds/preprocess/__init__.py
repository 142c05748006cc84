"""Preprocessing of 4D-STEM scans and EDS maps (the paper's data preparation).

Pure functions on batches of patterns (n, Qx, Qy) and maps (E, Rx, Ry)
(``patterns``, ``origin``, ``maps``, ``radial``, and the per-chunk ``passes``),
the settings (``settings``), where the passes run (``executor``: threads or
Dask), and the streaming driver over bundles (``pipeline``, ``output``):

>>> from stem2eds.preprocess import PreprocessSettings, preprocess_bundle   # doctest: +SKIP
>>> settings = preprocess_bundle("scan.h5", "scan_pre.h5", PreprocessSettings(bin_factor=4))
>>> settings.scale, settings.beam_radius                                      # doctest: +SKIP

Training and prediction use the same functions with the stored settings
(:func:`iter_preprocessed`), so preprocessing is never done differently at
prediction time.
"""

from ..lazy import lazy_exports

#: Where each public name lives. Modules load on first use, so that
#: ``stem2eds predict`` (which needs only the pipeline) does not import
#: SciPy (radial profiles, EDS filters) or the figure code.
_EXPORTS = {
    "figures": ("plot_eds_filter", "plot_pattern_steps", "save_figures"),
    "maps": ("crop_maps", "filter_maps", "parse_crop", "preprocess_maps"),
    "origin": ("OriginBatch", "OriginFit", "disk_radius", "find_origins", "fit_origins"),
    "patterns": ("apply_scaling", "beam_mask", "bin_patterns", "centre_patterns",
                 "detector_centre", "normalise", "process_patterns", "remove_beam"),
    "output": ("summarise",),
    "pipeline": ("iter_preprocessed", "measure_origins", "preprocess_bundle", "raw_calibration"),
    "radial": ("radial_axis", "radial_profile", "ring_radii"),
    "settings": ("PreprocessSettings", "load_settings"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)


__all__ = [
    "PreprocessSettings", "preprocess_bundle", "iter_preprocessed", "preprocess_maps",
    "radial_profile", "radial_axis", "ring_radii", "raw_calibration", "load_settings",
    "measure_origins", "summarise",
    "find_origins", "fit_origins", "disk_radius", "OriginBatch", "OriginFit",
    "centre_patterns", "remove_beam", "beam_mask", "bin_patterns", "apply_scaling",
    "process_patterns", "normalise", "detector_centre",
    "filter_maps", "crop_maps", "parse_crop",
    "plot_pattern_steps", "plot_eds_filter", "save_figures",
]
