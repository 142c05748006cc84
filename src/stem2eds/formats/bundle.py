"""The scan bundle: one HDF5 file per scan, the format every stage reads.

Layout (documented in the docs' Formats page; tools outside the project rely on it)::

    /                         attrs: format = "stem2eds-bundle", format_version,
                                     kind = "raw" | "preprocessed",
                                     scan_name, elements (symbols, in order),
                                     r_pixel_size, r_pixel_unit,
                                     q_pixel_size, q_pixel_unit,
                                     beam_energy_kev (NaN when unknown),
                                     provenance (JSON), stem2eds_version
    /diffraction              (Rx, Ry, Qx, Qy), original dtype, chunked one
                              pattern per chunk
    /eds/<Element>            (Rx, Ry) float32 atomic fractions in [0, 1]
    /haadf                    (Rx, Ry) float32, optional
    /truth/<Element>          (Rx, Ry) float32, noise-free composition
                              (simulated scans only)
    /calibration/...          arrays found by preprocessing (origins, ...)

A preprocessed bundle (``kind = "preprocessed"``) has the same layout with
``diffraction`` float32 in [0, 1], blurred ``eds`` targets, the raw maps in
``eds_raw/<Element>`` and its settings in the ``preprocess`` attribute (JSON).

Writing goes through :func:`create_bundle`, which writes to a temporary file
and renames it on success, so a half-written bundle never exists under the
final name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import inspect
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

from ..errors import DAMAGED_FILE_ERRORS, InputError
from ..atomic import atomic_output, release_reservation, reserve_space
from ..elements import check_element

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
        for name in ("r_pixel_unit", "q_pixel_unit"):
            if name in attrs:
                kw[name] = _as_str(attrs[name])
        return cls(**kw)


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def describe_source(path: str | os.PathLike, checksum: bool = True) -> dict[str, Any]:
    """Provenance record of an input file: name, size in bytes and SHA-256.

    The checksum is read in 16 MiB blocks so large files do not fill memory.
    For a folder, every file in it is described.
    """
    p = Path(path)
    if p.is_dir():
        return {"path": str(p.resolve()), "files": [describe_source(f, checksum)
                                                    for f in sorted(p.iterdir()) if f.is_file()]}
    record: dict[str, Any] = {"path": str(p.resolve()), "size": p.stat().st_size}
    if checksum:
        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
        record["sha256"] = digest.hexdigest()
    return record


def _check_map(name: str, values: np.ndarray, scan_shape: tuple[int, int],
               fraction: bool) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    if arr.shape != tuple(scan_shape):
        raise InputError(f"map {name!r} has shape {arr.shape} but the scan is {tuple(scan_shape)}",
                         hint="crop or register the map onto the scan grid "
                              "(stem2eds preprocess --register)")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"map {name!r} contains NaN or infinite values",
                         hint="fill or mask the bad pixels before converting")
    if fraction and (arr.min() < 0 or arr.max() > 1):
        raise InputError(f"map {name!r} has values outside [0, 1] "
                         f"(min {arr.min():.4g}, max {arr.max():.4g}); "
                         "EDS maps must be atomic fractions")
    return arr


class BundleBuilder:
    """Fills a bundle being created by :func:`create_bundle`.

    Attributes
    ----------
    file : h5py.File
        The open (temporary) file.
    diffraction : h5py.Dataset
        The (Rx, Ry, Qx, Qy) dataset to fill, e.g. block by block with
        :meth:`write_patterns`.
    """

    def __init__(self, file: h5py.File, scan_shape: tuple[int, int]):
        self.file = file
        self.scan_shape = tuple(scan_shape)

    @property
    def diffraction(self) -> h5py.Dataset:
        return self.file[DIFFRACTION]

    def write_patterns(self, start: int, patterns: np.ndarray) -> None:
        """Write a block of patterns in scan (C) order.

        Parameters
        ----------
        start : int
            Flat index ``i * Ry + j`` of the first pattern.
        patterns : ndarray, shape (n, Qx, Qy)
        """
        ry = self.scan_shape[1]
        ds = self.diffraction
        n = len(patterns)
        flat = 0
        # Write whole scan rows where possible (one h5py call per row segment).
        while flat < n:
            i, j = divmod(start + flat, ry)
            take = min(ry - j, n - flat)
            ds[i, j:j + take] = patterns[flat:flat + take]
            flat += take

    def write_maps(self, group: str, maps: Mapping[str, np.ndarray],
                   fraction: bool = True, attrs: Mapping[str, Any] | None = None) -> None:
        """Write (Rx, Ry) maps as ``group/<name>`` float32, checked for shape and range."""
        grp = self.file.require_group(group)
        for name, values in maps.items():
            grp.create_dataset(name, data=_check_map(f"{group}/{name}", values,
                                                     self.scan_shape, fraction))
        for key, value in (attrs or {}).items():
            grp.attrs[key] = value

    def write_eds(self, maps: Mapping[str, np.ndarray]) -> None:
        """Write EDS maps (atomic fractions) in the order of the bundle's ``elements``."""
        elements = [_as_str(e) for e in self.file.attrs["elements"]]
        missing = [e for e in elements if e not in maps]
        if missing:
            raise InputError(f"no EDS map for element(s) {', '.join(missing)}")
        self.write_maps(EDS, {e: maps[e] for e in elements})

    def write_haadf(self, image: np.ndarray) -> None:
        """Write the (Rx, Ry) HAADF image (any non-negative scale) as float32."""
        self.file.create_dataset(HAADF, data=_check_map(HAADF, image, self.scan_shape, False))

    def write_array(self, name: str, data: np.ndarray, **attrs: Any) -> h5py.Dataset:
        """Write any extra array (e.g. ``calibration/origin``) with attributes."""
        ds = self.file.create_dataset(name, data=data)
        for key, value in attrs.items():
            ds.attrs[key] = value
        return ds

    def set_attrs(self, **attrs: Any) -> None:
        """Set root attributes; dicts and lists are stored as JSON strings."""
        for key, value in attrs.items():
            if isinstance(value, (dict, list, tuple)) and key != "elements":
                value = json.dumps(value)
            self.file.attrs[key] = value


