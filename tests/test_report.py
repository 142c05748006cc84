"""Report figures and the self-contained HTML page, on synthetic arrays."""

import base64
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from stem2eds.report import figures, render_report, write_report

ELEMENTS = ["O", "Si", "Ge"]


def _fake_metrics(strategy="extrapolate"):
    per = {"pearson": {"O": 0.9, "Si": 0.1, "Ge": 0.5},
           "mae": {"O": 0.01, "Si": 0.02, "Ge": 0.03},
           "percent_error": {"O": 5.0, "Si": 10.0, "Ge": 7.0},
           "r2": {"O": 0.8, "Si": -0.1, "Ge": 0.2}}
    summary = {m: {el: {"mean": v, "std": 0.01, "n": 2} for el, v in d.items()}
               for m, d in per.items()}
    return {"strategy": strategy, "elements": ELEMENTS, "train_scans": ["s0"],
            "test_scans": ["s1", "s2"], "split": "random", "model": "radial",
            "scans": {"s1": per, "s2": per}, "summary": summary,
            "calibrated": {"scans": {"s1": per}, "summary": summary},
            "baseline": {"model": "ridge", "summary": summary},
            "figures": [{"file": "a.png", "title": "Maps", "caption": "real vs predicted"}]}


def _png(fig):
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def test_every_figure_builds_with_labels(rng, tmp_path):
    pred = rng.uniform(0, 0.5, size=(3, 12, 9))
    act = np.clip(pred + rng.normal(0, 0.05, pred.shape), 0, 1)
    figs = {
        "curves": figures.training_curves({"train": (np.arange(5), np.linspace(1, .2, 5)),
                                           "validation": (np.arange(5), np.linspace(1, .3, 5))}),
        "scatter": figures.predicted_vs_actual(pred.reshape(3, -1), act.reshape(3, -1), ELEMENTS),
        "bars": figures.grouped_bars({"CNN": {"O": (0.5, 0.1), "Si": (0.2, None)},
                                      "paper": {"O": (0.68, None)}}, ELEMENTS, "Pearson r",
                                     "Pearson", points={"CNN": {"O": [0.4, 0.6]}}),
        "maps": figures.maps_side_by_side(pred, act, ELEMENTS, "s1", 1.05, "nm"),
        "corr": figures.correlation_matrices(np.corrcoef(pred.reshape(3, -1)),
                                             np.corrcoef(act.reshape(3, -1)), ELEMENTS),
        "haadf": figures.haadf_comparison(pred[0], act[0], "s1", 1.05, "nm"),
        "diff": figures.diffraction_comparison(
            np.abs(pred[0] - act[0]), np.abs(pred[0] - act[0]) > 0.08,
            np.abs(pred[0] - act[0]) < 0.02, rng.uniform(size=(16, 16)),
            rng.uniform(size=(16, 16)), "s1", 1.05, "nm", 0.15, "1/nm", "|error| (at.%)"),
    }
    for name, fig in figs.items():
        labels = [ax.get_xlabel() + ax.get_ylabel() for ax in fig.axes if ax.get_visible()]
        assert any(labels), name
        figures.save_figure(fig, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    scatter_labels = {ax.get_xlabel() for ax in figs["scatter"].axes}
    assert {"actual O (at.%)", "actual Si (at.%)", "actual Ge (at.%)"} <= scatter_labels


def test_render_report_is_self_contained(rng):
    fig = figures.training_curves({"train": ([0, 1], [1.0, 0.5])})
    text = render_report(_fake_metrics(), [("Curves", "loss", _png(fig))])
    assert text.startswith("<!DOCTYPE html>")
    assert "src='http" not in text and "<script" not in text
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text).group(1)
    assert base64.b64decode(png)[:4] == b"\x89PNG"
    # the paper's extrapolation numbers and the definition of percentage error
    assert "0.680" in text and "0.017" in text
    assert "100 &times; MAE / mean(|actual|)" in text
    assert "0.900 &plusmn; 0.010" in text


