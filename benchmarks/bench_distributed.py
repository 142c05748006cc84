"""Patterns/s per core of preprocess + predict: one process vs a 2-worker Dask cluster vs LiberTEM.

Three ways to run the same work on the same cores (``--workers``, default 2):

* **single process**: ``preprocess_bundle`` and ``predict_bundle`` with no
  scheduler (the thread pool of :class:`stem2eds.preprocess.executor.ThreadExecutor`);
* **Dask**: the same calls with ``scheduler=`` a ``LocalCluster`` of
  ``--workers`` single-threaded worker processes (the model runs in this
  process, the client);
* **LiberTEM**: ``stem2eds.libertem.predict_dataset`` (the ``PredictUDF``) on a
  LiberTEM Dask context of ``--workers`` workers, the bundle loaded as
  ``predict --engine libertem`` loads it (``load_dataset``: LiberTEM's memory
  maps at the patterns' byte offsets, :mod:`stem2eds.libertem.dataset`), when
  ``stem2eds.libertem`` exists (otherwise skipped, with a note in the JSON).

Every call runs ``--repeats`` times in this process (the first also pays
imports and, on a cluster, the workers' imports); the best is the rate.
Cluster start-up is timed apart: a cluster serves many scans, so the rate
leaves it out; the summary also gives the fractions with it counted once
(a cluster started for this one scan, as ``--scheduler local`` does). For
LiberTEM each repeat also times its two passes (origins, ``PredictUDF``)
and a read-only pass (``SumUDF``) with the workers' CPU seconds.
The per-core rate is patterns/s divided by the cores the run may use
(``--workers``; the single process uses that many preprocessing threads).
For the Dask runs the task stream says where the time goes: task count,
compute, transfer and deserialisation seconds on the workers, the workers'
and the client's CPU seconds (``getrusage``), idle worker time (wall x
workers - compute), the cost of pickling one task's result, and the cost of
opening the bundle (what each task paid before workers kept bundles open).

Usage::

    .venv/bin/python benchmarks/bench_distributed.py            # 12,000 patterns
    .venv/bin/python benchmarks/bench_distributed.py --patterns 2k --repeats 1 --out /tmp/d.json

Writes ``benchmarks/results/distributed.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scaling  # noqa: E402
import run as stage_bench  # noqa: E402

#: Per-core rate of a distributed path, as a fraction of the single process's (issue 18).
TARGET = 0.8


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _best(fn, repeats: int) -> dict:
    """Run ``fn()`` ``repeats`` times: every wall time and client CPU time, and the best."""
    runs = []
    for _ in range(repeats):
        c0, t0 = _cpu_self(), time.perf_counter()
        fn()
        runs.append({"seconds": round(time.perf_counter() - t0, 3),
                     "client_cpu_seconds": round(_cpu_self() - c0, 2)})
    best = min(runs, key=lambda r: r["seconds"])
    return {"seconds": best["seconds"], "client_cpu_seconds": best["client_cpu_seconds"],
            "runs": runs}


def _rates(r: dict, n: int, cores: int) -> dict:
    r["patterns_per_s"] = round(n / r["seconds"], 1)
    r["patterns_per_s_per_core"] = round(n / r["seconds"] / cores, 1)
    return r


def task_breakdown(stream: list, wall: float, workers: int) -> dict:
    """Where a Dask run's time went, from ``get_task_stream`` records."""
    actions: dict[str, float] = {}
    tasks = [t for t in stream if "_run_task" in str(t.get("key", ""))]
    for t in tasks:
        for ss in t.get("startstops", ()):
            actions[ss["action"]] = actions.get(ss["action"], 0.0) + ss["stop"] - ss["start"]
    compute = actions.get("compute", 0.0)
    return {"tasks": len(tasks), "other_tasks": len(stream) - len(tasks),
            **{f"{k}_seconds": round(v, 3) for k, v in sorted(actions.items())},
            "compute_seconds_per_task": round(compute / len(tasks), 4) if tasks else None,
            "worker_idle_seconds": round(max(0.0, wall * workers - compute), 3),
            "worker_busy_fraction": round(compute / (wall * workers), 3) if wall else None}


