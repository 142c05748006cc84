"""Names, version and pixel calibration of the scan bundle layout (see :mod:`stem2eds.formats.bundle`)."""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass
from typing import Any, Mapping

FORMAT = "stem2eds-bundle"
FORMAT_VERSION = 1

DIFFRACTION = "diffraction"
EDS = "eds"
EDS_RAW = "eds_raw"
HAADF = "haadf"
TRUTH = "truth"
CALIBRATION = "calibration"


@dataclass
class PixelCalibration:
    """Pixel sizes and beam energy of a scan.

    Attributes
    ----------
    r_pixel_size : float
        Real-space (probe step) pixel size, in ``r_pixel_unit`` (default nm).
    q_pixel_size : float
        Detector (reciprocal-space) pixel size, in ``q_pixel_unit``.
    r_pixel_unit, q_pixel_unit : str
        Units, e.g. ``"nm"`` and ``"1/nm"`` (or ``"mrad"``, ``"px"`` when uncalibrated).
    beam_energy_kev : float
        Beam energy in keV; NaN when unknown.
    """

    r_pixel_size: float = 1.0
    q_pixel_size: float = 1.0
    r_pixel_unit: str = "px"
    q_pixel_unit: str = "px"
    beam_energy_kev: float = float("nan")

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "PixelCalibration":
        kw = {}
        for name in ("r_pixel_size", "q_pixel_size", "beam_energy_kev"):
            if name in attrs:
                kw[name] = float(attrs[name])
        for axis, calibrated in (("r", ("nm",)), ("q", ("1/nm", "mrad"))):
            if f"{axis}_pixel_size" not in kw and _as_str(attrs.get(f"{axis}_pixel_unit", "")) \
                    in calibrated:  # a unit without its size would read as 1 of that unit
                raise ValueError(f"calibration has {axis}_pixel_unit but no {axis}_pixel_size")
        for name in ("r_pixel_size", "q_pixel_size"):
            if name in kw and not 0 < kw[name] < math.inf:
                # a bundle's sizes are written by convert, checked; anything else is damage
                raise ValueError(f"calibration {name} = {kw[name]} is not a positive number")
        for name in ("r_pixel_unit", "q_pixel_unit"):
            if name in attrs:
                kw[name] = _as_str(attrs[name])
        return cls(**kw)


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
