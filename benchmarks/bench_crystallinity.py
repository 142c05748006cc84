"""Benchmark of the crystallinity map against the simulators' grain masks.

For every raw simulated bundle of the given series: preprocess it with the
default settings (cached under ``--work``), score it with
:func:`stem2eds.experiments.sparse_anomaly.scan_crystallinity` (the function
the sparse experiment uses for ``anomaly/<scan>.h5``) and compare the
``crystalline`` map with ``simulation/grain_mask``: precision, recall and F1
per scan and pooled over the series, the score's spread on amorphous and
crystalline positions, and the time per scan. The map does not use any
training data, so the result is the same whichever scans a model was
trained on (with or without grains).

The defaults (threshold, band, matched filter) were set on kinematic series
seed 0 (``SimulationSettings(n_scans=4, scan_shape=(48, 40), seed=0,
grain_scan_fraction=0.75)``); report other seeds as held out.

Usage::

    .venv/bin/python benchmarks/bench_crystallinity.py --series kinematic-seed101=/data/kin_s101 \\
        --series kinematic-seed102=/data/kin_s102 --work /tmp/bench-cryst \\
        --out benchmarks/results/crystallinity.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np


def _provenance() -> dict:
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"commit": commit, "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "note": "shared machine: other jobs were running; times are indicative"}


def write_doc(doc: dict, out) -> None:
    """The results document as indented JSON: to ``out`` (a Path), or printed when None."""
    text = json.dumps(doc, indent=2, default=float)
    if out is None:
        print(text)
    else:
        out.write_text(text + "\n")


def bench_series(folder: Path, work: Path) -> dict:
    """Detection scores of every grain-bearing scan of one series, and pooled."""
    import h5py

    from stem2eds.analysis.anomaly import detection_scores
    from stem2eds.experiments.sparse_anomaly import scan_crystallinity
    from stem2eds.preprocess.pipeline import preprocess_bundle

    work.mkdir(parents=True, exist_ok=True)
    scans, pooled_f, pooled_g = {}, [], []
    for raw in sorted(folder.glob("scan_*.h5")):
        pre = work / raw.name
        if not pre.is_file():
            preprocess_bundle(raw, pre, quiet=True)
        t0 = time.perf_counter()
        score, crystalline = scan_crystallinity(pre)
        seconds = time.perf_counter() - t0
        with h5py.File(pre, "r") as f:
            grain = f["simulation/grain_mask"][()].astype(bool)
        entry = {"positions": int(grain.size), "seconds": round(seconds, 2),
                 **{k: (None if isinstance(v, float) and np.isnan(v) else v)
                    for k, v in detection_scores(crystalline, grain).items()},
                 "score_amorphous_median_p99_max": [round(float(v), 2) for v in
                                                    np.percentile(score[~grain], [50, 99, 100])]}
        if grain.any():
            entry["score_grain_min_p10_median"] = [round(float(v), 2) for v in
                                                   np.percentile(score[grain], [0, 10, 50])]
        scans[raw.stem] = entry
        pooled_f.append(crystalline.ravel())
        pooled_g.append(grain.ravel())
    pooled = detection_scores(np.concatenate(pooled_f), np.concatenate(pooled_g))
    return {"folder": str(folder), "scans": scans, "pooled": pooled}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", action="append", required=True,
                    help="LABEL=FOLDER of raw simulated bundles (repeatable)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-crystallinity"))
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON to write (entries of other labels already there are kept)")
    args = ap.parse_args(argv)
    doc = {}
    if args.out is not None and args.out.is_file():
        doc = json.loads(args.out.read_text())
    doc.setdefault("series", {})
    for item in args.series:
        label, folder = item.split("=", 1)
        result = bench_series(Path(folder), args.work / label)
        result["provenance"] = _provenance()
        doc["series"][label] = result
        p = result["pooled"]
        print(f"{label}: precision {p['precision']:.3f} recall {p['recall']:.3f} "
              f"({p['reference']} grain positions)", flush=True)
    doc["provenance"] = _provenance()
    doc["what"] = ("crystalline map (stem2eds.analysis.crystallinity, default settings of the "
                   "sparse experiment) vs simulation/grain_mask; no training data involved")
    write_doc(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
