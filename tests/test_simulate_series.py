"""Physics properties of the simulated scan series, read back from the bundles it writes."""

from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stem2eds.formats.bundle import open_bundle
from stem2eds.simulate import (ELEMENTS, CompositionModel, SimulationSettings, composition_maps,
                               latent_fields, simulate_series)

SMALL = SimulationSettings(n_scans=6, scan_shape=(40, 30), detector=64, seed=11)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return simulate_series(out, SMALL)


def _read(path):
    with open_bundle(path) as b:
        f = b.file
        return dict(eds=b.eds(), truth=b.maps("truth"), haadf=b.haadf,
                    origin=f["simulation/origin"][()], grain_mask=f["simulation/grain_mask"][()],
                    grain_thickness=f["simulation/grain_thickness"][()],
                    thickness=f["simulation/thickness"][()], diffraction=f["diffraction"][()])


def _radial_profiles(diffraction: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Azimuthal average of every pattern around its known origin, (Rx*Ry, Qx//2)."""
    rx, ry, qx, qy = diffraction.shape
    rr, cc = np.indices((qx, qy))
    n_bins = qx // 2
    out = np.empty((rx * ry, n_bins))
    for k, (pattern, o) in enumerate(zip(diffraction.reshape(-1, qx, qy), origin.reshape(-1, 2))):
        r = np.hypot(rr - o[0], cc - o[1]).astype(int).ravel()
        sums = np.bincount(r, pattern.ravel().astype(float), minlength=n_bins)[:n_bins]
        out[k] = sums / np.maximum(np.bincount(r, minlength=n_bins)[:n_bins], 1)
    return out


def _blur(maps: np.ndarray) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(m.astype(np.float32), (7, 7), 0) for m in maps])


def test_bundles_have_layout_calibration_and_ground_truth(series):
    assert [p.name for p in series] == [f"scan_{k:04d}.h5" for k in range(33, 39)]
    with open_bundle(series[0], require=("diffraction", "eds", "haadf", "truth")) as b:
        assert b.kind == "raw" and b.elements == list(ELEMENTS)
        assert b.scan_shape == (40, 30) and b.detector_shape == (64, 64)
        assert b.diffraction.dtype == np.uint16
        cal = b.calibration
        assert (cal.r_pixel_size, cal.r_pixel_unit) == (1.053, "nm")
        assert cal.q_pixel_size == pytest.approx(0.1451 * 256 / 64) and cal.q_pixel_unit == "1/nm"
        assert cal.beam_energy_kev == 200.0
        prov = b.provenance
        assert prov["settings"]["seed"] == 11 and prov["settings"]["detector"] == 64
        f = b.file
        assert f["simulation/origin"].shape == (40, 30, 2) and f["simulation/origin"].dtype == np.float32
        assert f["simulation/grain_mask"].dtype == np.uint8
        assert f["simulation/thickness"].shape == (40, 30)


def test_fractions_sum_to_one_si_minor_and_oxygen_rises_to_bottom(series):
    for path in series:
        d = _read(path)
        for maps in (d["truth"], d["eds"]):
            assert np.all((maps >= 0) & (maps <= 1))
            assert np.allclose(maps.sum(axis=0), 1.0, atol=1e-4)
        si = d["truth"][ELEMENTS.index("Si")]
        assert 0.01 < si.mean() < 0.06
        o_rows = d["truth"][ELEMENTS.index("O")].mean(axis=1)
        assert o_rows[-4:].mean() > o_rows[:4].mean() + 0.2
        assert o_rows[:4].mean() < 0.06


