"""EDS spectrum images and HAADF images from microscope files, via HyperSpy/exspy.

A spectrum image (Velox ``.emd``, Bruker ``.bcf``, TIA ``.emi``, ``.hspy``,
... anything HyperSpy loads with two navigation axes and an X-ray energy
axis) is quantified per probe position with exspy's Cliff-Lorimer method:
background-subtracted line intensities (exspy's background windows), the
k-factors of the lines, weight fractions, then atomic fractions (0..1).

K-factors come from the ``k_factors`` setting (keys are elements, meaning
the line exspy chooses for the beam energy, or X-ray lines such as
``Ge_La``) or, when not given, from the file's metadata item
``Sample.kfactors`` (a list in the order of ``Sample.xray_lines``, the
layout in which exspy users keep them in ``.hspy`` files). There is no
silent default: a k-factor of 1 for every line would give compositions off
by tens of percent. A k-factor is used only for the line it was given for:
when the spectrum forces another line (its energy range ends below the
element's K line, say), the k-factor is refused, not applied to that line.

Cliff-Lorimer is the thin-film (TEM) approximation, with no absorption or
fluorescence correction; SEM spectrum images (bulk samples, beam energy
below :data:`SEM_MAX_KV`) are quantified all the same, with a note saying
so. Positions with fewer than :data:`MIN_NET_COUNTS` net counts in the
quantified lines are counted; when most positions have that few, the
spectrum image is refused and spatial binning (``eds_bin``: sum ``n x n``
positions, HyperSpy's ``rebin``) is offered.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..elements import check_element
from ..errors import InputError
from .cliff_lorimer import (MIN_NET_COUNTS, SEM_MAX_KV, bin_positions, cliff_lorimer, count_low,
                            lines_and_k_factors, net_intensities, pixel_size_nm,
                            settle_beam_energy)

@dataclass
class QuantifiedMaps:
    """Per-position composition from a spectrum image.

    Attributes
    ----------
    elements : list of str
        Symbols in output order.
    fractions : dict of str to ndarray, shape (Rx, Ry)
        float32 atomic fractions in [0, 1], summing to 1 at every position
        with net counts (0 everywhere at positions with none).
    xray_lines : dict of str to str
        The line quantified for each element, e.g. ``{"Ge": "Ge_Ka"}``.
    k_factors : dict of str to float
        The k-factor used for each element (for the line in ``xray_lines``).
    k_factor_source : str
        ``"flags"`` (given by the caller, ``k_factors``; the name is kept as
        stored in bundles), ``"file metadata"`` or ``"flags and file metadata"``.
    notes : list of str
        Sentences for the user (lines used, binning, low-count positions,
        clipped negative intensities, SEM data); the caller prints them.
    beam_energy_kev : float
        Beam energy used to choose the lines (from the file, else given).
    microscope : {"TEM", "SEM"}
        Where the spectrum image was taken (file metadata or beam energy).
    pixel_size_nm : tuple of float or None
        Scan step (row, column) in nm after binning; None if the file's scan
        axes are not in length units.
    eds_bin : int
        Positions summed along each scan axis (1: none).
    low_count_positions : int
        Positions with fewer than :data:`MIN_NET_COUNTS` net counts.
    clipped : dict of str to int
        Per element, the positions whose net line intensity was negative
        (background above the line: noise) and was set to 0 before
        quantification.
    clipping_shift : dict of str to float
        Per element, mean atomic fraction with clipping minus without it.
    """

    elements: list[str]
    fractions: dict[str, np.ndarray]
    xray_lines: dict[str, str]
    k_factors: dict[str, float]
    k_factor_source: str
    notes: list[str] = field(default_factory=list)
    beam_energy_kev: float = float("nan")
    microscope: str = "TEM"
    pixel_size_nm: tuple[float, float] | None = None
    eds_bin: int = 1
    low_count_positions: int = 0
    clipped: dict[str, int] = field(default_factory=dict)
    clipping_shift: dict[str, float] = field(default_factory=dict)


def parse_k_factors(text: str | Mapping[str, float] | None) -> dict[str, float] | None:
    """Parse ``"O=1.0,Si=1.2,Ge_La=2.1"`` into ``{"O": 1.0, "Si": 1.2, "Ge_La": 2.1}``.

    Raises
    ------
    InputError
        Malformed entries, unknown elements, non-positive factors, and two
        k-factors for one element (``Ni=1.2,Ni_La=3``: which line is meant?).
    """
    if text is None:
        return None
    if isinstance(text, Mapping):
        items = list(text.items())
    else:
        items = []
        for part in text.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise InputError(f"`k_factors` entry {part.strip()!r} is not ELEMENT=VALUE",
                                 hint="e.g. O=1.0,Si=1.2,Ge=1.6 or Ge_La=2.1")
            items.append((key, value))
    result: dict[str, float] = {}
    for key, value in items:
        element, _, line = str(key).strip().partition("_")
        element = check_element(element)
        try:
            factor = float(value)
        except (TypeError, ValueError):
            raise InputError(f"`k_factors` value {value!r} for {key} is not a number") from None
        if not np.isfinite(factor) or factor <= 0:
            raise InputError(f"`k_factors` value for {key} must be positive, got {factor}")
        name = f"{element}_{line}" if line else element
        same = [k for k in result if k.split("_")[0] == element]
        if same:
            given = ", ".join(f"{k}={result[k]:g}" for k in same)
            raise InputError(f"`k_factors` gives {element} twice ({given}, {name}={factor:g}); "
                             "a k-factor belongs to one X-ray line",
                             hint=f"keep one: {element}=VALUE for the line chosen for the "
                                  f"beam energy, or {element}_La=VALUE (etc.) for another line")
        result[name] = factor
    return result


def _load_signals(path: Path, **kwargs):
    import hyperspy.api as hs

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = hs.load(str(path), **kwargs)
    except ModuleNotFoundError as exc:
        name = exc.name or next(iter(re.findall(r"'(\w+)'", str(exc))), "?")
        raise InputError(f"reading this file needs the Python package {name!r}",
                         path=path, hint=f"pip install {name}") from None
    except Exception as exc:  # noqa: BLE001 - HyperSpy raises many kinds on foreign files
        raise InputError(f"HyperSpy cannot read it: {' '.join(str(exc).split())}",
                         path=path) from None
    return loaded if isinstance(loaded, list) else [loaded]


def _energy_axis_kev(s) -> tuple[float, float] | None:
    """(low, high) of a signal's energy axis in keV, or None if not in eV/keV."""
    axis = s.axes_manager.signal_axes[0]
    scale = {"keV": 1.0, "eV": 1e-3}.get(str(axis.units).strip())
    if scale is None:
        return None
    return axis.low_value * scale, axis.high_value * scale