def single_process(bundle: Path, run_dir: Path, work: Path, repeats: int) -> dict:
    from stem2eds.predict.bundle import predict_bundle
    from stem2eds.preprocess import preprocess_bundle

    def pre():
        preprocess_bundle(bundle, work / "pre_single.h5", quiet=True)
        (work / "pre_single.h5").unlink()

    def pred():
        predict_bundle(run_dir, bundle, work / "pred_single.h5")
        (work / "pred_single.h5").unlink()

    return {"preprocess": _best(pre, repeats), "predict": _best(pred, repeats)}


def dask_path(bundle: Path, run_dir: Path, work: Path, repeats: int, workers: int) -> dict:
    from dask.distributed import get_task_stream

    from stem2eds.predict.bundle import predict_bundle
    from stem2eds.preprocess import preprocess_bundle
    from stem2eds.preprocess.distributed import dask_client

    t0 = time.perf_counter()
    # the cluster of ``--scheduler local`` (workers import the passes at start)
    with dask_client("local", workers=workers) as client:
        out: dict = {"cluster_start_seconds": round(time.perf_counter() - t0, 3)}
        for stage in ("preprocess", "predict"):
            target = work / f"{stage}_dask.h5"

            def call():
                if stage == "preprocess":
                    preprocess_bundle(bundle, target, quiet=True, scheduler=client)
                else:
                    predict_bundle(run_dir, bundle, target, scheduler=client)
                target.unlink()

            runs = []
            for _ in range(repeats):
                cpu0 = sum(client.run(_cpu_self).values())
                with get_task_stream(client) as ts:
                    r = _best(call, 1)
                r = {**r["runs"][0], "worker_cpu_seconds": round(
                    sum(client.run(_cpu_self).values()) - cpu0, 2)}
                r.update(task_breakdown(ts.data, r["seconds"], workers))
                runs.append(r)
            best = min(runs, key=lambda x: x["seconds"])
            r = {"seconds": best["seconds"], "client_cpu_seconds": best["client_cpu_seconds"],
                 "runs": runs}
            out[stage] = r
    return out


def libertem_path(bundle: Path, run_dir: Path, workers: int, repeats: int) -> dict:
    """``predict_dataset`` over LiberTEM's Dask executor; origins and prediction, as ``predict``.

    Besides the whole call (the rate), each repeat times its two passes
    apart (the origin sub-grid, then ``PredictUDF``) and LiberTEM's own
    reading of every frame (``SumUDF`` in the file's dtype: read and add), with
    the workers' and this process's CPU seconds.
    """
    try:
        from stem2eds.libertem import load_dataset, predict_dataset
    except ImportError as exc:
        return {"skipped": f"stem2eds.libertem is not available ({exc})"}
    from libertem.api import Context

    t0 = time.perf_counter()
    ctx = Context.make_with("dask", cpus=workers)
    out: dict = {"cluster_start_seconds": round(time.perf_counter() - t0, 3)}
    try:
        # as `predict --engine libertem` loads a bundle: read in place where it can be
        ds = load_dataset(ctx, bundle)
        out["dataset"] = type(ds).__name__
        out["partitions"] = int(ds.get_num_partitions())
        client = ctx.executor.client
        out["predict"] = _best(lambda: predict_dataset(ctx, ds, run_dir), repeats)
        out["passes"] = [_libertem_passes(ctx, ds, run_dir, client) for _ in range(repeats)]
    finally:
        ctx.close()
    return out


