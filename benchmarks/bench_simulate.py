"""Benchmark of ``stem2eds simulate``: wall time and peak memory of the default series.

Target (issue 3): 6 scans of 40x30 positions x 256x256 px in under 60 s and
under 2 GB on 2 CPU cores. Prints one JSON object; not a test.

    .venv/bin/python benchmarks/bench_simulate.py [--scans 6] [--scan-shape 40x30]
        [--detector 256] [--workers 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--scan-shape", default="40x30")
    parser.add_argument("--detector", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the bundles here (default: a temporary folder)")
    args = parser.parse_args()

    from stem2eds.cli import parse_pair
    from stem2eds.simulate import SimulationSettings, simulate_series

    settings = SimulationSettings(n_scans=args.scans, scan_shape=parse_pair(args.scan_shape),
                                  detector=args.detector, workers=args.workers, seed=args.seed)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_simulate_"))
    start_cpu = time.process_time()
    start = time.perf_counter()
    paths = simulate_series(out, settings)
    wall = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    size = sum(p.stat().st_size for p in paths)
    # ru_maxrss is in KiB on Linux.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_patterns = args.scans * settings.scan_shape[0] * settings.scan_shape[1]
    print(json.dumps({
        "scans": args.scans, "scan_shape": list(settings.scan_shape), "detector": args.detector,
        "workers": args.workers, "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "ms_per_pattern": round(1000 * wall / n_patterns, 3),
        "peak_rss_mib": round(peak_mib, 1), "output_mib": round(size / 2 ** 20, 1),
        "target": {"wall_s": 60, "peak_rss_mib": 2048},
    }))
    if not args.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
