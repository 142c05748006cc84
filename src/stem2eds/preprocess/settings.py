"""Preprocessing settings: every choice, stored in the output and reused at prediction.

:class:`PreprocessSettings` is written to a preprocessed bundle's
``preprocess`` attribute and to a training run; :func:`load_settings` reads it
back from either, so a new scan is preprocessed exactly as the training data
was. Also the names of the raw-bundle groups that hold maps not yet on the
scan grid (read by :mod:`stem2eds.preprocess.register`).
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from ..formats.bundle import open_bundle
from .maps import EDS_FILTERS
from .patterns import CENTRINGS, SCALINGS

#: Models of the origin vs scan position (:func:`stem2eds.preprocess.origin.fit_origins`).
ORIGIN_FITS = ("plane", "poly2", "none")
#: Default of :attr:`PreprocessSettings.origin_sample`.
ORIGIN_SAMPLE = 1024
#: Groups of a raw bundle holding maps that are not yet on the scan grid.
EDS_UNREGISTERED = "eds_unregistered"
HAADF_UNREGISTERED = "haadf_unregistered"


@dataclass
class PreprocessSettings:
    """Every choice of the preprocessing, stored in the output and reused at prediction.

    Attributes
    ----------
    bin_factor : int
        Detector binning (sum of ``f x f`` pixels); 4 turns 256x256 into 64x64.
    scaling : {"none", "sqrt", "log"}
        Intensity scaling after binning (log is ``log1p`` of counts).
    beam_radius : float or None
        Radius of the zeroed central disk in input detector px; None:
        ``probe_radius * beam_margin``.
    beam_margin : float
        Margin on the measured probe radius for the default beam radius.
    origin_fit : {"plane", "poly2", "none"}
        Model of the origin vs scan position (descan); ``none`` uses each
        pattern's measured origin.
    origin_sample : int
        For a smooth ``origin_fit`` (plane, poly2), measure the origin on a
        sub-grid of about this many positions spread over the scan region
        (:func:`stem2eds.preprocess.origin.sample_grid`) instead of on every
        pattern: the fitted origins agree to about 0.01 px and the pass over
        the patterns for origins shrinks to that many reads. 0, ``none``, or
        a region with no more positions measure every pattern. Settings
        stored before this option existed load with the default.
    crop : (r0, r1, c0, c1) or None
        Scan region kept (end exclusive); None keeps the whole scan.
    eds_filter : {"gaussian", "median", "none"}
        Denoising of the EDS targets (OpenCV; the paper: a 7x7 Gaussian).
    eds_kernel : int
        Filter window (odd, scan px); 7 is the paper's 7x7 Gaussian.
    eds_sigma : float or None
        Gaussian sigma in scan px (above 0, at most :data:`MAX_EDS_SIGMA`);
        None derives it from the kernel (OpenCV).
    scale : float or None
        Divisor mapping processed values into [0, 1]; None fits it on this
        scan as the ``scale_percentile`` of the processed values.
    scale_percentile : float
        Percentile of the processed values that ``scale`` maps to 1 (robust to hot pixels).
    dose_ceiling : bool
        Clip each pattern's scaled values at ``max(1, m / dose_reference)``
        (``m`` its mean scaled value) instead of at 1, so that the ceiling
        follows the pattern's overall intensity (dose, thickness) and a
        brighter scan is clipped where the training scans were, not on its
        ordinary rings (:func:`stem2eds.preprocess.patterns.normalise`).
        False: the paper's fixed clip to [0, 1].
    dose_reference : float or None
        Median over the patterns ``scale`` was fitted on of their mean
        scaled value; fitted together with ``scale`` when ``dose_ceiling``
        is on. None (runs made before it existed, or ``scale`` given
        without it): the fixed clip at 1.
    probe_radius : float or None
        Measured disk radius (input px); filled in by preprocessing.
    detector_shape : (Qx, Qy) or None
        Input detector; filled in by preprocessing.
    centring : {"binned", "full"}
        Shift patterns onto the detector centre after binning (fast, default)
        or at the input resolution (see
        :func:`stem2eds.preprocess.patterns.process_patterns`).
    """

    bin_factor: int = 4
    scaling: str = "none"
    beam_radius: float | None = None
    beam_margin: float = 1.25
    origin_fit: str = "plane"
    origin_sample: int = ORIGIN_SAMPLE
    crop: tuple[int, int, int, int] | None = None
    eds_filter: str = "gaussian"
    eds_kernel: int = 7
    eds_sigma: float | None = None
    scale: float | None = None
    scale_percentile: float = 99.9
    dose_ceiling: bool = True
    dose_reference: float | None = None
    probe_radius: float | None = None
    detector_shape: tuple[int, int] | None = None
    centring: str = "binned"

    def __post_init__(self) -> None:
        for name in ("bin_factor", "eds_kernel", "origin_sample"):
            setattr(self, name, _integer(name, getattr(self, name)))
        for name, size in (("crop", 4), ("detector_shape", 2)):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _integers(name, value, size))
        self.validate()

    def validate(self) -> None:
        """Raise InputError for impossible values, naming the setting in backquotes.

        Every value may come from a file (``run.json``, a TOML configuration,
        a settings JSON): types are checked, numbers must be finite.
        """
        for name in ("bin_factor", "eds_kernel", "origin_sample"):
            _integer(name, getattr(self, name))
        for name, choices in (("scaling", SCALINGS), ("centring", CENTRINGS),
                              ("origin_fit", ORIGIN_FITS), ("eds_filter", EDS_FILTERS)):
            value = getattr(self, name)
            if not (isinstance(value, str) and value in choices):
                raise InputError(f"`{name}` must be one of {', '.join(choices)}, "
                                 f"got {_show(value)}")
        if self.bin_factor < 1:
            raise InputError(f"`bin_factor` must be >= 1 (a bin factor of 1 keeps every "
                             f"detector pixel), got {self.bin_factor}")
        if self.origin_sample < 0:
            raise InputError(f"`origin_sample` must be >= 0 (0: every position), "
                             f"got {self.origin_sample}")
        if self.eds_kernel < 1 or self.eds_kernel % 2 == 0:
            raise InputError(f"`eds_kernel` must be odd and positive, got {self.eds_kernel}")
        for name, (optional, low, strict, high, what) in _REAL_SETTINGS.items():
            value = getattr(self, name)
            if not (optional and value is None):
                _real(name, value, low, strict, high, what)
        if not isinstance(self.dose_ceiling, bool):
            raise InputError(f"`dose_ceiling` must be true or false, "
                             f"got {_show(self.dose_ceiling)}")
        for name, size in (("crop", 4), ("detector_shape", 2)):
            value = getattr(self, name)
            if value is not None:
                _integers(name, value, size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        out = asdict(self)
        for key in ("crop", "detector_shape"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreprocessSettings":
        """Inverse of :meth:`to_dict`; unknown keys are an InputError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            names = ", ".join(unknown)  # cut: the keys may come from any file
            raise InputError(f"unknown preprocessing setting(s) "
                             f"{names if len(names) <= 60 else names[:57] + '...'}")
        return cls(**dict(data))

    @property
    def ceiling_reference(self) -> float | None:
        """``dose_reference`` where the dose-following ceiling applies, else None (clip at 1)."""
        return self.dose_reference if self.dose_ceiling else None

    @property
    def resolved(self) -> bool:
        """True when scale and beam radius are known (what prediction needs)."""
        return self.scale is not None and self.beam_radius is not None


