"""Writing scan bundles: :func:`create_bundle` and the :class:`BundleBuilder` it yields."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

from ...atomic import atomic_output, release_reservation, reserve_space
from ...elements import check_element
from ...errors import InputError
from ..names import safe_file_name
from .layout import DIFFRACTION, EDS, FORMAT, FORMAT_VERSION, HAADF, PixelCalibration, _as_str


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
                              "(stem2eds preprocess with `register`)")
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
                  detector_shape: Sequence[int] | None, dtype: Any, elements: Sequence[str],
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
    detector_shape : (Qx, Qy) or None
        Detector rows, detector columns; None for a bundle of maps only
        (EDS/HAADF without diffraction, e.g. for sparse EDS or
        registration), which stores no ``diffraction`` and keeps the scan
        shape in the ``scan_shape`` attribute.
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
    from ... import __version__

    rx, ry = (int(v) for v in scan_shape)
    qx, qy = (1, 1) if detector_shape is None else (int(v) for v in detector_shape)
    if min(rx, ry, qx, qy) < 1:
        raise InputError(f"empty scan: scan shape {rx}x{ry}, detector {qx}x{qy}")
    elements = [check_element(e) for e in elements]
    if len(set(elements)) != len(elements):
        raise InputError(f"element listed twice in {','.join(elements)}")
    # The scan name names output files later (predictions/<scan>.h5): a name
    # from a vendor file's metadata is made safe here, and checked on read.
    name = safe_file_name(scan_name or Path(path).stem)
    calibration = calibration or PixelCalibration()
    prov = dict(provenance or {})
    prov.setdefault("stem2eds_version", __version__)
    prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    pattern_dtype = np.dtype(np.uint8 if dtype is None else dtype)
    expected = _expected_bundle_bytes((rx, ry), (qx, qy), pattern_dtype, len(elements),
                                      compression)
    with atomic_output(path, expected_bytes=expected) as tmp:
        with h5py.File(tmp, "w") as f:
            # Before any pattern is written: a full disk fails here, cleanly
            # (HDF5 itself can crash on a write that fails mid-file).
            reserve_space(tmp, expected, what=Path(path).name)
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["kind"] = kind
            f.attrs["scan_name"] = name
            f.attrs["elements"] = np.array(elements, dtype=h5py.string_dtype())
            f.attrs["stem2eds_version"] = __version__
            f.attrs["provenance"] = json.dumps(prov)
            for key, value in calibration.to_attrs().items():
                f.attrs[key] = value
            if detector_shape is None:
                f.attrs["scan_shape"] = (rx, ry)
            else:
                # Uncompressed: one contiguous block, so every reader (numpy,
                # LiberTEM's memory maps) finds pattern k at base + k * size;
                # a chunk index would interleave its nodes every ~60 chunks.
                f.create_dataset(DIFFRACTION, shape=(rx, ry, qx, qy), dtype=np.dtype(dtype),
                                 chunks=(1, 1, qx, qy) if compression else None,
                                 compression=compression)
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
