"""`stem2eds convert` end to end: every reader into a bundle, the Done-when case, bad inputs."""

from __future__ import annotations

import hashlib
import json
import warnings

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile

from stem2eds import open_bundle
from stem2eds.convert import convert
from stem2eds.errors import InputError

ELEMENTS = ["O", "Si", "Ge", "Sb", "Te"]


# -- the Done-when case -------------------------------------------------------------

@pytest.fixture(scope="module")
def velox_like(tmp_path_factory):
    """MRC stack of 1200 uint16 256x256 frames (scan 40x30), five percent TIFF maps, HAADF TIFF.

    The MRC is filled through a memory map in blocks so the test never holds
    the 157 MB stack in memory either.
    """
    root = tmp_path_factory.mktemp("velox")
    rx, ry = 40, 30
    rng = np.random.default_rng(7)
    with mrcfile.new_mmap(root / "scan.mrc", shape=(rx * ry, 256, 256), mrc_mode=6) as mrc:
        for start in range(0, rx * ry, 200):
            mrc.data[start:start + 200] = rng.integers(0, 65535, (200, 256, 256),
                                                       dtype=np.uint16)
    maps = root / "maps"
    maps.mkdir()
    fractions = rng.dirichlet(np.ones(len(ELEMENTS)), size=(rx, ry))
    for i, element in enumerate(ELEMENTS):
        tifffile.imwrite(maps / f"{element}.tif", (fractions[..., i] * 100).astype(np.float32))
    tifffile.imwrite(root / "haadf.tif", rng.random((rx, ry)).astype(np.float32) * 3000)
    return root, (rx, ry)


def test_done_when_mrc_stack_with_percent_tiffs(tmp_path, velox_like, run_cli):
    src, (rx, ry) = velox_like
    out = tmp_path / "scan.h5"
    code, stdout, stderr = run_cli(
        "convert", "--diffraction", src / "scan.mrc", "--scan-shape", f"{rx}x{ry}",
        "--eds", src / "maps", "--haadf", src / "haadf.tif", "--elements", ",".join(ELEMENTS),
        "--r-pixel", "1.053", "--q-pixel", "0.1451", "--beam-energy", "200",
        "--block-mb", "20", "--out", out)
    assert code == 0, stderr
    assert stdout.strip() == (f"wrote {out}: {rx}x{ry} scan of 256x256 uint16 patterns, "
                              f"EDS {','.join(ELEMENTS)} + HAADF")
    assert "percent" in stderr and "divided by 100" in stderr
    with open_bundle(out) as b, mrcfile.mmap(src / "scan.mrc", mode="r") as mrc:
        assert b.diffraction.dtype == np.uint16 and b.diffraction.shape == (rx, ry, 256, 256)
        assert b.diffraction.chunks is None  # uncompressed: one contiguous block
        frames = mrc.data
        for i in range(rx):  # row by row: diffraction[i, j] == frame[i * Ry + j]
            np.testing.assert_array_equal(b.diffraction[i], frames[i * ry:(i + 1) * ry])
        assert b.elements == ELEMENTS
        for element in ELEMENTS:
            tiff = tifffile.imread(src / "maps" / f"{element}.tif")
            eds = b.file["eds"][element][()]
            assert eds.dtype == np.float32
            np.testing.assert_array_equal(eds, (tiff.astype(np.float64) / 100).astype(np.float32))
            np.testing.assert_allclose(eds, tiff / 100, rtol=1e-6)
        np.testing.assert_array_equal(b.haadf, tifffile.imread(src / "haadf.tif"))
        cal = b.calibration
        assert (cal.r_pixel_size, cal.r_pixel_unit) == (1.053, "nm")
        assert (cal.q_pixel_size, cal.q_pixel_unit) == (0.1451, "1/nm")
        assert cal.beam_energy_kev == 200.0
        prov = b.provenance
        assert prov["command"].startswith("stem2eds convert --diffraction")
        assert "--scan-shape 40x30" in prov["command"]
        digest = hashlib.sha256((src / "scan.mrc").read_bytes()).hexdigest()
        assert prov["diffraction"]["sha256"] == digest
        assert prov["diffraction"]["size"] == (src / "scan.mrc").stat().st_size
        assert prov["eds"]["percent"] is True
        assert prov["eds"]["maps"] == {e: f"{e}.tif" for e in ELEMENTS}
        assert {f["path"].rsplit("/", 1)[-1] for f in prov["eds"]["files"]} == \
            {f"{e}.tif" for e in ELEMENTS}
        assert "sha256" in prov["haadf"] and prov["stem2eds_version"]
        assert b.name == "scan"


