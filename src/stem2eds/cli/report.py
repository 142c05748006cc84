"""``stem2eds report``: rebuild an experiment's self-contained HTML report."""

from __future__ import annotations

from ..cli import add_command


def register(subparsers) -> None:
    p = add_command(
        subparsers, "report", help="rebuild report.html of an experiment run",
        description="""
            Rebuild RUN_DIR/report.html from RUN_DIR/metrics.json and the figures in
            RUN_DIR/figures/: one self-contained page (images embedded) with the
            settings, the split used, the tables (this run vs the ridge baseline and
            the paper) and the figures. Prints the report's path.""",
        example="stem2eds report runs/extrapolate")
    p.add_argument("run_dir", metavar="RUN_DIR", help="an experiment run directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..report import write_report

    print(write_report(args.run_dir))
    return 0
