"""LiberTEM: PredictUDF and ``predict --engine libertem`` give the maps of ``stem2eds predict``.

On a LiberTEM memory dataset, an NPY file and an MRC file, on the inline
executor and on a 2-worker local Dask cluster. The run crops the scan and
measures origins on a sub-grid, so the roi and grid paths are both exercised.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("libertem")

from stem2eds.errors import InputError  # noqa: E402
from builders import ELEMENTS, make_raw_scan, small_config  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A trained run (crop, origin sub-grid, filtered maps), a scan, its frames and its prediction."""
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.predict.bundle import predict_bundle
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.fit import train

    folder = tmp_path_factory.mktemp("libertem")
    make_raw_scan(folder / "train.h5", seed=11)
    scan = make_raw_scan(folder / "other.h5", seed=12)
    cfg = small_config(targets=("eds", "haadf"), max_epochs=2,
                       preprocess=PreprocessSettings(bin_factor=2, eds_kernel=3,
                                                     origin_sample=40, crop=(1, 11, 0, 9)))
    run = train([folder / "train.h5"], folder / "run", cfg, quiet=True)
    ref = predict_bundle(run, scan, folder / "ref.h5")
    with open_bundle(scan) as s:
        frames = s.diffraction[()]
    return run, frames, _maps(ref), folder


