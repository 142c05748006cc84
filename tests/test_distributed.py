"""Preprocessing and prediction-time preprocessing over a Dask LocalCluster of 2 processes."""

from __future__ import annotations

import numpy as np
import pytest

from stem2eds.formats.bundle import open_bundle
from stem2eds.preprocess import PreprocessSettings, iter_preprocessed, preprocess_bundle
from stem2eds.preprocess import executor
from builders import make_bundle


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                           dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.mark.timeout(180)
def test_cluster_results_equal_single_process(tmp_path, client, monkeypatch):
    src = tmp_path / "raw.h5"
    make_bundle(src, rx=14, ry=10)
    settings = PreprocessSettings(crop=(1, 13, 0, 9))
    # small tasks, so the 12 cropped rows make several tasks on both workers
    monkeypatch.setattr(executor, "TASK_PATTERNS", 20)
    local = preprocess_bundle(src, tmp_path / "local.h5", settings, quiet=True, batch=32)
    dist = preprocess_bundle(src, tmp_path / "dist.h5", settings, quiet=True, batch=32,
                             scheduler=client)
    assert dist == local
    with open_bundle(tmp_path / "local.h5") as a, open_bundle(tmp_path / "dist.h5") as b:
        np.testing.assert_array_equal(a.diffraction[()], b.diffraction[()])
        np.testing.assert_array_equal(a.file["calibration/origin"][()],
                                      b.file["calibration/origin"][()])
        np.testing.assert_array_equal(a.eds(), b.eds())
    # the prediction-time stream: the same blocks, in any order
    with open_bundle(src) as raw:
        one = dict(iter_preprocessed(raw, local, batch=30))
        many = dict(iter_preprocessed(raw, local, batch=30, client=client))
    flat_one = np.concatenate([one[k] for k in sorted(one)])
    flat_many = np.concatenate([many[k] for k in sorted(many)])
    np.testing.assert_array_equal(flat_one, flat_many)
    assert len(many) == len(executor.row_tasks((1, 13, 0, 9), 20))


def test_row_tasks_cover_the_box_once():
    tasks = executor.row_tasks((2, 11, 3, 8), 12)
    assert [start for start, _ in tasks] == [0, 10, 20, 30, 40]
    rows = [r for _, (a, b, _, _) in tasks for r in range(a, b)]
    assert rows == list(range(2, 11))
    assert executor.row_tasks((0, 3, 0, 50), 10)[1] == (50, (1, 2, 0, 50))


def test_register_is_refused_with_a_scheduler(tmp_path):
    from stem2eds.errors import InputError

    src = tmp_path / "raw.h5"
    make_bundle(src, rx=4, ry=4)
    with pytest.raises(InputError, match="`register`"):
        preprocess_bundle(src, tmp_path / "o.h5", quiet=True, register=True, scheduler="local")
    assert not (tmp_path / "o.h5").exists()
