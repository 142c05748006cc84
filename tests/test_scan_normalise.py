"""Per-scan normalisation (``model_params.normalise = "scan"``): training, prediction, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from stem2eds.errors import InputError
from stem2eds.features.normalise import (ScanReference, normalise_mode, per_scan, scan_reference,
                                         whole_scans_only)
from builders import make_raw_scan, small_config


def test_modes_and_the_older_booleans():
    from stem2eds.models.numpy_head import NumpyRingHead  # noqa: F401 - loads without torch
    from stem2eds.models.radial import RadialParams

    assert normalise_mode(True) == "pattern" and normalise_mode(False) == "none"
    assert RadialParams().normalise == "pattern"
    assert RadialParams(normalise=False).normalise == "none"
    assert RadialParams(normalise="scan").to_dict()["normalise"] == "scan"
    with pytest.raises(ValueError, match="normalise must be one of"):
        RadialParams(normalise="per-scan")
    assert whole_scans_only({"normalise": "scan"}) and not whole_scans_only({"normalise": True})
    from stem2eds.models import model_params
    assert model_params("radial", {"normalise": True}).normalise == "pattern"  # older runs
    with pytest.raises(InputError, match="normalise must be one of"):
        model_params("radial", {"normalise": "yes"})


def test_scan_reference_follows_the_dose_and_divides_each_scan():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 2.0, (30, 1, 8)), rng.uniform(0.1, 2.0, (20, 1, 8))
    assert scan_reference(3 * a) == pytest.approx(3 * scan_reference(a), rel=1e-4)
    blocks = ScanReference().add(a[:7]).add(a[7:])
    assert blocks.value == pytest.approx(scan_reference(a), rel=1e-12)
    out = per_scan(np.concatenate([a, 5 * b]), [30, 20])
    np.testing.assert_allclose(out[:30], a / scan_reference(a), rtol=1e-6)
    np.testing.assert_allclose(out[30:], b / scan_reference(b), rtol=1e-4)  # the 5x is gone
    with pytest.raises(ValueError, match="rows for scans"):
        per_scan(a, [10, 10])
    with pytest.raises(ValueError, match="no ring statistics"):
        ScanReference().value


def _scaled_copy(src: Path, dst: Path, factor: int) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f["diffraction"][...] = f["diffraction"][()] * factor
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from stem2eds.train.fit import train

    folder = tmp_path_factory.mktemp("scan_norm")
    scans = [make_raw_scan(folder / f"s{k}.h5", seed=20 + k, detector=32) for k in range(3)]
    out = {}
    for mode in ("scan", "none"):
        cfg = small_config(model_params={"normalise": mode})
        out[mode] = train(scans[:2], folder / f"run_{mode}", cfg, quiet=True)
    double = _scaled_copy(scans[2], folder / "double.h5", 2)
    return out, scans, double


def _predict(run, scan):
    from stem2eds.predict.predictor import load_run

    return load_run(run).predict(scan).eds


def test_a_scan_at_twice_the_dose_predicts_nearly_the_same(runs):
    out, scans, double = runs
    diff = {m: np.abs(_predict(out[m], scans[2]) - _predict(out[m], double)).max()
            for m in ("scan", "none")}
    # not exactly the same: values above the run's clip ceiling are clipped
    # differently at another dose (this toy scan clips many), but the
    # absolute level the "none" model sees moves it ten times as much
    assert diff["scan"] < 0.15 * diff["none"], diff


def test_progress_follows_the_statistics_pass(runs, tmp_path, capsys):
    from stem2eds.predict.bundle import predict_bundle

    out, scans, _ = runs
    predict_bundle(out["scan"], scans[2], tmp_path / "pred.h5", batch=16, quiet=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if ": " in line]
    assert lines and all(line.startswith("ring statistics of the scan: ") for line in lines)
    with h5py.File(scans[2], "r") as f:
        n = int(np.prod(f["diffraction"].shape[:2]))
    assert lines[-1].split(": ")[1].startswith(f"{n}/{n} ")
    assert len(lines) >= 3  # several blocks, reported as they are read


def test_numpy_and_torch_heads_agree(runs, tmp_path):
    out, scans, _ = runs
    torch_run = tmp_path / "torch_head"
    shutil.copytree(out["scan"], torch_run)
    (torch_run / "head.npz").unlink()
    np.testing.assert_allclose(_predict(torch_run, scans[2]), _predict(out["scan"], scans[2]),
                               atol=1e-5)


def test_frame_by_frame_prediction_is_refused(runs):
    from stem2eds.predict.predictor import load_run

    out, _, _ = runs
    predictor = load_run(out["scan"])
    with pytest.raises(InputError, match="whole scans only"):
        predictor.predict_raw(np.zeros((2, 32, 32), np.uint16), np.full((2, 2), 15.5), 2.0)


def test_training_off_the_fused_path_is_refused(runs, tmp_path):
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.fit import train

    _, scans, _ = runs
    cfg = small_config(model_params={"normalise": "scan"},
                       preprocess=PreprocessSettings(bin_factor=1, eds_kernel=3,
                                                     centring="full"))
    with pytest.raises(InputError, match="needs the fused ring statistics"):
        train(scans[:2], tmp_path / "run", cfg, quiet=True)


def test_libertem_predicts_a_scan_normalised_run_as_stem2eds_does(runs):
    """Statistics on the workers (StatsUDF), the scan's reference and the model here."""
    pytest.importorskip("libertem")
    from stem2eds.libertem import open_context, predict_dataset
    from stem2eds.libertem.udf import StatsUDF
    from stem2eds.predict.predictor import load_run

    out, scans, double = runs
    with open_context() as ctx:
        for scan in (scans[2], double):
            with h5py.File(scan, "r") as f:
                frames = f["diffraction"][()]
            ds = ctx.load("memory", data=frames, num_partitions=2)
            pred = predict_dataset(ctx, ds, out["scan"])
            np.testing.assert_allclose(pred.eds, _predict(out["scan"], scan), atol=1e-5)
        # the statistics themselves equal the predictor's of the same frames
        predictor = load_run(out["scan"])
        origins = np.full((*frames.shape[:2], 2), 15.5)
        res = ctx.run_udf(ds, StatsUDF(out["scan"], origins, 2.0))
        flat = frames.reshape(-1, *frames.shape[2:])
        expected = predictor.raw_statistics(flat, origins.reshape(-1, 2), 2.0)
        np.testing.assert_allclose(np.asarray(res["stats"].data).reshape(expected.shape),
                                   expected, rtol=1e-6)


def test_raw_statistics_need_the_fused_ring_statistics(runs, tmp_path):
    from stem2eds.predict.predictor import load_run
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.fit import train

    _, scans, _ = runs
    cfg = small_config(preprocess=PreprocessSettings(bin_factor=1, eds_kernel=3,
                                                     centring="full"))
    run = train(scans[:2], tmp_path / "full", cfg, quiet=True)
    with pytest.raises(InputError, match="does not start with ring statistics"):
        load_run(run).raw_statistics(np.zeros((2, 32, 32), np.uint16), np.full((2, 2), 15.5),
                                     2.0)
