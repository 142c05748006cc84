"""The fused ring-statistics path (issue 18): raw patterns + origins -> ring features.

Checked against the ordinary path (centre, remove the beam, bin, scale,
normalise, then :class:`RingStatistics`): the features, the torch version,
predictions of trained runs on simulated scans, and the training cache.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stem2eds.errors import InputError
from stem2eds.features import RingGeometry, ring_features
from stem2eds.features.torch_rings import axis_matrices, ring_statistics_torch
from stem2eds.models.rings import RingStatistics
from stem2eds.preprocess.patterns import normalise, process_patterns
from builders import make_raw_scan, small_config

STATS = ("mean", "std", "max")


def _raw(n=24, q=64, seed=0, spread=4.0):
    """Poisson patterns with a bright beam disk at random sub-pixel origins (some near edges)."""
    rng = np.random.default_rng(seed)
    origins = (q - 1) / 2 + rng.uniform(-spread, spread, (n, 2))
    origins[0] = (2.3, q - 3.6)  # far off centre: much is shifted off the detector
    r = np.hypot(np.arange(q)[None, :, None] - origins[:, 0, None, None],
                 np.arange(q)[None, None, :] - origins[:, 1, None, None])
    lam = 2000.0 * (r < 3.5) + 40 * np.exp(-((r - 14) / 3) ** 2) + 5
    return rng.poisson(lam).astype(np.uint16), origins


def _reference(raw, origins, g: RingGeometry) -> np.ndarray:
    values = process_patterns(raw, origins, g.beam_radius, g.bin_factor, g.scaling, "binned")
    patterns = torch.from_numpy(normalise(values, g.scale))
    return RingStatistics(g.binned_shape, g.statistics)(patterns).reshape(len(raw), -1).numpy()


@pytest.mark.parametrize("f, scaling, radius, scale", [
    (4, "none", 4.6, 150.0),   # the default: 4x binning, counts
    (2, "sqrt", 3.0, 9.0),
    (1, "log", 0.0, 5.0),      # no binning, beam kept
    (8, "none", 7.2, 900.0),
    (16, "none", 7.2, 3600.0),  # a factor without its own compiled stride
])
def test_ring_features_equal_the_preprocessed_path(f, scaling, radius, scale):
    raw, origins = _raw()
    g = RingGeometry((64, 64), f, radius, scaling, scale, STATS)
    got = ring_features(raw, origins, g)
    want = _reference(raw, origins, g)
    assert got.shape == (len(raw), g.n_features) and got.dtype == np.float32
    r = g.n_rings
    # means and maxima to float32 rounding; the reference's std loses digits to
    # cancellation in float32 (mean of squares minus square of mean)
    np.testing.assert_allclose(got[:, :r], want[:, :r], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[:, 2 * r:], want[:, 2 * r:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[:, r:2 * r], want[:, r:2 * r], atol=2e-3)
    # some binned values clip at 1 (the ring maxima show it): the clip is reproduced
    assert np.any(want[:, 2 * r:] == 1.0)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_counts_give_non_finite_statistics(value):
    """A float scan's NaN or infinite count makes its pattern's statistics NaN, not a clipped number.

    (The origins are measured on a sub-grid only, so such a pattern may reach
    the kernel unmeasured; the predictor then refuses the NaN outputs.)
    """
    raw, origins = _raw(n=6)
    raw = raw.astype(np.float32)
    raw[2, 40, 50] = value  # far from the beam
    g = RingGeometry((64, 64), 4, 4.6, "none", 150.0, STATS, 0.05)
    got = ring_features(raw, origins, g)
    assert np.isnan(got[2]).all()
    assert np.isfinite(np.delete(got, 2, axis=0)).all()


def test_ring_features_accept_any_dtype_and_pick_statistics():
    raw, origins = _raw(n=6)
    g = RingGeometry((64, 64), 4, 4.6, "none", 150.0, ("max", "mean"))
    a = ring_features(raw, origins, g)
    b = ring_features(raw.astype(np.float32), origins, g)
    full = ring_features(raw, origins, RingGeometry((64, 64), 4, 4.6, "none", 150.0, STATS))
    r = g.n_rings
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_array_equal(a[:, :r], full[:, 2 * r:])
    np.testing.assert_array_equal(a[:, r:], full[:, :r])
    assert ring_features(raw[:0], origins[:0], g).shape == (0, 2 * r)


@pytest.mark.parametrize("bad, match", [
    (dict(bin_factor=3), "bin factor"), (dict(scaling="cube"), "scaling"),
    (dict(scale=0.0), "`scale`"), (dict(statistics=("median",)), "statistics"),
])
def test_geometry_refuses_bad_settings(bad, match):
    kw = dict(detector_shape=(64, 64), bin_factor=4, beam_radius=3.0, scaling="none",
              scale=1.0, statistics=("mean",))
    with pytest.raises(InputError, match=match):
        RingGeometry(**{**kw, **bad})


def test_ring_features_refuse_mismatched_inputs():
    raw, origins = _raw(n=4)
    g = RingGeometry((64, 64), 4, 3.0, "none", 1.0)
    with pytest.raises(InputError, match="detector"):
        ring_features(raw[:, :32], origins, g)
    with pytest.raises(InputError, match="origins"):
        ring_features(raw, origins[:3], g)
    with pytest.raises(InputError, match="finite"):
        ring_features(raw, np.full((4, 2), np.nan), g)


@pytest.mark.parametrize("f, scaling, radius", [(4, "none", 4.6), (2, "sqrt", 3.0), (1, "log", 0)])
def test_torch_front_end_equals_the_numba_one(f, scaling, radius):
    raw, origins = _raw(n=10, seed=3)
    g = RingGeometry((64, 64), f, radius, scaling, 100.0 if scaling == "none" else 4.0, STATS)
    want = ring_features(raw, origins, g)
    got = ring_statistics_torch(torch.from_numpy(raw), torch.from_numpy(origins), g)
    assert got.shape == (10, 3, g.n_rings) and got.dtype == torch.float32
    np.testing.assert_allclose(got.reshape(10, -1).numpy(), want, rtol=1e-5, atol=1e-6)


def test_axis_matrices_conserve_counts_inside_the_detector():
    whole = torch.tensor([0, -3, 5, 70])
    frac = torch.tensor([0.0, 0.25, 0.5, 0.0])
    m = axis_matrices(whole, frac, 32, 4)
    assert m.shape == (4, 8, 32)
    np.testing.assert_allclose(m[0].sum(0).numpy(), 1.0)           # no shift: each row once
    assert float(m[3].abs().sum()) == 0.0                          # shifted off the detector
    assert torch.all(m >= 0) and float(m[2].sum()) < 32            # some counts leave the edge


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Trained radial and ridge runs on one small raw scan, and another raw scan."""
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.fit import train

    folder = tmp_path_factory.mktemp("fused")
    scan = make_raw_scan(folder / "train.h5", seed=21, detector=64)
    other = make_raw_scan(folder / "other.h5", seed=22, detector=64, scan_shape=(9, 11))
    pre = PreprocessSettings(bin_factor=4, eds_kernel=3)
    out = {}
    for model in ("radial", "ridge"):
        out[model] = train([scan], folder / model, small_config(model=model, preprocess=pre),
                           quiet=True)
    return out, scan, other


