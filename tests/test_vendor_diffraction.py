"""Diffraction readers, convert and preprocess on real vendor files (issue 15).

Files from released packages (tests/vendor/files.toml), fetched by ``make dev``
into .venv/stem2eds-testdata; a test whose file is absent is skipped.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from stem2eds.convert import convert
from stem2eds.errors import InputError
from stem2eds.formats.bundle import open_bundle
from stem2eds.io.diffraction import find_4d_datasets, open_diffraction

from builders import vendor_file  # noqa: E402

BLOCKFILE = "blockfile/test1.blo"
TIA_4D = "tia/16x16-diffraction_imagel_5x5x256x256_EDS.emi"
TIA_4D_SER = "tia/16x16-diffraction_imagel_5x5x256x256_EDS_2.ser"
TIA_EDS_ONLY = "tia/16x16-spectrum_image-5x5x1024.emi"
DM4_EELS = "dm4/EELS_SI.dm4"
EMPAD_XML = "empad/map4x4.xml"
MEDIPIX = "medipix/fpd_file_test.hdf5"
MEDIPIX_DATA = "fpd_expt/fpd_data/data"
VELOX_IMAGE = "velox/fei_emd_image.emd"
VELOX_SI = "velox/fei_emd_si.emd"
BRUKER_TEM = "bruker/test_TEM.bcf"


@pytest.fixture(autouse=True)
def _quiet_readers():
    logging.disable(logging.WARNING)  # RosettaSciIO's own lines, not under test here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)



@pytest.fixture
def empad_scan(tmp_path) -> Path:
    """The real EMPAD XML beside the raw file it names (4x4 scan of 130x128 float32
    frames: 128 detector rows + 2 metadata rows), written as np.arange the way
    HyperSpy's own EMPAD test writes it (the raw file is not shipped)."""
    xml = tmp_path / "map4x4.xml"
    xml.write_bytes(vendor_file(EMPAD_XML).read_bytes())
    np.arange(4 * 4 * 130 * 128, dtype=np.float32).tofile(tmp_path / "scan_x4_y4.raw")
    return xml


def _preprocess(bundle: Path, out: Path, run_cli, *extra) -> tuple[int, str]:
    code, _, err = run_cli("preprocess", bundle, "--out", out, "--bin", "1", "--quiet", *extra)
    return code, err


# --- blockfile ------------------------------------------------------------------------

def test_blockfile_shapes_scan_step_beam_energy_and_refused_q_unit():
    """NanoMegas blockfile: 3x2 scan of 144x144 uint8, 12.8 nm steps, 200 kV; the
    detector axis is in cm on the screen, not a Q calibration: left out, with why."""
    with open_diffraction(vendor_file(BLOCKFILE)) as source:
        assert source.scan_shape == (3, 2) and source.detector_shape == (144, 144)
        assert source.dtype == np.uint8
        cal = source.calibration
        assert cal["r_pixel_size"] == pytest.approx(12.8) and cal["r_pixel_unit"] == "nm"
        assert cal["beam_energy_kev"] == pytest.approx(200.0)
        assert "q_pixel_unit" not in cal and "q_pixel_size" not in cal
        assert "0.01606 cm" in source.calibration_problems["q_pixel"]
        patterns = source.read_rows(0, 3)
        assert patterns.shape == (3, 2, 144, 144) and patterns.max() > patterns.min()


def test_blockfile_convert_asks_for_q_pixel_then_preprocesses(tmp_path, run_cli):
    path = vendor_file(BLOCKFILE)
    code, _, err = run_cli("convert", "--diffraction", path, "--out", tmp_path / "a.h5")
    assert code == 2 and "0.01606 cm" in err and "--q-pixel" in err
    assert "`" not in err and not (tmp_path / "a.h5").exists()
    code, out, err = run_cli("convert", "--diffraction", path, "--q-pixel", "0.05",
                             "--out", tmp_path / "a.h5", "--quiet")
    assert code == 0, err
    assert "3x2 scan of 144x144 uint8 patterns" in out
    with open_bundle(tmp_path / "a.h5") as b, open_diffraction(path) as source:
        cal = b.calibration
        assert (cal.r_pixel_size, cal.r_pixel_unit) == (pytest.approx(12.8), "nm")
        assert (cal.q_pixel_size, cal.q_pixel_unit, cal.beam_energy_kev) == (0.05, "1/nm", 200.0)
        np.testing.assert_array_equal(b.diffraction[()], source.read_rows(0, 3))
        assert "q_pixel" in b.provenance["calibration_refused"]
    code, err = _preprocess(tmp_path / "a.h5", tmp_path / "pre.h5", run_cli)
    assert code == 0, err
    with open_bundle(tmp_path / "pre.h5") as pre:
        origin = pre.file["calibration/origin"][()]
    # the direct beam sits near the detector centre in every pattern
    assert np.all(np.abs(origin - 72) < 3)


