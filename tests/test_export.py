"""Exports of a prediction, each read back with the reader its users have.

hspy with HyperSpy, TIFF with tifffile (the ImageJ tags Fiji reads), CSV
with the csv module, hdf5 with our reader; zspy where RosettaSciIO can
write it (zarr 2), else its refusal.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from stem2eds.errors import InputError


@pytest.fixture
def pred():
    from stem2eds.predict.result import Prediction

    rng = np.random.default_rng(3)
    eds, std = rng.random((2, 2, 5, 7), dtype=np.float32)  # (E, Rx, Ry): 5 rows, 7 columns
    haadf = rng.random((5, 7), dtype=np.float32) * 100
    return Prediction(eds, haadf, ["Ge", "Te"], (5, 7), eds_std=std, scan_step_nm=0.5,
                      source_name="scan 1", offset=(2, 3))


def test_hspy_reads_back_with_hyperspy(pred, tmp_path):
    import hyperspy.api as hs

    out = pred.export(tmp_path / "p.hspy")
    assert out == [tmp_path / "p.hspy"]
    s = hs.load(out[0])
    np.testing.assert_array_equal(s.data, pred.eds)
    assert s.metadata.Sample.elements == ["Ge", "Te"]
    nav, (x, y) = s.axes_manager.navigation_axes[0], s.axes_manager.signal_axes
    assert nav.name == "element" and nav.size == 2
    assert (x.name, x.size, x.units, x.scale, x.offset) == ("x", 7, "nm", 0.5, 1.5)
    assert (y.name, y.size, y.offset) == ("y", 5, 1.0)
    np.testing.assert_array_equal(s.metadata.stem2eds.haadf.data, pred.haadf)
    np.testing.assert_array_equal(s.metadata.stem2eds.eds_std.data, pred.eds_std)
    ge = s.split()[0]
    np.testing.assert_array_equal(ge.data, pred.eds[0])


def test_tiff_is_an_imagej_hyperstack_in_nm(pred, tmp_path):
    import tifffile

    (out,) = pred.export(tmp_path / "p.tif")
    with tifffile.TiffFile(out) as tif:
        meta = tif.imagej_metadata
        data = tif.asarray()
        x_res = tif.pages[0].tags["XResolution"].value
        assert tif.series[0].axes == "CYX"
    assert meta["unit"] == "nm" and meta["channels"] == 5
    assert meta["Labels"] == ["Ge", "Te", "haadf", "Ge_std", "Te_std"]
    assert x_res[0] / x_res[1] == pytest.approx(2.0)  # pixels per nm: 0.5 nm steps
    np.testing.assert_array_equal(data[1], pred.eds[1])
    np.testing.assert_array_equal(data[2], pred.haadf)
    np.testing.assert_array_equal(data[4], pred.eds_std[1])


def test_csv_is_one_row_per_position(pred, tmp_path):
    (out,) = pred.export(tmp_path / "p.csv")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["x_nm", "y_nm", "Ge", "Te", "haadf", "Ge_std", "Te_std"]
    assert len(rows) == 35
    # C order: row 1 (y), column 4 (x) is line 1 * 7 + 4; coordinates include the crop offset
    row = rows[1 * 7 + 4]
    assert float(row["x_nm"]) == pytest.approx((3 + 4) * 0.5)
    assert float(row["y_nm"]) == pytest.approx((2 + 1) * 0.5)
    assert float(row["Te"]) == pytest.approx(pred.eds[1, 1, 4], rel=1e-6)
    assert float(row["haadf"]) == pytest.approx(pred.haadf[1, 4], rel=1e-6)


def test_csv_without_calibration_is_in_pixels(pred, tmp_path):
    pred.scan_step_nm = None
    (out,) = pred.export(tmp_path / "p.csv")
    header = out.read_text().splitlines()[0]
    assert header.startswith("x_px,y_px,")


def test_hdf5_reads_back_with_calibration(pred, tmp_path):
    from stem2eds.predict.result import Prediction

    (out,) = pred.export(tmp_path / "p.h5")
    back = Prediction.load(out)
    np.testing.assert_array_equal(back.eds, pred.eds)
    np.testing.assert_array_equal(back.eds_std, pred.eds_std)
    assert (back.scan_step_nm, back.offset, back.source_name) == (0.5, (2, 3), "scan 1")


def test_zspy_writes_or_is_refused_clearly(pred, tmp_path):
    import zarr

    out = tmp_path / "p.zspy"
    if int(zarr.__version__.split(".")[0]) >= 3:
        with pytest.raises(InputError, match="cannot write zspy with zarr"):
            pred.export(out)
        assert list(tmp_path.iterdir()) == []
        return
    import hyperspy.api as hs  # pragma: no cover - zarr 2 environments

    pred.export(out)
    np.testing.assert_array_equal(hs.load(out).data, pred.eds)


def test_existing_outputs_are_refused_unless_overwrite(pred, tmp_path):
    target = tmp_path / "p.tif"
    target.write_text("keep me")
    with pytest.raises(InputError, match="output exists.*`overwrite`"):
        pred.export(target)
    assert target.read_text() == "keep me"
    pred.export(target, overwrite=True)
    assert target.read_bytes()[:2] in (b"II", b"MM")


@pytest.mark.parametrize("name, fmt, match", [
    ("p.h5", "tiff", "must end in .tif or .tiff"),
    ("p.txt", None, "cannot tell the output format"),
    ("p.csv", "xlsx", "`format` must be one of"),
])
def test_names_and_formats_must_agree(pred, tmp_path, name, fmt, match):
    with pytest.raises(InputError, match=match):
        pred.export(tmp_path / name, fmt)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_nothing(pred, tmp_path, monkeypatch):
    import tifffile

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        pred.export(tmp_path / "p.tif")
    assert list(tmp_path.iterdir()) == []
