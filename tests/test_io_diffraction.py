"""Round trips of every diffraction reader: write with the format's own library, read back."""

from __future__ import annotations

import warnings

import h5py
import mrcfile
import numpy as np
import pytest

from stem2eds.errors import InputError
from stem2eds.io import find_4d_datasets, open_diffraction
from stem2eds.io.diffraction import standard_units

RX, RY, QX, QY = 5, 4, 16, 17  # detectors have at least 16 px a side (MIN_DETECTOR_PIXELS)


@pytest.fixture
def scan(rng) -> np.ndarray:
    """(Rx, Ry, Qx, Qy) uint16 patterns with distinct values everywhere."""
    return rng.integers(0, 60000, size=(RX, RY, QX, QY), dtype=np.uint16)


def _read_all(source) -> np.ndarray:
    """Read a source back in two-row blocks (exercising the block path)."""
    blocks = [block for _, block in source.iter_rows(2)]
    return np.concatenate(blocks)


def test_mrc_3d_stack_is_c_order(tmp_path, scan):
    path = tmp_path / "scan.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(scan.reshape(RX * RY, QX, QY))
    with open_diffraction(path, scan_shape=(RX, RY)) as src:
        assert src.shape == (RX, RY, QX, QY) and src.dtype == np.uint16
        got = _read_all(src)
    # pattern k of the stack is scan position (k // Ry, k % Ry)
    frames = scan.reshape(RX * RY, QX, QY)
    for k in (0, 1, RY, RX * RY - 1):
        np.testing.assert_array_equal(got[k // RY, k % RY], frames[k])
    np.testing.assert_array_equal(got, scan)


def test_mrc_4d_volume_stack(tmp_path, scan):
    path = tmp_path / "scan4d.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(scan)
    with open_diffraction(path) as src:
        assert src.scan_shape == (RX, RY)
        np.testing.assert_array_equal(_read_all(src), scan)


def test_mrc_stack_without_scan_shape_says_what_to_pass(tmp_path, scan):
    path = tmp_path / "scan.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(scan.reshape(RX * RY, QX, QY))
    with pytest.raises(InputError, match="`scan_shape`"):
        open_diffraction(path)
    with pytest.raises(InputError, match=rf"has {RX * RY} frames but `scan_shape` 3x3 needs 9"):
        open_diffraction(path, scan_shape=(3, 3))


def test_cli_names_the_flags_where_the_library_names_settings(tmp_path, scan, run_cli):
    """Library errors say `scan_shape`, `dataset`; ``stem2eds convert`` says the flags."""
    path = tmp_path / "scan.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(scan.reshape(RX * RY, QX, QY))
    code, _, err = run_cli("convert", "--diffraction", path, "--out", tmp_path / "a.h5")
    assert code == 2 and "--scan-shape" in err and "`" not in err
    code, _, err = run_cli("convert", "--diffraction", path, "--scan-shape", "3x3",
                           "--out", tmp_path / "a.h5")
    assert code == 2 and f"has {RX * RY} frames but --scan-shape 3x3 needs 9" in err
    code, _, err = run_cli("convert", "--diffraction", path, "--dataset", "/x",
                           "--scan-shape", f"{RX}x{RY}", "--out", tmp_path / "a.h5")
    assert code == 2 and "--dataset applies to HDF5 files" in err and "drop --dataset" in err


def test_source_reads_any_ascending_positions(tmp_path, scan):
    from stem2eds.io.stream import iter_blocks

    path = tmp_path / "scan.npy"
    np.save(path, scan)
    flat = scan.reshape(-1, QX, QY)
    with open_diffraction(path) as src:
        for index in ([0, 1, 2, 3], [1, 2, 6, 19], [7], [], range(4, 12)):
            np.testing.assert_array_equal(src.read(np.asarray(index, dtype=int)),
                                          flat[list(index)])
        picked = np.array([0, 3, 5, 6, 11, 18])
        blocks = list(iter_blocks(src, flat=picked, batch=4, read_ahead=1))
        assert [s for s, _ in blocks] == [0, 4]
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), flat[picked])
        region = list(iter_blocks(src, (1, 4, 1, 3), batch=3))
        np.testing.assert_array_equal(np.concatenate([b for _, b in region]),
                                      scan[1:4, 1:3].reshape(-1, QX, QY))
        assert [s for s, _ in region] == [0, 2, 4]


