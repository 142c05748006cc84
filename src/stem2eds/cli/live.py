"""``stem2eds live``: predict EDS maps while a scan is acquired (libertem-live)."""

from __future__ import annotations

import sys

from ..cli import add_command


def register(subparsers) -> None:
    p = add_command(
        subparsers, "live", help="predict EDS maps during an acquisition (LiberTEM-live)",
        description="""
            Connect to a Merlin or Dectris detector with LiberTEM-live and predict the EDS
            maps (and HAADF) of a trained run while the scan is acquired. A terminal view
            shows the progress, frames per second and each element's mean fraction
            (plain lines when stderr is not a terminal). DIR/prediction.h5 is rewritten
            atomically every --interval seconds with attributes complete=False and
            frames_done (positions not yet acquired are NaN). While acquiring, frames
            are centred on their own measured origins; with --final exact (default) the
            raw frames are recorded to DIR/frames.npy (disk, the raw scan's size) and
            the final maps are recomputed from them with the run's fitted origin model,
            so they equal 'stem2eds predict' on the same frames. Prints the file's path.
            """,
        example="""
            stem2eds live runs/0033 --detector merlin --host 10.0.0.5 --scan-shape 256x256 --out live_0042
            """)
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by stem2eds train")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    from . import parse_pair
    from ..libertem.settings import LiveSettings
    from .options import Option, add_settings_options

    add_settings_options(p, LiveSettings, [
        "detector", "host", "port", "api_port",
        Option("scan_shape", metavar="RXxRY", type=lambda t: parse_pair(t, "scan_shape")),
        "interval", "frames_per_partition", "final"])
    p.add_argument("--keep-frames", action="store_true",
                   help="keep DIR/frames.npy (the recorded raw frames) with --final exact")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where the model runs")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..libertem.live import predict_live
    from ..libertem.settings import LiveSettings
    from .options import given

    settings = LiveSettings(**given(args, LiveSettings), keep_frames=args.keep_frames)
    if not args.quiet:
        print(f"stem2eds live: waiting for the {settings.detector} detector at "
              f"{settings.host}:{settings.port or 'its default port'} (Ctrl-C stops)",
              file=sys.stderr, flush=True)
    view = None if args.quiet else LiveView()
    try:
        path = predict_live(args.run_dir, args.out, settings, device=args.device,
                            on_update=None if view is None else view.update)
    except Exception as exc:
        # LiberTEM-live's receiver (Rust) wraps a Ctrl-C or SIGTERM that
        # arrived while it waited into its own error; report it as one
        if "KeyboardInterrupt" in str(exc) or "_Terminated" in str(exc):
            return _interrupted(args.out, 143 if "_Terminated" in str(exc) else 130)
        raise
    except KeyboardInterrupt as exc:
        from . import _Terminated

        return _interrupted(args.out, 143 if isinstance(exc, _Terminated) else 130)
    finally:
        if view is not None:
            view.close()
    print(path)
    return 0


def _interrupted(out, code: int) -> int:
    """One line on stderr: what was kept (the last partial maps) or that nothing was."""
    from pathlib import Path

    from ..libertem.settings import PREDICTION

    what = "terminated" if code == 143 else "interrupted"
    partial = Path(out) / PREDICTION
    kept = (f"the last partial maps (complete=False) are in {partial}" if partial.exists()
            else "no maps were written")
    print(f"stem2eds live: {what}; {kept}", file=sys.stderr)
    return code


class LiveView:
    """A rich table that updates in place in a terminal; plain lines at most every 5 s otherwise."""

    def __init__(self):
        from ..progress import interactive

        self._live = None
        self._last = -1e9
        if interactive():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)
            self._live.start()

    def update(self, state) -> None:
        import time

        if self._live is not None:
            self._live.update(self._table(state))
            return
        now = time.monotonic()
        if now - self._last >= 5.0 or state.complete or state.frames_done == state.frames_total:
            self._last = now
            means = " ".join(f"{el}={v:.3f}" for el, v in state.means.items())
            what = "final maps" if state.complete else "acquiring"
            print(f"stem2eds live: {what}: {state.frames_done}/{state.frames_total} frames, "
                  f"{state.fps:.0f} frames/s, mean {means}", file=sys.stderr, flush=True)

    @staticmethod
    def _table(state):
        from rich.table import Table

        title = ("final maps (fitted origins)" if state.complete else
                 f"acquiring: {state.frames_done}/{state.frames_total} frames, "
                 f"{state.fps:.0f} frames/s")
        table = Table(title=title)
        table.add_column("element")
        table.add_column("mean atomic fraction", justify="right")
        for el, value in state.means.items():
            table.add_row(el, f"{value:.3f}")
        return table

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
