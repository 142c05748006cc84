"""Convert microscope files into one scan bundle (``stem2eds convert``).

Everything small (EDS maps, HAADF, calibrations) is read and checked first,
so a bad map fails in a second instead of after copying gigabytes; then the
diffraction patterns are copied block by block (whole scan rows, at most
``block_bytes`` per block) from the lazy source into the bundle, which is
written under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .formats.bundle import PixelCalibration, create_bundle, describe_source
from .elements import element_list
from .errors import InputError
from .io.calibration import standard_units
from .io.diffraction import DiffractionSource, open_diffraction
from .io.maps import AMBIGUOUS_MAX, read_image, read_map_folder
from .io.spectrum import parse_k_factors, quantify_spectrum_image, read_haadf_from_file
from .progress import track

#: Default size of one block of patterns copied at a time (bytes).
DEFAULT_BLOCK_BYTES = 64 * 2**20

#: HAADF files read as plain images; anything else is opened with HyperSpy.
_IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".npy", ".csv")


@dataclass
class ConvertResult:
    """What :func:`convert` wrote.

    Attributes
    ----------
    path : Path
        The bundle.
    scan_shape : (int, int)
        (Rx, Ry).
    detector_shape : (int, int)
        (Qx, Qy).
    dtype : numpy.dtype
        Diffraction dtype (as in the source).
    elements : list of str
        EDS maps written, in order (empty without ``eds``).
    has_haadf : bool
    calibration : PixelCalibration
    notes : list of str
        Lines for the user (percent detected, positions without counts, ...).
    """

    path: Path
    scan_shape: tuple[int, int]
    detector_shape: tuple[int, int]
    dtype: np.dtype
    elements: list[str]
    has_haadf: bool
    calibration: PixelCalibration
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: shape, elements and output path."""
        rx, ry = self.scan_shape
        qx, qy = self.detector_shape
        eds = ",".join(self.elements) if self.elements else "no EDS"
        haadf = " + HAADF" if self.has_haadf else ""
        return (f"wrote {self.path}: {rx}x{ry} scan of {qx}x{qy} {self.dtype} patterns, "
                f"EDS {eds}{haadf}")


def convert(diffraction: str | os.PathLike, out: str | os.PathLike, *,
            scan_shape: Sequence[int] | None = None, dataset: str | None = None,
            eds: str | os.PathLike | None = None, haadf: str | os.PathLike | None = None,
            elements: Sequence[str] | str | None = None, name: str | None = None,
            r_pixel: float | None = None, r_unit: str | None = None,
            q_pixel: float | None = None, q_unit: str | None = None,
            beam_energy_kev: float | None = None,
            k_factors: Mapping[str, float] | str | None = None,
            eds_unit: str = "auto", command: str | None = None,
            block_bytes: int = DEFAULT_BLOCK_BYTES,
            echo: Callable[[str], None] | None = None, quiet: bool = True) -> ConvertResult:
    """Convert a 4D-STEM file (+ EDS, HAADF) into a scan bundle.

    Parameters
    ----------
    diffraction : path-like
        4D-STEM file (MRC, .npy, HDF5, or a RosettaSciIO format); see
        :func:`stem2eds.io.open_diffraction`.
    out : path-like
        Bundle to write (``.h5``); replaced atomically if it exists.
    scan_shape : (Rx, Ry), optional
        Needed for flat stacks of frames (e.g. MRC from Velox).
    dataset : str, optional
        HDF5 dataset path of the patterns.
    eds : path-like, optional
        A folder of per-element maps (atomic fraction or percent) or a
        spectrum-image file quantified with Cliff-Lorimer.
    haadf : path-like, optional
        HAADF as an image file (TIFF/PNG/NPY/CSV) or a microscope file
        holding a HAADF image (e.g. Velox .emd).
    elements : sequence of str or "O,Si,...", optional
        EDS elements to keep, in this order.
    name : str, optional
        Scan name (default: the output file's stem).
    r_pixel, r_unit : float, str, optional
        Probe step and its unit (default unit ``nm``); override the file's.
    q_pixel, q_unit : float, str, optional
        Detector pixel and its unit (default unit ``1/nm``); override the file's.
    beam_energy_kev : float, optional
        Beam energy in keV; overrides the file's.
    k_factors : mapping or "O=1.0,Si=1.2", optional
        Cliff-Lorimer k-factors for a spectrum image.
    eds_unit : {"auto", "fraction", "percent"}
        Unit of a map folder; ``auto`` decides from the largest value and
        refuses values just above 1 as ambiguous (see :mod:`stem2eds.io.maps`).
    command : str, optional
        The command line, stored in the provenance.
    block_bytes : int
        Largest block of patterns held in memory while copying (whole scan
        rows; at least one row).
    echo : callable, optional
        Called with one-line notes for the user (e.g. percent detected).
    quiet : bool
        Show no progress bar.

    Returns
    -------
    ConvertResult

    Raises
    ------
    InputError
        Any bad input; no output file is left behind.
    """
    echo = echo or (lambda line: None)
    out = Path(out)
    wanted = element_list(elements) if elements is not None else None
    k_table = parse_k_factors(k_factors)
    _check_arguments(out, wanted, eds, r_pixel, q_pixel, beam_energy_kev)
    with open_diffraction(diffraction, scan_shape=scan_shape, dataset=dataset) as source:
        if out.exists() and out.resolve() == source.path.resolve():
            raise InputError("`out` would overwrite the diffraction input", path=out)
        notes: list[str] = []
        eds_maps, eds_info = _read_eds(eds, wanted, k_table, beam_energy_kev, source, notes,
                                       eds_unit)
        haadf_map = _read_haadf(haadf, source) if haadf is not None else None
        for note in notes:
            echo(note)
        calibration = _calibration(source, r_pixel, r_unit, q_pixel, q_unit, beam_energy_kev)
        element_order = list(eds_maps)
        provenance = _provenance(source, command, dataset, eds, eds_info, haadf)
        with create_bundle(out, scan_shape=source.scan_shape,
                           detector_shape=source.detector_shape, dtype=source.dtype,
                           elements=element_order, calibration=calibration, scan_name=name,
                           provenance=provenance) as bundle:
            copy_patterns(source, bundle.diffraction, block_bytes=block_bytes, quiet=quiet)
            if eds_maps:
                bundle.write_eds(eds_maps)
            if haadf_map is not None:
                bundle.write_haadf(haadf_map)
    return ConvertResult(out, source.scan_shape, source.detector_shape, source.dtype,
                         element_order, haadf_map is not None, calibration, notes)


