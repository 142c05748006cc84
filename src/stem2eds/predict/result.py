"""What a prediction returns: the maps of one scan, with its calibration, and their conversions.

:class:`Prediction` is what :meth:`stem2eds.predict.Predictor.predict`
returns and :meth:`Prediction.load` reads back from a prediction file; it
converts to HyperSpy signals and xarray, and exports files
(:mod:`stem2eds.predict.export`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Prediction:
    """Predicted maps of one scan.

    Attributes
    ----------
    eds : ndarray, shape (E, Rx', Ry'), float32
        Atomic fractions in [0, 1] (network outputs clipped to that range).
    haadf : ndarray, shape (Rx', Ry'), float32, or None
        HAADF in the training data's detector units (None if not a target).
    elements : list of str
        Element of each ``eds`` map.
    scan_shape : (Rx', Ry')
        Scan shape after the run's crop.
    eds_std : ndarray, shape (E, Rx', Ry'), float32, or None
        Standard deviation of ``eds`` where it is known (ensembles,
        :mod:`stem2eds.analysis.uncertainty`; read from a prediction file's
        ``eds_std``); None for a single model.
    scan_step_nm : float or None
        Distance between neighbouring probe positions, nm; None when the
        scan is not calibrated in a length.
    source_name : str or None
        The scan's name (bundle ``scan_name``, signal title, ...).
    offset : (int, int)
        Scan row and column of the first predicted position in the source
        scan (the run's crop), so maps line up with the source's axes.
    """

    eds: np.ndarray
    haadf: np.ndarray | None
    elements: list[str]
    scan_shape: tuple[int, int]
    eds_std: np.ndarray | None = None
    scan_step_nm: float | None = None
    source_name: str | None = None
    offset: tuple[int, int] = (0, 0)

    def file_attrs(self) -> dict[str, Any]:
        """Root attributes of a prediction file that describe these maps (calibration, name)."""
        attrs: dict[str, Any] = {"scan_shape": list(self.scan_shape),
                                 "scan_offset": list(self.offset)}
        if self.scan_step_nm is not None:
            attrs["scan_step_nm"] = float(self.scan_step_nm)
        if self.source_name is not None:
            attrs["scan_name"] = self.source_name
        return attrs

    def save(self, path: str | os.PathLike, attrs: dict[str, Any] | None = None,
             extra: dict[str, np.ndarray] | None = None) -> Path:
        """Write these maps as a prediction file (:mod:`stem2eds.formats.prediction`).

        ``extra``: further datasets (e.g. ``ood``, the per-position OOD score).
        """
        from ..formats.prediction import write_prediction_file

        return write_prediction_file(path, self.elements, self.eds, haadf=self.haadf,
                                     eds_std=self.eds_std,
                                     attrs={**self.file_attrs(), **(attrs or {})}, extra=extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Prediction":
        """Read a prediction file (``stem2eds predict``, experiments, ensembles).

        The scan step comes from the file's ``scan_step_nm`` attribute (None
        in files written without it).
        """
        from ..formats.prediction import read_prediction

        f = read_prediction(path)
        step = f.attrs.get("scan_step_nm")
        offset = f.attrs.get("scan_offset") or (0, 0)
        return cls(f.eds, f.haadf, list(f.elements), tuple(f.eds.shape[1:]), eds_std=f.eds_std,
                   scan_step_nm=None if step is None else float(step),
                   source_name=f.attrs.get("scan_name"),
                   offset=(int(offset[0]), int(offset[1])))

    def to_hyperspy(self) -> dict[str, Any]:
        """HyperSpy ``Signal2D`` maps, as exspy's ``get_lines_intensity`` returns them.

        Returns
        -------
        dict of str to hyperspy.signals.Signal2D
            One map per element keyed by its symbol (title = symbol,
            ``metadata.Sample.elements``), then ``"haadf"`` and
            ``"<El>_std"`` maps where present. Axes ``x`` (scan columns)
            and ``y`` (scan rows) in nm (``px`` when uncalibrated);
            ``list(maps.values())`` plots with ``hs.plot.plot_images``.
        """
        from .export import to_hyperspy

        return to_hyperspy(self)

    def to_xarray(self):
        """An ``xarray.Dataset``: ``eds`` (element, y, x), ``haadf`` and ``eds_std`` where present.

        Coordinates ``element`` (symbols), ``y`` (scan rows) and ``x``
        (columns) in nm (``px`` when uncalibrated).
        """
        from .export import to_xarray

        return to_xarray(self)

    def export(self, path: str | os.PathLike, format: str | None = None,
               overwrite: bool = False) -> list[Path]:
        """Write these maps as hdf5, hspy, zspy, tiff or csv (:mod:`stem2eds.predict.export`)."""
        from .export import export_prediction

        return export_prediction(self, path, format, overwrite=overwrite)
