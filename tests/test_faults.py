"""Faults from outside: a disk that is (or becomes) full, Ctrl-C and SIGTERM.

Each command runs in its own process here, because these faults end
processes: HDF5 crashed the interpreter on a full disk before bundles
reserved their space, and a signal must be delivered to a real process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from builders import make_raw_scan


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "stem2eds", *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "CI": "1", "PYTHONFAULTHANDLER": "1"}


@contextlib.contextmanager
def _tiny_disk(folder: Path, size: str = "1m"):
    """A real file system of ``size`` (tmpfs), or skip where mounting is not allowed."""
    folder.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({type(exc).__name__}); "
                    "the in-process ENOSPC cases of test_bad_inputs still run")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory) -> Path:
    """A raw bundle of about 1.6 MB (its preprocessed copy does not fit in 1 MiB)."""
    return make_raw_scan(tmp_path_factory.mktemp("faults") / "big.h5", seed=4,
                         scan_shape=(20, 20), detector=32)


def _assert_one_line_exit_2(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_full_disk_is_refused_before_writing(big_raw, tmp_path):
    with _tiny_disk(tmp_path / "tiny") as disk:
        proc = subprocess.run(_cli("preprocess", big_raw, "--out", disk / "pre.h5", "--bin", "1",
                                   "--quiet"), env=_env(), capture_output=True, text=True,
                              timeout=120)
        _assert_one_line_exit_2(proc, "not enough free space", "pre.h5", "MiB free")
        assert list(disk.iterdir()) == []


def test_disk_filling_after_the_check_fails_cleanly(big_raw, tmp_path):
    """Space gone between the free-space check and the first write (another
    process filled the disk): the block reservation catches it, no crash,
    nothing left. Before the reservation this was a segmentation fault with
    a partial file left on the disk."""
    code = ("import stem2eds.errors as e, sys\n"
            "e.check_free_space = lambda *a, **k: None  # the other process fills in between\n"
            "from stem2eds.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    with _tiny_disk(tmp_path / "tiny") as disk:
        proc = subprocess.run(
            [sys.executable, "-c", code, "preprocess", str(big_raw), "--out",
             str(disk / "pre.h5"), "--bin", "1", "--quiet"],
            env=_env(), capture_output=True, text=True, timeout=120)
        _assert_one_line_exit_2(proc, "not enough free space", "pre.h5")
        assert list(disk.iterdir()) == []


def test_output_that_fits_is_written(tmp_path):
    """Control: the size estimate does not refuse an output that fits."""
    frames = np.random.default_rng(0).integers(0, 1000, (8 * 8, 64, 64)).astype(np.uint16)
    np.save(tmp_path / "scan.npy", frames)                      # 512 KiB of patterns
    with _tiny_disk(tmp_path / "tiny") as disk:
        proc = subprocess.run(_cli("convert", "--diffraction", tmp_path / "scan.npy",
                                   "--scan-shape", "8x8", "--quiet", "--out", disk / "s.h5"),
                              env=_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert [p.name for p in disk.iterdir()] == ["s.h5"]
        # The reservation beyond the data was released.
        assert os.stat(disk / "s.h5").st_blocks * 512 < 600 * 1024


# -- interrupted commands leave nothing that looks complete ---------------------------

#: Runs the CLI with every write into a temporary (``.partial``) HDF5 file
#: slowed down, so that a signal reliably lands while the output is being
#: written, on small data and whatever the load of the machine
#: (``SLOW_WRITES_UNDER``: only files whose path contains it).
_SLOW_WRITES = """
import os, sys, time, h5py
_where = os.environ.get("SLOW_WRITES_UNDER", "")
_setitem, _create = h5py.Dataset.__setitem__, h5py.Group.create_dataset
def _slow(name):
    if name.endswith(".partial") and _where in name:
        time.sleep(0.15)
def setitem(self, key, value):
    _slow(str(self.file.filename))
    return _setitem(self, key, value)
def create(self, *args, **kwargs):
    _slow(str(self.file.filename))
    return _create(self, *args, **kwargs)
