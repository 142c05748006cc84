"""Start-up of ``stem2eds predict``: one subcommand parser, the ring kernel loaded in the background."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from builders import make_raw_scan, small_config

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_main_builds_only_the_command_it_runs(run_cli):
    from stem2eds.cli import _named_command, build_parser

    assert _named_command(["--debug", "predict", "RUN"]) == "predict"
    assert _named_command(["nope", "predict"]) is None
    assert _named_command(["--version"]) is None
    sub = build_parser("predict")._subparsers._group_actions[0]
    assert list(sub.choices) == ["predict"]
    assert {"predict", "train", "simulate"} <= set(build_parser()._subparsers
                                                   ._group_actions[0].choices)
    code, _, err = run_cli("nope")
    assert code == 2 and "choose from" in err and "simulate" in err


def test_predict_start_up_imports_neither_torch_nor_the_simulator():
    out = _python("import sys\n"
                  "from stem2eds.cli import build_parser, _named_command\n"
                  "build_parser(_named_command(['predict', 'RUN', 'SCAN']))\n"
                  "print(sorted(m for m in ('torch', 'stem2eds.simulate', 'numba')"
                  " if m in sys.modules))\n")
    assert out == "[]"


def test_warm_up_loads_the_kernel_for_the_scans_dtype(tmp_path):
    from stem2eds.train.fit import train

    scan = make_raw_scan(tmp_path / "scan.h5", seed=3)
    run = train([scan], tmp_path / "run", small_config(model="ridge"), quiet=True)
    # a fresh process: nothing but the warm-up can have loaded the kernel there
    out = _python("from stem2eds.formats.bundle import open_bundle\n"
                  "from stem2eds.predict.predictor import load_run\n"
                  "from stem2eds.features.rings import _kernel\n"
                  f"p = load_run({str(run)!r})\n"
                  f"with open_bundle({str(scan)!r}) as raw:\n"
                  "    thread = p.warm_up(raw)\n"
                  "    thread.join(60)\n"
                  "with open_bundle(p.run_dir / p.info['preprocessed'][0]) as pre:\n"
                  "    assert p.warm_up(pre) is None  # no raw blocks, no kernel\n"
                  "print(_kernel.cache_info().currsize, "
                  "[str(s[0]) for s in _kernel().signatures])\n")
    assert out.startswith("1 ") and "readonly array(uint16, 1d, C" in out, out
