"""The Python snippets in the README and the docs import names that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _imports(page: Path) -> list[str]:
    out = []
    for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
        for node in ast.parse(block).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                text = ast.unparse(node)
                if "stem2eds" in text:
                    out.append(text)
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_snippet_imports_resolve(page):
    for statement in _imports(page):
        exec(statement, {})  # noqa: S102 - our own documentation
