"""Cross-scan experiments end to end on tiny simulated scans."""

import json
import os

import h5py
import numpy as np
import pytest

from stem2eds.experiments.crossscan import plan, recompute_metrics
from stem2eds.experiments.common import load_targets, score_scan

from builders import SERIES_ELEMENTS as ELEMENTS, make_series  # noqa: E402


def test_plan_strategies():
    assert [(p.train, p.test) for p in plan("extrapolate", 4)] == [([0], [1, 2, 3])]
    assert [(p.train, p.test) for p in plan("interpolate", 4)] == [([0, 3], [1, 2])]
    loo = plan("leave-one-out", 3)
    assert [(p.train, p.test) for p in loo] == [([1, 2], [0]), ([0, 2], [1]), ([0, 1], [2])]
    (rand,) = plan("random", 2)
    assert rand.train == rand.test == [0, 1] and rand.held_out_positions


@pytest.mark.parametrize("strategy,n", [("extrapolate", 1), ("interpolate", 2),
                                        ("leave-one-out", 1), ("random", 0)])
def test_plan_needs_enough_scans(strategy, n):
    from stem2eds.errors import InputError

    with pytest.raises(InputError):
        plan(strategy, n)


def test_cli_bad_input_exits_2(tmp_path, run_cli):
    paths = make_series(tmp_path, n_scans=2, shape=(4, 4))
    code, _, err = run_cli("experiment", "--strategy", "interpolate", "--out", tmp_path / "r",
                           *paths)
    assert code == 2 and "at least 3" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("experiment", "--strategy", "extrapolate", "--out", tmp_path / "r",
                           paths[0], paths[0])
    assert code == 2 and "more than once" in err
    code, _, err = run_cli("experiment", "--strategy", "sideways", "--out", tmp_path / "r",
                           *paths)
    assert code == 2
    assert not (tmp_path / "r" / "metrics.json").exists()
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli("experiment", "--strategy", "extrapolate", "--out",
                           tmp_path / "file", *paths)
    assert code == 2 and "not a folder" in err


# -- end to end --------------------------------------------------------------------
def _get(d, dotted):
    for key in dotted.split("."):
        d = d[key]
    return d


def _assert_agree(stored, recomputed):
    for scan, by_metric in recomputed.items():
        for metric, values in by_metric.items():
            if metric == "haadf":
                for k, v in values.items():
                    assert stored[scan]["haadf"][k] == pytest.approx(v, rel=1e-6, abs=1e-9,
                                                                     nan_ok=True) or v != v
                continue
            for el, v in values.items():
                s = stored[scan][metric][el]
                if v != v:  # NaN is stored as null
                    assert s is None
                else:
                    assert s == pytest.approx(v, rel=1e-6, abs=1e-9), (scan, metric, el)


