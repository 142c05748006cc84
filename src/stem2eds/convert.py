"""Convert microscope files into one scan bundle (``stem2eds convert``).

Everything small (EDS maps, HAADF, calibrations) is read and checked first,
so a bad map fails in a second instead of after copying gigabytes; then the
diffraction patterns are copied block by block (whole scan rows, at most
``block_bytes`` per block) from the lazy source into the bundle, which is
written under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .formats.bundle import PixelCalibration, create_bundle, describe_source
from .atomic import refuse_overwrite, refuse_run_file
from .elements import element_list
from .errors import InputError
from .io.calibration import check_pixel, standard_units
from .io.describe import file_pixel_size_nm
from .io.diffraction import DiffractionSource, open_diffraction
from .io.maps import AMBIGUOUS_MAX, read_image, read_map_folder
from .io.spectrum import parse_k_factors, quantify_spectrum_image, read_haadf_from_file
from .preprocess.settings import EDS_UNREGISTERED, HAADF_UNREGISTERED
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
    detector_shape : (int, int) or None
        (Qx, Qy); None for a bundle of maps only.
    dtype : numpy.dtype or None
        Diffraction dtype (as in the source).
    elements : list of str
        EDS maps written, in order (empty without ``eds``).
    has_haadf : bool
    calibration : PixelCalibration
    notes : list of str
        Lines for the user (percent detected, positions without counts, ...).
    unregistered : list of str
        ``"eds"`` and/or ``"haadf"`` when stored off the scan grid, for registration.
    """

    path: Path
    scan_shape: tuple[int, int]
    detector_shape: tuple[int, int] | None
    dtype: np.dtype | None
    elements: list[str]
    has_haadf: bool
    calibration: PixelCalibration
    notes: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: shape, elements and output path."""
        rx, ry = self.scan_shape
        eds = f"EDS {','.join(self.elements)}" if self.elements else "no EDS"
        if "eds" in self.unregistered:
            eds += " (unregistered)"
        haadf = (" + HAADF" + (" (unregistered)" if "haadf" in self.unregistered else "")
                 if self.has_haadf else "")
        if self.detector_shape is None:
            return f"wrote {self.path}: {rx}x{ry} maps without diffraction, {eds}{haadf}"
        qx, qy = self.detector_shape
        return (f"wrote {self.path}: {rx}x{ry} scan of {qx}x{qy} {self.dtype} patterns, "
                f"{eds}{haadf}")


# long function: the documented public API; most of its lines describe the arguments
def convert(diffraction: str | os.PathLike | None, out: str | os.PathLike, *,
            scan_shape: Sequence[int] | None = None, dataset: str | None = None,
            eds: str | os.PathLike | None = None, haadf: str | os.PathLike | None = None,
            elements: Sequence[str] | str | None = None, name: str | None = None,
            r_pixel: float | None = None, r_unit: str | None = None,
            q_pixel: float | None = None, q_unit: str | None = None,
            beam_energy_kev: float | None = None,
            k_factors: Mapping[str, float] | str | None = None,
            eds_unit: str = "auto", eds_pixel_size: float | None = None,
            haadf_pixel_size: float | None = None, eds_bin: int = 1,
            command: str | None = None,
            block_bytes: int = DEFAULT_BLOCK_BYTES,
            echo: Callable[[str], None] | None = None, quiet: bool = True) -> ConvertResult:
    """Convert a 4D-STEM file (+ EDS, HAADF) into a scan bundle.

    Parameters
    ----------
    diffraction : path-like or None
        4D-STEM file (MRC, .npy, HDF5, or a RosettaSciIO format); see
        :func:`stem2eds.io.open_diffraction`. None makes a bundle of maps
        only (EDS and/or HAADF on the EDS grid, no ``diffraction``), for
        sparse EDS or registration.
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
    eds_pixel_size, haadf_pixel_size : float, optional
        Pixel size (in ``r_unit``, default nm) of EDS or HAADF maps recorded
        on another grid than the scan. Maps of another shape (or pixel size)
        are stored as ``eds_unregistered/<El>`` / ``haadf_unregistered``
        for ``preprocess`` with ``register``; without these values the
        spectrum image's or HAADF file's own calibration is used.
    eds_bin : int
        Sum ``eds_bin x eds_bin`` positions of a spectrum image before
        quantifying (low-count maps); the maps then have ``eds_bin`` times
        the file's scan step.
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
    _check_arguments(out, wanted, eds, r_pixel, q_pixel, beam_energy_kev, diffraction, haadf,
                     eds_pixel_size, haadf_pixel_size)
    px_sizes = {"eds": _in_nm(eds_pixel_size, r_unit), "haadf": _in_nm(haadf_pixel_size, r_unit)}
    # every input file, the maps of an EDS folder included (convert --out maps/Te.npy)
    inputs = [p for p in (diffraction, eds, haadf) if p is not None]
    inputs += [f for f in Path(eds).iterdir() if f.is_file()] if eds is not None and \
        Path(eds).is_dir() else []
    refuse_overwrite(out, *inputs)
    refuse_run_file(out)
    with contextlib.ExitStack() as stack:
        source = None
        if diffraction is not None:
            source = stack.enter_context(open_diffraction(diffraction, scan_shape=scan_shape,
                                                          dataset=dataset))
        notes: list[str] = []
        file_energy = source.calibration.get("beam_energy_kev") if source else None
        eds_maps, eds_info = _read_eds(eds, wanted, k_table, beam_energy_kev or file_energy,
                                       notes, eds_unit, eds_bin)
        if eds_bin > 1:
            # binned maps have eds_bin times the file's step: the user's (of the file), or
            # the binned spectrum image's own calibration
            px_sizes["eds"] = (px_sizes["eds"] * eds_bin if px_sizes["eds"] is not None
                               else eds_info.get("pixel_size_nm"))
        haadf_map = _read_haadf(haadf) if haadf is not None else None
        grid = _grid(source, eds_maps, haadf_map, eds, haadf, px_sizes)
        calibration = _calibration(source, r_pixel, r_unit, q_pixel, q_unit, beam_energy_kev,
                                   grid.own_r_pixel)
        if not np.isfinite(calibration.beam_energy_kev) and eds_info.get("beam_energy_kev"):
            # no diffraction file (or one without it): the spectrum image's metadata
            calibration = dataclasses.replace(calibration,
                                              beam_energy_kev=eds_info["beam_energy_kev"])
        placed = _place(grid, calibration, eds_maps, haadf_map, eds, haadf, px_sizes, notes)
        for note in notes:
            echo(note)
        element_order = list(eds_maps)
        provenance = _provenance(source, command, dataset, eds, eds_info, haadf)
        with create_bundle(out, scan_shape=grid.shape,
                           detector_shape=source.detector_shape if source else None,
                           dtype=source.dtype if source else None,
                           elements=element_order, calibration=calibration, scan_name=name,
                           provenance=provenance) as bundle:
            if source is not None:
                copy_patterns(source, bundle.diffraction, block_bytes=block_bytes, quiet=quiet)
            _write_maps(bundle, placed)
    return ConvertResult(out, grid.shape, source.detector_shape if source else None,
                         source.dtype if source else None, element_order,
                         haadf_map is not None, calibration, notes,
                         unregistered=[k for k, v in placed.items() if v[1] is not None])