@pytest.mark.parametrize("layout", ["4d", "3d"])
def test_npy_memory_mapped(tmp_path, scan, layout):
    path = tmp_path / "scan.npy"
    np.save(path, scan if layout == "4d" else scan.reshape(-1, QX, QY))
    with open_diffraction(path, scan_shape=None if layout == "4d" else (RX, RY)) as src:
        assert isinstance(src._array, np.memmap)  # noqa: SLF001 - lazy, not loaded
        np.testing.assert_array_equal(_read_all(src), scan)


def test_hdf5_plain_auto_found_and_named(tmp_path, scan):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["meta/angle"] = np.zeros(3)
        f.create_dataset("some/where/patterns", data=scan, chunks=(1, 1, QX, QY))
    with open_diffraction(path) as src:
        assert src.reader == "h5py (/some/where/patterns)"
        np.testing.assert_array_equal(_read_all(src), scan)
    with open_diffraction(path, dataset="/some/where/patterns") as src:
        np.testing.assert_array_equal(src.read_rows(1, 3), scan[1:3])


def test_hdf5_several_4d_datasets_are_listed(tmp_path, scan):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a"] = scan
        f["b/c"] = scan
    with h5py.File(path, "r") as f:
        assert find_4d_datasets(f) == ["/a", "/b/c"]
    with pytest.raises(InputError, match=r"2 4D datasets: /a, /b/c.*`dataset`"):
        open_diffraction(path)
    with open_diffraction(path, dataset="b/c") as src:
        np.testing.assert_array_equal(_read_all(src), scan)
    with pytest.raises(InputError, match="no dataset 'nope'"):
        open_diffraction(path, dataset="nope")


def test_hdf5_3d_stack_with_dataset_and_scan_shape(tmp_path, scan):
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = scan.reshape(-1, QX, QY)
    with open_diffraction(path, dataset="frames", scan_shape=(RX, RY)) as src:
        np.testing.assert_array_equal(_read_all(src), scan)
    with open_diffraction(path, scan_shape=(RX, RY)) as src:  # the only stack: found
        np.testing.assert_array_equal(_read_all(src), scan)
    with pytest.raises(InputError, match=r"no 4D dataset \(3D: /frames\).*`scan_shape`"):
        open_diffraction(path)


def test_py4dstem_emd1_layout_with_calibration(tmp_path, scan):
    """py4DSTEM (emdfile, EMD 1.0) layout: datacube/data + dim0..dim3 + calibration metadata."""
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.attrs["emd_group_type"] = "file"
        f.attrs["version_major"] = 1
        root = f.create_group("experiment")
        root.attrs["emd_group_type"] = "root"
        cube = root.create_group("datacube")
        cube.attrs["emd_group_type"] = "array"
        cube.create_dataset("data", data=scan)
        for i, (n, unit) in enumerate(zip(scan.shape, ["pixels"] * 4)):
            d = cube.create_dataset(f"dim{i}", data=np.arange(n, dtype=float))
            d.attrs["name"] = f"dim{i}"
            d.attrs["units"] = unit
        cal = cube.create_group("metadatabundle/calibration")
        cal.attrs["emd_group_type"] = "metadata"
        cal.create_dataset("R_pixel_size", data=1.053)
        cal.create_dataset("R_pixel_units", data="nm")
        cal.create_dataset("Q_pixel_size", data=0.01451)
        cal.create_dataset("Q_pixel_units", data="A^-1")  # py4DSTEM's 1/angstrom
    with open_diffraction(path) as src:
        np.testing.assert_array_equal(_read_all(src), scan)
        assert src.calibration["r_pixel_size"] == pytest.approx(1.053)
        assert src.calibration["r_pixel_unit"] == "nm"
        assert src.calibration["q_pixel_size"] == pytest.approx(0.1451)
        assert src.calibration["q_pixel_unit"] == "1/nm"


