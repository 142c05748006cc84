"""Scans held in memory as scan sources: numpy, dask, HyperSpy/pyxem, py4DSTEM.

:func:`as_scan` turns what a notebook user holds into an :class:`ArrayScan`
(a :class:`stem2eds.io.scan.ScanSource`) that
:meth:`stem2eds.predict.Predictor.predict` streams like a bundle:

* a numpy or dask array ``(Rx, Ry, Qx, Qy)`` (scan rows, scan columns,
  detector rows, detector columns); uncalibrated unless ``calibration`` is given;
* a HyperSpy or pyxem signal (lazy included) with two navigation and two
  signal axes. HyperSpy lists axes as ``(x, y | kx, ky)``, the reverse of
  the array: ``axes_manager.navigation_axes[0]`` (``x``) runs along the
  scan columns (``Ry``). The data are taken in array order whatever the
  signal's axis order, the scan step from the navigation axes (in nm;
  Å, µm, m... converted) and the detector pixel from the signal axes
  (1/nm or mrad);
* a py4DSTEM ``DataCube`` (recognised only when py4DSTEM is already
  imported: this module never imports it), calibrated from its
  ``calibration`` (``R_pixel_size``, ``Q_pixel_size`` and their units).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..formats.bundle import PixelCalibration
from ..formats.names import safe_file_name
from ..io.calibration import check_pixel, standard_units, unit_token
from ..io.scan import ArrayPatterns, is_dask_array

#: Units meaning "not calibrated" in HyperSpy and py4DSTEM.
_UNCALIBRATED = ("", "<undefined>", "px", "pixel", "pixels", "none")


class ArrayScan:
    """A raw 4D-STEM scan in memory (or a dask array), as a scan source.

    Parameters
    ----------
    data : numpy or dask array, shape (Rx, Ry, Qx, Qy)
        Integer or floating patterns; a dask array is computed block by
        block as prediction reads it.
    calibration : PixelCalibration, optional
        Scan step (nm) and detector pixel; default uncalibrated (``px``).
    name : str
        Scan name (made a safe file name).

    Attributes
    ----------
    path : None
        A scan in memory has no file (a Dask cluster cannot read it).
    kind : "raw"
    """

    path = None
    kind = "raw"

    def __init__(self, data: Any, calibration: PixelCalibration | None = None,
                 name: str = "array"):
        self._patterns = ArrayPatterns(data)
        self.calibration = calibration if calibration is not None else PixelCalibration()
        self.name = safe_file_name(name)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self._patterns.scan_shape

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self._patterns.detector_shape

    @property
    def diffraction(self) -> ArrayPatterns:
        return self._patterns

    def json_attr(self, key: str, default: Any = None) -> Any:
        """Arrays carry no stored records: always ``default``."""
        return default

    def __repr__(self) -> str:
        kind = "dask" if self._patterns.lazy else "numpy"
        return f"ArrayScan({self.name!r}, {kind} {self.scan_shape} x {self.detector_shape})"


def as_scan(data: Any, name: str | None = None) -> ArrayScan:
    """An in-memory scan source for a numpy/dask array, HyperSpy signal or py4DSTEM DataCube.

    Parameters
    ----------
    data : array (Rx, Ry, Qx, Qy), hyperspy BaseSignal or py4DSTEM DataCube
    name : str, optional
        Scan name; default the signal's title, the DataCube's name or ``"array"``.

    Returns
    -------
    ArrayScan

    Raises
    ------
    InputError
        For anything else, a signal without 2 navigation and 2 signal axes,
        units that are not a length (scan) or a reciprocal length or angle
        (detector), or an array that is not 4D integer or float data.
    """
    if _is_hyperspy_signal(data):
        return _from_signal(data, name)
    if _is_datacube(data):
        return _from_datacube(data, name)
    if is_dask_array(data) or isinstance(data, np.ndarray):
        return ArrayScan(data, name=name or "array")
    raise InputError(f"cannot predict a {type(data).__name__}",
                     hint="pass a bundle path, a numpy or dask array (Rx, Ry, Qx, Qy), a "
                          "HyperSpy/pyxem signal or a py4DSTEM DataCube")


def _is_hyperspy_signal(data: Any) -> bool:
    module = sys.modules.get("hyperspy.signal")
    return module is not None and isinstance(data, module.BaseSignal)


def _is_datacube(data: Any) -> bool:
    # only when the user has py4DSTEM loaded: importing it here would take seconds
    if "py4DSTEM" not in sys.modules:
        return False
    from py4DSTEM import DataCube  # type: ignore[import-not-found]

    return isinstance(data, DataCube)


def _from_signal(signal: Any, name: str | None) -> ArrayScan:
    """HyperSpy/pyxem signal (x, y | kx, ky) -> ArrayScan over its (Rx, Ry, Qx, Qy) data."""
    am = signal.axes_manager
    nav, sig = am.navigation_axes, am.signal_axes
    if len(nav) != 2 or len(sig) != 2:
        raise InputError(f"the signal has {len(nav)} navigation and {len(sig)} signal axes; "
                         "a 4D-STEM scan has 2 and 2 (x, y | kx, ky)",
                         hint="e.g. hs.signals.Signal2D(data (Rx, Ry, Qx, Qy))")
    # array axis of y (scan rows), x (columns), ky, kx: array order whatever the signal's
    order = [nav[1].index_in_array, nav[0].index_in_array,
             sig[1].index_in_array, sig[0].index_in_array]
    data = signal.data
    if order != [0, 1, 2, 3]:
        data = data.transpose(order)
    r_size, r_unit = _axes_pixel("r", nav, "navigation")
    q_size, q_unit = _axes_pixel("q", sig, "signal")
    energy = _signal_beam_energy(signal)
    cal = PixelCalibration(r_size, q_size, r_unit, q_unit, energy)
    title = name or str(signal.metadata.get_item("General.title", "") or "") or "signal"
    return ArrayScan(data, cal, title)


def _axes_pixel(prefix: str, axes, which: str) -> tuple[float, str]:
    """One pixel size (package units) from two HyperSpy axes of the same kind."""
    sizes = []
    for axis in axes:
        if not axis.is_uniform:
            raise InputError(f"{which} axis {axis.name!s} is not uniform",
                             hint="predict signals with uniform (linear) axes")
        unit = unit_token(str(axis.units))
        if unit.lower() in _UNCALIBRATED:
            sizes.append((1.0, "px"))
            continue
        size, std = standard_units(prefix, float(axis.scale), unit)
        why = check_pixel(prefix, size, std)
        if why:
            kind = "a length (nm, Å, µm, m)" if prefix == "r" else \
                "a reciprocal length (1/nm, 1/Å) or an angle (mrad)"
            raise InputError(f"{which} axis {axis.name!s}: {why}",
                             hint=f"set the axis units to {kind}, or to '<undefined>' "
                                  "for an uncalibrated scan")
        sizes.append((size, std))
    (a, unit_a), (b, unit_b) = sizes
    if unit_a != unit_b or abs(a - b) > 1e-3 * max(abs(a), abs(b)):
        raise InputError(f"the two {which} axes have different pixel sizes "
                         f"({a:.4g} {unit_a}, {b:.4g} {unit_b})",
                         hint="stem2eds calibrates square pixels; set both axes' scale "
                              "and units alike")
    return a, unit_a


def _signal_beam_energy(signal: Any) -> float:
    for where in ("TEM", "SEM"):
        value = signal.metadata.get_item(f"Acquisition_instrument.{where}.beam_energy")
        if value:
            return float(value)
    return float("nan")


def _from_datacube(cube: Any, name: str | None) -> ArrayScan:
    """py4DSTEM DataCube (R_Nx, R_Ny, Q_Nx, Q_Ny) -> ArrayScan, calibrated from its metadata."""
    cal = cube.calibration
    values = []
    for prefix, size, unit in (("r", cal.get_R_pixel_size(), cal.get_R_pixel_units()),
                               ("q", cal.get_Q_pixel_size(), cal.get_Q_pixel_units())):
        unit = unit_token(str(unit))
        if unit.lower() in _UNCALIBRATED or size is None:
            values.append((1.0, "px"))
            continue
        std_size, std_unit = standard_units(prefix, float(size), unit)
        why = check_pixel(prefix, std_size, std_unit)
        if why:
            raise InputError(f"the DataCube's {'R' if prefix == 'r' else 'Q'} pixel: {why}",
                             hint="set it with cube.calibration.set_R_pixel_units / "
                                  "set_Q_pixel_units")
        values.append((std_size, std_unit))
    (r, r_unit), (q, q_unit) = values
    # py4DSTEM keeps no beam energy in its calibration
    return ArrayScan(cube.data, PixelCalibration(r, q, r_unit, q_unit),
                     name or str(cube.name or "datacube"))


def scan_label(source: Any) -> str:
    """How a prediction names its source: a resolved path, or the in-memory scan's name."""
    path = source.path
    return str(Path(path).resolve()) if path is not None else f"<memory: {source.name}>"