def _check_arguments(out: Path, wanted, eds, r_pixel, q_pixel, beam_energy_kev, diffraction,
                     haadf, eds_pixel_size, haadf_pixel_size) -> None:
    """Refuse bad values and output paths before any file is read."""
    for value, name in ((r_pixel, "r_pixel"), (q_pixel, "q_pixel"),
                        (beam_energy_kev, "beam_energy_kev"), (eds_pixel_size, "eds_pixel_size"),
                        (haadf_pixel_size, "haadf_pixel_size")):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise InputError(f"`{name}` must be a positive number, got {value}")
    if diffraction is None and eds is None and haadf is None:
        raise InputError("nothing to convert", hint="give `diffraction`, and/or `eds` or "
                         "`haadf` for a bundle of maps only")
    if wanted is not None and eds is None:
        raise InputError("`elements` selects EDS maps but no `eds` was given",
                         hint="give `eds`, a folder of maps or a spectrum-image file")
    if out.exists() and out.is_dir():
        raise InputError("`out` is a folder; give a file name such as scan.h5", path=out)
    if not out.absolute().parent.is_dir():  # checked now, not after copying the scan
        raise InputError("output folder does not exist", path=out.absolute().parent,
                         hint="create it first or choose another `out`")


def _provenance(source: DiffractionSource | None, command, dataset, eds, eds_info, haadf
                ) -> dict[str, Any]:
    """Where the bundle came from: the command, the input files and the file's calibration."""
    if source is None:
        return {"command": command or "stem2eds.convert.convert()",
                **({"eds": {**describe_source(eds), **eds_info}} if eds is not None else {}),
                **({"haadf": describe_source(haadf)} if haadf is not None else {})}
    return {
        "command": command or "stem2eds.convert.convert()",
        "diffraction": {**describe_source(source.path), "reader": source.reader,
                        **({"dataset": dataset} if dataset else {})},
        **({"eds": {**describe_source(eds), **eds_info}} if eds is not None else {}),
        **({"haadf": describe_source(haadf)} if haadf is not None else {}),
        "calibration_from_file": source.calibration,
        **({"calibration_refused": source.calibration_problems}
           if source.calibration_problems else {}),
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
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            raise InputError(f"the patterns of scan rows {start}-{start + len(block) - 1} hold "
                             "NaN or infinite values", path=source.path,
                             hint="replace them (e.g. dead pixels by 0) before converting")
        target[start:start + len(block)] = block


def _read_eds(eds, wanted, k_table, beam_energy_kev, notes: list[str], eds_unit: str = "auto",
              eds_bin: int = 1) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """EDS maps as atomic fractions, keyed by element in output order."""
    if eds is None:
        return {}, {}
    path = Path(eds)
    if path.is_dir():
        maps = read_map_folder(path, wanted, eds_unit)
        if maps.was_percent and eds_unit == "auto":
            notes.append(f"EDS maps in {path} hold percent (values above "
                         f"{AMBIGUOUS_MAX}); divided by 100")
        info = {"kind": "element maps", "percent": maps.was_percent,
                "maps": {e: f.name for e, f in maps.files.items()}}
        return {e: maps.fractions[e] for e in maps.elements}, info
    if not path.exists():
        raise InputError("no such file or folder", path=path,
                         hint="give `eds` a folder of element maps or a spectrum-image file")
    quant = quantify_spectrum_image(path, wanted, k_table, beam_energy_kev, eds_bin=eds_bin)
    notes.extend(f"{path.name}: {n}" for n in quant.notes)
    info = {"kind": "spectrum image", "method": "Cliff-Lorimer (exspy)",
            "xray_lines": quant.xray_lines, "k_factors": quant.k_factors,
            "k_factor_source": quant.k_factor_source, "beam_energy_kev": quant.beam_energy_kev,
            "eds_bin": eds_bin,
            "pixel_size_nm": float(np.mean(quant.pixel_size_nm)) if quant.pixel_size_nm else None}
    return {e: quant.fractions[e] for e in quant.elements}, info


def _read_haadf(path) -> np.ndarray:
    p = Path(path)
    if p.suffix.lower() in _IMAGE_EXTENSIONS:
        return read_image(p)
    return read_haadf_from_file(p)


def _in_nm(size: float | None, r_unit: str | None) -> float | None:
    """A map pixel size given in ``r_unit`` (default nm), in nm."""
    if size is None:
        return None
    value, unit = standard_units("r", float(size), r_unit or "nm")
    if unit != "nm":
        raise InputError(f"`r_unit` {r_unit!r} is not a length unit (nm, Å, pm, µm)")
    return value


@dataclass
class _Grid:
    """The scan grid of the bundle: the diffraction scan's, else the EDS (or HAADF) maps'."""

    shape: tuple[int, int]
    #: Pixel size (nm) of the maps that set the grid, for a bundle without diffraction.
    own_r_pixel: float | None = None


def _grid(source, eds_maps, haadf_map, eds, haadf, px_sizes) -> _Grid:
    if source is not None:
        return _Grid(tuple(source.scan_shape))
    if eds_maps:
        shape = next(iter(eds_maps.values())).shape
        px = px_sizes["eds"] or _own_pixel_size(eds, spectrum=True)
    else:
        shape = haadf_map.shape
        px = px_sizes["haadf"] or _own_pixel_size(haadf, spectrum=False)
    return _Grid(tuple(int(n) for n in shape), px)


def _own_pixel_size(path, spectrum: bool) -> float | None:
    """The file's own scan step (nm): a spectrum image's or a HAADF file's calibration."""
    if path is None or Path(path).is_dir() or Path(path).suffix.lower() in _IMAGE_EXTENSIONS:
        return None
    return file_pixel_size_nm(path, spectrum)


def _place(grid: _Grid, calibration: PixelCalibration, eds_maps, haadf_map, eds, haadf,
           px_sizes, notes: list[str]) -> dict[str, tuple[Any, float | None]]:
    """Where each map goes: ``{"eds": (maps, None | pixel size nm), "haadf": ...}``.

    A map on the scan grid (same shape, and no other pixel size given) is
    stored as it is; one on another grid whose pixel size is known (given,
    or the file's own) is stored unregistered; otherwise it is refused.
    """
    placed: dict[str, tuple[Any, float | None]] = {}
    for kind, value, path in (("eds", eds_maps, eds), ("haadf", haadf_map, haadf)):
        if value is None or (kind == "eds" and not value):
            continue
        what = "HAADF image" if kind == "haadf" else (
            "EDS maps in the folder" if Path(path).is_dir() else "EDS spectrum image")
        shape = next(iter(value.values())).shape if kind == "eds" else value.shape
        given = px_sizes[kind]
        scan_px = calibration.r_pixel_size if calibration.r_pixel_unit == "nm" else None
        other_step = given is not None and scan_px is not None and \
            abs(given - scan_px) > 1e-6 * scan_px
        if tuple(shape) == grid.shape and not other_step:
            placed[kind] = (value, None)
            continue
        px = given or _own_pixel_size(path, spectrum=kind == "eds")
        if px is None:
            scan = "diffraction scan" if grid.own_r_pixel is None else "EDS grid"
            raise InputError(f"{what} is {shape[0]}x{shape[1]} but the {scan} is "
                             f"{grid.shape[0]}x{grid.shape[1]}", path=path,
                             hint=f"give its pixel size as `{kind}_pixel_size` to store it "
                                  "for registration (stem2eds preprocess with `register`), or "
                                  "crop it onto the scan grid")
        if scan_px is None:
            raise InputError(f"{what} on another grid need the scan step to be registered",
                             path=path, hint="give `r_pixel` (the probe step)")
        placed[kind] = (value, px)
        notes.append(f"{what} {shape[0]}x{shape[1]} at {px:.4g} nm stored as "
                     f"{EDS_UNREGISTERED if kind == 'eds' else HAADF_UNREGISTERED} (the scan is "
                     f"{grid.shape[0]}x{grid.shape[1]} at {scan_px:.4g} nm); run preprocess "
                     "with `register` to bring them onto the scan grid")
    return placed


def _write_maps(bundle, placed: dict[str, tuple[Any, float | None]]) -> None:
    for kind, (value, px) in placed.items():
        if px is None:
            if kind == "eds":
                bundle.write_eds(value)
            else:
                bundle.write_haadf(value)
            continue
        if kind == "eds":
            for element, fractions in value.items():
                bundle.write_array(f"{EDS_UNREGISTERED}/{element}",
                                   _checked_map(f"EDS map {element}", fractions, fraction=True))
            bundle.file[EDS_UNREGISTERED].attrs["pixel_size"] = px
        else:
            bundle.write_array(HAADF_UNREGISTERED, _checked_map("HAADF image", value,
                                                                fraction=False), pixel_size=px)


def _checked_map(what: str, values, fraction: bool) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != 2 or not np.all(np.isfinite(arr)):
        raise InputError(f"{what} must be a 2D map of finite values")
    if fraction and (arr.min() < 0 or arr.max() > 1):
        raise InputError(f"{what} has values outside [0, 1]; EDS maps must be atomic fractions")
    return arr


def _calibration(source: DiffractionSource | None, r_pixel, r_unit, q_pixel, q_unit,
                 beam_energy_kev, own_r_pixel: float | None = None) -> PixelCalibration:
    """The file's calibration with the user's values on top (R in nm, Q in 1/nm or mrad).

    Values the file has but that cannot be right (``source.calibration_problems``)
    are refused unless the user gives them; the user's own values are
    checked the same way (units and plausible ranges).
    """
    values: dict[str, Any] = dict(source.calibration) if source is not None else {}
    if own_r_pixel is not None:
        values.update(r_pixel_size=own_r_pixel, r_pixel_unit="nm")
    given = {"r_pixel": r_pixel, "q_pixel": q_pixel, "beam_energy_kev": beam_energy_kev}
    for key, why in (source.calibration_problems if source is not None else {}).items():
        if given.get(key) is None:
            what = {"r_pixel": "the probe step (nm)",
                    "q_pixel": "the detector pixel in 1/nm or mrad (from a camera-length "
                               "calibration), or `q_pixel` 1 with `q_unit` px to leave it "
                               "uncalibrated",
                    "beam_energy_kev": "the beam energy in keV"}[key]
            raise InputError(f"{why}; the calibration in the file is wrong", path=source.path,
                             hint=f"give `{key}`: {what}")
    for prefix, size, unit, default in (("r", r_pixel, r_unit, "nm"),
                                        ("q", q_pixel, q_unit, "1/nm")):
        if size is not None:
            converted = standard_units(prefix, float(size), unit or default)
            why = check_pixel(prefix, *converted)
            if why:
                raise InputError(f"`{prefix}_pixel` {why}",
                                 hint="check the value and `{0}_unit`".format(prefix))
            values[f"{prefix}_pixel_size"], values[f"{prefix}_pixel_unit"] = converted
        elif unit is not None:
            # A unit alone would relabel the file's number (or the 1.0 of an
            # uncalibrated axis) without converting it.
            raise InputError(f"`{prefix}_unit` needs `{prefix}_pixel` with the size in that unit")
    if beam_energy_kev is not None:
        values["beam_energy_kev"] = float(beam_energy_kev)
    return PixelCalibration(**values)
