"""The demo: a tiny simulated series through all three experiments, and the index page."""

import json
import re

import pytest

from stem2eds.experiments.demo import DEMO_STRATEGIES, DemoSettings, run_demo


@pytest.mark.slow
def test_tiny_demo_writes_reports_and_index(tmp_path):
    settings = DemoSettings(n_scans=3, scan_shape=(8, 6), detector=32, bin_factor=2,
                            max_epochs=1, patience=1, figures=False)
    index = run_demo(tmp_path / "demo", settings, quiet=True)
    assert index == tmp_path / "demo" / "index.html"
    text = index.read_text()
    links = re.findall(r"href='([^']+)'", text)
    assert links == [f"{s}/report.html" for s in DEMO_STRATEGIES]
    for link in links:
        assert (index.parent / link).is_file()
    random = json.loads((tmp_path / "demo" / "random" / "metrics.json").read_text())
    assert random["train_scans"] == random["test_scans"] == ["scan_0033"]
    interp = json.loads((tmp_path / "demo" / "interpolate" / "metrics.json").read_text())
    assert interp["train_scans"] == ["scan_0033", "scan_0035"]
    assert interp["test_scans"] == ["scan_0034"]
    # extrapolation trains exactly what the random split trained: reused, not retrained
    models = tmp_path / "demo"
    for m in ("radial", "ridge"):  # the default model's folder is named after it
        first = json.loads((models / "random/models/random" / m / "run.json").read_text())
        again = json.loads((models / "extrapolate/models/extrapolate" / m / "run.json").read_text())
        assert first == again
    # the paper's interpolation numbers are shown next to this run's
    assert "0.681" in text
    # a second run reuses the simulated bundles and the trained models
    data = tmp_path / "demo" / "data" / "scan_0033.h5"
    stamp = data.stat().st_mtime_ns
    run_demo(tmp_path / "demo", settings, quiet=True)
    assert data.stat().st_mtime_ns == stamp


def test_demo_rejects_bad_options(tmp_path, run_cli):
    code, _, err = run_cli("demo", "--out", tmp_path / "d", "--epochs", "0")
    assert code == 2 and "--epochs" in err
    code, _, err = run_cli("demo", "--out", tmp_path / "d", "--scan-shape", "4x")
    assert code == 2 and len(err.strip().splitlines()) == 1
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli("demo", "--out", tmp_path / "file")
    assert code == 2 and "not a folder" in err
