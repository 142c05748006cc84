"""``stem2eds experiment``: train, predict and score a cross-scan strategy."""

from __future__ import annotations

from ..cli import add_command
from ..experiments import STRATEGIES


def register(subparsers) -> None:
    p = add_command(
        subparsers, "experiment", help="run a cross-scan experiment and write its report",
        description="""
            Reproduce the paper's evaluation on a scan series (bundles in series order):
              random         one scan (or several pooled), 80:20 split of probe positions;
                             the validation positions are the test set
              extrapolate    train on the first scan, predict all others
              interpolate    train on the first and last, predict those between
              leave-one-out  each scan predicted by a model trained on all others
              sparse         the LAST bundle predicted from its 4D-STEM scan plus EDS
                             measured at --fraction percent of its positions (an ensemble
                             of --ensemble models trained on the others, combined with
                             the sparse EDS by universal kriging), against interpolating
                             the sparse EDS alone;
                             also ensemble uncertainty (eds_std) and an anomaly map
            Every training run is repeated with the 'ridge' baseline on the same data.
            A per-element calibration (fitted on the training positions only) is applied
            after training; raw and calibrated scores are both reported. Writes
            RUN_DIR/metrics.json, predictions/, targets/, figures/ and report.html.
            Re-running into the same RUN_DIR reuses finished training runs.""",
        example="stem2eds experiment --strategy extrapolate --out runs/extra scan_*.h5")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="raw scan bundles, in series order")
    p.add_argument("--strategy", required=True, choices=STRATEGIES)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="output folder")
    p.add_argument("--config", metavar="FILE.toml", help="training settings (TrainConfig TOML)")
    from ..analysis.sparse_eds import FRACTIONS, PATTERNS
    from ..experiments.sparse import ENSEMBLE
    from ..train.config import TrainConfig
    from .options import Option, add_settings_options

    add_settings_options(p, TrainConfig, ["model", Option("max_epochs", "--epochs"),
                                          "targets", "split"])
    p.add_argument("--calibration", default="linear", choices=("linear", "poly", "isotonic"),
                   help="per-element correction fitted after training")
    add_settings_options(p, TrainConfig, ["seed"])
    p.add_argument("--no-figures", action="store_true",
                   help="skip drawing figures (faster; report.html has the tables only)")
    percents = ",".join(f"{100 * f:g}" for f in FRACTIONS)
    p.add_argument("--fraction", metavar="PERCENT[,PERCENT...]",
                   help=f"sparse: percent of positions with EDS (default {percents})")
    p.add_argument("--pattern", choices=PATTERNS,
                   help=f"sparse: where the EDS positions lie (default {PATTERNS[0]})")
    p.add_argument("--ensemble", type=int, metavar="N",
                   help=f"sparse: models in the deep ensemble (default {ENSEMBLE}; "
                        "1 = no uncertainty)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.config import TrainConfig
    from ..errors import InputError
    from ..experiments import run_experiment

    from .options import given

    config = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    config = config.replace(**given(args, TrainConfig))
    sparse = None
    given = [f for f in ("fraction", "pattern", "ensemble") if getattr(args, f) is not None]
    if args.strategy == "sparse":
        sparse = _sparse_settings(args)
    elif given:
        raise InputError(f"--{given[0]} applies to --strategy sparse only")
    run_dir = run_experiment(args.bundles, args.out, args.strategy, config,
                             calibration=args.calibration, quiet=args.quiet,
                             figures=not args.no_figures, sparse=sparse)
    print(run_dir / "report.html")
    return 0


def _sparse_settings(args) -> dict:
    """The sparse workflow's settings from the flags (percents -> fractions), checked here
    so that errors name the flags."""
    from ..errors import InputError

    from ..analysis.sparse_eds import PATTERNS
    from ..experiments.sparse import ENSEMBLE

    sparse = {"pattern": args.pattern or PATTERNS[0],
              "ensemble": ENSEMBLE if args.ensemble is None else args.ensemble}
    if sparse["ensemble"] < 1:
        raise InputError(f"--ensemble must be at least 1, got {sparse['ensemble']}")
    if args.fraction is not None:
        try:
            percents = [float(v) for v in args.fraction.split(",")]
        except ValueError:
            raise InputError(f"--fraction {args.fraction!r} is not a list of percents",
                             hint="e.g. --fraction 2 or --fraction 0.5,1,2,5") from None
        for p in percents:
            if not 0 < p / 100 <= 1:
                raise InputError(f"--fraction {p:g} % is a sampling fraction of {p / 100:g}, "
                                 "outside (0, 1]",
                                 hint="give --fraction in percent, e.g. 2 for 2 %")
        sparse["fractions"] = [p / 100 for p in percents]
    return sparse