def test_emd_dim_vectors_give_calibration(tmp_path, scan):
    """EMD-style dim vectors with units beside the data give the pixel sizes."""
    path = tmp_path / "dims.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("data/scan")
        g["data"] = scan
        for i, (n, step, unit) in enumerate(zip(scan.shape, (2.0, 2.0, 0.25, 0.25),
                                                ("nm", "nm", "1/nm", "1/nm")), start=1):
            g[f"dim{i}"] = np.arange(n) * step
            g[f"dim{i}"].attrs["units"] = unit
        g.attrs["beam_energy"] = 300.0
    with open_diffraction(path) as src:
        assert src.calibration == {"r_pixel_size": 2.0, "r_pixel_unit": "nm",
                                   "q_pixel_size": 0.25, "q_pixel_unit": "1/nm",
                                   "beam_energy_kev": 300.0}


def _hyperspy_scan(scan):
    import hyperspy.api as hs

    s = hs.signals.Signal2D(scan)
    for ax in s.axes_manager.navigation_axes:
        ax.scale, ax.units = 1.5, "nm"
    for ax in s.axes_manager.signal_axes:
        ax.scale, ax.units = 0.1, "1/nm"
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 200.0)
    return s


@pytest.mark.parametrize("ext,reader", [("hspy", "rsciio HSPY"), ("emd", "rsciio EMD")])
def test_rsciio_formats_written_by_hyperspy(tmp_path, scan, ext, reader):
    path = tmp_path / f"scan.{ext}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _hyperspy_scan(scan).save(path)
    with open_diffraction(path) as src:
        assert src.reader == reader
        assert src.shape == scan.shape and src.dtype == scan.dtype
        np.testing.assert_array_equal(_read_all(src), scan)
        assert src.calibration["r_pixel_size"] == pytest.approx(1.5)
        assert src.calibration["q_pixel_size"] == pytest.approx(0.1)
        assert src.calibration["q_pixel_unit"] == "1/nm"  # NCEM EMD reads back "1 / nm"
    if ext == "hspy":
        assert src.calibration["beam_energy_kev"] == 200.0


def test_rsciio_blockfile(tmp_path, scan):
    """Blockfile (NanoMegas/ASTAR) holds uint8 patterns; rsciio writes and reads it."""
    data = (scan[..., :QX, :QX] % 256).astype(np.uint8)  # blockfile patterns are square
    path = tmp_path / "scan.blo"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _hyperspy_scan(data).save(path)
    with open_diffraction(path) as src:
        assert src.reader == "rsciio Blockfile" and src.dtype == np.uint8
        np.testing.assert_array_equal(_read_all(src), data)
        assert src.calibration["r_pixel_size"] == pytest.approx(1.5)


@pytest.mark.parametrize("content,message", [
    (b"", "file is empty"),
    (b"garbage" * 200, "not a readable MRC file: Map ID string not found"),
    (b"x" * 50, "not a readable MRC file"),
])
def test_bad_mrc(tmp_path, content, message):
    path = tmp_path / "bad.mrc"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        open_diffraction(path, scan_shape=(2, 2))


def test_single_image_mrc(tmp_path, scan):
    path = tmp_path / "image.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(scan[0, 0])
    with pytest.raises(InputError, match=f"single {QX}x{QY} image"):
        open_diffraction(path, scan_shape=(1, 1))


def test_truncated_mrc(tmp_path, scan):
    path = tmp_path / "cut.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(scan.reshape(-1, QX, QY))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        open_diffraction(path, scan_shape=(RX, RY))


