"""``stem2eds demo``: the main job on a simulated series, ending in reports."""

from __future__ import annotations

from ..cli import add_command


def register(subparsers) -> None:
    p = add_command(
        subparsers, "demo", help="simulate a scan series, run the paper's experiments, report",
        description="""
            The main job with no data to download: simulate a six-scan Ge-Sb-Te series
            (4D-STEM, EDS, HAADF), then run the random 80:20 split (first scan),
            extrapolation (train on the first scan, predict the others) and
            interpolation (train on the first and last, predict those between), each
            with the ridge baseline and a linear calibration. Writes one
            self-contained report per experiment and DIR/index.html linking them, and
            prints the index's path. Re-running reuses what is finished. Takes a few
            minutes on two CPU cores with the defaults.""",
        example="stem2eds demo --out stem2eds-demo")
    p.add_argument("--out", default="stem2eds-demo", metavar="DIR", help="output folder")
    from ..experiments.demo import DemoSettings
    from . import parse_pair
    from .options import Option, add_settings_options

    add_settings_options(p, DemoSettings, [
        Option("max_epochs", "--epochs"),
        Option("scan_shape", metavar="ROWSxCOLS", type=lambda t: parse_pair(t, "scan_shape")),
        "seed", "model"])
    p.set_defaults(func=run)


def run(args) -> int:
    from ..experiments.demo import DemoSettings, run_demo
    from .options import given

    settings = DemoSettings(**given(args, DemoSettings))
    print(run_demo(args.out, settings, quiet=args.quiet))
    return 0
