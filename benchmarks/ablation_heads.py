"""Which head and which prediction filter carry over to unseen scans: the default model's ablation.

On one simulated series (folder of ``scan_*.h5`` in series order) every
variant below is trained with ``stem2eds.train.fit.train`` (default
TrainConfig otherwise) and scored on unseen scans with the mean Pearson r
over the elements against the scans' blurred EDS (the training target), in
three settings:

* ``extrapolate``: train on the first scan, predict all others;
* ``interpolate``: train on the first and last, predict those between;
* ``pooled``: train on every scan but the middle one, predict it.

Variants: ``ridge`` (the baseline, per pattern), ``ridge+filter`` (its
predicted maps through the EDS targets' filter), ``linear`` (``radial``
with ``n_hidden = 0``), ``mlp`` (``radial`` with ``n_hidden = 2``), both
filtered as the default run does. The default picks ``linear`` below three
training scans and ``mlp`` from three (``RadialNet.params_for_data``); this
script is the check of that rule on your data.

    python benchmarks/ablation_heads.py SERIES_DIR --out benchmarks/results/ablation_heads.json

Writes a JSON file and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "ridge": dict(model="ridge", filter_predictions="off"),
    "ridge+filter": dict(model="ridge", filter_predictions="on"),
    "linear": dict(model="radial", model_params={"n_hidden": 0}),
    "mlp": dict(model="radial", model_params={"n_hidden": 2}),
}


def _settings(n: int) -> dict[str, tuple[list[int], list[int]]]:
    """Training and predicted scan indices of each setting for a series of ``n`` scans."""
    middle = n // 2
    return {"extrapolate": ([0], list(range(1, n))),
            "interpolate": ([0, n - 1], list(range(1, n - 1))),
            "pooled": ([i for i in range(n) if i != middle], [middle])}


def _mean_r(predictor, scan: Path) -> tuple[float, dict[str, float]]:
    """Mean Pearson r over elements of one predicted scan against its blurred EDS."""
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.metrics import element_metrics
    from stem2eds.preprocess import preprocess_maps

    pred = predictor.predict_scan(scan)
    with open_bundle(scan) as s:
        target = preprocess_maps(s.eds(predictor.elements), predictor.settings)
    r = element_metrics(pred.eds, target, predictor.elements)["pearson"]
    return float(np.nanmean(list(r.values()))), r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("series", help="folder with the scan bundles of one series (scan_*.h5)")
    p.add_argument("--out", default="benchmarks/results/ablation_heads.json")
    p.add_argument("--work", default="benchmarks/work/ablation_heads")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--settings", default="extrapolate,interpolate,pooled")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from stem2eds.train.config import TrainConfig
    from stem2eds.predict.predictor import load_run
    from stem2eds.train.fit import train

    scans = sorted(Path(args.series).glob("scan_*.h5"))
    if len(scans) < 3:
        print(f"need at least 3 scans in {args.series}", file=sys.stderr)
        return 2
    work = Path(args.work)
    results: dict = {"series": str(Path(args.series).resolve()),
                     "scans": [s.name for s in scans], "seed": args.seed, "runs": {}}
    settings = _settings(len(scans))
    for setting in args.settings.split(","):
        train_idx, test_idx = settings[setting]
        for name in args.variants.split(","):
            run_dir = work / setting / name
            shutil.rmtree(run_dir, ignore_errors=True)
            config = TrainConfig(seed=args.seed, device="cpu", **VARIANTS[name])
            t0 = time.perf_counter()
            train([scans[i] for i in train_idx], run_dir, config, quiet=True)
            seconds = time.perf_counter() - t0
            predictor = load_run(run_dir)
            per_scan = {scans[i].name: _mean_r(predictor, scans[i]) for i in test_idx}
            mean = float(np.mean([v[0] for v in per_scan.values()]))
            results["runs"].setdefault(setting, {})[name] = {
                "mean_pearson": mean, "train_seconds": round(seconds, 1),
                "train_scans": [scans[i].name for i in train_idx],
                "per_scan": {k: {"mean": v[0], "pearson": v[1]} for k, v in per_scan.items()}}
            print(f"{setting:12s} {name:13s} mean r {mean:.3f} ({seconds:.0f} s)",
                  file=sys.stderr, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))
    return 0


def _table(results: dict) -> str:
    runs = results["runs"]
    names = list(next(iter(runs.values())))
    lines = ["| setting (training scans) | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for setting, by_name in runs.items():
        n_train = len(next(iter(by_name.values()))["train_scans"])
        lines.append(f"| {setting} ({n_train}) | "
                     + " | ".join(f"{by_name[n]['mean_pearson']:.3f}" for n in names) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