def test_unknown_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_diffraction(tmp_path / "nope.mrc")
    odd = tmp_path / "scan.xyz"
    odd.write_bytes(b"123")
    with pytest.raises(InputError, match="unknown diffraction file type '.xyz'"):
        open_diffraction(odd)
    with pytest.raises(InputError, match="`dataset` applies to HDF5 files"):
        open_diffraction(odd, dataset="/data")
    not_h5 = tmp_path / "scan.h5"
    not_h5.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        open_diffraction(not_h5)


def test_empad_xml_and_raw(tmp_path, rng):
    """EMPAD: an XML header beside a raw float32 file of 128x130 frames (2 footer rows).

    No library writes EMPAD files, so the raw file is laid out by hand as the
    detector software writes it; RosettaSciIO reads it.
    """
    rx, ry = 4, 3
    frames = np.full((rx, ry, 130, 128), -1, np.float32)
    frames[..., :128, :] = rng.random((rx, ry, 128, 128), dtype=np.float32)
    frames.tofile(tmp_path / f"scan_x{ry}_y{rx}.raw")
    (tmp_path / "scan.xml").write_text(
        f'<root><raw_file filename="scan_x{ry}_y{rx}.raw"/><pix_x>{ry}</pix_x>'
        f"<pix_y>{rx}</pix_y></root>")
    with open_diffraction(tmp_path / "scan.xml") as src:
        assert src.reader == "rsciio EMPAD"
        assert src.shape == (rx, ry, 128, 128) and src.dtype == np.float32
        np.testing.assert_array_equal(_read_all(src), frames[..., :128, :])


@pytest.mark.parametrize("prefix,size,unit,expected", [
    ("r", 10.53, "Å", (1.053, "nm")),
    ("r", 0.002, "µm", (2.0, "nm")),
    ("r", 1.0, "nm", (1.0, "nm")),
    ("q", 0.01451, "1/Å", (0.1451, "1/nm")),
    ("q", 0.01451, "A^-1", (0.1451, "1/nm")),
    ("q", 0.2, "1 / nm", (0.2, "1/nm")),
    ("q", 0.0001, "rad", (0.1, "mrad")),
    ("q", 0.5, "cm", (0.5, "cm")),  # not a detector unit: kept as the file says
    ("r", 3.0, "px", (3.0, "px")),
])
def test_standard_units(prefix, size, unit, expected):
    got = standard_units(prefix, size, unit)
    assert got[1] == expected[1] and got[0] == pytest.approx(expected[0])


def test_convert_refuses_hdf5_whose_patterns_live_in_other_files(tmp_path, run_cli):
    # External raw storage pointing at any file (here a stand-in for /etc/passwd)
    # and a virtual dataset whose source is missing: exit 2, nothing written.
    import h5py

    secret = tmp_path / "elsewhere" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(bytes(range(256)) * 64 * 4)  # 2 x 2 x 32 x 32 uint8
    ext = tmp_path / "ext.h5"
    with h5py.File(ext, "w") as f:
        f.create_dataset("data", shape=(2, 2, 32, 32), dtype="u1",
                         external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
    virt = tmp_path / "virt.h5"
    layout = h5py.VirtualLayout(shape=(2, 2, 32, 32), dtype="u2")
    layout[...] = h5py.VirtualSource(str(tmp_path / "gone.h5"), "data", shape=(2, 2, 32, 32))
    with h5py.File(virt, "w") as f:
        f.create_virtual_dataset("data", layout, fillvalue=0)
    for src in (ext, virt):
        out = tmp_path / f"{src.stem}_bundle.h5"
        code, stdout, err = run_cli("convert", "--diffraction", src, "--dataset", "data",
                                    "--r-pixel", "1", "--q-pixel", "0.1", "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and not list(tmp_path.glob(".*.partial"))
