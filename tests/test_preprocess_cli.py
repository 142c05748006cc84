"""``stem2eds preprocess`` on the command line: outputs, printed measurements, bad input."""

from __future__ import annotations

import json

import numpy as np

from stem2eds.formats.bundle import open_bundle
from stem2eds.preprocess import PreprocessSettings
from builders import make_bundle


def test_cli_writes_bundle_and_reports(tmp_path, run_cli):
    src = tmp_path / "raw.h5"
    make_bundle(src, rx=8, ry=6)
    out = tmp_path / "pre.h5"
    code, stdout, err = run_cli("preprocess", src, "--out", out, "--bin", "2",
                                "--scaling", "sqrt", "--crop", "1:7,0:5", "--quiet")
    assert code == 0, err
    assert "origin drift" in stdout and "probe radius" in stdout and "scale" in stdout
    with open_bundle(out) as pre:
        assert pre.diffraction.shape == (6, 5, 32, 32)
        s = PreprocessSettings.from_dict(pre.json_attr("preprocess"))
        assert s.bin_factor == 2 and s.scaling == "sqrt" and s.crop == (1, 7, 0, 5)
        assert s.scale > 0
    # a second scan reuses the first one's settings (and scale) from its bundle
    out2 = tmp_path / "pre2.h5"
    code, stdout, err = run_cli("preprocess", src, "--out", out2, "--settings", out, "--quiet")
    assert code == 0, err
    with open_bundle(out2) as again, open_bundle(out) as first:
        assert again.json_attr("preprocess")["scale"] == first.json_attr("preprocess")["scale"]
        np.testing.assert_allclose(again.diffraction[()], first.diffraction[()], atol=1e-6)
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"bin_factor": 4, "scale": 50.0}))
    code, _, err = run_cli("preprocess", src, "--out", tmp_path / "pre3.h5", "--settings", js,
                           "--quiet")
    assert code == 0, err
    with open_bundle(tmp_path / "pre3.h5") as pre:
        assert pre.json_attr("preprocess")["scale"] == 50.0
        assert pre.detector_shape == (16, 16)
    # the record a training run keeps: {"sources": [...], "settings": {...}}
    nested = tmp_path / "run_settings.json"
    nested.write_text(json.dumps({"sources": [str(src)], "settings": {"scale": 7.0}}))
    code, stdout, err = run_cli("preprocess", src, "--out", tmp_path / "pre4.h5",
                                "--settings", nested, "--scaling", "log", "--quiet")
    assert code == 0, err
    assert "scale 7" in stdout
    with open_bundle(tmp_path / "pre4.h5") as pre:
        s = pre.json_attr("preprocess")
        assert s["scale"] == 7.0 and s["scaling"] == "log"


def _assert_one_line_error(code, err, out_path, text):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], err
    assert not out_path.exists()
    assert not list(out_path.parent.glob(f".{out_path.name}*"))


def test_cli_bad_input_exits_2_with_one_line(tmp_path, run_cli):
    src = tmp_path / "raw.h5"
    make_bundle(src, rx=4, ry=4)
    out = tmp_path / "pre.h5"
    cases = [
        (("preprocess", tmp_path / "missing.h5", "--out", out), "no such file"),
        (("preprocess", src, "--out", out, "--crop", "0:9,0:2"), "not inside"),
        (("preprocess", src, "--out", out, "--crop", "rows"), "r0:r1,c0:c1"),
        (("preprocess", src, "--out", out, "--bin", "5"), "does not divide"),
        (("preprocess", src, "--out", out, "--eds-kernel", "4"), "odd"),
        (("preprocess", src, "--out", out, "--scale", "-1"), "scale must be positive"),
        (("preprocess", src, "--out", out, "--scaling", "cube"), "invalid choice"),
        (("preprocess", src, "--out", out, "--settings", tmp_path / "none.json"), "no such"),
    ]
    for args, text in cases:
        code, _, err = run_cli(*args)
        _assert_one_line_error(code, err, out, text)
    bad = tmp_path / "bad.json"
    bad.write_text('{"bin_factor": 4, "colour": "red"}')
    code, _, err = run_cli("preprocess", src, "--out", out, "--settings", bad)
    _assert_one_line_error(code, err, out, "colour")
    # a preprocessed bundle is not raw input
    code, _, err = run_cli("preprocess", src, "--out", tmp_path / "ok.h5", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("preprocess", tmp_path / "ok.h5", "--out", out)
    _assert_one_line_error(code, err, out, "expected a raw bundle")