@contextlib.contextmanager
def create_bundle(path: str | os.PathLike, *, scan_shape: Sequence[int],
                  detector_shape: Sequence[int], dtype: Any, elements: Sequence[str],
                  calibration: PixelCalibration | None = None, scan_name: str | None = None,
                  provenance: Mapping[str, Any] | None = None, kind: str = "raw",
                  compression: str | None = None) -> Iterator[BundleBuilder]:
    """Create a scan bundle, atomically.

    The file is written under a temporary name and renamed to ``path`` only
    when the ``with`` block finishes without error.

    Parameters
    ----------
    path : path-like
        Output ``.h5`` file.
    scan_shape : (Rx, Ry)
        Probe positions: scan rows, scan columns.
    detector_shape : (Qx, Qy)
        Detector rows, detector columns.
    dtype : numpy dtype
        Dtype of the diffraction data, kept as in the source.
    elements : sequence of str
        Element symbols, in the order of the EDS maps.
    calibration : PixelCalibration, optional
    scan_name : str, optional
        Defaults to the output file's stem.
    provenance : mapping, optional
        Stored as JSON; ``stem2eds_version`` and ``created`` are added.
    kind : {"raw", "preprocessed"}
    compression : str, optional
        HDF5 filter for ``diffraction`` (``None``: uncompressed, fastest).

    Yields
    ------
    BundleBuilder
    """
    from .. import __version__

    rx, ry = (int(v) for v in scan_shape)
    qx, qy = (int(v) for v in detector_shape)
    if min(rx, ry, qx, qy) < 1:
        raise InputError(f"empty scan: scan shape {rx}x{ry}, detector {qx}x{qy}")
    elements = [check_element(e) for e in elements]
    if len(set(elements)) != len(elements):
        raise InputError(f"element listed twice in {','.join(elements)}")
    calibration = calibration or PixelCalibration()
    prov = dict(provenance or {})
    prov.setdefault("stem2eds_version", __version__)
    prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    expected = _expected_bundle_bytes((rx, ry), (qx, qy), np.dtype(dtype), len(elements),
                                      compression)
    with atomic_output(path, expected_bytes=expected) as tmp:
        with h5py.File(tmp, "w") as f:
            # Before any pattern is written: a full disk fails here, cleanly
            # (HDF5 itself can crash on a write that fails mid-file).
            reserve_space(tmp, expected, what=Path(path).name)
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["kind"] = kind
            f.attrs["scan_name"] = scan_name or Path(path).stem
            f.attrs["elements"] = np.array(elements, dtype=h5py.string_dtype())
            f.attrs["stem2eds_version"] = __version__
            f.attrs["provenance"] = json.dumps(prov)
            for key, value in calibration.to_attrs().items():
                f.attrs[key] = value
            f.create_dataset(DIFFRACTION, shape=(rx, ry, qx, qy), dtype=np.dtype(dtype),
                             chunks=(1, 1, qx, qy), compression=compression)
            f[DIFFRACTION].attrs["axes"] = "Rx,Ry,Qx,Qy"
            yield BundleBuilder(f, (rx, ry))
        release_reservation(tmp)


