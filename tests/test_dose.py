"""Dose and thickness: predictions of the same specimen at half and double dose.

The overall intensity of a pattern scales with the dose (and, to first
order, with the film thickness); with ``RadialParams.normalise`` the radial
model removes each pattern's mean log ring intensity, so a dose change leaves
the features unchanged up to shot noise and to the preprocessing's clip. A
clip fixed at the training scale (1 in preprocessed units) is reached at
double dose on the brightest rings; the dose-following ceiling
(``PreprocessSettings.dose_ceiling``, :func:`stem2eds.preprocess.patterns.normalise`)
moves with each pattern's mean instead. Measured on larger scans in
``benchmarks/bench_dose.py`` (docs/transfer.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stem2eds.errors import InputError
from builders import simulate_setup, small_config


@pytest.fixture(scope="module")
def doses(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("doses")
    kw = {"n_scans": 3, "detector": 128}
    return {"x1": simulate_setup(root / "x1", **kw),
            "x0.5": simulate_setup(root / "x05", dose=1e5, **kw),
            "x2": simulate_setup(root / "x2", dose=4e5, **kw)}


def _train(scans, folder: Path, normalise: bool) -> Path:
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.fit import train

    config = small_config(max_epochs=3, model_params={"normalise": normalise},
                          preprocess=PreprocessSettings(bin_factor=4, eds_kernel=3))
    return train(scans, folder / "run", config, quiet=True)


def test_normalised_features_ignore_the_overall_intensity():
    import torch

    from stem2eds.models.radial import RadialNet, RadialParams

    net = RadialNet((32, 32), 3, RadialParams(normalise=True))
    x = torch.rand(4, 32, 32) * 0.2 + 0.01
    np.testing.assert_allclose(net.frontend(0.5 * x).numpy(), net.frontend(x).numpy(),
                               atol=2e-3)  # up to the 1e-5 floor under the log
    plain = RadialNet((32, 32), 3, RadialParams(normalise=False))
    assert not np.allclose(plain.frontend(0.5 * x).numpy(), plain.frontend(x).numpy(),
                           atol=0.1)


@pytest.fixture(scope="module")
def moved(doses, tmp_path_factory) -> dict:
    """How far half and double dose move the prediction, with and without normalisation."""
    from stem2eds.predict.predictor import load_run

    out = {}
    for normalise in (True, False):
        folder = tmp_path_factory.mktemp(f"dose_run_{normalise}")
        predictor = load_run(_train(doses["x1"][:2], folder, normalise))
        base = predictor.predict_scan(doses["x1"][2]).eds
        out[normalise] = {d: float(np.abs(predictor.predict_scan(doses[d][2]).eds
                                          - base).mean()) for d in ("x0.5", "x2")}
        out[normalise]["contrast"] = float(base.std(axis=(1, 2)).mean())
    return out


@pytest.mark.slow
def test_half_dose_moves_normalised_predictions_little(moved):
    # Half dose moves the prediction by less than a quarter of the composition
    # contrast of the map itself (the map still shows the same features at the
    # same places), and by far less than without the normalisation.
    assert moved[True]["x0.5"] < 0.25 * moved[True]["contrast"], moved
    assert moved[True]["x0.5"] < 0.25 * moved[False]["x0.5"], moved


@pytest.mark.slow
def test_double_dose_moves_normalised_predictions_little(moved):
    # With the dose-following ceiling double dose is as harmless as half dose
    # (with the fixed clip at 1 it moved the prediction by about the contrast).
    assert moved[True]["x2"] < 0.25 * moved[True]["contrast"], moved
    assert moved[True]["x2"] < 0.25 * moved[False]["x2"], moved


# -- the dose-following ceiling ------------------------------------------------------

def _patterns(seed=0, n=6, q=16) -> np.ndarray:
    """(n, q, q) ring-like float32 patterns of different brightness, a few pixels bright."""
    rng = np.random.default_rng(seed)
    r = np.hypot(*np.meshgrid(np.arange(q) - 7.5, np.arange(q) - 7.5, indexing="ij"))
    ring = np.exp(-((r - 4) / 1.5) ** 2)
    values = ring * rng.uniform(0.5, 1.5, (n, 1, 1)) * rng.uniform(0.9, 1.1, (n, q, q))
    values[:, 3, 8] *= 3  # a Bragg-like spot
    return values.astype(np.float32)


def test_dose_ceiling_changes_nothing_below_one():
    from stem2eds.preprocess.patterns import normalise

    v = _patterns()
    scale, reference = float(np.percentile(v, 99)), float(np.median(v.mean(axis=(1, 2))))
    fixed = normalise(v, scale)
    follows = normalise(v, scale, reference / scale)
    assert fixed.max() == 1 and follows.max() > 1  # the clip is reached
    below = fixed < 1
    np.testing.assert_array_equal(follows[below], fixed[below])
    assert np.all(follows[~below] >= 1)
    # patterns dimmer than the reference keep the fixed clip at 1
    dim = v.mean(axis=(1, 2)) <= reference
    assert dim.any()
    np.testing.assert_array_equal(follows[dim], fixed[dim])


@pytest.mark.parametrize("k", [2.0, 4.0])
def test_dose_ceiling_scales_with_the_dose(k):
    from stem2eds.preprocess.patterns import normalise

    v = _patterns(seed=1)
    scale = float(np.percentile(v, 99))
    reference = float(np.min(v.mean(axis=(1, 2)))) / scale  # every pattern at or above it
    np.testing.assert_allclose(normalise(k * v, scale, reference),
                               k * normalise(v, scale, reference), rtol=1e-6, atol=1e-7)
    fixed = normalise(k * v, scale)  # the fixed clip saturates the brighter rings
    assert np.mean(fixed == 1) > 2 * np.mean(normalise(v, scale) == 1)


def test_settings_without_dose_fields_keep_the_fixed_clip():
    from stem2eds.features import RingGeometry
    from stem2eds.preprocess import PreprocessSettings

    old = {"bin_factor": 4, "scale": 120.0, "beam_radius": 5.0}  # a run.json before the field
    settings = PreprocessSettings.from_dict(old)
    assert settings.dose_ceiling and settings.ceiling_reference is None
    assert RingGeometry.from_settings(settings, (64, 64)).dose_reference is None
    new = PreprocessSettings.from_dict({**old, "dose_reference": 0.05})
    assert RingGeometry.from_settings(new, (64, 64)).dose_reference == 0.05
    off = PreprocessSettings.from_dict({**old, "dose_reference": 0.05, "dose_ceiling": False})
    assert off.ceiling_reference is None
    with pytest.raises(InputError, match="`dose_reference`"):
        PreprocessSettings.from_dict({**old, "dose_reference": 0.0})
    with pytest.raises(InputError, match="`dose_ceiling`"):
        PreprocessSettings.from_dict({**old, "dose_ceiling": "no"})


def test_preprocessing_fits_the_dose_reference_with_the_scale(tmp_path):
    from builders import make_bundle
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.preprocess import PreprocessSettings, preprocess_bundle

    src = tmp_path / "raw.h5"
    make_bundle(src)
    on = preprocess_bundle(src, tmp_path / "on.h5", PreprocessSettings(), quiet=True)
    off = preprocess_bundle(src, tmp_path / "off.h5", PreprocessSettings(dose_ceiling=False),
                            quiet=True)
    assert on.scale == off.scale and off.dose_reference is None
    with open_bundle(tmp_path / "on.h5") as a, open_bundle(tmp_path / "off.h5") as b:
        d_on, d_off = a.diffraction[()], b.diffraction[()]
        assert a.json_attr("preprocess")["dose_reference"] == on.dose_reference
    # the median pattern mean in units of the scale (the clip moves it very little)
    assert on.dose_reference == pytest.approx(np.median(d_off.mean(axis=(2, 3))), rel=0.01)
    assert d_off.max() == 1 and d_on.max() > 1
    np.testing.assert_array_equal(d_on[d_off < 1], d_off[d_off < 1])
    # reused settings (a later training scan, prediction) keep the reference
    again = preprocess_bundle(src, tmp_path / "again.h5", on, quiet=True)
    assert again.dose_reference == on.dose_reference


def test_fused_front_end_follows_the_dose_ceiling():
    import torch

    from stem2eds.features import RingGeometry, ring_features
    from stem2eds.features.torch_rings import ring_statistics_torch
    from stem2eds.models.rings import RingStatistics
    from stem2eds.preprocess.patterns import normalise, process_patterns

    rng = np.random.default_rng(3)
    n, q = 12, 64
    origins = (q - 1) / 2 + rng.uniform(-3, 3, (n, 2))
    r = np.hypot(np.arange(q)[None, :, None] - origins[:, 0, None, None],
                 np.arange(q)[None, None, :] - origins[:, 1, None, None])
    lam = 2000.0 * (r < 3.5) + 40 * np.exp(-((r - 14) / 3) ** 2) + 5
    raw = rng.poisson(lam * rng.uniform(0.5, 2.0, (n, 1, 1))).astype(np.uint16)
    stats = ("mean", "std", "max")
    g = RingGeometry((q, q), 4, 4.6, "none", 300.0, stats, dose_reference=0.05)
    values = process_patterns(raw, origins, g.beam_radius, 4, "none", "binned")
    patterns = normalise(values, g.scale, g.dose_reference)
    assert patterns.max() > 1  # the ceiling is above 1 somewhere
    want = RingStatistics(g.binned_shape, stats)(torch.from_numpy(patterns)).reshape(n, -1)
    got = ring_features(raw, origins, g)
    on_torch = ring_statistics_torch(torch.from_numpy(raw), torch.from_numpy(origins), g)
    k = g.n_rings
    for x in (got, on_torch.reshape(n, -1).numpy()):  # means and maxima; std loses digits
        np.testing.assert_allclose(x[:, :k], want[:, :k].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(x[:, 2 * k:], want[:, 2 * k:].numpy(), rtol=1e-5, atol=1e-6)
