"""stem2eds: predict EDS composition maps and HAADF from 4D-STEM scans.

Array conventions used everywhere in the package:

* a 4D-STEM array is ``(Rx, Ry, Qx, Qy)``: scan rows, scan columns, detector
  rows, detector columns;
* element maps are ``(Rx, Ry)`` float32 **atomic fractions** in [0, 1];
  percent appears only at the edges (input files, plot labels);
* elements are named by symbol, in the order stored in the bundle.

The public API is re-exported here for notebooks::

    import stem2eds
    with stem2eds.open_bundle("scan_0033.h5") as scan:
        print(scan.elements, scan.scan_shape)
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("stem2eds")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

from .errors import InputError  # noqa: E402
from .bundle import (  # noqa: E402
    Calibration,
    ScanBundle,
    create_bundle,
    open_bundle,
)

__all__ = [
    "__version__",
    "InputError",
    "Calibration",
    "ScanBundle",
    "create_bundle",
    "open_bundle",
]
