"""Origins measured on a sub-grid (settings.origin_sample), pass-2 threading, lazy imports.

Data are made here: patterns with a soft-edged disk whose centre follows a
descan plane plus 0.15 px jitter (Poisson counts), written to small bundles.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from stem2eds.formats.bundle import PixelCalibration, create_bundle, open_bundle
from stem2eds.errors import InputError
from stem2eds.preprocess import (PreprocessSettings, iter_preprocessed, measure_origins,
                                 preprocess_bundle, process_patterns, summarise)
from stem2eds.preprocess import executor, settings as settings_module
from stem2eds.preprocess.origin import sample_grid
from stem2eds.io.stream import Prefetcher
from builders import make_patterns


def _plane_scan(path, rx=36, ry=30, q=64, jitter=0.15, seed=3):
    """Raw bundle whose origins are a plane over the scan plus Gaussian jitter; true origins."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(rx), np.arange(ry), indexing="ij")
    plane = np.stack([q / 2 + 0.06 * i - 0.04 * j + 0.8, q / 2 - 0.05 * i + 0.07 * j - 0.6], -1)
    origins = plane + rng.normal(0, jitter, plane.shape)
    pats = make_patterns(origins.reshape(-1, 2), q=q, disk_radius=5.0, disk_counts=40.0,
                         ring_radius=q * 0.3, ring_counts=3.0, n_spots=2, spot_counts=30.0,
                         seed=seed)
    with create_bundle(path, scan_shape=(rx, ry), detector_shape=(q, q), dtype=np.uint16,
                       elements=["O"], calibration=PixelCalibration(1.0, 0.02, "nm", "1/nm")) as b:
        b.write_patterns(0, pats)
    return plane


def test_sample_grid_spreads_over_the_scan_and_keeps_its_edges():
    rows, cols = sample_grid((120, 100), 1024)
    assert 900 <= len(rows) * len(cols) <= 1150
    assert rows[0] == 0 and rows[-1] == 119 and cols[0] == 0 and cols[-1] == 99
    assert np.all(np.diff(rows) > 0) and np.all(np.diff(cols) > 0)
    # equal density along both axes: steps differ by at most one scan pixel
    assert abs(np.diff(rows).mean() - np.diff(cols).mean()) < 1.0
    # a thin scan keeps at least 3 rows where it has them
    rows, cols = sample_grid((3, 5000), 300)
    assert list(rows) == [0, 1, 2] and 90 <= len(cols) <= 110
    for shape, n in (((10, 8), 80), ((10, 8), 500), ((10, 8), 0)):
        assert sample_grid(shape, n) is None  # every position


def test_subsampled_fit_agrees_with_the_fit_of_every_pattern(tmp_path):
    """The default sub-grid (1024 of 2304 positions) against every position."""
    plane = _plane_scan(tmp_path / "raw.h5", rx=48, ry=48)
    base = PreprocessSettings(origin_sample=0)
    with open_bundle(tmp_path / "raw.h5") as scan:
        full = measure_origins(scan, base)
        sub = measure_origins(scan, replace(base, origin_sample=settings_module.ORIGIN_SAMPLE))
    assert full.fit.sampled is None and np.all(np.isfinite(full.measured))
    n_sampled = int(sub.fit.sampled.sum())
    assert 900 <= n_sampled <= 1150
    # only the sub-grid was measured; the fit still covers every position
    assert np.isnan(sub.measured[~sub.fit.sampled]).all()
    assert np.isfinite(sub.fitted).all() and sub.fitted.shape == full.fitted.shape
    diff = np.abs(sub.fitted - full.fitted).max()
    err_full = np.abs(full.fitted - plane).max()
    err_sub = np.abs(sub.fitted - plane).max()
    print(f"fitted origins, {n_sampled} of {plane.shape[0] * plane.shape[1]} positions vs all: "
          f"max difference {diff:.4f} px; max error vs true plane {err_sub:.4f} / "
          f"{err_full:.4f} px; rms residual {full.fit.rms_residual:.3f} px; probe radius "
          f"{sub.probe_radius:.3f} / {full.probe_radius:.3f}")
    assert diff < 0.03
    assert err_sub < 0.05
    assert abs(sub.probe_radius - full.probe_radius) < 0.1
    assert sub.fit.n_outliers <= 0.02 * n_sampled  # unmeasured positions are not outliers
    # preprocessed patterns barely change: centring differs by < 0.03 px
    with open_bundle(tmp_path / "raw.h5") as scan:
        raw = scan.diffraction[:8].reshape(-1, 64, 64)
    a = process_patterns(raw, full.fitted[:8].reshape(-1, 2), 7.0, 4, "none")
    b = process_patterns(raw, sub.fitted[:8].reshape(-1, 2), 7.0, 4, "none")
    rel = np.abs(a - b).max() / a.max()
    print(f"preprocessed patterns: max difference {rel:.2e} of the maximum")
    assert rel < 0.01