# --- TIA ---------------------------------------------------------------------------------

def test_tia_4d_shapes_calibration_and_beam_energy():
    """TIA 5x5 scan of 256x256 int32: R 1.874 nm (the row axis is stored negative),
    Q 0.1744 1/nm (the axis offset of -1.1e10 1/nm is not used), 200 kV from the .emi."""
    with open_diffraction(vendor_file(TIA_4D)) as source:
        assert source.scan_shape == (5, 5) and source.detector_shape == (256, 256)
        assert source.dtype == np.int32
        cal = source.calibration
        assert cal["r_pixel_size"] == pytest.approx(1.8739, rel=1e-4)
        assert cal["r_pixel_unit"] == "nm"
        assert cal["q_pixel_size"] == pytest.approx(0.17435, rel=1e-4)
        assert cal["q_pixel_unit"] == "1/nm"
        assert cal["beam_energy_kev"] == pytest.approx(200.0)
        assert source.calibration_problems == {}


def test_tia_ser_alone_q_pixel_is_refused_not_stored(tmp_path):
    """The .ser without its .emi is read with Q 1.74e17 "nm": refused, never stored."""
    with open_diffraction(vendor_file(TIA_4D_SER)) as source:
        assert "q_pixel_size" not in source.calibration
        assert "1.744e+17 nm" in source.calibration_problems["q_pixel"]
        assert ".emi" in source.calibration_problems["q_pixel"]
    with pytest.raises(InputError, match=r"1\.744e\+17 nm.*`q_pixel`"):
        convert(vendor_file(TIA_4D_SER), tmp_path / "a.h5")
    assert not (tmp_path / "a.h5").exists()


def test_tia_convert_then_preprocess_refuses_a_scan_without_a_beam(tmp_path, run_cli):
    """This TIA scan has no central beam: the "origins" are noise (plane fit rms
    residual ~105 px, drift ~161 px); preprocess refuses instead of centring on it."""
    code, out, err = run_cli("convert", "--diffraction", vendor_file(TIA_4D),
                             "--out", tmp_path / "tia.h5", "--quiet")
    assert code == 0, err
    with open_bundle(tmp_path / "tia.h5") as b:
        cal = b.calibration
        assert b.scan_shape == (5, 5) and b.detector_shape == (256, 256)
        assert cal.beam_energy_kev == pytest.approx(200.0)
        assert cal.q_pixel_size == pytest.approx(0.17435, rel=1e-4)
        assert b.diffraction.dtype == np.int32 and int(b.diffraction[0, 0].max()) == 636
    code, err = _preprocess(tmp_path / "tia.h5", tmp_path / "pre.h5", run_cli)
    assert code == 2, err
    assert "origins are noise" in err and "rms residual" in err
    residual = float(err.split("rms residual of ")[1].split(" px")[0])
    assert residual > 50
    assert not (tmp_path / "pre.h5").exists()


def test_tia_spectrum_image_as_diffraction_is_described():
    with pytest.raises(InputError) as info:
        open_diffraction(vendor_file(TIA_EDS_ONLY))
    assert "1024 Energy (eV)" in info.value.message and "`eds`" in info.value.hint


# --- DM4 EELS, Velox, Bruker: not diffraction ---------------------------------------------

def test_dm4_eels_spectrum_image_is_described_as_eels(tmp_path, run_cli):
    with pytest.raises(InputError) as info:
        open_diffraction(vendor_file(DM4_EELS))
    message = info.value.message  # without the path, whose name says EELS
    assert "frames of 2x2" not in message
    assert "EELS spectrum image" in message and "2048 Energy loss (eV)" in message
    # --scan-shape does not make it "2x2 patterns" either
    code, _, err = run_cli("convert", "--diffraction", vendor_file(DM4_EELS),
                           "--scan-shape", "2x1024", "--out", tmp_path / "a.h5")
    assert code == 2 and "EELS" in err and not (tmp_path / "a.h5").exists()


@pytest.mark.parametrize("name,held,instead", [
    (VELOX_SI, "EDS spectrum image", "`eds`"),
    (VELOX_IMAGE, "HAADF 512x512", "`haadf`"),
])
def test_velox_file_as_diffraction_says_what_it_holds(name, held, instead):
    with pytest.raises(InputError) as info:
        open_diffraction(vendor_file(name))
    assert held in info.value.message and "Velox" in info.value.message
    assert instead in info.value.hint


