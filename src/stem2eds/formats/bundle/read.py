"""Reading scan bundles: :func:`open_bundle` and the :class:`ScanBundle` it returns."""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from ...errors import DAMAGED_FILE_ERRORS, InputError
from ...elements import check_element
from ..names import check_file_name
from .layout import DIFFRACTION, EDS, FORMAT, FORMAT_VERSION, HAADF, PixelCalibration, _as_str

#: Most probe positions a bundle may declare (a 10000 x 10000 scan).
MAX_POSITIONS = 10**8


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
        if DIFFRACTION not in self.file:  # a bundle of maps only
            return tuple(int(v) for v in self.file.attrs["scan_shape"])  # type: ignore
        return tuple(self.diffraction.shape[:2])  # type: ignore[return-value]

    @property
    @_damage_is_input_error
    def detector_shape(self) -> tuple[int, int] | None:
        """(Qx, Qy), or None for a bundle of maps only (no ``diffraction``)."""
        if DIFFRACTION not in self.file:
            return None
        return tuple(self.diffraction.shape[2:])  # type: ignore[return-value]

    @property
    @_damage_is_input_error
    def n_patterns(self) -> int:
        rx, ry = self.scan_shape
        return rx * ry

    @property
    @_damage_is_input_error
    def elements(self) -> list[str]:
        raw = self.file.attrs["elements"]
        if isinstance(raw, (str, bytes)) or np.ndim(raw) != 1:
            raise InputError("attribute 'elements' is not a list of element symbols",
                             path=self.path)
        symbols = []
        for e in raw:
            symbol = check_element(_as_str(e), source=self.path)
            if symbol != _as_str(e).strip() or symbol in symbols:
                raise InputError(f"attribute 'elements' holds {_as_str(e)[:20]!r} "
                                 "(not a symbol as written by convert, or listed twice)",
                                 path=self.path)
            symbols.append(symbol)
        return symbols

    @property
    @_damage_is_input_error
    def name(self) -> str:
        """The scan name (a safe file name: it names the scan's output files)."""
        if "scan_name" not in self.file.attrs:
            from ..names import safe_file_name
            return safe_file_name(self.path.stem)
        return check_file_name(_as_str(self.file.attrs["scan_name"]), "attribute 'scan_name'",
                               self.path)

    @property
    @_damage_is_input_error
    def kind(self) -> str:
        kind = _as_str(self.file.attrs.get("kind", "raw"))
        if kind not in ("raw", "preprocessed"):
            raise ValueError(f"kind {kind[:20]!r} is neither raw nor preprocessed")
        return kind

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
        self._check_map_datasets([self.file[group][e] for e in elements], len(elements))
        return np.stack([self.file[group][e][()] for e in elements]).astype(np.float32)

    @_damage_is_input_error
    def eds(self, elements: Sequence[str] | None = None) -> np.ndarray:
        """EDS maps (E, Rx, Ry) in atomic fractions."""
        return self.maps(EDS, elements)

    @property
    @_damage_is_input_error
    def haadf(self) -> np.ndarray | None:
        """(Rx, Ry) float32 HAADF, or None."""
        if HAADF not in self.file:
            return None
        self._check_map_datasets([self.file[HAADF]], 1)
        return self.file[HAADF][()].astype(np.float32)

    def _check_map_datasets(self, datasets: Sequence[Any], count: int) -> None:
        """Maps read whole: self-contained, numeric, 2D, on the scan grid, and fitting in memory."""
        from ...io.hdf5 import check_memory, check_self_contained

        scan = tuple(self.scan_shape)
        for ds in datasets:
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.dtype.kind not in "iuf":
                raise InputError(f"{ds.name!r} is not a 2D numeric map", path=self.path)
            if tuple(ds.shape) != scan:
                # e.g. patterns written with their scan axes swapped: cropping or
                # training would otherwise fail later, naming a crop nobody set
                raise InputError(f"the {ds.name.lstrip('/')!r} map is {ds.shape[0]}x{ds.shape[1]} "
                                 f"but the scan is {scan[0]}x{scan[1]} positions",
                                 path=self.path, hint="maps must lie on the scan grid "
                                 "(Rx, Ry); convert the scan again")
            check_self_contained(ds, self.path)
        if datasets:
            check_memory((count + 1, *datasets[0].shape), np.float32, self.path,
                         f"{datasets[0].name!r}")

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
        from ...io.stream import iter_blocks

        yield from iter_blocks(self.diffraction, batch=batch)

    # -- lifetime -----------------------------------------------------------
    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "ScanBundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_diffraction(ds, path: Path) -> None:
    """The one check of a bundle's ``diffraction``: 4D, numeric, sane, self-contained."""
    from ...io.hdf5 import check_memory, check_self_contained

    if not isinstance(ds, h5py.Dataset):
        raise InputError("'diffraction' is not a dataset", path=path)
    if ds.ndim != 4:
        raise InputError(f"'diffraction' has {ds.ndim} dimensions, "
                         "expected 4 (Rx, Ry, Qx, Qy)", path=path)
    if ds.dtype.kind not in "iuf":
        raise InputError(f"'diffraction' holds {ds.dtype} values, not numbers", path=path,
                         hint="convert the patterns again from the microscope file")
    rx, ry, qx, qy = (int(v) for v in ds.shape)
    if 0 in ds.shape:
        raise InputError(f"'diffraction' has an empty axis (shape {tuple(ds.shape)})", path=path,
                         hint="convert the patterns again from the microscope file")
    if rx * ry > MAX_POSITIONS:
        raise InputError(f"'diffraction' declares {rx}x{ry} probe positions (more than "
                         f"{MAX_POSITIONS:.0e})", path=path,
                         hint="the file is damaged or not what it claims")
    # Readers hold blocks of up to 256 patterns (one in work, two read ahead):
    # a small file declaring a huge detector is refused here, not killed later
    block = min(256, max(rx * ry, 1))
    check_memory((3 * block, qx, qy), np.float32, path, f"'diffraction' (blocks of {block})")
    check_self_contained(ds, path)
    if ds.chunks is not None and not ds.is_virtual:
        expected = math.prod(-(-int(s) // int(c)) for s, c in zip(ds.shape, ds.chunks))
        written = ds.id.get_num_chunks()
        if written < expected:  # HDF5 reads the missing ones as zeros, silently
            raise InputError(f"{expected - written} of {expected} chunks of 'diffraction' were "
                             "never written", path=path,
                             hint="the file is incomplete; convert the patterns again")


def bundle_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a bundle's data cheaply: name, size, mtime, provenance hash.

    Recorded with every product made from the bundle (training runs,
    preprocessed caches); a product whose recorded fingerprint differs was
    made from other data and is not reused.
    """
    import hashlib

    p = Path(path)
    st = p.stat()
    with open_bundle(p) as scan:
        prov = scan.file.attrs.get("provenance", "")
        prov = prov.encode() if isinstance(prov, str) else bytes(np.asarray(prov).tobytes())
    return {"name": p.name, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns),
            "provenance_sha256": hashlib.sha256(prov).hexdigest()}


def fingerprint(bundles: Sequence[str | os.PathLike], settings: Any) -> str:
    """SHA-256 of the bundles' :func:`bundle_fingerprint` and the full ``settings``.

    Parameters
    ----------
    bundles : sequence of path-like
        The inputs of a product.
    settings : JSON-able
        Every setting that decides the product.
    """
    import hashlib

    doc = {"inputs": [bundle_fingerprint(b) for b in bundles], "settings": settings}
    text = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


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
        version = f.attrs.get("format_version", 0)
        if not (isinstance(version, (int, np.integer)) and 0 <= version):
            raise InputError(f"bundle format_version {str(version)[:20]!r} is not a version "
                             "number", path=p, hint="the file is damaged or not a bundle")
        if version > FORMAT_VERSION:
            raise InputError(f"bundle format version {version} is newer than this "
                             f"stem2eds understands ({FORMAT_VERSION})", path=p,
                             hint="upgrade stem2eds")
        for name in require:
            if name not in f:
                raise InputError(f"bundle has no {name!r}", path=p)
        if DIFFRACTION in f:
            if isinstance(f.get(DIFFRACTION, getlink=True), h5py.ExternalLink):
                # another file's data under this bundle's name: refused like
                # external storage and outside virtual sources (io.hdf5)
                raise InputError("'diffraction' is a link to another file, which is refused",
                                 path=p, hint="convert the patterns into a bundle of their own")
            _check_diffraction(f[DIFFRACTION], p)
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
