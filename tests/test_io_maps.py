"""Element-map folders and single images: every format, percent detection, bad values."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from stem2eds.errors import InputError
from stem2eds.io import find_map_files, read_image, read_map_folder, to_fractions

SHAPE = (6, 5)


def _write(path, values):
    ext = path.suffix
    if ext == ".tif":
        tifffile.imwrite(path, values)
    elif ext == ".png":
        Image.fromarray(values).save(path)
    elif ext == ".npy":
        np.save(path, values)
    elif ext == ".csv":
        np.savetxt(path, values, delimiter=",", fmt="%.9g")


@pytest.mark.parametrize("ext,dtype", [(".tif", np.float32), (".tif", np.uint16),
                                       (".png", np.uint8), (".png", np.uint16),
                                       (".npy", np.float64), (".csv", np.float64)])
def test_read_image_round_trip(tmp_path, rng, ext, dtype):
    if np.issubdtype(dtype, np.integer):
        values = rng.integers(0, np.iinfo(dtype).max, SHAPE).astype(dtype)
    else:
        values = rng.random(SHAPE).astype(dtype)
    path = tmp_path / f"img{ext}"
    _write(path, values)
    got = read_image(path)
    assert got.shape == SHAPE and got.dtype == np.float64
    expected = values.astype(np.float64)
    if ext == ".csv":  # text keeps 9 significant digits
        np.testing.assert_allclose(got, expected, rtol=1e-8)
    else:
        np.testing.assert_array_equal(got, expected)


def test_csv_with_semicolons(tmp_path):
    path = tmp_path / "Ge.csv"
    path.write_text("0.1;0.2\n0.3;0.4\n")
    np.testing.assert_array_equal(read_image(path), [[0.1, 0.2], [0.3, 0.4]])


def test_folder_in_fraction_mixed_formats(tmp_path, rng):
    maps = {"Si": rng.random(SHAPE).astype(np.float32), "O": rng.random(SHAPE),
            "Ge": rng.random(SHAPE)}
    _write(tmp_path / "Si.tif", maps["Si"])
    _write(tmp_path / "O.npy", maps["O"])
    _write(tmp_path / "Ge_K.csv", maps["Ge"])
    (tmp_path / "notes.txt").write_text("ignored: not an image type")
    _write(tmp_path / "HAADF.tif", rng.random(SHAPE).astype(np.float32))  # exported beside
    _write(tmp_path / "DF4 image.tif", rng.random(SHAPE).astype(np.float32))
    assert list(find_map_files(tmp_path)) == ["Ge", "O", "Si"]  # sorted by file name
    result = read_map_folder(tmp_path)
    assert result.elements == ["Ge", "O", "Si"] and not result.was_percent
    for e in result.elements:
        assert result.fractions[e].dtype == np.float32
        np.testing.assert_allclose(result.fractions[e], maps[e], rtol=1e-7)
    ordered = read_map_folder(tmp_path, ["si", "Ge"])
    assert ordered.elements == ["Si", "Ge"] and set(ordered.fractions) == {"Si", "Ge"}


def test_percent_detected_and_divided(tmp_path, rng):
    pct = {"O": (rng.random(SHAPE) * 100).astype(np.float32),
           "Te": (rng.random(SHAPE) * 0.5).astype(np.float32)}  # small but still percent
    for e, v in pct.items():
        _write(tmp_path / f"{e}.tif", v)
    result = read_map_folder(tmp_path)
    assert result.was_percent
    for e, v in pct.items():
        np.testing.assert_array_equal(result.fractions[e],
                                      (v.astype(np.float64) / 100).astype(np.float32))


@pytest.mark.parametrize("bad,message", [
    (np.nan, "NaN or infinite"),
    (np.inf, "NaN or infinite"),
    (-0.5, "negative values"),
    (150.0, "above 100"),
])
def test_bad_values_rejected(tmp_path, bad, message):
    values = np.full(SHAPE, 0.25)
    values[2, 3] = bad
    np.save(tmp_path / "Ge.npy", values)
    with pytest.raises(InputError, match=message):
        read_map_folder(tmp_path)


def test_folder_problems(tmp_path, rng):
    with pytest.raises(InputError, match="no such folder"):
        read_map_folder(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no element maps"):
        read_map_folder(empty)
    odd = tmp_path / "odd"
    odd.mkdir()
    np.save(odd / "Xq.npy", rng.random(SHAPE))
    with pytest.raises(InputError, match="'Xq.npy' is not named after an element"):
        read_map_folder(odd)
    np.save(odd / "Ge.npy", rng.random(SHAPE))
    assert read_map_folder(odd, ["Ge"]).elements == ["Ge"]  # --elements skips the stray file
    with pytest.raises(InputError, match="no map for Sb"):
        read_map_folder(odd, ["Ge", "Sb"])
    with pytest.raises(InputError, match="unknown element symbol 'Qq'"):
        read_map_folder(odd, ["Qq"])
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    np.save(shapes / "Ge.npy", rng.random(SHAPE))
    np.save(shapes / "Te.npy", rng.random((6, 4)))
    with pytest.raises(InputError, match="maps differ in shape"):
        read_map_folder(shapes)
    dup = tmp_path / "dup"
    dup.mkdir()
    np.save(dup / "Ge.npy", rng.random(SHAPE))
    tifffile.imwrite(dup / "Ge.tif", rng.random(SHAPE).astype(np.float32))
    with pytest.raises(InputError, match="two maps for Ge"):
        read_map_folder(dup)
    with pytest.raises(InputError, match="two maps for Ge"):
        read_map_folder(dup, ["Ge"])


def test_rgb_and_stack_images_rejected(tmp_path, rng):
    Image.fromarray(rng.integers(0, 255, (*SHAPE, 3), dtype=np.uint8)).save(tmp_path / "O.png")
    with pytest.raises(InputError, match="colour picture"):
        read_image(tmp_path / "O.png")
    tifffile.imwrite(tmp_path / "stack.tif", rng.random((3, *SHAPE)).astype(np.float32))
    with pytest.raises(InputError, match="expected one 2D map"):
        read_image(tmp_path / "stack.tif")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a table of numbers"):
        read_image(tmp_path / "bad.csv")


def test_to_fractions_keeps_fraction_maps_exact():
    maps = {"O": np.array([[0.0, 1.0]]), "Si": np.array([[0.5, 0.25]])}
    fractions, was_percent = to_fractions(maps)
    assert not was_percent
    np.testing.assert_array_equal(fractions["O"], [[0.0, 1.0]])