def _libertem_passes(ctx, ds, run_dir: Path, client) -> dict:
    """Wall and CPU seconds of each LiberTEM pass of one prediction, and of reading alone."""
    from libertem.udf.sum import SumUDF

    from stem2eds.libertem import engine
    from stem2eds.libertem.udf import PredictUDF, frames_method
    from stem2eds.predict.predictor import finished_run

    _, settings = finished_run(run_dir)

    def timed(fn) -> tuple[dict, object]:
        w0, c0, t0 = sum(client.run(_cpu_self).values()), _cpu_self(), time.perf_counter()
        value = fn()
        return {"seconds": round(time.perf_counter() - t0, 3),
                "worker_cpu_seconds": round(sum(client.run(_cpu_self).values()) - w0, 2),
                "client_cpu_seconds": round(_cpu_self() - c0, 2)}, value

    out = {}
    out["origins"], origins = timed(lambda: engine.fit_dataset_origins(ctx, ds, settings))
    roi = engine.crop_roi(settings, engine._nav_shape(ds))
    udf = PredictUDF(run_dir, origins.fitted,
                     engine.beam_radius_for(settings, origins.probe_radius),
                     method=frames_method(ds, roi))
    out["predict_udf"], _ = timed(lambda: ctx.run_udf(ds, udf, roi=roi))
    out["predict_udf"]["method"] = udf.params.method
    # read in the file's dtype, as PredictUDF reads (the sum may wrap: only its time counts)
    out["read_only_sum_udf"], _ = timed(lambda: ctx.run_udf(ds, SumUDF(dtype=ds.dtype)))
    return out


def setup_costs(bundle: Path, n_tasks: int) -> dict:
    """What a task pays besides computing: opening the bundle, pickling its result."""
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.io.stream import PatternReader
    from stem2eds.preprocess.executor import TASK_PATTERNS

    t0 = time.perf_counter()
    for _ in range(3):
        with open_bundle(bundle) as scan:
            PatternReader(scan.diffraction).close()
    open_s = (time.perf_counter() - t0) / 3
    result = np.zeros((TASK_PATTERNS, 64, 64), np.float32)  # one task's binned patterns
    from stem2eds.features import RingGeometry

    # one task's ring statistics: at most mean, std and max over the 64x64 binned rings
    width = RingGeometry((256, 256), 4, 1.0, "none", 1.0, ("mean", "std", "max")).n_features
    rings = np.zeros((TASK_PATTERNS, width), np.float32)

    def pickling(value) -> float:
        t0 = time.perf_counter()
        for _ in range(5):
            pickle.loads(pickle.dumps(value, protocol=5))
        return (time.perf_counter() - t0) / 5

    return {"open_bundle_seconds": round(open_s, 4),
            "open_bundle_seconds_if_per_task": round(open_s * n_tasks, 3),
            "pickle_one_task_result_seconds": round(pickling(result), 4),
            "task_result_mb": round(result.nbytes / 2**20, 1),
            "pickle_one_ring_task_result_seconds": round(pickling(rings), 5),
            "ring_task_result_kb": round(rings.nbytes / 2**10, 1),
            "note": "preprocess tasks return binned patterns; predict tasks of a ring "
                    "model (the default) return its ring statistics (at most mean, std "
                    "and max of every ring)"}


def prepare(work: Path, n: int, say) -> tuple[Path, Path]:
    """A real bundle of ``n`` patterns and a default run trained on 1,000 others."""
    say(f"convert {n} patterns")
    bundle, _ = bench_scaling.convert_real(work, n)
    say("train")
    train, _ = bench_scaling.convert_real(work, 1000, seed=1)
    run_dir = work / "run"
    stage_bench.cli("train", train, "--out", run_dir, "--epochs", "2", "--patience", "100",
                    "--quiet")
    return bundle, run_dir


