"""Property-based tests: readers given random or corrupted bytes and random shapes.

The only outcomes allowed are a correct read or an InputError (a one-line
message for the user); any other exception would reach the user as an
internal error. Valid files of random shapes must read back exactly.
Examples are few and derandomized so CI is deterministic and fast.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from stem2eds.formats.bundle import PixelCalibration, create_bundle, open_bundle
from stem2eds.errors import InputError
from stem2eds.io import open_diffraction, read_image, read_map_folder

FUZZ = settings(max_examples=25, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

DIFFRACTION_EXTENSIONS = (".mrc", ".npy", ".h5", ".emd", ".py4dstem", ".hspy", ".dm4", ".blo")
IMAGE_EXTENSIONS = (".tif", ".png", ".npy", ".csv")


# -- valid files of each format ------------------------------------------------------

def _valid_diffraction(ext: str, stack: np.ndarray) -> bytes:
    """Bytes of a valid file holding ``stack`` (n, Qx, Qy) in format ``ext``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"scan{ext}"
        if ext == ".mrc":
            with mrcfile.new(path) as mrc:
                mrc.set_data(stack)
        elif ext == ".npy":
            np.save(path, stack)
        else:
            with h5py.File(path, "w") as f:
                f.create_dataset("data", data=stack, chunks=(1, *stack.shape[1:]))
        return path.read_bytes()


