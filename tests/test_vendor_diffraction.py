"""Diffraction readers on real vendor files (issue 15).

Files from released packages (tests/vendor/files.toml), fetched by ``make dev``;
a test whose file is absent is skipped. Behaviour that issue 15 reports as
wrong is marked ``xfail(strict=True)`` with the failure described, so each
test turns into a failure (XPASS) the day io/diffraction.py is fixed, and the
mark is then removed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest

from stem2eds.errors import InputError
from stem2eds.io.diffraction import find_4d_datasets, open_diffraction

_spec = importlib.util.spec_from_file_location(
    "stem2eds_vendor_fetch_diffraction", Path(__file__).parent / "vendor" / "fetch.py")
fetch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch)

BLOCKFILE = "blockfile/test1.blo"
TIA_4D = "tia/16x16-diffraction_imagel_5x5x256x256_EDS.emi"
DM4_EELS = "dm4/EELS_SI.dm4"
EMPAD_XML = "empad/map4x4.xml"
MEDIPIX = "medipix/fpd_file_test.hdf5"
MEDIPIX_DATA = "fpd_expt/fpd_data/data"
VELOX_IMAGE = "velox/fei_emd_image.emd"


def vendor_file(name: str) -> Path:
    path = fetch.cache_dir() / name
    if not path.is_file():
        pytest.skip(f"real vendor file {name} is not fetched (run `make dev` or "
                    "`python tests/vendor/fetch.py`)")
    return path


@pytest.fixture
def empad_scan(tmp_path) -> Path:
    """The real EMPAD XML beside the raw file it names (4x4 scan of 130x128 float32
    frames: 128 detector rows + 2 metadata rows), written as np.arange the way
    HyperSpy's own EMPAD test writes it (the raw file is not shipped)."""
    xml = tmp_path / "map4x4.xml"
    xml.write_bytes(vendor_file(EMPAD_XML).read_bytes())
    np.arange(4 * 4 * 130 * 128, dtype=np.float32).tofile(tmp_path / "scan_x4_y4.raw")
    return xml


# --- read correctly today -------------------------------------------------------

def test_blockfile_shapes_and_scan_step():
    with open_diffraction(vendor_file(BLOCKFILE)) as source:
        assert source.scan_shape == (3, 2) and source.detector_shape == (144, 144)
        assert source.dtype == np.uint8
        assert source.calibration["r_pixel_size"] == pytest.approx(12.8)
        assert source.calibration["r_pixel_unit"] == "nm"
        patterns = source.read_rows(0, 3)
        assert patterns.shape == (3, 2, 144, 144) and patterns.max() > patterns.min()


def test_tia_4d_shapes_and_calibration():
    """TIA 5x5 scan of 256x256 patterns: R 1.874 nm, Q 0.1744 1/nm (the axis offset
    of -1.1e10 1/nm in the file is not used)."""
    with open_diffraction(vendor_file(TIA_4D)) as source:
        assert source.scan_shape == (5, 5) and source.detector_shape == (256, 256)
        cal = source.calibration
        assert cal["r_pixel_size"] == pytest.approx(1.8739, rel=1e-4)
        assert cal["r_pixel_unit"] == "nm"
        assert cal["q_pixel_size"] == pytest.approx(0.17435, rel=1e-4)
        assert cal["q_pixel_unit"] == "1/nm"


def test_empad_shapes_and_values(empad_scan):
    with open_diffraction(empad_scan) as source:
        assert source.scan_shape == (4, 4) and source.detector_shape == (128, 128)
        assert source.dtype == np.float32
        assert source.calibration["q_pixel_unit"] == "1/nm"
        first = source.read_rows(0, 1)[0, 0]
    # the first frame without its 2 metadata rows
    np.testing.assert_array_equal(first, np.arange(128 * 128, dtype=np.float32).reshape(128, 128))


def test_velox_image_file_is_not_a_scan():
    with pytest.raises(InputError):
        open_diffraction(vendor_file(VELOX_IMAGE))


# --- known failures (issue 15; io/diffraction.py) ----------------------------------

@pytest.mark.xfail(strict=True, reason="issue 15: the blockfile's Q unit 'cm' (a detector "
                   "length) is stored as the Q calibration unit; expected 1/nm or mrad, or a "
                   "refusal asking for `q_pixel` (io/diffraction.py)")
def test_blockfile_q_unit_is_reciprocal_or_angle():
    with open_diffraction(vendor_file(BLOCKFILE)) as source:
        assert source.calibration.get("q_pixel_unit") in ("1/nm", "mrad")


@pytest.mark.xfail(strict=True, reason="issue 15: the Medipix (fpd) dataset "
                   "fpd_expt/fpd_data/data, shape (2, 2, 1, 256, 256) big-endian, is refused "
                   "as 5D even when named; the singleton axis should be squeezed "
                   "(io/diffraction.py)")
def test_medipix_dataset_is_read_as_a_2x2_scan():
    with open_diffraction(vendor_file(MEDIPIX), dataset=MEDIPIX_DATA) as source:
        assert source.scan_shape == (2, 2) and source.detector_shape == (256, 256)
        patterns = source.read_rows(0, 2)
    with h5py.File(vendor_file(MEDIPIX)) as f:
        np.testing.assert_array_equal(patterns, f[MEDIPIX_DATA][:, :, 0])


@pytest.mark.xfail(strict=True, reason="issue 15: auto-detection offers the metadata arrays "
                   "fpd_expt/DAC/data (2, 2, 1, 27) and fpd_expt/Threshold/data (2, 2, 1, 8) as "
                   "4D datasets (io/diffraction.py)")
def test_medipix_metadata_arrays_are_not_offered_as_scans():
    with h5py.File(vendor_file(MEDIPIX)) as f:
        offered = find_4d_datasets(f)
    assert not any("DAC" in p or "Threshold" in p for p in offered)


@pytest.mark.xfail(strict=True, reason="issue 15: choosing fpd_expt/DAC/data gives a '2x2 "
                   "scan of 1x27 uint8 patterns' instead of a refusal (io/diffraction.py)")
def test_medipix_metadata_array_is_refused_as_patterns():
    with pytest.raises(InputError):
        open_diffraction(vendor_file(MEDIPIX), dataset="fpd_expt/DAC/data").close()


@pytest.mark.xfail(strict=True, reason="issue 15: an EELS spectrum image (2x2 positions x "
                   "2048 energy channels in eV) is described as 'a stack of 2048 frames of 2x2' "
                   "instead of what it holds (io/diffraction.py)")
def test_dm4_eels_spectrum_image_is_described_as_eels():
    with pytest.raises(InputError) as info:
        open_diffraction(vendor_file(DM4_EELS))
    message = info.value.message  # without the path, whose name says EELS
    assert "frames of 2x2" not in message
    assert "EELS" in message or "energy" in message


@pytest.mark.xfail(strict=True, reason="issue 15: a Velox file with an EDS spectrum image "
                   "and a HAADF image, given as the diffraction file, is answered with 'name a "
                   "3D stack of frames with `dataset`' (its HAADF image) instead of what it "
                   "holds and where to pass it (io/diffraction.py)")
def test_velox_spectrum_image_file_as_diffraction_is_described():
    with pytest.raises(InputError) as info:
        open_diffraction(vendor_file("velox/fei_emd_si.emd"))
    assert "spectrum image" in info.value.message
