"""Benchmark of the sparse-completion guard: is model + sparse EDS never worse than its parts?

For every scan of each given series, the sparse experiment's steps
(:mod:`stem2eds.experiments.sparse`: plan, ensemble, targets, scores; the
anomaly map and figures are skipped) are run with that scan as the new one
and the other scans of the series as training scans. From the scores the
mean Pearson r
(over elements, unsampled positions; against the blurred EDS and the truth)
of the unguarded universal kriging (``model_uk_unguarded``: *before*), the
guarded headline (``model_uk``: *after*), the model calibrated on the sparse
EDS (``model_linear``) and the better interpolation of the sparse EDS alone
(``interp_linear``/``interp_gp``) are collected, with the guard's choice per
element. The criterion of issue 16 part 6: headline >= max(calibrated model,
best interpolation) - 0.01 at every fraction of every scan.

Usage::

    .venv/bin/python benchmarks/bench_sparse_guard.py --series kinematic-seed101=/data/kin_s101 \\
        --work /tmp/bench-guard --out benchmarks/results/sparse_guard.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_crystallinity import _provenance  # noqa: E402

TOLERANCE = 0.01


def summarise_run(doc: dict) -> dict:
    """Before/after/parts per fraction and reference from a sparse run's metrics.json."""
    curve = doc["curve"]
    out: dict = {"fractions": doc["fractions"], "refs": {}, "guard_choice": {
        key: {el: v["choice"] for el, v in per.items()} for key, per in doc["guard"].items()}}
    for ref in curve["model_uk"]:
        before = np.asarray(curve["model_uk_unguarded"][ref])
        after = np.asarray(curve["model_uk"][ref])
        linear = np.asarray(curve["model_linear"][ref])
        interp = np.maximum(curve["interp_linear"][ref], curve["interp_gp"][ref])
        parts = np.maximum(linear, interp)
        out["refs"][ref] = {
            "before": before.round(4).tolist(), "after": after.round(4).tolist(),
            "model_linear": linear.round(4).tolist(), "best_interp": interp.round(4).tolist(),
            "ok_before": (before >= parts - TOLERANCE).tolist(),
            "ok_after": (after >= parts - TOLERANCE).tolist(),
            "worst_margin_before": float(np.min(before - parts)),
            "worst_margin_after": float(np.min(after - parts))}
    return out


def score_target(paths: list[Path], run: Path, model: str, ensemble: int,
                 fractions: list[float]) -> dict:
    """The sparse experiment's steps up to the scores (no anomaly map, no figures).

    Writes ``run/guard.json``: the ``curve`` and ``guard`` entries of the
    experiment's metrics.json.
    """
    from stem2eds.experiments import sparse
    from stem2eds.train.config import TrainConfig

    plan = sparse.plan_sparse(paths, run, fractions, "random", TrainConfig(model=model),
                              ensemble, 0)
    (run / "predictions" / "sparse").mkdir(parents=True, exist_ok=True)
    ens = sparse.fit_ensemble(plan, quiet=True)
    maps = sparse.load_target_maps(plan, ens)
    scores = sparse.score_fractions(plan, ens, maps, {"elements": ens.elements})
    doc = {"fractions": plan.fractions, "curve": scores.curve(plan.fractions,
                                                              list(maps.references)),
           "guard": scores.guard, "train_scans": plan.names[:-1], "target_scan": plan.target}
    (run / "guard.json").write_text(json.dumps(doc, default=float))
    return doc


def bench_series(folder: Path, work: Path, model: str, ensemble: int,
                 fractions: list[float], existing_only: bool = False,
                 targets: list[str] | None = None) -> dict:

    scans = sorted(folder.glob("scan_*.h5"))
    result = {}
    for target in scans:
        if targets and target.stem not in targets:
            continue
        train = [s for s in scans if s != target]
        run = work / target.stem
        t0 = time.perf_counter()
        if not (run / "guard.json").is_file():
            if existing_only:
                continue
            score_target([*train, target], run, model, ensemble, fractions)
        doc = json.loads((run / "guard.json").read_text())
        entry = summarise_run(doc)
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        result[target.stem] = entry
        print(target.stem, {ref: (v["worst_margin_before"], v["worst_margin_after"])
                            for ref, v in entry["refs"].items()}, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", action="append", required=True,
                    help="LABEL=FOLDER of raw simulated bundles (repeatable)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-sparse-guard"))
    ap.add_argument("--model", default="ridge")
    ap.add_argument("--ensemble", type=int, default=2)
    ap.add_argument("--fractions", default=None,
                    help="comma-separated fractions (default: the experiment's FRACTIONS)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--targets", default=None,
                    help="comma-separated scan names to use as the new scan (default: all)")
    ap.add_argument("--existing-only", action="store_true",
                    help="only collect the runs already finished under --work")
    args = ap.parse_args(argv)
    from stem2eds.analysis.sparse_eds import FRACTIONS

    fractions = ([float(f) for f in args.fractions.split(",")] if args.fractions
                 else list(FRACTIONS))
    doc = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    doc.setdefault("series", {})
    for item in args.series:
        label, folder = item.split("=", 1)
        scans = bench_series(Path(folder), args.work / label, args.model, args.ensemble,
                             fractions, args.existing_only,
                             args.targets.split(",") if args.targets else None)
        if not scans:
            continue
        ok = {ref: {"before": all(all(s["refs"][ref]["ok_before"]) for s in scans.values()),
                    "after": all(all(s["refs"][ref]["ok_after"]) for s in scans.values())}
              for ref in next(iter(scans.values()))["refs"]}
        doc["series"][label] = {"folder": folder, "model": args.model,
                                "ensemble": args.ensemble, "scans": scans,
                                "criterion_met_on_every_scan_and_fraction": ok,
                                "provenance": _provenance()}
        print(label, ok, flush=True)
    doc["criterion"] = (f"headline (model_uk) mean r >= max(model_linear, best interpolation) "
                        f"- {TOLERANCE} at every fraction; 'before' = model_uk_unguarded")
    doc["provenance"] = _provenance()
    text = json.dumps(doc, indent=2, default=float)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
