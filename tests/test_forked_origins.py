"""Origins measured by a forked child while ``stem2eds predict`` loads its model.

Forking is only safe in a process that runs nothing else, so the child is
exercised in fresh Python processes here (the test process has threads and
thread pools), and the command line's prediction is compared with the
in-process one, which does not fork.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from builders import assert_command_predicts_as_in_process, make_raw_scan

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the child is forked on Linux only")


def _fresh_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


_CHILD_EQUALS_HERE = """
    import sys, threading
    import numpy as np
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.preprocess.forked import fork_origins
    from stem2eds.preprocess.pipeline import resolve_origins
    from stem2eds.preprocess.settings import PreprocessSettings

    settings = PreprocessSettings(origin_sample=int(sys.argv[2]), crop=eval(sys.argv[3]))
    with open_bundle(sys.argv[1]) as scan:
        forked = fork_origins(scan, settings, 64)
        assert forked is not None
        got = forked.result()
        if sys.argv[3] != "None" and got is None:  # a crop outside the scan: the child failed
            print("child failed")
            sys.exit(0)
        fitted, radius = resolve_origins(scan, settings, 64)
        assert got[0].shape == fitted.shape and np.array_equal(got[0], fitted)
        assert got[1] == radius
        assert forked.result() is None  # consumed once
        # with another thread running, no child is forked
        t = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
        t.start()
        assert fork_origins(scan, settings, 64) is None
    print("equal")
"""


@pytest.mark.parametrize("sample", [1024, 30])  # every position; a sub-grid
def test_child_measures_the_same_origins(tmp_path, sample):
    scan = make_raw_scan(tmp_path / "scan.h5", seed=4)
    done = _fresh_python(_CHILD_EQUALS_HERE, scan, sample, "None")
    assert done.returncode == 0 and "equal" in done.stdout, done.stderr


def test_a_failing_child_leaves_the_measurement_to_the_parent(tmp_path):
    scan = make_raw_scan(tmp_path / "scan.h5", seed=4)
    done = _fresh_python(_CHILD_EQUALS_HERE, scan, 1024, "(0, 99, 0, 5)")
    assert done.returncode == 0 and "child failed" in done.stdout, done.stderr


def test_closing_stops_the_child_and_a_waiting_reader():
    """close() while another thread waits for the result: the child is killed and reaped."""
    done = _fresh_python("""
        import os, threading, time
        from stem2eds.preprocess.forked import Cancelled, ForkedOrigins

        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # a child that would take a minute
            time.sleep(60)
            os._exit(0)
        os.close(write_end)
        forked = ForkedOrigins(pid, read_end)
        seen = []

        def wait():
            try:
                seen.append(forked.result())
            except Cancelled:
                seen.append("cancelled")

        reader = threading.Thread(target=wait)
        reader.start()
        time.sleep(0.2)
        start = time.monotonic()
        forked.close()
        reader.join(10)
        forked.close()  # idempotent
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            seen.append("reaped")
        print(seen, time.monotonic() - start < 5)
        try:
            forked.result()
        except Cancelled:
            print("cancelled again")
    """)
    assert done.returncode == 0, done.stderr
    assert "['cancelled', 'reaped'] True" in done.stdout and "cancelled again" in done.stdout, \
        done.stdout


def test_command_line_prediction_equals_the_in_process_one(small_run, run_cli, tmp_path):
    """``python -m stem2eds predict`` forks the origin measurement; ``main(argv)`` does not."""
    run, scan = small_run
    assert_command_predicts_as_in_process(run_cli, run, scan, tmp_path)
    assert not list(Path(tmp_path).glob("*.tmp*"))


_SLOW_CHILD = """
    import os, signal, sys, time
    import numpy as np
    import stem2eds.preprocess.pipeline as pipeline
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.preprocess.forked import fork_origins
    from stem2eds.preprocess.settings import PreprocessSettings

    measure = pipeline.resolve_origins

    def slow(*args, **kwargs):  # the child inherits this: a measurement taking a second
        time.sleep(1.0)
        return measure(*args, **kwargs)

    pipeline.resolve_origins = slow
    with open_bundle(sys.argv[1]) as scan:
        forked = fork_origins(scan, PreprocessSettings(), 64)
        if sys.argv[2] == "orphan":
            print(forked._pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        os.kill(forked._pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        os.kill(forked._pid, signal.SIGTERM)
        time.sleep(0.2)
        print("alive", os.waitpid(forked._pid, os.WNOHANG) == (0, 0))
        got = forked.result()
        print("equal", np.array_equal(got[0], measure(scan, PreprocessSettings(), 64)[0]))
"""


def test_ctrl_c_and_sigterm_are_the_parents(tmp_path):
    """The child ignores them (the parent stops it), so an interrupted command never measures twice."""
    scan = make_raw_scan(tmp_path / "scan.h5", seed=4)
    done = _fresh_python(_SLOW_CHILD, scan, "signals")
    assert done.returncode == 0, done.stderr
    assert "alive True" in done.stdout and "equal True" in done.stdout, done.stdout


def test_the_child_dies_with_its_parent(tmp_path):
    import os
    import time

    scan = make_raw_scan(tmp_path / "scan.h5", seed=4)
    done = _fresh_python(_SLOW_CHILD, scan, "orphan")
    assert done.returncode == -9, done.stderr
    child = int(done.stdout.split()[0])
    for _ in range(50):  # PR_SET_PDEATHSIG: killed at once, reaped by init
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the child {child} outlived its parent")


def test_command_forks_and_survives_an_ignored_sigchld(small_run, tmp_path):
    """As the installed command, predict forks; a launcher that ignores SIGCHLD changes nothing."""
    import signal

    run, scan = small_run
    done = _fresh_python("""
        import signal, sys
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel then reaps children itself
        import stem2eds.preprocess.forked as forked
        made = []
        fork = forked.fork_origins

        def counted(*args):
            made.append(fork(*args))
            return made[-1]

        forked.fork_origins = counted
        from stem2eds.cli import main
        sys.argv = ["stem2eds", "predict", *sys.argv[1:]]
        code = main()
        print("forked", len(made) == 1 and made[0] is not None)
        sys.exit(code)
    """, run, scan, "--out", tmp_path / "p.h5", "-q")
    assert done.returncode == 0, done.stderr
    assert "forked True" in done.stdout, done.stdout
    assert signal.getsignal(signal.SIGCHLD) is not signal.SIG_IGN  # (only in the child process)