def test_series_evolves_front_moves_and_segregation_grows():
    shape, n = (60, 30), 6
    latent = latent_fields(shape, n, np.random.default_rng(2))
    maps = [composition_maps(latent, shape, k, n) for k in range(n)]
    oxygen = [m[0].mean() for m in maps]
    assert np.all(np.diff(oxygen) > 0)                       # the oxidation front moves up
    ge_sb = [np.std(m[2] - m[3]) for m in maps]
    assert ge_sb[-1] > 1.3 * ge_sb[0]                        # segregation grows
    # Neighbouring scans resemble each other more than the ends of the series do.
    flat = [m.reshape(5, -1) for m in maps]
    near = np.abs(flat[1] - flat[0]).mean()
    far = np.abs(flat[-1] - flat[0]).mean()
    assert far > 2 * near
    # Without growth or front movement the series would not evolve.
    frozen = CompositionModel(segregation_growth=0.0, front_speed=0.0, drift=0.0)
    latent = latent_fields(shape, n, np.random.default_rng(2), frozen)
    assert np.allclose(composition_maps(latent, shape, 0, n, model=frozen),
                       composition_maps(latent, shape, n - 1, n, model=frozen))


def test_origin_drifts_more_than_a_pixel_and_matches_patterns(series):
    d = _read(series[0])
    origin = d["origin"]
    span = np.ptp(origin.reshape(-1, 2), axis=0)
    assert np.hypot(*span) > 1.0
    # Descan is a plane over the scan plus jitter: plane residuals are small and random.
    rr, cc = np.indices(origin.shape[:2])
    design = np.stack([np.ones(rr.size), rr.ravel(), cc.ravel()], axis=1)
    _, residual, *_ = np.linalg.lstsq(design, origin.reshape(-1, 2), rcond=None)
    jitter = np.sqrt(residual / rr.size)
    assert np.all(jitter < 0.2) and np.all(jitter > 0.01)
    # The brightest disk of each pattern sits on the recorded origin.
    pats = d["diffraction"].reshape(-1, 64, 64).astype(float)
    rr, cc = np.indices((64, 64))
    for pattern, o in zip(pats[::37], origin.reshape(-1, 2)[::37]):
        bright = pattern > 0.5 * pattern.max()
        centre = (np.average(rr[bright], weights=pattern[bright]),
                  np.average(cc[bright], weights=pattern[bright]))
        assert np.hypot(centre[0] - o[0], centre[1] - o[1]) < 0.5


def test_gaussian_blur_brings_eds_closer_to_truth(series):
    for path in series:
        d = _read(path)
        raw = np.abs(d["eds"] - d["truth"]).mean(axis=(1, 2))
        blurred = np.abs(_blur(d["eds"]) - d["truth"]).mean(axis=(1, 2))
        assert np.all(blurred < raw), (raw, blurred)


def test_grains_in_some_scans_only_and_they_add_bragg_disks(series):
    data = [_read(p) for p in series]
    with_grains = [d["grain_mask"].any() for d in data]
    assert any(with_grains) and not all(with_grains)
    d = data[with_grains.index(True)]
    mask = d["grain_mask"].astype(bool)
    assert np.all(d["grain_thickness"][mask] > 0) and np.all(d["grain_thickness"][~mask] == 0)
    prof = _radial_profiles(d["diffraction"], d["origin"])
    # Off-beam maximum relative to the ring: Bragg disks make it much larger in grains.
    pats = d["diffraction"].reshape(-1, 64, 64).astype(float)
    rr, cc = np.indices((64, 64))
    peak = []
    for pattern, o in zip(pats, d["origin"].reshape(-1, 2)):
        far = np.hypot(rr - o[0], cc - o[1]) > 8
        peak.append(pattern[far].max())
    peak = np.array(peak) / prof[:, 8:].mean(axis=1)
    thick = d["grain_thickness"].ravel() > 3.0
    assert thick.any()
    assert np.median(peak[thick]) > 2 * np.median(peak[~mask.ravel()])
    # HAADF is brighter on grains than the amorphous film's Z-contrast predicts:
    # the excess grows with the crystalline share of the thickness.
    from stem2eds.simulate.amorphous import ATOMIC_VOLUME

    z = np.array([8, 14, 32, 51, 52], dtype=float) ** 1.7
    volume = np.array([ATOMIC_VOLUME[e] for e in ELEMENTS])
    amorphous = d["thickness"] * np.tensordot(z, d["truth"], axes=1) / np.tensordot(volume, d["truth"], axes=1)
    excess = d["haadf"] / amorphous
    excess = excess / np.median(excess[~mask]) - 1.0
    share = d["grain_thickness"] / d["thickness"]
    slope = np.polyfit(share.ravel(), excess.ravel(), 1)[0]
    assert 0.1 < slope < 0.5, slope                    # simulated grain contrast is 0.25


