"""EDS spectrum images and HAADF images from microscope files, via HyperSpy/exspy.

A spectrum image (Velox ``.emd``, Bruker ``.bcf``, ``.hspy``, ... anything
HyperSpy loads as an ``EDS_TEM``/``EDS_SEM`` signal with two navigation axes)
is quantified per probe position with exspy's Cliff-Lorimer method:
background-subtracted line intensities (exspy's background windows), the
k-factors of the lines, weight fractions, then atomic fractions.

K-factors come from ``k_factors`` (``--k-factors O=1.0,Si=1.2`` on the
command line; keys are elements or X-ray lines such as ``Ge_La``) or, when
not given, from the file's metadata item ``Sample.kfactors`` (a list in the
order of ``Sample.xray_lines``, the layout in which exspy users keep them in
``.hspy`` files). There is no silent default: a k-factor of 1 for every line
would give compositions off by tens of percent.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..elements import check_element
from ..errors import InputError


@dataclass
class QuantifiedMaps:
    """Per-position composition from a spectrum image.

    Attributes
    ----------
    elements : list of str
        Symbols in output order.
    fractions : dict of str to ndarray, shape (Rx, Ry)
        float32 atomic fractions in [0, 1], summing to 1 at every position
        with counts (0 everywhere at positions with no counts).
    xray_lines : dict of str to str
        The line quantified for each element, e.g. ``{"Ge": "Ge_Ka"}``.
    k_factors : dict of str to float
        The k-factor used for each element.
    k_factor_source : str
        ``"flags"`` or ``"file metadata"``.
    notes : list of str
        Things the user should know (positions without counts, clipped
        negative intensities).
    """

    elements: list[str]
    fractions: dict[str, np.ndarray]
    xray_lines: dict[str, str]
    k_factors: dict[str, float]
    k_factor_source: str
    notes: list[str] = field(default_factory=list)


def parse_k_factors(text: str | Mapping[str, float] | None) -> dict[str, float] | None:
    """Parse ``"O=1.0,Si=1.2,Ge_La=2.1"`` into ``{"O": 1.0, "Si": 1.2, "Ge_La": 2.1}``.

    Raises
    ------
    InputError
        Malformed entries, unknown elements, non-positive factors.
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
                raise InputError(f"--k-factors entry {part.strip()!r} is not ELEMENT=VALUE",
                                 hint="e.g. --k-factors O=1.0,Si=1.2,Ge=1.6")
            items.append((key, value))
    result: dict[str, float] = {}
    for key, value in items:
        element, _, line = str(key).strip().partition("_")
        element = check_element(element)
        try:
            factor = float(value)
        except (TypeError, ValueError):
            raise InputError(f"--k-factors value {value!r} for {key} is not a number") from None
        if not np.isfinite(factor) or factor <= 0:
            raise InputError(f"--k-factors value for {key} must be positive, got {factor}")
        result[f"{element}_{line}" if line else element] = factor
    return result


def _load_signals(path: Path, **kwargs):
    import hyperspy.api as hs

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = hs.load(str(path), **kwargs)
    except ModuleNotFoundError as exc:
        raise InputError(f"reading this file needs the Python package {exc.name!r}",
                         path=path, hint=f"pip install {exc.name}") from None
    except Exception as exc:  # noqa: BLE001 - HyperSpy raises many kinds on foreign files
        raise InputError(f"HyperSpy cannot read it: {' '.join(str(exc).split())}",
                         path=path) from None
    return loaded if isinstance(loaded, list) else [loaded]


