"""What a microscope file holds, in words, when it is not the diffraction scan asked for.

A user who gives an EDS, EELS or HAADF file as the diffraction input is told
what the file holds (its signals and their axes) and where to pass it
instead. :func:`describe_signals` works on RosettaSciIO signal dictionaries,
:func:`describe_velox` on the HDF5 layout of a Thermo Fisher Velox ``.emd``
(readable without the ``sparse`` package RosettaSciIO needs for its spectrum
images).
"""

from __future__ import annotations

import json

import numpy as np

from .calibration import is_energy_unit, text


def _axis(axis: dict) -> str:
    name = str(axis.get("name") or "").strip() or "axis"
    unit = text(axis.get("units") or "").strip()
    size = int(axis.get("size") or 0)
    return f"{size} {name}" + (f" ({unit})" if unit and unit != "<undefined>" else "")


def _kind(signal: dict) -> str:
    """``"EDS"``, ``"EELS"``, ``"spectrum"``, ``"image"``, ``"stack"`` or ``"data"``."""
    md = signal.get("metadata") or {}
    stype = str((md.get("Signal") or {}).get("signal_type") or "").upper()
    title = str((md.get("General") or {}).get("title") or "").upper()
    if any(is_energy_unit(a.get("units")) for a in signal.get("axes", [])):
        for kind in ("EELS", "EDS"):
            if kind in stype or kind in title:
                return kind
        return "spectrum"
    ndim = int(np.ndim(signal["data"]))
    return {2: "image", 3: "stack"}.get(ndim, "data")


def describe_signals(signals: list[dict]) -> tuple[str, str]:
    """What the signals of a file are, and what to pass instead.

    Returns
    -------
    what : str
        E.g. ``"'EELS_SI' (EELS spectrum image): 2048 Energy loss (eV) x 2 y (µm) x 2 x (µm)"``.
    instead : str
        Where such data goes (``eds``, ``haadf``), or that stem2eds does not use it.
    """
    parts, kinds = [], []
    names = {"EDS": "EDS spectrum image", "EELS": "EELS spectrum image",
             "spectrum": "spectra (an energy axis)", "image": "image", "stack": "stack",
             "data": "data"}
    for s in signals:
        kind = _kind(s)
        kinds.append(kind)
        title = str(((s.get("metadata") or {}).get("General") or {}).get("title") or "untitled")
        axes = " x ".join(_axis(a) for a in s.get("axes", [])) or \
            "x".join(map(str, np.shape(s["data"])))
        parts.append(f"'{title}' ({names[kind]}): {axes}")
    return "; ".join(parts), _instead(kinds)


def _instead(kinds: list[str]) -> str:
    advice = []
    if "EDS" in kinds or "spectrum" in kinds:
        advice.append("give an EDS spectrum image as `eds`")
    if "EELS" in kinds:
        advice.append("EELS is not used by stem2eds")
    if "image" in kinds:
        advice.append("give a HAADF image as `haadf`")
    advice.append("`diffraction` is the 4D-STEM scan recorded by the camera "
                  "(Rx x Ry positions of Qx x Qy patterns)")
    return "; ".join(advice)


def _velox_metadata(group) -> dict:
    """The JSON metadata Velox stores beside each dataset (first frame), or {}."""
    try:
        raw = np.asarray(group["Metadata"][:, 0] if group["Metadata"].ndim == 2
                         else group["Metadata"][()], dtype=np.uint8)
        return json.loads(bytes(raw).rstrip(b"\0").decode("utf-8", "replace"))
    except Exception:  # noqa: BLE001 - metadata is only used for the description
        return {}


def describe_velox(f) -> tuple[str, str] | None:
    """What a Velox ``.emd`` file holds and where to pass it, or None if not Velox.

    Velox stores images as ``/Data/Image/<id>/Data`` (H, W, frames) and EDS
    as ``/Data/SpectrumImage/<id>`` (a compressed event stream), each with a
    JSON ``Metadata`` array naming the detector.
    """
    import h5py

    data = f.get("Data")
    if not isinstance(data, h5py.Group) or not any(
            k in data for k in ("Image", "SpectrumImage", "SpectrumStream", "Spectrum")):
        return None
    images, spectra = [], []
    for key in data.get("Image", {}):
        grp = data["Image"][key]
        shape = grp["Data"].shape if "Data" in grp else ()
        detector = ((_velox_metadata(grp).get("BinaryResult") or {}).get("Detector")
                    or "image")
        frames = f", {shape[2]} frames" if len(shape) == 3 and shape[2] > 1 else ""
        images.append(f"{detector} {shape[0]}x{shape[1]}{frames}" if len(shape) >= 2
                      else detector)
    for group in ("SpectrumImage", "Spectrum"):
        for key in data.get(group, {}):
            detector = ((_velox_metadata(data[group][key]).get("BinaryResult") or {})
                        .get("Detector") or "EDS")
            spectra.append(f"an EDS {'spectrum image' if group == 'SpectrumImage' else 'spectrum'}"
                           f" ({detector})")
    held = spectra + ([f"image{'s' if len(images) > 1 else ''} " + ", ".join(images)]
                      if images else [])
    what = ("is a Velox file holding " + (" and ".join(held) or "no data")
            + ", not a 4D-STEM diffraction scan")
    if spectra and images:
        advice = "give it as `eds` (the spectrum image) and as `haadf` (its image)"
    elif spectra:
        advice = "give it as `eds` (the spectrum image)"
    else:
        advice = "give it as `haadf`"
    return what, advice + "; `diffraction` is the camera's 4D-STEM scan, a separate file"


def file_pixel_size_nm(path, spectrum: bool) -> float | None:
    """The scan step (nm) of a spectrum image (``spectrum``) or HAADF image in a file, or None.

    Read lazily with RosettaSciIO (axes only); None when the file has no
    calibrated length axes or cannot be read that way (e.g. a Velox
    spectrum image without the ``sparse`` package).
    """
    import importlib
    from pathlib import Path

    from rsciio import IO_PLUGINS

    from .calibration import is_length_unit, scalar, standard_units, unit_token

    ext = Path(path).suffix.lower().lstrip(".")
    for plugin in (p for p in IO_PLUGINS if ext in (e.lower() for e in p["file_extensions"])):
        kwargs = {"select_type": "images"} if plugin["name"] == "EMD" and not spectrum else {}
        try:
            signals = importlib.import_module(plugin["api"]).file_reader(str(path), lazy=True,
                                                                           **kwargs)
        except Exception:  # noqa: BLE001 - only a calibration is wanted here
            continue
        for s in signals:
            axes = s.get("axes", [])
            energy = [a for a in axes if is_energy_unit(a.get("units"))]
            image_axes = [a for a in axes if not a.get("navigate", False)]
            if spectrum != bool(energy) or (not spectrum and len(image_axes) != 2):
                continue
            for axis in (axes if spectrum else image_axes):
                unit = unit_token(text(axis.get("units") or ""))
                size = scalar(axis.get("scale"))
                if is_length_unit(unit) and size:
                    return standard_units("r", abs(size), unit)[0]
    return None
