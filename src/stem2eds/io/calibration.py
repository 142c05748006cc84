"""Calibrations found in 4D-STEM files, in the package's units.

:func:`hdf5_calibration` reads the pixel sizes and beam energy that HDF5
layouts we know store beside the data (EMD dim vectors, py4DSTEM
metadata); :func:`standard_units` puts a pixel size in nm (scan) or 1/nm or
mrad (detector). The readers in :mod:`stem2eds.io.diffraction` use both;
:mod:`stem2eds.convert` applies the user's values with the same units.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def hdf5_calibration(f, ds) -> dict[str, Any]:
    """Calibration of a 4D HDF5 dataset from the conventions we know.

    Parameters
    ----------
    f : h5py.File
    ds : h5py.Dataset, shape (Rx, Ry, Qx, Qy) or (Rx*Ry, Qx, Qy)

    Returns
    -------
    dict
        Keys of :class:`~stem2eds.formats.bundle.PixelCalibration` found in the file.

    Notes
    -----

    * EMD (NCEM ``dim1..dim4``, EMD 1.0 / py4DSTEM ``dim0..dim3``): a vector
      per axis beside the data, with a ``units`` attribute; the step between
      the first two values is the pixel size.
    * py4DSTEM calibration metadata: ``R_pixel_size``, ``R_pixel_units``,
      ``Q_pixel_size``, ``Q_pixel_units`` stored as attributes or scalar
      datasets anywhere in the file; these win over the dim vectors, since
      py4DSTEM keeps dims in pixels and the calibration there.
    * ``beam_energy`` (keV) / ``beam_energy_kev`` / ``voltage`` anywhere.
    """
    import h5py

    cal: dict[str, Any] = {}
    parent = ds.parent
    for first in (1, 0):
        dims = [parent.get(f"dim{first + i}") for i in range(4)]
        if all(isinstance(d, h5py.Dataset) and d.ndim == 1 for d in dims):
            for prefix, d in (("r", dims[0]), ("q", dims[2])):
                step, unit = _dim_step(d)
                if step is not None:
                    cal[f"{prefix}_pixel_size"] = step
                    cal[f"{prefix}_pixel_unit"] = unit_token(unit)
            break
    found: dict[str, Any] = {}
    wanted = {"r_pixel_size", "r_pixel_units", "q_pixel_size", "q_pixel_units",
              "beam_energy", "beam_energy_kev"}

    def _collect(obj):
        for key, value in obj.attrs.items():
            if key.lower() in wanted:
                found.setdefault(key.lower(), value)

    def _visit(name, obj):
        _collect(obj)
        leaf = name.rsplit("/", 1)[-1].lower()
        if isinstance(obj, h5py.Dataset) and leaf in wanted and obj.size == 1:
            found.setdefault(leaf, obj[()])

    _collect(f)
    f.visititems(_visit)
    for prefix in ("r", "q"):
        size = scalar(found.get(f"{prefix}_pixel_size"))
        if size is not None and size > 0:
            cal[f"{prefix}_pixel_size"] = size
            unit = found.get(f"{prefix}_pixel_units")
            if unit is not None:
                cal[f"{prefix}_pixel_unit"] = unit_token(text(unit))
            if text(cal.get(f"{prefix}_pixel_unit", "px")).lower() in ("pixels", "pixel"):
                cal[f"{prefix}_pixel_unit"] = "px"
    energy = scalar(found.get("beam_energy_kev", found.get("beam_energy")))
    if energy is not None and energy > 0:
        cal["beam_energy_kev"] = energy
    return standardise(cal)


def _dim_step(d) -> tuple[float | None, str]:
    unit = text(d.attrs.get("units", d.attrs.get("unit", "")))
    if d.shape[0] < 2 or unit.lower() in ("", "pixels", "pixel", "px", "[n_m]"):
        return None, unit
    values = d[:2].astype(float)
    step = float(values[1] - values[0])
    return (step, unit) if step > 0 else (None, unit)


def unit_token(text: str) -> str:
    """Units as one token: ``"1 / nm"`` (pint's style in RosettaSciIO) -> ``"1/nm"``."""
    return "".join(str(text).split())


#: Lengths in nm. A small table rather than pint: building pint's registry
#: takes seconds, and these are the units microscope files use. "A" is the
#: angstrom (py4DSTEM writes "A^-1"), never the ampere, in a pixel size.
_NM_PER = {"pm": 1e-3, "A": 0.1, "\u00c5": 0.1, "\u212b": 0.1, "angstrom": 0.1, "nm": 1.0,
           "um": 1e3, "\u00b5m": 1e3, "\u03bcm": 1e3, "mm": 1e6, "cm": 1e7, "m": 1e9}
_MRAD_PER = {"mrad": 1.0, "rad": 1e3, "urad": 1e-3, "\u00b5rad": 1e-3, "\u03bcrad": 1e-3}


def standardise(cal: dict[str, Any]) -> dict[str, Any]:
    """Calibration with R in nm and Q in 1/nm or mrad where the units allow."""
    out = dict(cal)
    for prefix in ("r", "q"):
        size, unit = out.get(f"{prefix}_pixel_size"), out.get(f"{prefix}_pixel_unit")
        if size is not None and unit is not None:
            out[f"{prefix}_pixel_size"], out[f"{prefix}_pixel_unit"] = \
                standard_units(prefix, float(size), unit)
    return out


def standard_units(prefix: str, size: float, unit: str) -> tuple[float, str]:
    """Express a pixel size in the package's units where the unit is known.

    Parameters
    ----------
    prefix : {"r", "q"}
        Scan (real-space length -> ``nm``) or detector pixel (reciprocal
        length -> ``1/nm``, angle -> ``mrad``).
    size : float
    unit : str

    Returns
    -------
    (size, unit)
        Converted, or unchanged when the unit is not one of the known ones.
    """
    unit = unit_token(unit)
    if prefix == "r" and unit in _NM_PER:
        return size * _NM_PER[unit], "nm"
    if prefix == "q":
        inverse = unit[2:] if unit.startswith("1/") else (
            unit[:-3] if unit.endswith("^-1") else unit[:-2] if unit.endswith("-1") else None)
        if inverse in _NM_PER:
            return size / _NM_PER[inverse], "1/nm"
        if unit in _MRAD_PER:
            return size * _MRAD_PER[unit], "mrad"
    return size, unit


def scalar(value) -> float | None:
    if value is None:
        return None
    try:
        return float(np.asarray(value).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None


def text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    return value.decode() if isinstance(value, bytes) else str(value)


# -- checks -------------------------------------------------------------------------

#: Plausible pixel sizes in the package's units. A scan step is between 0.1 pm
#: and 100 µm; a detector pixel between 1e-5 and 10 1/nm (0.01-0.2 is usual)
#: or 1e-4 and 50 mrad. Values outside are a misread calibration, not a scan.
PLAUSIBLE = {"nm": (1e-4, 1e5), "1/nm": (1e-5, 10.0), "mrad": (1e-4, 50.0)}
#: Beam energies (keV) of electron microscopes: SEM from 1 kV, TEM up to 3 MV.
PLAUSIBLE_BEAM_ENERGY_KEV = (1.0, 3000.0)
#: Units of an energy axis (a spectrum: EDS, EELS), never a detector axis of diffraction.
ENERGY_UNITS = ("eV", "keV", "meV", "MeV")


def is_energy_unit(unit) -> bool:
    return unit_token(text(unit or "")) in ENERGY_UNITS


def is_length_unit(unit) -> bool:
    return unit_token(text(unit or "")) in _NM_PER


def check_pixel(prefix: str, size: float, unit: str) -> str | None:
    """Why a pixel size (already in the package's units) is not usable, or None.

    Parameters
    ----------
    prefix : {"r", "q"}
        Scan step (a length, nm) or detector pixel (1/nm or mrad).
    size : float
    unit : str
        ``px`` (uncalibrated) is always accepted.
    """
    unit = unit_token(unit)
    if unit == "px":
        return None
    if prefix == "r":
        if unit != "nm":
            return f"{size:.4g} {unit} is not a length"
    elif unit not in ("1/nm", "mrad"):
        if unit == "nm" or unit in _NM_PER:
            return (f"{size:.4g} {unit} is a length, not a reciprocal length (1/nm) or an "
                    "angle (mrad)")
        return f"{size:.4g} {unit} is not a reciprocal length (1/nm) or an angle (mrad)"
    lo, hi = PLAUSIBLE[unit]
    if not lo <= size <= hi:
        return f"{size:.4g} {unit} is outside the plausible range {lo:g}..{hi:g} {unit}"
    return None


def check_calibration(cal: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split a file's (standardised) calibration into usable values and problems.

    Returns
    -------
    usable : dict
        ``cal`` without the values that failed.
    problems : dict
        ``{"r_pixel" | "q_pixel" | "beam_energy_kev": why}`` for each value
        dropped (a detector pixel in cm, a 1e17 scan step, ...).
    """
    usable, problems = dict(cal), {}
    names = {"r": "scan step", "q": "detector pixel"}
    for prefix in ("r", "q"):
        size = usable.get(f"{prefix}_pixel_size")
        if size is None:
            continue
        why = check_pixel(prefix, float(size), str(usable.get(f"{prefix}_pixel_unit", "px")))
        if why:
            problems[f"{prefix}_pixel"] = f"the file's {names[prefix]} {why}"
            usable.pop(f"{prefix}_pixel_size")
            usable.pop(f"{prefix}_pixel_unit", None)
    energy = usable.get("beam_energy_kev")
    lo, hi = PLAUSIBLE_BEAM_ENERGY_KEV
    if energy is not None and not lo <= float(energy) <= hi:
        problems["beam_energy_kev"] = (f"the file's beam energy {float(energy):.4g} keV is "
                                       f"outside {lo:g}..{hi:g} keV")
        usable.pop("beam_energy_kev")
    return usable, problems


def beam_energy_from_signal(signal: dict) -> float | None:
    """Beam energy (keV) of a RosettaSciIO signal dictionary, or None.

    ``metadata.Acquisition_instrument.TEM|SEM.beam_energy`` where the reader
    fills it; otherwise through the reader's ``mapping`` (original metadata
    path -> metadata path, with a conversion), which HyperSpy applies on
    loading but the bare reader does not (Velox ``Optics.AccelerationVoltage``
    in V, TIA ``High_tension_kV``, blockfile ``Beam_energy``).
    """
    instrument = (signal.get("metadata") or {}).get("Acquisition_instrument") or {}
    for where in ("TEM", "SEM"):
        value = scalar((instrument.get(where) or {}).get("beam_energy"))
        if value is not None and value > 0:
            return value
    original = signal.get("original_metadata") or {}
    for source, target in (signal.get("mapping") or {}).items():
        dest, convert = target if isinstance(target, tuple) else (target, None)
        if not str(dest).endswith(".beam_energy"):
            continue
        value: Any = original
        for key in str(source).split("."):
            # HyperSpy's metadata tree writes spaces in keys as underscores
            value = next((v for k, v in value.items() if str(k).replace(" ", "_") == key),
                         None) if isinstance(value, dict) else None
        if value is None:
            continue
        try:
            value = scalar(convert(value) if convert else value)
        except Exception:  # noqa: BLE001 - a reader's own conversion of odd metadata
            continue
        if value is not None and value > 0:
            return value
    return None
