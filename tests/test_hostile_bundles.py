"""Scan bundles made careless or hostile, as a fuzzing session made them.

Each was predicted (or crashed, or took the machine's memory) before: a
``diffraction`` that is a link into another file, a tiny file declaring a
huge detector, big-endian and float16 patterns, and the LiberTEM engine,
which did not open bundles as the stem2eds engine does.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest



@pytest.fixture(scope="module")
def trained(small_run):
    run, scan = small_run
    assert (run / "head.npz").is_file() and (run / "ood.npz").is_file()
    return run, scan


def _refused(run_cli, run, scan, tmp_path, match: str, *extra: str) -> None:
    code, _, err = run_cli("predict", run, scan, "--out", tmp_path / "pred.h5", "-q", *extra)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and match in err, err
    assert not (tmp_path / "pred.h5").exists()


def _replace_diffraction(path, make) -> None:
    with h5py.File(path, "r+") as f:
        data, attrs = f["diffraction"][()], dict(f["diffraction"].attrs)
        del f["diffraction"]
        make(f, data)
        for k, v in attrs.items():
            if "diffraction" in f:
                f["diffraction"].attrs[k] = v


@pytest.mark.parametrize("engine", ["stem2eds", "libertem"])
def test_diffraction_linked_to_another_file(trained, run_cli, tmp_path, engine):
    if engine == "libertem":
        pytest.importorskip("libertem")
    run, scan = trained
    other = tmp_path / "elsewhere.h5"
    with h5py.File(other, "w") as g, h5py.File(scan, "r") as f:
        g["data"] = f["diffraction"][()]
    linked = tmp_path / "linked.h5"
    shutil.copy(scan, linked)
    _replace_diffraction(linked, lambda f, _: f.__setitem__(
        "diffraction", h5py.ExternalLink(str(other), "/data")))
    _refused(run_cli, run, linked, tmp_path, "link to another file", "--engine", engine)


@pytest.mark.parametrize("engine", ["stem2eds", "libertem"])
def test_tiny_file_declaring_a_huge_detector(trained, run_cli, tmp_path, engine):
    """An unallocated chunked dataset of 16384x16384 patterns: blocks of them cannot fit."""
    if engine == "libertem":
        pytest.importorskip("libertem")
    run, scan = trained
    huge = tmp_path / "huge.h5"
    shutil.copy(scan, huge)
    _replace_diffraction(huge, lambda f, data: f.create_dataset(
        "diffraction", shape=data.shape[:2] + (16384, 16384), dtype=np.uint16,
        chunks=(1, 1, 256, 256)))
    _refused(run_cli, run, huge, tmp_path, "GiB of memory", "--engine", engine)


@pytest.mark.parametrize("dtype", [">u2", "<f2"])
def test_big_endian_and_float16_patterns_predict_as_native(trained, tmp_path, dtype):
    from stem2eds.predict.predictor import load_run

    run, scan = trained
    odd = tmp_path / "odd.h5"
    shutil.copy(scan, odd)
    _replace_diffraction(odd, lambda f, data: f.create_dataset(
        "diffraction", data=data.astype(dtype)))
    predictor = load_run(run)
    np.testing.assert_allclose(predictor.predict(odd).eds, predictor.predict(scan).eds,
                               atol=1e-5)


def test_libertem_refuses_what_the_stem2eds_engine_refuses(trained, run_cli, tmp_path):
    """External raw storage (data in another file, e.g. /etc/passwd) is never read."""
    pytest.importorskip("libertem")
    run, scan = trained
    outside = tmp_path / "outside.bin"
    with h5py.File(scan, "r") as f:
        shape, raw = f["diffraction"].shape, f["diffraction"][()]
    outside.write_bytes(raw.tobytes())
    ext = tmp_path / "ext.h5"
    shutil.copy(scan, ext)
    _replace_diffraction(ext, lambda f, _: f.create_dataset(
        "diffraction", shape=shape, dtype=np.uint16, external=[(str(outside), 0, raw.nbytes)]))
    for engine in ("stem2eds", "libertem"):
        _refused(run_cli, run, ext, tmp_path, "external storage", "--engine", engine)


def test_empty_scan_axis(trained, run_cli, tmp_path):
    run, scan = trained
    empty = tmp_path / "empty.h5"
    shutil.copy(scan, empty)
    _replace_diffraction(empty, lambda f, data: f.create_dataset(
        "diffraction", shape=(0,) + data.shape[1:], dtype=data.dtype))
    _refused(run_cli, run, empty, tmp_path, "empty axis")
    code, _, err = run_cli("preprocess", empty, "--out", tmp_path / "pre.h5", "-q")
    assert code == 2 and "empty axis" in err and len(err.strip().splitlines()) == 1, err


def test_maps_off_the_scan_grid(trained, run_cli, tmp_path):
    """Patterns written with their scan axes swapped: the maps no longer lie on the scan."""
    run, scan = trained
    swapped = tmp_path / "swapped.h5"
    shutil.copy(scan, swapped)

    def swap(f, data):
        if data.shape[0] == data.shape[1]:  # a square scan: drop a row instead
            data = data[:-1]
        f["diffraction"] = np.ascontiguousarray(data.swapaxes(0, 1))
        f.attrs["scan_shape"] = data.shape[1::-1]

    _replace_diffraction(swapped, swap)
    for command in ("preprocess", "train"):
        code, _, err = run_cli(command, swapped, "--out", tmp_path / command, "-q")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "map is" in err and "crop" not in err, err
    assert not (tmp_path / "preprocess").exists() and not (tmp_path / "train").exists()


def test_raw_patterns_that_say_they_are_preprocessed(trained, run_cli, tmp_path):
    run, scan = trained
    liar = tmp_path / "liar.h5"
    shutil.copy(scan, liar)
    with h5py.File(liar, "r+") as f:
        f.attrs["kind"] = "preprocessed"
    code, _, err = run_cli("predict", run, liar, "--out", tmp_path / "pred.h5", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_chunks_never_written(trained, run_cli, tmp_path):
    """Half the patterns missing from a chunked file: HDF5 would read them as zeros."""
    run, scan = trained
    holey = tmp_path / "holey.h5"
    shutil.copy(scan, holey)

    def half(f, data):
        ds = f.create_dataset("diffraction", shape=data.shape, dtype=data.dtype,
                              chunks=(1, 1) + data.shape[2:])
        ds[: data.shape[0] // 2] = data[: data.shape[0] // 2]
    _replace_diffraction(holey, half)
    _refused(run_cli, run, holey, tmp_path, "chunks of 'diffraction' were never written")


@pytest.mark.parametrize("value", [-1.0, 0.0, np.nan, np.inf])
def test_calibration_that_is_no_size(trained, run_cli, tmp_path, value):
    run, scan = trained
    bad = tmp_path / "bad_cal.h5"
    shutil.copy(scan, bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["r_pixel_size"] = value
    _refused(run_cli, run, bad, tmp_path, "is not a positive number")


def test_convert_refuses_nan_patterns(run_cli, tmp_path):
    src = tmp_path / "nan.h5"
    data = np.ones((3, 4, 16, 16), np.float32)
    data[1, 2, 3, 4] = np.nan
    with h5py.File(src, "w") as f:
        f["data"] = data
    code, _, err = run_cli("convert", "--diffraction", src, "--out", tmp_path / "b.h5",
                           "--r-pixel", "1", "--q-pixel", "0.5", "-q")
    assert code == 2 and "NaN or infinite" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b.h5").exists()


@pytest.mark.parametrize("engine", ["stem2eds", "libertem"])
def test_out_inside_the_run_is_refused_by_both_engines(trained, run_cli, tmp_path, engine):
    if engine == "libertem":
        pytest.importorskip("libertem")
    run, scan = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = (copy / "weights.safetensors").read_bytes()
    for out in (copy / "weights.safetensors", copy / "new.h5"):
        code, _, err = run_cli("predict", copy, scan, "--out", out, "-q", "--engine", engine)
        assert code == 2 and "lies in the training run" in err, err
    assert (copy / "weights.safetensors").read_bytes() == before
    assert not (copy / "new.h5").exists()


@pytest.mark.parametrize("attr, value, match", [
    ("format_version", 1.9, "is not a version number"),
    ("format_version", -5, "is not a version number"),
    ("kind", "bogus", "neither raw nor preprocessed"),
])
def test_bundle_attributes_that_cannot_be_right(trained, run_cli, tmp_path, attr, value, match):
    run, scan = trained
    bad = tmp_path / "bad_attr.h5"
    shutil.copy(scan, bad)
    with h5py.File(bad, "r+") as f:
        f.attrs[attr] = value
    _refused(run_cli, run, bad, tmp_path, match)


def test_a_calibrated_unit_without_its_size(trained, run_cli, tmp_path):
    """`q_pixel_unit` 1/nm with no size read as 1 1/nm and resampled wrongly (exit 0)."""
    run, scan = trained
    bad = tmp_path / "unit_only.h5"
    shutil.copy(scan, bad)
    with h5py.File(bad, "r+") as f:
        if "q_pixel_size" in f.attrs:
            del f.attrs["q_pixel_size"]
        f.attrs["q_pixel_unit"] = "1/nm"
    _refused(run_cli, run, bad, tmp_path, "q_pixel_unit but no q_pixel_size")


def test_libertem_refuses_chunks_its_reader_cannot_tile(trained, run_cli, tmp_path):
    pytest.importorskip("libertem")
    run, scan = trained
    odd = tmp_path / "odd_chunks.h5"
    shutil.copy(scan, odd)
    _replace_diffraction(odd, lambda f, data: f.create_dataset(
        "diffraction", data=data, chunks=(5, 3, 7, 9)))
    _refused(run_cli, run, odd, tmp_path, "LiberTEM's HDF5 reader does not take",
             "--engine", "libertem")
    code, _, err = run_cli("predict", run, odd, "--out", tmp_path / "ok.h5", "-q")
    assert code == 0, err  # the stem2eds engine reads any chunking


def test_libertem_reads_row_chunks(trained, tmp_path):
    """Chunks of whole frames (here a scan row each) still go through LiberTEM's reader."""
    pytest.importorskip("libertem")
    from stem2eds.libertem import predict_file
    from stem2eds.predict.predictor import load_run

    run, scan = trained
    rows = tmp_path / "row_chunks.h5"
    shutil.copy(scan, rows)
    _replace_diffraction(rows, lambda f, data: f.create_dataset(
        "diffraction", data=data, chunks=(1,) + data.shape[1:]))
    predict_file(run, rows, tmp_path / "p.h5")
    with h5py.File(tmp_path / "p.h5", "r") as f:
        got = np.stack([f["eds"][el][()] for el in load_run(run).elements])
    np.testing.assert_allclose(got, load_run(run).predict(scan).eds, atol=1e-5)


