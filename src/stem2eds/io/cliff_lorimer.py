"""Cliff-Lorimer steps on an exspy EDS spectrum image (used by :mod:`.spectrum`).

Choosing the X-ray line and k-factor of each element, spatial binning, net
line intensities, the low-count check and the quantification itself, with
the clipping of negative net intensities measured. Fractions are atomic
fractions (0..1); exspy's percent is divided by 100 here.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError

#: Net counts (background subtracted, summed over the quantified lines) below
#: which a position's composition is mostly noise (relative error ~ 1/sqrt(N)
#: above 20 %).
MIN_NET_COUNTS = 20

#: Beam energy (kV) below which a spectrum image is taken to come from an SEM.
SEM_MAX_KV = 40.0

#: Length units of scan axes, in nm.
_NM_PER = {"nm": 1.0, "µm": 1e3, "um": 1e3, "μm": 1e3, "Å": 0.1, "A": 0.1, "pm": 1e-3,
           "mm": 1e6, "m": 1e9}


def settle_beam_energy(s, given, p: Path) -> float:
    """The file's beam energy (kV), else ``given``, written into the signal."""
    stored = s.metadata.get_item("Acquisition_instrument.TEM.beam_energy")
    if stored is None or not np.isfinite(float(stored)) or float(stored) <= 0:
        if given is None:
            raise InputError("the file does not say the beam energy, needed to choose X-ray "
                             "lines", path=p, hint="give `beam_energy_kev`")
        s.set_microscope_parameters(beam_energy=float(given))
        return float(given)
    return float(stored)


