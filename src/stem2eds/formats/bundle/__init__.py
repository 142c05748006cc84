"""The scan bundle: one HDF5 file per scan, the format every stage reads.

The package is the one owner of the format: :mod:`.layout` (names,
version, :class:`PixelCalibration`), :mod:`.read` (:func:`open_bundle`),
:mod:`.write` (:func:`create_bundle`).

Layout (documented in the docs' Formats page; tools outside the project rely on it)::

    /                         attrs: format = "stem2eds-bundle", format_version,
                                     kind = "raw" | "preprocessed",
                                     scan_name, elements (symbols, in order),
                                     r_pixel_size, r_pixel_unit,
                                     q_pixel_size, q_pixel_unit,
                                     beam_energy_kev (NaN when unknown),
                                     provenance (JSON), stem2eds_version
    /diffraction              (Rx, Ry, Qx, Qy), original dtype, contiguous
                              (compressed: one pattern per chunk)
    /eds/<Element>            (Rx, Ry) float32 atomic fractions in [0, 1]
    /haadf                    (Rx, Ry) float32, optional
    /truth/<Element>          (Rx, Ry) float32, noise-free composition
                              (simulated scans only)
    /calibration/...          arrays found by preprocessing (origins, ...)

A preprocessed bundle (``kind = "preprocessed"``) has the same layout with
``diffraction`` float32 in [0, 1], blurred ``eds`` targets, the raw maps in
``eds_raw/<Element>`` and its settings in the ``preprocess`` attribute (JSON).

Writing goes through :func:`create_bundle`, which writes to a temporary file
and renames it on success, so a half-written bundle never exists under the
final name.
"""

from .layout import (CALIBRATION, DIFFRACTION, EDS, EDS_RAW, FORMAT, FORMAT_VERSION, HAADF,
                     TRUTH, PixelCalibration)
from .read import ScanBundle, bundle_fingerprint, fingerprint, open_bundle
from .write import BundleBuilder, create_bundle, describe_source

__all__ = ["CALIBRATION", "DIFFRACTION", "EDS", "EDS_RAW", "FORMAT", "FORMAT_VERSION", "HAADF",
           "TRUTH", "PixelCalibration", "ScanBundle", "open_bundle", "bundle_fingerprint",
           "fingerprint", "BundleBuilder",
           "create_bundle", "describe_source"]