@pytest.mark.slow
def test_extrapolate_end_to_end_and_resume(tmp_path, run_cli):
    paths = make_series(tmp_path)
    out = tmp_path / "run"
    code, stdout, err = run_cli("experiment", "--strategy", "extrapolate", "--out", out,
                                "--epochs", "2", "--targets", "eds,haadf", "--quiet", *paths)
    assert code == 0, err
    assert stdout.strip().endswith("report.html")
    m = json.loads((out / "metrics.json").read_text())
    assert m["strategy"] == "extrapolate" and m["elements"] == list(ELEMENTS)
    assert m["train_scans"] == ["0000"] and m["test_scans"] == ["0001", "0002"]
    for key in ("scans.0001.pearson.Ge", "scans.0002.mae.Te", "scans.0001.percent_error.O",
                "scans.0001.r2.Sb", "summary.pearson.O.mean", "summary.mae.Si.std",
                "calibrated.summary.pearson.Te.mean", "calibrated.scans.0002.mae.O",
                "baseline.summary.pearson.Sb.mean", "baseline.calibrated.summary.mae.O.mean",
                "truth.summary.pearson.O.mean", "truth.ceiling.pearson.O.mean",
                "scans.0001.haadf.mae"):
        _get(m, key)
    # metrics.json agrees with the predictions written beside it
    again = recompute_metrics(out)
    _assert_agree(m["scans"], again["raw"])
    _assert_agree(m["calibrated"]["scans"], again["calibrated"])
    _assert_agree(m["baseline"]["scans"], again["baseline"])
    with h5py.File(out / "predictions" / "0001.h5", "r") as f:
        assert f["eds"]["Ge"].shape == (12, 10) and "haadf" in f
        assert f.attrs["scan_name"] == "0001"
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"training_curves.png", "pred_vs_actual.png", "pearson_bars.png",
            "percent_error_bars.png", "mae_bars.png", "maps_0001.png", "correlation.png",
            "haadf_0001.png", "crystallinity_check.png"} <= figs
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") == len(m["figures"])
    # the calibration was fitted on the training scan's training positions only
    from stem2eds.analysis.calibrate import FittedCalibration, fit_calibration
    from stem2eds.predict.predictor import load_run

    # the trained model's run folder is named after the model (the default: radial)
    assert m["model"] == "radial"
    assert [(p["model_dir"], p["baseline_dir"]) for p in m["parts"]] == \
        [("models/extrapolate/radial", "models/extrapolate/ridge")]
    model = load_run(out / "models" / "extrapolate" / "radial")
    with np.load(out / "models" / "extrapolate" / "radial" / "split.npz") as z:
        val = z["val_mask_0"]
    tgt = load_targets(paths[0], model.settings, ELEMENTS)
    pred = model.predict_scan(paths[0]).eds
    refit = fit_calibration(pred[:, ~val], tgt.eds[:, ~val], ELEMENTS, "linear")
    stored = FittedCalibration.from_dict(m["calibrated"]["calibrations"]["extrapolate"])
    x = np.linspace(0, 1, 7)[None].repeat(5, 0)
    np.testing.assert_allclose(stored.apply(x), refit.apply(x), atol=1e-6)

    # the default model filters its EDS maps; the ridge baseline does not, and
    # metrics.json also scores the ridge through the same filter
    from stem2eds.formats.prediction import read_prediction

    assert m["filter_predictions"] is True and model.filter_predictions
    for scan in ("0001", "0002"):
        base_eds = read_prediction(out / "predictions" / "baseline" / f"{scan}.h5").eds
        with h5py.File(out / "targets" / f"{scan}.h5", "r") as f:
            target = load_targets(paths[int(scan)], model.settings, ELEMENTS)
            assert np.allclose(target.eds, np.stack([f["eds"][e][()] for e in ELEMENTS]))
        again = score_scan(model.finish_eds(base_eds, filtered=True), None, target, ELEMENTS)
        for el in ELEMENTS:
            assert m["baseline"]["filtered"]["scans"][scan]["pearson"][el] == \
                pytest.approx(again["pearson"][el], abs=1e-6)
    assert "+ the radial model's EDS filter" in html

    # an interrupted/repeated run reuses the finished training runs
    weights = out / "models" / "extrapolate" / "radial" / "weights.safetensors"
    stamp = os.stat(weights).st_mtime_ns
    code, _, err = run_cli("experiment", "--strategy", "extrapolate", "--out", out,
                           "--epochs", "2", "--targets", "eds,haadf", "--quiet",
                           "--no-figures", *paths)
    assert code == 0, err
    assert os.stat(weights).st_mtime_ns == stamp
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["summary"] == m["summary"]


@pytest.mark.slow
def test_random_blocks_scores_validation_positions_only(tmp_path, run_cli):
    paths = make_series(tmp_path, n_scans=1, shape=(16, 16))
    out = tmp_path / "run"
    code, _, err = run_cli("experiment", "--strategy", "random", "--split", "blocks",
                           "--out", out, "--epochs", "1", "--calibration", "isotonic",
                           "--quiet", "--no-figures", *paths)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    with np.load(out / "models" / "random" / "radial" / "split.npz") as z:
        val = z["val_mask_0"]
    assert m["split"] == "blocks" and "blocks" in m["split_description"]
    assert m["evaluated_positions"]["0000"] == int(val.sum()) < val.size
    with h5py.File(out / "targets" / "0000.h5", "r") as f:
        np.testing.assert_array_equal(f["evaluated"][()].astype(bool), val)
    _assert_agree(m["scans"], recompute_metrics(out)["raw"])


@pytest.mark.slow
def test_leave_one_out_trains_one_model_per_scan(tmp_path, run_cli):
    paths = make_series(tmp_path, n_scans=2, shape=(8, 8))
    out = tmp_path / "run"
    code, _, err = run_cli("experiment", "--strategy", "leave-one-out", "--out", out,
                           "--epochs", "1", "--quiet", "--no-figures", *paths)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert [p["name"] for p in m["parts"]] == ["without_0", "without_1"]
    assert [p["train_scans"] for p in m["parts"]] == [["0001"], ["0000"]]
    assert m["test_scans"] == ["0000", "0001"]
    assert set(m["calibrated"]["calibrations"]) == {"without_0", "without_1"}
