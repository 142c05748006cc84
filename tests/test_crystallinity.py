"""Crystallinity map: Bragg disks above the amorphous rings, without training data."""

import json

import h5py
import numpy as np
import pytest

from stem2eds.analysis.anomaly import detection_scores
from stem2eds.analysis.crystallinity import (CrystallinitySettings, bragg_scores,
                                             crystalline_mask, crystallinity_map,
                                             ring_background)
from stem2eds.errors import InputError


def _scan(shape=(20, 16), q=48, grain=True, seed=0, descan=3.0):
    """Amorphous ring patterns (Poisson) about moving origins, Bragg disks in a grain.

    Returns patterns (n, q, q), origins (Rx, Ry, 2) and the grain mask (Rx, Ry).
    """
    rng = np.random.default_rng(seed)
    rx, ry = shape
    n = rx * ry
    u, v = np.meshgrid(np.linspace(-1, 1, ry), np.linspace(-1, 1, rx))
    origins = np.stack([(q - 1) / 2 + descan * v, (q - 1) / 2 + descan * u], -1)
    o = origins.reshape(n, 2)
    yy, xx = np.indices((q, q), dtype=float)
    r = np.hypot(yy[None] - o[:, 0, None, None], xx[None] - o[:, 1, None, None])
    clean = 60 * np.exp(-((r - rng.uniform(11, 13, n)[:, None, None]) ** 2) / 8) + 8
    mask = np.zeros(shape, bool)
    if grain:
        mask[5:10, 4:9] = True
        mask[14:17, 10:13] = True
        for k in np.flatnonzero(mask.ravel()):
            # a pair of Friedel-related disks (radius 1.5 px) at a grain's orientation
            phi = 0.7 if k < n // 2 else 2.1
            for sign in (1, -1):
                cy = o[k, 0] + sign * 12 * np.sin(phi)
                cx = o[k, 1] + sign * 12 * np.cos(phi)
                clean[k] += 60 * (np.hypot(yy - cy, xx - cx) <= 1.5)
    return rng.poisson(clean).astype(np.float32), origins, mask


def _blocks(patterns, size=64):
    for start in range(0, len(patterns), size):
        yield start, patterns[start:start + size]


SETTINGS = CrystallinitySettings(r_min=4, disk_radius=1.5)


def test_finds_the_grain_and_not_the_amorphous_film():
    patterns, origins, grain = _scan()
    score, crystalline = crystallinity_map(_blocks(patterns), origins, grain.shape, SETTINGS)
    assert score.dtype == np.float32 and crystalline.dtype == bool
    d = detection_scores(crystalline, grain)
    assert d["precision"] >= 0.9 and d["recall"] >= 0.9, d
    # the score separates the two populations, not only the thresholded map
    assert np.min(score[grain]) > np.max(score[~grain])
    # an amorphous scan flags (almost) nothing
    amorphous, origins0, _ = _scan(grain=False, seed=1)
    _, none = crystallinity_map(_blocks(amorphous), origins0, grain.shape, SETTINGS)
    assert none.sum() <= 0.01 * none.size


def test_score_is_scale_free_and_needs_the_right_origins():
    patterns, origins, grain = _scan(shape=(6, 6))
    flat = origins.reshape(-1, 2)
    s = bragg_scores(patterns, flat, SETTINGS)
    np.testing.assert_allclose(bragg_scores(patterns * 7.5, flat, SETTINGS), s, rtol=1e-6)
    # the rings about the detector centre instead of the true origins (3 px of descan)
    # smear into apparent anisotropy: amorphous positions then score much higher
    centred = np.tile([(47) / 2, (47) / 2], (len(flat), 1))
    wrong = bragg_scores(patterns, centred, SETTINGS)
    assert np.median(wrong[~grain.ravel()]) > np.median(s[~grain.ravel()]) + 2


def test_ring_background_is_robust_to_a_bragg_disk():
    q = 33
    yy, xx = np.indices((q, q))
    flat = np.full((1, q, q), 10.0)
    flat[0, 16, 26] = 1000.0  # one bright pixel on the ring of radius 10
    radii, median, sigma = ring_background(flat, np.array([[16.0, 16.0]]), 3, 12)
    assert np.allclose(median, 10.0) and np.all(sigma > 0) and np.all(sigma < 1e-1)
    assert radii[0] == 3 and radii[-1] == 12


def test_threshold_is_relative_to_the_scans_majority():
    rng = np.random.default_rng(0)
    score = rng.normal(4, 0.4, (30, 30))
    score[:3, :3] = 12
    mask = crystalline_mask(score)
    assert mask[:3, :3].all() and mask.sum() <= 9 + 2
    # the same excess on a scan whose whole film scores ten times more spread is not
    # significant there
    noisy = rng.normal(4, 4, (30, 30))
    noisy[:3, :3] = 12
    assert not crystalline_mask(noisy)[:3, :3].any()
    # nor is anything on a scan of identical scores (no spread, no excess)
    assert not crystalline_mask(np.full((30, 30), 4.0)).any()
    score[0, 0] = np.nan
    assert not crystalline_mask(score)[0, 0]