def _valid_image(ext: str, image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if ext == ".tif":
        tifffile.imwrite(buf, image.astype(np.float32))
    elif ext == ".png":
        Image.fromarray(image.astype(np.uint16)).save(buf, format="PNG")
    elif ext == ".npy":
        np.save(buf, image)
    else:
        buf.write("\n".join(",".join(repr(float(v)) for v in row) for row in image).encode())
    return buf.getvalue()


def _corrupt(data: bytes, how: str, where: float, noise: bytes) -> bytes:
    """Truncate, overwrite a span with noise, or flip bytes at a relative position."""
    at = int(where * len(data))
    if how == "truncate":
        return data[:at]
    if how == "overwrite":
        return data[:at] + noise + data[at + len(noise):]
    flipped = bytearray(data)
    for k, b in enumerate(noise):
        flipped[(at + 97 * k) % len(flipped)] ^= b | 1
    return bytes(flipped)


def _write(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``name`` in a fresh subfolder (HDF5 keeps files it has
    seen open by inode, so one example must never reuse another's file)."""
    path = Path(tempfile.mkdtemp(dir=folder)) / name
    path.write_bytes(data)
    return path


def _read_all_diffraction(path: Path, scan_shape) -> np.ndarray:
    """Open and read every pattern: the damage may only show when a block is read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. mrcfile's permissive-mode warnings
        with open_diffraction(path, scan_shape=scan_shape) as src:
            return np.concatenate([block for _, block in src.iter_rows(1)])


corruptions = st.tuples(st.sampled_from(["truncate", "overwrite", "flip"]),
                        st.floats(0.0, 1.0), st.binary(min_size=1, max_size=64))


# -- diffraction readers ------------------------------------------------------------

@FUZZ
@given(ext=st.sampled_from(DIFFRACTION_EXTENSIONS), data=st.binary(max_size=2048))
def test_diffraction_random_bytes(tmp_path, ext, data):
    path = _write(tmp_path, f"random{ext}", data)
    try:
        _read_all_diffraction(path, (2, 2))
    except InputError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(ext=st.sampled_from((".mrc", ".npy", ".h5")),
       rx=st.integers(1, 4), ry=st.integers(1, 4), q=st.integers(2, 9),
       dtype=st.sampled_from([np.uint8, np.uint16, np.int16, np.float32]),
       seed=st.integers(0, 2**16))
def test_diffraction_random_shapes_read_back_exactly(tmp_path, ext, rx, ry, q, dtype, seed):
    if ext == ".h5":
        q += 14  # an HDF5 dataset is found as patterns only with >= 16 px a side
    stack = np.random.default_rng(seed).integers(0, 200, (rx * ry, q, q + 1)).astype(dtype)
    path = _write(tmp_path, f"scan{ext}", _valid_diffraction(ext, stack))
    patterns = _read_all_diffraction(path, (rx, ry))
    assert patterns.shape == (rx, ry, q, q + 1)
    np.testing.assert_array_equal(patterns.reshape(stack.shape), stack)
    # The wrong scan shape is an InputError, never a silent reshape.
    with pytest.raises(InputError, match="scan-shape|frames"):
        _read_all_diffraction(path, (rx + 1, ry))


@FUZZ
@given(ext=st.sampled_from((".mrc", ".npy", ".h5")), corruption=corruptions)
def test_diffraction_corrupted_file(tmp_path, ext, corruption):
    stack = np.arange(6 * 16 * 16, dtype=np.uint16).reshape(6, 16, 16)  # >= 16 px a side
    good = _valid_diffraction(ext, stack)
    path = _write(tmp_path, f"scan{ext}", _corrupt(good, *corruption))
    try:
        patterns = _read_all_diffraction(path, (3, 2))
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        # A read that succeeds has the right shape; flipped data bytes may
        # change values (nothing in these formats can detect that).
        assert patterns.shape == (3, 2, 16, 16)


# -- map readers ----------------------------------------------------------------------

@FUZZ
@given(ext=st.sampled_from(IMAGE_EXTENSIONS), data=st.binary(max_size=1024))
def test_image_random_bytes(tmp_path, ext, data):
    path = _write(tmp_path, f"Ge{ext}", data)
    try:
        image = read_image(path)
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert image.ndim == 2 and np.all(np.isfinite(image))


@FUZZ
@given(ext=st.sampled_from(IMAGE_EXTENSIONS), corruption=corruptions,
       rows=st.integers(1, 6), cols=st.integers(1, 6))
def test_image_corrupted(tmp_path, ext, corruption, rows, cols):
    image = np.arange(rows * cols, dtype=float).reshape(rows, cols) * 7 % 100
    path = _write(tmp_path, f"Ge{ext}", _corrupt(_valid_image(ext, image), *corruption))
    try:
        got = read_image(path)
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert got.ndim == 2 and np.all(np.isfinite(got))


@FUZZ
@given(ext=st.sampled_from(IMAGE_EXTENSIONS), rows=st.integers(1, 7), cols=st.integers(1, 7),
       seed=st.integers(0, 2**16))
def test_image_random_shapes_read_back(tmp_path, ext, rows, cols, seed):
    image = np.random.default_rng(seed).integers(0, 100, (rows, cols)).astype(float)
    path = _write(tmp_path, f"Ge{ext}", _valid_image(ext, image))
    np.testing.assert_array_equal(read_image(path), image)


@FUZZ
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
       values=st.sampled_from([0.3, 55.0, 1.3, -1.0, np.nan, np.inf, 250.0]))
def test_map_folder_random_shapes_and_values(tmp_path, shape, values):
    """Arrays of any rank, size and value range: fractions in [0, 1] or InputError."""
    folder = tmp_path / "maps"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    np.save(folder / "Ge.npy", np.full(shape, values))
    np.save(folder / "Te.npy", np.full(shape, 0.2 if values != 55.0 else 30.0))
    try:
        maps = read_map_folder(folder)
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        for arr in maps.fractions.values():
            assert arr.ndim == 2 and arr.min() >= 0 and arr.max() <= 1


# -- bundles ------------------------------------------------------------------------------

def _valid_bundle(tmp: Path) -> bytes:
    path = tmp / "valid.h5"
    with create_bundle(path, scan_shape=(3, 2), detector_shape=(8, 8), dtype=np.uint16,
                       elements=("Ge", "Te"), calibration=PixelCalibration(1, 0.1, "nm", "1/nm")) as b:
        b.write_patterns(0, np.arange(6 * 64, dtype=np.uint16).reshape(6, 8, 8))
        b.write_eds({"Ge": np.full((3, 2), 0.4), "Te": np.full((3, 2), 0.6)})
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.fixture(scope="module")
def valid_bundle_bytes(tmp_path_factory) -> bytes:
    return _valid_bundle(tmp_path_factory.mktemp("bundle"))


def _read_bundle(path: Path) -> None:
    with open_bundle(path, require=("diffraction", "eds")) as scan:
        _ = scan.elements, scan.calibration, scan.provenance, scan.name
        eds = scan.eds()
        assert eds.shape == (len(scan.elements), *scan.scan_shape)
        for _, patterns in scan.iter_patterns(batch=4):
            assert patterns.shape[1:] == scan.detector_shape


@FUZZ
@given(corruption=corruptions)
def test_bundle_corrupted(tmp_path, valid_bundle_bytes, corruption):
    path = _write(tmp_path, "scan.h5", _corrupt(valid_bundle_bytes, *corruption))
    try:
        _read_bundle(path)
    except InputError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_bundle_random_bytes(tmp_path, data):
    path = _write(tmp_path, "scan.h5", data)
    with pytest.raises(InputError):
        _read_bundle(path)
