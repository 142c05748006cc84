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


def test_an_interrupt_raised_in_a_c_callback_is_not_lost(capsys):
    """Ctrl-C or SIGTERM inside a C library's callback (numba's compiler makes them) is kept.

    Python can only print such an exception ("Exception ignored", with a
    traceback) and carry on; the command raises it at its next progress block,
    or reports it when it ends.
    """
    import argparse
    import ctypes

    from stem2eds.cli import _run_command, _sigterm_as_interrupt, _Terminated
    from stem2eds.progress import track_blocks

    def raise_terminated():
        raise _Terminated()

    callback = ctypes.CFUNCTYPE(None)(raise_terminated)  # called from C, as by llvmlite

    def loop(args):
        callback()
        for _ in track_blocks(((i, [0]) for i in range(3)), 3, quiet=True):
            pass
        return 0

    def finish(args):
        callback()
        return 0

    for func, said in ((loop, "terminated; no partial output was kept"),
                       (finish, "terminated after its work was done")):
        with _sigterm_as_interrupt():
            code = _run_command(argparse.Namespace(func=func, command="predict", debug=False))
        err = capsys.readouterr().err
        assert code == 143, err
        assert said in err and "Traceback" not in err and "Exception ignored" not in err, err
