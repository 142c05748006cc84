"""Leave-one-scan-out accuracy of the default model with each ``model_params.normalise``.

For every series given (a folder of ``scan_*.h5`` raw bundles with ``truth/``
maps, e.g. from ``stem2eds simulate``), each scan in turn is predicted by a
single default model (``radial``, every other setting at its default)
trained on the other scans, once per normalisation (``pattern``: the
default, each pattern's mean log level removed; ``scan``: each scan's ring
statistics divided by the scan's reference intensity; ``none``). Recorded
per fold and on average: Pearson r per element against the simulator's
noise-free truth and against the blurred EDS (the training targets).

    .venv/bin/python benchmarks/eval_normalise.py SERIES [SERIES ...] \\
        --variants scan,pattern,none --work /tmp/normwork --out normalise.json

Runs are kept under ``--work`` (``<series>/run_<variant>_<k>``) and reused
when they are complete, so an interrupted evaluation resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def _r(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def fold(train_scans: list[Path], test: Path, run_dir: Path, variant: str) -> dict:
    """Train (or reuse) one run and score its prediction of ``test``."""
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.predict.predictor import load_run
    from stem2eds.preprocess import crop_maps, preprocess_maps
    from stem2eds.train.config import TrainConfig
    from stem2eds.train.fit import ensure_trained

    t0 = time.perf_counter()
    config = TrainConfig().replace(model_params={"normalise": variant})
    predictor = load_run(ensure_trained(train_scans, run_dir, config, quiet=True))
    pred = predictor.predict(test).eds
    with open_bundle(test) as b:
        eds = preprocess_maps(b.eds(), predictor.settings)
        truth = crop_maps(b.maps("truth"), predictor.settings.crop)
    els = predictor.elements
    return {"scan": test.stem, "seconds": round(time.perf_counter() - t0, 1),
            "truth": {el: round(_r(pred[i], truth[i]), 4) for i, el in enumerate(els)},
            "eds": {el: round(_r(pred[i], eds[i]), 4) for i, el in enumerate(els)}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("series", nargs="+", type=Path)
    p.add_argument("--variants", default="scan,pattern,none")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    result: dict = {"provenance": {"commit": commit,
                                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                   "command": " ".join(sys.argv)}, "series": {}}
    for series in args.series:
        scans = sorted(series.glob("scan_*.h5"))
        out = result["series"][str(series)] = {}
        for variant in args.variants.split(","):
            folds = [fold([s for s in scans if s != test], test,
                          args.work / series.name / f"run_{variant}_{k}", variant)
                     for k, test in enumerate(scans)]
            mean = {ref: {el: round(float(np.mean([f[ref][el] for f in folds])), 4)
                          for el in folds[0][ref]} for ref in ("truth", "eds")}
            out[variant] = {"mean": mean, "folds": folds}
            print(series.name, variant, mean["truth"], flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
