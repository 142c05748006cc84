"""Report figures and the self-contained HTML page, on synthetic arrays."""

import base64
import json
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


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed; "
                    "the report's rendering in a real browser is not checked")
def test_report_renders_in_headless_chromium(tmp_path):
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
