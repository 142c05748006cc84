"""Benchmark: wall time of ``stem2eds demo`` at its default settings.

The demo must finish in under 10 minutes on 2 CPU cores. Run from the
checkout::

    .venv/bin/python benchmarks/bench_demo.py [--out DIR] [--seed S] [--keep]

Prints one JSON object: seconds per stage (simulate, random, extrapolate,
interpolate, total), the number of CPU cores, and the headline
numbers (mean Pearson r per element: CNN raw, CNN calibrated, ridge,
ridge calibrated) of the extrapolation and interpolation experiments.
Exit status 1 when the total exceeds the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

LIMIT_S = 600.0


def headline(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())

    def means(summary):
        return {el: (v or {}).get("mean") for el, v in summary["pearson"].items()}

    return {"cnn": means(m["summary"]), "cnn_calibrated": means(m["calibrated"]["summary"]),
            "ridge": means(m["baseline"]["summary"]),
            "ridge_calibrated": means(m["baseline"]["calibrated"]["summary"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="output folder (default: a fresh temporary one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated series")
    parser.add_argument("--keep", action="store_true", help="keep the temporary output")
    args = parser.parse_args()

    from stem2eds.experiments.demo import DemoSettings, run_demo

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_demo_"))
    start = time.perf_counter()
    index = run_demo(out, DemoSettings(seed=args.seed), quiet=True)
    total = time.perf_counter() - start
    result = {"total_s": round(total, 1),
              "stages_s": json.loads((out / "timings.json").read_text()), "limit_s": LIMIT_S, "cpu_count": os.cpu_count(),
              "index": str(index),
              "extrapolate": headline(out / "extrapolate"),
              "interpolate": headline(out / "interpolate"),
              "random": headline(out / "random")}
    print(json.dumps(result, indent=1))
    if not args.out and not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if total <= LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
