"""EDS spectrum images and HAADF images from real microscope files (issue 15).

The files come from released packages on the registry (tests/vendor/files.toml),
fetched by ``make dev`` into .venv/stem2eds-testdata; a test whose file is
not there is skipped with the command that fetches it. Quantification is
compared with a direct exspy Cliff-Lorimer run on the same file.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from stem2eds.errors import InputError
from stem2eds.io.spectrum import (
    MIN_NET_COUNTS,
    load_spectrum_image,
    parse_k_factors,
    quantify_spectrum_image,
    read_beam_energy_kev,
    read_haadf_from_file,
)

from builders import fetch, vendor_file  # noqa: E402

VELOX_SI = "velox/fei_emd_si.emd"
VELOX_SUPERX = "velox/fei_SI_SuperX-HAADF_10frames_10x50.emd"
VELOX_IMAGE = "velox/fei_emd_image.emd"
BRUKER_TEM = "bruker/test_TEM.bcf"
BRUKER_SEM = "bruker/30x30_instructively_packed_16bit_compressed.bcf"
TIA_EDS = "tia/16x16-diffraction_imagel_5x5x256x256_EDS.emi"
TIA_LOW_ENERGY = "tia/16x16-spectrum_image-5x5x1024.emi"
DM4_EELS = "dm4/EELS_SI.dm4"
SEM_ELEMENTS = ["O", "Mg", "Al", "Si", "Ca", "Ti", "Fe"]
SEM_K = {"O": 1.9, "Mg": 1.05, "Al": 1.0, "Si": 1.0, "Ca": 1.1, "Ti": 1.2, "Fe": 1.35}
STEEL_K = {"Cr": 1.1, "Fe": 1.2, "Ni": 1.35}



def velox_spectrum_images_readable() -> bool:
    """RosettaSciIO reads Velox spectrum images only with the package ``sparse``."""
    return importlib.util.find_spec("sparse") is not None


def need_sparse(path: Path):
    """Without ``sparse`` the reader must say so in one sentence; then skip."""
    if not velox_spectrum_images_readable():
        with pytest.raises(InputError, match="needs the Python package 'sparse'"):
            load_spectrum_image(path)
        pytest.skip("Velox spectrum images need the Python package 'sparse' "
                    "(the refusal above was checked)")


def exspy_cliff_lorimer(path: Path, lines: list[str], factors: dict[str, float],
                        eds_bin: int = 1, **load) -> dict[str, np.ndarray]:
    """Atomic fractions (0..1) per line, by exspy alone, the way its docs do it."""
    import hyperspy.api as hs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = hs.load(str(path), **load)
        loaded = loaded if isinstance(loaded, list) else [loaded]
        s = [x for x in loaded if str(x.metadata.Signal.signal_type).startswith("EDS")][0]
        if s.metadata.Signal.signal_type != "EDS_TEM":
            s.set_signal_type("EDS_TEM")
        if eds_bin > 1:
            s = s.rebin(scale=(eds_bin, eds_bin, 1))
        lines = sorted(lines)
        s.set_elements(sorted({line.split("_")[0] for line in lines}))
        s.set_lines(lines)
        windows = s.estimate_background_windows(xray_lines=lines)
        intensities = s.get_lines_intensity(xray_lines=lines, background_windows=windows)
        composition = s.quantification(intensities, method="CL",
                                       factors=[factors[line.split("_")[0]] for line in lines],
                                       composition_units="atomic", plot_result=False,
                                       show_progressbar=False)
    fractions = {line: np.asarray(c.data, dtype=float) / 100
                 for line, c in zip(lines, composition)}
    clipped = np.any([np.asarray(i.data) < 0 for i in intensities], axis=0)
    return fractions, clipped


def assert_agrees_with_exspy(result, reference, r_min: float = 0.99, min_positions: int = 10):
    """Same fractions as exspy where no net intensity was negative (there stem2eds
    sets it to 0, exspy keeps it): r >= r_min and 1e-4 agreement per position."""
    fractions, clipped = reference
    for element, line in result.xray_lines.items():
        ours, theirs = result.fractions[element], fractions[line]
        ok = np.isfinite(theirs) & ~clipped
        assert ok.sum() >= min_positions
        r = np.corrcoef(ours[ok], theirs[ok])[0, 1]
        assert r >= r_min, f"{line}: r = {r:.4f} against exspy"
        np.testing.assert_allclose(ours[ok], theirs[ok], atol=1e-4)


# --- the pins ----------------------------------------------------------------

def test_pins_are_complete_and_modest():
    artifacts, files = fetch.load_pins()
    assert sum(a["size"] for a in artifacts.values()) < 100e6
    for entry in files:
        assert entry["artifact"] in artifacts
        assert len(entry["sha256"]) == 64 and int(entry["sha256"], 16) >= 0
        assert entry["size"] > 0 and entry["what"]
    for artifact in artifacts.values():
        assert artifact["filename"].startswith(f"{artifact['package']}-{artifact['version']}-")
    covered = {entry["name"].split("/")[0] for entry in files}
    assert covered >= {"velox", "bruker", "tia", "blockfile", "dm4", "empad", "medipix"}


# --- Velox -------------------------------------------------------------------

def test_velox_haadf_image():
    """``--haadf FILE.emd`` on Velox files (select_type "images", issue 15)."""
    import hyperspy.api as hs

    image = read_haadf_from_file(vendor_file(VELOX_IMAGE))
    assert image.shape == (512, 512) and image.dtype == np.float64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = hs.load(str(vendor_file(VELOX_IMAGE)), select_type="images")
    np.testing.assert_array_equal(image, np.asarray(direct.data, dtype=float))
    assert read_beam_energy_kev(vendor_file(VELOX_IMAGE)) == 200.0


def test_velox_haadf_through_convert(tmp_path, run_cli):
    """``stem2eds convert --haadf FILE.emd`` stores the Velox HAADF image."""
    emd = vendor_file(VELOX_IMAGE)
    diffraction = tmp_path / "scan.npy"
    np.save(diffraction, np.ones((512, 512, 2, 2), dtype=np.uint8))
    out = tmp_path / "bundle.h5"
    code, stdout, err = run_cli("convert", "--diffraction", diffraction, "--haadf", emd,
                                "--out", out)
    assert code == 0, err
    assert "RosettaSciIO" not in stdout and "WARNING |" not in stdout
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["haadf"][()], read_haadf_from_file(emd))


def test_velox_spectrum_image_files_haadf_and_beam_energy():
    """The HAADF image and beam energy of Velox files that also hold a spectrum image
    (RosettaSciIO opens those only with the package ``sparse``)."""
    path = vendor_file(VELOX_SI)
    need_sparse(path)
    assert read_haadf_from_file(path).shape == (16, 16)
    assert read_beam_energy_kev(path) == 200.0
    superx = read_haadf_from_file(vendor_file(VELOX_SUPERX))
    assert superx.shape == (50, 10) and np.all(np.isfinite(superx)) and superx.std() > 0


def test_velox_superx_agrees_with_exspy():
    path = vendor_file(VELOX_SUPERX)
    need_sparse(path)
    result = quantify_spectrum_image(path, ["Ni", "Fe", "Cr"], STEEL_K)
    assert result.xray_lines == {"Ni": "Ni_Ka", "Fe": "Fe_Ka", "Cr": "Cr_Ka"}
    assert "X-ray lines: Ni_Ka, Fe_Ka, Cr_Ka" in result.notes
    assert result.beam_energy_kev == 200.0 and result.microscope == "TEM"
    assert result.pixel_size_nm == pytest.approx((1.2340, 1.2340), rel=1e-3)
    stack = np.stack([result.fractions[e] for e in result.elements])
    assert stack.shape == (3, 50, 10) and stack.dtype == np.float32
    np.testing.assert_allclose(stack.sum(0), 1.0, atol=1e-5)
    assert 0 <= stack.min() and stack.max() <= 1
    reference = exspy_cliff_lorimer(path, ["Ni_Ka", "Fe_Ka", "Cr_Ka"], STEEL_K,
                                    select_type="spectrum_image")
    assert_agrees_with_exspy(result, reference)
    assert sum(result.clipped.values()) < 10  # counted, and stated when any
    assert result.low_count_positions == 0


def test_velox_single_element_is_refused():
    """The file's Sample lists Nb alone: one element is refused with a sentence."""
    path = vendor_file(VELOX_SUPERX)
    need_sparse(path)
    with pytest.raises(InputError, match="ratios between elements; quantifying Nb alone"):
        quantify_spectrum_image(path, None, {"Nb": 1.0})


