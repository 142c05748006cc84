"""Conventions every command follows: --quiet/--verbose, --version, progress, completion."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from stem2eds.cli import build_parser, main, versions
from stem2eds.progress import track_blocks


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_every_command_has_quiet_and_verbose():
    commands = _subcommands()
    assert {"convert", "simulate", "preprocess", "train", "predict", "experiment", "report",
            "demo"} <= set(commands)
    for name, sub in commands.items():
        flags = {s for a in sub._actions for s in a.option_strings}
        assert {"-q", "--quiet", "-v", "--verbose"} <= flags, name
        by_flag = {s: a for a in sub._actions for s in a.option_strings}
        assert by_flag["-q"].dest == "quiet" and by_flag["-v"].dest == "verbose", name
        assert by_flag["--quiet"].default is False and by_flag["--verbose"].default is False


def test_quiet_and_verbose_exclude_each_other(run_cli):
    code, _, err = run_cli("report", "--quiet", "--verbose", "somewhere")
    assert code == 2 and "not allowed with" in err and len(err.strip().splitlines()) == 1


def test_version_lists_the_libraries_without_importing_them():
    code = ("import sys\nfrom stem2eds.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit as e:\n    code = e.code\n"
            "print('EXIT', code, 'torch' in sys.modules, 'hyperspy.api' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout
    lines = dict(line.split(None, 1) for line in out.strip().splitlines()[:-1])
    assert out.strip().splitlines()[-1] == "EXIT 0 False False"
    for name in ("stem2eds", "python", "torch", "numpy", "h5py", "hyperspy", "rosettasciio",
                 "lightning"):
        assert name in lines, name
    from importlib import metadata

    assert lines["numpy"].strip() == metadata.version("numpy")
    assert lines["python"].strip() == sys.version.split()[0]
    assert dict(versions())["libertem"] in (metadata.version("libertem"), "not installed")


def test_version_marks_missing_packages(monkeypatch):
    import stem2eds.cli as cli

    monkeypatch.setattr(cli, "VERSION_PACKAGES", ("numpy", "no-such-package-stem2eds"))
    assert dict(versions())["no-such-package-stem2eds"] == "not installed"


def test_block_progress_plain_lines_count_items(capsys, monkeypatch):
    monkeypatch.setattr("stem2eds.progress.interactive", lambda: False)
    blocks = [(i * 7, list(range(7))) for i in range(10)] + [(70, [0, 1])]
    assert list(track_blocks(iter(blocks), 72, "predicting")) == blocks
    lines = capsys.readouterr().err.strip().splitlines()
    assert 5 <= len(lines) <= 11 and lines[-1].startswith("predicting: 72/72")
    assert list(track_blocks(iter(blocks), 72, "predicting", quiet=True)) == blocks
    assert capsys.readouterr().err == ""


def test_report_shows_progress_unless_quiet(tmp_path, run_cli):
    from builders import make_report_run

    run = tmp_path / "run"
    run.mkdir()
    make_report_run(run)
    code, out, err = run_cli("report", run)
    assert code == 0 and out.strip().endswith("report.html")
    assert "report: patterns of s1" in err
    code, out, err = run_cli("report", "--quiet", run)
    assert code == 0 and err == ""


def test_completion_is_offered_only_when_the_shell_asks(monkeypatch):
    calls = []
    fake = types.ModuleType("argcomplete")
    fake.autocomplete = lambda parser: calls.append(parser.prog)
    monkeypatch.setitem(sys.modules, "argcomplete", fake)
    monkeypatch.delenv("_ARGCOMPLETE", raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert calls == []
    monkeypatch.setenv("_ARGCOMPLETE", "1")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert calls == ["stem2eds"]


@pytest.mark.slow
def test_predict_shows_progress_unless_quiet(tmp_path, run_cli):
    from builders import make_raw_scan, small_config
    from stem2eds.train import train

    bundle = make_raw_scan(tmp_path / "scan.h5", scan_shape=(12, 10))
    run = train([bundle], tmp_path / "run", small_config(model="ridge"), quiet=True)
    code, out, err = run_cli("predict", run, bundle, "--out", tmp_path / "a.h5")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("predicting positions: ")]
    assert lines and lines[-1].startswith("predicting positions: 120/120")
    code, out, err = run_cli("predict", run, bundle, "--out", tmp_path / "b.h5", "--quiet")
    assert code == 0 and "predicting positions" not in err
