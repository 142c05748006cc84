"""``stem2eds report``: rebuild an experiment's self-contained HTML report."""

from __future__ import annotations

from ..cli import add_command


def register(subparsers) -> None:
    p = add_command(
        subparsers, "report", help="rebuild report.html of an experiment run",
        description="""
            Rebuild RUN_DIR/report.html from RUN_DIR/metrics.json, the predictions,
            targets and figures in RUN_DIR: one self-contained page (data and images
            embedded; open it from disk, no network) that leads with the maps (click a
            position to see its diffraction pattern, predicted vs measured composition,
            uncertainty, OOD and crystallinity scores), then the settings, the split
            used, the tables (this run vs the ridge baseline and the paper) and the
            figures. The raw scans named by the predictions are read once for the
            patterns. Prints the report's path.""",
        example="stem2eds report runs/extrapolate")
    p.add_argument("run_dir", metavar="RUN_DIR", help="an experiment run directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..report import write_report

    print(write_report(args.run_dir, quiet=args.quiet))
    return 0
