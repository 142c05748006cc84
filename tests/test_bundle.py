"""The scan bundle: layout, round trip, atomic writing, validation."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from stem2eds import PixelCalibration, InputError, create_bundle, open_bundle
from stem2eds.formats.bundle import describe_source
from stem2eds.cli import parse_pair
from stem2eds.elements import element_list
from stem2eds.atomic import atomic_output


def _write(path, rng, scan=(3, 5), det=(8, 6)):
    n = scan[0] * scan[1]
    patterns = rng.integers(0, 60000, size=(n, *det), dtype=np.uint16)
    eds = {"O": rng.random(scan) * 0.5, "Ge": rng.random(scan) * 0.5}
    with create_bundle(path, scan_shape=scan, detector_shape=det, dtype=np.uint16,
                       elements=["O", "Ge"],
                       calibration=PixelCalibration(1.053, 0.1451, "nm", "1/nm", 200.0),
                       provenance={"sources": [{"path": "x.mrc"}]}) as b:
        b.write_patterns(0, patterns[:4])      # partial row, then the rest
        b.write_patterns(4, patterns[4:])
        b.write_eds(eds)
        b.write_haadf(rng.random(scan))
    return patterns, eds


def test_round_trip_layout(tmp_path, rng):
    path = tmp_path / "scan.h5"
    patterns, eds = _write(path, rng)
    with h5py.File(path) as f:  # the documented layout, read without stem2eds
        assert f["diffraction"].shape == (3, 5, 8, 6)
        assert f["diffraction"].dtype == np.uint16
        assert f["diffraction"].chunks is None  # contiguous: pattern k at base + k * size
        assert f["diffraction"].id.get_offset() is not None
        assert list(f.attrs["elements"]) == ["O", "Ge"]
        assert f["eds/O"].dtype == np.float32
        assert f.attrs["q_pixel_unit"] == "1/nm"
        assert json.loads(f.attrs["provenance"])["sources"][0]["path"] == "x.mrc"
    with open_bundle(path) as scan:
        assert scan.scan_shape == (3, 5) and scan.detector_shape == (8, 6)
        assert scan.calibration.r_pixel_size == pytest.approx(1.053)
        assert scan.calibration.beam_energy_kev == 200.0
        np.testing.assert_array_equal(scan.diffraction[2, 1], patterns[2 * 5 + 1])
        np.testing.assert_allclose(scan.eds()[1], eds["Ge"].astype(np.float32))
        assert scan.haadf.shape == (3, 5)
        streamed = np.concatenate([p for _, p in scan.iter_patterns(batch=7)])
        np.testing.assert_array_equal(streamed, patterns)
        starts = [s for s, _ in scan.iter_patterns(batch=10)]
        assert starts == [0, 10]


def test_failed_write_leaves_nothing(tmp_path, rng):
    path = tmp_path / "scan.h5"
    with pytest.raises(InputError, match="NaN"):
        with create_bundle(path, scan_shape=(2, 2), detector_shape=(4, 4), dtype=np.uint16,
                           elements=["O"]) as b:
            b.write_eds({"O": np.array([[0.1, np.nan], [0.2, 0.3]])})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("maps, match", [
    ({"O": np.zeros((3, 3))}, "shape"),
    ({"O": np.full((2, 2), 1.5)}, "outside"),
    ({}, "no EDS map"),
])
def test_bad_maps_rejected(tmp_path, maps, match):
    with pytest.raises(InputError, match=match):
        with create_bundle(tmp_path / "b.h5", scan_shape=(2, 2), detector_shape=(4, 4),
                           dtype=np.uint16, elements=["O"]) as b:
            b.write_eds(maps)
    assert not (tmp_path / "b.h5").exists()


def test_open_bundle_rejects_non_bundles(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(InputError, match="not a readable HDF5"):
        open_bundle(garbage)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match="not a stem2eds scan bundle"):
        open_bundle(other)
    with pytest.raises(InputError, match="no such file"):
        open_bundle(tmp_path / "missing.h5")


def test_open_bundle_rejects_newer_format_and_missing_dataset(tmp_path, rng):
    path = tmp_path / "scan.h5"
    _write(path, rng)
    with pytest.raises(InputError, match="no 'truth'"):
        open_bundle(path, require=("diffraction", "truth"))
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(InputError, match="newer"):
        open_bundle(path)


def test_atomic_output_cleans_up(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole"


def test_atomic_output_never_replaces_what_is_not_a_regular_file(tmp_path):
    """`out` naming a device (/dev/null as root) or a pipe must not turn it into a file."""
    import os
    import stat

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    (tmp_path / "folder").mkdir()
    for target, kind in ((pipe, "not a regular file"), (tmp_path / "folder", "a folder")):
        with pytest.raises(InputError, match=f"exists and is {kind}"):
            with atomic_output(target) as tmp:
                tmp.write_text("x")
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and (tmp_path / "folder").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "pipe"]


def test_helpers(tmp_path):
    assert parse_pair("110x45") == (110, 45)
    with pytest.raises(InputError):
        parse_pair("110by45")
    assert element_list("o, si,Ge") == ["O", "Si", "Ge"]
    with pytest.raises(InputError, match="unknown element"):
        element_list("O,Xx")
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    rec = describe_source(f)
    assert rec["size"] == 3
    assert rec["sha256"].startswith("ba7816bf")


def test_atomic_output_gives_normal_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "shared.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode)
    assert mode == 0o644