def test_write_report_errors_and_output(tmp_path, run_cli):
    code, _, err = run_cli("report", tmp_path)
    assert code == 2 and "metrics.json" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "figures").mkdir()
    figures.save_figure(figures.training_curves({"train": ([0, 1], [1.0, 0.5])}),
                        tmp_path / "figures" / "a.png")
    (tmp_path / "metrics.json").write_text(json.dumps(_fake_metrics()))
    code, out, _ = run_cli("report", tmp_path)
    assert code == 0 and "report.html" in out
    assert "data:image/png;base64" in (tmp_path / "report.html").read_text()
    (tmp_path / "metrics.json").write_text("{not json")
    code, _, err = run_cli("report", tmp_path)
    assert code == 2


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(tmp_path):
    if _chromium() is None:
        if os.environ.get("STEM2EDS_REQUIRE_BROWSER"):
            pytest.fail("STEM2EDS_REQUIRE_BROWSER is set but Chromium is not installed")
        pytest.skip("Chromium is not installed; the report's rendering in a real browser "
                    "is not checked (set STEM2EDS_REQUIRE_BROWSER to fail instead)")
    (tmp_path / "figures").mkdir()
    fig = figures.grouped_bars({"CNN": {"O": (0.5, 0.1)}}, ELEMENTS, "Pearson r", "Pearson")
    figures.save_figure(fig, tmp_path / "figures" / "a.png")
    (tmp_path / "metrics.json").write_text(json.dumps(_fake_metrics()))
    report = write_report(tmp_path)
    shot = tmp_path / "shot.png"
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert "Comparison with the paper" in dom.stdout
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", f"--screenshot={shot}", "--window-size=1200,2000",
         report.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file()
    from PIL import Image
    img = np.asarray(Image.open(shot).convert("L"), float)
    # a rendered page has text and figures: far from a blank (uniform) screenshot
    assert img.std() > 10


# -- metrics.json: one reader/writer that validates -------------------------------------
def test_metrics_file_refuses_non_objects_and_missing_keys(tmp_path, run_cli):
    from stem2eds.errors import InputError
    from stem2eds.formats.metrics_file import read_metrics

    path = tmp_path / "metrics.json"
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match="not a JSON object") as info:
        read_metrics(tmp_path)
    assert str(path) in str(info.value)
    doc = _fake_metrics()
    del doc["elements"]
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="'elements'") as info:
        read_metrics(tmp_path)
    assert str(path) in str(info.value)
    code, _, err = run_cli("report", tmp_path)
    assert code == 2 and "metrics.json" in err and "'elements'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report.html").exists()
    sparse = {"strategy": "sparse", "elements": ["O"], "target_scan": "s"}
    path.write_text(json.dumps(sparse))
    with pytest.raises(InputError, match="'train_scans'"):
        read_metrics(tmp_path)
    # found by fuzzing: parts of the wrong shape, JSON nested 100,000 deep
    path.write_text(json.dumps({**_fake_metrics(), "parts": "x"}))
    with pytest.raises(InputError, match="'parts'"):
        read_metrics(tmp_path)
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(InputError, match="nested too deeply"):
        read_metrics(tmp_path)