def _describe(signals) -> str:
    return ", ".join(f"{s.metadata.General.title or '?'} "
                     f"({s.metadata.Signal.signal_type or 'untyped'}, shape "
                     f"{'x'.join(map(str, s.data.shape))})" for s in signals)


def load_spectrum_image(path: str | os.PathLike):
    """Load the one EDS spectrum image in a file, lazily.

    A spectrum image whose file does not say its kind (TIA ``.emi``/``.ser``)
    is taken as EDS when its signal axis is an energy (eV or keV) reaching
    1 keV; an eV axis is converted to keV.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    exspy EDSTEMSpectrum (lazy)
        Navigation shape (Rx, Ry) (``signal.data`` is (Rx, Ry, channels));
        an ``EDS_SEM`` signal is retyped to ``EDS_TEM``, with
        ``metadata.General.stem2eds_microscope`` set to ``"SEM"``.

    Raises
    ------
    InputError
        Unreadable file, no or several EDS spectrum images, an EELS
        spectrum image.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=p)
    kwargs = {"lazy": True}
    if p.suffix.lower() == ".emd":
        kwargs["select_type"] = "spectrum_image"
    signals = _load_signals(p, **kwargs)
    cubes = [s for s in signals if s.axes_manager.navigation_dimension == 2
             and s.axes_manager.signal_dimension == 1]
    eds = [s for s in cubes if str(s.metadata.Signal.signal_type).startswith("EDS")]
    if not eds:
        untyped = [s for s in cubes if not s.metadata.Signal.signal_type
                   and (_energy_axis_kev(s) or (0, 0))[1] >= 1.0]
        eels = [s for s in cubes if str(s.metadata.Signal.signal_type).startswith("EELS")]
        if eels and not untyped:
            raise InputError(f"the file holds an EELS spectrum image ({_describe(eels)}), "
                             "not EDS", path=p,
                             hint="quantify EELS elsewhere and give the element maps as a "
                                  "folder")
        eds = untyped
    if not eds:
        raise InputError("no EDS spectrum image with 2 scan axes and an X-ray energy axis "
                         f"in the file (found: {_describe(signals)})", path=p,
                         hint="give a Velox .emd, Bruker .bcf, TIA .emi or an EDS_TEM .hspy, "
                              "or a folder of element maps")
    if len(eds) > 1:
        raise InputError(f"{len(eds)} EDS spectrum images in the file", path=p,
                         hint="export the one to use to its own .hspy")
    si = eds[0]
    sem = str(si.metadata.Signal.signal_type) == "EDS_SEM" or (
        si.metadata.has_item("Acquisition_instrument.SEM")
        and not si.metadata.has_item("Acquisition_instrument.TEM"))
    axis = si.axes_manager.signal_axes[0]
    if str(axis.units).strip() == "eV":
        axis.scale, axis.offset, axis.units = axis.scale / 1000, axis.offset / 1000, "keV"
    if si.metadata.Signal.signal_type != "EDS_TEM":
        # Cliff-Lorimer lives on exspy's EDS_TEM class (thin-film quantification);
        # Bruker files are often typed EDS_SEM. exspy moves the SEM acquisition
        # metadata (beam energy, detector) over to TEM itself.
        si.set_signal_type("EDS_TEM")
    si.metadata.set_item("General.stem2eds_microscope", "SEM" if sem else "TEM")
    return si


def read_beam_energy_kev(path: str | os.PathLike) -> float | None:
    """The beam energy (keV) a microscope file's metadata states, or None.

    Reads (lazily) any file HyperSpy opens: Velox ``.emd``, TIA ``.emi``,
    Bruker ``.bcf``, DM, blockfile, ... The first signal with
    ``Acquisition_instrument.TEM.beam_energy`` (or ``SEM``) counts.

    Raises
    ------
    InputError
        Unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=p)
    kwargs = {"select_type": "images"} if p.suffix.lower() == ".emd" else {}
    for s in _load_signals(p, lazy=True, **kwargs):
        for where in ("TEM", "SEM"):
            value = s.metadata.get_item(f"Acquisition_instrument.{where}.beam_energy")
            if value is not None and np.isfinite(float(value)) and float(value) > 0:
                return float(value)
    return None


