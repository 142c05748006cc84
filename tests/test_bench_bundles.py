"""Tiled (virtual dataset) bundles of the scaling benchmark: opened, read directly, preprocessed
as a real bundle with the same patterns."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from stem2eds.formats.bundle import PixelCalibration, create_bundle, open_bundle
from stem2eds.io.stream import PatternReader, iter_blocks
from builders import make_bundle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_scaling():
    spec = importlib.util.spec_from_file_location(
        "bench_scaling", ROOT / "benchmarks" / "bench_scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiled(tmp_path, bench_scaling, rows=10, block_rows=4):
    block = tmp_path / "block.h5"
    _, pats, comp = make_bundle(block, rx=block_rows, ry=10, q=48)
    tiled = bench_scaling.tile_bundle(block, tmp_path / "tiled.h5", rows)
    index = np.arange(rows) % block_rows
    return tiled, pats[index], comp[:, index]


def test_tiled_bundle_is_read_directly_and_equals_its_block(tmp_path, bench_scaling,
                                                            monkeypatch):
    tiled, expected, comp = _tiled(tmp_path, bench_scaling)
    monkeypatch.chdir(tmp_path.parent)  # the source is found beside the bundle, not in the cwd
    with open_bundle(tiled) as scan:
        assert scan.diffraction.is_virtual
        assert scan.scan_shape == (10, 10)
        np.testing.assert_array_equal(scan.eds(), comp)
        reader = PatternReader(scan.diffraction)
        assert reader.direct
        flat = expected.reshape(100, 48, 48)
        for index in (range(100), [0, 39, 40, 41, 99], range(35, 85)):
            np.testing.assert_array_equal(reader.read(index), flat[list(index)])
        reader.close()
        blocks = dict(iter_blocks(scan.diffraction, (1, 9, 2, 7), batch=10))
        got = np.concatenate([blocks[k] for k in sorted(blocks)])
        np.testing.assert_array_equal(got, expected[1:9, 2:7].reshape(-1, 48, 48))


def test_mapped_blocks_equal_read_blocks_and_give_the_same_ring_features(tmp_path,
                                                                        bench_scaling):
    """Memory-mapped blocks (no copy) hold the patterns the copying reader reads."""
    from stem2eds.features import RingGeometry, ring_features
    from stem2eds.io.mapped import MappedPatterns

    tiled, expected, _ = _tiled(tmp_path, bench_scaling)
    flat = expected.reshape(100, 48, 48)
    geometry = RingGeometry((48, 48), 4, 3.0, "none", 500.0, ("mean", "std", "max"), 0.05)
    rng = np.random.default_rng(1)
    for path in (tmp_path / "block.h5", tiled):
        with open_bundle(path) as scan:
            n = scan.scan_shape[0] * scan.scan_shape[1]
            reader = PatternReader(scan.diffraction)
            assert reader.mappable
            for index in (range(n), [0, 19, 20, 21, n - 1], range(5, n - 3)):
                mapped = reader.map(index)
                assert isinstance(mapped, MappedPatterns) and len(mapped) == len(index)
                assert not mapped.buffer.flags.writeable
                np.testing.assert_array_equal(mapped.to_array(), flat[list(index)])
                origins = rng.uniform(20.0, 27.0, (len(index), 2))
                np.testing.assert_array_equal(ring_features(mapped, origins, geometry),
                                              ring_features(flat[list(index)], origins, geometry))
            reader.close()
            kept = PatternReader(scan.diffraction).map(range(3))
        # a block outlives its reader and its file handle: its map is its own
        np.testing.assert_array_equal(kept.to_array(), flat[:3])


def test_a_bundle_cut_short_while_read_is_refused_not_mapped(tmp_path, bench_scaling):
    """A block past the end of a file truncated after open raises InputError (no SIGBUS)."""
    from stem2eds.errors import InputError

    _tiled(tmp_path, bench_scaling)
    path = tmp_path / "block.h5"
    with open_bundle(path) as scan:
        reader = PatternReader(scan.diffraction)
        assert reader.mappable
        n = scan.scan_shape[0] * scan.scan_shape[1]
        last = int(reader.byte_offsets[n - 1])
        reader.map(range(n))  # whole: fine
        os.truncate(path, last + 10)  # another process cuts the file
        np.testing.assert_array_equal(reader.map(range(2)).to_array().shape, (2, 48, 48))
        with pytest.raises(InputError, match="truncated"):
            reader.map(range(n - 2, n))
        reader.close()


def test_unmappable_layouts_are_read_and_streamed_as_arrays(tmp_path):
    from types import SimpleNamespace

    from stem2eds.features.stream import MappedBlock, iter_raw_blocks
    from stem2eds.preprocess.settings import PreprocessSettings

    rng = np.random.default_rng(4)
    pats = rng.integers(0, 50, (3, 4, 16, 16), dtype=np.uint16)
    pats[:, :, 6:10, 6:10] += 4000  # a beam for the origin fit
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("gzip", data=pats, chunks=(1, 1, 16, 16), compression="gzip")
        f.create_dataset("plain", data=pats, chunks=(1, 1, 16, 16))
    settings = PreprocessSettings(bin_factor=2, scale=100.0, origin_fit="plane")
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert not PatternReader(f["gzip"]).mappable
        assert PatternReader(f["plain"]).mappable
        for name, kind in (("gzip", False), ("plain", True)):
            scan = SimpleNamespace(diffraction=f[name], scan_shape=(3, 4),
                                   detector_shape=(16, 16), path=tmp_path / "f.h5",
                                   kind="raw")
            blocks = list(iter_raw_blocks(scan, settings, batch=5))
            assert all(isinstance(b, MappedBlock) == kind for _, b in blocks)
            got = np.concatenate([b.patterns for _, b in blocks])
            np.testing.assert_array_equal(got, pats.reshape(12, 16, 16))


def test_virtual_dataset_of_a_compressed_source_falls_back_to_h5py(tmp_path):
    rng = np.random.default_rng(3)
    pats = rng.integers(0, 9000, (3, 4, 8, 6), dtype=np.uint16)
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f.create_dataset("d", data=pats, chunks=(1, 1, 8, 6), compression="gzip")
        f.create_dataset("plain", data=pats, chunks=(1, 1, 8, 6))
    for name, direct in (("d", False), ("plain", True)):
        layout = h5py.VirtualLayout((3, 4, 8, 6), np.uint16)
        source = h5py.VirtualSource("src.h5", name, shape=pats.shape)
        # a strided (non-box) piece: h5py reads it, the direct reader does not try
        layout[:, 0:4:2] = source[:, 0:4:2]
        layout[:, 1:4:2] = source[:, 1:4:2]
        with h5py.File(tmp_path / f"v_{name}.h5", "w") as f:
            f.create_virtual_dataset("x", layout)
        with h5py.File(tmp_path / f"v_{name}.h5", "r") as f:
            reader = PatternReader(f["x"])
            assert not reader.direct
            np.testing.assert_array_equal(reader.read(range(12)), pats.reshape(12, 8, 6))
        # one box per row: direct unless the source is compressed
        layout = h5py.VirtualLayout((3, 4, 8, 6), np.uint16)
        for i in range(3):
            layout[i] = source[2 - i]
        with h5py.File(tmp_path / f"w_{name}.h5", "w") as f:
            f.create_virtual_dataset("x", layout)
        with h5py.File(tmp_path / f"w_{name}.h5", "r") as f:
            reader = PatternReader(f["x"])
            assert reader.direct == direct
            np.testing.assert_array_equal(reader.read(range(12)), pats[::-1].reshape(12, 8, 6))
            reader.close()


def test_tiled_bundle_preprocesses_like_a_real_one(tmp_path, bench_scaling):
    from stem2eds.preprocess import preprocess_bundle

    tiled, expected, comp = _tiled(tmp_path, bench_scaling, rows=6, block_rows=4)
    real = tmp_path / "real.h5"
    with create_bundle(real, scan_shape=(6, 10), detector_shape=(48, 48), dtype=np.uint16,
                       elements=("Ge", "Sb", "Te"),
                       calibration=PixelCalibration(1.0, 0.02, "nm", "1/nm")) as b:
        b.write_patterns(0, expected.reshape(60, 48, 48))
        b.write_eds(dict(zip(("Ge", "Sb", "Te"), comp)))
    preprocess_bundle(real, tmp_path / "pre_real.h5", quiet=True)
    preprocess_bundle(tiled, tmp_path / "pre_tiled.h5", quiet=True)
    with open_bundle(tmp_path / "pre_real.h5") as a, open_bundle(tmp_path / "pre_tiled.h5") as b:
        np.testing.assert_array_equal(a.diffraction[()], b.diffraction[()])
        np.testing.assert_array_equal(a.eds(), b.eds())


def test_sizes_parse_and_label(bench_scaling):
    assert bench_scaling.parse_size("1k") == 1000
    assert bench_scaling.parse_size("1M") == 10**6
    assert bench_scaling.parse_size("2500") == 2500
    assert [bench_scaling.label(n) for n in (1000, 10**6, 2500)] == ["1k", "1M", "2500"]
    with pytest.raises(Exception, match="multiple"):
        bench_scaling.parse_size("150")


def test_tiled_bundle_must_lie_beside_its_block(tmp_path, bench_scaling):
    make_bundle(tmp_path / "block.h5", rx=2, ry=4, q=48)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="beside"):
        bench_scaling.tile_bundle(tmp_path / "block.h5", tmp_path / "sub" / "t.h5", 4)
    assert not os.path.exists(tmp_path / "sub" / "t.h5")


def test_dask_worker_keeps_a_bundle_open_between_tasks(tmp_path):
    """Per-task set-up of the Dask path: a worker opens a bundle once, again only if replaced."""
    from stem2eds.preprocess import executor

    path = tmp_path / "a.h5"
    _, pats, _ = make_bundle(path, rx=3, ry=4, q=48)
    first = executor._worker_reader(str(path))
    assert executor._worker_reader(str(path)) is first
    for mapped in (False, True):  # read, or mapped for functions that take mapped blocks
        got = executor._run_task((4, (1, 3, 0, 4)), str(path), _sums, 3, mapped)
        assert [start for start, _ in got] == [4, 7, 8, 11]  # pieces of one row
        np.testing.assert_array_equal(np.concatenate([v for _, v in got]),
                                      pats[1:3].reshape(8, -1).sum(1))
    path.unlink()
    make_bundle(path, rx=3, ry=4, q=48, seed=1)
    assert executor._worker_reader(str(path)) is not first


def _sums(start, patterns):
    from stem2eds.io.mapped import MappedPatterns

    if isinstance(patterns, MappedPatterns):
        patterns = patterns.to_array()
    return patterns.reshape(len(patterns), -1).sum(1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_benchmark_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_pipeline.py --device cpu on a tiny scan: one JSON with both rates."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_pipeline.py"),
                           "--device", "cpu", "--patterns", "300", "--block", "200",
                           "--repeats", "1", "--model-batch", "64", "--work", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["device"] == "cpu"
    assert doc["end_to_end"]["patterns"] == 300
    assert doc["end_to_end"]["patterns_per_s"] > 0
    assert doc["model_alone"]["on_device"]["patterns_per_s"] > 0
    assert doc["provenance"]["commit"]
    assert not any(tmp_path.iterdir())  # its scratch folder is removed


@pytest.mark.timeout(180)
def test_local_cluster_workers_import_the_passes_at_start():
    import sys

    from stem2eds.preprocess.distributed import dask_client

    with dask_client("local", workers=1) as client:
        # one single-threaded worker runs the start-up import before this task
        assert client.submit(lambda: "stem2eds.preprocess.passes" in sys.modules,
                             pure=False).result(timeout=120)
        # glibc keeps freed buffers for the next chunk (no page faults per task)
        assert client.submit(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                             pure=False).result(timeout=60) is None
        # one numba thread per single-core worker, set in the worker only: numba in
        # this process must keep its own thread count
        assert client.submit(lambda: os.environ.get("NUMBA_NUM_THREADS"),
                             pure=False).result(timeout=60) == "1"
    assert os.environ.get("NUMBA_NUM_THREADS") != "1"