def test_settings_are_checked():
    with pytest.raises(InputError, match="`disk_radius`"):
        CrystallinitySettings(disk_radius=0)
    with pytest.raises(InputError, match="`r_max`"):
        CrystallinitySettings(r_min=5, r_max=5.5)
    with pytest.raises(InputError, match="ring band is empty"):
        bragg_scores(np.ones((2, 8, 8)), np.full((2, 2), 3.5), CrystallinitySettings(r_min=4))


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The kinematic simulator's scans with grains (seed 0; fixed for the test), preprocessed."""
    from stem2eds.preprocess.pipeline import preprocess_bundle
    from stem2eds.preprocess.settings import PreprocessSettings
    from stem2eds.simulate import SimulationSettings, simulate_series

    folder = tmp_path_factory.mktemp("crystal")
    raw = simulate_series(folder, SimulationSettings(n_scans=3, scan_shape=(24, 20),
                                                     detector=64, seed=0, workers=1))
    out = []
    for path in raw[1:]:  # scans 0034 and 0035 have grains
        pre = folder / f"pre_{path.name}"
        preprocess_bundle(path, pre, PreprocessSettings(bin_factor=2), quiet=True)
        out.append(pre)
    return out


def test_simulated_grains_are_found(simulated):
    from stem2eds.experiments.sparse_anomaly import scan_crystallinity

    for path in simulated:
        score, crystalline = scan_crystallinity(path)
        with h5py.File(path, "r") as f:
            grain = f["simulation/grain_mask"][()].astype(bool)
        d = detection_scores(crystalline, grain)
        # measured when written: precision 1.0, recall 0.91 and 0.93
        assert d["precision"] >= 0.8 and d["recall"] >= 0.8, (path.name, d)


def test_anomaly_file_and_report_carry_the_map(tmp_path):
    from stem2eds.experiments.sparse_anomaly import AnomalyMaps
    from stem2eds.report.beyond import _anomaly_section, crystallinity_map_figure

    patterns, origins, grain = _scan(shape=(10, 8))
    score, crystalline = crystallinity_map(_blocks(patterns), origins, grain.shape, SETTINGS)
    maps = AnomalyMaps(score=np.zeros(grain.shape), components={"uncertainty": None},
                       flagged=np.zeros(grain.shape, bool), typical=np.ones(grain.shape, bool),
                       mean_flagged=np.zeros((4, 4)), mean_typical=np.zeros((4, 4)),
                       threshold=3.0, crystallinity=score, crystalline=crystalline,
                       crystal_settings=SETTINGS)
    maps.write(tmp_path / "a.h5", grain)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["crystallinity"].dtype == np.float32 and f["crystalline"].dtype == bool
        np.testing.assert_array_equal(f["crystalline"][()], crystalline)
        assert json.loads(f["crystalline"].attrs["settings"])["disk_radius"] == 1.5
    summary = maps.summary(grain)
    assert summary["crystallinity"]["detection"]["recall"] >= 0.9
    html = _anomaly_section({**summary, "components": []})
    assert "Crystallinity map" in html and "precision" in html
    fig = crystallinity_map_figure(score, crystalline, grain, "scan_x")
    assert "crystallinity" in fig._suptitle.get_text()


def test_speckle_that_moves_between_positions_is_not_a_grain():
    """A bright disk at a new place in every pattern (speckle) scores low; one shared by
    neighbouring positions (a grain at one orientation) scores high."""
    rng = np.random.default_rng(5)
    patterns, origins, grain = _scan(grain=False, seed=2)
    n = len(patterns)
    q = patterns.shape[-1]
    yy, xx = np.indices((q, q))
    o = origins.reshape(n, 2)
    shared = grain.copy()
    shared[5:10, 4:9] = True
    for k in range(n):
        # speckle: at every position one disk as bright as a grain's, at a random angle
        phi = rng.uniform(0, 2 * np.pi)
        spot = np.hypot(yy - o[k, 0] - 12 * np.sin(phi), xx - o[k, 1] - 12 * np.cos(phi)) <= 1.5
        patterns[k] += rng.poisson(60 * spot)
        if shared.ravel()[k]:
            disk = np.hypot(yy - o[k, 0] - 12 * np.sin(0.7), xx - o[k, 1] - 12 * np.cos(0.7))
            patterns[k] += rng.poisson(60 * (disk <= 1.5))
    alone = bragg_scores(patterns, o, SETTINGS).reshape(grain.shape)
    # alone, every pattern has a bright spot: the grain does not stand out
    assert np.median(alone[shared]) < np.percentile(alone[~shared], 95) + 3
    score, crystalline = crystallinity_map(_blocks(patterns), origins, grain.shape, SETTINGS)
    d = detection_scores(crystalline, shared)
    assert d["precision"] >= 0.9 and d["recall"] >= 0.8, d


def test_streaming_in_pieces_of_rows_gives_the_same_map():
    patterns, origins, grain = _scan(shape=(8, 10))
    whole = crystallinity_map(_blocks(patterns, 40), origins, grain.shape, SETTINGS)[0]
    pieces = crystallinity_map(_blocks(patterns, 3), origins, grain.shape, SETTINGS)[0]
    np.testing.assert_allclose(pieces, whole)
    assert np.isfinite(whole).all()
    with pytest.raises(ValueError, match="out of order"):
        crystallinity_map(iter([(10, patterns[10:20])]), origins, grain.shape, SETTINGS)


def test_map_figures_outline_the_mask_and_the_simulated_grains():
    from stem2eds.report.beyond import anomaly_map, crystallinity_map_figure

    score = np.arange(30, dtype=float).reshape(5, 6)
    mask = score > 20
    grain = score > 24
    fig = anomaly_map(score, mask, grain, {"uncertainty": None}, "s", 3.0)
    ax = fig.axes[0]
    assert "score > 3" in ax.get_title() and "green, dashed" in ax.get_title()
    assert len(ax.collections) == 2  # the flagged outline and the grains'
    fig = crystallinity_map_figure(score, np.zeros_like(mask), None, "s")
    ax = fig.axes[0]
    assert "0 positions" in ax.get_title() and "grains" not in ax.get_title()
    assert len(ax.collections) == 0  # nothing crystalline, no grains: no outline