def _expected_bundle_bytes(scan_shape: tuple[int, int], detector_shape: tuple[int, int],
                           dtype: np.dtype, n_elements: int, compression: str | None) -> int:
    """Upper estimate of a bundle's size on disk, bytes.

    Patterns (uncompressed size; a compressed bundle is smaller, so the
    estimate only reserves more than needed), plus float32 maps for ``eds``,
    ``eds_raw``, ``truth`` and a dozen other per-position arrays (HAADF,
    origins, simulation records), plus HDF5's chunk index (about 100 bytes a
    chunk) and 256 KiB for headers and attributes (provenance JSON included).
    """
    rx, ry = scan_shape
    positions = rx * ry
    patterns = positions * detector_shape[0] * detector_shape[1] * dtype.itemsize
    if compression:
        patterns //= 2
    maps = positions * 4 * (3 * n_elements + 12)
    return int(patterns + maps + positions * 100 + 2**18)


def _damage_is_input_error(method):
    """Turn h5py's errors on a damaged bundle into an InputError naming the file.

    A damaged or truncated HDF5 file often opens; the damage shows when an
    object, attribute or chunk is read, as KeyError, RuntimeError, OSError
    or ValueError depending on the HDF5 call. Every reading method of
    :class:`ScanBundle` goes through this, so no caller has to.
    """
    def _refuse(self, exc):
        text = " ".join(str(exc).split())[:160]
        return InputError(f"damaged bundle ({type(exc).__name__}: {text})", path=self.path,
                          hint="the file is damaged or truncated; copy it again or "
                               "re-create it")

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def generator(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except InputError:
                raise
            except DAMAGED_FILE_ERRORS as exc:
                raise _refuse(self, exc) from None
        return generator

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except InputError:
            raise
        except DAMAGED_FILE_ERRORS as exc:
            raise _refuse(self, exc) from None
    return wrapper


@dataclass
class ScanBundle:
    """An open scan bundle (read-only). Use :func:`open_bundle`.

    Attributes
    ----------
    path : Path
    file : h5py.File
    """

    path: Path
    file: h5py.File = field(repr=False)

    # -- metadata -----------------------------------------------------------
    @property
    @_damage_is_input_error
    def diffraction(self) -> h5py.Dataset:
        """The (Rx, Ry, Qx, Qy) patterns, read lazily from disk."""
        return self.file[DIFFRACTION]

    @property
    @_damage_is_input_error
    def scan_shape(self) -> tuple[int, int]:
        return tuple(self.diffraction.shape[:2])  # type: ignore[return-value]

    @property
    @_damage_is_input_error
    def detector_shape(self) -> tuple[int, int]:
        return tuple(self.diffraction.shape[2:])  # type: ignore[return-value]

    @property
    @_damage_is_input_error
    def n_patterns(self) -> int:
        rx, ry = self.scan_shape
        return rx * ry

    @property
    @_damage_is_input_error
    def elements(self) -> list[str]:
        return [_as_str(e) for e in self.file.attrs["elements"]]

    @property
    @_damage_is_input_error
    def name(self) -> str:
        return _as_str(self.file.attrs.get("scan_name", self.path.stem))

    @property
    @_damage_is_input_error
    def kind(self) -> str:
        return _as_str(self.file.attrs.get("kind", "raw"))

    @property
    @_damage_is_input_error
    def calibration(self) -> PixelCalibration:
        return PixelCalibration.from_attrs(self.file.attrs)

    @_damage_is_input_error
    def json_attr(self, key: str, default: Any = None) -> Any:
        """A root attribute stored as JSON (e.g. ``provenance``, ``preprocess``)."""
        if key not in self.file.attrs:
            return default
        return json.loads(_as_str(self.file.attrs[key]))

    @property
    @_damage_is_input_error
    def provenance(self) -> dict[str, Any]:
        return self.json_attr("provenance", {})

    # -- maps ---------------------------------------------------------------
    @_damage_is_input_error
    def has(self, name: str) -> bool:
        return name in self.file

    @_damage_is_input_error
    def maps(self, group: str = EDS, elements: Sequence[str] | None = None) -> np.ndarray:
        """Element maps stacked as (E, Rx, Ry) float32, in bundle (or given) order."""
        elements = list(elements or self.elements)
        if group not in self.file:
            raise InputError(f"bundle has no {group!r} maps", path=self.path)
        missing = [e for e in elements if e not in self.file[group]]
        if missing:
            raise InputError(f"bundle has no {group}/{','.join(missing)}", path=self.path)
        return np.stack([self.file[group][e][()] for e in elements]).astype(np.float32)

    @_damage_is_input_error
    def eds(self, elements: Sequence[str] | None = None) -> np.ndarray:
        """EDS maps (E, Rx, Ry) in atomic fractions."""
        return self.maps(EDS, elements)

    @property
    @_damage_is_input_error
    def haadf(self) -> np.ndarray | None:
        """(Rx, Ry) float32 HAADF, or None."""
        return self.file[HAADF][()].astype(np.float32) if HAADF in self.file else None

    @_damage_is_input_error
    def iter_patterns(self, batch: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        """Stream patterns in scan (C) order, through :func:`stem2eds.io.stream.iter_blocks`.

        Yields
        ------
        start : int
            Flat index of the first pattern of the block.
        patterns : ndarray, shape (n, Qx, Qy)
            At most ``batch`` patterns: whole scan rows when ``batch`` allows
            (which matches the one-pattern chunks on disk), else pieces of
            one row.
        """
        from ..io.stream import iter_blocks

        yield from iter_blocks(self.diffraction, batch=batch)

    # -- lifetime -----------------------------------------------------------
    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "ScanBundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_bundle(path: str | os.PathLike, require: Sequence[str] = (DIFFRACTION,)) -> ScanBundle:
    """Open a scan bundle for reading, checking that it is one.

    Parameters
    ----------
    path : path-like
    require : sequence of str
        Datasets or groups that must be present (default: ``diffraction``);
        e.g. ``("diffraction", "eds")`` for training.

    Raises
    ------
    InputError
        If the file is missing, not HDF5, not a stem2eds bundle, from a newer
        format version, or lacks a required dataset.
    """
    p = Path(path)
    if p.is_dir():
        empty = not any(p.iterdir())
        raise InputError("is an empty folder, not a scan bundle" if empty
                         else "is a folder, not a scan bundle", path=p,
                         hint="give the bundle files themselves, e.g. "
                              f"{p / '*.h5'}")
    if not p.is_file():
        raise InputError("no such file", path=p)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"not a readable HDF5 file ({exc})".replace("\n", " "), path=p,
                         hint="make a bundle with 'stem2eds convert'") from None
    try:
        if _as_str(f.attrs.get("format", "")) != FORMAT:
            raise InputError("not a stem2eds scan bundle", path=p,
                             hint="make one with 'stem2eds convert'")
        version = int(f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise InputError(f"bundle format version {version} is newer than this "
                             f"stem2eds understands ({FORMAT_VERSION})", path=p,
                             hint="upgrade stem2eds")
        for name in require:
            if name not in f:
                raise InputError(f"bundle has no {name!r}", path=p)
        if DIFFRACTION in f and f[DIFFRACTION].ndim != 4:
            raise InputError(f"'diffraction' has {f[DIFFRACTION].ndim} dimensions, "
                             "expected 4 (Rx, Ry, Qx, Qy)", path=p)
        scan = ScanBundle(p, f)
        # Read the metadata every stage needs now, so damage there fails here.
        _ = scan.elements, scan.calibration, scan.name, scan.kind
    except InputError:
        f.close()
        raise
    except DAMAGED_FILE_ERRORS as exc:
        f.close()
        text = " ".join(str(exc).split())[:160]
        raise InputError(f"damaged bundle ({type(exc).__name__}: {text})", path=p,
                         hint="the file is damaged or truncated; copy it again or "
                              "re-create it") from None
    except BaseException:
        f.close()
        raise
    return scan