def test_velox_sparse_spectrum_image_is_refused():
    """fei_emd_si.emd has ~26 counts per position, almost all in the zero peak."""
    path = vendor_file(VELOX_SI)
    need_sparse(path)
    with pytest.raises(InputError, match=r"256 of 256 positions have fewer than 20 net counts"):
        quantify_spectrum_image(path, ["Fe", "Cr"], {"Fe": 1.0, "Cr": 1.0})


# --- Bruker ------------------------------------------------------------------

def test_bruker_tem_sparse_refused_then_binned():
    """test_TEM.bcf: 64x64 positions with ~6 counts each; refused, eds_bin offered."""
    path = vendor_file(BRUKER_TEM)
    k = {"Cu": 1.5, "O": 2.0, "Pd_La": 1.8, "Ti": 1.1}
    with pytest.raises(InputError, match="4096 of 4096 positions have fewer than") as info:
        quantify_spectrum_image(path, None, k)
    hint = str(info.value)
    factor = int(hint.split("`eds_bin` (e.g. ")[1].split(":")[0])
    assert 2 <= factor <= 16
    result = quantify_spectrum_image(path, None, k, eds_bin=factor)
    assert result.elements == ["Cu", "O", "Pd", "Ti"]  # the file's Sample.elements
    assert result.xray_lines["Pd"] == "Pd_La"  # Pd_Ka lies above the 20 keV spectrum
    shape = (64 // factor, 64 // factor)
    assert result.fractions["Cu"].shape == shape and result.eds_bin == factor
    assert result.pixel_size_nm == pytest.approx((0.771 * factor,) * 2, rel=1e-3)
    assert result.low_count_positions <= shape[0] * shape[1] / 2
    assert result.beam_energy_kev == 200.0 and result.microscope == "TEM"
    reference = exspy_cliff_lorimer(path, ["Cu_Ka", "O_Ka", "Pd_La", "Ti_Ka"],
                                    {"Cu": 1.5, "O": 2.0, "Pd": 1.8, "Ti": 1.1}, eds_bin=factor)
    assert_agrees_with_exspy(result, reference)


def test_bruker_k_factor_for_another_line_is_refused():
    """Pd=... means Pd_Ka at 200 kV, but the spectrum ends below it: Pd_La is used."""
    path = vendor_file(BRUKER_TEM)
    with pytest.raises(InputError, match=r"gives Pd=1.8, a k-factor for Pd_Ka .* but Pd_La "
                                         r"is quantified"):
        quantify_spectrum_image(path, None, {"Cu": 1.5, "O": 2.0, "Pd": 1.8, "Ti": 1.1},
                                eds_bin=8)
    with pytest.raises(InputError, match="gives Pd twice"):
        parse_k_factors("Pd=1.8,Pd_La=3")


@pytest.fixture(scope="module")
def sem_result():
    """The SEM spectrum image quantified once for the tests that compare with it."""
    return quantify_spectrum_image(vendor_file(BRUKER_SEM), SEM_ELEMENTS, SEM_K)


def test_bruker_sem_agrees_with_exspy_and_warns(sem_result):
    path = vendor_file(BRUKER_SEM)
    result = sem_result
    assert result.microscope == "SEM" and result.beam_energy_kev == 20.0
    assert any(n.startswith("SEM spectrum image (20 kV): quantified as a thin TEM film")
               for n in result.notes)
    assert result.fractions["Si"].shape == (30, 30)
    assert result.pixel_size_nm == pytest.approx((1667.4, 1667.4), rel=1e-3)
    assert result.low_count_positions == 0
    reference = exspy_cliff_lorimer(path, [f"{e}_Ka" for e in SEM_ELEMENTS], SEM_K)
    assert_agrees_with_exspy(result, reference)
    # clipping is counted per element and its effect on the mean is stated
    assert sum(result.clipped.values()) > 0
    note = next(n for n in result.notes if "negative net line intensities" in n)
    assert "mean atomic fraction changed by" in note
    assert all(abs(v) < 0.02 for v in result.clipping_shift.values())


def test_bruker_sem_through_convert(tmp_path, run_cli, sem_result):
    """``stem2eds convert --eds FILE.bcf``: the bundle holds the same fractions."""
    path = vendor_file(BRUKER_SEM)
    diffraction = tmp_path / "scan.npy"
    np.save(diffraction, np.ones((30, 30, 4, 4), dtype=np.uint16))
    out = tmp_path / "bundle.h5"
    code, stdout, err = run_cli(
        "convert", "--diffraction", diffraction, "--eds", path,
        "--elements", ",".join(SEM_ELEMENTS),
        "--k-factors", ",".join(f"{e}={k}" for e, k in SEM_K.items()), "--out", out)
    assert code == 0, err
    assert "SEM spectrum image (20 kV)" in err and "X-ray lines: O_Ka, Mg_Ka" in err
    assert "RosettaSciIO" not in stdout and "Hyperspy" not in stdout
    with h5py.File(out) as f:
        for element in SEM_ELEMENTS:
            np.testing.assert_allclose(f[f"eds/{element}"][()], sem_result.fractions[element],
                                       atol=1e-6)


def test_eds_hspy_without_sample_metadata(tmp_path, sem_result):
    """A real spectrum image saved to .hspy without its Sample node (issue 15)."""
    import hyperspy.api as hs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = [x for x in hs.load(str(vendor_file(BRUKER_SEM)))
             if x.metadata.Signal.signal_type == "EDS_SEM"][0]
        del s.metadata.Sample
        s.save(tmp_path / "no_sample.hspy")
    result = quantify_spectrum_image(tmp_path / "no_sample.hspy", SEM_ELEMENTS, SEM_K)
    for element in SEM_ELEMENTS:
        np.testing.assert_allclose(result.fractions[element], sem_result.fractions[element],
                                   atol=1e-6)


# --- TIA, DM4 ----------------------------------------------------------------

def test_tia_spectrum_image_is_read_as_eds():
    """TIA does not store the signal type; an X-ray energy axis (eV) makes it EDS."""
    path = vendor_file(TIA_EDS)
    si = load_spectrum_image(path)
    axis = si.axes_manager.signal_axes[0]
    assert si.data.shape == (5, 5, 4000) and si.metadata.Signal.signal_type == "EDS_TEM"
    assert axis.units == "keV" and axis.scale == pytest.approx(0.005)
    assert read_beam_energy_kev(path) == 200.0
    # 23 counts in the whole scan: refused, and binning cannot help
    with pytest.raises(InputError, match="25 of 25 positions .* binning cannot help"):
        quantify_spectrum_image(path, ["Fe", "Cu"], {"Fe": 1.0, "Cu": 1.0})


def test_tia_low_energy_spectrum_is_not_eds():
    """An untyped TIA spectrum image spanning -20..185 eV holds no X-ray lines."""
    with pytest.raises(InputError, match="no EDS spectrum image with 2 scan axes and an "
                                         "X-ray energy axis"):
        quantify_spectrum_image(vendor_file(TIA_LOW_ENERGY), ["Fe", "Cr"],
                                {"Fe": 1.0, "Cr": 1.0})


def test_dm4_eels_spectrum_image_is_not_eds():
    with pytest.raises(InputError, match="EELS spectrum image .* not EDS"):
        quantify_spectrum_image(vendor_file(DM4_EELS), ["Fe", "Cr"], {"Fe": 1.0, "Cr": 1.0})


# --- library log lines ---------------------------------------------------------

def test_library_log_lines_go_to_stderr(tmp_path, run_cli, capsys):
    """HyperSpy/RosettaSciIO log records never reach stdout, even on a failure."""
    diffraction = tmp_path / "scan.npy"
    np.save(diffraction, np.ones((16, 16, 4, 4), dtype=np.uint16))
    code, stdout, err = run_cli("convert", "--diffraction", diffraction,
                                "--eds", vendor_file(VELOX_SI), "--elements", "Fe,Cr",
                                "--k-factors", "Fe=1,Cr=1", "--out", tmp_path / "b.h5")
    assert code == 2 and stdout == ""
    assert "WARNING |" not in err and "please report" not in err
    assert "error:" in err
    # records logged while a command runs: errors on stderr, warnings counted
    from stem2eds.cli import _library_logs

    with _library_logs("convert", show_warnings=False, quiet=False):
        logging.getLogger("rsciio.emd").warning("The file contains only one spectrum stream")
        logging.getLogger("hyperspy.io").error("could not read it")
    out, err = capsys.readouterr()
    assert out == ""
    assert "stem2eds convert: HyperSpy error: could not read it" in err
    assert "1 warning(s) from the file-reading libraries not shown" in err
    with _library_logs("convert", show_warnings=True, quiet=True):
        logging.getLogger("rsciio.emd").warning("only one spectrum stream")
    out, err = capsys.readouterr()
    assert out == "" and "RosettaSciIO warning: only one spectrum stream" in err
    assert MIN_NET_COUNTS == 20


def test_convert_bins_a_sparse_bruker_map_and_keeps_its_beam_energy(run_cli, tmp_path):
    # 4096 positions with ~1 net count each: refused as is, quantified after
    # --eds-bin; the bundle's step is the binned step and the beam energy the file's.
    bcf = vendor_file("bruker/test_TEM.bcf")
    k = "Cu_Ka=1.6,O_Ka=2.0,Pd_La=2.5,Ti_Ka=1.2"
    code, _, err = run_cli("convert", "--eds", bcf, "--k-factors", k, "--out", tmp_path / "a.h5")
    assert code == 2 and "--eds-bin" in err and not (tmp_path / "a.h5").exists()
    code, _, err = run_cli("convert", "--eds", bcf, "--k-factors", k, "--eds-bin", "16",
                           "--out", tmp_path / "b.h5")
    assert code == 0, err
    with h5py.File(tmp_path / "b.h5") as f:
        assert f["eds/Cu"].shape == (4, 4)
        assert f.attrs["beam_energy_kev"] == pytest.approx(200.0)
        assert f.attrs["r_pixel_unit"] == "nm"
        assert f.attrs["r_pixel_size"] == pytest.approx(16 * 0.771, rel=0.01)
        total = sum(f["eds"][e][()] for e in f["eds"])
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