# -- every reader through convert ----------------------------------------------------

RX, RY, QX, QY = 4, 3, 16, 16  # detectors have at least 16 px a side


def _write_mrc3d(path, scan):
    with mrcfile.new(path) as m:
        m.set_data(scan.reshape(-1, QX, QY))


def _write_mrc4d(path, scan):
    with mrcfile.new(path) as m:
        m.set_data(scan)


def _write_h5(path, scan):
    with h5py.File(path, "w") as f:
        f["data/patterns"] = scan


def _write_hyperspy(path, scan):
    import hyperspy.api as hs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hs.signals.Signal2D(scan).save(path)


WRITERS = {
    "scan.mrc": (_write_mrc3d, ["--scan-shape", f"{RX}x{RY}"]),
    "scan4d.mrc": (_write_mrc4d, []),
    "scan.npy": (lambda p, s: np.save(p, s), []),
    "scan.h5": (_write_h5, []),
    "scan.hspy": (_write_hyperspy, []),
    "scan.emd": (_write_hyperspy, []),
    # a blockfile's detector axis is in cm on the screen, not a Q calibration: refused
    # until the detector pixel is given (here: left uncalibrated)
    "scan.blo": (_write_hyperspy, ["--q-pixel", "1", "--q-unit", "px"]),
}


@pytest.mark.parametrize("filename", list(WRITERS))
def test_every_reader_round_trips_through_convert(tmp_path, rng, run_cli, filename):
    dtype = np.uint8 if filename.endswith(".blo") else np.uint16  # blockfile is 8-bit
    scan = rng.integers(0, np.iinfo(dtype).max, (RX, RY, QX, QY), dtype=dtype)
    writer, flags = WRITERS[filename]
    writer(tmp_path / filename, scan)
    out = tmp_path / "bundle.h5"
    code, _, err = run_cli("convert", "--diffraction", tmp_path / filename, *flags,
                           "--quiet", "--out", out)
    assert code == 0, err
    with open_bundle(out) as b:
        assert b.diffraction.dtype == dtype
        np.testing.assert_array_equal(b.diffraction[()], scan)
        assert b.elements == [] and not b.has("eds")


def test_file_calibration_kept_and_flags_override(tmp_path, rng):
    import hyperspy.api as hs

    s = hs.signals.Signal2D(rng.integers(0, 100, (RX, RY, QX, QY), dtype=np.uint16))
    for ax in s.axes_manager.navigation_axes:
        ax.scale, ax.units = 2.5, "nm"
    for ax in s.axes_manager.signal_axes:
        ax.scale, ax.units = 0.02, "mrad"
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 300.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.save(tmp_path / "scan.hspy")
    convert(tmp_path / "scan.hspy", tmp_path / "a.h5")
    with open_bundle(tmp_path / "a.h5") as b:
        cal = b.calibration
        assert (cal.r_pixel_size, cal.r_pixel_unit, cal.q_pixel_size, cal.q_pixel_unit,
                cal.beam_energy_kev) == (2.5, "nm", 0.02, "mrad", 300.0)
        assert b.provenance["calibration_from_file"]["q_pixel_unit"] == "mrad"
    convert(tmp_path / "scan.hspy", tmp_path / "b.h5", q_pixel=0.01451, q_unit="1/Å",
            beam_energy_kev=200, name="scan 0033")
    with open_bundle(tmp_path / "b.h5") as b:
        cal = b.calibration
        assert (cal.r_pixel_size, cal.q_pixel_unit, cal.beam_energy_kev) == (2.5, "1/nm", 200.0)
        assert cal.q_pixel_size == pytest.approx(0.1451)  # given in 1/angstrom
        assert b.name == "scan 0033"


