"""Benchmark of `stem2eds preprocess`: patterns/s and peak memory vs bundle size.

Builds raw bundles of 256x256 uint16 patterns of growing size (the largest
over 1 GB), preprocesses each in a fresh process and reports wall time,
patterns per second and the peak resident memory of that process, as JSON on
stdout. Memory should stay flat as the bundle grows (streaming).

The patterns are a block of 512 from the project's physics simulator (GST
film, some crystalline grains, a drifting origin) written repeatedly until
the bundle has the wanted size, which keeps the set-up fast; preprocessing
cost does not depend on which patterns repeat. Also times the three stages
on one batch in this process, and compares the origin finder's accuracy
with the algorithm of py4DSTEM's ``get_origin`` (re-implemented below from
its documented method, since py4DSTEM cannot be installed next to this
project's numpy: its wheel pins numpy 1.26 and scikit-learn 1.4).

Usage::

    .venv/bin/python benchmarks/bench_preprocess.py --sizes-gb 0.25,0.5,1.1 --work /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DETECTOR = 256
SCAN_COLUMNS = 90
_CHILD = r"""
import json, resource, sys, time
from stem2eds.preprocess import PreprocessSettings, preprocess_bundle
t0 = time.perf_counter()
s = preprocess_bundle(sys.argv[1], sys.argv[2], PreprocessSettings(), quiet=True,
                      batch=int(sys.argv[3]))