def _check_arguments(out: Path, wanted, eds, r_pixel, q_pixel, beam_energy_kev) -> None:
    """Refuse bad values and output paths before any file is read."""
    for value, name in ((r_pixel, "r_pixel"), (q_pixel, "q_pixel"),
                        (beam_energy_kev, "beam_energy_kev")):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise InputError(f"`{name}` must be a positive number, got {value}")
    if wanted is not None and eds is None:
        raise InputError("`elements` selects EDS maps but no `eds` was given",
                         hint="give `eds`, a folder of maps or a spectrum-image file")
    if out.exists() and out.is_dir():
        raise InputError("`out` is a folder; give a file name such as scan.h5", path=out)
    if not out.absolute().parent.is_dir():  # checked now, not after copying the scan
        raise InputError("output folder does not exist", path=out.absolute().parent,
                         hint="create it first or choose another `out`")


def _provenance(source: DiffractionSource, command, dataset, eds, eds_info, haadf
                ) -> dict[str, Any]:
    """Where the bundle came from: the command, the input files and the file's calibration."""
    return {
        "command": command or "stem2eds.convert.convert()",
        "diffraction": {**describe_source(source.path), "reader": source.reader,
                        **({"dataset": dataset} if dataset else {})},
        **({"eds": {**describe_source(eds), **eds_info}} if eds is not None else {}),
        **({"haadf": describe_source(haadf)} if haadf is not None else {}),
        "calibration_from_file": source.calibration,
    }