def bin_positions(s, factor: int, p: Path):
    """Sum ``factor x factor`` positions (HyperSpy ``rebin``); the signal and a note."""
    shape = s.axes_manager.navigation_shape  # (columns, rows)
    if factor > min(shape):
        raise InputError(f"`eds_bin` {factor} is larger than the scan "
                         f"({shape[1]}x{shape[0]} positions)", path=p)
    new = (shape[0] // factor, shape[1] // factor)
    cropped = (shape[1] - new[1] * factor, shape[0] - new[0] * factor)
    if any(cropped):  # a lazy rebin needs whole bins: drop the far edges first
        s = s.inav[:new[0] * factor, :new[1] * factor]
    binned = s.rebin(scale=(factor, factor, 1))
    note = (f"summed {factor}x{factor} positions (`eds_bin`): {shape[1]}x{shape[0]} -> "
            f"{new[1]}x{new[0]} positions")
    if any(cropped):
        note += f", {cropped[0]} rows and {cropped[1]} columns at the far edges dropped"
    return binned, note


def _nominal_line(element: str, energy_kev: float) -> str:
    """The line exspy quantifies for an element at a beam energy, whatever the
    spectrum's range: the first of Ka, La, Ma below half the beam energy."""
    import exspy

    lines = exspy.material.elements[element].Atomic_properties.Xray_lines
    family = sorted(k for k in lines.keys() if k in ("Ka", "La", "Ma"))
    for name in family:
        if lines[name].energy_keV < energy_kev / 2:
            return f"{element}_{name}"
    return f"{element}_{family[-1]}" if family else ""


def lines_and_k_factors(s, elements, given, energy, p: Path):
    """The line and k-factor of each element, and where the k-factors came from."""
    import exspy

    for key in given:
        element, _, line = key.partition("_")
        known = exspy.material.elements[element].Atomic_properties.Xray_lines.keys()
        if line and line not in known:
            raise InputError(f"`k_factors` names {key}, which is no X-ray line of {element}",
                             hint=f"lines of {element}: {', '.join(known)}")
    # Lines: those named in k_factors (e.g. Ge_La), then the file's lines for
    # the chosen elements, then exspy's choice for elements with none.
    stored_lines = list(s.metadata.get_item("Sample.xray_lines", default=[]) or [])
    stored_k = list(s.metadata.get_item("Sample.kfactors", default=[]) or [])
    file_k = dict(zip(stored_lines, stored_k)) if len(stored_k) == len(stored_lines) else {}
    preset: dict[str, str] = {}
    for line in [k for k in given if "_" in k] + stored_lines:
        if line.split("_")[0] in elements:
            preset.setdefault(line.split("_")[0], line)
    s.metadata.set_item("Sample.elements", sorted(elements))
    s.metadata.set_item("Sample.xray_lines", sorted(preset.values()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.add_lines()  # adds the best line of every element that has none yet
    line_of: dict[str, str] = dict(preset)
    for line in s.metadata.Sample.xray_lines:
        line_of.setdefault(line.split("_")[0], line)
    missing = [e for e in elements if e not in line_of]
    if missing:
        high = s.axes_manager.signal_axes[0].high_value
        raise InputError(f"no X-ray line of {', '.join(missing)} within the spectrum's energy "
                         f"range (up to {high:.3g} keV at {energy:g} kV)", path=p)
    lines = {e: line_of[e] for e in elements}
    k_used: dict[str, float] = {}
    missing = []
    for element, line in lines.items():
        if line in given:
            k_used[element] = float(given[line])
        elif element in given:
            nominal = _nominal_line(element, energy)
            if line != nominal:
                high = s.axes_manager.signal_axes[0].high_value
                raise InputError(
                    f"`k_factors` gives {element}={given[element]:g}, a k-factor for "
                    f"{nominal} (the line for {energy:g} kV), but {line} is quantified here "
                    f"(the spectrum ends at {high:.3g} keV, or the file names that line)",
                    path=p, hint=f"give the k-factor of that line as {line}=VALUE")
            k_used[element] = float(given[element])
        elif line in file_k:
            k_used[element] = float(file_k[line])
        else:
            missing.append(line)
    if missing:
        raise InputError(f"no k-factor for {', '.join(missing)}", path=p,
                         hint="give `k_factors`, e.g. "
                              + ",".join(f"{lines[e]}=VALUE" for e in elements))
    from_given = [lines[e] in given or e in given for e in elements]
    source = ("flags" if all(from_given) else "file metadata" if not any(from_given)
              else "flags and file metadata")
    return lines, k_used, source


def net_intensities(s, lines: list[str]) -> list:
    """Background-subtracted counts of each line: exspy signals, data (Rx, Ry)."""
    axis = s.axes_manager.signal_axes[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        windows = s.estimate_background_windows(xray_lines=lines)
        # exspy places background windows symmetrically about each line; near
        # the ends of the spectrum they would leave the axis and fail, so
        # they are clipped to it (one-sided background there).
        windows = np.clip(windows, axis.low_value, axis.high_value)
        intensities = s.get_lines_intensity(xray_lines=lines, background_windows=windows)
    for i in intensities:
        if getattr(i, "_lazy", False):
            i.compute()  # in place: a LazySignal becomes a plain signal
        i.data = np.asarray(i.data, dtype=np.float64)
    return intensities


def count_low(net: list[np.ndarray], p: Path, eds_bin: int) -> int:
    """Positions with fewer than MIN_NET_COUNTS net counts; refused when most are."""
    total = np.clip(np.stack(net), 0, None).sum(axis=0)
    low = int(np.count_nonzero(total < MIN_NET_COUNTS))
    if low > total.size / 2:
        mean = float(total.mean())
        # aim at twice the threshold on average, so that most bins pass it
        more = math.ceil(math.sqrt(2 * MIN_NET_COUNTS / mean)) if mean > 0 else None
        if more is None:
            offer = "this spectrum image has no net X-ray counts in these lines"
        elif more > min(total.shape):
            offer = (f"the whole scan holds only {total.sum():.3g} net counts in these lines; "
                     "binning cannot help")
        else:
            offer = (f"sum neighbouring positions with `eds_bin` (e.g. {eds_bin * more}: "
                     f"{eds_bin * more}x{eds_bin * more} positions per map pixel)")
        raise InputError(f"{low} of {total.size} positions have fewer than {MIN_NET_COUNTS} "
                         f"net counts in the X-ray lines (mean {mean:.3g}); their maps would "
                         "be noise or zero", path=p, hint=offer)
    return low


def cliff_lorimer(s, intensities: list, factors: list[float], order: list[str],
                  notes: list[str]):
    """Atomic fractions (Rx, Ry) per element from net line intensities.

    Negative net intensities (a background estimate above the line: noise,
    no negative amount of element) are set to 0 first; how much that moves
    each element's mean fraction is computed and reported.
    """
    net = [i.data for i in intensities]

    def run(arrays):
        for i, data in zip(intensities, arrays):
            i.data = data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            composition = s.quantification(intensities, method="CL", factors=factors,
                                           composition_units="atomic", plot_result=False,
                                           show_progressbar=False)
        stack = np.stack([np.asarray(c.data, dtype=np.float64) for c in composition]) / 100
        return np.nan_to_num(stack, nan=0.0)

    clipped_arrays = [np.clip(a, 0, None) for a in net]
    stack = np.clip(run(clipped_arrays), 0.0, 1.0)
    totals = stack.sum(axis=0)
    stack = np.divide(stack, totals, out=np.zeros_like(stack), where=totals > 0)
    clipped = {e: int(np.count_nonzero(a < 0)) for e, a in zip(order, net)}
    shift = {e: 0.0 for e in order}
    if any(clipped.values()):
        raw = run(net)
        has = totals > 0
        shift = {e: float(stack[i][has].mean() - raw[i][has].mean()) if has.any() else 0.0
                 for i, e in enumerate(order)}
        moved = ", ".join(f"{e} {shift[e]:+.4f}" for e in order if clipped[e])
        notes.append(f"{sum(clipped.values())} negative net line intensities (background above "
                     "the line: noise) were set to 0 before quantification ("
                     + ", ".join(f"{e} {n}" for e, n in clipped.items() if n)
                     + f" positions); mean atomic fraction changed by: {moved}")
    empty = int(np.count_nonzero(totals == 0))
    if empty:
        notes.append(f"{empty} positions have no net counts (after background subtraction) "
                     "in any line; their fractions are 0")
    return {e: stack[i].astype(np.float32) for i, e in enumerate(order)}, clipped, shift


def pixel_size_nm(s) -> tuple[float, float] | None:
    """Scan step (row, column) in nm, or None when the scan axes are not lengths."""
    axes = s.axes_manager.navigation_axes  # (columns, rows)
    per = [_NM_PER.get(str(a.units).strip()) for a in axes]
    if len(axes) != 2 or None in per:
        return None
    return abs(axes[1].scale) * per[1], abs(axes[0].scale) * per[0]