def _old_and_fused(run_dir, scan_path, batch=32):
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.predict.predictor import load_run
    from stem2eds.preprocess import iter_preprocessed

    predictor = load_run(run_dir)
    with open_bundle(scan_path) as scan:
        old = np.concatenate([v for _, v in predictor._outputs(
            scan, iter_preprocessed(scan, predictor.settings, batch))])
        new = np.concatenate([v for _, v in predictor.iter_outputs(scan, batch)])
    return old, new


@pytest.mark.parametrize("model", ["radial", "ridge"])
def test_fused_predictions_match_the_preprocessed_path(runs, model):
    run_dirs, _, other = runs
    old, new = _old_and_fused(run_dirs[model], other)
    assert old.shape == new.shape == (99, 3)
    assert np.abs(old - new).max() < 2e-3  # issue 18: 0.002 atomic fraction
    assert np.abs(old - new).max() < 1e-4  # what it is in fact: float rounding


def test_ring_models_are_fed_ring_statistics():
    from stem2eds.models import build_model
    from stem2eds.models.rings import RingFrontend

    x = torch.rand(5, 16, 16)
    for name in ("radial", "ridge"):
        net = build_model(name, (16, 16), 3, {}).eval()
        assert isinstance(net, RingFrontend)
        stats = RingStatistics((16, 16), net.ring_statistics)(x)
        torch.testing.assert_close(net.forward_rings(stats), net(x))
    assert not isinstance(build_model("paper", (16, 16), 3, {}), RingFrontend)


