"""A run folder damaged in copying or by hand is refused in one line, never predicted into NaN maps.

Found by fuzzing run folders (weights with NaN or of the wrong dtype,
truncated ``head.npz``/``ood.npz``, members declaring huge arrays, OOD
references that do not fit, ``model_params`` edited after training): each
case predicted NaN or nonsense with exit 0, or failed with exit 1.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import numpy as np
import pytest



@pytest.fixture(scope="module")
def trained(small_run):
    run, scan = small_run
    assert (run / "head.npz").is_file() and (run / "ood.npz").is_file()
    return run, scan


def _copy(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _refused(run_cli, run, scan, tmp_path, match: str) -> None:
    code, out, err = run_cli("predict", run, scan, "--out", tmp_path / "pred.h5", "-q")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and match in lines[0], err
    assert not (tmp_path / "pred.h5").exists()


def _rewrite_npz(path, edit) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: np.asarray(z[k]) for k in z.files}
    edit(arrays)
    np.savez(path, **arrays)


def _weights_edit(run, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "weights.safetensors"))
    save_file({k: edit(v) for k, v in state.items()}, str(run / "weights.safetensors"))
    (run / "head.npz").unlink()  # the sidecar no longer matches: the torch path reads the weights


def test_nan_weights(trained, run_cli, tmp_path):
    import torch

    run = _copy(trained[0], tmp_path)
    _weights_edit(run, lambda t: torch.full_like(t, float("nan")) if t.is_floating_point() else t)
    _refused(run_cli, run, trained[1], tmp_path, "holds NaN or infinite values")


def test_integer_weights(trained, run_cli, tmp_path):
    import torch

    run = _copy(trained[0], tmp_path)
    _weights_edit(run, lambda t: t.to(torch.int32) if t.is_floating_point() else t)
    _refused(run_cli, run, trained[1], tmp_path, "not floating point")


@pytest.mark.parametrize("edit, match", [
    (lambda a: a["linear_weight"].__setitem__((0, 0), np.nan), "non-finite values in linear_weight"),
    (lambda a: a["feature_scale"].__setitem__(slice(None), 0.0), "must be positive"),
])
def test_head_with_bad_values(trained, run_cli, tmp_path, edit, match):
    run = _copy(trained[0], tmp_path)
    _rewrite_npz(run / "head.npz", edit)
    _refused(run_cli, run, trained[1], tmp_path, match)


@pytest.mark.parametrize("name", ["head.npz", "ood.npz"])
@pytest.mark.parametrize("cut", ["half", "empty"])
def test_truncated_npz(trained, run_cli, tmp_path, name, cut):
    run = _copy(trained[0], tmp_path)
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[:len(data) // 2] if cut == "half" else b"")
    _refused(run_cli, run, trained[1], tmp_path, f"{name} cannot be read")


@pytest.mark.parametrize("name", ["head.npz", "ood.npz"])
def test_npz_member_declaring_a_huge_array(trained, run_cli, tmp_path, name):
    """Its header says 10^12 float32: refused before any allocation."""
    run = _copy(trained[0], tmp_path)
    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(buf, {"descr": "<f4", "fortran_order": False,
                                              "shape": (10**6, 10**6)})
    buf.write(b"\0" * 64)
    with zipfile.ZipFile(run / name, "a") as z:
        z.writestr("extra.npy", buf.getvalue())
    _refused(run_cli, run, trained[1], tmp_path, "declare more than")


@pytest.mark.parametrize("edit, match", [
    (lambda a: a["mean"].__setitem__(0, np.nan), "non-finite values"),
    (lambda a: a.__setitem__("mean", a["mean"][:3]), "do not fit"),
    (lambda a: a.__setitem__("threshold", np.array([1.0, 2.0])), "does not describe"),
    (lambda a: a.__setitem__("first_ring", np.array(10**6)), "do not fit the run's"),
    (lambda a: a.pop("precision"), "does not describe"),
])
def test_ood_reference_that_does_not_fit(trained, run_cli, tmp_path, edit, match):
    run = _copy(trained[0], tmp_path)
    _rewrite_npz(run / "ood.npz", edit)
    _refused(run_cli, run, trained[1], tmp_path, match)


@pytest.mark.parametrize("edit", [{"normalise": "none"}, {"statistics": ["max"]}])
def test_model_params_edited_after_training(trained, run_cli, tmp_path, edit):
    run = _copy(trained[0], tmp_path)
    info = json.loads((run / "run.json").read_text())
    info["model_params"].update(edit)
    (run / "run.json").write_text(json.dumps(info))
    _refused(run_cli, run, trained[1], tmp_path, "model_params differ from those the weights")


@pytest.mark.parametrize("edit", [{"beam_radius": 1e9}, {"scale": 1e30}, {"scaling": "log"},
                                  {"bin_factor": 2}])
def test_preprocess_edited_after_training(trained, run_cli, tmp_path, edit):
    """Finite but other settings (fuzzing found constant maps with exit 0): refused by name."""
    run = _copy(trained[0], tmp_path)
    info = json.loads((run / "run.json").read_text())
    info["preprocess"].update(edit)
    (run / "run.json").write_text(json.dumps(info))
    code, _, err = run_cli("predict", run, trained[1], "--out", tmp_path / "pred.h5", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "pred.h5").exists()
    if "bin_factor" not in edit:  # (a bin factor is refused earlier: the input shape)
        assert "preprocess differ from those the weights" in err and next(iter(edit)) in err, err


def test_non_finite_outputs_are_never_written(trained, tmp_path):
    """Whatever makes the model's outputs NaN (here its bias, after loading): refused, not clipped."""
    from stem2eds.errors import InputError
    from stem2eds.predict.predictor import load_run

    predictor = load_run(trained[0])
    predictor.head.head.linear_bias[0] = np.nan  # the numpy head's arrays
    with pytest.raises(InputError, match="NaN or infinite outputs"):
        predictor.predict(trained[1])
