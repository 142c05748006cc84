"""Preprocessing settings and run.json fields read from files are validated.

``run.json``'s ``preprocess`` table, a training configuration's
``[preprocess]`` table and a settings JSON are untrusted: a value of the wrong
type, NaN or infinity is an InputError naming the setting (exit 2, one line),
never an internal error and never silently accepted. Errors about run.json
name its field (``'preprocess.scale'``), not a flag the command does not have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from builders import make_raw_scan, small_config
from stem2eds.errors import InputError
from stem2eds.preprocess.settings import PreprocessSettings, load_settings, run_settings

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(raw bundle, finished one-epoch training run on a 32x32 detector, bin 1)."""
    from stem2eds.train.fit import train

    folder = tmp_path_factory.mktemp("settings_validation")
    scan = make_raw_scan(folder / "scan.h5", seed=3)
    run = train([scan], folder / "run", small_config(max_epochs=1), quiet=True)
    return scan, Path(run)


def _edited_run(run: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``run`` whose run.json went through ``edit(info)`` (NaN/Infinity allowed)."""
    target = tmp_path / "run"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("logs", "preprocessed",
                                                               "checkpoints"))
    info = json.loads((target / "run.json").read_text())
    edit(info)
    (target / "run.json").write_text(json.dumps(info))
    return target


def _assert_one_line_error(code: int, err: str, *texts: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    for text in texts:
        assert text in lines[0], err
    return lines[0]


def _set(section: str | None, key: str, value):
    def edit(info):
        (info[section] if section else info)[key] = value
    return edit


# -- run.json preprocess values: wrong types, non-finite, out of range ------------------
BAD_PREPROCESS = [
    ("bin_factor", "abc"), ("bin_factor", INF), ("bin_factor", None), ("bin_factor", "4"),
    ("bin_factor", 0), ("beam_radius", "x"), ("beam_radius", NAN), ("beam_radius", INF),
    ("beam_radius", -1), ("scale", "1"), ("scale", INF), ("scale", NAN), ("scale", None),
    ("dose_reference", "x"), ("dose_reference", NAN), ("dose_reference", INF),
    ("dose_ceiling", "yes"), ("detector_shape", [32]), ("detector_shape", "32x32"),
    ("detector_shape", 32), ("detector_shape", [32, 32, 1]), ("crop", "0:10,0:10"),
    ("crop", ["a", 1, 2, 3]), ("crop", 5), ("eds_sigma", NAN), ("eds_sigma", -1.0),
    ("eds_sigma", 0), ("eds_sigma", 1e9), ("eds_sigma", "x"), ("probe_radius", NAN),
    ("beam_margin", "x"), ("scale_percentile", INF), ("eds_kernel", 4.5),
    ("scaling", ["log"]),
]


@pytest.mark.parametrize("key, value", BAD_PREPROCESS, ids=[f"{k}={v!r}" for k, v in
                                                            BAD_PREPROCESS])
def test_bad_run_json_preprocess_value_is_one_line_naming_the_field(
        finished_run, tmp_path, run_cli, key, value):
    scan, run = finished_run
    broken = _edited_run(run, tmp_path, _set("preprocess", key, value))
    out = tmp_path / "pred.h5"
    code, _, err = run_cli("predict", broken, scan, "--out", out, "--quiet")
    line = _assert_one_line_error(code, err, "run.json", f"'preprocess.{key}'")
    assert "--" not in line.split("run.json", 1)[1], "predict has no such flag"
    assert not out.exists()


def test_run_json_messages_name_no_flags_predict_lacks(finished_run, tmp_path, run_cli):
    """Formerly "preprocessing --scale is not set", "--dose-reference must be positive"."""
    scan, run = finished_run
    for key, value, text in (("scale", None, "must hold the scale fitted"),
                             ("dose_reference", NAN, "must be positive and finite"),
                             ("dose_ceiling", "yes", "must be true or false")):
        broken = _edited_run(run, tmp_path / key, _set("preprocess", key, value))
        code, _, err = run_cli("predict", broken, scan, "--out", tmp_path / "p.h5", "-q")
        line = _assert_one_line_error(code, err, f"run.json field 'preprocess.{key}' {text}")
        assert "--scale" not in line and "--dose" not in line


def test_detector_shape_of_three_numbers_is_not_a_detector_mismatch(finished_run, tmp_path):
    """[32, 32, 1] was reported as "detector is 32x32 but the settings were made for 32x32"."""
    from stem2eds.formats.rundir import read_run_info

    _, run = finished_run
    broken = _edited_run(run, tmp_path, _set("preprocess", "detector_shape", [32, 32, 1]))
    with pytest.raises(InputError, match=r"'preprocess.detector_shape' must be two positive"):
        read_run_info(broken)


# -- other run.json fields -----------------------------------------------------------------
def test_duplicated_element_is_refused(finished_run, tmp_path, run_cli):
    scan, run = finished_run
    broken = _edited_run(run, tmp_path, lambda info: info.update(
        elements=[info["elements"][0]] * len(info["elements"])))
    code, _, err = run_cli("predict", broken, scan, "--out", tmp_path / "p.h5", "-q")
    _assert_one_line_error(code, err, "run.json field 'elements' must not name an element twice")


@pytest.mark.parametrize("value", ["false", "no", 1, 0, [True]])
def test_filter_predictions_must_be_a_boolean(finished_run, tmp_path, value):
    from stem2eds.formats.rundir import RunDir

    _, run = finished_run
    broken = _edited_run(run, tmp_path, _set(None, "filter_predictions", value))
    with pytest.raises(InputError, match="'filter_predictions' must be true or false"):
        RunDir(broken).info()


@pytest.mark.parametrize("value", [True, False, None, "absent"])
def test_filter_predictions_boolean_null_or_absent_still_loads(finished_run, tmp_path, value):
    from stem2eds.formats.rundir import RunDir

    _, run = finished_run
    broken = _edited_run(run, tmp_path, (lambda info: info.pop("filter_predictions"))
                         if value == "absent" else _set(None, "filter_predictions", value))
    assert RunDir(broken).info()["status"] == "complete"


def test_input_shape_must_be_the_binned_detector(finished_run, tmp_path, run_cli):
    """[4096, 4096] made torch allocate 388 GB before the weights were checked."""
    scan, run = finished_run
    broken = _edited_run(run, tmp_path, _set(None, "input_shape", [4096, 4096]))
    code, _, err = run_cli("predict", broken, scan, "--out", tmp_path / "p.h5", "-q")
    _assert_one_line_error(code, err, "run.json field 'input_shape' must be [32, 32]")


def test_input_shape_follows_detector_and_bin_factor(finished_run, tmp_path):
    from stem2eds.formats.rundir import RunDir, read_run_info

    _, run = finished_run
    info = read_run_info(run)  # the run as train wrote it passes the rule
    assert info["input_shape"] == [32, 32] and info["preprocess"]["detector_shape"] == [32, 32]

    def rebinned(info):  # a consistent edit: 32x32 binned by 2 is 16x16
        info["preprocess"]["bin_factor"] = 2
        info["input_shape"] = [16, 16]
    assert RunDir(_edited_run(run, tmp_path / "a", rebinned)).info()
    # an old run.json without detector_shape: nothing to compare with
    assert RunDir(_edited_run(run, tmp_path / "b", lambda info: info["preprocess"].pop(
        "detector_shape"))).info()
    with pytest.raises(InputError, match="'input_shape' must be \\[16, 16\\]"):
        RunDir(_edited_run(run, tmp_path / "c", _set("preprocess", "bin_factor", 2))).info()


@pytest.mark.parametrize("text, why", [
    ('{"format": "stem2eds-run", "n_outputs": ' + "9" * 5000 + "}", "digits"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
])
def test_run_json_that_json_cannot_convert_is_an_input_error(finished_run, tmp_path,
                                                             run_cli, text, why):
    scan, run = finished_run
    broken = _edited_run(run, tmp_path, lambda info: None)
    (broken / "run.json").write_text(text)
    code, _, err = run_cli("predict", broken, scan, "--out", tmp_path / "p.h5", "-q")
    _assert_one_line_error(code, err, "run.json is not valid JSON", why)


# -- the settings themselves (any source) ----------------------------------------------------
STILL_VALID = [
    {}, {"bin_factor": 4.0}, {"bin_factor": np.int64(2)}, {"eds_kernel": 3, "origin_sample": 0},
    {"crop": [0, 10, 0, 10]}, {"crop": (0.0, 10, 0, 10)}, {"detector_shape": [64, 64]},
    {"eds_sigma": 1.5}, {"eds_sigma": None}, {"scale": 1}, {"scale": np.float32(3.5)},
    {"beam_radius": 0}, {"beam_radius": None}, {"dose_reference": 0.02},
    {"scale_percentile": 100.0}, {"probe_radius": 0.0}, {"dose_ceiling": False},
    {"bin_factor": 4, "scale": 120.0, "beam_radius": 5.0},  # a run.json before dose_reference
]


@pytest.mark.parametrize("data", STILL_VALID, ids=[str(d) for d in STILL_VALID])
def test_valid_settings_are_still_accepted(data):
    settings = PreprocessSettings.from_dict(data)
    again = PreprocessSettings.from_dict(json.loads(json.dumps(settings.to_dict(),
                                                                        default=float)))
    assert again == settings
    assert all(isinstance(v, int) for v in (settings.bin_factor, settings.eds_kernel,
                                            settings.origin_sample))
    for key in ("crop", "detector_shape"):
        value = getattr(settings, key)
        assert value is None or all(type(v) is int for v in value)


@pytest.mark.parametrize("key, value", BAD_PREPROCESS + [
    ("beam_radius", 10**400), ("beam_radius", True), ("origin_sample", -1),
    ("origin_fit", "bogus"), ("centring", None), ("eds_filter", 3), ("scale_percentile", 0),
    ("beam_margin", -1.0), ("crop", [0, 1.5, 0, 2]), ("detector_shape", [0, 64]),
])
def test_bad_setting_names_the_setting_in_backquotes(key, value):
    if key == "scale" and value is None:
        return  # a valid setting (fitted on the scan); only a run must hold it
    with pytest.raises(InputError) as exc:
        PreprocessSettings.from_dict({key: value})
    message = str(exc.value)
    assert message.startswith(f"`{key}` ") and "--" not in message
    assert len(message) < 200 and "\n" not in message


def test_run_settings_names_run_json_fields():
    with pytest.raises(InputError, match=r"^x/run.json: run.json field 'preprocess.scale' "
                                         r"must hold the scale"):
        run_settings({"preprocess": {"bin_factor": 2}}, "x/run.json")
    with pytest.raises(InputError, match="run.json field 'preprocess': unknown preprocessing "
                                         "setting\\(s\\) colour"):
        run_settings({"preprocess": {"scale": 1.0, "colour": 1}})
    assert run_settings({"preprocess": {"scale": 2.0}}).scale == 2.0


def test_settings_json_that_json_cannot_convert_is_an_input_error(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(InputError, match="nested too deeply"):
        load_settings(deep)
    huge = tmp_path / "huge.json"
    huge.write_text('{"bin_factor": ' + "1" * 5000 + "}")
    with pytest.raises(InputError, match="the settings file is not valid JSON"):
        load_settings(huge)


# -- a training configuration's [preprocess] table -------------------------------------------
@pytest.mark.parametrize("line, setting", [
    ("beam_radius = nan", "beam_radius"), ("beam_radius = inf", "beam_radius"),
    ("eds_sigma = nan", "eds_sigma"), ("eds_sigma = -1.0", "eds_sigma"),
    ("scale = inf", "scale"), ("dose_reference = inf", "dose_reference"),
    ('detector_shape = "64x64"', "detector_shape"), ("crop = 5", "crop"),
])
def test_bad_training_config_preprocess_value(tmp_path, run_cli, line, setting):
    config = tmp_path / "c.toml"
    config.write_text(f"[preprocess]\n{line}\n")
    code, _, err = run_cli("train", tmp_path / "scan.h5", "--out", tmp_path / "run",
                           "--config", config, "--quiet")
    # the setting as the user wrote it in the file, not as a flag they never typed
    _assert_one_line_error(code, err, "c.toml", f"`{setting}`")
    assert "--" not in err, err
    assert not (tmp_path / "run").exists()
    from stem2eds.train.config import TrainConfig

    with pytest.raises(InputError, match=f"`{setting}`"):
        TrainConfig.from_toml(config)


def test_non_finite_preprocess_flags_are_refused(tmp_path, run_cli):
    out = tmp_path / "pre.h5"
    for flag, value, text in (("--scale", "inf", "scale must be positive and finite"),
                              ("--eds-sigma", "nan", "--eds-sigma must be positive"),
                              ("--beam-radius", "nan", "--beam-radius must be a finite")):
        code, _, err = run_cli("preprocess", tmp_path / "raw.h5", "--out", out, flag, value)
        _assert_one_line_error(code, err, text)
        assert not out.exists()
