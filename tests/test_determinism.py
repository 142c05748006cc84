"""Same data, settings and seed: the same metrics on CPU, run to run.

Each run trains and predicts through the command line, as a user would,
into its own folder; the predictions and the metrics computed from them
must agree bitwise. A run with another seed must differ, so the comparison
can fail.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from builders import ELEMENTS, make_raw_scan


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("determinism")
    return (make_raw_scan(folder / "train.h5", seed=21),
            make_raw_scan(folder / "test.h5", seed=22))


def _train_predict_score(run_cli, scans, folder: Path, model: str, seed: int):
    """(predicted EDS (E, Rx, Ry), metrics dict) of one train + predict run."""
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.metrics import element_metrics

    train_scan, test_scan = scans
    run = folder / f"{model}_{seed}"
    code, _, err = run_cli("train", train_scan, "--out", run, "--model", model, "--epochs", "3",
                           "--seed", seed, "--bin", "1", "--batch-size", "16", "--lr", "3e-3",
                           "--device", "cpu", "--threads", "2", "--quiet")
    assert code == 0, err
    out = folder / f"pred_{model}_{seed}.h5"
    code, _, err = run_cli("predict", run, test_scan, "--out", out)
    assert code == 0, err
    with h5py.File(out, "r") as f:
        predicted = np.stack([f["eds"][el][()] for el in ELEMENTS])
    with open_bundle(test_scan) as scan:
        actual = scan.eds(list(ELEMENTS))
    return predicted, element_metrics(predicted, actual, ELEMENTS)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["radial", "paper"])
def test_same_seed_same_metrics(run_cli, scans, tmp_path, model):
    first, metrics_1 = _train_predict_score(run_cli, scans, tmp_path / "a", model, seed=3)
    second, metrics_2 = _train_predict_score(run_cli, scans, tmp_path / "b", model, seed=3)
    np.testing.assert_array_equal(first, second)
    assert metrics_1 == metrics_2          # bitwise: every float identical

    other, metrics_3 = _train_predict_score(run_cli, scans, tmp_path / "c", model, seed=4)
    assert not np.array_equal(first, other), "seed has no effect: the comparison cannot fail"
    assert metrics_3 != metrics_1
