"""Prediction on a 2-worker Dask LocalCluster equals prediction in one process.

Ring models (``ridge``, and ``radial`` normalised per scan) get their ring
statistics computed on the workers (only those travel); other models
(``angular``) get preprocessed patterns from the workers. The run crops the scan and fits the origins on a
sub-grid; small tasks make several blocks on both workers.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from stem2eds.preprocess import PreprocessSettings, executor
from builders import make_raw_scan, small_config

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client():
    from stem2eds.preprocess.distributed import dask_client

    with dask_client("local", workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist_predict")
    make_raw_scan(folder / "train.h5", seed=11)
    make_raw_scan(folder / "other.h5", seed=12)
    return folder


def _train(folder, model: str, epochs: int = 2):
    """The run of ``model`` on the training scan (trained once per module).

    ``radial_scan``: ``radial`` normalised per scan (the statistics of the
    whole scan come back from the workers before the model runs).
    """
    from stem2eds.train.fit import train

    if (folder / f"run_{model}" / "run.json").exists():
        return folder / f"run_{model}"
    params = {"normalise": "scan"} if model == "radial_scan" else {}
    cfg = small_config(model=model.removesuffix("_scan"), max_epochs=epochs, model_params=params,
                       preprocess=PreprocessSettings(bin_factor=2, eds_kernel=3,
                                                     origin_sample=40, crop=(1, 11, 0, 9)))
    return train([folder / "train.h5"], folder / f"run_{model}", cfg, quiet=True)


def _maps(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {f"eds/{el}": f["eds"][el][()] for el in f["eds"]}
        for key in ("haadf", "ood"):
            if key in f:
                out[key] = f[key][()]
    return out


@pytest.mark.parametrize("model", ["ridge", "angular", "radial_scan"])
def test_cluster_prediction_equals_one_process(scans, client, model, monkeypatch, tmp_path):
    from stem2eds.predict.bundle import predict_bundle
    from stem2eds.predict.predictor import load_run

    run = _train(scans, model)
    monkeypatch.setattr(executor, "TASK_PATTERNS", 20)  # 10 rows of 9: 5 tasks
    one = predict_bundle(run, scans / "other.h5", tmp_path / "one.h5")
    many = predict_bundle(run, scans / "other.h5", tmp_path / "many.h5", scheduler=client)
    ref, got = _maps(one), _maps(many)
    assert sorted(ref) == sorted(got) and ref["eds/Ge"].shape == (10, 9)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], atol=1e-6, rtol=1e-6, err_msg=key)
    # the Python API's client= takes the same path
    pred = load_run(run).predict(scans / "other.h5", client=client)
    np.testing.assert_allclose(pred.eds[0], ref["eds/Ge"], atol=1e-6)


def test_workers_return_ring_statistics_only(scans, client, monkeypatch):
    """A ring model's cluster blocks bring back (n, S * R) statistics, equal to one process's."""
    from stem2eds.features.cluster import ClusterBlock, iter_cluster_blocks
    from stem2eds.features.stream import iter_raw_blocks
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.predict.predictor import load_run

    settings = load_run(_train(scans, "ridge")).settings
    monkeypatch.setattr(executor, "TASK_PATTERNS", 20)
    stats = ("mean", "std")
    with open_bundle(scans / "other.h5") as scan:
        local = {start: block for start, block in iter_raw_blocks(scan, settings, batch=18)}
        ref = np.concatenate([local[k].ring_features(settings, stats) for k in sorted(local)])
        blocks = list(iter_cluster_blocks(scan, settings, 18, client))
        assert all(isinstance(b, ClusterBlock) for _, b in blocks)
        assert [s for s, _ in blocks] == [s for s, _ in executor.row_tasks((1, 11, 0, 9))]
        got = [b.ring_features(settings, stats) for _, b in blocks]
    geometry = blocks[0][1].geometry(settings, stats)
    assert all(g.shape == (len(b), geometry.n_features) for g, (_, b) in zip(got, blocks))
    np.testing.assert_array_equal(np.concatenate(got), ref)
    origins = np.concatenate([local[k].origins for k in sorted(local)])
    np.testing.assert_array_equal(np.concatenate([b.origins for _, b in blocks]), origins)


def test_raw_patterns_and_early_stop(scans, client, monkeypatch):
    """The GPU path asks the raw patterns; a consumer may stop after any block."""
    from stem2eds.features.cluster import iter_cluster_blocks
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.predict.predictor import load_run

    settings = load_run(_train(scans, "ridge")).settings
    monkeypatch.setattr(executor, "TASK_PATTERNS", 20)
    with open_bundle(scans / "other.h5") as scan:
        stream = iter_cluster_blocks(scan, settings, 18, client)
        start, block = next(stream)
        np.testing.assert_array_equal(block.patterns, scan.diffraction[1:3, 0:9].reshape(
            18, *scan.detector_shape))
        next(stream)
        stream.close()  # cancels what is in flight; the cluster goes on serving
    assert client.submit(sum, [1, 2]).result() == 3
