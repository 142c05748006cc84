"""Registration of EDS/HAADF maps recorded on another grid onto the 4D-STEM scan grid."""

from __future__ import annotations

import numpy as np

from stem2eds.formats.bundle import PixelCalibration, create_bundle, open_bundle
from stem2eds.preprocess.register import annular_sum, register_maps, resample_maps
from stem2eds.preprocess.patterns import detector_centre
from builders import descan, make_patterns


def field(y, x, seed=5):
    """A smooth sample texture (sum of Gaussian blobs) at physical positions (nm)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(np.broadcast(y, x).shape)
    for cy, cx, w, a in zip(rng.uniform(0, 60, 40), rng.uniform(0, 60, 40),
                            rng.uniform(2.0, 5.0, 40), rng.uniform(0.3, 1.0, 40)):
        out += a * np.exp(-0.5 * ((y - cy) ** 2 + (x - cx) ** 2) / w ** 2)
    return out


def grid(shape, pixel, origin=(0.0, 0.0)):
    return np.meshgrid(origin[0] + pixel * np.arange(shape[0]),
                       origin[1] + pixel * np.arange(shape[1]), indexing="ij")


def test_register_recovers_subpixel_shift_and_pixel_size():
    scan_px, map_px = 1.0, 0.7
    start = (4.37, 2.81)  # physical position (nm) of scan pixel (0, 0) on the map
    scan_image = 5 + 2 * field(*grid((40, 30), scan_px, start))  # ADF-like, other scale
    ref = field(*grid((80, 70), map_px))
    maps = np.stack([ref / ref.max(), 1 - ref / ref.max()])
    registered, reg = register_maps(maps, ref, map_px, scan_image, scan_px)
    err = np.subtract(reg.offset, start)
    print(f"registration offset {reg.offset} (true {start}), error {np.hypot(*err):.3f} scan px")
    assert np.hypot(*err) < 0.1
    assert reg.pixel_ratio == scan_px / map_px and reg.coverage == 1.0
    truth = field(*grid((40, 30), scan_px, start)) / ref.max()
    # bilinear resampling of a smooth field: small interpolation error only
    assert np.abs(registered[0] - truth).max() < 0.02
    assert registered.shape == (2, 40, 30)


def test_resample_is_identity_on_same_grid(rng):
    maps = rng.random((2, 9, 7)).astype(np.float32)
    np.testing.assert_allclose(resample_maps(maps, 1.0, 1.0, (9, 7)), maps, atol=1e-6)
    np.testing.assert_allclose(resample_maps(maps, 0.5, 1.0, (4, 3))[:, 1, 1], maps[:, 2, 2],
                               atol=1e-6)


def test_annular_sum_counts_the_annulus():
    q = 32
    c = detector_centre((q, q))
    r = np.hypot(*np.meshgrid(np.arange(q) - c[0], np.arange(q) - c[1], indexing="ij"))
    ones = np.ones((3, q, q))
    np.testing.assert_allclose(annular_sum(ones, 4, 10), np.count_nonzero((r > 4) & (r <= 10)))


def test_preprocess_register_bundle(tmp_path, run_cli):
    rx, ry, q, scan_px, map_px = 24, 20, 64, 1.0, 0.8
    start = (3.6, 5.3)
    phys = grid((rx, ry), scan_px, start)
    texture = field(*phys)
    origins = descan(rx, ry, q).reshape(-1, 2)
    patterns = make_patterns(origins, q=q, disk_radius=6, disk_counts=20,
                             ring_radius=20, ring_counts=3 + 20 * texture.ravel(), n_spots=0)
    ref = field(*grid((50, 45), map_px))
    ge = (0.2 + 0.6 * ref / ref.max()).astype(np.float32)
    src = tmp_path / "raw.h5"
    with create_bundle(src, scan_shape=(rx, ry), detector_shape=(q, q), dtype=np.uint16,
                       elements=["Ge", "Te"],
                       calibration=PixelCalibration(scan_px, 0.02, "nm", "1/nm")) as b:
        b.write_patterns(0, patterns)
        b.write_array("eds_unregistered/Ge", ge)
        b.write_array("eds_unregistered/Te", 1 - ge)
        b.file["eds_unregistered"].attrs["pixel_size"] = map_px
        b.write_array("haadf_unregistered", ref.astype(np.float32), pixel_size=map_px)
    out = tmp_path / "pre.h5"
    code, _, err = run_cli("preprocess", src, "--out", out, "--quiet")
    assert code == 2 and "--register" in err and not out.exists()
    code, stdout, err = run_cli("preprocess", src, "--out", out, "--register", "--quiet",
                                "--crop", "2:22,1:19", "--eds-filter", "none")
    assert code == 0, err
    assert "registration" in stdout
    with open_bundle(out) as pre:
        reg = pre.json_attr("registration")
        # offset of the cropped scan's pixel (0, 0) on the map, in scan pixels
        want = (start[0] / scan_px + 2, start[1] / scan_px + 1)
        print(f"bundle registration offset {reg['offset']} (true {want})")
        assert np.hypot(reg["offset"][0] - want[0], reg["offset"][1] - want[1]) < 0.25
        expected_ge = 0.2 + 0.6 * texture[2:22, 1:19] / ref.max()
        assert np.abs(pre.eds()[0] - expected_ge).max() < 0.03
        np.testing.assert_allclose(pre.eds().sum(0), 1.0, atol=1e-5)
        assert pre.haadf.shape == (20, 18)


def test_register_needs_pixel_size_and_maps(tmp_path, run_cli):
    q = 32
    src = tmp_path / "raw.h5"
    patterns = make_patterns(descan(6, 5, q).reshape(-1, 2), q=q, disk_radius=3,
                             ring_radius=10, n_spots=0)
    with create_bundle(src, scan_shape=(6, 5), detector_shape=(q, q), dtype=np.uint16,
                       elements=["Ge"], calibration=PixelCalibration(1.0, 0.02, "nm", "1/nm")) as b:
        b.write_patterns(0, patterns)
        b.write_array("eds_unregistered/Ge", np.full((8, 8), 0.5, np.float32))  # no pixel_size
    out = tmp_path / "pre.h5"
    code, _, err = run_cli("preprocess", src, "--out", out, "--register", "--bin", "2")
    assert code == 2 and "pixel_size" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    plain = tmp_path / "plain.h5"
    with create_bundle(plain, scan_shape=(6, 5), detector_shape=(q, q), dtype=np.uint16,
                       elements=["Ge"]) as b:
        b.write_patterns(0, patterns)
    code, _, err = run_cli("preprocess", plain, "--out", out, "--register", "--bin", "2")
    assert code == 2 and "eds_unregistered" in err and not out.exists()
