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
