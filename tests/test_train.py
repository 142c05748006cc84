"""Training: split, datasets, the train() API, the run directory, resume, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stem2eds.formats.bundle import open_bundle
from stem2eds.errors import InputError

from builders import ELEMENTS, make_raw_scan, small_config  # noqa: E402


@pytest.fixture(scope="module")
def raw_scan(tmp_path_factory) -> Path:
    return make_raw_scan(tmp_path_factory.mktemp("raw") / "scan_a.h5", seed=1)


# -- split -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["random", "blocks"])
def test_split_fraction_and_determinism(mode):
    from stem2eds.train.data import split_positions

    mask = split_positions((40, 30), mode, 0.2, seed=3, block_size=5)
    assert mask.shape == (40, 30) and mask.dtype == bool
    assert abs(mask.mean() - 0.2) < 0.03
    assert np.array_equal(mask, split_positions((40, 30), mode, 0.2, seed=3, block_size=5))
    assert not np.array_equal(mask, split_positions((40, 30), mode, 0.2, seed=4, block_size=5))


def test_block_split_keeps_neighbours_together():
    from stem2eds.train.data import split_positions

    def mixed_neighbours(mask):
        return (mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum()

    blocks = split_positions((40, 40), "blocks", 0.2, seed=0, block_size=8)
    random = split_positions((40, 40), "random", 0.2, seed=0)
    # A block split has only block edges between the sets; a random one has
    # a boundary around almost every validation position.
    assert mixed_neighbours(blocks) < 0.3 * mixed_neighbours(random)
    for r0 in range(0, 40, 8):
        for c0 in range(0, 40, 8):
            block = blocks[r0:r0 + 8, c0:c0 + 8]
            assert block.all() or not block.any()


def test_split_rejects_single_position():
    from stem2eds.train.data import split_positions

    with pytest.raises(InputError):
        split_positions((1, 1))


# -- config -------------------------------------------------------------------

def test_config_toml_round_trip(tmp_path):
    from stem2eds.train.config import TrainConfig

    cfg = small_config(targets=("eds", "haadf"), loss_weights={"haadf": 0.25}, split="blocks",
                       model_params={"hidden": 16})
    path = cfg.to_toml(tmp_path / "c.toml")
    back = TrainConfig.from_toml(path)
    assert back.to_dict() == cfg.to_dict()
    assert back.loss_weights == {"eds": 1.0, "haadf": 0.25}
    assert back.replace(seed=5).seed == 5 and back.seed == cfg.seed


@pytest.mark.parametrize("text, match", [
    ("model = 'nope'", "unknown model"),
    ("targets = ['haadf']", "targets"),
    ("learning_rate = -1.0", "learning_rate"),
    ("split = 'diagonal'", "split"),
    ("epochs = 3", "unknown training setting"),
    ("[preprocess]\nbin_factor = 0", "bin factor"),
    ("model = ", "TOML"),
])
def test_config_rejects_bad_values(tmp_path, text, match):
    from stem2eds.train.config import TrainConfig

    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        TrainConfig.from_toml(path)


# -- train() and the run folder ------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(raw_scan, tmp_path_factory) -> Path:
    from stem2eds.train.fit import train

    run = tmp_path_factory.mktemp("runs") / "radial"
    return train([raw_scan], run, small_config(targets=("eds", "haadf"), max_epochs=4),
                 quiet=True)


def test_run_folder_contents(trained_run):
    from safetensors.torch import load_file

    from stem2eds.train.config import TrainConfig

    run = trained_run
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["model"] == "radial"
    assert info["elements"] == list(ELEMENTS) and info["targets"] == ["eds", "haadf"]
    assert info["output_columns"] == list(ELEMENTS) + ["haadf"]
    assert info["target_scales"]["haadf"] > 0
    assert info["preprocess"]["scale"] > 0 and info["preprocess"]["beam_radius"] > 0
    assert info["split"]["mode"] == "random"
    assert info["split"]["n_train"] + info["split"]["n_val"] == 120
    assert info["training"]["epochs_run"] == 4
    masks = np.load(run / "split.npz")
    assert masks["val_mask_0"].shape == (12, 10)
    assert masks["val_mask_0"].sum() == info["split"]["n_val"] == 24
    weights = load_file(str(run / "weights.safetensors"))
    assert {"linear.weight", "target_scale", "feature_mean"} <= set(weights)
    assert any(k.startswith("correction.") for k in weights)
    assert "feature_mean" in weights and "linear.weight" in weights
    assert info["training"]["start"]["ridge_alpha"] > 0
    assert TrainConfig.from_toml(run / "config.toml").targets == ("eds", "haadf")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    assert "train_loss" in rows[0] and "val_loss" in rows[0]
    assert (run / "figures" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_training_beats_the_mean_predictor(raw_scan, tmp_path):
    """The best validation MAE is below that of predicting the training mean."""
    from stem2eds.train.fit import train

    run = train([raw_scan], tmp_path / "run", small_config(max_epochs=15, patience=15),
                quiet=True)
    info = json.loads((run / "run.json").read_text())
    val = np.load(run / "split.npz")["val_mask_0"]
    with open_bundle(run / info["preprocessed"][0]) as scan:
        eds = scan.eds()                                     # (E, Rx, Ry)
    mean_mae = np.abs(eds[:, val] - eds[:, ~val].mean(axis=1, keepdims=True)).mean()
    assert info["training"]["best_val_loss"] < 0.8 * mean_mae


def test_ridge_trains_closed_form(raw_scan, tmp_path):
    from stem2eds.train.fit import train

    run = train([raw_scan], tmp_path / "ridge", small_config(model="ridge"), quiet=True)
    info = json.loads((run / "run.json").read_text())
    assert info["training"]["method"].startswith("closed form")
    assert info["training"]["alpha"] > 0
    assert info["training"]["val_loss"] < 0.1


def test_same_seed_same_weights(raw_scan, tmp_path):
    from safetensors.torch import load_file

    from stem2eds.train.fit import train

    runs = [train([raw_scan], tmp_path / f"r{i}", small_config(max_epochs=2), quiet=True)
            for i in range(2)]
    a, b = (load_file(str(r / "weights.safetensors")) for r in runs)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_train_errors_leave_no_run(run_cli, raw_scan, tmp_path):
    no_haadf = make_raw_scan(tmp_path / "nohaadf.h5", haadf=False)
    code, _, err = run_cli("train", no_haadf, "--out", tmp_path / "r1", "--targets", "eds,haadf",
                           "--quiet")
    assert code == 2 and "haadf" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r1").exists()
    code, _, err = run_cli("train", raw_scan, "--out", tmp_path / "r2", "--resume")
    assert code == 2 and "nothing to resume" in err
    code, _, err = run_cli("train", raw_scan, "--out", tmp_path / "r3", "--model", "resnet")
    assert code == 2 and "unknown model" in err
    code, _, err = run_cli("train", tmp_path / "missing.h5", "--out", tmp_path / "r4")
    assert code == 2 and "no such file" in err


def test_cli_train_refuses_existing_run(run_cli, raw_scan, trained_run):
    code, _, err = run_cli("train", raw_scan, "--out", trained_run, "--quiet")
    assert code == 2 and "--resume" in err


def test_cli_train_blocks_split(run_cli, raw_scan, tmp_path):
    code, out, err = run_cli("train", raw_scan, "--out", tmp_path / "run", "--epochs", "2",
                             "--split", "blocks", "--bin", "2", "--lr", "1e-3",
                             "--threads", "1", "--device", "cpu")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "run")
    assert "epoch 2/2" in err        # plain progress lines outside a terminal
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["split"]["mode"] == "blocks"
    assert info["input_shape"] == [16, 16]
    assert info["preprocess"]["bin_factor"] == 2


# -- resume after a kill --------------------------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stem2eds", *map(str, args)]


@pytest.mark.slow
def test_killed_training_resumes(raw_scan, tmp_path):
    """SIGKILL a training after its first checkpoint, then --resume finishes it."""
    run = tmp_path / "run"
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen(
        _cli("train", raw_scan, "--out", run, "--epochs", "1000", "--patience", "1000",
             "--bin", "1", "--threads", "1", "--device", "cpu", "--quiet"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # let the checkpoint file be complete (written then renamed)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (run / "weights.safetensors").exists()
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert killed_at >= 0
    target = killed_at + 3
    out = subprocess.run(_cli("train", raw_scan, "--out", run, "--resume", "--epochs", target,
                              "--threads", "1", "--device", "cpu"),
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # Resumed from the checkpoint: the first epoch printed is the one after it.
    epochs = [line for line in out.stderr.splitlines() if line.startswith("epoch ")]
    assert epochs[0].startswith(f"epoch {killed_at + 2}/{target}")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["training"]["epochs_run"] == target
    assert (run / "weights.safetensors").is_file()


# -- distributed -----------------------------------------------------------------

@pytest.mark.slow
def test_ddp_on_two_cpu_processes(raw_scan, tmp_path):
    """Lightning DDP with 2 CPU processes through the CLI; one run folder comes out."""
    run = tmp_path / "ddp"
    out = subprocess.run(_cli("train", raw_scan, "--out", run, "--strategy", "ddp",
                              "--devices", "2", "--device", "cpu", "--epochs", "2",
                              "--bin", "1", "--threads", "1"),
                         env={**os.environ, "CI": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(run)          # printed by rank 0 only
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["training"]["strategy"] == "DDPStrategy"
    assert info["training"]["world_size"] == 2
    assert info["training"]["epochs_run"] == 2
    assert (run / "weights.safetensors").is_file()


def test_resume_extends_a_finished_run_and_keeps_its_curve(raw_scan, tmp_path):
    import csv

    from stem2eds.train.fit import train

    run = train([raw_scan], tmp_path / "run", small_config(max_epochs=2), quiet=True)
    train([raw_scan], run, small_config(max_epochs=4), resume=True, quiet=True)
    with open(run / "logs" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({int(r["epoch"]) for r in rows if r["val_loss"]}) == [0, 1, 2, 3]
    assert json.loads((run / "run.json").read_text())["training"]["epochs_run"] == 4