def run_settings(info: Mapping[str, Any],
                 path: str | os.PathLike | None = None) -> PreprocessSettings:
    """The resolved settings of a training run: its ``run.json`` ``preprocess`` table.

    Errors name the field of ``run.json`` (``'preprocess.scale'``) rather
    than the setting in backquotes, which a command line shows as its flag:
    the value came from the file, no flag sets it.

    Raises
    ------
    InputError
        A value of the wrong type or out of range, an unknown setting, or no
        ``scale`` (every run stores the scale fitted on its training scans).
    """
    def field(text: str) -> str:
        return re.sub(r"`([a-z][a-z0-9_]*)`", r"'preprocess.\1'", text)

    try:
        settings = PreprocessSettings.from_dict(info["preprocess"])
    except InputError as exc:
        text = field(exc.message)
        text = text if text.startswith("'preprocess.") else f"'preprocess': {text}"
        raise InputError(f"run.json field {text}", path=path,
                         hint=exc.hint and field(exc.hint)) from None
    if settings.scale is None:
        raise InputError("run.json field 'preprocess.scale' must hold the scale fitted on "
                         "the training scans, got None", path=path)
    return settings


#: Largest Gaussian sigma of the EDS filter (scan px); a wider blur flattens any scan.
MAX_EDS_SIGMA = 1000.0