def _maps(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {el: f["eds"][el][()] for el in f["eds"]}
        out["haadf"] = f["haadf"][()]
    return out


def _assert_equal_maps(pred, ref: dict[str, np.ndarray]) -> None:
    assert pred.scan_shape == (10, 9)
    for i, el in enumerate(ELEMENTS):
        np.testing.assert_allclose(pred.eds[i], ref[el], atol=1e-6)
    np.testing.assert_allclose(pred.haadf, ref["haadf"], rtol=1e-5)


def test_memory_dataset_inline_equals_predict(setup):
    from stem2eds.libertem import open_context, predict_dataset

    run, frames, ref, _ = setup
    with open_context() as ctx:
        ds = ctx.load("memory", data=frames, num_partitions=3)
        _assert_equal_maps(predict_dataset(ctx, ds, run), ref)


def test_udf_buffers_are_named_by_element(setup):
    """PredictUDF on its own: one nav buffer per element and haadf, NaN outside the crop."""
    from stem2eds.libertem import PredictUDF, fit_dataset_origins, open_context
    from stem2eds.libertem.engine import crop_roi
    from stem2eds.predict.predictor import load_run

    run, frames, ref, _ = setup
    settings = load_run(run).settings
    with open_context() as ctx:
        ds = ctx.load("memory", data=frames)
        origins = fit_dataset_origins(ctx, ds, settings)
        assert origins.fitted.shape == (12, 10, 2) and np.isnan(origins.fitted[0]).all()
        res = ctx.run_udf(ds, PredictUDF(run, origins.fitted, settings.beam_radius),
                          roi=crop_roi(settings, (12, 10)))
    assert set(res) == {*ELEMENTS, "haadf"}
    assert res["Ge"].data.shape == (12, 10) and np.isnan(res["Ge"].data[0]).all()
    np.testing.assert_allclose(res["Te"].data[1:11, 0:9], ref["Te"], atol=1e-6)


def test_npy_file_through_the_cli(setup, run_cli, tmp_path):
    run, frames, ref, _ = setup
    np.save(tmp_path / "scan.npy", frames)
    out = tmp_path / "pred.h5"
    code, stdout, err = run_cli("predict", run, tmp_path / "scan.npy", "--out", out,
                                "--engine", "libertem")
    assert code == 0, err
    assert stdout.strip() == str(out)
    got = _maps(out)
    for key in (*ELEMENTS, "haadf"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6)
    with h5py.File(out, "r") as f:
        assert f.attrs["engine"] == "libertem" and f.attrs["scan_name"] == "scan"


def test_mrc_file_with_scan_shape(setup, tmp_path):
    import mrcfile

    from stem2eds.libertem import predict_file

    run, frames, ref, _ = setup
    path = tmp_path / "scan.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(frames.reshape(-1, *frames.shape[2:]))
        mrc.set_image_stack()  # a stack of frames, not a volume
    out = predict_file(run, path, tmp_path / "pred.h5", input_type="mrc", scan_shape=(12, 10))
    got = _maps(out)
    for key in (*ELEMENTS, "haadf"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6)


def test_scan_without_two_navigation_axes_is_refused(setup):
    from stem2eds.libertem import open_context, predict_dataset

    run, frames, _, _ = setup
    with open_context() as ctx:
        ds = ctx.load("memory", data=frames.reshape(-1, *frames.shape[2:]), sig_dims=2)
        with pytest.raises(InputError, match="navigation axes"):
            predict_dataset(ctx, ds, run)


@pytest.mark.slow
def test_local_cluster_of_two_workers(setup, tmp_path):
    from stem2eds.libertem import predict_file

    run, frames, ref, _ = setup
    np.save(tmp_path / "scan.npy", frames)
    from libertem.api import Context

    ctx = Context.make_with("dask", cpus=2)
    try:
        out = predict_file(run, tmp_path / "scan.npy", tmp_path / "pred.h5", scheduler=ctx)
    finally:
        ctx.close()
    got = _maps(out)
    for key in (*ELEMENTS, "haadf"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6)


def test_refusals(setup, run_cli, tmp_path):
    run, frames, _, _ = setup
    other = tmp_path / "det48.npy"
    np.save(other, np.zeros((12, 10, 48, 48), np.uint16))
    code, _, err = run_cli("predict", run, other, "--out", tmp_path / "p.h5",
                           "--engine", "libertem")
    assert code == 2 and "48x48" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("predict", run, tmp_path / "missing.npy", "--out",
                           tmp_path / "p.h5", "--engine", "libertem")
    assert code == 2 and "no such file" in err
    (tmp_path / "junk.xyz").write_text("junk")
    code, _, err = run_cli("predict", run, tmp_path / "junk.xyz", "--out", tmp_path / "p.h5",
                           "--engine", "libertem")
    assert code == 2 and "--input-type" in err
    assert not (tmp_path / "p.h5").exists()


def test_import_stem2eds_does_not_import_libertem():
    code = ("import sys, stem2eds, stem2eds.libertem; "
            "assert 'libertem' not in sys.modules, 'libertem imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiles_and_partitions_give_the_same_maps(setup):
    """PredictUDF on stacks of whole-frame tiles equals it on whole partitions (and predict)."""
    from stem2eds.libertem import PredictUDF, fit_dataset_origins, open_context
    from stem2eds.libertem.engine import crop_roi
    from stem2eds.libertem.udf import frames_method
    from stem2eds.predict.predictor import load_run

    run, frames, ref, _ = setup
    settings = load_run(run).settings
    roi = crop_roi(settings, (12, 10))
    with open_context() as ctx:
        # thin tiles (joined into batches) and two partitions
        ds = ctx.load("memory", data=frames, num_partitions=2, tileshape=(7, 32, 32))
        assert frames_method(ds, roi) == "tile"
        origins = fit_dataset_origins(ctx, ds, settings)
        maps = {m: ctx.run_udf(ds, PredictUDF(run, origins.fitted, settings.beam_radius,
                                              method=m), roi=roi)
                for m in ("tile", "partition")}
        split = ctx.load("memory", data=frames, tileshape=(4, 16, 32))
        assert frames_method(split, roi) == "partition"  # tiles of half frames
    for el in ref:
        np.testing.assert_array_equal(maps["tile"][el].data, maps["partition"][el].data)
        np.testing.assert_allclose(maps["tile"][el].data[1:11, 0:9], ref[el], rtol=1e-5,
                                   atol=1e-6)


def test_bundle_is_read_in_place(setup, tmp_path):
    """A bundle goes through DirectHDF5DataSet (LiberTEM's memory maps at its byte offsets)."""
    from stem2eds.libertem import fit_dataset_origins, open_context, predict_dataset
    from stem2eds.libertem.dataset import DirectHDF5DataSet
    from stem2eds.libertem.engine import load_dataset
    from stem2eds.predict.predictor import load_run

    run, frames, ref, folder = setup
    settings = load_run(run).settings
    with open_context() as ctx:
        ds = load_dataset(ctx, folder / "other.h5")
        assert isinstance(ds, DirectHDF5DataSet) and len(ds.layout.runs) == 1
        # the origin sub-grid is read and measured here
        local = fit_dataset_origins(ctx, ds, settings)
        _assert_equal_maps(predict_dataset(ctx, ds, run), ref)
        # a client that cannot open the file gets the radius frames through
        # LiberTEM and the workers measure the origins: the same ones
        ds.read_frames = lambda flat: None
        remote = fit_dataset_origins(ctx, ds, settings)
        _assert_equal_maps(predict_dataset(ctx, ds, run), ref)
    assert local.fit.sampled is not None and local.fit.sampled.sum() < local.fit.sampled.size
    np.testing.assert_array_equal(local.fitted, remote.fitted)
    assert local.probe_radius == remote.probe_radius


def _chunked_copy(path: Path, frames: np.ndarray, attrs, compression=None) -> Path:
    """A bundle written as older stem2eds wrote it: one-pattern chunks (or compressed)."""
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs)
        ds = f.create_dataset("diffraction", shape=frames.shape, dtype=frames.dtype,
                              chunks=(1, 1, *frames.shape[2:]), compression=compression)
        for i in range(frames.shape[0]):  # row by row, as convert writes: index nodes interleave
            for j in range(frames.shape[1]):
                ds[i, j] = frames[i, j]
    return path


@pytest.mark.filterwarnings("ignore:Loading compressed HDF5")
def test_chunked_and_compressed_bundles_read_the_same_frames(setup, tmp_path):
    from libertem.io.dataset.hdf5 import H5DataSet
    from libertem.udf.raw import PickUDF
    from libertem.udf.sum import SumUDF

    from stem2eds.libertem import open_context
    from stem2eds.libertem.dataset import DirectHDF5DataSet, runs_of
    from stem2eds.libertem.engine import load_dataset

    _, frames, _, folder = setup
    with h5py.File(folder / "other.h5", "r") as f:
        attrs = dict(f.attrs)
    big = np.tile(frames, (6, 8, 1, 1))  # 72x80: enough chunks for several index nodes
    chunked = _chunked_copy(tmp_path / "chunked.h5", big, attrs)
    packed = _chunked_copy(tmp_path / "gzip.h5", frames, attrs, compression="gzip")
    roi = np.zeros(big.shape[:2], bool)
    roi[::7, ::5] = True
    roi[-1, -1] = True
    with open_context() as ctx:
        ds = load_dataset(ctx, chunked)
        assert isinstance(ds, DirectHDF5DataSet) and len(ds.layout.runs) > 1
        picked = ctx.run_udf(ds, PickUDF(), roi=roi)["intensity"].raw_data
        np.testing.assert_array_equal(picked, big[roi])
        np.testing.assert_array_equal(ds.read_frames(np.flatnonzero(roi)), big[roi])
        total = ctx.run_udf(ds, SumUDF(dtype=np.float64))["intensity"].data
        np.testing.assert_array_equal(total, big.sum(axis=(0, 1), dtype=np.float64))
        fallback = load_dataset(ctx, packed)  # compressed: LiberTEM's h5py reader
        assert isinstance(fallback, H5DataSet)
        np.testing.assert_array_equal(ctx.run_udf(fallback, PickUDF(), roi=roi[:12, :10])[
            "intensity"].raw_data, frames[roi[:12, :10]])
    runs = runs_of(np.array([0, 10, 20, 100, 110, 5]), 10)
    np.testing.assert_array_equal(runs, [[0, 3, 0], [3, 5, 100], [5, 6, 5]])


def test_a_broken_bundle_is_refused_in_one_line(setup, run_cli, tmp_path):
    """A file that says it is a bundle but whose patterns are not a 4D dataset: exit 2."""
    run, frames, _, folder = setup
    with h5py.File(folder / "other.h5", "r") as f:
        attrs = dict(f.attrs)
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.attrs.update(attrs)
        f.create_dataset("diffraction", data=frames[0])  # (Ry, Qx, Qy): no scan axes
    code, _, err = run_cli("predict", run, bad, "--out", tmp_path / "p.h5", "--engine", "libertem")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p.h5").exists()