def test_convert_and_preprocess_never_replace_a_run_file(trained, run_cli, tmp_path):
    run, scan = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = (copy / "weights.safetensors").read_bytes()
    out = copy / "weights.safetensors"
    for args in (("preprocess", scan, "--out", out, "-q"),
                 ("convert", "--diffraction", scan, "--out", out, "-q", "--r-pixel", "1",
                  "--q-pixel", "0.5")):
        code, _, err = run_cli(*args)
        assert code == 2 and "file of the training run" in err, err
    assert (copy / "weights.safetensors").read_bytes() == before


@pytest.mark.parametrize("engine", ["stem2eds", "libertem"])
def test_positions_without_counts_are_named(trained, run_cli, tmp_path, engine):
    """A few empty patterns among good ones got plausible compositions and no word (fuzzing)."""
    if engine == "libertem":
        pytest.importorskip("libertem")
    run, scan = trained
    holes = tmp_path / "holes.h5"
    shutil.copy(scan, holes)
    with h5py.File(holes, "r+") as f:
        for r, c in ((0, 0), (3, 4), (7, 2)):
            f["diffraction"][r, c] = 0
    code, _, err = run_cli("predict", run, holes, "--out", tmp_path / "p.h5", "-q",
                           "--engine", engine)
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 1, err
    assert "3 of 120 positions have no counts beyond the direct beam" in lines[0]
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert f.attrs["empty_positions"] == 3
    code, _, err = run_cli("predict", run, scan, "--out", tmp_path / "q.h5", "-q",
                           "--engine", engine)
    assert code == 0 and err == "", err


def test_a_calibration_unit_convert_never_writes(trained, run_cli, tmp_path):
    run, scan = trained
    bad = tmp_path / "bananas.h5"
    shutil.copy(scan, bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["q_pixel_unit"] = "bananas"
    _refused(run_cli, run, bad, tmp_path, "is not one of px, 1/nm, mrad")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_counts_are_named(trained, run_cli, tmp_path, value):
    """A hand-made float bundle with NaN or inf: said so in one line, not "origins are noise"."""
    run, scan = trained
    bad = tmp_path / "nonfinite.h5"
    shutil.copy(scan, bad)

    def floats(f, data):
        data = data.astype(np.float32)
        data[2, 3, 5, 6] = value
        f.create_dataset("diffraction", data=data)
    _replace_diffraction(bad, floats)
    _refused(run_cli, run, bad, tmp_path, "NaN or infinite values")
