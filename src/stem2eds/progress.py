"""Progress reporting: a rich bar in a terminal, plain lines elsewhere (CI, logs)."""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def interactive() -> bool:
    """True when stderr is a terminal and we are not in CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def track(items: Iterable[T], total: int | None = None, description: str = "",
          quiet: bool = False) -> Iterator[T]:
    """Iterate over ``items`` while showing progress on stderr.

    In a terminal a rich progress bar is drawn; otherwise one plain line is
    printed at most every 10 % (and at the end), so CI logs stay short.

    Parameters
    ----------
    items : iterable
    total : int, optional
        Number of items, when ``len(items)`` is not available.
    description : str
        What is being done, e.g. ``"converting patterns"``.
    quiet : bool
        Show nothing.
    """
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if quiet:
        yield from items
        return
    if interactive():
        from rich.progress import track as rich_track
        yield from rich_track(items, total=total, description=description,
                              console=None, transient=True)
        return
    start = time.perf_counter()
    next_mark = 0.1
    done = 0
    for item in items:
        yield item
        done += 1
        if total and (done / total >= next_mark or done == total):
            elapsed = time.perf_counter() - start
            print(f"{description}: {done}/{total} ({elapsed:.1f} s)", file=sys.stderr)
            while next_mark <= done / total:
                next_mark += 0.1
