"""Shared fixtures. Every test makes its own small data; nothing downloads."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def run_cli(capsys):
    """Run ``stem2eds ARGS...`` in-process; return (exit code, stdout, stderr)."""
    from stem2eds.cli import main

    def _run(*args: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors and --help
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """(finished two-epoch default run on a 12x10 scan, 32x32 detector; another such scan).

    Shared by the tests that damage copies of a run folder or feed it hostile
    scans (they never change the run itself).
    """
    from builders import make_raw_scan, small_config
    from stem2eds.train.fit import train

    folder = tmp_path_factory.mktemp("small_run")
    scans = [make_raw_scan(folder / f"s{k}.h5", seed=60 + k, detector=32) for k in range(2)]
    run = train([scans[0]], folder / "run", small_config(max_epochs=2), quiet=True)
    return run, scans[1]