def test_spectrum_image_eds_and_haadf_from_file(tmp_path, rng, run_cli):
    import hyperspy.api as hs

    from builders import SI_ELEMENTS, make_spectrum_image
    from builders import SI_K_FACTORS as K_FACTORS

    atomic = rng.dirichlet([4.0, 2.0, 1.0], size=(RX, RY))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_spectrum_image(atomic).save(tmp_path / "si.hspy")
        haadf = hs.signals.Signal2D(rng.random((RX, RY)))
        haadf.metadata.General.title = "HAADF"
        haadf.save(tmp_path / "haadf.hspy")
    np.save(tmp_path / "scan.npy", rng.integers(0, 9, (RX, RY, QX, QY), dtype=np.uint16))
    out = tmp_path / "b.h5"
    code, stdout, err = run_cli(
        "convert", "--diffraction", tmp_path / "scan.npy", "--eds", tmp_path / "si.hspy",
        "--k-factors", ",".join(f"{e}={k}" for e, k in K_FACTORS.items()),
        "--elements", "Si,Ge,O", "--haadf", tmp_path / "haadf.hspy", "--out", out)
    assert code == 0, err
    assert "EDS Si,Ge,O + HAADF" in stdout
    assert "it/s" not in err  # no HyperSpy progress bars among our one-line messages
    with open_bundle(out) as b:
        eds = b.eds()
        assert b.elements == ["Si", "Ge", "O"]
        np.testing.assert_allclose(eds.sum(0), 1.0, atol=1e-5)
        truth = np.moveaxis(atomic, -1, 0)[[SI_ELEMENTS.index(e) for e in b.elements]]
        np.testing.assert_allclose(eds, truth, atol=0.01)
        np.testing.assert_array_equal(b.haadf, haadf.data.astype(np.float32))
        prov = b.provenance["eds"]
        assert prov["kind"] == "spectrum image" and prov["k_factor_source"] == "flags"
        assert prov["xray_lines"] == {"Si": "Si_Ka", "Ge": "Ge_Ka", "O": "O_Ka"}


# -- bad inputs: exit 2, one line, nothing left in the output folder -------------------

@pytest.fixture
def inputs(tmp_path, rng):
    """Good small inputs (3D MRC 4x3 scan, fraction maps, HAADF) to break one at a time."""
    src = tmp_path / "in"
    src.mkdir()
    frames = rng.integers(0, 1000, (RX * RY, QX, QY), dtype=np.uint16)
    with mrcfile.new(src / "scan.mrc") as m:
        m.set_data(frames)
    maps = src / "maps"
    maps.mkdir()
    for element in ("Ge", "Te"):
        tifffile.imwrite(maps / f"{element}.tif", rng.random((RX, RY)).astype(np.float32) / 2)
    tifffile.imwrite(src / "haadf.tif", rng.random((RX, RY)).astype(np.float32))
    return src


def _break(src, case):
    """Damage the inputs for one case; return the extra/overriding CLI arguments."""
    mrc = src / "scan.mrc"
    args = {"--diffraction": mrc, "--scan-shape": f"{RX}x{RY}", "--eds": src / "maps",
            "--haadf": src / "haadf.tif"}
    if case == "truncated MRC":
        mrc.write_bytes(mrc.read_bytes()[:-QX * QY])
    elif case == "garbage MRC":
        mrc.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "scan shape does not match frames":
        args["--scan-shape"] = f"{RX}x{RY + 1}"
    elif case == "missing diffraction":
        args["--diffraction"] = src / "nope.mrc"
    elif case == "missing EDS folder":
        args["--eds"] = src / "no_maps"
    elif case == "missing HAADF":
        args["--haadf"] = src / "nope.tif"
    elif case == "NaN in a map":
        bad = tifffile.imread(src / "maps" / "Ge.tif")
        bad[1, 1] = np.nan
        tifffile.imwrite(src / "maps" / "Ge.tif", bad)
    elif case == "map shape differs from scan":
        for element in ("Ge", "Te"):
            tifffile.imwrite(src / "maps" / f"{element}.tif",
                             np.full((RX + 2, RY), 0.1, np.float32))
    elif case == "HAADF shape differs from scan":
        tifffile.imwrite(src / "haadf.tif", np.ones((RY, RX), np.float32))
    elif case == "unknown element":
        args["--elements"] = "Ge,Xx"
    elif case == "element without a map":
        args["--elements"] = "Ge,Sb"
    elif case == "empty EDS folder":
        for f in (src / "maps").iterdir():
            f.unlink()
    elif case == "percent above 100":
        tifffile.imwrite(src / "maps" / "Te.tif", np.full((RX, RY), 120.0, np.float32))
    elif case == "unit without size":
        args["--q-unit"] = "mrad"
    else:  # pragma: no cover
        raise AssertionError(case)
    return [str(x) for kv in args.items() for x in kv]


