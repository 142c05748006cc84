"""Preprocessing: origins, centring, beam removal, binning, scaling, maps, streaming driver.

Data are made here: a soft-edged unscattered disk at a known origin, an
amorphous ring, bright Bragg spots and Poisson noise.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from stem2eds.formats.bundle import PixelCalibration, create_bundle, open_bundle
from stem2eds.preprocess import (PreprocessSettings, bin_patterns, centre_patterns,
                                 crop_maps, filter_maps, find_origins, fit_origins,
                                 iter_preprocessed, normalise, preprocess_bundle,
                                 preprocess_maps, process_patterns, radial_axis,
                                 radial_profile, raw_calibration, remove_beam)
from stem2eds.preprocess.patterns import apply_scaling, detector_centre


from builders import make_bundle, make_patterns  # noqa: E402


@pytest.mark.parametrize("q, radius, counts", [(256, 20.0, 5.0), (128, 10.0, 5.0)])
def test_origin_error_below_0_2_px_with_bragg_spots(q, radius, counts):
    rng = np.random.default_rng(7)
    truth = q / 2 + rng.uniform(-q / 12, q / 12, (120, 2))
    # Bragg spots peak at 3x the disk level; ~10-30 k counts per pattern
    patterns = make_patterns(truth, q=q, disk_radius=radius, disk_counts=counts,
                             ring_radius=0.3 * q, spot_counts=3 * counts, seed=3)
    found = find_origins(patterns)
    err = np.hypot(*(found.origins - truth).T)
    print(f"q={q}: median origin error {np.median(err):.3f} px, 95th pct "
          f"{np.percentile(err, 95):.3f} px, radius {found.probe_radius:.2f} (true {radius})")
    assert np.median(err) < 0.2
    assert np.percentile(err, 95) < 0.6
    assert abs(found.probe_radius - radius) < 1.0


def test_origin_of_empty_pattern_is_nan():
    patterns = make_patterns([[32.0, 32.0]], q=64, disk_radius=5)
    patterns = np.concatenate([patterns, np.zeros_like(patterns)])
    found = find_origins(patterns, probe_radius=5.0)
    assert np.all(np.isfinite(found.origins[0]))
    assert np.all(np.isnan(found.origins[1]))


@pytest.mark.parametrize("method", ["plane", "poly2"])
def test_origin_fit_recovers_surface_and_rejects_outliers(method, rng):
    rx, ry = 20, 15
    i, j = np.meshgrid(np.arange(rx) / (rx - 1), np.arange(ry) / (ry - 1), indexing="ij")
    true = np.stack([60 + 3 * i - 2 * j + (1.5 * i * j if method == "poly2" else 0),
                     70 - 1 * i + 4 * j + (2.0 * i * i if method == "poly2" else 0)], -1)
    measured = true + rng.normal(0, 0.05, true.shape)
    bad = rng.choice(rx * ry, 12, replace=False)
    measured.reshape(-1, 2)[bad] += rng.uniform(5, 20, (12, 2))
    measured[0, 0] = np.nan
    fit = fit_origins(measured, method)
    assert np.abs(fit.fitted - true).max() < 0.1
    assert set(np.flatnonzero(~fit.inliers.ravel())) >= set(bad)
    assert fit.n_outliers <= 12 + 1 + 5  # the outliers, the gap, a few noisy tails
    plain = fit_origins(measured, "none")
    assert np.isfinite(plain.fitted).all()


# -- pattern steps -------------------------------------------------------------

def test_centring_puts_disk_at_detector_centre():
    q = 64
    origins = np.array([[20.3, 40.7], [33.9, 25.2], [31.5, 31.5]])
    clean = make_patterns(origins, q=q, disk_radius=6, n_spots=0, ring_counts=0,
                          background=0, noise=False)
    centred = centre_patterns(clean, origins)
    found = find_origins(centred, probe_radius=6.0).origins
    assert np.abs(found - np.array(detector_centre((q, q)))).max() < 0.05
    # the disk's counts are conserved by the shift (it stays inside the detector)
    np.testing.assert_allclose(centred.sum((1, 2)), clean.sum((1, 2)), rtol=1e-3)


def test_beam_removal_zeroes_the_disk():
    q = 64
    c = detector_centre((q, q))
    clean = make_patterns([c, c], q=q, disk_radius=6, n_spots=0, noise=False)
    out = remove_beam(clean, 8.0)
    r = np.hypot(*np.meshgrid(np.arange(q) - c[0], np.arange(q) - c[1], indexing="ij"))
    assert np.all(out[:, r <= 8.0] == 0)
    np.testing.assert_array_equal(out[:, r > 8.0], clean[:, r > 8.0])
    assert out[:, r <= 6].size and clean[:, r <= 6].min() > 0


def test_binning_preserves_total(rng):
    patterns = rng.poisson(3.0, (5, 64, 64)).astype(np.uint16)
    binned = bin_patterns(patterns, 4)
    assert binned.shape == (5, 16, 16)
    np.testing.assert_array_equal(binned.sum((1, 2)), patterns.sum((1, 2), dtype=np.int64))
    np.testing.assert_array_equal(binned[:, 0, 0], patterns[:, :4, :4].sum((1, 2)))


def test_bin_factor_must_divide_detector():
    from stem2eds.errors import InputError

    with pytest.raises(InputError, match="does not divide"):
        bin_patterns(np.zeros((1, 30, 30)), 4)


def test_scaling_keeps_values_in_unit_range_and_reuses_scale(rng):
    values = rng.gamma(2.0, 50.0, (10, 16, 16)).astype(np.float32)
    for scaling in ("none", "sqrt", "log"):
        scaled = apply_scaling(values, scaling)
        out = normalise(scaled, float(np.percentile(scaled, 99)))
        assert out.min() >= 0 and out.max() <= 1
        assert 0.005 < np.mean(out == 1) < 0.02  # ~1 % above the 99th percentile clipped
    given = normalise(values, 1000.0)
    np.testing.assert_allclose(given, np.clip(values / 1000.0, 0, 1))


# -- radial profiles -------------------------------------------------------------

def test_radial_profile_of_ring_peaks_at_its_radius():
    q = 64
    c = detector_centre((q, q))
    rr = np.hypot(*np.meshgrid(np.arange(q) - c[0], np.arange(q) - c[1], indexing="ij"))
    patterns = np.stack([np.exp(-0.5 * ((rr - 12.5) / 1.0) ** 2), np.ones((q, q))])
    prof = radial_profile(patterns)
    assert prof.shape == (2, 32)
    assert np.argmax(prof[0]) == 12  # ring k holds radii [k, k+1)
    np.testing.assert_allclose(prof[1], 1.0, rtol=1e-5)
    np.testing.assert_allclose(radial_profile(patterns[0]), prof[0])
    settings = PreprocessSettings(bin_factor=4, detector_shape=(256, 256))
    axis = radial_axis(settings, PixelCalibration(q_pixel_size=0.02, q_pixel_unit="1/nm"))
    assert axis.shape == (32,)
    # ring k of the binned detector has mean radius ~k + 0.5 binned px of 0.08 1/nm
    np.testing.assert_allclose(axis[5:], (np.arange(5, 32) + 0.5) * 0.08, rtol=0.02)


# -- maps ------------------------------------------------------------------------

def test_blur_lowers_noise_and_crop_shapes(rng):
    truth = np.stack(np.meshgrid(np.linspace(0.2, 0.5, 40), np.linspace(0.1, 0.3, 30),
                                 indexing="ij")).astype(np.float32)
    noisy = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1).astype(np.float32)
    for method in ("gaussian", "median"):
        smooth = filter_maps(noisy, method, 7)
        err_before = np.sqrt(np.mean((noisy - truth)[:, 5:-5, 5:-5] ** 2))
        err_after = np.sqrt(np.mean((smooth - truth)[:, 5:-5, 5:-5] ** 2))
        assert err_after < 0.5 * err_before, method
    import cv2

    np.testing.assert_allclose(filter_maps(noisy)[1], cv2.GaussianBlur(noisy[1], (7, 7), 0),
                               atol=1e-6)
    np.testing.assert_array_equal(filter_maps(noisy, "none"), noisy)
    settings = PreprocessSettings(crop=(5, 35, 2, 22))
    out = preprocess_maps(noisy, settings)
    assert out.shape == (2, 30, 20)
    np.testing.assert_allclose(out, filter_maps(noisy)[:, 5:35, 2:22])
    assert crop_maps(noisy, None).shape == noisy.shape


def test_settings_round_trip_through_json():
    s = PreprocessSettings(bin_factor=2, scaling="sqrt", crop=(1, 5, 0, 4), scale=3.5,
                           detector_shape=(64, 64))
    again = PreprocessSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s


# -- streaming driver --------------------------------------------------------------

def test_streaming_driver_equals_in_memory_pipeline(tmp_path, monkeypatch):
    src = tmp_path / "raw.h5"
    origins_true, patterns, comp = make_bundle(src)
    out = tmp_path / "pre.h5"
    settings = preprocess_bundle(src, out, PreprocessSettings(crop=(1, 11, 2, 10)),
                                 quiet=True, batch=16)
    assert settings.scale > 0 and settings.beam_radius > 0 and settings.probe_radius > 0
    # in-memory reference: the same functions on the whole cropped stack at once
    stack = patterns[1:11, 2:10].reshape(-1, 64, 64)
    # the aperture radius comes from the region's first rows (up to 256 patterns)
    radius = find_origins(stack[:256]).probe_radius
    measured = find_origins(stack, radius).origins.reshape(10, 8, 2)
    fitted = fit_origins(measured, "plane").fitted
    values = process_patterns(stack, fitted.reshape(-1, 2), settings.beam_radius, 4, "none")
    expected = normalise(values, settings.scale, settings.ceiling_reference)
    with open_bundle(out) as pre:
        assert pre.kind == "preprocessed"
        got = pre.diffraction[()]
        assert got.shape == (10, 8, 16, 16) and got.dtype == np.float32
        np.testing.assert_allclose(got.reshape(-1, 16, 16), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(pre.file["calibration/origin"][()], measured, atol=1e-5)
        # at most each pattern's dose-following ceiling (preprocess.patterns.normalise)
        assert got.min() >= 0 and got.max() <= expected.max()
        # fitted origins track the true descan
        err = np.abs(pre.file["calibration/origin_fit"][()] - origins_true[1:11, 2:10])
        assert err.max() < 0.3
        np.testing.assert_allclose(pre.eds(), preprocess_maps(comp, settings), atol=1e-6)
        np.testing.assert_allclose(pre.maps("eds_raw"), comp[:, 1:11, 2:10])
        np.testing.assert_allclose(pre.maps("truth"), comp[:, 1:11, 2:10])
        assert pre.haadf.shape == (10, 8)
        np.testing.assert_allclose(pre.file["simulation/origin"][()], origins_true[1:11, 2:10])
        assert PreprocessSettings.from_dict(pre.json_attr("preprocess")) == settings
        assert pre.calibration.q_pixel_size == pytest.approx(0.08)
        assert raw_calibration(pre).q_pixel_size == pytest.approx(0.02)
    # prediction path: same patterns from the raw bundle, no file written,
    # here also transformed in chunks smaller than the read blocks
    from stem2eds.preprocess import executor

    monkeypatch.setattr(executor, "WORK_CHUNK", 7)
    with open_bundle(src) as raw:
        blocks = list(iter_preprocessed(raw, settings, batch=50))
    streamed = np.concatenate([b for _, b in blocks])
    assert [s for s, _ in blocks][0] == 0
    np.testing.assert_allclose(streamed, got.reshape(-1, 16, 16), rtol=1e-6, atol=1e-7)


def test_given_scale_is_reused(tmp_path):
    src = tmp_path / "raw.h5"
    make_bundle(src, rx=4, ry=5)
    first = preprocess_bundle(src, tmp_path / "a.h5", PreprocessSettings(), quiet=True)
    second = preprocess_bundle(src, tmp_path / "b.h5",
                               PreprocessSettings(scale=2 * first.scale), quiet=True)
    assert second.scale == 2 * first.scale
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        va, vb = a["diffraction"][()], b["diffraction"][()]
    unclipped = va < 1  # values clipped at 1 under the first scale carry no ratio
    assert 0 < np.mean(~unclipped) < 0.01
    np.testing.assert_allclose(vb[unclipped], va[unclipped] / 2, rtol=1e-5, atol=1e-7)
    assert vb.max() <= 0.5 + 1e-6 or np.all(vb[~unclipped] >= 0.5 - 1e-6)


def test_figures_are_written(tmp_path):
    from stem2eds.preprocess import save_figures

    src = tmp_path / "raw.h5"
    make_bundle(src, rx=6, ry=5)
    settings = preprocess_bundle(src, tmp_path / "pre.h5", PreprocessSettings(), quiet=True)
    with open_bundle(src) as raw:
        paths = save_figures(raw, settings, tmp_path)
    assert [p.name for p in paths] == ["preprocess_pattern_steps.png", "preprocess_eds_blur.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


# -- properties ------------------------------------------------------------------

from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402


@hsettings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.sampled_from([1, 2, 4]), st.integers(0, 2 ** 31 - 1))
def test_binning_total_and_block_sums_hold_for_any_batch(n, factor, seed):
    patterns = np.random.default_rng(seed).poisson(2.0, (n, 16, 24)).astype(np.uint16)
    binned = bin_patterns(patterns, factor)
    assert binned.shape == (n, 16 // factor, 24 // factor)
    np.testing.assert_array_equal(binned.sum((1, 2)), patterns.sum((1, 2), dtype=np.int64))
    i, j = 16 // factor - 1, 24 // factor - 1
    np.testing.assert_array_equal(
        binned[:, i, j], patterns[:, i * factor:, j * factor:].sum((1, 2), dtype=np.int64))


@hsettings(max_examples=25, deadline=None)
@given(st.integers(-5, 5), st.integers(-5, 5), st.floats(0, 0.999), st.floats(0, 0.999))
def test_centring_is_an_exact_shift(di, dj, fi, fj):
    q = 20
    rng = np.random.default_rng(0)
    pattern = np.zeros((1, q, q), np.float32)
    pattern[0, 6:14, 6:14] = rng.random((8, 8))  # content away from the edges
    c = detector_centre((q, q))
    origin = np.array([[c[0] + di + fi, c[1] + dj + fj]])
    out = centre_patterns(pattern, origin)[0]
    # output pixel (r, s) = bilinear sample of the input at (r + di + fi, s + dj + fj)
    r, s = 9, 10
    a, b = r + di, s + dj
    src = pattern[0]
    want = ((1 - fi) * (1 - fj) * src[a, b] + (1 - fi) * fj * src[a, b + 1]
            + fi * (1 - fj) * src[a + 1, b] + fi * fj * src[a + 1, b + 1])
    assert out[r, s] == pytest.approx(want, abs=1e-5)
    if fi == 0 and fj == 0:
        np.testing.assert_allclose(out, np.roll(src, (-di, -dj), axis=(0, 1)), atol=1e-6)
