"""Dose and thickness robustness: the default model with and without per-pattern normalisation.

For each held-out seed (101, 102, 103, chosen before any result was seen) a
3-scan kinematic series is simulated and the default model trained on its
first two scans four ways: ``RadialParams.normalise`` off or on (each
pattern's mean log ring intensity removed), each with the preprocessing's
clip fixed at 1 (the training scale; ``PreprocessSettings.dose_ceiling``
off, as before it existed) or following each pattern's mean
(``dose_ceiling`` on, the default). The third scan (same specimen, same
seed) is simulated at the training dose, at half, double and 4x dose, and
with the film 0.67x and 1.5x as thick, and predicted by every run.
Recorded: mean Pearson r over elements against the simulator's noise-free
truth, and how far each prediction moved from the training-dose prediction
(mean absolute difference in atomic fraction).

    python benchmarks/bench_dose.py --out benchmarks/results/dose_thickness.json

``--train-seed N`` trains every run with ``TrainConfig.seed = N`` (the
recorded ``training_seed_check``: seed 103's normalised runs with seed 1).

Shares the simulated series with ``bench_transfer.py`` (same work folder and
settings); its runs have their own folders.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transfer import _cached, parse, provenance  # noqa: E402

#: The cases: name -> SimulationSettings overrides of the test scan.
CASES = {"training_dose": {}, "dose_x0.5": {"dose": 1e5}, "dose_x2": {"dose": 4e5},
         "dose_x4": {"dose": 8e5}, "thickness_x0.67": {"thickness_nm": 20.0},
         "thickness_x1.5": {"thickness_nm": 45.0}}

#: (label, RadialParams.normalise, PreprocessSettings.dose_ceiling)
RUNS = (("normalise_off_fixed_clip", "none", False), ("normalise_off", "none", True),
        ("normalise_on_fixed_clip", "pattern", False), ("normalise_on", "pattern", True),
        ("normalise_scan", "scan", True))
#: The runs of the recorded dose_thickness.json (``normalise_scan`` came later:
#: ``--runs normalise_on,normalise_scan --out benchmarks/results/dose_thickness_scan.json``).
DEFAULT_RUNS = "normalise_off_fixed_clip,normalise_off,normalise_on_fixed_clip,normalise_on"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("--out") for a in argv):
        argv += ["--out", "benchmarks/results/dose_thickness.json"]
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--train-seed", type=int, default=0,
                       help="TrainConfig.seed of every run (run folders get a suffix if not 0)")
    extra.add_argument("--runs", default=DEFAULT_RUNS,
                       help=f"comma-separated run labels, of {', '.join(r[0] for r in RUNS)}")
    known, argv = extra.parse_known_args(argv)
    args = parse(argv)
    args.train_seed = known.train_seed
    wanted = known.runs.split(",")
    runs = [r for r in RUNS if r[0] in wanted]
    if len(runs) != len(wanted):
        raise SystemExit(f"unknown run label in {known.runs!r}")
    from stem2eds.cli import parse_pair
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.metrics import metric_arrays
    from stem2eds.predict.predictor import load_run
    from stem2eds.preprocess import crop_maps
    from stem2eds.simulate.series import SimulationSettings, simulate_series

    work = Path(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"provenance": provenance(), "setup": {
        "seeds_held_out": seeds, "scan_shape": args.scan_shape, "bin_factor": args.bin,
        "max_epochs": args.epochs, "train_seed": args.train_seed,
        "train_scans": "first two scans of each seed's series",
        "test_scan": "third scan, simulated once per case (same specimen and seed)",
        "training_dose": 2e5, "training_thickness_nm": 30.0,
        "runs": {label: {"normalise": n, "dose_ceiling": d} for label, n, d in runs}},
        "per_seed": {}}
    for seed in seeds:
        t0 = time.perf_counter()
        base = SimulationSettings(n_scans=3, scan_shape=parse_pair(args.scan_shape), seed=seed)
        folder = work / f"seed{seed}"
        scans = sorted((folder / "series").glob("scan_*.h5")) or \
            simulate_series(folder / "series", base)
        tests = {name: (scans[2] if not o else _cached(folder / name, base, o))
                 for name, o in CASES.items()}
        with open_bundle(scans[2]) as b:
            truth = b.maps("truth")
        per_run = {}
        for label, normalise, dose_ceiling in runs:
            suffix = f"_seed{args.train_seed}" if args.train_seed else ""
            predictor = load_run(_train(scans[:2], folder / f"run_{label}{suffix}", args,
                                        normalise, dose_ceiling))
            t = crop_maps(truth, predictor.settings.crop)
            preds = {name: predictor.predict_scan(path).eds for name, path in tests.items()}
            per_run[label] = {name: {
                "mean_r_truth": round(float(np.nanmean(metric_arrays(p, t)["pearson"])), 4),
                "mean_abs_change_vs_training_dose": round(
                    float(np.mean(np.abs(p - preds["training_dose"]))), 5)}
                for name, p in preds.items()}
        results["per_seed"][str(seed)] = {"runs": per_run,
                                          "seconds": round(time.perf_counter() - t0, 1)}
        print(seed, json.dumps(per_run), file=sys.stderr, flush=True)
    results["summary"] = _summary(results["per_seed"], runs)
    results["provenance"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    return 0


def _train(scans, run_dir: Path, args, normalise: str, dose_ceiling: bool) -> Path:
    """The default model on ``scans`` (retrained when the folder is stale)."""
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.config import TrainConfig
    from stem2eds.train.fit import ensure_trained

    config = TrainConfig(max_epochs=args.epochs, threads=args.threads, device="cpu",
                         seed=args.train_seed,
                         preprocess=PreprocessSettings(bin_factor=args.bin,
                                                       dose_ceiling=dose_ceiling),
                         model_params={"normalise": normalise})
    return ensure_trained(scans, run_dir, config, quiet=True)


def _summary(per_seed: dict, runs) -> dict:
    out: dict = {}
    for label, _, _ in runs:
        out[label] = {}
        for name in CASES:
            rows = [s["runs"][label][name] for s in per_seed.values()]
            out[label][name] = {k: round(float(np.mean([r[k] for r in rows])), 5)
                                for k in rows[0]}
    return out


if __name__ == "__main__":
    sys.exit(main())
