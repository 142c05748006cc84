"""Accuracy cost of centring after binning (the fast default) vs at full resolution.

Processes patterns of the project's physics simulator (256x256 counts, GST
film, a third of them with Bragg disks, known beam centres with descan and
jitter) both ways with the same origins and beam radius, and reports as
JSON: the relative L1 difference of the binned patterns, the largest
difference of the 32-ring radial profiles relative to the profile, and the
speed of each path on this machine.

Usage::

    .venv/bin/python benchmarks/bench_centring.py [--n 512] [--dose 2e4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_preprocess import simulated_block

    from stem2eds.preprocess import find_origins, radial_profile
    from stem2eds.preprocess.patterns import process_patterns

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    args = ap.parse_args()
    raw = simulated_block(args.n)
    origins = find_origins(raw).origins
    radius = 3.5
    out = {"n_patterns": args.n, "detector": list(raw.shape[1:]), "bin_factor": 4,
           "beam_radius_px": radius}
    results = {}
    for centring in ("full", "binned"):
        process_patterns(raw[:32], origins[:32], radius, 4, "none", centring)  # warm up
        t0 = time.perf_counter()
        results[centring] = process_patterns(raw, origins, radius, 4, "none", centring)
        out[f"{centring}_patterns_per_s"] = args.n / (time.perf_counter() - t0)
    full, binned = results["full"], results["binned"]
    out["relative_l1_difference"] = float(np.abs(binned - full).sum() / np.abs(full).sum())
    pf, pb = radial_profile(full), radial_profile(binned)
    rings = slice(2, None)  # rings inside the removed beam are ~0 in both
    out["radial_profile_max_relative_difference"] = float(
        np.max(np.abs(pb[:, rings] - pf[:, rings]) / np.maximum(pf[:, rings], 1e-9)))
    out["radial_profile_median_relative_difference"] = float(
        np.median(np.abs(pb[:, rings] - pf[:, rings]) / np.maximum(pf[:, rings], 1e-9)))
    out["total_counts_ratio_binned_over_full"] = float(binned.sum() / full.sum())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
