"""Time training the default model on 1200 patterns to early stop, and prediction.

Simulates one 40x30 scan (1200 patterns, 256x256 detector, binned to 64x64
by the default preprocessing), trains the default model with the default
TrainConfig (Adam, lr 1e-4, MAE, patience 10, random 80:20 split) until
early stopping, then predicts the scan. Records wall-clock times (seconds),
epochs and throughput in a JSON file.

    python benchmarks/bench_train.py --out benchmarks/results/bench_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/bench_train.json")
    p.add_argument("--work", default="benchmarks/work/bench_train")
    p.add_argument("--model", default=None, help="model (default: the default model)")
    p.add_argument("--scan-shape", default="40x30")
    p.add_argument("--detector", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-epochs", type=int, default=500)
    args = p.parse_args()

    import torch

    from stem2eds.cli import parse_pair
    from stem2eds.train.config import TrainConfig
    from stem2eds.predict.predictor import load_run
    from stem2eds.simulate.series import SimulationSettings, simulate_series
    from stem2eds.train.fit import train

    work = Path(args.work)
    data = work / "sim"
    scans = sorted(data.glob("scan_*.h5"))
    if not scans:
        scans = simulate_series(data, SimulationSettings(
            n_scans=1, scan_shape=parse_pair(args.scan_shape), detector=args.detector, seed=0))
    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = TrainConfig(max_epochs=args.max_epochs, threads=args.threads, device="cpu")
    if args.model:
        config = config.replace(model=args.model)
    t0 = time.perf_counter()
    train(scans, run_dir, config, quiet=True)
    total = time.perf_counter() - t0
    info = json.loads((run_dir / "run.json").read_text())
    predictor = load_run(run_dir)
    t0 = time.perf_counter()
    pred = predictor.predict_scan(scans[0])
    predict_seconds = time.perf_counter() - t0
    n = pred.scan_shape[0] * pred.scan_shape[1]
    epochs = info["training"]["epochs_run"]
    result = {
        "model": info["model"], "patterns": n, "detector": args.detector,
        "input_shape": info["input_shape"], "threads": args.threads,
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "train_seconds_total": round(total, 1),
        "train_seconds_reported": info["training"]["seconds"],
        "epochs_run": epochs, "best_epoch": info["training"].get("best_epoch"),
        "stopped_early": info["training"].get("stopped_early"),
        "best_val_loss": info["training"]["best_val_loss"],
        "seconds_per_epoch": round(total / max(epochs, 1), 3),
        "predict_seconds_incl_preprocessing": round(predict_seconds, 2),
        "predict_patterns_per_second": round(n / predict_seconds, 1),
        "config": config.to_dict(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
