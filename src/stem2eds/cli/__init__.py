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
import logging
import pickle
import signal
import sys
import textwrap
import threading

from ..errors import InputError

#: Subcommands, in the order of the pipeline.
COMMANDS = ("convert", "simulate", "preprocess", "train", "predict",
            "experiment", "report", "demo", "live")


class _Formatter(argparse.RawDescriptionHelpFormatter,
                 argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        # "(default: None)" / "(default: False)" say nothing; show real defaults only.
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_command(subparsers, name: str, *, help: str, description: str,
                example: str) -> argparse.ArgumentParser:
    """Add a subcommand parser whose ``--help`` ends with an example.

    Every command gets the same output options here (``--quiet``,
    ``--verbose``; see :func:`stem2eds.cli.options.add_output_options`).
    """
    from .options import add_output_options

    parser = subparsers.add_parser(
        name, help=help, formatter_class=_Formatter,
        description=textwrap.dedent(description).strip(),
        epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "))
    add_output_options(parser)
    return parser


#: Distributions whose versions ``stem2eds --version`` prints (when installed).
VERSION_PACKAGES = ("torch", "numpy", "h5py", "scipy", "hyperspy", "rosettasciio", "exspy",
                    "lightning", "dask", "libertem", "libertem-live", "abtem")


def versions() -> list[tuple[str, str]]:
    """(name, version) of stem2eds, Python and :data:`VERSION_PACKAGES`.

    Read from the installed distributions' metadata (:mod:`importlib.metadata`),
    so nothing heavy is imported; a package that is not installed reads
    ``not installed``.
    """
    from importlib import metadata

    from .. import __version__

    out = [("stem2eds", str(__version__)), ("python", sys.version.split()[0])]
    for name in VERSION_PACKAGES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out


class _VersionAction(argparse.Action):
    """``--version``: stem2eds and the versions of the libraries that matter, then exit 0."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        found = versions()
        width = max(len(name) for name, _ in found)
        sys.stdout.write("".join(f"{name:<{width}}  {version}\n" for name, version in found))
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``stem2eds`` parser with every subcommand, or with ``only`` that one.

    Registering a subcommand imports what its options are generated from
    (e.g. the simulator's settings), so :func:`main` builds
    just the command it runs.
    """
    parser = _Parser(
        prog="stem2eds", formatter_class=_Formatter,
        description="Predict EDS composition maps and HAADF from 4D-STEM scans.",
        epilog="example:\n  stem2eds demo --out demo_out\n\n"
               "Run 'stem2eds COMMAND --help' for the options of each command. Every "
               "command takes\n-q/--quiet (no progress) and -v/--verbose (library "
               "warnings too). Shell completion\n(bash, zsh), with argcomplete installed: "
               "eval \"$(register-python-argcomplete stem2eds)\"")
    parser.add_argument("--version", action=_VersionAction,
                        help="show the versions of stem2eds, Python and the libraries it "
                             "uses, and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def _complete(parser: argparse.ArgumentParser) -> None:
    """Shell completion with argcomplete, when the shell asks for it and it is installed.

    ``register-python-argcomplete stem2eds`` (bash/zsh) makes the shell call
    the command with ``_ARGCOMPLETE`` set; argcomplete then prints the
    completions and exits. Otherwise nothing is imported.
    """
    import os

    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


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
    hook = sys.unraisablehook
    sys.unraisablehook = _defer_interrupts(hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = hook


def _defer_interrupts(hook):
    """An unraisable-exception hook that keeps Ctrl-C and SIGTERM for later.

    Raised while a C library calls back into Python (numba's compiler does,
    as it loads), a KeyboardInterrupt can only be printed, as "Exception
    ignored" with a traceback, and the command would run on. It is kept
    instead (:func:`stem2eds.progress.defer_stop`) and raised at the next
    block of the command's progress loop, or reported when the command ends.
    """
    from ..progress import defer_stop

    def keep(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            defer_stop(unraisable.exc_value)
        else:
            hook(unraisable)

    return keep


def _named_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` runs: its first argument that is not an option, if a command."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stem2eds`` command."""
    import os

    argv_given = argv
    argv = sys.argv[1:] if argv is None else list(argv)
    # shell completion needs every command; otherwise only the one named is built
    parser = build_parser(None if "_ARGCOMPLETE" in os.environ else _named_command(argv))
    _complete(parser)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # run as the command (not main(argv) from Python): nothing else runs in this
    # process, which a command may use (stem2eds predict forks a child)
    args.own_process = argv_given is None
    show = bool(getattr(args, "verbose", False) or args.debug)
    try:
        with _sigterm_as_interrupt(), _library_logs(args.command, show,
                                                    bool(getattr(args, "quiet", False))):
            return _run_command(args)
    finally:
        if argv_given is None:  # the command line: the process ends next
            _skip_final_collection()


def _skip_final_collection() -> None:
    """Spare the interpreter's last garbage collections when the process is about to end.

    After numba (or torch) has loaded, the collections Python runs while it
    shuts down walk hundreds of thousands of their objects: 0.2-0.3 s of a
    ``stem2eds predict`` that takes 1-2 s. Frozen objects are left to the
    operating system, which frees the whole process anyway; files are closed
    and flushed by then (every output is written atomically before the
    command returns) and ``atexit`` handlers still run.
    """
    import gc

    gc.freeze()


#: Loggers of the libraries that read microscope files. RosettaSciIO and
#: HyperSpy attach their own handler writing to *stdout* whenever their log
#: level is set (at import); the command's stdout is its result, so their
#: records are routed to stderr here.
LIBRARY_LOGGERS = ("rsciio", "hyperspy", "exspy")
_LIBRARY_NAMES = {"rsciio": "RosettaSciIO", "hyperspy": "HyperSpy", "exspy": "exspy"}


class _LibraryLog(logging.Handler):
    """Library records on stderr: errors always, warnings with --verbose/--debug.

    Warnings not shown (and HyperSpy's request to report a file it could not
    read, which the command's own error line explains) are counted, for one
    summary line at the end.
    """

    def __init__(self, command: str, show_warnings: bool):
        super().__init__(logging.WARNING)
        self.command, self.show_warnings, self.hidden = command, show_warnings, 0

    def emit(self, record: logging.LogRecord) -> None:
        # HyperSpy's "please report this error" comes before the exception
        # that the command explains in its own error line.
        routine = record.levelno < logging.ERROR or "please report" in record.getMessage()
        if routine and not self.show_warnings:
            self.hidden += 1
            return
        library = _LIBRARY_NAMES.get(record.name.split(".")[0], record.name)
        message = " ".join(record.getMessage().split())
        print(f"stem2eds {self.command}: {library} {record.levelname.lower()}: {message}",
              file=sys.stderr)


@contextlib.contextmanager
def _library_logs(command: str, show_warnings: bool, quiet: bool):
    """Route the file libraries' log records to stderr (see :class:`_LibraryLog`)."""
    handler = _LibraryLog(command, show_warnings)

    def to_stderr(*names):  # replaces the libraries' initialize_logger (stdout handler)
        logger = logging.getLogger(*names)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        return logger

    patched = []
    for module_name in ("rsciio._logger", "hyperspy.logger"):
        try:  # light modules (~0.1 s); the libraries call them again when imported
            module = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 - a library missing or broken: nothing to route
            continue
        patched.append((module, module.initialize_logger))
        module.initialize_logger = to_stderr
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        to_stderr(name)
        logger.propagate = False
    try:
        yield handler
    finally:
        for module, original in patched:
            module.initialize_logger = original
        for logger, handlers, propagate in saved:
            logger.removeHandler(handler)
            for old in handlers:
                logger.addHandler(old)
            logger.propagate = propagate
        if handler.hidden and not quiet:
            print(f"stem2eds {command}: {handler.hidden} warning(s) from the file-reading "
                  "libraries not shown (--debug shows them)", file=sys.stderr)


def _run_command(args: argparse.Namespace) -> int:
    from ..progress import stop_pending

    stop_pending()  # none left from an earlier command of this process
    try:
        code = int(args.func(args) or 0)
        late = stop_pending()  # arrived in a C callback and not raised since
        if late is None:
            return code
        terminated = isinstance(late, _Terminated)
        print(f"stem2eds {args.command}: {'terminated' if terminated else 'interrupted'} "
              "after its work was done (its output is complete)", file=sys.stderr)
        return 143 if terminated else 130
    except InputError as exc:
        if args.debug:
            raise
        # The library names settings; the user typed flags.
        from .options import name_flags

        flags = vars(args).get("setting_flags") or {}
        if not exc.keys_of_file:
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