#: The real-valued settings: (None allowed, lowest, lowest excluded, highest, what is allowed).
_REAL_SETTINGS = {
    "beam_radius": (True, 0.0, False, math.inf, "a finite number >= 0"),
    "beam_margin": (False, 0.0, True, math.inf, "positive and finite"),
    "eds_sigma": (True, 0.0, True, MAX_EDS_SIGMA,
                  f"positive and at most {MAX_EDS_SIGMA:g} (scan px)"),
    "scale": (True, 0.0, True, math.inf, "positive and finite"),
    "scale_percentile": (False, 0.0, True, 100.0, "in (0, 100]"),
    "dose_reference": (True, 0.0, True, math.inf, "positive and finite"),
    "probe_radius": (True, 0.0, False, math.inf, "a finite number >= 0"),
}


def _show(value: Any) -> str:
    """``repr`` of a (possibly huge, untrusted) value, cut for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(name: str, value: Any) -> int:
    """``value`` as an int: an integer or a whole number such as 4.0 (not a bool or a string)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and float(value).is_integer():
        return int(value)
    raise InputError(f"`{name}` must be an integer, got {_show(value)}")


def _integers(name: str, value: Any, size: int) -> tuple[int, ...]:
    """``crop`` (four integers) or ``detector_shape`` (two positive integers) as a tuple."""
    what = ("four integers (r0, r1, c0, c1), e.g. [0, 70, 0, 45]" if size == 4
            else "two positive integers (rows, columns)")
    if not (isinstance(value, (list, tuple)) and len(value) == size):
        raise InputError(f"`{name}` must be {what}, got {_show(value)}")
    try:
        out = tuple(_integer(name, v) for v in value)
    except InputError:
        raise InputError(f"`{name}` must be {what}, got {_show(value)}") from None
    if size == 2 and min(out) < 1:
        raise InputError(f"`{name}` must be {what}, got {_show(value)}")
    return out


def _real(name: str, value: Any, low: float, strict: bool, high: float, what: str) -> None:
    """InputError unless ``value`` is a real number (not a bool or a string) in the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"`{name}` must be a number, got {_show(value)}")
    try:
        x = float(value)
    except OverflowError:  # an integer of hundreds of digits
        x = math.inf
    if not (math.isfinite(x) and (x > low if strict else x >= low) and x <= high):
        raise InputError(f"`{name}` must be {what}, got {_show(value)}")


def load_settings(path: str | os.PathLike) -> PreprocessSettings:
    """Settings from a JSON file or from a preprocessed bundle's ``preprocess`` attribute."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such settings file", path=p)
    if p.suffix.lower() in (".h5", ".hdf5"):
        with open_bundle(p) as scan:
            data = scan.json_attr("preprocess")
        if data is None:
            raise InputError("bundle has no preprocessing settings", path=p,
                             hint="pass a bundle written by 'stem2eds preprocess'")
        return PreprocessSettings.from_dict(data)
    from ..formats.jsonfile import read_json

    data = read_json(p, "the settings file")
    if not isinstance(data, dict):
        raise InputError("settings JSON must be an object", path=p)
    # a bare settings object, or one nested as in a training run's
    # preprocessed/settings.json ({"sources": ..., "settings": ...})
    for key in ("preprocess", "settings"):
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    return PreprocessSettings.from_dict(data)
