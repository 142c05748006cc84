"""Griffe extension: render Sphinx cross-reference roles in docstrings as inline code.

The docstrings are numpydoc and use Sphinx roles such as ``:func:`find_origins```
and ``:class:`~stem2eds.bundle.ScanBundle```. mkdocstrings renders docstrings as
Markdown, where these would show up as ":func: find_origins". This extension
rewrites each role to an inline code span (``~`` keeps only the last dotted
part, as in Sphinx) when griffe loads the source; the source files are not
touched. Loaded by mkdocs.yml (mkdocstrings python handler, ``extensions``).
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    tilde, target = match.groups()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class RstRoles(griffe.Extension):
    """Replace ``:role:`target``` by ```target``` in every docstring."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: ARG002
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
