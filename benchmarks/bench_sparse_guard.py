"""Benchmark of the sparse-completion guard: is model + sparse EDS never worse than its parts?

For every scan of each given series, that scan is the new one and the other
scans of the series train the ensemble (``ridge``, 2 members, as the sparse
experiment's :func:`~stem2eds.experiments.sparse.fit_ensemble`). The
ensemble's prediction of the new scan, its measured EDS and the references
(blurred EDS, truth) are cached in ``WORK/LABEL/<scan>.npz``; then, at every
fraction, the positions are drawn as the experiment draws them
(:func:`~stem2eds.analysis.sparse_eds.sample_positions`, random, seed 0) and
every estimate of :func:`~stem2eds.analysis.sparse_eds.complete_sparse` is
scored on the unsampled positions: the same function the experiment calls,
on the same inputs, without its files and figures. From the mean Pearson r
(over elements) the unguarded universal kriging (``model_uk_unguarded``:
*before*), the guarded headline (``model_uk``: *after*), the model
calibrated on the sparse EDS (``model_linear``) and the better
interpolation of the sparse EDS alone (``interp_linear``/``interp_gp``) are
collected, with the guard's weights. The criterion of issue 16 part 6:
headline >= max(calibrated model, best interpolation) - 0.01 at every
fraction of every scan, against the truth and the blurred EDS.

Each series is labelled ``design`` (used while choosing the guard) or
``held-out`` (scored once, after the choice).

Usage::

    .venv/bin/python benchmarks/bench_sparse_guard.py --series kin-s106=/data/kin_s106 \\
        --role held-out --fractions 0.005,0.01,0.02,0.05 --work /tmp/bench-guard \\
        --out benchmarks/results/sparse_guard.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_crystallinity import _provenance, write_doc  # noqa: E402

TOLERANCE = 0.01
SAMPLING_SEED = 0


def summarise_run(doc: dict) -> dict:
    """Before/after/parts per fraction and reference from a scored target."""
    curve = doc["curve"]
    out: dict = {"fractions": doc["fractions"], "sampled": doc["sampled"],
                 "guard_choice": doc["guard_choice"], "refs": {}}
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


def cache_target(paths: list[Path], run: Path, model: str, ensemble: int) -> Path:
    """Train the ensemble on ``paths[:-1]``, predict ``paths[-1]``; cache the maps (npz)."""
    from stem2eds.experiments import sparse
    from stem2eds.train.config import TrainConfig

    cache = run.parent / f"{run.name}.npz"
    if cache.is_file():
        return cache
    plan = sparse.plan_sparse(paths, run, [0.01], "random", TrainConfig(model=model),
                              ensemble, SAMPLING_SEED)
    ens = sparse.fit_ensemble(plan, quiet=True)
    maps = sparse.load_target_maps(plan, ens)
    refs = maps.references
    tmp = cache.with_suffix(".part.npz")
    np.savez(tmp, mean=ens.mean, std=ens.std, measured=maps.measured, truth=refs["truth"],
             eds=refs["eds"], elements=np.array(ens.elements))
    tmp.replace(cache)
    return cache


def score_target(cache: Path, fractions: list[float]) -> dict:
    """Every sparse estimate at every fraction, scored on the unsampled positions."""
    from stem2eds import metrics
    from stem2eds.analysis.sparse_eds import METHODS, complete_sparse, sample_positions

    d = np.load(cache)
    elements = [str(e) for e in d["elements"]]
    refs = {"eds": d["eds"], "truth": d["truth"]}
    curve = {m: {ref: [] for ref in refs} for m in METHODS}
    choice, sampled = {}, {}
    for f in fractions:
        mask = sample_positions(d["measured"].shape[1:], f, "random", SAMPLING_SEED)
        details: dict = {}
        est = complete_sparse(d["mean"], d["measured"], mask, d["std"], details)
        key = f"{100 * f:g}"
        sampled[key] = int(mask.sum())
        choice[key] = dict(zip(elements, details["guard"]["choice"]))
        for m in METHODS:
            for ref, values in refs.items():
                r = metrics.element_metrics(est[m], values, elements, ~mask)["pearson"]
                curve[m][ref].append(float(np.nanmean(list(r.values()))))
    return {"fractions": fractions, "curve": curve, "guard_choice": choice, "sampled": sampled}


def bench_series(folder: Path, work: Path, model: str, ensemble: int,
                 fractions: list[float], targets: list[str] | None = None) -> dict:
    """Score every scan of a series as the new one (the others train)."""
    scans = sorted(folder.glob("scan_*.h5"))
    result = {}
    for target in scans:
        if targets and target.stem not in targets:
            continue
        train = [s for s in scans if s != target]
        t0 = time.perf_counter()
        cache = cache_target([*train, target], work / target.stem, model, ensemble)
        entry = summarise_run(score_target(cache, fractions))
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        result[target.stem] = entry
        print(target.stem, {ref: (round(v["worst_margin_before"], 4),
                                  round(v["worst_margin_after"], 4))
                            for ref, v in entry["refs"].items()}, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", action="append", required=True,
                    help="LABEL=FOLDER of raw simulated bundles (repeatable)")
    ap.add_argument("--role", choices=("design", "held-out"), required=True,
                    help="design: used while choosing the guard; held-out: scored once after")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-sparse-guard"))
    ap.add_argument("--model", default="ridge")
    ap.add_argument("--ensemble", type=int, default=2)
    ap.add_argument("--fractions", default=None,
                    help="comma-separated fractions (default: the experiment's FRACTIONS)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--targets", default=None,
                    help="comma-separated scan names to use as the new scan (default: all)")
    args = ap.parse_args(argv)
    from stem2eds.analysis.sparse_eds import FRACTIONS
    from stem2eds.analysis.sparse_guard import STACK_PRIOR_VAR

    fractions = ([float(f) for f in args.fractions.split(",")] if args.fractions
                 else list(FRACTIONS))
    doc = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    doc.setdefault("series", {})
    for item in args.series:
        label, folder = item.split("=", 1)
        scans = bench_series(Path(folder), args.work / label, args.model, args.ensemble,
                             fractions, args.targets.split(",") if args.targets else None)
        if not scans:
            continue
        ok = {ref: {"before": all(all(s["refs"][ref]["ok_before"]) for s in scans.values()),
                    "after": all(all(s["refs"][ref]["ok_after"]) for s in scans.values())}
              for ref in next(iter(scans.values()))["refs"]}
        doc["series"][label] = {"folder": folder, "role": args.role, "model": args.model,
                                "ensemble": args.ensemble, "scans": scans,
                                "criterion_met_on_every_scan_and_fraction": ok,
                                "provenance": _provenance()}
        print(label, ok, flush=True)
    doc["criterion"] = (f"headline (model_uk) mean r >= max(model_linear, best interpolation) "
                        f"- {TOLERANCE} at every fraction; 'before' = model_uk_unguarded")
    doc["design"] = ("guard = one stack of model_uk_unguarded and interp_gp on model_linear for "
                     "all elements (stem2eds.analysis.sparse_guard.pooled_stacking_weights), "
                     f"prior variance {STACK_PRIOR_VAR}; chosen on the series with role 'design'")
    doc["provenance"] = _provenance()
    write_doc(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
