"""Calibrated transfer: patterns of another camera length or detector binning -> the run's q grid.

A run learns on one physical q grid: its training detector's shape and q
pixel size (1/nm or mrad) at a beam energy, recorded as ``q_grid`` in
``run.json`` (:func:`grid_of_bundles` at train time). A scan recorded with
another camera length or binning has the same physics on another pixel grid;
:func:`plan_transfer` compares the two grids and :class:`TransferredScan`
resamples every raw pattern onto the run's grid *before* preprocessing, so
origin finding, beam removal, binning and scaling run exactly as in
training.

Resampling is about the detector centres (the unscattered beam need not be
there: the origin fit that follows measures where it landed) and
flux-conserving: every scan pixel's counts go to the run pixels its q area
overlaps. A scan pixel finer than the run's is summed by area overlap
(OpenCV ``INTER_AREA``). A coarser one (a binned detector, a shorter
camera length) cannot say where inside it its counts fell, and sharing
them equally (plain area resampling, used first) put up to half of the
counts of the pixels on the beam disk's edge outside the disk, beyond the
radius preprocessing removes, which moved the innermost ring features
the models weigh. Such pixels are shared in proportion to a model of the pattern at the run's
resolution instead (:mod:`stem2eds.preprocess.resample`: the beam disk,
radius fitted on the scan's pixels, at each pattern's measured sub-pixel
origin, over a smooth interpolation of the rest); docs/transfer.md gives
the numbers. Bilinear interpolation (``cv2.warpAffine``) was tried before
either: it spreads the bright beam over two more pixels of a binned scan.
OpenCV rather than ``scipy.ndimage``: it releases the GIL, so the reading
and preprocessing threads of prediction keep overlapping.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..formats.bundle import PixelCalibration, ScanBundle, open_bundle

#: Relative difference of pixel sizes below which two detector setups are the same.
SAME_PIXEL_RTOL = 1e-3
#: Calibrated units of a detector pixel.
Q_UNITS = ("1/nm", "mrad")
_HC_KEV_NM = 1.23984198          # h c in keV nm
_MC2_KEV = 510.99895             # electron rest energy, keV


def electron_wavelength_nm(energy_kev: float) -> float:
    """Relativistic electron wavelength in nm (0.002508 nm at 200 keV)."""
    return _HC_KEV_NM / math.sqrt(energy_kev * (2 * _MC2_KEV + energy_kev))


@dataclass(frozen=True)
class QGrid:
    """The physical q grid of a detector setup (``q_grid`` in ``run.json``).

    Attributes
    ----------
    detector_shape : (Qx, Qy)
        Raw detector shape, px.
    q_pixel_size : float
        Detector pixel in ``q_pixel_unit``.
    q_pixel_unit : str
        ``"1/nm"``, ``"mrad"`` or ``"px"`` (uncalibrated).
    beam_energy_kev : float
        NaN when unknown.
    """

    detector_shape: tuple[int, int]
    q_pixel_size: float
    q_pixel_unit: str
    beam_energy_kev: float = float("nan")

    @classmethod
    def of(cls, calibration: PixelCalibration, detector_shape: Sequence[int]) -> "QGrid":
        return cls(tuple(int(v) for v in detector_shape), float(calibration.q_pixel_size),
                   str(calibration.q_pixel_unit), float(calibration.beam_energy_kev))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["detector_shape"] = list(self.detector_shape)
        d["beam_energy_kev"] = None if math.isnan(self.beam_energy_kev) else self.beam_energy_kev
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QGrid":
        energy = d.get("beam_energy_kev")
        return cls(tuple(int(v) for v in d["detector_shape"]), float(d["q_pixel_size"]),
                   str(d["q_pixel_unit"]), float("nan") if energy is None else float(energy))

    @property
    def calibrated(self) -> bool:
        return self.q_pixel_unit in Q_UNITS and 0 < self.q_pixel_size < math.inf

    def pixel_inv_nm(self, what: str) -> float:
        """Pixel size in 1/nm (mrad converted with the beam energy's wavelength)."""
        if self.q_pixel_unit == "1/nm":
            return self.q_pixel_size
        if not self.beam_energy_kev > 0:
            raise InputError(f"the {what} detector is calibrated in mrad but its beam energy "
                             "is unknown, so its q grid cannot be compared in 1/nm",
                             hint="give the beam energy when converting the scan")
        return self.q_pixel_size * 1e-3 / electron_wavelength_nm(self.beam_energy_kev)

    def describe(self) -> str:
        qx, qy = self.detector_shape
        return f"{qx}x{qy} px at {self.q_pixel_size:.4g} {self.q_pixel_unit}"


@dataclass(frozen=True)
class Transfer:
    """How a scan's patterns map onto a run's q grid.

    Attributes
    ----------
    source_shape, target_shape : (Qx, Qy)
        Scan detector and run detector, px.
    ratio : float
        Run pixel over scan pixel (scan pixels per run pixel, same units).
    source, target : QGrid
    """

    source_shape: tuple[int, int]
    target_shape: tuple[int, int]
    ratio: float
    source: QGrid
    target: QGrid

    def describe(self) -> str:
        return f"resampled from {self.source.describe()} to the run's {self.target.describe()}"


def grid_of_bundles(bundles: Sequence[str | Path]) -> QGrid:
    """The q grid shared by raw bundles (the training scans of a run).

    Raises
    ------
    InputError
        If two bundles differ in detector shape, q pixel size or unit, or beam
        energy: one run learns on one grid.
    """
    first: tuple[Path, QGrid] | None = None
    for path in bundles:
        with open_bundle(path) as scan:
            grid = QGrid.of(scan.calibration, scan.detector_shape)
        if first is None:
            first = (Path(path), grid)
            continue
        if not _same_grid(first[1], grid):
            raise InputError(f"training bundles were recorded on different q grids: "
                             f"{first[0].name} {first[1].describe()}, {Path(path).name} "
                             f"{grid.describe()}", path=path,
                             hint="train on scans of one detector setup (camera length, "
                                  "binning); predict transfers other setups")
    assert first is not None
    return first[1]


def _same_grid(a: QGrid, b: QGrid) -> bool:
    energies = (a.beam_energy_kev, b.beam_energy_kev)
    same_energy = any(math.isnan(e) for e in energies) or math.isclose(*energies, rel_tol=1e-3)
    return (a.detector_shape == b.detector_shape and a.q_pixel_unit == b.q_pixel_unit
            and math.isclose(a.q_pixel_size, b.q_pixel_size, rel_tol=SAME_PIXEL_RTOL)
            and same_energy)


def plan_transfer(run_grid: QGrid | Mapping[str, Any] | None, scan_calibration: PixelCalibration,
                  scan_detector_shape: Sequence[int]) -> Transfer | None:
    """Plan the resampling of a scan onto a run's q grid; None when the setups are the same.

    Parameters
    ----------
    run_grid : QGrid, dict (``run.json`` ``q_grid``) or None
        None (a run made before q grids were recorded): no transfer.
    scan_calibration : PixelCalibration
        The scan bundle's calibration.
    scan_detector_shape : (Qx, Qy)

    Returns
    -------
    Transfer or None

    Raises
    ------
    InputError
        When the setups differ and either side is uncalibrated (unit ``px``),
        when mrad must be converted without a beam energy, or when the scan's
        detector does not cover the q range of the run's detector (both
        ranges in 1/nm in the message).
    """
    if run_grid is None:
        return None
    target = run_grid if isinstance(run_grid, QGrid) else QGrid.from_dict(run_grid)
    source = QGrid.of(scan_calibration, scan_detector_shape)
    same_shape = source.detector_shape == target.detector_shape
    if not (source.calibrated and target.calibrated):
        if same_shape:
            return None  # nothing says the setups differ
        which = "the scan's" if not source.calibrated else "the run's"
        raise InputError(f"the scan's detector ({source.describe()}) differs from the run's "
                         f"({target.describe()}) and {which} q pixel size is not calibrated, "
                         "so its patterns cannot be resampled",
                         hint="give the q pixel size (1/nm or mrad) when converting the scan")
    ratio = _pixel_ratio(source, target)
    if same_shape and abs(ratio - 1.0) < SAME_PIXEL_RTOL:
        return None
    if not MAX_PIXEL_RATIO ** -1 <= ratio <= MAX_PIXEL_RATIO:
        raise InputError(f"the scan's q pixel ({source.describe()}) is {1 / ratio:.3g} times the "
                         f"run's ({target.describe()}): not a camera-length change this can "
                         "resample", hint="check the scan's q calibration")
    _check_coverage(source, target, ratio)
    return Transfer(source.detector_shape, target.detector_shape, ratio, source, target)


#: Largest factor between a scan's q pixel and the run's that is resampled (a
#: camera length or binning 64 times another's is a calibration error).
MAX_PIXEL_RATIO = 64.0


def _pixel_ratio(source: QGrid, target: QGrid) -> float:
    """Run pixel / scan pixel; in 1/nm unless both are mrad at one beam energy."""
    if source.q_pixel_unit == target.q_pixel_unit == "mrad" and (
            math.isnan(source.beam_energy_kev) or math.isnan(target.beam_energy_kev)
            or math.isclose(source.beam_energy_kev, target.beam_energy_kev, rel_tol=1e-3)):
        return target.q_pixel_size / source.q_pixel_size
    return target.pixel_inv_nm("run's") / source.pixel_inv_nm("scan's")


def _check_coverage(source: QGrid, target: QGrid, ratio: float) -> None:
    """The scan's detector must span the run's (both half-widths, in run pixels)."""
    need = np.asarray(target.detector_shape, float) / 2
    have = np.asarray(source.detector_shape, float) / 2 / ratio
    if np.all(have >= need * (1 - SAME_PIXEL_RTOL)):
        return
    px = target.pixel_inv_nm("run's") if target.calibrated else float("nan")
    need_q, have_q = need * px, have * px
    raise InputError(
        f"the scan's detector covers q up to {have_q[0]:.3g} x {have_q[1]:.3g} 1/nm from its "
        f"centre ({source.describe()}) but the run needs {need_q[0]:.3g} x {need_q[1]:.3g} "
        f"1/nm ({target.describe()})",
        hint="record with a shorter camera length (larger field of view), or train on scans "
             "of this setup")


def transfer_patterns(patterns: np.ndarray, transfer: Transfer) -> np.ndarray:
    """Resample patterns onto the run's q grid, conserving counts per q area.

    Parameters
    ----------
    patterns : ndarray, shape (n, Qx, Qy)
        Raw patterns on the scan's detector (any numeric dtype).
    transfer : Transfer

    Returns
    -------
    ndarray, shape (n, Qx', Qy'), float32
        On the run's detector (``transfer.target_shape``); zero outside the
        scan's detector. The scan's detector centre lands within half a
        pixel of the run's (the origin fit that follows measures it). Scan
        pixels coarser than the run's are shared by a model of the pattern
        (:func:`~stem2eds.preprocess.resample.guided_resample`: the beam
        disk at each pattern's origin over a smooth interpolation), finer
        ones summed by their area overlap.
    """
    from .resample import area_resample, guided_resample

    k = float(transfer.ratio)
    (sx, sy), (tx, ty) = transfer.source_shape, transfer.target_shape
    # OpenCV keeps the exact factor 1/k when dsize is (0, 0): the content is
    # sx/k run pixels tall, its centre at sx/(2k); place it on the run's centre
    row0 = int(round(tx / 2 - sx / (2 * k)))
    col0 = int(round(ty / 2 - sy / (2 * k)))
    src = np.ascontiguousarray(patterns, dtype=np.float32)
    content = guided_resample(src, k) if k < 1 else area_resample(src, k)
    out = np.zeros((len(patterns), tx, ty), dtype=np.float32)
    for i, img in enumerate(content):
        _paste(out[i], img, row0, col0)
    return out


def _paste(canvas: np.ndarray, img: np.ndarray, row0: int, col0: int) -> None:
    """Copy ``img`` into ``canvas`` with its top-left corner at (row0, col0), clipped."""
    r0, c0 = max(row0, 0), max(col0, 0)
    r1 = min(row0 + img.shape[0], canvas.shape[0])
    c1 = min(col0 + img.shape[1], canvas.shape[1])
    if r1 > r0 and c1 > c0:
        canvas[r0:r1, c0:c1] = img[r0 - row0:r1 - row0, c0 - col0:c1 - col0]


class TransferredSource:
    """A :class:`stem2eds.io.stream.BlockSource` of a scan's patterns on the run's q grid.

    Parameters
    ----------
    reader : BlockSource
        The scan's own patterns (e.g. a :class:`~stem2eds.io.stream.PatternReader`).
    transfer : Transfer
    """

    dtype = np.dtype(np.float32)

    def __init__(self, reader, transfer: Transfer):
        self._reader = reader
        self.transfer = transfer
        self.scan_shape = tuple(reader.scan_shape)
        self.detector_shape = tuple(transfer.target_shape)
        self.shape = (*self.scan_shape, *self.detector_shape)

    def read(self, flat: np.ndarray) -> np.ndarray:
        """Resampled patterns (n, Qx', Qy') float32 at ascending flat indices."""
        return transfer_patterns(self._reader.read(flat), self.transfer)


class TransferredScan:
    """A raw scan bundle seen on a run's q grid: what prediction reads instead of the bundle.

    Every attribute prediction uses is forwarded explicitly; ``diffraction``
    is a :class:`TransferredSource` (float32 patterns of ``detector_shape``)
    and ``calibration`` reports the run's q pixel size.

    Parameters
    ----------
    scan : ScanBundle
        An open raw bundle (stays open; closing this closes only the reader).
    transfer : Transfer
    """

    def __init__(self, scan: ScanBundle, transfer: Transfer):
        from ..io.stream import PatternReader

        self.scan = scan
        self.transfer = transfer
        self._reader = PatternReader(scan.diffraction)
        self.diffraction = TransferredSource(self._reader, transfer)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.scan.scan_shape

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self.transfer.target_shape

    @property
    def calibration(self) -> PixelCalibration:
        cal = self.scan.calibration
        target = self.transfer.target
        cal.q_pixel_size, cal.q_pixel_unit = target.q_pixel_size, target.q_pixel_unit
        return cal

    @property
    def kind(self) -> str:
        return self.scan.kind

    @property
    def path(self) -> Path:
        return self.scan.path

    @property
    def name(self) -> str:
        return self.scan.name

    @property
    def elements(self) -> list[str]:
        return self.scan.elements

    @property
    def file(self):
        return self.scan.file

    def json_attr(self, key: str, default: Any = None) -> Any:
        return self.scan.json_attr(key, default)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "TransferredScan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
