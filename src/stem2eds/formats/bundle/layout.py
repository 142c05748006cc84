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
        """A bundle's calibration attributes, checked (``ValueError`` names what is wrong).

        ``convert`` writes sizes that are positive numbers and the units
        ``px``/``nm`` (scan) and ``px``/``1/nm``/``mrad`` (detector) only;
        anything else is damage, and a calibrated unit without its size
        would read as 1 of that unit.
        """
        kw: dict[str, Any] = {}
        for name in ("r_pixel_size", "q_pixel_size", "beam_energy_kev"):
            if name in attrs:
                kw[name] = float(attrs[name])
        for name in ("r_pixel_unit", "q_pixel_unit"):
            if name in attrs:
                kw[name] = _as_str(attrs[name])
        for axis, units in (("r", ("px", "nm")), ("q", ("px", "1/nm", "mrad"))):
            unit = kw.get(f"{axis}_pixel_unit", "px")
            if unit not in units:
                raise ValueError(f"calibration {axis}_pixel_unit {unit[:20]!r} is not one of "
                                 f"{', '.join(units)}")
            size = kw.get(f"{axis}_pixel_size")
            if size is None and unit != "px":
                raise ValueError(f"calibration has {axis}_pixel_unit but no {axis}_pixel_size")
            if size is not None and not 0 < size < math.inf:
                raise ValueError(f"calibration {axis}_pixel_size = {size} is not a positive "
                                 "number")
        return cls(**kw)


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
