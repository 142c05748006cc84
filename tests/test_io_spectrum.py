"""EDS spectrum images quantified with exspy's Cliff-Lorimer; HAADF from microscope files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from builders import SI_ELEMENTS as ELEMENTS
from builders import SI_K_FACTORS as K_FACTORS
from builders import make_spectrum_image
from stem2eds.errors import InputError
from stem2eds.io import parse_k_factors, quantify_spectrum_image, read_haadf_from_file

RX, RY = 4, 3


@pytest.fixture
def atomic(rng) -> np.ndarray:
    """(Rx, Ry, 3) atomic fractions with clearly different ranks per position."""
    a = rng.dirichlet([4.0, 2.0, 1.0], size=(RX, RY))
    return a


def _save(s, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.save(path)
    return path


def test_cliff_lorimer_recovers_atomic_fractions(tmp_path, atomic):
    path = _save(make_spectrum_image(atomic), tmp_path / "si.hspy")
    result = quantify_spectrum_image(path, ["O", "Si", "Ge"], K_FACTORS)
    assert result.elements == ["O", "Si", "Ge"]
    assert result.xray_lines == {"O": "O_Ka", "Si": "Si_Ka", "Ge": "Ge_Ka"}
    assert result.k_factor_source == "flags"
    got = np.stack([result.fractions[e] for e in ELEMENTS], axis=-1)
    assert got.dtype == np.float32 and got.shape == (RX, RY, 3)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)
    # noise-free lines: only the finite integration window and the spectrum's
    # flat background separate the result from the truth
    np.testing.assert_allclose(got, atomic, atol=0.01)
    assert np.array_equal(np.argsort(got, -1), np.argsort(atomic, -1))


def test_eds_sem_signal_is_quantified_as_tem(tmp_path, atomic):
    """Bruker files from a TEM may be typed EDS_SEM; they are quantified all the same."""
    s = make_spectrum_image(atomic)
    s.set_signal_type("EDS_SEM")  # exspy moves the beam energy to Acquisition_instrument.SEM
    assert s.metadata.has_item("Acquisition_instrument.SEM.beam_energy")
    path = _save(s, tmp_path / "sem.hspy")
    result = quantify_spectrum_image(path, ELEMENTS, K_FACTORS)
    got = np.stack([result.fractions[e] for e in ELEMENTS], axis=-1)
    np.testing.assert_allclose(got, atomic, atol=0.01)


def test_k_factors_from_file_metadata(tmp_path, atomic):
    path = _save(make_spectrum_image(atomic, store_k=K_FACTORS), tmp_path / "si.hspy")
    result = quantify_spectrum_image(path)
    assert result.elements == ["Ge", "O", "Si"] and result.k_factor_source == "file metadata"
    assert result.k_factors == K_FACTORS
    got = np.stack([result.fractions[e] for e in ELEMENTS], axis=-1)
    np.testing.assert_allclose(got, atomic, atol=0.01)


def test_k_factor_for_a_named_line_selects_that_line(tmp_path, atomic):
    path = _save(make_spectrum_image(atomic), tmp_path / "si.hspy")
    result = quantify_spectrum_image(path, ELEMENTS, {"Ge_La": 3.0, "O": 2.0, "Si": 1.1})
    assert result.xray_lines == {"Ge": "Ge_La", "O": "O_Ka", "Si": "Si_Ka"}
    assert result.k_factors["Ge"] == 3.0


def test_wrong_k_factors_change_the_answer(tmp_path, atomic):
    """The k-factors are really used: k = 1 everywhere gives another composition."""
    path = _save(make_spectrum_image(atomic), tmp_path / "si.hspy")
    ones = quantify_spectrum_image(path, ELEMENTS, {e: 1.0 for e in ELEMENTS})
    got = np.stack([ones.fractions[e] for e in ELEMENTS], axis=-1)
    assert np.abs(got - atomic).max() > 0.05


def test_missing_k_factor_and_beam_energy(tmp_path, atomic):
    path = _save(make_spectrum_image(atomic), tmp_path / "si.hspy")
    with pytest.raises(InputError, match="no k-factor for Si_Ka"):
        quantify_spectrum_image(path, ELEMENTS, {"Ge": 1.0, "O": 1.0})
    s = make_spectrum_image(atomic)
    del s.metadata.Acquisition_instrument
    path2 = _save(s, tmp_path / "no_energy.hspy")
    with pytest.raises(InputError, match="`beam_energy_kev`"):
        quantify_spectrum_image(path2, ELEMENTS, K_FACTORS)
    assert quantify_spectrum_image(path2, ELEMENTS, K_FACTORS, beam_energy_kev=200).elements


def test_not_a_spectrum_image(tmp_path, rng):
    import hyperspy.api as hs

    path = _save(hs.signals.Signal2D(rng.random((5, 5))), tmp_path / "image.hspy")
    with pytest.raises(InputError, match="no EDS spectrum image"):
        quantify_spectrum_image(path, ELEMENTS, K_FACTORS)


def test_parse_k_factors():
    assert parse_k_factors("O=1.0, si=1.25,Ge_La=2") == {"O": 1.0, "Si": 1.25, "Ge_La": 2.0}
    for bad, message in (("O", "not ELEMENT=VALUE"), ("O=x", "not a number"),
                         ("O=-1", "must be positive"), ("Qq=1", "unknown element")):
        with pytest.raises(InputError, match=message):
            parse_k_factors(bad)


def test_haadf_from_microscope_file(tmp_path, rng):
    import hyperspy.api as hs

    haadf = rng.random((RX, RY))
    other = hs.signals.Signal2D(rng.random((RX, RY)))
    other.metadata.General.title = "DF4"
    image = hs.signals.Signal2D(haadf)
    image.metadata.General.title = "HAADF"
    path = _save(image, tmp_path / "haadf.hspy")
    np.testing.assert_array_equal(read_haadf_from_file(path), haadf)
    emd = tmp_path / "images.emd"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image.save(emd)
    np.testing.assert_array_equal(read_haadf_from_file(emd), haadf)
    bad = _save(other, tmp_path / "df4.hspy")
    np.testing.assert_array_equal(read_haadf_from_file(bad), other.data)  # the only image


def test_contradictory_k_factors_are_refused():
    """Two k-factors for one element (issue 15: ``Ni=1.2,Ni_La=3``): which line is meant?"""
    for text in ("Ni=1.2,Ni_La=3", "Ni_Ka=1.2,Ni_La=3", "Ni=1,Ni=2"):
        with pytest.raises(InputError, match="`k_factors` gives Ni twice"):
            parse_k_factors(text)


def test_spectrum_image_without_sample_metadata(tmp_path, atomic):
    """An .hspy without a Sample node is quantified when the elements are given."""
    s = make_spectrum_image(atomic)
    del s.metadata.Sample
    path = _save(s, tmp_path / "no_sample.hspy")
    result = quantify_spectrum_image(path, ELEMENTS, K_FACTORS)
    got = np.stack([result.fractions[e] for e in ELEMENTS], axis=-1)
    np.testing.assert_allclose(got, atomic, atol=0.01)
    assert "X-ray lines: Ge_Ka, O_Ka, Si_Ka" in result.notes
    with pytest.raises(InputError, match="does not list the elements.*`elements`"):
        quantify_spectrum_image(path, None, K_FACTORS)


def test_one_element_is_refused_with_a_sentence(tmp_path, atomic):
    path = _save(make_spectrum_image(atomic), tmp_path / "si.hspy")
    with pytest.raises(InputError, match="ratios between elements; quantifying Ge alone"):
        quantify_spectrum_image(path, ["Ge"], K_FACTORS)


def test_k_factor_for_another_line_is_refused(tmp_path, atomic):
    """A plain ``Ge=`` k-factor is for Ge_Ka at 200 kV; the file's Ge_La line refuses it."""
    s = make_spectrum_image(atomic)
    s.metadata.Sample.xray_lines = ["Ge_La", "O_Ka", "Si_Ka"]
    path = _save(s, tmp_path / "ge_la.hspy")
    with pytest.raises(InputError, match="k-factor for Ge_Ka .* but Ge_La is quantified"):
        quantify_spectrum_image(path, ELEMENTS, K_FACTORS)
    result = quantify_spectrum_image(path, ELEMENTS, {"Ge_La": 3.0, "O": 2.0, "Si": 1.1})
    assert result.xray_lines["Ge"] == "Ge_La"


def test_binning_and_low_counts(tmp_path, atomic):
    """Few counts per position: refused, with the ``eds_bin`` that would help."""
    path = _save(make_spectrum_image(atomic, counts=15, background=0.0), tmp_path / "low.hspy")
    with pytest.raises(InputError, match="positions have fewer than 20 net counts") as info:
        quantify_spectrum_image(path, ELEMENTS, K_FACTORS)
    assert "`eds_bin`" in str(info.value)
    result = quantify_spectrum_image(path, ELEMENTS, K_FACTORS, eds_bin=2)
    assert result.fractions["Ge"].shape == (RX // 2, RY // 2) and result.eds_bin == 2
    assert any("0 rows and 1 columns at the far edges dropped" in n for n in result.notes)
    with pytest.raises(InputError, match="`eds_bin` must be a whole number"):
        quantify_spectrum_image(path, ELEMENTS, K_FACTORS, eds_bin=0)
