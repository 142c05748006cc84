"""Fast paths: direct chunk reads, prefetch, binned centring, streamed prediction output,
the benchmark smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stem2eds.formats.bundle import PixelCalibration, create_bundle, open_bundle
from stem2eds.preprocess import radial_profile
from stem2eds.preprocess.patterns import (block_sum, centre_binned, detector_centre,
                                          process_patterns)
from stem2eds.io.stream import PatternReader, prefetch

ROOT = Path(__file__).resolve().parents[1]


def _bundle(path: Path, patterns: np.ndarray, compression=None) -> Path:
    rx, ry = patterns.shape[:2]
    with create_bundle(path, scan_shape=(rx, ry), detector_shape=patterns.shape[2:],
                       dtype=patterns.dtype, elements=["O"], calibration=PixelCalibration(),
                       compression=compression) as b:
        flat = patterns.reshape(-1, *patterns.shape[2:])
        # written out of order, so chunks are not laid out in scan order
        for start in (6, 0, 3):
            b.write_patterns(start, flat[start:start + 3] if start < 6 else flat[6:])
    return path


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_direct_reads_equal_h5py(tmp_path, rng, compression):
    patterns = rng.integers(0, 60000, (4, 5, 8, 6), dtype=np.uint16)
    path = _bundle(tmp_path / "a.h5", patterns, compression)
    flat = patterns.reshape(20, 8, 6)
    with open_bundle(path) as scan:
        reader = PatternReader(scan.diffraction)
        assert reader.direct == (compression is None)
        for index in (range(20), [0, 1, 2, 7, 8, 19], range(5, 10), [4]):
            np.testing.assert_array_equal(reader.read(index), flat[list(index)])
        buf = np.empty((10, 8, 6), np.uint16)
        got = reader.read(range(3, 9), out=buf)
        assert got.base is buf or got is buf[:6]
        np.testing.assert_array_equal(got, flat[3:9])
        reader.close()
        forced = PatternReader(scan.diffraction, direct=False)
        assert not forced.direct
        np.testing.assert_array_equal(forced.read(range(20)), flat)


def test_iter_blocks_of_a_region_match_the_dataset(tmp_path, rng):
    from stem2eds.io.stream import iter_blocks

    patterns = rng.integers(0, 1000, (6, 7, 8, 8), dtype=np.uint16)
    path = tmp_path / "r.h5"
    with create_bundle(path, scan_shape=(6, 7), detector_shape=(8, 8), dtype=np.uint16,
                       elements=["O"]) as b:
        b.write_patterns(0, patterns.reshape(42, 8, 8))
    crop = (1, 5, 2, 6)
    want = patterns[1:5, 2:6].reshape(-1, 8, 8)
    with open_bundle(path) as scan:
        for batch, ahead in ((3, 2), (8, 0), (100, 1)):
            blocks = list(iter_blocks(scan.diffraction, crop, batch, read_ahead=ahead))
            starts = [s for s, _ in blocks]
            got = np.concatenate([p for _, p in blocks])
            np.testing.assert_array_equal(got, want)
            assert starts == sorted(starts) and starts[0] == 0


def test_prefetch_yields_in_order_and_reraises():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("disk on fire")

    with pytest.raises(ValueError, match="disk on fire"):
        list(prefetch(failing()))


def test_prefetch_stops_the_producer_when_the_consumer_stops():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    for item in prefetch(endless(), depth=2):
        if item == 3:
            break
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
    assert len(produced) <= 3 + 1 + 2 + 1  # consumed + in flight + queue + one being made


def test_opencv_block_sums_are_exact(rng):
    counts = rng.integers(0, 65535, (5, 32, 24), dtype=np.uint16)
    for f in (2, 4, 8):
        want = counts.reshape(5, 32 // f, f, 24 // f, f).sum(axis=(2, 4), dtype=np.int64)
        np.testing.assert_array_equal(block_sum(counts, f), want.astype(np.float32))
    small = rng.integers(0, 255, (3, 12, 12), dtype=np.uint8)
    np.testing.assert_array_equal(block_sum(small, 3),
                                  small.reshape(3, 4, 3, 4, 3).sum(axis=(2, 4)))


def _ring_patterns(origins: np.ndarray, q: int = 64, radius: float = 14.0, width: float = 1.5,
                   background: float = 0.0) -> np.ndarray:
    """Counts: a bright disk of radius 3 and a ring about each origin (n, q, q) uint16."""
    grid = np.arange(q, dtype=np.float64)
    r = np.hypot(grid[None, :, None] - origins[:, 0, None, None],
                 grid[None, None, :] - origins[:, 1, None, None])
    disk = 5000.0 / (1 + np.exp((r - 3) / 0.3))
    ring = 400.0 * np.exp(-((r - radius) / width) ** 2)
    return np.rint(disk + ring + background).astype(np.uint16)


def _ring_centre(binned: np.ndarray, inner: float) -> np.ndarray:
    """Intensity centroid (row, col) of each pattern between ``inner`` and 2.5 x ``inner``
    binned px of the centre (the ring; away from the detector edge)."""
    n, qx, qy = binned.shape
    cr, cc = detector_centre((qx, qy))
    rows, cols = np.meshgrid(np.arange(qx) - cr, np.arange(qy) - cc, indexing="ij")
    dist = np.hypot(rows, cols)
    w = binned * ((dist > inner) & (dist < 2.5 * inner))
    total = w.sum(axis=(1, 2))
    return np.stack([(w * rows).sum(axis=(1, 2)) / total,
                     (w * cols).sum(axis=(1, 2)) / total], axis=1)


def test_binned_centring_puts_the_origin_on_the_centre_and_removes_the_beam(rng):
    origins = 31.5 + rng.uniform(-6, 6, (40, 2))
    raw = _ring_patterns(origins)
    for f in (1, 2, 4):
        out = centre_binned(raw, origins, 4.5, f)
        assert out.shape == (40, 64 // f, 64 // f) and out.dtype == np.float32
        # the ring's centroid lands on the detector centre (a fraction of a binned px)
        assert np.abs(_ring_centre(out, 6 / f)).max() < 0.1
        # the beam is gone: what is left near the centre is ring tail and background
        c = (64 // f) // 2
        assert out[:, c - 1:c + 1, c - 1:c + 1].max() < 60 * f * f
        # counts are conserved apart from the removed disk (nothing crosses the edge here)
        grid = np.arange(64)
        disk = (np.hypot(grid[None, :, None] - origins[:, 0, None, None],
                         grid[None, None, :] - origins[:, 1, None, None]) <= 4.5)
        kept = (raw * ~disk).reshape(40, -1).sum(axis=1)
        np.testing.assert_allclose(out.reshape(40, -1).sum(axis=1), kept, rtol=2e-3)


def test_binned_and_full_resolution_centring_agree_on_radial_profiles(rng):
    origins = 31.5 + rng.uniform(-5, 5, (30, 2))
    # amorphous-like: a broad ring on a background
    raw = _ring_patterns(origins, width=4.0, background=20.0)
    full = process_patterns(raw, origins, 4.5, 4, "none", centring="full")
    binned = process_patterns(raw, origins, 4.5, 4, "none", centring="binned")
    # rings 2..6 binned px: outside the removed beam, inside what the shift keeps
    pf, pb = radial_profile(full)[:, 2:7], radial_profile(binned)[:, 2:7]
    # the ring (radius 14 px = 3.5 binned px) and the background agree to a few percent
    assert np.max(np.abs(pb - pf) / pf) < 0.05


def test_output_activation_keeps_eds_linear_and_clamps_haadf():
    # Prediction applies the same activation as training without importing
    # Lightning; this pins what it does (it replaced a test that compared the
    # function with itself through a re-export).
    import torch

    from stem2eds.formats.rundir import apply_output_activation

    raw = torch.tensor([[0.2, -0.5, -3.0], [0.1, 0.3, 2.0]])
    assert torch.equal(apply_output_activation(raw, 3), raw)
    out = apply_output_activation(raw, 2)
    assert torch.equal(out[:, :2], raw[:, :2])  # EDS: linear, negatives kept
    assert out[:, 2].tolist() == [0.0, 2.0]     # HAADF: ReLU


def test_predict_does_not_import_lightning():
    code = ("import sys, stem2eds.predict.predictor, stem2eds.cli.predict; "
            "sys.exit(1 if any(m.split('.')[0] == 'lightning' for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_outputs_are_written_by_flat_ranges(tmp_path, rng):
    """Blocks that start and end mid-row land in the right places of every map."""
    from stem2eds.formats.prediction import open_prediction_writer, read_prediction

    values = rng.random((35, 3)).astype(np.float32)
    path = tmp_path / "o.h5"
    with open_prediction_writer(path, ["Ge", "Te"], haadf=True, shape=(5, 7)) as writer:
        for start, stop in ((0, 3), (3, 14), (14, 20), (20, 35)):
            writer.write_flat(start, values[start:stop])
        np.testing.assert_array_equal(writer.read_eds(), values[:, :2].T.reshape(2, 5, 7))
        with pytest.raises(ValueError, match="do not fit"):
            writer.write_flat(30, values[:10])
        assert not path.exists()  # nothing under the name before the file is complete
    pred = read_prediction(path)
    np.testing.assert_array_equal(pred.eds, values[:, :2].T.reshape(2, 5, 7))
    np.testing.assert_array_equal(pred.haadf, values[:, 2].reshape(5, 7))


@pytest.mark.timeout(300)
def test_benchmark_smoke_tiny(tmp_path):
    """benchmarks/run.py --size tiny: every stage runs and the JSON has what the README needs."""
    out = tmp_path / "tiny.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--size", "tiny",
                           "--out", str(out), "--quiet"], capture_output=True, text=True,
                          cwd=ROOT, timeout=290)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["stages"]) == {"convert", "preprocess", "train", "predict", "model_only"}
    for stage in ("convert", "preprocess"):
        assert res["stages"][stage]["patterns_per_s"] > 0
        assert res["stages"][stage]["peak_rss_mb"] > 0
    for model in ("radial", "paper"):
        assert res["stages"]["train"][model]["seconds_per_epoch"] > 0
        assert res["stages"]["predict"][model]["patterns_per_s"] > 0
        assert res["stages"]["model_only"][model]["patterns_per_s"] > 0
        # peak memory is the child's own: more than Python + torch, less than the test runner's
        assert 100 < res["stages"]["predict"][model]["peak_rss_mb"] < 4000
    assert res["stages"]["predict"]["paper"]["input_shape"] == [64, 64]  # the paper's: unbinned
    assert res["stages"]["predict"]["radial"]["input_shape"] == [16, 16]
    assert set(res["targets_met"]) == {"predict_patterns_per_s", "speedup_vs_paper",
                                       "peak_rss_mb"}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from run import render_table
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    table = render_table(res)
    assert "| predict (whole process, raw bundle of 80) | paper (64x64) |" in table


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_predictions_match_cpu(tmp_path):
    """The same run predicts the same maps on CUDA (autocast) as on the CPU."""
    import torch

    from stem2eds.models import build_model
    from stem2eds.predict.predictor import Predictor
    from stem2eds.preprocess import PreprocessSettings

    torch.manual_seed(0)
    info = {"elements": ["O", "Te"], "targets": ["eds"], "input_shape": [64, 64],
            "model": "radial"}
    patterns = np.random.default_rng(0).random((300, 64, 64), dtype=np.float32)
    outs = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        net = build_model("radial", (64, 64), 2).eval().to(device)
        pred = Predictor(tmp_path, info, net, PreprocessSettings(scale=1.0), torch.device(device))
        outs[device] = pred.predict_patterns(patterns)
    assert outs["cuda"].dtype == np.float32
    np.testing.assert_allclose(outs["cuda"], outs["cpu"], atol=2e-2)