def compare(results: dict, n: int, cores: int) -> dict:
    """Per-core rates of preprocess + predict and their fraction of the single process's."""
    def both(entry):
        return entry["preprocess"]["seconds"] + entry["predict"]["seconds"]

    single = n / both(results["single_process"]) / cores
    summary = {"single_process_patterns_per_s_per_core": round(single, 1), "target": TARGET}
    d = results["dask"]
    dask = n / both(d) / cores
    summary["dask_patterns_per_s_per_core"] = round(dask, 1)
    summary["dask_fraction_of_single"] = round(dask / single, 3)
    # CPU seconds per pattern (all processes): less moved by other jobs than wall time
    cpu_single = sum(results["single_process"][s]["client_cpu_seconds"]
                     for s in ("preprocess", "predict"))
    cpu_dask = sum(min(d[s]["runs"], key=lambda r: r["seconds"])[k]
                   for s in ("preprocess", "predict")
                   for k in ("client_cpu_seconds", "worker_cpu_seconds"))
    summary["cpu_ms_per_pattern"] = {"single_process": round(1000 * cpu_single / n, 3),
                                     "dask": round(1000 * cpu_dask / n, 3)}
    summary["dask_cpu_efficiency"] = round(cpu_single / cpu_dask, 3)
    # per stage: the same cores, so the fraction is the inverse ratio of the wall times
    summary["dask_fraction_by_stage"] = {
        s: round(results["single_process"][s]["seconds"] / d[s]["seconds"], 3)
        for s in ("preprocess", "predict")}
    # a cluster started for one scan pays its start-up once (the CLI's --scheduler local)
    summary["dask_fraction_with_cluster_start"] = round(
        n / (both(d) + d["cluster_start_seconds"]) / cores / single, 3)
    lt = results["libertem"]
    if "predict" in lt:
        # the UDF predicts from the raw bundle (origins included): compare with predict alone
        one_s = results["single_process"]["predict"]["seconds"]
        one = n / one_s / cores
        rate = n / lt["predict"]["seconds"] / cores
        summary["libertem_predict_patterns_per_s_per_core"] = round(rate, 1)
        summary["libertem_fraction_of_single_predict"] = round(rate / one, 3)
        summary["libertem_fraction_with_cluster_start"] = round(
            one_s / (lt["predict"]["seconds"] + lt["cluster_start_seconds"]), 3)
        # CPU seconds of both passes, all processes (the best repeat) against one process's
        passes = lt.get("passes", [])
        if passes:
            cpu_lt = min(sum(p[k][c] for k in ("origins", "predict_udf")
                             for c in ("worker_cpu_seconds", "client_cpu_seconds"))
                         for p in passes)
            summary["libertem_cpu_efficiency"] = round(
                results["single_process"]["predict"]["client_cpu_seconds"] / cpu_lt, 3)
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patterns", default="12k", help="scan size (a multiple of 100)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(bench_scaling.ROOT / "benchmarks" / "results"
                                        / "distributed.json"))
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    n = bench_scaling.parse_size(args.patterns)
    say = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    load_before = stage_bench._load()
    with tempfile.TemporaryDirectory(prefix="stem2eds-dist-", dir=args.work) as tmp:
        work = Path(tmp)
        bundle, run_dir = prepare(work, n, say)
        with open(bundle, "rb") as fh:  # page cache warm for every path alike
            while fh.read(1 << 26):
                pass
        results: dict = {}
        say("single process")
        results["single_process"] = single_process(bundle, run_dir, work, args.repeats)
        say("dask")
        results["dask"] = dask_path(bundle, run_dir, work, args.repeats, args.workers)
        say("libertem")
        results["libertem"] = libertem_path(bundle, run_dir, args.workers, args.repeats)
        tasks = results["dask"]["preprocess"]["runs"][-1]["tasks"]
        results["setup_costs"] = setup_costs(bundle, tasks)
    cores = args.workers
    for entry in ("single_process", "dask", "libertem"):
        for stage in ("preprocess", "predict"):
            if stage in results[entry]:
                _rates(results[entry][stage], n, cores)
    summary = compare(results, n, cores)
    prov = bench_scaling.provenance(load_before, stage_bench._load(),
                                    ["benchmarks/bench_distributed.py", *argv])
    prov["command"] = " ".join(["benchmarks/bench_distributed.py", *argv])
    doc = {"provenance": prov,
           "data": {"n_patterns": n, "detector": [256, 256], "dtype": "uint16",
                    "workers": args.workers, "cores_per_run": cores,
                    "page_cache": "warm (read once before)"},
           **results, "summary": summary}
    text = json.dumps(doc, indent=1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
