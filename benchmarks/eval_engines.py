"""Headline accuracy per physics engine: every model, every cross-scan strategy, and the information bound.

For each simulated series given (one per engine), each model in ``--models``
is run through :func:`stem2eds.run_experiment` with each strategy in
``--strategies`` (extrapolate: train on the first scan, predict the rest;
interpolate: train on the first and last; leave-one-out: each scan predicted
by a model trained on all others), and scored per element against the
simulator's noise-free composition (``truth/``): Pearson r of the model's
(uncalibrated) maps, and the EDS noise ceiling (the measured, filtered EDS
map itself scored against the truth).

The information bound (``--bound``): the same model trained, leave-one-scan-out,
on the *noise-free* composition of all other scans pooled instead of their
noisy EDS maps (copies of the bundles whose ``eds`` maps are the truth; the
targets' and predictions' filter as for the model itself), scored on the
held-out scan. It is what the patterns allow the
model class to learn when the targets carry no noise; the default's gap to it
is the part of the error that better targets (more EDS dose) would remove.

    python benchmarks/eval_engines.py \\
        --series kinematic=/work/data/kinematic-heldout-11 \\
        --series multislice=/work/data/multislice-series-B \\
        --out benchmarks/results/engines.json

Series are named with the seeds that made them in the JSON (``simulation``
attributes of the bundles); the README/docs tables are generated from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path



def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", action="append", required=True,
                   help="ENGINE=FOLDER with scan_*.h5 bundles (repeatable)")
    p.add_argument("--models", default="radial,paper,ridge")
    p.add_argument("--strategies", default="extrapolate,interpolate,leave-one-out")
    p.add_argument("--bound", default="radial",
                   help="models whose information bound is measured (comma list; empty: none)")
    p.add_argument("--bin", type=int, default=4)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="benchmarks/work/engines")
    p.add_argument("--out", default="benchmarks/results/engines.json")
    p.add_argument("--resume", action="store_true",
                   help="keep the work folder's training runs: finished ones are reused and "
                        "an interrupted one resumes from its last checkpoint")
    return p.parse_args()


def _config(model: str, args):
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.config import TrainConfig

    return TrainConfig(model=model, max_epochs=args.epochs, patience=args.patience,
                       device="cpu", threads=args.threads, seed=0,
                       preprocess=PreprocessSettings(bin_factor=args.bin))


def _pearson(doc: dict, block: str) -> dict[str, float]:
    """Per-element mean Pearson r of a metrics.json truth block."""
    summary = doc["truth"][block] if block != "summary" else doc["truth"]["summary"]
    return {el: round(float(v["mean"]), 4) for el, v in summary["pearson"].items()}


def _truth_bundles(scans: list[Path], folder: Path) -> list[Path]:
    """Copies of the bundles whose ``eds`` maps are the noise-free composition."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for scan in scans:
        dest = folder / scan.name
        if not dest.exists():
            tmp = dest.with_suffix(".partial")
            shutil.copyfile(scan, tmp)
            with h5py.File(tmp, "r+") as f:
                for el in f["eds"]:
                    f["eds"][el][...] = f["truth"][el][...]
                if "eds_raw" in f:
                    del f["eds_raw"]
            os.replace(tmp, dest)
        out.append(dest)
    return out


def _run(scans, run_dir: Path, strategy: str, config, resume: bool = False) -> dict:
    from stem2eds.experiments import run_experiment
    from stem2eds.formats.metrics_file import read_metrics

    # an experiment reuses the finished training runs in its folder and resumes
    # an interrupted one (stem2eds.train.fit.ensure_trained): kept with --resume,
    # so a long leave-one-out can stop and go on later ("seconds" is then the
    # last leg only)
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    run_experiment(scans, run_dir, strategy, config, quiet=True, figures=False)
    doc = read_metrics(run_dir)
    out = {"pearson": _pearson(doc, "summary"), "ceiling": _pearson(doc, "ceiling"),
           "seconds": round(time.perf_counter() - t0, 1),
           "test_scans": doc["test_scans"]}
    if resume:
        out["resumed"] = True  # "seconds" covers only this leg
    return out


def _series_info(scans: list[Path]) -> dict:
    from stem2eds.formats.bundle import open_bundle

    with open_bundle(scans[0]) as scan:
        prov = scan.provenance
        shape = list(scan.scan_shape)
        detector = list(scan.detector_shape)
    return {"n_scans": len(scans), "scan_shape": shape, "detector": detector,
            "provenance": prov}


def main() -> int:
    args = _parse()
    import subprocess

    # the code that runs is the code at start: HEAD may move while a long evaluation runs
    args.commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()
    import torch

    torch.set_num_threads(args.threads)
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.setdefault("engines", {})
    work = Path(args.work)
    for item in args.series:
        engine, _, folder = item.partition("=")
        scans = sorted(Path(folder).glob("scan_*.h5"))
        if len(scans) < 3:
            print(f"{engine}: fewer than 3 scans in {folder}", file=sys.stderr)
            return 2
        entry = results["engines"].setdefault(engine, {})
        entry["series"] = {"folder": folder, **_series_info(scans)}
        entry.setdefault("models", {})
        for model in [m for m in args.models.split(",") if m]:
            for strategy in args.strategies.split(","):
                run_dir = work / engine / f"{model}_{strategy}"
                res = _run(scans, run_dir, strategy, _config(model, args), args.resume)
                entry["models"].setdefault(model, {})[strategy] = res
                print(engine, model, strategy, res["pearson"], f"{res['seconds']} s", flush=True)
                _write(out_path, results, args)
        for model in [m for m in args.bound.split(",") if m]:
            truth_scans = _truth_bundles(scans, work / engine / "truth_bundles")
            run_dir = work / engine / f"bound_{model}"
            # the same target and prediction filter as the model it bounds: unfiltered
            # per-pattern predictions would score below the filtered model by the
            # pattern noise the filter averages out (measured once, then fixed)
            res = _run(truth_scans, run_dir, "leave-one-out", _config(model, args), args.resume)
            entry.setdefault("bound", {})[model] = res
            print(engine, "bound", model, res["pearson"], flush=True)
            _write(out_path, results, args)
    return 0


def _write(path: Path, results: dict, args) -> None:
    import platform

    results["provenance"] = {
        "commit": args.commit, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {"bin_factor": args.bin, "max_epochs": args.epochs, "patience": args.patience,
                     "threads": args.threads}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
