"""Write reference/cli.md: the ``--help`` text of ``stem2eds`` and of every subcommand.

Run by mkdocs-gen-files at build time, so the page always shows the parser the
checkout defines. The parser comes from ``stem2eds.cli.build_parser()`` of the
checkout's ``src/`` (put first on ``sys.path``). Any failure raises and fails
the build: an import error, or a subcommand in ``stem2eds.cli.COMMANDS`` that
the parser does not have (``build_parser`` skips modules that do not exist yet,
which must not silently shorten this page).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
os.environ["COLUMNS"] = "100"  # argparse wraps help text to $COLUMNS; make it stable

try:
    from stem2eds.cli import COMMANDS, build_parser
except Exception as exc:  # noqa: BLE001 - re-raised with context
    raise RuntimeError(f"docs: cannot import stem2eds.cli from {ROOT / 'src'}: {exc!r}") from exc

import stem2eds  # noqa: E402 - already imported above; checked: the checkout's, not an installed copy

if not Path(stem2eds.__file__).resolve().is_relative_to(ROOT / "src"):
    raise RuntimeError(f"docs: imported stem2eds from {stem2eds.__file__}, not from {ROOT / 'src'}")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise RuntimeError("docs: stem2eds.cli.build_parser() has no subcommands")


def main() -> None:
    parser = build_parser()
    subs = _subparsers(parser)
    missing = [name for name in COMMANDS if name not in subs]
    if missing:
        raise RuntimeError(f"docs: build_parser() lacks the subcommand(s) {missing}")
    order = list(COMMANDS) + sorted(set(subs) - set(COMMANDS))

    out = ["# Command line", "",
           "Generated at build time from `stem2eds.cli.build_parser()`: each block is "
           "exactly what `stem2eds ... --help` prints. Exit status of every command: "
           "see [Errors and exit codes](../errors.md).", ""]
    out += ["## `stem2eds`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name in order:
        help_text = subs[name].format_help().rstrip()
        if not help_text:
            raise RuntimeError(f"docs: empty --help for stem2eds {name}")
        out += [f"## `stem2eds {name}`", "", "```text", help_text, "```", ""]
    with mkdocs_gen_files.open("reference/cli.md", "w") as fh:
        fh.write("\n".join(out))
    mkdocs_gen_files.set_edit_path("reference/cli.md", "scripts/gen_cli.py")


main()