BAD_CASES = {
    "truncated MRC": "truncated",
    "garbage MRC": "not a readable MRC file",
    "scan shape does not match frames": f"has {RX * RY} frames but --scan-shape",
    "missing diffraction": "nope.mrc: no such file",
    "missing EDS folder": "no_maps: no such file or folder",
    "missing HAADF": "nope.tif: no such file",
    "NaN in a map": "Ge.tif: map contains 1 NaN",
    "map shape differs from scan": "stem2eds preprocess with --register",
    "HAADF shape differs from scan": "HAADF image is 3x4 but the diffraction scan is 4x3",
    "unknown element": "unknown element symbol 'Xx'",
    "element without a map": "no map for Sb",
    "empty EDS folder": "folder has no element maps",
    "percent above 100": "above 100",
    "unit without size": "--q-unit needs --q-pixel",
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_exits_2_and_leaves_nothing(tmp_path, inputs, run_cli, case):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = _break(inputs, case)
    code, stdout, stderr = run_cli("convert", *args, "--out", out_dir / "scan.h5")
    assert code == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("stem2eds convert: error: ")
    assert BAD_CASES[case] in lines[0]
    assert "Traceback" not in stderr
    assert list(out_dir.iterdir()) == []


def test_good_inputs_of_the_bad_input_fixture_convert(tmp_path, inputs, run_cli):
    """The fixture itself is valid, so each bad case fails for its own reason."""
    out = tmp_path / "scan.h5"
    code, _, err = run_cli("convert", *_break(inputs, "unit without size")[:-2], "--out", out)
    assert code == 0, err
    with open_bundle(out) as b:
        assert b.elements == ["Ge", "Te"]  # sorted file names


def test_existing_output_replaced_only_on_success(tmp_path, inputs, run_cli):
    out = tmp_path / "scan.h5"
    out.write_bytes(b"previous")
    args = _break(inputs, "NaN in a map")
    assert run_cli("convert", *args, "--out", out)[0] == 2
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "scan.h5"]


def test_missing_output_folder(tmp_path, inputs, run_cli):
    args = _break(inputs, "unit without size")[:-2]
    code, _, err = run_cli("convert", *args, "--out", tmp_path / "no" / "scan.h5")
    assert code == 2 and "output folder does not exist" in err


def test_provenance_json_is_complete(tmp_path, inputs):
    convert(inputs / "scan.mrc", tmp_path / "b.h5", scan_shape=(RX, RY), eds=inputs / "maps",
            command="stem2eds convert ...")
    with h5py.File(tmp_path / "b.h5") as f:
        prov = json.loads(f.attrs["provenance"])
    assert prov["command"] == "stem2eds convert ..."
    assert prov["diffraction"]["reader"] == "mrcfile (3D stack)"
    assert prov["eds"]["kind"] == "element maps" and prov["eds"]["percent"] is False


def test_damaged_chunk_found_while_copying_leaves_nothing(tmp_path, rng, run_cli):
    """A corrupt chunk deep in an HDF5 file fails the copy with exit 2 and no output."""
    scan = rng.integers(0, 100, (6, RY, 16, 16), dtype=np.uint16)
    path = tmp_path / "damaged.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("scan", data=scan, chunks=(1, RY, 16, 16), compression="gzip")
        info = ds.id.get_chunk_info(3)
        offset, size = info.byte_offset, info.size
    raw = bytearray(path.read_bytes())
    raw[offset:offset + size] = bytes(size)
    path.write_bytes(bytes(raw))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run_cli("convert", "--diffraction", path, "--block-mb", "0.001",
                           "--out", out_dir / "b.h5")
    assert code == 2, err
    assert "cannot read scan rows 3..3" in err and "damaged or truncated" in err
    assert list(out_dir.iterdir()) == []


def test_interrupt_while_copying_leaves_nothing(tmp_path, inputs, run_cli, monkeypatch):
    from stem2eds.io import DiffractionSource

    original = DiffractionSource.read_rows
    calls = []

    def interrupted(self, start, stop):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, start, stop)

    monkeypatch.setattr(DiffractionSource, "read_rows", interrupted)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = _break(inputs, "unit without size")[:-2]
    code, _, err = run_cli("convert", *args, "--block-mb", "0.0001", "--out", out_dir / "b.h5")
    assert code == 130 and "interrupted" in err
    assert list(out_dir.iterdir()) == []