def test_haadf_follows_thickness_and_z_contrast(series):
    d = _read(series[-1])
    z = np.array([8, 14, 32, 51, 52], dtype=float) ** 1.7
    model = d["thickness"] * np.tensordot(z, d["truth"], axes=1)
    r = np.corrcoef(model.ravel(), d["haadf"].ravel())[0, 1]
    assert r > 0.8


def test_radial_profile_ridge_is_learnable_but_not_trivial(series):
    """Extrapolation: a radial-profile linear model trained on the first scan, tested on the last."""
    def features(d):
        prof = _radial_profiles(d["diffraction"], d["origin"])[:, 2:]   # beyond the beam disk
        return np.log(np.maximum(prof / prof.sum(axis=1, keepdims=True), 1e-7))

    first, last = _read(series[0]), _read(series[-1])
    model = make_pipeline(StandardScaler(), Ridge(alpha=10.0))
    model.fit(features(first), _blur(first["eds"]).reshape(5, -1).T)
    pred = model.predict(features(last))
    target = _blur(last["eds"]).reshape(5, -1)
    r = np.array([np.corrcoef(pred[:, i], target[i])[0, 1] for i in range(5)])
    print("Pearson r first->last:", dict(zip(ELEMENTS, r.round(3))), "mean", r.mean().round(3))
    assert r[ELEMENTS.index("O")] > 0.6 and r[ELEMENTS.index("Te")] > 0.6
    assert r.mean() < 0.97


def test_same_seed_same_bytes_different_seed_differs(tmp_path, run_cli):
    args = ["--scans", "2", "--scan-shape", "5x4", "--detector", "32", "--quiet"]
    assert run_cli("simulate", tmp_path / "a", *args, "--seed", "4")[0] == 0
    assert run_cli("simulate", tmp_path / "b", *args, "--seed", "4", "--workers", "1")[0] == 0
    assert run_cli("simulate", tmp_path / "c", *args, "--seed", "5")[0] == 0
    for name in ("scan_0033.h5", "scan_0034.h5"):
        a, b, c = ((tmp_path / d / name).read_bytes() for d in "abc")
        assert a == b
        assert a != c
    with h5py.File(tmp_path / "c" / "scan_0034.h5") as f:
        assert json.loads(f.attrs["provenance"])["settings"]["seed"] == 5


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, run_cli):
    code, out, err = run_cli("simulate", tmp_path / "x", "--scans", "0")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--scans" in err
    code, out, err = run_cli("simulate", tmp_path / "y", "--scan-shape", "4by3")
    assert code == 2 and "scan-shape" in err
    code, out, err = run_cli("simulate", tmp_path / "z", "--detector", "8")
    assert code == 2 and "--detector" in err
    assert not any(tmp_path.rglob("*.h5"))


def test_eds_quantification_is_unbiased_on_average(series):
    d = _read(series[0])
    bias = d["eds"].mean(axis=(1, 2)) - d["truth"].mean(axis=(1, 2))
    assert np.all(np.abs(bias) < 0.005), dict(zip(ELEMENTS, bias))


