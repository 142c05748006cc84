"""The ``stem2eds`` command-line tool.

Each subcommand lives in its own module of this package and defines
``register(subparsers)``, which adds its parser and sets ``func`` to a
function ``run(args) -> int``. Heavy libraries (torch, hyperspy) are imported
inside ``run`` so that ``stem2eds --help`` stays fast.

Exit status: 0 success, 1 internal error, 2 bad input (one line on stderr),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM). SIGTERM is handled like
Ctrl-C: it raises KeyboardInterrupt, so every ``atomic_output`` removes its
temporary file before the process exits.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import pickle
import signal
import sys
import textwrap
import threading

from ..errors import InputError

#: Subcommands, in the order of the pipeline.
COMMANDS = ("convert", "simulate", "preprocess", "train", "predict",
            "experiment", "report", "demo")


class _Formatter(argparse.RawDescriptionHelpFormatter,
                 argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        # "(default: None)" / "(default: False)" say nothing; show real defaults only.
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_command(subparsers, name: str, *, help: str, description: str,
                example: str) -> argparse.ArgumentParser:
    """Add a subcommand parser whose ``--help`` ends with an example."""
    return subparsers.add_parser(
        name, help=help, formatter_class=_Formatter,
        description=textwrap.dedent(description).strip(),
        epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="stem2eds", formatter_class=_Formatter,
        description="Predict EDS composition maps and HAADF from 4D-STEM scans.",
        epilog="example:\n  stem2eds demo --out demo_out\n\n"
               "Run 'stem2eds COMMAND --help' for the options of each command.")
    parser.add_argument("--version", action="version", version=f"stem2eds {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def parse_pair(text: str, name: str = "--scan-shape") -> tuple[int, int]:
    """Parse ``"110x45"`` into ``(110, 45)``."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        a, b = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"{name} {text!r} is not ROWSxCOLS", hint="e.g. 110x45") from None
    if a < 1 or b < 1:
        raise InputError(f"{name} {text!r} must be positive")
    return a, b


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so cleanup runs as for Ctrl-C."""


def _raise_terminated(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    # Only the main thread may set handlers (the CLI can be called from a
    # worker thread in tests or notebooks); leave the handler as it was after.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stem2eds`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with _sigterm_as_interrupt():
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        if args.debug:
            raise
        # The library names settings; the user typed flags.
        from .options import name_flags

        flags = vars(args).get("setting_flags") or {}
        exc = InputError(name_flags(exc.message, flags), exc.path,
                         exc.hint and name_flags(exc.hint, flags))
        print(f"stem2eds {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)
        print(f"stem2eds {args.command}: {'terminated' if terminated else 'interrupted'}; "
              "no partial output was kept", file=sys.stderr)
        return 143 if terminated else 130
    except pickle.UnpicklingError as exc:
        # Last line of defence: every loader uses the restricted unpickler
        # (stem2eds.formats.checkpoint), so this is a file that tried to unpickle
        # something other than tensors. Its content did not run.
        if args.debug:
            raise
        print(f"stem2eds {args.command}: error: a file holds objects other than tensors "
              f"and plain data and was refused ({type(exc).__name__}); "
              "load only run folders you trust", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.debug:
            raise
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"stem2eds {args.command}: error: no space left on the device "
                  f"({exc.filename or 'output'}); nothing was written (free space "
                  "or choose another --out)", file=sys.stderr)
            return 2
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOTDIR):
            print(f"stem2eds {args.command}: error: {exc.filename}: "
                  f"{exc.strerror}", file=sys.stderr)
            return 2
        print(f"stem2eds {args.command}: internal error: {exc} "
              "(rerun with --debug for a traceback)", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - last resort, still one line
        if args.debug:
            raise
        msg = " ".join(str(exc).split())
        print(f"stem2eds {args.command}: internal error: {type(exc).__name__}: {msg} "
              "(rerun with --debug for a traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
