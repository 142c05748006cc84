"""A raw scan's origins measured in a forked process while this one loads the model.

Before its first block, ``stem2eds predict`` both measures the scan's
origins (:func:`stem2eds.preprocess.pipeline.resolve_origins`: numpy in many
short steps) and loads numba's compiled kernel (Python work that holds the
GIL for half a second). In two threads of one process each waits for the
other's GIL at every step, so together they take as long as one after the
other. A child forked before either starts measures the origins on the
second core instead.

Forking is safe only in a process that runs nothing else yet: no other
thread, no thread pool of OpenCV or OpenMP that the child would inherit
without its threads. The command line is such a process when it forks
(before the model, numba or torch are loaded); :func:`fork_origins` is
called there only, on Linux, and checks that no other Python thread runs.
Whatever goes wrong in the child, the parent measures the origins itself,
as without it, and reports any error then. Ctrl-C and SIGTERM are the
parent's: the child ignores them and is killed when the parent stops (it
also dies with the parent, ``PR_SET_PDEATHSIG``), so an interrupted command
never measures the origins twice.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import threading

import numpy as np


class Cancelled(Exception):
    """The measurement was stopped (:meth:`ForkedOrigins.close`) while it was awaited."""


class ForkedOrigins:
    """The origins of a scan, being measured by a forked child.

    :meth:`result` (in the thread that needs the origins) and :meth:`close`
    (in the one that stops the prediction) may run at the same time; the
    pipe is closed and the child reaped by whichever ends last.

    Parameters
    ----------
    pid : int
        The child's process id.
    fd : int
        Read end of the pipe the child writes its result to.
    """

    def __init__(self, pid: int, fd: int):
        self._pid, self._fd = pid, fd
        self._lock = threading.Lock()
        self._reading = self._released = self._cancelled = self._clean_exit = False

    def result(self) -> tuple[np.ndarray, float] | None:
        """``(fitted origins (Rx', Ry', 2), beam radius)``, or None when the child failed.

        Blocks until the child is done (the read releases the GIL); once only.

        Raises
        ------
        Cancelled
            When :meth:`close` stopped the child meanwhile.
        """
        with self._lock:
            if self._cancelled:
                raise Cancelled
            if self._released or self._reading:
                return None
            self._reading = True
        chunks = []
        try:
            while chunk := os.read(self._fd, 1 << 20):
                chunks.append(chunk)
        finally:
            with self._lock:
                self._reading = False
                self._release()
                cancelled = self._cancelled
        if cancelled:
            raise Cancelled
        return _decode(b"".join(chunks)) if self._clean_exit else None

    def close(self) -> None:
        """Stop the child if it still runs (idempotent); a waiting :meth:`result` raises :class:`Cancelled`."""
        with self._lock:
            if self._released:
                return
            self._cancelled = True
            try:
                os.kill(self._pid, 9)  # harmless once it has exited: it is reaped below
            except ProcessLookupError:
                pass
            if not self._reading:
                self._release()

    def _release(self) -> None:
        """Close the pipe and reap the child (under the lock); note whether it exited cleanly."""
        if not self._released:
            self._released = True
            os.close(self._fd)
            try:
                _, status = os.waitpid(self._pid, 0)
                self._clean_exit = os.waitstatus_to_exitcode(status) == 0
            except ChildProcessError:  # SIGCHLD ignored (inherited): the kernel reaped it
                self._clean_exit = True  # then the data decide: all of it or nothing


def _decode(data: bytes) -> tuple[np.ndarray, float] | None:
    """What the child wrote (:func:`_measure_and_exit`), or None when it wrote nothing whole."""
    if len(data) < 8:
        return None
    (beam_radius,) = struct.unpack("<d", data[:8])
    try:
        fitted = np.load(io.BytesIO(data[8:]), allow_pickle=False)
    except (ValueError, EOFError, OSError):
        return None
    if fitted.ndim != 3 or fitted.shape[2] != 2 or fitted.dtype != np.float64:
        return None
    return fitted, float(beam_radius)


def fork_origins(scan, settings, batch: int) -> ForkedOrigins | None:
    """Fork a child that measures ``scan``'s origins, or None where forking is not safe.

    Parameters
    ----------
    scan : ScanBundle or scan-like
        A RAW scan, as :func:`~stem2eds.preprocess.pipeline.resolve_origins` takes it.
    settings : PreprocessSettings
    batch : int

    Returns
    -------
    ForkedOrigins or None
        None off Linux, or when another Python thread runs.
    """
    if not sys.platform.startswith("linux") or threading.active_count() != 1:
        return None
    import signal
    import warnings

    stop = {signal.SIGINT, signal.SIGTERM}
    parent = os.getpid()
    read_end, write_end = os.pipe()
    # Ctrl-C or SIGTERM between the fork and the handlers below would raise in
    # the child's copy of the command (which would then run on) or leave the
    # parent without a handle on its child: both are held until then.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking with threads: C libraries' idle
            # pools (OpenBLAS) are safe, and no Python thread runs (checked)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:  # no process to be had: measure here
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # the child: never returns
        try:
            os.close(read_end)
            _measure_and_exit(scan, settings, batch, write_end, parent, stop)
        finally:
            os._exit(1)
    os.close(write_end)
    forked = ForkedOrigins(pid, read_end)
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # runs what is pending
    except BaseException:
        forked.close()
        raise
    return forked


def _measure_and_exit(scan, settings, batch: int, fd: int, parent: int,
                      stop: set) -> None:  # pragma: no cover
    """In the child: write ``beam radius, fitted origins (.npy)`` to ``fd`` and exit.

    Ctrl-C and SIGTERM are the parent's to act on (it kills the child when it
    stops); the child dies with its parent in any case. ``os._exit`` skips the
    parent's exit handlers and finalizers, which the child inherited
    (temporary outputs, open files); coverage cannot follow.
    """
    status = 1
    try:
        import ctypes
        import signal

        for number in stop:
            signal.signal(number, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            return
        from .pipeline import resolve_origins

        fitted, beam_radius = resolve_origins(scan, settings, batch)
        out = io.BytesIO()
        out.write(struct.pack("<d", float(beam_radius)))
        np.save(out, np.ascontiguousarray(fitted, dtype=np.float64), allow_pickle=False)
        view = memoryview(out.getbuffer())
        while view:
            view = view[os.write(fd, view):]
        status = 0
    except BaseException:  # noqa: BLE001 - the parent measures again and reports
        pass
    finally:
        os._exit(status)
