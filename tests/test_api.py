"""The Python API on what users hold: numpy, dask, HyperSpy (lazy too), py4DSTEM -> Prediction.

Predictions through ``Predictor.predict`` must equal ``stem2eds predict`` on
the same patterns written as a bundle; the scan is not square (9 x 14), so a
mix-up of HyperSpy's (x, y) with the array's (rows, columns) cannot pass.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from stem2eds.errors import InputError
from builders import ELEMENTS, make_raw_scan, small_config


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scans")
    return (make_raw_scan(folder / "train.h5", seed=21),
            make_raw_scan(folder / "other.h5", seed=22, scan_shape=(9, 14)))


@pytest.fixture(scope="module")
def run_dir(scans, tmp_path_factory) -> Path:
    from stem2eds.train.fit import train

    return train([scans[0]], tmp_path_factory.mktemp("run") / "run",
                 small_config(targets=("eds", "haadf"), max_epochs=2), quiet=True)


@pytest.fixture(scope="module")
def patterns(scans) -> np.ndarray:
    with h5py.File(scans[1], "r") as f:
        return f["diffraction"][()]


@pytest.fixture(scope="module")
def cli_prediction(run_dir, scans, tmp_path_factory):
    from stem2eds.cli import main
    from stem2eds.formats.prediction import read_prediction

    out = tmp_path_factory.mktemp("pred") / "other.h5"
    assert main(["predict", str(run_dir), str(scans[1]), "--out", str(out)]) == 0
    return read_prediction(out)


def _signal(data, lazy=False, nav_unit="nm", nav_scale=1.0, sig_unit="1/nm", sig_scale=0.1):
    import hyperspy.api as hs

    s = hs.signals.Signal2D(data)
    if lazy:
        s = s.as_lazy()
    for axis, name in zip(s.axes_manager.navigation_axes, ("x", "y")):
        axis.name, axis.units, axis.scale = name, nav_unit, nav_scale
    for axis, name in zip(s.axes_manager.signal_axes, ("kx", "ky")):
        axis.name, axis.units, axis.scale = name, sig_unit, sig_scale
    s.metadata.General.title = "other scan"
    return s


def _held(kind: str, patterns: np.ndarray):
    if kind == "numpy":
        return patterns
    if kind == "dask":
        import dask.array as da

        return da.from_array(patterns, chunks=(2, 5, -1, -1))  # blocks cut rows and columns
    return _signal(patterns, lazy=kind == "hyperspy-lazy")


@pytest.mark.parametrize("kind", ["numpy", "dask", "hyperspy", "hyperspy-lazy"])
def test_predict_in_memory_equals_cli_on_the_bundle(run_dir, patterns, cli_prediction, kind):
    from stem2eds import load_run

    pred = load_run(run_dir).predict(_held(kind, patterns), batch=5)
    assert pred.scan_shape == (9, 14) and pred.elements == list(ELEMENTS)
    np.testing.assert_allclose(pred.eds, cli_prediction.eds, atol=1e-6)
    np.testing.assert_allclose(pred.haadf, cli_prediction.haadf, rtol=1e-5)
    if kind.startswith("hyperspy"):
        assert pred.scan_step_nm == pytest.approx(1.0) and pred.source_name == "other scan"
    else:
        assert pred.scan_step_nm is None and pred.source_name == "array"


def test_bundle_path_predict_equals_cli_and_carries_calibration(run_dir, scans, cli_prediction):
    from stem2eds import Prediction, load_run

    pred = load_run(run_dir).predict(scans[1])
    np.testing.assert_allclose(pred.eds, cli_prediction.eds, atol=1e-6)
    assert pred.scan_step_nm == pytest.approx(1.0) and pred.source_name == "other"
    # the CLI's file records the calibration too, so loading it gives calibrated maps
    assert cli_prediction.attrs["scan_step_nm"] == pytest.approx(1.0)
    assert cli_prediction.attrs["scan_offset"] == [0, 0]
    assert load_run(run_dir).predict_scan(scans[1]).eds.shape == (3, 9, 14)
    assert isinstance(pred, Prediction)


def test_to_hyperspy_maps_are_calibrated_element_signals(run_dir, patterns):
    from hyperspy.signals import Signal2D

    from stem2eds import load_run

    s = _signal(patterns, nav_unit="Å", nav_scale=5.0)  # 0.5 nm steps
    maps = load_run(run_dir).predict(s).to_hyperspy()
    assert list(maps) == [*ELEMENTS, "haadf"]
    ge = maps["Ge"]
    assert isinstance(ge, Signal2D) and ge.metadata.General.title == "Ge"
    assert ge.metadata.Sample.elements == ["Ge"]
    x, y = ge.axes_manager.signal_axes
    assert (x.name, x.size, x.units, x.scale) == ("x", 14, "nm", pytest.approx(0.5))
    assert (y.name, y.size, y.units) == ("y", 9, "nm")
    assert ge.data.shape == (9, 14)


def test_to_xarray_has_elements_and_nm_coordinates(run_dir, patterns):
    from stem2eds import load_run

    ds = load_run(run_dir).predict(_signal(patterns, nav_unit="µm", nav_scale=0.002)).to_xarray()
    assert list(ds["element"].values) == list(ELEMENTS)
    assert ds["eds"].dims == ("element", "y", "x") and ds["eds"].shape == (3, 9, 14)
    np.testing.assert_allclose(ds["x"].values, np.arange(14) * 2.0)
    assert ds["x"].attrs["units"] == "nm" and "haadf" in ds and "eds_std" not in ds
    np.testing.assert_array_equal(ds["eds"].sel(element="Te").values,
                                  ds["eds"].values[2])


def test_eds_std_of_an_ensemble_file_comes_through(tmp_path):
    from stem2eds import Prediction
    from stem2eds.formats.prediction import write_prediction_file

    rng = np.random.default_rng(0)
    eds, std = rng.random((2, 2, 4, 6), dtype=np.float32)
    path = write_prediction_file(tmp_path / "ens.h5", ["Ge", "Te"], eds, eds_std=std,
                                 attrs={"scan_step_nm": 0.25, "scan_name": "ens"})
    pred = Prediction.load(path)
    maps = pred.to_hyperspy()
    assert list(maps) == ["Ge", "Te", "Ge_std", "Te_std"]
    np.testing.assert_array_equal(maps["Te_std"].data, std[1])
    assert maps["Ge_std"].axes_manager.signal_axes[0].scale == pytest.approx(0.25)
    np.testing.assert_array_equal(pred.to_xarray()["eds_std"].values, std)


def test_client_is_refused_for_scans_in_memory(run_dir, patterns):
    from stem2eds import load_run

    with pytest.raises(InputError, match="in memory"):
        load_run(run_dir).predict(patterns, client="local")


@pytest.mark.parametrize("data, match", [
    (np.zeros((9, 14, 32)), "4D-STEM scan is"),
    (np.zeros((9, 14, 32, 32), dtype=bool), "dtype bool"),
    (np.zeros((9, 14, 32, 32), dtype=np.complex64), "dtype complex64"),
    (np.zeros((0, 14, 32, 32)), "no patterns"),
    ([[1, 2]], "cannot predict a list"),
])
def test_bad_arrays_are_refused(run_dir, data, match):
    from stem2eds import load_run

    with pytest.raises(InputError, match=match):
        load_run(run_dir).predict(data)


def test_nan_patterns_are_refused_while_streaming(run_dir, patterns):
    from stem2eds import load_run

    bad = patterns.astype(np.float32)
    bad[4, 7, 3, 3] = np.nan
    with pytest.raises(InputError, match=r"scan position \(4, 7\) holds NaN"):
        load_run(run_dir).predict(bad)


@pytest.mark.parametrize("unit, scale, expected", [
    ("Å", 10.0, 1.0), ("µm", 0.003, 3.0), ("m", 2e-9, 2.0), ("nm", 0.7, 0.7),
    ("<undefined>", 1.0, None)])
def test_signal_scan_step_units(patterns, unit, scale, expected):
    from stem2eds.predict.sources import as_scan

    cal = as_scan(_signal(patterns, nav_unit=unit, nav_scale=scale)).calibration
    if expected is None:
        assert cal.r_pixel_unit == "px"
    else:
        assert cal.r_pixel_unit == "nm" and cal.r_pixel_size == pytest.approx(expected)


@pytest.mark.parametrize("unit, scale, expected_unit, expected", [
    ("1/Å", 0.01, "1/nm", 0.1), ("mrad", 0.5, "mrad", 0.5), ("rad", 4e-4, "mrad", 0.4)])
def test_signal_detector_pixel_units(patterns, unit, scale, expected_unit, expected):
    from stem2eds.predict.sources import as_scan

    cal = as_scan(_signal(patterns, sig_unit=unit, sig_scale=scale)).calibration
    assert cal.q_pixel_unit == expected_unit and cal.q_pixel_size == pytest.approx(expected)


@pytest.mark.parametrize("kwargs, match", [
    (dict(nav_unit="furlong"), "navigation axis x: 1 furlong is not a length"),
    (dict(sig_unit="eV"), "signal axis kx: .* not a reciprocal length"),
    (dict(sig_unit="nm"), "is a length, not a reciprocal length"),
])
def test_signal_unknown_units_are_refused(patterns, kwargs, match):
    from stem2eds.predict.sources import as_scan

    with pytest.raises(InputError, match=match):
        as_scan(_signal(patterns, **kwargs))


def test_signal_shape_and_pixel_problems_are_refused(patterns):
    import hyperspy.api as hs

    from stem2eds.predict.sources import as_scan

    with pytest.raises(InputError, match="1 navigation and 2 signal axes"):
        as_scan(hs.signals.Signal2D(patterns[0]))
    s = _signal(patterns)
    s.axes_manager.navigation_axes[1].scale = 2.0
    with pytest.raises(InputError, match="different pixel sizes"):
        as_scan(s)


def test_swapped_signal_axes_follow_the_data(patterns):
    """A signal whose x and y were swapped is the transposed scan, not the original."""
    from stem2eds.predict.sources import as_scan

    s = _signal(patterns).swap_axes(0, 1)
    scan = as_scan(s)
    assert scan.scan_shape == (14, 9)
    np.testing.assert_array_equal(scan.diffraction.read(np.array([1])), patterns[None, 1, 0])


def test_dask_reads_compute_only_the_rows_needed():
    import dask.array as da

    from stem2eds.io.scan import ArrayPatterns

    data = np.arange(6 * 4 * 3 * 3, dtype=np.uint16).reshape(6, 4, 3, 3)
    computed: list[int] = []

    def record(block, block_info=None):
        computed.append(block_info[0]["array-location"][0][0])
        return block

    lazy = da.from_array(data, chunks=(1, 4, 3, 3)).map_blocks(record, dtype=data.dtype)
    reader = ArrayPatterns(lazy)
    got = reader.read(np.array([9, 10, 13]))  # rows 2 and 3
    np.testing.assert_array_equal(got, data.reshape(-1, 3, 3)[[9, 10, 13]])
    assert sorted(set(computed)) == [2, 3]
    computed.clear()
    got = reader.read(np.array([1, 21]))  # rows 0 and 5: a sub-grid, not the rows between
    np.testing.assert_array_equal(got, data.reshape(-1, 3, 3)[[1, 21]])
    assert sorted(set(computed)) == [0, 5]


def test_dask_row_chunks_are_computed_once_for_small_blocks():
    import dask.array as da

    from stem2eds.io.scan import ArrayPatterns

    data = np.arange(6 * 4 * 3 * 3, dtype=np.float32).reshape(6, 4, 3, 3)
    computed: list[int] = []

    def record(block, block_info=None):
        computed.append(block_info[0]["array-location"][0][0])
        return block

    lazy = da.from_array(data, chunks=(3, 4, 3, 3)).map_blocks(record, dtype=data.dtype)
    reader = ArrayPatterns(lazy)
    flat = data.reshape(-1, 3, 3)
    for lo in range(0, 24, 2):  # blocks of 2 patterns: half a row each
        np.testing.assert_array_equal(reader.read(range(lo, lo + 2)), flat[lo:lo + 2])
    assert computed == [0, 3]  # each 3-row chunk once


def test_scan_sources_satisfy_the_protocol(scans, patterns):
    from stem2eds import ScanSource, open_bundle
    from stem2eds.predict.sources import ArrayScan

    with open_bundle(scans[1]) as bundle:
        assert isinstance(bundle, ScanSource)
    scan = ArrayScan(patterns)
    assert isinstance(scan, ScanSource)
    assert scan.path is None and scan.kind == "raw" and scan.json_attr("preprocess") is None


def test_py4dstem_datacube(run_dir, patterns, cli_prediction):
    py4dstem = pytest.importorskip("py4DSTEM")
    from stem2eds import load_run

    cube = py4dstem.DataCube(patterns.copy())
    cube.calibration.set_R_pixel_size(10.0)
    cube.calibration.set_R_pixel_units("A")
    cube.calibration.set_Q_pixel_size(0.01)
    cube.calibration.set_Q_pixel_units("A^-1")
    pred = load_run(run_dir).predict(cube, batch=7)
    np.testing.assert_allclose(pred.eds, cli_prediction.eds, atol=1e-6)
    assert pred.scan_step_nm == pytest.approx(1.0)
    from stem2eds.predict.sources import as_scan

    assert as_scan(cube).calibration.q_pixel_size == pytest.approx(0.1)


@pytest.mark.parametrize("fmt, name", [("tiff", "other.tif"), ("csv", "other.csv"),
                                       ("hspy", "other.hspy")])
def test_cli_predict_format(run_cli, run_dir, scans, cli_prediction, tmp_path, fmt, name):
    out = tmp_path / name
    code, stdout, err = run_cli("predict", run_dir, scans[1], "--out", out, "--format", fmt)
    assert code == 0, err
    assert stdout.strip() == str(out) and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing else left behind
    code, _, err = run_cli("predict", run_dir, scans[1], "--out", out, "--format", fmt)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("predict", run_dir, scans[1], "--out", out, "--format", fmt,
                           "--overwrite")
    assert code == 0, err


def test_cli_predict_format_refusals(run_cli, run_dir, scans, tmp_path):
    code, _, err = run_cli("predict", run_dir, scans[1], "--out", tmp_path / "x.h5",
                           "--format", "tiff")
    assert code == 2 and "must end in .tif or .tiff" in err
    code, _, err = run_cli("predict", run_dir, scans[1], "--out", run_dir / "x.csv",
                           "--format", "csv")
    assert code == 2 and "training run" in err
    assert list(tmp_path.iterdir()) == []


def test_array_scan_with_a_calibration_is_predicted_as_given(run_dir, patterns, cli_prediction):
    from stem2eds import ArrayScan, PixelCalibration, load_run

    scan = ArrayScan(patterns, PixelCalibration(0.8, 0.1, "nm", "1/nm", 300.0), name="lamella")
    pred = load_run(run_dir).predict(scan)
    np.testing.assert_allclose(pred.eds, cli_prediction.eds, atol=1e-6)
    assert (pred.scan_step_nm, pred.source_name) == (0.8, "lamella")
