"""The ``anomaly/<scan>.h5`` format: one module writes and reads it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from stem2eds.errors import InputError
from stem2eds.formats.anomaly_file import AnomalyFile, read_anomaly, write_anomaly


def _record(rng, grid=(5, 4), crystal=True) -> AnomalyFile:
    score = rng.normal(size=grid).astype(np.float32)
    crystallinity = rng.uniform(0, 9, grid).astype(np.float32)
    return AnomalyFile(
        score=score, flagged=score > 1.0, threshold=1.0,
        components={"uncertainty": rng.uniform(size=grid).astype(np.float32)},
        mean_flagged=np.ones((6, 6), np.float32), mean_typical=np.zeros((6, 6), np.float32),
        grain_mask=crystallinity > 6,
        crystallinity=crystallinity if crystal else None,
        crystalline=crystallinity > 5 if crystal else None,
        crystal_settings={"disk_radius": 1.5} if crystal else None)


def test_anomaly_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    record = _record(rng)
    write_anomaly(tmp_path / "a.h5", record)
    back = read_anomaly(tmp_path / "a.h5")
    for key in ("score", "flagged", "mean_flagged", "mean_typical", "grain_mask",
                "crystallinity", "crystalline"):
        np.testing.assert_array_equal(getattr(back, key), getattr(record, key))
    assert back.crystalline.dtype == bool and back.grain_mask.dtype == bool
    assert back.threshold == 1.0 and back.crystal_settings == {"disk_radius": 1.5}
    np.testing.assert_array_equal(back.components["uncertainty"],
                                  record.components["uncertainty"])
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]  # atomic: nothing else left


def test_files_without_the_crystallinity_map_still_read(tmp_path):
    write_anomaly(tmp_path / "old.h5", _record(np.random.default_rng(1), crystal=False))
    back = read_anomaly(tmp_path / "old.h5")
    assert back.crystallinity is None and back.crystalline is None
    assert back.crystal_settings is None


@pytest.mark.parametrize("damage, match", [
    ("missing", "no such anomaly file"),
    ("no score", "no 2D `score`"),
    ("3d score", "not a 2D dataset"),
    ("other shape", "`crystallinity` is"),
    ("not hdf5", "cannot read the anomaly file"),
])
def test_bad_anomaly_files_are_refused_in_one_line(tmp_path, damage, match):
    path = tmp_path / "a.h5"
    if damage == "not hdf5":
        path.write_bytes(b"not an HDF5 file")
    elif damage != "missing":
        with h5py.File(path, "w") as f:
            if damage == "3d score":
                f["score"] = np.zeros((2, 3, 4), np.float32)
            elif damage == "other shape":
                f["score"] = np.zeros((3, 4), np.float32)
                f["crystallinity"] = np.zeros((4, 3), np.float32)
            else:
                f["flagged"] = np.zeros((3, 4), np.uint8)
    with pytest.raises(InputError, match=match):
        read_anomaly(path)