def test_preprocess_records_the_sub_grid_and_old_settings_still_load(tmp_path):
    _plane_scan(tmp_path / "raw.h5", rx=12, ry=10)
    settings = preprocess_bundle(tmp_path / "raw.h5", tmp_path / "pre.h5",
                                 PreprocessSettings(origin_sample=30), quiet=True)
    assert settings.origin_sample == 30
    with open_bundle(tmp_path / "pre.h5") as pre:
        measured = pre.file["calibration/origin"]
        assert "sub-grid" in measured.attrs["measured_at"]
        finite = np.isfinite(measured[()]).all(axis=2)
        assert 20 <= finite.sum() <= 40 and finite[0, 0] and finite[-1, -1]
        assert np.isfinite(pre.file["calibration/origin_fit"][()]).all()
        stored = pre.json_attr("preprocess")
        inliers = pre.file["calibration/origin_inliers"][()]
    assert stored["origin_sample"] == 30
    assert not inliers[~finite].any()
    # unmeasured positions are neither inliers nor counted as outliers
    outliers = summarise(tmp_path / "pre.h5")["origin_outliers"]
    assert outliers == finite.sum() - inliers.sum() and outliers <= 3
    # settings written before the option existed load with the default
    old = {k: v for k, v in stored.items() if k != "origin_sample"}
    assert PreprocessSettings.from_dict(old).origin_sample == settings_module.ORIGIN_SAMPLE
    with pytest.raises(InputError, match="origin_sample"):
        PreprocessSettings(origin_sample=-1)
    # "none" keeps every measured origin, whatever origin_sample says
    with open_bundle(tmp_path / "raw.h5") as scan:
        found = measure_origins(scan, PreprocessSettings(origin_fit="none", origin_sample=30))
    assert found.fit.sampled is None and np.isfinite(found.measured).all()


def test_threaded_pass_two_equals_one_thread_for_any_batch(tmp_path, monkeypatch):
    _plane_scan(tmp_path / "raw.h5", rx=20, ry=30)
    settings = PreprocessSettings(scale=50.0, beam_radius=7.0)
    monkeypatch.setattr(executor, "WORK_CHUNK", 64)  # several chunks per read block
    with open_bundle(tmp_path / "raw.h5") as scan:
        origins = measure_origins(scan, settings).fitted
        results = {}
        for threads in (1, 3):
            monkeypatch.setattr(executor, "PROCESS_THREADS", threads)
            for batch in (1, 7, 100, 1000):
                blocks = list(iter_preprocessed(scan, settings, batch=batch, origins=origins))
                starts = [s for s, _ in blocks]
                sizes = [len(v) for _, v in blocks]
                assert starts == list(np.cumsum([0] + sizes[:-1]))
                assert all(n == batch for n in sizes[:-1]) and sum(sizes) == 600
                results[threads, batch] = np.concatenate([v for _, v in blocks])
    first = results[1, 1]
    for key, values in results.items():
        np.testing.assert_array_equal(values, first, err_msg=str(key))


def test_prefetcher_starts_at_once_and_close_stops_it():
    made = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    before = threading.active_count()
    ahead = Prefetcher(endless(), depth=3)
    deadline = time.time() + 5
    while len(made) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert len(made) >= 3  # produced before anyone asked
    assert next(ahead) == 0 and next(ahead) == 1
    ahead.close()
    assert threading.active_count() == before
    with pytest.raises(StopIteration):
        next(ahead)


def test_predict_path_does_not_import_scipy_matplotlib_or_lightning(tmp_path):
    """Measuring origins, preprocessing and building the model stay clear of heavy libraries."""
    _plane_scan(tmp_path / "raw.h5", rx=6, ry=5)
    code = f"""
import sys
import stem2eds.cli, stem2eds.cli.predict
from stem2eds.predict.predictor import _raw_stream
from stem2eds.formats.bundle import open_bundle
from stem2eds.preprocess import PreprocessSettings
from stem2eds.models import build_model
with open_bundle({str(tmp_path / 'raw.h5')!r}) as scan:
    blocks = list(_raw_stream(scan, PreprocessSettings(scale=50.0), 8))
build_model("radial", (16, 16), 2)
heavy = sorted({{m.split('.')[0] for m in sys.modules}}
               & {{'scipy', 'matplotlib', 'lightning', 'sklearn', 'hyperspy', 'pytorch_lightning'}})
print(len(blocks), heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "[]"]


@pytest.mark.parametrize("size", [1, 3, 5, 11])
def test_box_sums_are_exact_box_filters_with_zero_outside(size):
    from scipy.ndimage import uniform_filter

    from stem2eds.preprocess.origin import _box_sums

    rng = np.random.default_rng(size)
    stack = rng.integers(0, 60000, (7, 9, 6)).astype(np.float32)
    expected = uniform_filter(stack.astype(np.float64), size=(1, size, size),
                              mode="constant") * size * size
    got = _box_sums(stack, size)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * expected.max())
    # integer counts: exactly the same box wins, pattern by pattern (no box reaches the next)
    np.testing.assert_array_equal(got.reshape(7, -1).argmax(1), expected.reshape(7, -1).argmax(1))
    one = _box_sums(stack[3:4], size)
    np.testing.assert_array_equal(one[0], got[3])
    assert _box_sums(stack[:0], size).shape == (0, 9, 6)
