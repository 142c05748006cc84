"""Time Predictor.predict on one scan held as a bundle, numpy, dask and a lazy HyperSpy signal.

The same patterns each way, with the same run; records seconds, patterns per
second and the largest difference from the bundle's maps (0 expected: the
in-memory sources stream through the same preprocessing and model).

    python benchmarks/bench_api.py RUN BUNDLE --out benchmarks/results/bench_api.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path


def _provenance() -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    return {"commit": commit,
            "machine": f"{os.cpu_count()} CPUs (cpu_count), {platform.machine()}, "
                       "other jobs running (see load_average)",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="finished training run")
    p.add_argument("bundle", help="raw scan bundle to predict")
    p.add_argument("--out", default="benchmarks/results/bench_api.json")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3, help="timings per source (the best is kept)")
    args = p.parse_args()

    import dask.array as da
    import h5py
    import hyperspy.api as hs
    import numpy as np

    from stem2eds import load_run

    run = load_run(args.run)
    with h5py.File(args.bundle, "r") as f:
        patterns = f["diffraction"][()]
    rows = max(1, args.batch // patterns.shape[1])
    sources = {"bundle": lambda: args.bundle,
               "numpy": lambda: patterns,
               "dask": lambda: da.from_array(patterns, chunks=(rows, -1, -1, -1)),
               "hyperspy_lazy": lambda: hs.signals.Signal2D(patterns).as_lazy()}
    results, reference = {}, None
    for name, make in sources.items():
        best, pred = float("inf"), None
        for _ in range(args.repeat):
            data = make()
            t0 = time.perf_counter()
            pred = run.predict(data, batch=args.batch)
            best = min(best, time.perf_counter() - t0)
        reference = pred.eds if reference is None else reference
        n = patterns.shape[0] * patterns.shape[1]
        results[name] = {"seconds": round(best, 3), "patterns_per_second": round(n / best, 1),
                         "max_abs_diff_vs_bundle": float(np.abs(pred.eds - reference).max())}
    out = {"provenance": _provenance(), "scan_shape": list(patterns.shape[:2]),
           "detector_shape": list(patterns.shape[2:]), "dtype": str(patterns.dtype),
           "batch": args.batch, "model": run.model_name, "repeat": args.repeat,
           "torch_threads": __import__("torch").get_num_threads(), "results": results}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
