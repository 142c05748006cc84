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
    run = stem2eds.load_run("runs/0033")
    prediction = run.predict("scan_0034.h5")   # or a numpy/dask array, a HyperSpy signal
    maps = prediction.to_hyperspy()            # {"Ge": Signal2D, ..., "haadf": Signal2D}

Names load on first use, so that ``import stem2eds`` (and ``stem2eds --help``)
does not import h5py, torch or Lightning.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .lazy import lazy_exports

try:
    __version__ = _version("stem2eds")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

#: Where each public name lives.
_WHERE = {
    "InputError": "errors",
    "PixelCalibration": "formats.bundle",
    "ScanBundle": "formats.bundle",
    "create_bundle": "formats.bundle",
    "open_bundle": "formats.bundle",
    "TrainConfig": "train.config",
    "load_run": "predict.predictor",
    "Predictor": "predict.predictor",
    "Prediction": "predict.result",
    "ScanSource": "io.scan",
    "ArrayScan": "predict.sources",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)


__all__ = ["__version__", *_WHERE]
