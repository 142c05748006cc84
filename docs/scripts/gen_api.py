"""Write the Python API reference: one page per public module, plus a SUMMARY.md nav.

Run by mkdocs-gen-files at build time. The modules are found by walking
``src/stem2eds/**.py`` on disk (no import), so moving modules needs no change
here. Skipped: ``__main__.py``, private modules and packages (a path part that
starts with ``_``, other than ``__init__.py``) and the ``cli`` package (its
reference is the ``--help`` text, see gen_cli.py). Each page holds one
``::: stem2eds.x.y`` directive that mkdocstrings renders from the numpydoc
docstrings (options in mkdocs.yml).
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = SRC / "stem2eds"
SKIP_PACKAGES = {("stem2eds", "cli")}


def modules() -> list[tuple[str, ...]]:
    """Dotted-name parts of every documented module, in sorted order."""
    if not (PACKAGE / "__init__.py").is_file():
        raise RuntimeError(f"docs: no package at {PACKAGE}")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        if any(parts[:len(skip)] == skip for skip in SKIP_PACKAGES):
            continue
        # A module inside a folder that is not a package cannot be imported as stem2eds.x.y.
        if not all((SRC.joinpath(*parts[:i]) / "__init__.py").is_file()
                   for i in range(1, len(parts))):
            continue
        found.append(parts)
    if len(found) < 2:
        raise RuntimeError(f"docs: found only {found} under {PACKAGE}")
    return found


def main() -> None:
    nav = mkdocs_gen_files.Nav()
    for parts in modules():
        doc = Path("reference", "api", *parts).with_suffix(".md")
        if (SRC.joinpath(*parts) / "__init__.py").is_file():
            doc = Path("reference", "api", *parts, "index.md")
            source = Path(*parts, "__init__.py")
        else:
            source = Path(*parts).with_suffix(".py")
        nav[parts] = doc.relative_to("reference/api").as_posix()
        with mkdocs_gen_files.open(doc, "w") as fh:
            fh.write(f"::: {'.'.join(parts)}\n")
        mkdocs_gen_files.set_edit_path(doc, Path("..", "src", source))
    with mkdocs_gen_files.open("reference/api/SUMMARY.md", "w") as fh:
        fh.writelines(nav.build_literate_nav())


main()
