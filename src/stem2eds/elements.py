"""Chemical element symbols: the one place that checks them.

Every element name that comes from a user or a file (flags, bundle
attributes, ``run.json``, spectrum metadata) passes :func:`check_element`
before it becomes a key, a label or a path component.
"""

from __future__ import annotations

from typing import Sequence

from .errors import InputError

#: Element symbols accepted in bundles (H..U), to catch typos such as "Sn" vs "Sb" early.
ELEMENT_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni "
    "Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I "
    "Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt "
    "Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U"
).split()


def atomic_number(symbol: str) -> int:
    """Atomic number Z of an element symbol, e.g. ``atomic_number("Ge") == 32``."""
    return ELEMENT_SYMBOLS.index(check_element(symbol)) + 1


def check_element(symbol: str, source=None) -> str:
    """Return ``symbol`` normalised (``"ge"`` -> ``"Ge"``) or raise InputError."""
    norm = symbol.strip().capitalize()
    if norm not in ELEMENT_SYMBOLS:
        raise InputError(f"unknown element symbol {symbol!r}", path=source,
                         hint="use chemical symbols such as O, Si, Ge, Sb, Te")
    return norm


def element_list(text: str | Sequence[str] | None) -> list[str] | None:
    """Parse ``"O,Si,Ge"`` (or a list) into checked element symbols."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    symbols = [check_element(e) for e in items if e.strip()]
    dupes = sorted({e for e in symbols if symbols.count(e) > 1})
    if dupes:
        raise InputError(f"element {', '.join(dupes)} listed more than once in "
                         f"{','.join(symbols)}", hint="give each element once")
    return symbols