h5py.Dataset.__setitem__, h5py.Group.create_dataset = setitem, create
from stem2eds.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _interrupt_while_writing(args, out_folder: Path, sig: int, timeout: float = 120.0):
    """Start ``stem2eds ARGS``, send ``sig`` once a temporary output exists in
    ``out_folder``, return (exit status, stdout, stderr)."""
    env = {**_env(), "SLOW_WRITES_UNDER": str(out_folder)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITES, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if any(out_folder.rglob("*.partial")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "finished before a temporary output appeared: " + \
            proc.stderr.read()[-2000:]
        time.sleep(0.1)  # inside the write loop, past the file's creation
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout, stderr


def _assert_interrupted_cleanly(code: int, stderr: str, sig: int, out_folder: Path,
                                finished: list[Path]) -> None:
    expected = 130 if sig == signal.SIGINT else 143
    assert code == expected, (code, stderr[-3000:])
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert stderr.strip().splitlines()[-1].endswith(f"{word}; no partial output was kept"), \
        stderr[-3000:]
    assert list(out_folder.rglob("*.partial")) == []
    for path in finished:
        assert not path.exists(), f"{path.name} looks complete after an interrupt"


@pytest.fixture(scope="module")
def npy_stack(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stack") / "scan.npy"
    frames = np.random.default_rng(1).integers(0, 500, (16 * 6, 32, 32)).astype(np.uint16)
    np.save(path, frames)
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_convert_leaves_nothing(npy_stack, tmp_path, sig):
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _interrupt_while_writing(
        ["convert", "--diffraction", npy_stack, "--scan-shape", "16x6", "--block-mb", "0.001",
         "--quiet", "--out", out / "scan.h5"], out, sig)
    _assert_interrupted_cleanly(code, err, sig, out, [out / "scan.h5"])
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_preprocess_leaves_nothing(big_raw, tmp_path, sig):
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _interrupt_while_writing(
        ["preprocess", big_raw, "--bin", "1", "--batch", "20", "--quiet",
         "--out", out / "pre.h5"], out, sig)
    _assert_interrupted_cleanly(code, err, sig, out, [out / "pre.h5"])
    assert list(out.iterdir()) == []


def test_sigterm_during_predict_leaves_nothing(tmp_path):
    from stem2eds.train.fit import train
    from builders import small_config

    raw = make_raw_scan(tmp_path / "raw.h5", seed=6, scan_shape=(8, 6))
    run = train([raw], tmp_path / "run", small_config(max_epochs=1, targets=("eds", "haadf")),
                quiet=True)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _interrupt_while_writing(
        ["predict", run, raw, "--out", out / "pred.h5"], out, signal.SIGTERM)
    _assert_interrupted_cleanly(code, err, signal.SIGTERM, out, [out / "pred.h5"])
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_experiment_stopped_while_predicting_resumes_without_retraining(tmp_path, run_cli):
    """SIGTERM once the models are trained and predictions are being written; the
    re-run reuses both trained models and finishes the report."""
    import h5py

    from builders import make_series

    scans = make_series(tmp_path, n_scans=3)
    out = tmp_path / "exp"
    args = ["experiment", "--strategy", "extrapolate", "--out", out, "--epochs", "2",
            "--no-figures", "--quiet", *scans]
    code, _, err = _interrupt_while_writing(args, out / "predictions", signal.SIGTERM)
    _assert_interrupted_cleanly(code, err, signal.SIGTERM, out,
                                [out / "metrics.json", out / "report.html"])
    for done in (out / "predictions").rglob("*.h5"):      # whatever exists is whole
        with h5py.File(done, "r") as f:
            assert set(f["eds"]) == {"O", "Si", "Ge", "Sb", "Te"}
    weights = sorted((out / "models").rglob("weights.safetensors"))
    assert len(weights) == 2                               # radial and ridge finished
    stamps = [w.stat().st_mtime_ns for w in weights]

    code, stdout, err = run_cli(*args)
    assert code == 0, err
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    assert (out / "metrics.json").is_file() and stdout.strip().endswith("report.html")


def test_partial_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    # A SIGKILL leaves .NAME.<pid>.XXXX.partial behind; the next atomic write of
    # NAME removes it, but never the file of a writer that is still running.
    import subprocess as sp

    from stem2eds.atomic import atomic_output

    dead = sp.run([sys.executable, "-c", "import os; print(os.getpid())"],
                  capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".out.h5.{dead}.abc123.partial"
    live = tmp_path / f".out.h5.{os.getpid()}.def456.partial"
    other = tmp_path / f".other.h5.{dead}.abc123.partial"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    with atomic_output(tmp_path / "out.h5") as tmp:
        tmp.write_bytes(b"done")
    assert not stale.exists()
    assert live.exists() and other.exists()
    assert (tmp_path / "out.h5").read_bytes() == b"done"
