"""The command-line tool as a whole: help, exit codes."""

import subprocess
import sys

from stem2eds.cli import COMMANDS, build_parser


def test_every_subcommand_has_help_with_example(run_cli):
    parser = build_parser()
    registered = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert registered, "no subcommands registered"
    for name in registered:
        assert name in COMMANDS
        code, out, _ = run_cli(name, "--help")
        assert code == 0
        assert "example:" in out and f"stem2eds {name}" in out


def test_unknown_option_exits_2_with_one_line(run_cli):
    code, _, err = run_cli("--no-such-flag")
    assert code == 2
    assert len(err.strip().splitlines()) == 1


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "stem2eds", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("stem2eds ")


def test_only_the_command_line_skips_the_final_collections(monkeypatch, tmp_path, capsys):
    """``main()`` of the console script freezes the objects left for exit; ``main(argv)`` does not."""
    import gc

    from stem2eds.cli import main

    args = ["predict", str(tmp_path / "no-run"), str(tmp_path / "no.h5"),
            "--out", str(tmp_path / "p.h5")]
    gc.unfreeze()
    try:
        assert main(args) == 2
        assert gc.get_freeze_count() == 0
        monkeypatch.setattr(sys, "argv", ["stem2eds", *args])
        assert main() == 2  # an error line, not a traceback, either way
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert "error:" in capsys.readouterr().err
