"""Preprocessing settings: every choice, stored in the output and reused at prediction.

:class:`PreprocessSettings` is written to a preprocessed bundle's
``preprocess`` attribute and to a training run; :func:`load_settings` reads it
back from either, so a new scan is preprocessed exactly as the training data
was. Also the names of the raw-bundle groups that hold maps not yet on the
scan grid (read by :mod:`stem2eds.preprocess.register`).
"""

from __future__ import annotations

import json
import os
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
        Gaussian sigma in scan px; None derives it from the kernel (OpenCV).
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
            value = getattr(self, name)
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise InputError(f"{name} must be an integer, got {value!r}")
            setattr(self, name, int(float(value)))
        if self.crop is not None:
            self.crop = tuple(int(v) for v in self.crop)  # type: ignore[assignment]
        if self.detector_shape is not None:
            self.detector_shape = tuple(int(v) for v in self.detector_shape)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise InputError for impossible values."""
        if int(self.bin_factor) < 1:
            raise InputError(f"bin factor must be >= 1, got {self.bin_factor}")
        for what, value, choices in (("scaling", self.scaling, SCALINGS),
                                     ("centring", self.centring, CENTRINGS),
                                     ("origin fit", self.origin_fit, ORIGIN_FITS),
                                     ("EDS filter", self.eds_filter, EDS_FILTERS)):
            if value not in choices:
                raise InputError(f"unknown {what} {value!r}",
                                 hint=f"choose one of {', '.join(choices)}")
        if int(self.origin_sample) < 0:
            raise InputError(f"origin sample must be >= 0 (0: every position), "
                             f"got {self.origin_sample}")
        if int(self.eds_kernel) < 1 or int(self.eds_kernel) % 2 == 0:
            raise InputError(f"EDS filter kernel must be odd and positive, got {self.eds_kernel}")
        if self.beam_radius is not None and self.beam_radius < 0:
            raise InputError(f"beam radius must be >= 0, got {self.beam_radius}")
        if self.scale is not None and not self.scale > 0:
            raise InputError(f"scale must be positive, got {self.scale}")
        if not isinstance(self.dose_ceiling, bool):
            raise InputError(f"`dose_ceiling` must be true or false, got {self.dose_ceiling!r}")
        if self.dose_reference is not None and not self.dose_reference > 0:
            raise InputError(f"`dose_reference` must be positive, got {self.dose_reference}")
        if self.crop is not None and len(self.crop) != 4:
            raise InputError(f"crop must be (r0, r1, c0, c1), got {self.crop}")

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
            raise InputError(f"unknown preprocessing setting(s) {', '.join(unknown)}")
        return cls(**dict(data))

    @property
    def ceiling_reference(self) -> float | None:
        """``dose_reference`` where the dose-following ceiling applies, else None (clip at 1)."""
        return self.dose_reference if self.dose_ceiling else None

    @property
    def resolved(self) -> bool:
        """True when scale and beam radius are known (what prediction needs)."""
        return self.scale is not None and self.beam_radius is not None


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
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not a JSON settings file ({exc})", path=p) from None
    if not isinstance(data, dict):
        raise InputError("settings JSON must be an object", path=p)
    # a bare settings object, or one nested as in a training run's
    # preprocessed/settings.json ({"sources": ..., "settings": ...})
    for key in ("preprocess", "settings"):
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    return PreprocessSettings.from_dict(data)
