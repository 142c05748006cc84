"""Compare the registered models on the same simulated scan series, in one run.

Each model is trained on the first scan of a simulated series (random 80:20
split of its positions for early stopping) and predicts every other scan of
the series (unseen positions *and* an unseen scan: the paper's
extrapolation). Accuracy is measured per element against the predicted
scan's EDS targets (preprocessed exactly as training targets are: blurred,
cropped) and against the simulator's noise-free composition. Writes a JSON
file and prints a Markdown table.

    python benchmarks/compare_models.py --out benchmarks/results/compare_models.json

Every model is scored twice from the same training run: as its run predicts
by default (``radial`` filters its predicted EDS maps with the targets' 7x7
Gaussian, ``paper`` and ``ridge`` predict pattern by pattern) and the other
way round (rows "+ filter" / ", unfiltered"), so the filter's share of any
difference is visible.

The README's table comes from ``--bin 8 --epochs 100`` (other settings as
below); the run takes about 7 minutes on a busy 2-core machine, most of it
the paper CNN.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/compare_models.json")
    p.add_argument("--data", default=None,
                   help="folder with a simulated series (simulated into WORK/sim when absent)")
    p.add_argument("--work", default="benchmarks/work/compare_models")
    p.add_argument("--models", default="radial,paper,ridge")
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--scan-shape", default="40x30")
    p.add_argument("--detector", type=int, default=256)
    p.add_argument("--bin", type=int, default=4)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate for all models (default: TrainConfig's 1e-4)")
    p.add_argument("--split", default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def _targets(bundle: Path, settings) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(E, Rx', Ry') EDS targets as training sees them, and the noise-free truth (cropped)."""
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.preprocess import crop_maps, preprocess_maps

    with open_bundle(bundle) as scan:
        eds = preprocess_maps(scan.eds(), settings)
        truth = crop_maps(scan.maps("truth"), settings.crop) if scan.has("truth") else None
        return eds, truth, scan.elements


def main() -> int:
    args = _parse()
    import torch

    from stem2eds.cli import parse_pair
    from stem2eds.train.config import TrainConfig
    from stem2eds.metrics import element_metrics
    from stem2eds.predict.predictor import load_run
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.fit import train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else work / "sim"
    scans = sorted(data.glob("scan_*.h5"))
    sim_seconds = None
    if not scans:
        from stem2eds.simulate.series import SimulationSettings, simulate_series
        t0 = time.perf_counter()
        scans = simulate_series(data, SimulationSettings(
            n_scans=args.scans, scan_shape=parse_pair(args.scan_shape),
            detector=args.detector, seed=args.seed))
        sim_seconds = time.perf_counter() - t0
    train_scan, test_scans = scans[0], scans[1:]
    torch.set_num_threads(args.threads)
    results: dict = {
        "setup": {"train_scan": train_scan.name, "test_scans": [s.name for s in test_scans],
                  "scan_shape": args.scan_shape, "detector": args.detector,
                  "bin_factor": args.bin, "split": args.split, "max_epochs": args.epochs,
                  "patience": args.patience, "learning_rate": args.lr or 1e-4,
                  "seed": args.seed, "threads": args.threads,
                  "simulation_seconds": sim_seconds, "torch": torch.__version__},
        "models": {}}
    for name in args.models.split(","):
        run_dir = work / f"run_{name}"
        if run_dir.exists():
            import shutil
            shutil.rmtree(run_dir)
        config = TrainConfig(model=name, max_epochs=args.epochs, patience=args.patience,
                             split=args.split, seed=args.seed, threads=args.threads,
                             device="cpu", learning_rate=args.lr or 1e-4,
                             preprocess=PreprocessSettings(bin_factor=args.bin))
        t0 = time.perf_counter()
        train([train_scan], run_dir, config, quiet=True)
        train_seconds = time.perf_counter() - t0
        info = json.loads((run_dir / "run.json").read_text())
        predictor = load_run(run_dir)
        n_params = sum(p.numel() for p in predictor.model.parameters())
        default_filter = predictor.filter_predictions
        for filtered in (default_filter, not default_filter):
            label = name if filtered == default_filter else \
                (f"{name} + filter" if filtered else f"{name}, unfiltered")
            per_scan, predict_seconds, n_patterns = {}, 0.0, 0
            for scan in test_scans:
                t0 = time.perf_counter()
                pred = predictor.predict_scan(scan, filtered=filtered)
                predict_seconds += time.perf_counter() - t0
                n_patterns += int(np.prod(pred.scan_shape))
                eds, truth, elements = _targets(scan, predictor.settings)
                per_scan[scan.name] = {"vs_eds": element_metrics(pred.eds, eds, elements)}
                if truth is not None:
                    per_scan[scan.name]["vs_truth"] = element_metrics(pred.eds, truth, elements)
            results["models"][label] = {
                "model": name, "filtered": filtered, "run_default": filtered == default_filter,
                "parameters": n_params, "train_seconds": round(train_seconds, 1),
                "epochs_run": info["training"]["epochs_run"],
                "best_epoch": info["training"].get("best_epoch"),
                "best_val_loss": info["training"]["best_val_loss"],
                "predict_patterns_per_second": round(n_patterns / predict_seconds, 1),
                "summary": _summary(per_scan, info["elements"]), "per_scan": per_scan}
        summary = results["models"][name]["summary"]
        print(f"{name}: trained in {train_seconds:.1f} s, mean Pearson r vs EDS "
              f"{summary['vs_eds']['mean_pearson']:.3f}", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))
    return 0


def _summary(per_scan: dict, elements: list[str]) -> dict:
    """Mean over the predicted scans of each element's Pearson r, and the mean MAE."""
    summary = {}
    for ref in ("vs_eds", "vs_truth"):
        if ref not in next(iter(per_scan.values())):
            continue
        pearson = np.array([[m[ref]["pearson"][e] for e in elements]
                            for m in per_scan.values()])      # (scans, E)
        mae = np.array([[m[ref]["mae"][e] for e in elements] for m in per_scan.values()])
        summary[ref] = {"mean_pearson": float(np.nanmean(pearson)),
                        "pearson_per_element": dict(zip(elements,
                                                        np.nanmean(pearson, axis=0).tolist())),
                        "mean_mae": float(np.nanmean(mae))}
    return summary


def _table(results: dict) -> str:
    models = results["models"]
    elements = list(next(iter(models.values()))["summary"]["vs_eds"]["pearson_per_element"])
    head = ("| model | params | train s (epochs) | predict patterns/s | mean r vs EDS | "
            + " | ".join(f"r {e}" for e in elements) + " | MAE vs EDS | mean r vs truth |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, m in models.items():
        s = m["summary"]["vs_eds"]
        truth = m["summary"].get("vs_truth", {}).get("mean_pearson", float("nan"))
        lines.append(
            f"| {name} | {m['parameters']:,} | {m['train_seconds']:.0f} ({m['epochs_run']}) | "
            f"{m['predict_patterns_per_second']:.0f} | {s['mean_pearson']:.3f} | "
            + " | ".join(f"{s['pearson_per_element'][e]:.3f}" for e in elements)
            + f" | {s['mean_mae']:.4f} | {truth:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
