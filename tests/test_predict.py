"""Prediction: load_run, Predictor, predict_bundle, the CLI, refusing bad run folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from stem2eds.errors import InputError
from builders import ELEMENTS, make_raw_scan, small_config


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scans")
    return (make_raw_scan(folder / "train.h5", seed=11),
            make_raw_scan(folder / "other.h5", seed=12, scan_shape=(9, 14)))


@pytest.fixture(scope="module")
def run_dir(scans, tmp_path_factory) -> Path:
    from stem2eds.train.fit import train

    return train([scans[0]], tmp_path_factory.mktemp("run") / "run",
                 small_config(targets=("eds", "haadf"), max_epochs=3), quiet=True)


def test_predict_scan_shapes_and_ranges(run_dir, scans):
    from stem2eds.predict.predictor import load_run

    predictor = load_run(run_dir)
    assert predictor.elements == list(ELEMENTS)
    assert predictor.targets == ("eds", "haadf")
    assert predictor.settings.scale > 0
    pred = predictor.predict_scan(scans[1])
    assert pred.scan_shape == (9, 14)
    assert pred.eds.shape == (3, 9, 14) and pred.eds.dtype == np.float32
    assert pred.eds.min() >= 0 and pred.eds.max() <= 1
    assert pred.haadf.shape == (9, 14) and pred.haadf.min() >= 0
    # HAADF comes back in the training data's units (about 5 + 10 * mean Z here)
    assert 100 < np.median(pred.haadf) < 1000


def test_batch_size_does_not_change_predictions(run_dir, scans):
    from stem2eds.predict.predictor import load_run

    predictor = load_run(run_dir)
    a = predictor.predict_scan(scans[1], batch=5)
    b = predictor.predict_scan(scans[1], batch=4096)
    np.testing.assert_allclose(a.eds, b.eds, atol=1e-6)
    np.testing.assert_allclose(a.haadf, b.haadf, rtol=1e-5)


def test_raw_and_preprocessed_bundle_agree(run_dir):
    """Predicting the raw scan (preprocessed on the fly) equals predicting its preprocessed file."""
    from stem2eds.predict.predictor import load_run

    info = json.loads((run_dir / "run.json").read_text())
    predictor = load_run(run_dir)
    raw = predictor.predict_scan(info["sources"][0])
    pre = predictor.predict_scan(run_dir / info["preprocessed"][0])
    np.testing.assert_allclose(raw.eds, pre.eds, atol=1e-5)


def test_cli_predict_twice_is_identical(run_cli, run_dir, scans, tmp_path):
    outs = [tmp_path / f"pred{i}.h5" for i in range(2)]
    for out in outs:
        code, stdout, err = run_cli("predict", run_dir, scans[1], "--out", out, "--batch", "50")
        assert code == 0, err
        assert stdout.strip() == str(out)
    with h5py.File(outs[0], "r") as a, h5py.File(outs[1], "r") as b:
        assert [e.decode() if isinstance(e, bytes) else e for e in a.attrs["elements"]] \
            == list(ELEMENTS)
        assert a.attrs["model"] == "radial" and a.attrs["scan_name"] == "other"
        assert a.attrs["run_dir"] == str(run_dir.resolve())
        assert "stem2eds_version" in a.attrs
        for el in ELEMENTS:
            assert a["eds"][el].shape == (9, 14) and a["eds"][el].dtype == np.float32
            assert np.array_equal(a["eds"][el][()], b["eds"][el][()])
        assert np.array_equal(a["haadf"][()], b["haadf"][()])


def test_crop_of_the_run_applies_to_predictions(scans, tmp_path):
    from stem2eds.predict.predictor import load_run
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.fit import train

    cfg = small_config(model="ridge", preprocess=PreprocessSettings(bin_factor=2, crop=(1, 9, 2, 10)))
    run = train([scans[0]], tmp_path / "run", cfg, quiet=True)
    pred = load_run(run).predict_scan(scans[1])
    assert pred.scan_shape == (8, 8) and pred.eds.shape == (3, 8, 8) and pred.haadf is None
    small = make_raw_scan(tmp_path / "small.h5", scan_shape=(5, 5))
    with pytest.raises(InputError, match="crop"):
        load_run(run).predict_scan(small)


def _broken_copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "broken"
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("preprocessed", "logs"))
    return target


@pytest.mark.parametrize("breakage, match", [
    (lambda r: (r / "run.json").unlink(), "no run.json"),
    (lambda r: (r / "run.json").write_text("{not json"), "not valid JSON"),
    (lambda r: (r / "weights.safetensors").write_bytes(b"garbage"), "weights"),
    (lambda r: (r / "weights.safetensors").unlink(), "no weights"),
    (lambda r: _edit_info(r, format_version=99), "not supported"),
    (lambda r: _edit_info(r, status="training"), "did not finish"),
    (lambda r: _edit_info(r, n_outputs=7), "weights|outputs"),
    (lambda r: _edit_info(r, model="nope"), "unknown model"),
])
def test_load_run_refuses_bad_folders(run_dir, tmp_path, breakage, match):
    from stem2eds.predict.predictor import load_run

    broken = _broken_copy(run_dir, tmp_path)
    breakage(broken)
    with pytest.raises(InputError, match=match):
        load_run(broken)


def _edit_info(run: Path, **changes) -> None:
    info = json.loads((run / "run.json").read_text())
    info.update(changes)
    (run / "run.json").write_text(json.dumps(info))


def test_cli_predict_errors(run_cli, run_dir, scans, tmp_path):
    code, _, err = run_cli("predict", tmp_path / "nowhere", scans[1], "--out", tmp_path / "p.h5")
    assert code == 2 and "no such run folder" in err
    other_det = make_raw_scan(tmp_path / "det48.h5", detector=48)
    code, _, err = run_cli("predict", run_dir, other_det, "--out", tmp_path / "p.h5",
                           "--no-transfer")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.h5").exists()
    assert not list(tmp_path.glob(".p.h5*"))


def test_radial_runs_filter_their_eds_maps_like_the_targets(run_dir, scans, tmp_path):
    """A ``radial`` run (filter on by default) = per-pattern outputs through the EDS filter.

    Checked against an independent filter (SciPy with OpenCV's 3-tap Gaussian
    and the same mirrored border), both in memory and in the file
    ``predict`` writes; HAADF stays unfiltered.
    """
    from scipy import ndimage

    from stem2eds.formats.bundle import open_bundle
    from stem2eds.predict.bundle import predict_bundle
    from stem2eds.predict.predictor import load_run

    predictor = load_run(run_dir)
    assert json.loads((run_dir / "run.json").read_text())["filter_predictions"] is True
    assert predictor.filter_predictions
    rx, ry = 9, 14
    with open_bundle(scans[1]) as scan:
        per_pattern = np.concatenate([v for _, v in predictor.iter_outputs(scan)])
    eds_raw = per_pattern[:, :3].T.reshape(3, rx, ry)
    k = predictor.settings.eds_kernel
    assert k == 3  # OpenCV's fixed 3-tap kernel for sigma 0 is [1, 2, 1] / 4
    taps = np.array([0.25, 0.5, 0.25])
    expected = ndimage.correlate1d(ndimage.correlate1d(eds_raw, taps, axis=1, mode="mirror"),
                                   taps, axis=2, mode="mirror")
    expected = np.clip(expected, 0, 1)
    pred = predictor.predict_scan(scans[1])
    np.testing.assert_allclose(pred.eds, expected, atol=2e-5)
    assert not np.allclose(pred.eds, eds_raw, atol=1e-4)  # the filter did something
    np.testing.assert_allclose(pred.haadf, per_pattern[:, 3].reshape(rx, ry), rtol=1e-6)
    out = predict_bundle(run_dir, scans[1], tmp_path / "p.h5", batch=7)
    with h5py.File(out, "r") as f:
        written = np.stack([f[f"eds/{el}"][()] for el in ELEMENTS])
        assert f"{k}x{k}" in f.attrs["eds_filter"]
    np.testing.assert_allclose(written, pred.eds, atol=1e-6)


@pytest.mark.parametrize("model,choice,expected", [("radial", "off", False),
                                                    ("ridge", "auto", False),
                                                    ("ridge", "on", True)])
def test_filter_choice_is_recorded_and_obeyed(scans, tmp_path, model, choice, expected):
    from stem2eds.predict.predictor import load_run
    from stem2eds.train.fit import train

    run = train([scans[0]], tmp_path / "run",
                small_config(model=model, max_epochs=1, filter_predictions=choice), quiet=True)
    predictor = load_run(run)
    assert predictor.filter_predictions is expected
    raw = predictor.predict_scan(scans[1], filtered=False).eds
    pred = predictor.predict_scan(scans[1])
    assert np.allclose(pred.eds, raw, atol=1e-6) is not expected


@pytest.mark.parametrize("field, value", [
    ("input_shape", [16, 0]), ("input_shape", [16, 5000]), ("input_shape", "16x16"),
    ("n_outputs", 0), ("n_outputs", 65), ("n_outputs", 2.5),
    ("elements", ["O", "Xx"]), ("elements", "O,Si"), ("elements", []),
    ("targets", ["haadf"]), ("model", "../../evil"), ("model", 3),
    ("model_params", [1, 2]), ("target_scales", {"haadf": -1.0}), ("preprocess", None),
])
def test_run_json_fields_are_validated_on_read(run_dir, tmp_path, field, value):
    from stem2eds.formats.rundir import RunDir
    from stem2eds.predict.predictor import load_run

    broken = _broken_copy(run_dir, tmp_path)
    _edit_info(broken, **{field: value})
    with pytest.raises(InputError) as exc:
        RunDir(broken).info()
    assert "run.json" in str(exc.value)
    assert field in str(exc.value) or "element" in str(exc.value)
    with pytest.raises(InputError):
        load_run(broken)
    assert not RunDir(broken).is_complete()


def test_run_json_bad_hyperparameters_name_the_setting_and_file(run_dir, tmp_path):
    from stem2eds.predict.predictor import load_run

    broken = _broken_copy(run_dir, tmp_path)
    info = json.loads((broken / "run.json").read_text())
    _edit_info(broken, model_params={**info["model_params"], "hidden": 10**9})
    with pytest.raises(InputError, match=r"run\.json.*hidden") as exc:
        load_run(broken)
    assert "model_params" in str(exc.value) or "hidden" in str(exc.value)