def test_eds_only_bundle_without_diffraction(tmp_path, rng, run_cli):
    """No diffraction file: a bundle of maps only, on the EDS grid (sparse EDS, registration)."""
    maps = tmp_path / "maps"
    maps.mkdir()
    ge = rng.uniform(0.2, 0.6, (7, 5)).astype(np.float32)
    np.save(maps / "Ge.npy", ge)
    np.save(maps / "Te.npy", 1 - ge)
    code, out, err = run_cli("convert", "--eds", maps, "--r-pixel", "2.5", "--quiet",
                             "--out", tmp_path / "eds.h5")
    assert code == 0, err
    assert "7x5 maps without diffraction, EDS Ge,Te" in out
    with open_bundle(tmp_path / "eds.h5", require=("eds",)) as b:
        assert b.scan_shape == (7, 5) and b.detector_shape is None and not b.has("diffraction")
        np.testing.assert_allclose(b.eds(["Ge"])[0], ge)
        assert (b.calibration.r_pixel_size, b.calibration.r_pixel_unit) == (2.5, "nm")
    with pytest.raises(InputError, match="no 'diffraction'"):
        open_bundle(tmp_path / "eds.h5")  # stages that need patterns say so
    code, _, err = run_cli("convert", "--out", tmp_path / "none.h5")
    assert code == 2 and "nothing to convert" in err


def test_maps_on_another_grid_stored_unregistered(tmp_path, rng, run_cli):
    """EDS maps on a coarser grid with --eds-pixel-size: eds_unregistered/<El> with
    pixel_size, which preprocess --register reads; without a pixel size: refused."""
    from stem2eds.preprocess.register import load_unregistered

    inputs = tmp_path / "in"
    _write_mrc3d(tmp_path / "scan.mrc", rng.integers(0, 100, (RX, RY, QX, QY), dtype=np.uint16))
    inputs.mkdir()
    ge = rng.uniform(0.2, 0.6, (9, 6)).astype(np.float32)
    np.save(inputs / "Ge.npy", ge)
    np.save(inputs / "Te.npy", 1 - ge)
    base = ["convert", "--diffraction", tmp_path / "scan.mrc", "--scan-shape", f"{RX}x{RY}",
            "--eds", inputs, "--r-pixel", "1.0", "--quiet"]
    code, _, err = run_cli(*base, "--out", tmp_path / "a.h5")
    assert code == 2 and "--eds-pixel-size" in err and "--register" in err
    code, out, err = run_cli(*base, "--eds-pixel-size", "0.5", "--out", tmp_path / "a.h5")
    assert code == 0, err
    assert "EDS Ge,Te (unregistered)" in out
    with open_bundle(tmp_path / "a.h5") as b:
        assert not b.has("eds") and b.elements == ["Ge", "Te"]
        maps, names, px = load_unregistered(b)
    assert names == ["Ge", "Te"] and px == 0.5
    np.testing.assert_allclose(maps[0], ge)


@pytest.mark.parametrize("flags,message", [
    (["--q-pixel", "0.5", "--q-unit", "cm"], "is a length, not a reciprocal length"),
    (["--q-pixel", "1e17"], "outside the plausible range"),
    (["--r-pixel", "3", "--r-unit", "eV"], "is not a length"),
])
def test_user_calibration_checked(tmp_path, rng, run_cli, flags, message):
    np.save(tmp_path / "scan.npy", rng.integers(0, 9, (RX, RY, QX, QY), dtype=np.uint16))
    code, _, err = run_cli("convert", "--diffraction", tmp_path / "scan.npy", *flags,
                           "--out", tmp_path / "a.h5")
    assert code == 2 and message in err and not (tmp_path / "a.h5").exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e12"])
def test_block_size_must_be_a_sane_number(tmp_path, run_cli, value):
    np.save(tmp_path / "d.npy", np.zeros((2, 2, 16, 16), np.uint16))
    code, _, err = run_cli("convert", "--diffraction", tmp_path / "d.npy", "--block-mb", value,
                           "--out", tmp_path / "o.h5")
    assert code == 2 and "--block-mb" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.h5").exists()


def test_convert_never_writes_over_an_input_map(tmp_path, run_cli):
    # issue 14: `convert --out maps/Te.npy` replaced an input map
    np.save(tmp_path / "d.npy", np.zeros((2, 2, 16, 16), np.uint16))
    maps = tmp_path / "maps"
    maps.mkdir()
    for el in ("Ge", "Te"):
        np.save(maps / f"{el}.npy", np.full((2, 2), 0.5))
    before = (maps / "Te.npy").read_bytes()
    code, _, err = run_cli("convert", "--diffraction", tmp_path / "d.npy", "--eds", maps,
                           "--out", maps / "Te.npy")
    assert code == 2 and "--out would overwrite the input" in err
    assert (maps / "Te.npy").read_bytes() == before
    code, _, err = run_cli("convert", "--diffraction", tmp_path / "d.npy",
                           "--out", tmp_path / "d.npy")
    assert code == 2 and (tmp_path / "d.npy").stat().st_size > 0