def test_metrics_file_round_trip_writes_strict_json(tmp_path):
    from stem2eds.errors import InputError
    from stem2eds.formats.metrics_file import read_metrics, write_metrics

    doc = _fake_metrics()
    doc["summary"]["pearson"]["O"]["std"] = np.float32("nan")
    doc["evaluated"] = np.int64(7)
    write_metrics(tmp_path, doc)
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text
    back = read_metrics(tmp_path)
    assert back["summary"]["pearson"]["O"]["std"] is None and back["evaluated"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left
    with pytest.raises(InputError, match="'strategy'"):
        write_metrics(tmp_path, {"elements": ["O"]})


@pytest.mark.parametrize("name", ["../secret.png", "/etc/secret.png", "figures/../secret.png",
                                  "sub/a.png", "..", "", "figures/", "C:\\secret.png",
                                  "other/figures/a.png"])
def test_report_never_embeds_a_file_outside_run_figures(tmp_path, run_cli, name):
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    secret = figures.training_curves({"train": ([0, 1], [1.0, 0.5])})
    figures.save_figure(secret, tmp_path / "secret.png")
    doc = _fake_metrics()
    doc["figures"] = [{"file": name, "title": "x", "caption": "y"}]
    (run / "metrics.json").write_text(json.dumps(doc))
    code, _, err = run_cli("report", run)
    assert code == 2 and "metrics.json" in err and "figures[0].file" in err, err
    assert not (run / "report.html").exists()


def test_figure_entries_name_files_in_run_figures(tmp_path):
    from stem2eds.formats.metrics_file import figure_path

    # cross-scan runs list bare names, sparse runs "figures/<name>": both mean RUN/figures
    assert figure_path(tmp_path, "a.png") == tmp_path / "figures" / "a.png"
    assert figure_path(tmp_path, "figures/a.png") == tmp_path / "figures" / "a.png"
    (tmp_path / "figures").mkdir()
    figures.save_figure(figures.training_curves({"train": ([0, 1], [1.0, 0.5])}),
                        tmp_path / "figures" / "a.png")
    doc = _fake_metrics()
    doc["figures"] = [{"file": "figures/a.png", "title": "Curves", "caption": "loss"}]
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    assert write_report(tmp_path).read_text().count("data:image/png;base64") == 1


def test_report_labels_columns_by_model_name():
    text = render_report(_fake_metrics(), [])
    assert "<th>radial</th>" in text and "<th>radial calibrated</th>" in text
    assert "ridge baseline" in text and "CNN" not in text


# -- the interactive explorer's data, without a browser (tests/test_report_browser.py drives it) --
def test_explorer_grid_and_quantisation_round_trip(rng):
    from stem2eds.report.interactive import (MAX_CELL, MAX_GRID, MISSING, bin_factor,
                                             dequantise_map, quantise_map, sample_grid)

    rows, cols = sample_grid((256, 200))
    assert len(rows) <= MAX_GRID and len(cols) <= MAX_GRID and len(rows) >= MAX_GRID - 1
    assert np.diff(rows).min() == np.diff(rows).max() == np.diff(cols).min()
    assert sample_grid((12, 9)) == (list(range(12)), list(range(9)))
    assert 256 // bin_factor((256, 256)) <= MAX_CELL and bin_factor((32, 32)) == 1
    values = rng.uniform(0.1, 0.7, (9, 7))
    values[2, 3] = np.nan
    entry = quantise_map(values)
    back = dequantise_map(entry, values.shape)
    assert np.isnan(back[2, 3]) and np.nanmax(np.abs(back - values)) <= entry["scale"] / 2 + 1e-12
    assert np.frombuffer(base64.b64decode(entry["b64"]), "<u2")[2 * 7 + 3] == MISSING


def test_explorer_sprite_cells_are_the_grid_patterns(tmp_path):
    from PIL import Image

    from builders import make_report_run
    from stem2eds.report.interactive import quantise_patterns, sample_grid
    from stem2eds.report.interactive_data import collect_views

    run = tmp_path / "run"
    run.mkdir()
    maps = make_report_run(run, shape=(40, 30), crop=(3, 37, 1, 29))
    view, = collect_views(run, json.loads((run / "metrics.json").read_text()))
    rows, cols = sample_grid((34, 28))
    assert (view.sprite.rows, view.sprite.cols) == (rows, cols) and rows[1] - rows[0] == 2
    import io
    sheet = np.asarray(Image.open(io.BytesIO(view.sprite.png)))
    c = view.sprite.cell
    picked = np.stack([maps["patterns"][r + 3, k + 1] for r in rows for k in cols])
    cells, _ = quantise_patterns(picked, 1)
    a, b = 5, 7
    assert np.array_equal(sheet[a * c:(a + 1) * c, b * c:(b + 1) * c], cells[a * len(cols) + b])
    # the pattern-sum navigator is the cropped grid's total counts
    total = maps["patterns"][3:37, 1:29].sum((2, 3))
    assert np.allclose(view.layers["pattern sum"], total, rtol=1e-6)
    np.testing.assert_array_equal(view.predicted, maps["calibrated"])
    np.testing.assert_array_equal(view.std, maps["std"])


def test_report_keeps_the_maps_when_the_raw_scan_is_gone(tmp_path):
    from builders import make_report_run

    run = tmp_path / "run"
    run.mkdir()
    make_report_run(run)
    (tmp_path / "raw" / "s1.h5").unlink()
    text = write_report(run).read_text()
    assert "id='s2e-data'" in text and "diffraction patterns not shown" in text
