"""The multislice engine: bundles like the kinematic engine's, physics checked against abTEM."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("abtem")

from stem2eds.formats.bundle import open_bundle
from stem2eds.simulate import ELEMENTS, SimulationSettings, simulate_series
from stem2eds.simulate import atoms as A
from stem2eds.simulate import multislice as M

GST = np.array([0.0, 0.0, 2 / 9, 2 / 9, 5 / 9])          # in ELEMENTS order: O, Si, Ge, Sb, Te
OXIDE = np.array([0.6, 0.3, 0.1, 0.0, 0.0])
TINY = dict(n_scans=2, scan_shape=(4, 4), detector=48, thickness_nm=2.0, engine="multislice",
            grain_scan_fraction=0.5, workers=1, seed=3)


@pytest.fixture(scope="module")
def tiny_series(tmp_path_factory):
    out = tmp_path_factory.mktemp("ms")
    return simulate_series(out, SimulationSettings(**TINY)), SimulationSettings(**TINY)


def _patches(grid, comp, thickness_a, n, seed=0, grain=None):
    rng = np.random.default_rng(seed)
    template = A.amorphous_template((1.3 * grid.extent, 1.3 * grid.extent, 80.0), rng)
    return [M.patch_atoms(template, grid, comp, thickness_a, grain, rng) for _ in range(n)]


def _radial(intensity, extent):
    n = intensity.shape[-1]
    yy, xx = np.indices(intensity.shape) - n // 2
    r = np.rint(np.hypot(yy, xx)).astype(int)
    profile = np.bincount(r.ravel(), intensity.ravel()) / np.bincount(r.ravel())
    return np.arange(len(profile)) / extent, profile


def test_tiny_series_is_a_valid_bundle_with_truth(tiny_series):
    paths, settings = tiny_series
    assert [p.name for p in paths] == ["scan_0033.h5", "scan_0034.h5"]
    masks = []
    for path in paths:
        with open_bundle(path, require=("diffraction", "eds", "haadf", "truth")) as b:
            d = b.file["diffraction"][...]
            assert d.shape == (4, 4, 48, 48) and d.dtype == np.uint16
            assert 0.5 * settings.dose < d.reshape(16, -1).sum(axis=1).mean() < 1.05 * settings.dose
            truth = np.stack([b.file[f"truth/{e}"][...] for e in ELEMENTS])
            np.testing.assert_allclose(truth.sum(axis=0), 1.0, atol=1e-5)
            assert b.file["haadf"].shape == (4, 4)
            sim = b.file["simulation"]
            for name in ("origin", "grain_mask", "grain_thickness", "thickness"):
                assert name in sim
            t = sim["thickness"][...]
            assert (t >= 0.55 * 2.0 - 1e-6).all() and (t <= 1.45 * 2.0 + 1e-6).all()
            masks.append(sim["grain_mask"][...])
            assert b.provenance["settings"]["engine"] == "multislice"
    assert sum(m.sum() > 0 for m in masks) == 1           # grains in one scan of two


@pytest.mark.slow
def test_tiny_series_is_accepted_by_preprocess_and_train(tiny_series, tmp_path):
    from builders import small_config
    from stem2eds.preprocess import preprocess_bundle
    from stem2eds.train.fit import train

    paths, _ = tiny_series
    config = small_config(max_epochs=1, batch_size=8)
    preprocess_bundle(paths[0], tmp_path / "pre.h5", config.preprocess, quiet=True)
    with open_bundle(tmp_path / "pre.h5") as b:
        assert b.file["diffraction"].shape[:2] == (4, 4)
    run = train([str(p) for p in paths], tmp_path / "run", config, quiet=True)
    assert (run / "run.json").is_file()


def test_rerun_hits_the_cache_and_gives_the_same_bytes(tiny_series, tmp_path, monkeypatch):
    import shutil

    paths, settings = tiny_series
    cache = paths[0].parent / ".multislice-cache"
    assert len(sorted(cache.glob("*.npz"))) == 2
    shutil.copytree(cache, tmp_path / cache.name)

    def no_physics(*args, **kwargs):
        raise AssertionError("the multislice physics ran again instead of the cache")

    monkeypatch.setattr(M, "expected_scan", no_physics)
    again = simulate_series(tmp_path, settings)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    # another dose re-uses the physics too: only the noise is drawn again
    from dataclasses import replace
    shutil.copytree(cache, tmp_path / "low" / cache.name)
    low = simulate_series(tmp_path / "low", replace(settings, dose=settings.dose / 4))
    with open_bundle(low[0]) as a, open_bundle(paths[0]) as b:
        ratio = a.file["diffraction"][...].sum() / b.file["diffraction"][...].sum()
    assert 0.2 < ratio < 0.3


def test_same_seed_same_bytes_whatever_the_workers(tiny_series, tmp_path):
    paths, settings = tiny_series
    from dataclasses import replace
    other = simulate_series(tmp_path, replace(settings, workers=2))
    assert [p.read_bytes() for p in other] == [p.read_bytes() for p in paths]


def test_fast_multislice_matches_abtem():
    import abtem
    import ase

    grid = M.Grid(48, 0.1451 * 256 / 48, 200.0, ELEMENTS,
                  M.MultisliceModel(slice_thickness=2.0))
    pos, species = _patches(grid, GST, 30.0, 1, seed=5)[0]
    mine, _ = M.propagate(grid, [(pos, species)], 30.0)
    atoms = ase.Atoms([ELEMENTS[s] for s in species], positions=pos,
                      cell=[grid.extent, grid.extent, 30.0])
    potential = abtem.Potential(atoms, gpts=grid.n, slice_thickness=2.0, projection="infinite",
                                parametrization="lobato")
    probe = abtem.Probe(energy=200e3, semiangle_cutoff=grid.model.convergence_mrad)
    wave = np.asarray(probe.multislice(potential, scan=[(grid.extent / 2, grid.extent / 2)],
                                       lazy=False).array).reshape(grid.n, grid.n)
    ref = np.fft.fftshift(np.abs(np.fft.fft2(wave)) ** 2)
    ref /= ref.sum()
    a, b = mine[0].ravel() / mine[0].sum(), ref.ravel()
    off_beam = np.ones(a.size, bool)
    off_beam[np.argmax(b)] = False
    assert np.corrcoef(a[off_beam], b[off_beam])[0, 1] > 0.999
    assert np.abs(a - b).sum() < 0.02


@pytest.mark.slow
def test_amorphous_ring_sits_where_the_density_puts_it():
    """Peak of the reduced intensity I(k) / <f^2>(k) vs the template's S(k) peak scaled by density."""
    from abtem.parametrizations import LobatoParametrization

    grid = M.Grid(128, 0.1451 * 2, 200.0, ELEMENTS, M.MultisliceModel())
    rng = np.random.default_rng(0)
    template = A.amorphous_template((1.3 * grid.extent, 1.3 * grid.extent, 60.0), rng)
    ks = np.linspace(0.3, 0.7, 81)
    dirs = rng.normal(size=(32, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    s_k = [(np.abs(np.exp(-2j * np.pi * k * (template.positions @ dirs.T)).sum(0)) ** 2).mean()
           for k in ks]
    k_template = ks[int(np.argmax(s_k))]
    par = LobatoParametrization()
    peaks = []
    for comp in (GST, OXIDE):
        density = float(A.number_density(comp, ELEMENTS))
        atoms = [M.patch_atoms(template, grid, comp, 30.0, None, rng) for _ in range(8)]
        intensity, _ = M.propagate(grid, atoms, 30.0)
        k, profile = _radial(intensity.mean(axis=0), grid.extent)
        f2 = sum(c * par.scattering_factor(e)(k ** 2) ** 2 for c, e in zip(comp, ELEMENTS))
        sel = (k > 0.2) & (k < 0.85)
        peak = k[sel][np.argmax((profile / f2)[sel])]
        expected = k_template * (density / A.TEMPLATE_DENSITY) ** (1 / 3)
        assert abs(peak - expected) < 0.1 * expected, (comp, peak, expected)
        peaks.append(peak)
    assert peaks[1] > peaks[0]                            # the denser oxide rings at higher q


def test_adf_increases_with_mean_z_and_thickness():
    grid = M.Grid(48, 0.1451 * 256 / 48, 200.0, ELEMENTS, M.MultisliceModel())

    def adf(comp, t):
        return M.propagate(grid, _patches(grid, comp, t, 8, seed=1), t)[1].mean()

    thin, thick, oxide = adf(GST, 30.0), adf(GST, 80.0), adf(OXIDE, 30.0)
    assert thick > 1.5 * thin
    assert thin > 1.5 * oxide


def test_grains_raise_azimuthal_anisotropy():
    grid = M.Grid(64, 0.1451 * 4, 200.0, ELEMENTS, M.MultisliceModel())

    def anisotropy(grain):
        intensity, _ = M.propagate(grid, _patches(grid, GST, 60.0, 8, seed=2, grain=grain), 60.0)
        n = grid.n
        yy, xx = np.indices((n, n)) - n // 2
        k = np.hypot(yy, xx) / grid.extent
        ring = (k > 0.25) & (k < 0.6)
        sector = ((np.arctan2(yy, xx)[ring] + np.pi) / (2 * np.pi) * 24).astype(int) % 24
        values = []
        for pattern in intensity:
            per_sector = np.bincount(sector, pattern[ring], minlength=24)
            values.append(per_sector.std() / per_sector.mean())
        return np.mean(values)

    amorphous = anisotropy(None)
    crystalline = anisotropy((40.0, 0, 0.3, np.zeros(2)))      # 4 nm grain along [001]
    assert crystalline > 1.5 * amorphous


def test_thickness_varies_across_the_field_and_between_scans():
    window = 10.0 * (1 + 0.1 * np.linspace(-1, 1, 20)[:, None] * np.ones((1, 20)))
    maps = [M.scan_thickness(window, 10.0, np.random.default_rng(k)) for k in range(6)]
    means = [m.mean() for m in maps]
    assert max(means) - min(means) > 1.0                   # nm, between scans
    assert all(np.ptp(m) > 2.0 for m in maps)               # nm, across a scan
    assert min(m.min() for m in maps) >= 5.5 and max(m.max() for m in maps) <= 14.5


def test_unknown_engine_is_refused():
    from stem2eds.errors import InputError

    with pytest.raises(InputError, match="`engine`"):
        SimulationSettings(engine="bloch")


@pytest.mark.slow
def test_cli_engine_multislice_uses_its_defaults_and_writes_bundles(tmp_path, capsys):
    from stem2eds.cli import main

    out = tmp_path / "sim"
    assert main(["simulate", str(out), "--engine", "multislice", "--scans", "1",
                 "--scan-shape", "2x2", "--detector", "32", "--thickness", "2", "--quiet"]) == 0
    with open_bundle(out / "scan_0033.h5") as b:
        settings = b.provenance["settings"]
        assert settings["engine"] == "multislice" and settings["detector"] == 32
        assert b.file["diffraction"].shape == (2, 2, 32, 32)
    with pytest.raises(SystemExit) as exc:
        main(["simulate", str(tmp_path / "x"), "--engine", "bloch"])
    assert exc.value.code == 2
    assert "bloch" in capsys.readouterr().err