def test_overview_figures_are_written(series, tmp_path):
    from stem2eds.simulate.figure import overview_figures, radial_average

    paths = overview_figures(series[0], tmp_path / "simulated")
    assert [p.name for p in paths] == ["simulated_pattern.png", "simulated_maps.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    ring = radial_average(np.ones((16, 16)), np.array([7.5, 7.5]), 8)
    assert np.allclose(ring, 1.0)


def test_interpolation_is_easier_than_extrapolation(series):
    """The series evolves: training on both ends beats training on the first scan (middle scans)."""
    def features(d):
        prof = _radial_profiles(d["diffraction"], d["origin"])[:, 2:]
        return np.log(np.maximum(prof / prof.sum(axis=1, keepdims=True), 1e-7))

    data = [_read(p) for p in series]
    xs = [features(d) for d in data]
    ys = [_blur(d["eds"]).reshape(5, -1).T for d in data]
    extrapolate = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(xs[0], ys[0])
    interpolate = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(
        np.vstack([xs[0], xs[-1]]), np.vstack([ys[0], ys[-1]]))
    mae = {name: np.mean([np.abs(m.predict(x) - y).mean() for x, y in zip(xs[1:-1], ys[1:-1])])
           for name, m in (("extrapolation", extrapolate), ("interpolation", interpolate))}
    print("mean MAE over the middle scans:", mae)
    assert mae["interpolation"] < mae["extrapolation"]


@settings(max_examples=25, deadline=None)
@given(segregation=st.floats(0.0, 0.4), oxygen_max=st.floats(0.0, 0.7),
       silicon=st.floats(0.0, 0.1), front_start=st.floats(0.0, 1.0),
       scan_index=st.integers(0, 9), seed=st.integers(0, 2 ** 16))
def test_composition_is_always_fractions(segregation, oxygen_max, silicon, front_start,
                                         scan_index, seed):
    model = CompositionModel(segregation=segregation, oxygen_max=oxygen_max, silicon=silicon,
                             front_start=front_start)
    latent = latent_fields((12, 9), 10, np.random.default_rng(seed), model)
    comp = composition_maps(latent, (12, 9), scan_index, 10, model=model)
    assert comp.shape == (5, 12, 9)
    assert np.all(comp >= 0) and np.all(comp <= 1)
    assert np.allclose(comp.sum(axis=0), 1.0)


def test_settings_round_trip_through_provenance(series):
    from stem2eds.simulate.series import settings_from_provenance

    with h5py.File(series[0]) as f:
        rebuilt = settings_from_provenance(f.attrs["provenance"])
    assert rebuilt.to_dict() == SMALL.to_dict()


def test_failure_mid_scan_leaves_no_bundle(tmp_path, monkeypatch):
    import stem2eds.simulate.series as series_module

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("disk on fire")
        return np.zeros((len(args[0]), 32, 32), np.uint16)

    monkeypatch.setattr(series_module, "simulate_patterns", failing)
    settings = SimulationSettings(n_scans=1, scan_shape=(20, 10), detector=32, workers=2)
    with pytest.raises(RuntimeError):
        simulate_series(tmp_path / "out", settings)
    assert list((tmp_path / "out").iterdir()) == []


def test_thickness_mean_and_grain_scan_fraction_follow_settings(tmp_path, run_cli):
    args = ["--scans", "3", "--scan-shape", "10x8", "--detector", "32", "--quiet"]
    assert run_cli("simulate", tmp_path / "none", *args, "--grain-scans", "0",
                   "--thickness", "20")[0] == 0
    assert run_cli("simulate", tmp_path / "all", *args, "--grain-scans", "1")[0] == 0
    for name in ("scan_0033.h5", "scan_0034.h5", "scan_0035.h5"):
        with h5py.File(tmp_path / "none" / name) as f:
            assert f["simulation/grain_mask"][()].sum() == 0
            assert f["simulation/thickness"][()].mean() == pytest.approx(20.0, rel=0.1)
        with h5py.File(tmp_path / "all" / name) as f:
            assert f["simulation/grain_mask"][()].sum() > 0
            assert f["simulation/thickness"][()].mean() == pytest.approx(30.0, rel=0.1)
    code, _, err = run_cli("simulate", tmp_path / "bad", *args, "--grain-scans", "1.5")
    assert code == 2 and "--grain-scans" in err


def test_provenance_from_another_simulator_version_is_refused(series):
    from stem2eds.simulate.series import settings_from_provenance

    with h5py.File(series[0]) as f:
        prov = json.loads(f.attrs["provenance"])
    prov["settings"]["simulator_version"] = -1
    with pytest.raises(ValueError):
        settings_from_provenance(json.dumps(prov))