wall = time.perf_counter() - t0
print(json.dumps({"seconds": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "scale": s.scale, "probe_radius": s.probe_radius}))
"""


def simulated_block(n: int = 512, seed: int = 0) -> np.ndarray:
    from stem2eds.simulate import ELEMENTS, simulate_patterns
    from stem2eds.simulate.crystal import ZONE_AXES

    rng = np.random.default_rng(seed)
    comp = np.tile(rng.dirichlet(np.ones(len(ELEMENTS))), (n, 1))
    origins = 127.5 + np.stack([np.linspace(-3, 3, n), np.linspace(2, -2, n)], 1)
    grain = rng.random(n) < 0.3
    return simulate_patterns(comp, np.full(n, 30.0), origins, rng, elements=ELEMENTS,
                             detector=DETECTOR, dose=2e4,
                             grain_thickness=np.where(grain, 10.0, 0.0),
                             grain_zone=rng.integers(len(ZONE_AXES), size=n),
                             grain_rotation=rng.uniform(0, np.pi, n),
                             grain_tilt=rng.normal(0, 2e-3, (n, 2)))


def make_bundle(path: Path, size_gb: float, block: np.ndarray) -> tuple[int, int]:
    from stem2eds.formats.bundle import PixelCalibration, create_bundle

    per_pattern = DETECTOR * DETECTOR * 2
    rows = int(np.ceil(size_gb * 1e9 / (per_pattern * SCAN_COLUMNS)))
    if path.exists():
        return rows, SCAN_COLUMNS
    n = rows * SCAN_COLUMNS
    rng = np.random.default_rng(1)
    elements = ["Ge", "Sb", "Te"]
    maps = rng.dirichlet(np.ones(3), size=(rows, SCAN_COLUMNS)).transpose(2, 0, 1)
    with create_bundle(path, scan_shape=(rows, SCAN_COLUMNS), detector_shape=(DETECTOR,) * 2,
                       dtype=np.uint16, elements=elements,
                       calibration=PixelCalibration(1.053, 0.1451, "nm", "1/nm")) as b:
        for start in range(0, n, len(block)):
            take = min(len(block), n - start)
            b.write_patterns(start, block[:take])
        b.write_eds({e: m.astype(np.float32) for e, m in zip(elements, maps)})
    return rows, SCAN_COLUMNS


def stage_timings(block: np.ndarray, repeats: int = 3) -> dict:
    from stem2eds.preprocess import find_origins
    from stem2eds.preprocess.patterns import centre_patterns, finish_patterns

    batch = block[:256]
    best = {"find_origins": np.inf, "centre": np.inf, "beam_bin_scale": np.inf}
    for _ in range(repeats):
        t0 = time.perf_counter()
        found = find_origins(batch)
        t1 = time.perf_counter()
        centred = centre_patterns(batch, found.origins)
        t2 = time.perf_counter()
        finish_patterns(centred, 4.0, 4, "none")
        t3 = time.perf_counter()
        for key, dt in zip(best, (t1 - t0, t2 - t1, t3 - t2)):
            best[key] = min(best[key], dt)
    return {f"{k}_patterns_per_s": round(len(batch) / v, 1) for k, v in best.items()}


def py4dstem_style_origin(pattern: np.ndarray, radius: float, rscale: float = 1.2):
    """py4DSTEM's single-pattern method: argmax of the pattern blurred by a
    Gaussian of sigma = disk radius, then the centre of mass of the raw
    pattern inside a disk of ``rscale * radius`` around that pixel."""
    from scipy import ndimage

    r0, c0 = np.unravel_index(np.argmax(ndimage.gaussian_filter(pattern.astype(float), radius)),
                              pattern.shape)
    rows, cols = np.indices(pattern.shape)
    weights = pattern * (np.hypot(rows - r0, cols - c0) < rscale * radius)
    total = weights.sum()
    return (weights * rows).sum() / total, (weights * cols).sum() / total


def origin_accuracy(doses=(5e2, 2e3, 2e4, 2e5), n: int = 200) -> list[dict]:
    """Median and 95th-percentile origin error (px) on simulated patterns with known origins."""
    from stem2eds.preprocess import find_origins
    from stem2eds.simulate import ELEMENTS, default_probe_radius, simulate_patterns
    from stem2eds.simulate.crystal import ZONE_AXES

    rows = []
    for dose in doses:
        rng = np.random.default_rng(int(dose))
        truth = 127.5 + rng.uniform(-8, 8, (n, 2))
        grain = rng.random(n) < 0.5
        comp = np.tile(rng.dirichlet(np.ones(len(ELEMENTS))), (n, 1))
        patterns = simulate_patterns(comp, np.full(n, 30.0), truth, rng, elements=ELEMENTS,
                                     detector=DETECTOR, dose=dose,
                                     grain_thickness=np.where(grain, 12.0, 0.0),
                                     grain_zone=rng.integers(len(ZONE_AXES), size=n),
                                     grain_rotation=rng.uniform(0, np.pi, n),
                                     grain_tilt=rng.normal(0, 2e-3, (n, 2)))
        ours = find_origins(patterns).origins
        radius = default_probe_radius(DETECTOR)
        ref = np.array([py4dstem_style_origin(p, radius) for p in patterns])
        row = {"dose_e_per_pattern": dose, "n": n, "with_grain": int(grain.sum())}
        for name, found in (("stem2eds", ours), ("py4dstem_style", ref)):
            err = np.hypot(*(found - truth).T)
            row[f"{name}_median_px"] = round(float(np.median(err)), 4)
            row[f"{name}_p95_px"] = round(float(np.percentile(err, 95)), 4)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-gb", default="0.25,0.5,1.1")
    parser.add_argument("--work", default="/tmp/stem2eds_bench_preprocess")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--keep", action="store_true", help="keep the bundles")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="only the origin accuracy comparison")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.accuracy_only:
        print(json.dumps({"origin_accuracy": origin_accuracy()}, indent=2))
        return 0
    block = simulated_block()
    result = {"detector": [DETECTOR, DETECTOR], "dtype": "uint16", "batch": args.batch,
              "stages_one_batch_256": stage_timings(block),
              "origin_accuracy": origin_accuracy(), "runs": []}
    for size in (float(s) for s in args.sizes_gb.split(",")):
        src = work / f"raw_{size:g}GB.h5"
        rows, cols = make_bundle(src, size, block)
        out = work / f"pre_{size:g}GB.h5"
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(out), str(args.batch)],
                              capture_output=True, text=True, check=True)
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        n = rows * cols
        run.update(bundle_gb=round(src.stat().st_size / 1e9, 3), scan_shape=[rows, cols],
                   n_patterns=n, patterns_per_s=round(n / run["seconds"], 1))
        result["runs"].append(run)
        print(json.dumps(run), file=sys.stderr)
        out.unlink()
        if not args.keep:
            src.unlink()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
