"""Packages whose public names load from their submodules on first use.

``import stem2eds`` and ``stem2eds --help`` should not import h5py, torch or
Lightning (seconds); a package lists where each public name lives and
:func:`lazy_exports` gives it the module-level ``__getattr__`` and
``__dir__`` that import the submodule when a name is first used (PEP 562).
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Callable, Mapping


def lazy_exports(package: str, where: Mapping[str, str]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``; ``where`` maps a name to its submodule.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    where : mapping of str to str
        Public name -> submodule path relative to the package (``"formats.bundle"``).
    """
    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{where[name]}", package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