def load_spectrum_image(path: str | os.PathLike):
    """Load the one EDS spectrum image in a file, lazily.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    exspy EDSTEMSpectrum (lazy)
        Navigation shape (Rx, Ry) (``signal.data`` is (Rx, Ry, channels));
        an ``EDS_SEM`` signal is retyped to ``EDS_TEM``.

    Raises
    ------
    InputError
        Unreadable file, no or several EDS spectrum images.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=p)
    kwargs = {"lazy": True}
    if p.suffix.lower() == ".emd":
        kwargs["select_type"] = "spectrum_image"
    signals = _load_signals(p, **kwargs)
    eds = [s for s in signals if str(s.metadata.Signal.signal_type).startswith("EDS")
           and s.axes_manager.navigation_dimension == 2 and s.axes_manager.signal_dimension == 1]
    if not eds:
        kinds = ", ".join(f"{s.metadata.General.title or '?'} "
                          f"({s.metadata.Signal.signal_type or 'untyped'})" for s in signals)
        raise InputError(f"no EDS spectrum image with 2 scan axes in the file (found: {kinds})",
                         path=p, hint="give a Velox .emd, Bruker .bcf or an EDS_TEM .hspy, "
                                      "or a folder of element maps")
    if len(eds) > 1:
        raise InputError(f"{len(eds)} EDS spectrum images in the file", path=p,
                         hint="export the one to use to its own .hspy")
    si = eds[0]
    if si.metadata.Signal.signal_type != "EDS_TEM":
        # Cliff-Lorimer lives on exspy's EDS_TEM class (thin-film quantification);
        # Bruker files from a TEM are sometimes typed EDS_SEM. exspy moves the
        # SEM acquisition metadata (beam energy, detector) over to TEM itself.
        si.set_signal_type("EDS_TEM")
    return si


def quantify_spectrum_image(path: str | os.PathLike, elements: Sequence[str] | None = None,
                            k_factors: Mapping[str, float] | None = None,
                            beam_energy_kev: float | None = None) -> QuantifiedMaps:
    """Quantify an EDS spectrum image per position with Cliff-Lorimer (exspy).

    Parameters
    ----------
    path : path-like
        Spectrum-image file that HyperSpy/exspy reads.
    elements : sequence of str, optional
        Elements to quantify, in output order; default: the file's
        ``Sample.elements`` in the order stored.
    k_factors : mapping, optional
        Element symbol (or X-ray line) to k-factor; overrides the file's.
    beam_energy_kev : float, optional
        Used to choose the lines when the file does not say the beam energy.

    Returns
    -------
    QuantifiedMaps
        Atomic fractions of shape (Rx, Ry) per element.

    Raises
    ------
    InputError
        No elements known, a missing k-factor, beam energy unknown.
    """
    with _no_progress_bars():
        return _quantify(Path(path), elements, k_factors, beam_energy_kev)


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


def _quantify(p: Path, elements, k_factors, beam_energy_kev) -> QuantifiedMaps:
    s = load_spectrum_image(p)
    stored = list(s.metadata.get_item("Sample.elements", default=[]) or [])
    if elements is None:
        if not stored:
            raise InputError("the file does not list the elements to quantify", path=p,
                             hint="pass --elements O,Si,...")
        elements = stored
    elements = [check_element(e) for e in elements]
    if beam_energy_kev is not None:
        s.set_microscope_parameters(beam_energy=float(beam_energy_kev))
    if not s.metadata.has_item("Acquisition_instrument.TEM.beam_energy") and \
            not s.metadata.has_item("Acquisition_instrument.SEM.beam_energy"):
        raise InputError("the file does not say the beam energy, needed to choose X-ray lines",
                         path=p, hint="pass --beam-energy KEV")

    # Lines: those named in --k-factors (e.g. Ge_La), then the file's lines
    # for the chosen elements, then exspy's choice for elements with none.
    given = dict(k_factors or {})
    stored_lines = list(s.metadata.get_item("Sample.xray_lines", default=[]) or [])
    stored_k = list(s.metadata.get_item("Sample.kfactors", default=[]) or [])
    file_k = dict(zip(stored_lines, stored_k)) if len(stored_k) == len(stored_lines) else {}
    preset: dict[str, str] = {}
    for line in [k for k in given if "_" in k] + stored_lines:
        element = line.split("_")[0]
        if element in elements:
            preset.setdefault(element, line)
    s.metadata.Sample.elements = sorted(elements)
    s.metadata.Sample.xray_lines = sorted(preset.values())
    s.add_lines()  # adds the best line of every element that has none yet
    line_of: dict[str, str] = dict(preset)
    for line in s.metadata.Sample.xray_lines:
        line_of.setdefault(line.split("_")[0], line)
    missing_lines = [e for e in elements if e not in line_of]
    if missing_lines:
        raise InputError(f"no X-ray line found for {', '.join(missing_lines)} within the "
                         "spectrum's energy range", path=p)
    lines = {e: line_of[e] for e in elements}

    k_used: dict[str, float] = {}
    missing_k = []
    for element, line in lines.items():
        for key, table in ((line, given), (element, given), (line, file_k)):
            if key in table:
                k_used[element] = float(table[key])
                break
        else:
            missing_k.append(line)
    if missing_k:
        raise InputError(f"no k-factor for {', '.join(missing_k)}", path=p,
                         hint="pass --k-factors " + ",".join(f"{e}=VALUE" for e in elements))
    from_flags = [lines[e] in given or e in given for e in lines]
    source = ("flags" if all(from_flags) else "file metadata" if not any(from_flags)
              else "flags and file metadata")

    order = sorted(elements, key=lambda e: lines[e])  # exspy keeps lines sorted
    axis = s.axes_manager.signal_axes[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        windows = s.estimate_background_windows(xray_lines=[lines[e] for e in order])
        # exspy places background windows symmetrically about each line; near
        # the ends of the spectrum they would leave the axis and fail, so
        # they are clipped to it (one-sided background there).
        windows = np.clip(windows, axis.low_value, axis.high_value)
        intensities = s.get_lines_intensity(xray_lines=[lines[e] for e in order],
                                            background_windows=windows)
        for i in intensities:
            if getattr(i, "_lazy", False):
                i.compute()  # in place: a LazySignal becomes a plain signal
        negative = int(sum(np.count_nonzero(np.asarray(i.data) < 0) for i in intensities))
        for i in intensities:
            # A background estimate above the line (noise) is no negative amount
            # of element; it is counted and reported, then treated as zero.
            i.data = np.clip(np.asarray(i.data, dtype=float), 0, None)
        composition = s.quantification(intensities, method="CL",
                                       factors=[k_used[e] for e in order],
                                       composition_units="atomic", plot_result=False,
                                       show_progressbar=False)
    fractions_stack = np.stack([np.asarray(c.data, dtype=np.float64) for c in composition]) / 100
    fractions_stack = np.clip(np.nan_to_num(fractions_stack, nan=0.0), 0.0, 1.0)
    totals = fractions_stack.sum(axis=0)
    empty = int(np.count_nonzero(totals == 0))
    fractions_stack = np.divide(fractions_stack, totals, out=np.zeros_like(fractions_stack),
                                where=totals > 0)
    notes = []
    if negative:
        notes.append(f"{negative} background-subtracted line intensities were negative "
                     "and set to zero")
    if empty:
        notes.append(f"{empty} positions have no counts in any line; their fractions are 0")
    fractions = {e: fractions_stack[order.index(e)].astype(np.float32) for e in elements}
    return QuantifiedMaps(elements, fractions, {e: lines[e] for e in elements},
                          {e: k_used[e] for e in elements}, source, notes)


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
    kwargs = {"select_type": "image"} if p.suffix.lower() == ".emd" else {}
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
