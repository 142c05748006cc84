"""Trust at the boundary (issue 14): interrupted, concurrent, stale and disk-full training.

- SIGINT / SIGTERM inside Lightning's fit: exit 130 / 143, one line
  "interrupted; resume with --resume", and a folder ``--resume`` finishes;
- a run killed before its first checkpoint is never a dead end;
- a full disk while training: one line, no background-thread traceback;
- two writers of one run or experiment folder: the second gets exit 2;
- stale products (other seed, other model, changed input data) are not reused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from builders import make_raw_scan, small_config


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust_faults")
    return [make_raw_scan(root / "a.h5", seed=1), make_raw_scan(root / "b.h5", seed=2)]


def _one_line(code: int, err: str, expected: int = 2) -> str:
    lines = err.strip().splitlines()
    assert code == expected and len(lines) == 1, (code, err[-3000:])
    return lines[0]


# -- signals during training ---------------------------------------------------------
def _start_training(bundle: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stem2eds", "train", str(bundle), "--out", str(out),
           "--model", "radial", "--epochs", "100000", "--patience", "100000", "--device",
           "cpu", "--threads", "1", "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CI": "1"})


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_inside_fit_exits_130_or_143_and_resumes(scans, tmp_path, sig, run_cli):
    out = tmp_path / "run"
    proc = _start_training(scans[0], out)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.ckpt").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    line = _one_line(proc.returncode, err, 130 if sig == signal.SIGINT else 143)
    assert line == "stem2eds train: interrupted; resume with --resume"
    assert not list(out.rglob("*.partial")) and not (out / ".lock").exists()
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "training"
    if sig == signal.SIGINT:  # the folder resumes to a finished run
        from stem2eds.formats.checkpoint import load_checkpoint

        done = int(load_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"])
        code, _, err = run_cli("train", scans[0], "--out", out, "--resume", "--epochs",
                               done + 2, "--quiet")
        assert code == 0, err
        assert json.loads((out / "run.json").read_text())["status"] == "complete"


# -- killed before the first checkpoint ------------------------------------------------
@pytest.fixture(scope="module")
def ridge_run(scans, tmp_path_factory):
    from stem2eds.train.fit import train

    return Path(train([scans[0]], tmp_path_factory.mktemp("ridge") / "run",
                      small_config(model="ridge"), quiet=True))


def _killed_before_checkpoint(ridge_run: Path, dst: Path) -> Path:
    """What SIGKILL leaves before the first checkpoint: run.json 'training', a lock, a .partial."""
    shutil.copytree(ridge_run, dst)
    info = json.loads((dst / "run.json").read_text())
    info["status"] = "training"
    (dst / "run.json").write_text(json.dumps(info))
    (dst / "weights.safetensors").unlink()
    shutil.rmtree(dst / "checkpoints", ignore_errors=True)
    (dst / ".lock").write_text("999999999")  # a dead writer's lock file (no OS lock held)
    (dst / ".run.json.999999999.x.partial").write_text("half")
    return dst


@pytest.mark.parametrize("resume", [False, True], ids=["rerun", "resume"])
def test_run_killed_before_first_checkpoint_starts_over(ridge_run, scans, tmp_path, run_cli,
                                                        resume):
    out = _killed_before_checkpoint(ridge_run, tmp_path / "run")
    code, _, err = run_cli("train", scans[0], "--out", out, "--model", "ridge", "--bin", "1",
                           "--quiet", *(["--resume"] if resume else []))
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert not list(out.glob(".*.partial")) and not (out / ".lock").exists()


def test_failing_train_leaves_no_half_made_run(scans, tmp_path, run_cli, monkeypatch):
    import stem2eds.train.data as data

    def broken(*args, **kwargs):
        raise RuntimeError("boom while loading")
    monkeypatch.setattr(data.RunData, "setup", broken)
    code, _, err = run_cli("train", scans[0], "--out", tmp_path / "r", "--model", "ridge",
                           "--quiet")
    assert code == 1 and "boom" in err
    assert not (tmp_path / "r").exists()


def test_interrupt_before_first_checkpoint_leaves_nothing(scans, tmp_path, run_cli,
                                                          monkeypatch):
    import stem2eds.train.data as data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(data.RunData, "setup", interrupted)
    code, _, err = run_cli("train", scans[0], "--out", tmp_path / "r", "--model", "ridge",
                           "--quiet")
    assert code == 130 and "interrupted" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# -- a full disk while training -------------------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["checkpoint", "tensorboard-thread"])
def test_disk_full_during_training_is_one_line(scans, tmp_path, run_cli, monkeypatch, where):
    if where == "checkpoint":
        import lightning.fabric.plugins.io.torch_io as torch_io
        monkeypatch.setattr(torch_io, "_atomic_save", _enospc)
    else:
        from tensorboard.summary.writer import record_writer
        monkeypatch.setattr(record_writer.RecordWriter, "write", _enospc)
    code, _, err = run_cli("train", scans[0], "--out", tmp_path / "r", "--model", "radial",
                           "--epochs", "3", "--device", "cpu", "--threads", "1", "--quiet")
    line = _one_line(code, err)
    assert "no space left" in line and "Traceback" not in err
    left = tmp_path / "r"
    assert not left.exists() or (left / "checkpoints" / "last.ckpt").is_file()


# -- two writers at once ---------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "experiment"])
def test_second_writer_is_refused(scans, tmp_path, run_cli, command):
    from stem2eds.atomic import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    args = [scans[0], "--out", out, "--model", "ridge"] if command == "train" else \
        [*scans, "--out", out, "--strategy", "leave-one-out"]
    with folder_lock(out):
        code, _, err = run_cli(command, *args)
        line = _one_line(code, err)
        assert f"in use by process {os.getpid()}" in line
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert not any(out.iterdir())


def test_lock_of_a_dead_process_does_not_block(tmp_path):
    from stem2eds.formats.rundir import RunDir

    run = RunDir(tmp_path)
    run.lock_file.write_text("999999999")
    with run.lock():
        assert run.lock_file.read_text() == str(os.getpid())
    assert not run.lock_file.exists()


# -- stale products ----------------------------------------------------------------------------
def _fingerprint(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["fingerprint"]


def test_stale_runs_are_retrained_not_reused(scans, tmp_path):
    from stem2eds.train.fit import ensure_trained

    bundle = tmp_path / "a.h5"
    shutil.copy(scans[0], bundle)
    run = tmp_path / "models" / "m"
    ensure_trained([bundle], run, small_config(model="ridge", seed=0), quiet=True)
    first = _fingerprint(run)
    mtime = (run / "run.json").stat().st_mtime_ns
    ensure_trained([bundle], run, small_config(model="ridge", seed=0), quiet=True)
    assert (run / "run.json").stat().st_mtime_ns == mtime  # same inputs: reused
    ensure_trained([bundle], run, small_config(model="ridge", seed=1), quiet=True)
    second = _fingerprint(run)
    assert second != first and json.loads((run / "run.json").read_text())["seed"] == 1
    make_raw_scan(bundle, seed=9)  # new data under the same name
    ensure_trained([bundle], run, small_config(model="ridge", seed=1), quiet=True)
    assert _fingerprint(run) not in (first, second)


def test_a_run_without_fingerprint_is_never_replaced(ridge_run, scans, tmp_path):
    from stem2eds.errors import InputError
    from stem2eds.train.fit import ensure_trained

    run = tmp_path / "run"
    shutil.copytree(ridge_run, run)
    info = json.loads((run / "run.json").read_text())
    del info["fingerprint"]
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="without a fingerprint"):
        ensure_trained([scans[0]], run, small_config(model="ridge"), quiet=True)
    assert (run / "weights.safetensors").is_file()


def test_preprocessed_cache_follows_the_data(scans, tmp_path):
    from stem2eds.experiments.common import PreprocessedCache
    from stem2eds.preprocess import PreprocessSettings

    bundle = tmp_path / "a.h5"
    shutil.copy(scans[0], bundle)
    cache = PreprocessedCache(tmp_path / "pre", quiet=True)
    settings = PreprocessSettings(bin_factor=1)
    first = cache.get(bundle, "a", settings)
    assert cache.get(bundle, "a", settings) == first
    assert cache.get(bundle, "a", PreprocessSettings(bin_factor=2)) != first
    make_raw_scan(bundle, seed=9)
    assert cache.get(bundle, "a", settings) != first


def test_changed_inputs_are_preprocessed_again_on_resume(scans, tmp_path):
    """train(resume) reuses run/preprocessed only when it was made from the same data."""
    from stem2eds.formats.bundle import fingerprint

    bundle = tmp_path / "a.h5"
    shutil.copy(scans[0], bundle)
    before = fingerprint([bundle], {})
    make_raw_scan(bundle, seed=9)
    assert fingerprint([bundle], {}) != before
    with h5py.File(bundle, "r") as f:
        assert "provenance" in f.attrs