def test_bruker_file_as_diffraction_says_what_it_holds():
    with pytest.raises(InputError) as info:
        open_diffraction(vendor_file(BRUKER_TEM))
    assert "EDS spectrum image" in info.value.message and "2048 Energy (keV)" in info.value.message


# --- EMPAD -------------------------------------------------------------------------------

def test_empad_shapes_and_values(empad_scan, tmp_path):
    with open_diffraction(empad_scan) as source:
        assert source.scan_shape == (4, 4) and source.detector_shape == (128, 128)
        assert source.dtype == np.float32
        assert source.calibration["q_pixel_unit"] == "1/nm"
        first = source.read_rows(0, 1)[0, 0]
    # the first frame without its 2 metadata rows
    np.testing.assert_array_equal(first, np.arange(128 * 128, dtype=np.float32).reshape(128, 128))
    result = convert(empad_scan, tmp_path / "e.h5")
    assert result.scan_shape == (4, 4) and result.detector_shape == (128, 128)
    with open_bundle(tmp_path / "e.h5") as b:
        assert b.calibration.q_pixel_unit == "1/nm"
        np.testing.assert_array_equal(b.diffraction[0, 0], first)


# --- Medipix HDF5 ----------------------------------------------------------------------------

def test_medipix_dataset_is_read_as_a_2x2_scan():
    with open_diffraction(vendor_file(MEDIPIX), dataset=MEDIPIX_DATA) as source:
        assert source.scan_shape == (2, 2) and source.detector_shape == (256, 256)
        assert source.dtype == np.dtype(np.uint16) and source.dtype.isnative
        patterns = source.read_rows(0, 2)
    with h5py.File(vendor_file(MEDIPIX)) as f:
        np.testing.assert_array_equal(patterns, f[MEDIPIX_DATA][:, :, 0])


def test_medipix_metadata_arrays_are_not_offered_as_scans():
    with h5py.File(vendor_file(MEDIPIX)) as f:
        offered = find_4d_datasets(f)
    assert offered == ["/" + MEDIPIX_DATA]  # not DAC, Threshold or the summed pattern


@pytest.mark.parametrize("dataset", ["fpd_expt/DAC/data", "fpd_expt/Threshold/data"])
def test_medipix_metadata_array_is_refused_as_patterns(dataset):
    with pytest.raises(InputError, match="not a scan of diffraction patterns") as info:
        open_diffraction(vendor_file(MEDIPIX), dataset=dataset).close()
    assert MEDIPIX_DATA in info.value.hint


def test_medipix_convert_auto_detected_and_preprocessed(tmp_path, run_cli):
    code, out, err = run_cli("convert", "--diffraction", vendor_file(MEDIPIX),
                             "--r-pixel", "2", "--out", tmp_path / "m.h5", "--quiet")
    assert code == 0, err
    assert "2x2 scan of 256x256 uint16 patterns" in out
    with open_bundle(tmp_path / "m.h5") as b, h5py.File(vendor_file(MEDIPIX)) as f:
        np.testing.assert_array_equal(b.diffraction[()], f[MEDIPIX_DATA][:, :, 0])
        assert b.calibration.q_pixel_unit == "px"  # the file's "?/m" axes are not a calibration
    code, err = _preprocess(tmp_path / "m.h5", tmp_path / "pre.h5", run_cli)
    assert code == 0, err
    with open_bundle(tmp_path / "pre.h5") as pre:
        origin = pre.file["calibration/origin"][()]
    # the direct beam of this scan sits at about (125.1, 128.7) in every pattern
    np.testing.assert_allclose(origin.reshape(-1, 2).mean(axis=0), [125.1, 128.7], atol=0.5)


# --- maps on another grid, from a file's own calibration ------------------------------------

def test_haadf_on_another_grid_stored_unregistered_from_its_calibration(tmp_path):
    """The Bruker HAADF image (64x64, 0.771 nm) with the TIA scan (5x5, 1.874 nm):
    stored as haadf_unregistered with the image's own pixel size, for registration."""
    from stem2eds.preprocess.register import load_unregistered

    result = convert(vendor_file(TIA_4D), tmp_path / "t.h5", haadf=vendor_file(BRUKER_TEM))
    assert result.unregistered == ["haadf"] and "unregistered" in result.summary()
    with open_bundle(tmp_path / "t.h5") as b:
        assert "haadf" not in b.file and b.file["haadf_unregistered"].shape == (64, 64)
        maps, names, px = load_unregistered(b)
    assert names == ["haadf"] and maps.shape == (1, 64, 64) and maps.max() > maps.min()
    assert px == pytest.approx(0.77100, rel=1e-4)