def rows_per_block(source: DiffractionSource, block_bytes: int) -> int:
    """How many whole scan rows to read at once.

    As many as fit in ``block_bytes`` (at least one), rounded down to a
    multiple of the source's storage chunk (``source.chunk_rows``) so that no
    chunk of a lazily loaded file is read twice; a file chunked more coarsely
    than ``block_bytes`` is read one chunk at a time.
    """
    row_bytes = source.scan_shape[1] * int(np.prod(source.detector_shape)) * source.dtype.itemsize
    rows = max(1, int(block_bytes) // row_bytes)
    chunk = max(1, int(source.chunk_rows))
    return chunk * max(1, rows // chunk)


def copy_patterns(source: DiffractionSource, target, *, block_bytes: int = DEFAULT_BLOCK_BYTES,
                  quiet: bool = True) -> None:
    """Copy all patterns from a lazy source into an (Rx, Ry, Qx, Qy) dataset.

    Parameters
    ----------
    source : DiffractionSource
        Read whole scan rows at a time.
    target : h5py.Dataset or ndarray, shape (Rx, Ry, Qx, Qy)
        Same shape as the source.
    block_bytes : int
        Largest block held in memory (at least one scan row is read).
    quiet : bool
        No progress output.
    """
    if tuple(target.shape) != source.shape:
        raise ValueError(f"target shape {target.shape} != source shape {source.shape}")
    rows = rows_per_block(source, block_bytes)
    blocks = source.iter_rows(rows)
    for start, block in track(blocks, total=-(-source.scan_shape[0] // rows),
                              description="copying patterns", quiet=quiet):
        target[start:start + len(block)] = block


def _check_scan_grid(shape: tuple[int, ...], source: DiffractionSource, what: str, path) -> None:
    if tuple(shape) != tuple(source.scan_shape):
        raise InputError(f"{what} is {shape[0]}x{shape[1]} but the diffraction scan is "
                         f"{source.scan_shape[0]}x{source.scan_shape[1]}", path=path,
                         hint="crop or register it onto the scan grid first "
                              "(stem2eds preprocess with `register`)")


def _read_eds(eds, wanted, k_table, beam_energy_kev, source: DiffractionSource,
              notes: list[str], eds_unit: str = "auto"
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """EDS maps as atomic fractions, keyed by element in output order."""
    if eds is None:
        return {}, {}
    path = Path(eds)
    if path.is_dir():
        maps = read_map_folder(path, wanted, eds_unit)
        first = next(iter(maps.fractions.values()))
        _check_scan_grid(first.shape, source, "EDS maps in the folder", path)
        if maps.was_percent and eds_unit == "auto":
            notes.append(f"EDS maps in {path} hold percent (values above "
                         f"{AMBIGUOUS_MAX}); divided by 100")
        info = {"kind": "element maps", "percent": maps.was_percent,
                "maps": {e: f.name for e, f in maps.files.items()}}
        return {e: maps.fractions[e] for e in maps.elements}, info
    if not path.exists():
        raise InputError("no such file or folder", path=path,
                         hint="give `eds` a folder of element maps or a spectrum-image file")
    if beam_energy_kev is None:
        beam_energy_kev = source.calibration.get("beam_energy_kev")
    quant = quantify_spectrum_image(path, wanted, k_table, beam_energy_kev)
    first = next(iter(quant.fractions.values()))
    _check_scan_grid(first.shape, source, "EDS spectrum image", path)
    notes.extend(f"{path.name}: {n}" for n in quant.notes)
    info = {"kind": "spectrum image", "method": "Cliff-Lorimer (exspy)",
            "xray_lines": quant.xray_lines, "k_factors": quant.k_factors,
            "k_factor_source": quant.k_factor_source}
    return {e: quant.fractions[e] for e in quant.elements}, info


def _read_haadf(path, source: DiffractionSource) -> np.ndarray:
    p = Path(path)
    if p.suffix.lower() in _IMAGE_EXTENSIONS:
        image = read_image(p)
    else:
        image = read_haadf_from_file(p)
    _check_scan_grid(image.shape, source, "HAADF image", p)
    return image


def _calibration(source: DiffractionSource, r_pixel, r_unit, q_pixel, q_unit,
                 beam_energy_kev) -> PixelCalibration:
    """The file's calibration with the user's values on top (R in nm, Q in 1/nm or mrad)."""
    values: dict[str, Any] = dict(source.calibration)
    for prefix, size, unit, default in (("r", r_pixel, r_unit, "nm"),
                                        ("q", q_pixel, q_unit, "1/nm")):
        if size is not None:
            values[f"{prefix}_pixel_size"], values[f"{prefix}_pixel_unit"] = \
                standard_units(prefix, float(size), unit or default)
        elif unit is not None:
            # A unit alone would relabel the file's number (or the 1.0 of an
            # uncalibrated axis) without converting it.
            raise InputError(f"`{prefix}_unit` needs `{prefix}_pixel` with the size in that unit")
    if beam_energy_kev is not None:
        values["beam_energy_kev"] = float(beam_energy_kev)
    return PixelCalibration(**values)
