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
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum training epochs of the trained models (default: the demo's)")
    p.add_argument("--scan-shape", default=None, metavar="RxRy",
                   help="probe positions per simulated scan, e.g. 40x30")
    p.add_argument("--seed", type=int, default=None, help="seed of simulation and training")
    p.add_argument("--model", default=None, help="registered model name")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import replace

    from . import parse_pair
    from ..experiments.demo import DemoSettings, run_demo
    from ..errors import InputError

    settings = DemoSettings()
    changes = {}
    if args.epochs is not None:
        if args.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {args.epochs}")
        changes["max_epochs"] = args.epochs
    if args.scan_shape:
        changes["scan_shape"] = parse_pair(args.scan_shape, "--scan-shape")
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.model:
        changes["model"] = args.model
    print(run_demo(args.out, replace(settings, **changes), quiet=args.quiet))
    return 0
