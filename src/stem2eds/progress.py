"""Progress reporting: a rich bar in a terminal, plain lines elsewhere (CI, logs)."""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

#: Ctrl-C or SIGTERM that arrived while a C library was calling back into
#: Python (numba's compiler, for one), where Python can only print it and
#: carry on: kept here and raised at the next item of a progress loop
#: (:func:`defer_stop`, :func:`check_stop`).
_deferred: list[BaseException] = []


def defer_stop(exc: BaseException) -> None:
    """Keep a KeyboardInterrupt that could not be raised where it arrived."""
    _deferred.append(exc)


def stop_pending() -> BaseException | None:
    """The deferred KeyboardInterrupt not raised yet (and forget it), or None."""
    exc = _deferred.pop() if _deferred else None
    _deferred.clear()
    return exc


def check_stop() -> None:
    """Raise a deferred KeyboardInterrupt (:func:`defer_stop`), if any."""
    if _deferred:
        raise stop_pending()


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
        for item in items:
            check_stop()
            yield item
        return
    if interactive():
        from rich.progress import track as rich_track
        for item in rich_track(items, total=total, description=description,
                               console=None, transient=True):
            check_stop()
            yield item
        return
    start = time.perf_counter()
    next_mark = 0.1
    done = 0
    for item in items:
        check_stop()
        yield item
        done += 1
        if total and (done / total >= next_mark or done == total):
            elapsed = time.perf_counter() - start
            print(f"{description}: {done}/{total} ({elapsed:.1f} s)", file=sys.stderr)
            while next_mark <= done / total:
                next_mark += 0.1


def track_blocks(blocks: Iterable[tuple[int, T]], total: int, description: str = "",
                 quiet: bool = False) -> Iterator[tuple[int, T]]:
    """Iterate over ``(start, block)`` pairs, counting progress in items, not blocks.

    For streams whose blocks vary in size (whole scan rows, the tail of a
    scan): progress advances by ``len(block)``, out of ``total`` items
    (e.g. probe positions). Same output as :func:`track`: a rich bar in a
    terminal, a plain line at most every 10 % otherwise, nothing when ``quiet``.

    Parameters
    ----------
    blocks : iterable of (int, sized)
    total : int
        Number of items in all blocks together.
    description : str
    quiet : bool
    """
    if quiet or total <= 0:
        for item in blocks:
            check_stop()
            yield item
        return
    if interactive():
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in blocks:
                check_stop()
                yield item
                bar.advance(task, len(item[1]))  # type: ignore[arg-type]
        return
    start, done, next_mark = time.perf_counter(), 0, 0.1
    for item in blocks:
        check_stop()
        yield item
        done += len(item[1])  # type: ignore[arg-type]
        if done / total >= next_mark or done >= total:
            print(f"{description}: {done}/{total} ({time.perf_counter() - start:.1f} s)",
                  file=sys.stderr)
            while next_mark <= done / total:
                next_mark += 0.1