def test_training_caches_the_ring_statistics_once(runs, monkeypatch):
    from stem2eds.features import cache
    from stem2eds.formats.rundir import RunDir
    from stem2eds.preprocess import load_settings
    from stem2eds.train.frontend import use_cached_rings
    from stem2eds.train.data import RunData, map_dataset
    from stem2eds.models import build_model

    run_dirs, scan, _ = runs
    run = RunDir(run_dirs["radial"])
    files = sorted(run.features.glob("rings_*.npy"))
    assert len(files) == 1
    stats = np.load(files[0], mmap_mode="r")
    assert stats.shape == (120, 11)  # 12x10 positions, 11 rings of the 16x16 binned detector
    # the cached features equal the model's front end on the preprocessed patterns
    settings = load_settings(run.preprocess_record)
    pre = sorted(run.preprocessed.glob("*.h5"))
    net = build_model("radial", (16, 16), 3, {})
    plain = RunData(pre, ["Ge", "Sb", "Te"], small_config())
    plain.setup()
    want = map_dataset(net.frontend, plain.train_set).tensors[0]
    calls = []
    real = cache.iter_raw_blocks
    monkeypatch.setattr(cache, "iter_raw_blocks", lambda *a, **k: calls.append(1) or real(*a, **k))
    fused = RunData(pre, ["Ge", "Sb", "Te"], small_config(), load_patterns=False)
    fused.setup()
    assert fused.train_set.patterns is None  # the patterns were never loaded
    use_cached_rings(net, fused, run, [scan], settings)
    fused.cache_frontend(net.frontend)
    assert not calls  # reused from the run folder, not recomputed
    torch.testing.assert_close(fused.train_set.tensors[0], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.train_set.tensors[1], plain.train_set.targets)


def test_torch_front_end_predicts_as_the_numba_one(runs):
    """What the predictor runs on CUDA (torch ring statistics), here on CPU tensors."""
    from stem2eds.features.stream import iter_raw_blocks
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.predict.predictor import load_run

    run_dirs, _, other = runs
    p = load_run(run_dirs["radial"])
    with open_bundle(other) as scan, torch.inference_mode():
        for _, block in iter_raw_blocks(scan, p.settings, 40):
            g = block.geometry(p.settings, p.model.ring_statistics)
            stats = ring_statistics_torch(torch.from_numpy(block.patterns),
                                          torch.from_numpy(block.origins), g)
            np.testing.assert_allclose(p._finish(p.model.forward_rings(stats).numpy()),
                                       p._predict_block(scan, 0, block), atol=1e-5)


def test_kernel_loads_without_scipy_and_numba_blas_still_works():
    """Loading the kernel skips numba's BLAS probe (SciPy's import); numba's BLAS users still work."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from stem2eds.features.rings import _kernel
_kernel()
assert "scipy.linalg" not in sys.modules, "the kernel load imported scipy.linalg"
import numba

@numba.njit
def both(a, b):
    return np.dot(a, b), np.correlate(a, b)

a, b = np.arange(1.0, 6.0), np.array([0.5, -1.0, 2.0, 0.0, 1.0])
d, c = both(a, b)
assert d == np.dot(a, b) and np.allclose(c, np.correlate(a, b)), (d, c)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_damaged_ring_cache_is_computed_again(runs, tmp_path):
    """NaN written over the cache (found by fuzzing `train --resume`): recomputed, not trusted."""
    import shutil

    from stem2eds.features.cache import ring_statistics_cache
    from stem2eds.formats.rundir import RunDir
    from stem2eds.preprocess import load_settings

    run_dirs, scan, _ = runs
    run = RunDir(run_dirs["radial"])
    cached = sorted(run.features.glob("rings_*.npy"))[0]
    good = np.load(cached)
    damaged = tmp_path / cached.name
    shutil.copy(cached, damaged)
    arr = np.load(damaged, mmap_mode="r+")
    arr[3, 2] = np.nan
    arr.flush()
    del arr
    settings = load_settings(run.preprocess_record)
    again = ring_statistics_cache(damaged, [scan], settings, ("mean",), good.shape[1])
    np.testing.assert_array_equal(np.asarray(again), good)
