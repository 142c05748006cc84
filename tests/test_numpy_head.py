"""The torch-free head of ring-feature models: numpy maths, head.npz, prediction without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stem2eds.errors import InputError
from builders import make_raw_scan, small_config

CASES = {
    "radial": {"n_hidden": 2, "hidden": 16},
    "radial unnormalised": {"n_hidden": 2, "hidden": 16, "normalise": False},
    "radial linear, three statistics": {"n_hidden": 0, "statistics": ["mean", "std", "max"]},
    "ridge": {},
}


def _random_model(label: str, seed: int = 0):
    """A ring-feature model with every weight and buffer random (as after training)."""
    from stem2eds.models import build_model

    torch.manual_seed(seed)
    net = build_model(label.split()[0], (20, 18), 4, CASES[label])
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.startswith(("feature_", "target_", "weight", "bias")):
                buf.copy_(torch.rand_like(buf) + 0.5 if name.endswith("scale")
                          else torch.randn_like(buf))
    return net.eval()


def _stats(net, n: int = 64, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, len(net.ring_statistics), net.rings.n_rings)
    return rng.uniform(1e-4, 1.0, shape).astype(np.float32)


@pytest.mark.parametrize("label", list(CASES))
def test_numpy_head_equals_the_torch_model(label):
    net = _random_model(label)
    stats = _stats(net)
    with torch.inference_mode():
        want = net.forward_rings(torch.from_numpy(stats)).numpy()
    got = net.numpy_head().forward_rings(stats)
    assert got.dtype == np.float32 and got.shape == want.shape == (64, 4)
    assert np.abs(want).max() > 0.1  # not a trivially zero head
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_head_file_round_trip_and_stale_weights(tmp_path):
    from stem2eds.formats.head import read_head, write_head

    net = _random_model("radial")
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"the weights the head came from")
    write_head(tmp_path / "head.npz", net.numpy_head(), weights, net.hparams)
    stats = _stats(net)
    head = read_head(tmp_path / "head.npz", weights, net.hparams)
    np.testing.assert_array_equal(head.forward_rings(stats),
                                  net.numpy_head().forward_rings(stats))
    # run.json edited after training: the same weights would load into another
    # model (e.g. another normalisation, same shapes) and predict nonsense
    for edit in ({"hidden": 10}, {"normalise": "none"}):
        with pytest.raises(InputError, match="model_params differ from those the weights"):
            read_head(tmp_path / "head.npz", weights, {**net.hparams, **edit})
    weights.write_bytes(b"other weights")  # e.g. trained again: the sidecar is ignored
    assert read_head(tmp_path / "head.npz", weights, net.hparams) is None
    assert read_head(tmp_path / "missing.npz", weights, net.hparams) is None
    (tmp_path / "head.npz").write_bytes(b"not an npz")
    with pytest.raises(InputError, match="head.npz cannot be read"):
        read_head(tmp_path / "head.npz", weights, net.hparams)


@pytest.fixture(scope="module")
def ring_runs(tmp_path_factory):
    from stem2eds.train.fit import train

    folder = tmp_path_factory.mktemp("numpy_head")
    scans = (make_raw_scan(folder / "train.h5", seed=21),
             make_raw_scan(folder / "other.h5", seed=22, scan_shape=(9, 11)))
    config = small_config(targets=("eds", "haadf"), max_epochs=2)
    runs = {name: train([scans[0]], folder / name, config.replace(model=name), quiet=True)
            for name in ("radial", "ridge")}
    return runs, scans[1]


@pytest.mark.parametrize("name", ["radial", "ridge"])
def test_cpu_prediction_uses_the_numpy_head_and_matches_torch(ring_runs, name, tmp_path):
    from stem2eds.predict.heads import NumpyHead, TorchHead
    from stem2eds.predict.predictor import load_run

    runs, scan = ring_runs
    assert (runs[name] / "head.npz").is_file()
    fast = load_run(runs[name])
    assert isinstance(fast.head, NumpyHead)
    old = tmp_path / "old_run"  # a run made before head.npz existed
    shutil.copytree(runs[name], old)
    (old / "head.npz").unlink()
    slow = load_run(old)
    assert isinstance(slow.head, TorchHead)
    a, b = fast.predict(scan), slow.predict(scan)
    assert a.elements == b.elements and a.scan_shape == b.scan_shape == (9, 11)
    assert a.offset == b.offset and a.scan_step_nm == b.scan_step_nm
    assert a.eds.dtype == b.eds.dtype == np.float32
    np.testing.assert_allclose(a.eds, b.eds, atol=1e-5)
    np.testing.assert_allclose(a.haadf, b.haadf, rtol=1e-5)
    # the torch model is still there for whoever asks (built on first use)
    assert isinstance(fast.model, torch.nn.Module)


def test_damaged_weights_or_head_are_refused(ring_runs, tmp_path):
    from stem2eds.predict.predictor import load_run

    runs, _ = ring_runs
    run = tmp_path / "run"
    shutil.copytree(runs["radial"], run)
    info = json.loads((run / "run.json").read_text())
    (run / "weights.safetensors").write_bytes(b"damaged")
    with pytest.raises(InputError, match="safetensors"):
        load_run(run)  # the weights, not the stale sidecar, decide
    shutil.copy(runs["radial"] / "weights.safetensors", run / "weights.safetensors")
    info["n_outputs"], info["targets"] = 3, ["eds"]
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="weights do not fit"):
        load_run(run)  # the sidecar does not describe run.json's model: torch decides


def test_cli_predict_of_a_ring_run_does_not_import_torch(ring_runs, tmp_path):
    runs, scan = ring_runs
    out = tmp_path / "pred.h5"
    code = ("import sys\n"
            "from stem2eds.cli import main\n"
            f"code = main(['predict', {str(runs['radial'])!r}, {str(scan)!r}, '--out', "
            f"{str(out)!r}, '--quiet'])\n"
            "assert code == 0, code\n"
            "heavy = sorted(m for m in ('torch', 'lightning', 'scipy.linalg', 'matplotlib')\n"
            "               if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": src}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "torch" not in done.stdout.strip().split(","), done.stdout
    assert out.is_file()
