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