def quantify_spectrum_image(path: str | os.PathLike, elements: Sequence[str] | None = None,
                            k_factors: Mapping[str, float] | None = None,
                            beam_energy_kev: float | None = None,
                            eds_bin: int = 1) -> QuantifiedMaps:
    """Quantify an EDS spectrum image per position with Cliff-Lorimer (exspy).

    Parameters
    ----------
    path : path-like
        Spectrum-image file that HyperSpy/exspy reads.
    elements : sequence of str, optional
        At least two elements to quantify, in output order; default: the
        file's ``Sample.elements`` in the order stored.
    k_factors : mapping, optional
        Element symbol (its line for the beam energy) or X-ray line
        (``Ge_La``) to k-factor; overrides the file's.
    beam_energy_kev : float, optional
        Used when the file does not say the beam energy (the file's wins).
    eds_bin : int
        Sum ``eds_bin x eds_bin`` positions before quantifying (HyperSpy
        ``rebin``; edges that do not fill a bin are cropped). The maps then
        have shape (Rx // eds_bin, Ry // eds_bin).

    Returns
    -------
    QuantifiedMaps
        Atomic fractions of shape (Rx, Ry) per element.

    Raises
    ------
    InputError
        No or one element, a missing or contradictory k-factor, a k-factor
        for another line than the one quantified, beam energy unknown, or
        most positions with fewer than :data:`MIN_NET_COUNTS` net counts.
    """
    if isinstance(eds_bin, bool) or not isinstance(eds_bin, (int, np.integer)) or eds_bin < 1:
        raise InputError(f"`eds_bin` must be a whole number >= 1, got {eds_bin!r}")
    with _no_progress_bars():
        return _quantify(Path(path), elements, k_factors, beam_energy_kev, int(eds_bin))


