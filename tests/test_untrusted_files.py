"""Loading a model never runs code from the file.

Run folders get shared. A checkpoint or weights file crafted to run code on
unpickling must be refused (exit 2, one line) and its payload must never run.
The payload here creates a marker file: if unpickling ever executed it, the
marker would exist afterwards.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from builders import make_raw_scan, small_config


class _WritesMarker:
    """Unpickling this object calls ``open(marker, "w")``: the file appears."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _ExecsCode:
    """Unpickling this object runs Python source through ``builtins.exec``."""

    def __init__(self, marker: Path):
        self.source = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return (exec, (self.source,))


def _plain_pickle(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": _WritesMarker(marker), "epoch": 0})


def _torch_zip_checkpoint(marker: Path) -> bytes:
    """A file in torch.save's zip format whose data.pkl runs ``exec`` when unpickled."""
    buf = io.BytesIO()
    torch.save({"state_dict": {}, "epoch": 0, "payload": _ExecsCode(marker)}, buf)
    return buf.getvalue()


def _checkpoint_with_real_state_plus_payload(last: Path, marker: Path) -> bytes:
    """The genuine last.ckpt with one extra entry that runs code: the subtle case."""
    state = torch.load(last, map_location="cpu", weights_only=True)
    state["callbacks"] = {"evil": _ExecsCode(marker)}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _poisoned_safetensors_header(marker: Path) -> bytes:
    # A safetensors file is an 8-byte little-endian header length, a JSON
    # header, then raw bytes. Put a pickle where the tensor bytes go and make
    # the header claim a tensor: nothing may ever unpickle it.
    payload = _plain_pickle(marker)
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(payload)],
                               "data_offsets": [0, len(payload)]}}).encode()
    return len(header).to_bytes(8, "little") + header + payload


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(raw bundle, finished one-epoch training run)."""
    from stem2eds.train.fit import train

    folder = tmp_path_factory.mktemp("untrusted")
    scan = make_raw_scan(folder / "scan.h5", seed=5)
    run = train([scan], folder / "run", small_config(max_epochs=1), quiet=True)
    return scan, Path(run)


def _copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "shared_run"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("logs"))
    return target


def _assert_refused(code: int, err: str, marker: Path) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not marker.exists(), "the payload ran while loading"


@pytest.mark.parametrize("poison", [_plain_pickle, _torch_zip_checkpoint])
def test_resume_refuses_poisoned_checkpoint(finished_run, tmp_path, run_cli, poison):
    scan, run = finished_run
    shared = _copy_run(run, tmp_path)
    marker = tmp_path / "payload_ran"
    (shared / "checkpoints" / "last.ckpt").write_bytes(poison(marker))
    code, _, err = run_cli("train", scan, "--out", shared, "--resume", "--epochs", "2",
                           "--device", "cpu", "--threads", "1", "--quiet")
    _assert_refused(code, err, marker)
    assert "last.ckpt" in err


def test_resume_refuses_genuine_checkpoint_with_added_payload(finished_run, tmp_path,
                                                              run_cli):
    scan, run = finished_run
    shared = _copy_run(run, tmp_path)
    marker = tmp_path / "payload_ran"
    last = shared / "checkpoints" / "last.ckpt"
    last.write_bytes(_checkpoint_with_real_state_plus_payload(last, marker))
    code, _, err = run_cli("train", scan, "--out", shared, "--resume", "--epochs", "2",
                           "--device", "cpu", "--threads", "1", "--quiet")
    _assert_refused(code, err, marker)


def test_payload_really_runs_when_unpickled_unsafely(tmp_path):
    """Control: the crafted files do run their payload under plain pickle.

    Without this, the refusals above could pass because the payload was inert.
    """
    marker = tmp_path / "payload_ran"
    pickle.loads(_plain_pickle(marker))
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(_torch_zip_checkpoint(marker)), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("poison", [_plain_pickle, _torch_zip_checkpoint,
                                    _poisoned_safetensors_header])
def test_predict_refuses_poisoned_weights(finished_run, tmp_path, run_cli, poison):
    scan, run = finished_run
    shared = _copy_run(run, tmp_path)
    marker = tmp_path / "payload_ran"
    (shared / "weights.safetensors").write_bytes(poison(marker))
    out = tmp_path / "pred.h5"
    code, _, err = run_cli("predict", shared, scan, "--out", out)
    _assert_refused(code, err, marker)
    assert "weights.safetensors" in err
    assert not out.exists() and not list(tmp_path.glob(".pred.h5*"))


def test_predict_ignores_pickles_beside_the_weights(finished_run, tmp_path, run_cli):
    """Checkpoints in a finished run are never read by predict: only safetensors is."""
    scan, run = finished_run
    shared = _copy_run(run, tmp_path)
    marker = tmp_path / "payload_ran"
    for name in ("last.ckpt", "best.ckpt"):
        (shared / "checkpoints" / name).write_bytes(_torch_zip_checkpoint(marker))
    code, _, err = run_cli("predict", shared, scan, "--out", tmp_path / "pred.h5")
    assert code == 0, err
    assert not marker.exists()


def test_run_description_is_json_not_code(finished_run, tmp_path, run_cli):
    """A run.json replaced by a pickle is refused as invalid JSON; nothing runs."""
    scan, run = finished_run
    shared = _copy_run(run, tmp_path)
    marker = tmp_path / "payload_ran"
    (shared / "run.json").write_bytes(_plain_pickle(marker))
    code, _, err = run_cli("predict", shared, scan, "--out", tmp_path / "pred.h5")
    _assert_refused(code, err, marker)
    assert "run.json" in err


def test_zip_checkpoint_is_what_torch_writes():
    """The crafted checkpoint is in torch's real (zip) format, not a lookalike."""
    data = _torch_zip_checkpoint(Path("unused"))
    assert zipfile.is_zipfile(io.BytesIO(data))
