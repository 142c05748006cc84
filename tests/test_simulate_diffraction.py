"""Physics of the per-batch pattern simulator (scattering factors, S(q), patterns)."""

from __future__ import annotations

import numpy as np
import pytest

from stem2eds.errors import InputError
from stem2eds.simulate import ELEMENTS, expected_patterns, simulate_patterns
from stem2eds.simulate.amorphous import shell_parameters, structure_factor
from stem2eds.simulate.crystal import bragg_reflections
from stem2eds.simulate.scattering import electron_wavelength, scattering_factor

GST = np.array([0.0, 0.0, 2 / 9, 2 / 9, 5 / 9])
OXIDE = np.array([0.55, 0.05, 0.2, 0.12, 0.08])


def _radial(pattern: np.ndarray, origin) -> np.ndarray:
    rr, cc = np.indices(pattern.shape)
    r = np.hypot(rr - origin[0], cc - origin[1]).astype(int)
    return np.bincount(r.ravel(), pattern.ravel()) / np.bincount(r.ravel())


def test_wavelength_and_scattering_factors_match_tables():
    assert electron_wavelength(200.0) == pytest.approx(0.02508, abs=2e-5)
    f = scattering_factor(["O", "Te"], np.array([0.0, 0.5]), energy_kev=200.0)
    gamma = 1 + 200 / 510.99895
    # f_e(0) = sum a_i of the Peng (1996) table: O 1.98, Te 10.99 Angstrom (non-relativistic).
    assert f[0, 0] / gamma == pytest.approx(1.9834, abs=1e-3)
    assert f[1, 0] / gamma == pytest.approx(10.9898, abs=1e-3)
    assert np.all(np.diff(f, axis=1) < 0)        # decays with q
    with pytest.raises(InputError):
        scattering_factor(["Xx"], np.zeros(1))


def test_structure_factor_follows_bond_length():
    q = np.linspace(0.05, 1.2, 400)
    shells = shell_parameters(np.stack([GST, OXIDE]), ELEMENTS)
    assert shells["r1"][0] == pytest.approx(2.77, abs=0.1)        # a-GST first shell ~2.8 A
    assert shells["r1"][1] < shells["r1"][0]                      # oxide bonds are shorter
    assert shells["rho"][0] == pytest.approx(0.031, abs=0.002)
    s = structure_factor(q, shells)
    assert np.all(s >= 0)
    assert np.all(np.abs(s[:, -1] - 1) < 0.3)                     # S -> 1 at large q


def test_patterns_conserve_dose_and_centre_on_origin():
    origins = np.array([[100.3, 120.7], [140.0, 131.5]])
    comp = np.stack([GST, OXIDE])
    exp = expected_patterns(comp, np.array([30.0, 30.0]), origins, elements=ELEMENTS,
                            detector=256, dose=1e5)
    assert exp.shape == (2, 256, 256) and exp.dtype == np.float32
    # Everything that is not scattered past the detector edge is counted once.
    assert np.all(exp.sum(axis=(1, 2)) <= 1e5 * 1.001)
    assert np.all(exp.sum(axis=(1, 2)) > 0.7e5)
    for k in range(2):
        rr, cc = np.indices(exp[k].shape)
        bright = exp[k] > 0.5 * exp[k].max()
        centre = [np.average(rr[bright], weights=exp[k][bright]),
                  np.average(cc[bright], weights=exp[k][bright])]
        assert np.allclose(centre, origins[k], atol=0.3)
    # Composition changes the ring: profiles of GST and oxide differ beyond noise.
    p0, p1 = (_radial(exp[k], origins[k])[10:90] for k in range(2))
    assert np.abs(p0 / p0.sum() - p1 / p1.sum()).sum() > 0.1


def test_thicker_film_scatters_more():
    comp = np.stack([GST, GST])
    exp = expected_patterns(comp, np.array([10.0, 50.0]), np.full((2, 2), 64.0),
                            elements=ELEMENTS, detector=128, dose=1e5)
    ring = [_radial(exp[k], (64, 64))[8:60].sum() for k in range(2)]
    assert ring[1] > 2.5 * ring[0]
    assert exp[1, 64, 64] < exp[0, 64, 64]                        # beam attenuated


def test_grain_adds_bragg_disks_at_rock_salt_spacings():
    q_xy, frac = bragg_reflections(0, 0.3, np.zeros(2), 10.0, q_max=0.5)
    g = np.sort(np.round(np.hypot(*q_xy.T), 4))
    # [001] zone of rock salt a=6.0 A: {200} at 1/3 and {220} at 0.471 1/A.
    assert g[0] == pytest.approx(2 / 6.0, abs=1e-4) and g[-1] == pytest.approx(np.sqrt(8) / 6, abs=1e-4)
    assert len(g) == 8 and 0 < frac.sum() <= 0.6
    comp = np.stack([GST, GST])
    kw = dict(elements=ELEMENTS, detector=128, dose=1e5)
    plain = expected_patterns(comp, np.full(2, 30.0), np.full((2, 2), 64.0), **kw)
    grain = expected_patterns(comp, np.full(2, 30.0), np.full((2, 2), 64.0),
                              grain_thickness=np.array([8.0, 0.0]), grain_zone=np.zeros(2, int),
                              grain_rotation=np.array([0.3, 0.3]), **kw)
    assert np.array_equal(plain[1], grain[1])
    diff = grain[0] - plain[0]
    assert diff.max() > 20 * np.sqrt(plain[0].mean())              # spots stand out of the noise


def test_simulate_patterns_uint16_and_deterministic():
    args = (np.stack([GST] * 3), np.full(3, 25.0), np.full((3, 2), 32.0))
    a = simulate_patterns(*args, np.random.default_rng(5), elements=ELEMENTS, detector=64, dose=5e4)
    b = simulate_patterns(*args, np.random.default_rng(5), elements=ELEMENTS, detector=64, dose=5e4)
    c = simulate_patterns(*args, np.random.default_rng(6), elements=ELEMENTS, detector=64, dose=5e4)
    assert a.dtype == np.uint16 and a.shape == (3, 64, 64)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(InputError):
        simulate_patterns(np.array([[0.5, 0.5, 0.5, 0, 0]]), [20.0], [[32, 32]],
                          np.random.default_rng(0), elements=ELEMENTS, detector=64)


def test_noise_is_poisson_at_the_given_dose():
    n = 200
    args = (np.tile(GST, (n, 1)), np.full(n, 30.0), np.full((n, 2), 31.5))
    kw = dict(elements=ELEMENTS, detector=64, dose=2e4)
    expected = expected_patterns(*args, **kw)[0]
    counts = simulate_patterns(*args, np.random.default_rng(1), **kw).astype(float)
    ring = (expected > 2) & (expected < 200)                       # scattered, not the beam
    mean, var = counts.mean(axis=0)[ring], counts.var(axis=0, ddof=1)[ring]
    assert mean.sum() / expected[ring].sum() == pytest.approx(1.0, abs=0.01)
    assert np.median(var / mean) == pytest.approx(1.0, abs=0.1)     # Poisson: variance = mean
    # Twice the dose, twice the counts.
    double = expected_patterns(args[0][:1], args[1][:1], args[2][:1], **{**kw, "dose": 4e4})[0]
    assert np.allclose(double, 2 * expected, rtol=1e-5)