@contextlib.contextmanager
def _no_progress_bars():
    """Silence HyperSpy's tqdm bars: the command line prints its own, one-line, output."""
    import hyperspy.api as hs

    general = hs.preferences.General
    before = general.show_progressbar
    general.show_progressbar = False
    try:
        yield
    finally:
        general.show_progressbar = before


def _quantify(p: Path, elements, k_factors, beam_energy_kev, eds_bin: int) -> QuantifiedMaps:
    s = load_spectrum_image(p)
    notes: list[str] = []
    stored = list(s.metadata.get_item("Sample.elements", default=[]) or [])
    if elements is None:
        if not stored:
            raise InputError("the file does not list the elements to quantify", path=p,
                             hint="give `elements`, e.g. O,Si,Ge")
        elements = stored
    elements = list(dict.fromkeys(check_element(e) for e in elements))
    if len(elements) < 2:
        raise InputError(f"Cliff-Lorimer gives ratios between elements; quantifying "
                         f"{elements[0] if elements else 'no element'} alone would give 100 % "
                         "everywhere", path=p,
                         hint="give `elements` with every element present (at least two)")
    energy = settle_beam_energy(s, beam_energy_kev, p)
    microscope = str(s.metadata.get_item("General.stem2eds_microscope", default="TEM"))
    if microscope == "SEM" or energy < SEM_MAX_KV:
        microscope = "SEM"
        notes.append(f"SEM spectrum image ({energy:g} kV): quantified as a thin TEM film "
                     "(Cliff-Lorimer, no absorption or fluorescence correction); "
                     "compositions of bulk samples are only approximate")
    if eds_bin > 1:
        s, note = bin_positions(s, eds_bin, p)
        notes.append(note)
    lines, k_used, source = lines_and_k_factors(s, elements, dict(k_factors or {}), energy, p)
    notes.append("X-ray lines: " + ", ".join(lines[e] for e in elements))
    order = sorted(elements, key=lambda e: lines[e])  # exspy keeps lines sorted
    intensities = net_intensities(s, [lines[e] for e in order])
    low = count_low([i.data for i in intensities], p, eds_bin)
    fractions, clipped, shift = cliff_lorimer(s, intensities, [k_used[e] for e in order],
                                              order, notes)
    if low:
        notes.append(f"{low} of {intensities[0].data.size} positions have fewer than "
                     f"{MIN_NET_COUNTS} net counts in these lines; their fractions are noisy "
                     "(0 where none)")
    return QuantifiedMaps(elements, {e: fractions[e] for e in elements},
                          {e: lines[e] for e in elements}, {e: k_used[e] for e in elements},
                          source, notes, energy, microscope, pixel_size_nm(s), eds_bin, low,
                          {e: clipped[e] for e in elements}, {e: shift[e] for e in elements})


def read_haadf_from_file(path: str | os.PathLike) -> np.ndarray:
    """The HAADF image stored in a microscope file (Velox ``.emd``, ``.hspy``, ...).

    Parameters
    ----------
    path : path-like

    Returns
    -------
    ndarray, shape (Rx, Ry)
        float64, in detector units.

    Raises
    ------
    InputError
        No 2D image titled HAADF (or, failing that, not exactly one 2D image).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=p)
    # RosettaSciIO's Velox reader takes "images" (singular "image" is refused);
    # other .emd flavours ignore the argument.
    kwargs = {"select_type": "images"} if p.suffix.lower() == ".emd" else {}
    signals = _load_signals(p, **kwargs)
    images = [s for s in signals if s.axes_manager.signal_dimension == 2
              and s.axes_manager.navigation_dimension == 0]
    haadf = [s for s in images if "haadf" in str(s.metadata.General.title).lower()]
    chosen = haadf if haadf else images
    if len(chosen) != 1:
        titles = ", ".join(str(s.metadata.General.title) or "?" for s in images) or "none"
        raise InputError(f"cannot pick the HAADF image: 2D images in the file: {titles}",
                         path=p, hint="export the HAADF image to a TIFF and pass it")
    data = np.asarray(chosen[0].data, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise InputError("HAADF image contains NaN or infinite values", path=p)
    return data
