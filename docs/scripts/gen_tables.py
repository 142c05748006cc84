"""Fill the measurement tables of the documentation from benchmarks/results/*.json.

Run by mkdocs-gen-files at build time. A page asks for a table with a line

    <!-- table: NAME -->

and this script replaces it by the Markdown table NAME (see ``TABLES``), followed
by a line that names the JSON file, the commit and the machine that produced it.
Nothing in these tables is typed by hand. The build fails (an exception) when a
page asks for an unknown table, when a table is asked for by no page, or when a
JSON file is missing or lacks a field a table needs.

Provenance comes from the JSON's top-level ``provenance`` object (``commit``,
``machine``, ``date``, ``note``). A results file written later without one (the
benchmark scripts do not write it) gets its commit from ``git log`` and is marked
as such, so a rerun of a benchmark never breaks the build, and never passes for
something it is not.

Run by hand (``python docs/scripts/gen_tables.py [NAME ...]``) it prints the
tables instead of touching the pages.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- table: ([a-z0-9_]+) -->[ \t]*$", re.M)


# -- inputs ---------------------------------------------------------------------

def load(name: str) -> dict:
    path = RESULTS / name
    if not path.is_file():
        raise FileNotFoundError(f"docs: measurement file {path} is missing")
    return json.loads(path.read_text())


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def provenance(name: str, data: dict) -> dict:
    prov = data.get("provenance")
    if prov:
        for key in ("commit", "machine", "date"):
            if key not in prov:
                raise KeyError(f"docs: {name}: provenance has no '{key}'")
        return prov
    rel = f"benchmarks/results/{name}"
    if _git("status", "--porcelain", "--", rel):
        commit, date = "uncommitted changes", "not recorded"
    else:
        commit, _, date = _git("log", "-1", "--format=%H %cI", "--", rel).partition(" ")
        commit = commit or "not recorded"
        date = date or "not recorded"
    return {"commit": commit, "date": date, "machine": "not recorded",
            "note": "This file has no provenance field; the commit is the last one that "
                    "changed it (git log)."}


def source_line(*names: str) -> str:
    parts = []
    for name in names:
        prov = provenance(name, load(name))
        commit = prov["commit"]
        commit = f"`{commit[:9]}`" if re.fullmatch(r"[0-9a-f]{40}", commit) else commit
        text = (f"`benchmarks/results/{name}`: commit {commit} ({prov['date']}); "
                f"machine: {prov['machine']}.")
        if prov.get("note"):
            text += f" {prov['note']}"
        parts.append(text)
    return "*Source: " + " ".join(parts) + "*"


# -- formatting -----------------------------------------------------------------

def r3(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "|" + "---|" * len(header)
    lines = ["| " + " | ".join(header) + " |", align]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- the tables -------------------------------------------------------------------

def _compare(name: str) -> str:
    data = load(name)
    setup = data["setup"]
    models = data["models"]
    elements = list(next(iter(models.values()))["summary"]["vs_eds"]["pearson_per_element"])
    header = (["model", "trainable params", "train s (epochs)", "predict patterns/s",
               "mean r vs EDS"] + [f"r {el}" for el in elements]
              + ["MAE vs EDS", "mean r vs truth"])
    rows = []
    for label, m in models.items():
        eds, truth = m["summary"]["vs_eds"], m["summary"]["vs_truth"]
        own = m.get("run_default", True)
        if m["parameters"]:
            params = f"{m['parameters']:,}"
        else:
            params = "(linear)"
        if not own:
            train = "(same run)"
        elif not m["epochs_run"]:
            train = f"{m['train_seconds']:.0f} (closed form)"
        else:
            stop = "limit" if m["epochs_run"] >= setup["max_epochs"] else "early stop"
            train = f"{m['train_seconds']:.0f} ({m['epochs_run']}, {stop})"
        if own and "filtered" in m:
            label = f"**{label}** (as its run predicts)"
        rows.append([label, params, train, f"{m['predict_patterns_per_second']:,.0f}",
                     r3(eds["mean_pearson"])]
                    + [r3(eds["pearson_per_element"][el]) for el in elements]
                    + [f"{eds['mean_mae']:.4f}", r3(truth["mean_pearson"])])
    caption = (f"Trained on `{setup['train_scan']}` ({setup['split']} 80:20 split, at most "
               f"{setup['max_epochs']} epochs, patience {setup['patience']}, learning rate "
               f"{setup['learning_rate']:g}, seed {setup['seed']}, {setup['threads']} torch "
               f"thread(s), torch {setup['torch']}); predicted "
               f"{', '.join(f'`{s}`' for s in setup['test_scans'])}; {setup['scan_shape']} "
               f"positions, {setup['detector']}x{setup['detector']} patterns binned by "
               f"{setup['bin_factor']}. Pearson r and MAE: mean over the predicted scans "
               "against their blurred EDS; 'vs truth': against the simulator's noise-free "
               "composition.")
    return table(header, rows) + "\n\n" + caption + "\n\n" + source_line(name)


def compare_models() -> str:
    return _compare("compare_models.json")


def compare_models_bin4() -> str:
    return _compare("compare_models_bin4_radial_ridge.json")


ABLATION_FILES = ("ablation_heads.json", "ablation_heads_seed5.json")
ABLATION_COLUMNS = {"ridge": "ridge", "ridge+filter": "ridge + filter",
                    "linear": "linear head + filter",
                    "mlp": "linear + MLP correction + filter (**default**)"}


def ablation_heads() -> str:
    rows = []
    for name in ABLATION_FILES:
        data = load(name)
        series = data.get("provenance", {}).get("series_command", data["series"])
        for i, (setting, runs) in enumerate(data["runs"].items()):
            missing = set(ABLATION_COLUMNS) - set(runs)
            if missing:
                raise KeyError(f"docs: {name}: {setting} lacks {sorted(missing)}")
            n_train = len(runs["ridge"]["train_scans"])
            best = max(runs[v]["mean_pearson"] for v in ABLATION_COLUMNS)
            cells = [(f"**{r3(runs[v]['mean_pearson'])}**"
                      if runs[v]["mean_pearson"] == best else r3(runs[v]["mean_pearson"]))
                     for v in ABLATION_COLUMNS]
            rows.append([f"`{series}`" if i == 0 else "", f"{setting} ({n_train})"] + cells)
    header = ["series", "setting (training scans)"] + list(ABLATION_COLUMNS.values())
    caption = ("Mean Pearson r over the elements and the predicted scans, against their "
               "blurred EDS. extrapolate: train on the first scan, predict the others; "
               "interpolate: first and last, predict those between; pooled: every scan but "
               "the middle one, predict it. Best of each row in bold.")
    return (table(header, rows) + "\n\n" + caption + "\n\n"
            + source_line(*ABLATION_FILES))


def bench_full() -> str:
    name = "full.json"
    results = load(name)
    st = results["stages"]
    d = results["data"]

    def wall_cpu(r):
        return f"{r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s)"

    rows = [["convert (MRC -> bundle)", "-", st["convert"]["patterns_per_s"],
             st["convert"]["peak_rss_mb"], wall_cpu(st["convert"])],
            ["preprocess (raw -> preprocessed bundle)", "-", st["preprocess"]["patterns_per_s"],
             st["preprocess"]["peak_rss_mb"], wall_cpu(st["preprocess"])]]
    for model, r in st["train"].items():
        shape = "x".join(map(str, r["input_shape"]))
        rows.append([f"train, per epoch ({r['n_train']:,} patterns)", f"{model} ({shape})",
                     r["train_patterns_per_s"], r["peak_rss_mb"],
                     f"{r['seconds_per_epoch']:.1f} s / epoch"])
    for model, r in st["predict"].items():
        shape = "x".join(map(str, r["input_shape"]))
        rows.append([f"predict (whole process, raw bundle of {r['n_patterns']:,})",
                     f"{model} ({shape})", r["patterns_per_s"], r["peak_rss_mb"], wall_cpu(r)])
        if r.get("marginal_patterns_per_s"):
            what = "2x scan minus 1x"
            if "short_scan" in r:
                what = f"{r['n_patterns']:,} minus {r['short_scan']['n_patterns']:,} patterns"
            rows.append([f"predict, without start-up ({what})", f"{model} ({shape})",
                         r["marginal_patterns_per_s"], r["peak_rss_mb"], "-"])
    for model, r in st.get("model_only", {}).items():
        shape = "x".join(map(str, r["input_shape"]))
        rows.append([f"model alone (preprocessed batch of {r['batch']:,} in memory)",
                     f"{model} ({shape})", r["patterns_per_s"], None, "-"])
    body = [[a, b, f"{c:,.0f}", "-" if m is None else f"{m:,.0f}", t] for a, b, c, m, t in rows]
    header = ["stage", "model (input)", "patterns/s", "peak RSS (MB)", "wall time (CPU time)"]
    s = results["summary"]
    caption = (f"{d['n_patterns']:,} patterns of {d['detector'][0]}x{d['detector'][1]} "
               f"{d['dtype']} ({d['bundle_mb']:,.0f} MB bundle); training scan "
               f"{d['n_train_scan_patterns']:,} patterns; device {results['device']}. "
               f"Default model: {s['speedup_vs_paper']:.1f}x the paper CNN's predict "
               "throughput (the CNN's rate without start-up).")
    targets = results.get("targets")
    if targets:
        met = results.get("targets_met", {})
        trows = [["`stem2eds predict` patterns/s (whole process)",
                  f"{targets['predict_patterns_per_s']:,.0f}", f"{s['predict_patterns_per_s']:,.0f}"],
                 ["speed-up over the paper CNN", f"{targets['speedup_vs_paper']:.0f}x",
                  f"{s['speedup_vs_paper']:.1f}x"],
                 ["peak RSS while predicting (MB)", f"{targets['peak_rss_mb']:,.0f}",
                  f"{s['predict_peak_rss_mb']:,.0f}"]]
        keys = ("predict_patterns_per_s", "speedup_vs_paper", "peak_rss_mb")
        for row, key in zip(trows, keys):
            row.append("met" if met.get(key) else "not met")
        caption += "\n\n" + table(["target (issue 8)", "target", "measured", ""], trows)
    return (table(header, body, "|---|---|---:|---:|---:|") + "\n\n" + caption + "\n\n"
            + source_line(name))


def bench_train() -> str:
    name = "bench_train.json"
    b = load(name)
    shape = "x".join(map(str, b["input_shape"]))
    rows = [["model", f"`{b['model']}` (input {shape}, from {b['detector']}x{b['detector']})"],
            ["training patterns (one scan)", f"{b['patterns']:,}"],
            ["raw bundle to finished run folder (preprocessing included)",
             f"{b['train_seconds_total']:.1f} s"],
            ["epochs run (best epoch)",
             f"{b['epochs_run']} ({b['best_epoch']}){', early stop' if b['stopped_early'] else ''}"],
            ["seconds per epoch", f"{b['seconds_per_epoch']:.2f}"],
            ["predicting the scan from the raw bundle", f"{b['predict_seconds_incl_preprocessing']:.2f} s "
             f"({b['predict_patterns_per_second']:,.0f} patterns/s)"],
            ["torch threads / CPUs", f"{b['threads']} / {b['cpu_count']}"]]
    cfg = b.get("config", {})
    caption = (f"Training settings: learning rate {cfg.get('learning_rate', '?'):g}, patience "
               f"{cfg.get('patience', '?')}, at most {cfg.get('max_epochs', '?')} epochs, "
               f"{cfg.get('split', '?')} split, targets {', '.join(cfg.get('targets', []))}.")
    return table(["", "measured"], rows) + "\n\n" + caption + "\n\n" + source_line(name)


def _s_mb(stage: dict | None) -> str:
    if not stage:
        return "-"
    return f"{stage['seconds']:,.1f} s ({stage['peak_rss_mb']:,.0f} MB)"


def scaling() -> str:
    name = "scaling.json"
    data = load(name)
    summary = data["summary"]
    rows = []
    for r in data["sizes"]:
        pred = r["predict"]
        marginal = pred.get("marginal_patterns_per_s")
        rows.append([f"{r['n_patterns']:,}", r["bundle"], _s_mb(r.get("convert")),
                     _s_mb(r.get("preprocess")), _s_mb(pred), f"{pred['patterns_per_s']:,.0f}",
                     "-" if marginal is None else f"{marginal:,.0f}",
                     f"{summary['predict_vs_paper'][r['label']]:,.0f}x"])
    header = ["patterns", "bundle", "convert: wall (peak RSS)", "preprocess: wall (peak RSS)",
              "predict: wall (peak RSS)", "predict patterns/s", "predict, marginal patterns/s",
              "predict vs paper CNN"]
    paper = data["paper_cnn"]
    exps = ", ".join(f"{k} {v:.2f}" for k, v in summary["time_exponent"].items()
                     if v is not None)
    rss = ", ".join(f"{k} {lo:,.0f}-{hi:,.0f} MB"
                    for k, (lo, hi) in summary["peak_rss_mb_range"].items())
    d = data["data"]
    caption = (f"Whole `stem2eds` processes on {d['detector'][0]}x{d['detector'][1]} "
               f"{d['dtype']} patterns (scans of {d['scan_columns']} columns), model "
               f"{d['model']} on {d['device']}. Marginal: the extra patterns over the extra "
               f"seconds from the size above (start-up removed). Paper CNN (256x256 input) "
               f"in the same run: {paper['patterns_per_s']:,.1f} patterns/s ({paper['what']}). "
               f"Exponent of time against patterns (1 = linear): {exps or '-'}. Peak RSS "
               f"range: {rss}.")
    if data.get("skipped"):
        caption += " Not measured: " + "; ".join(data["skipped"]) + "."
    return (table(header, rows, "|---:|---|---:|---:|---:|---:|---:|---:|") + "\n\n"
            + caption + "\n\n" + source_line(name))


def distributed() -> str:
    name = "distributed.json"
    data = load(name)
    s = data["summary"]
    paths = [("single process (threads)", data["single_process"], 1.0),
             (f"Dask LocalCluster, {data['data']['workers']} workers", data["dask"],
              s["dask_fraction_of_single"])]
    rows = []
    for label, entry, frac in paths:
        both = entry["preprocess"]["seconds"] + entry["predict"]["seconds"]
        rate = data["data"]["n_patterns"] / both / data["data"]["cores_per_run"]
        rows.append([label, f"{entry['preprocess']['seconds']:.2f} s",
                     f"{entry['predict']['seconds']:.2f} s", f"{rate:,.0f}", f"{frac:.0%}"])
    lt = data["libertem"]
    if "predict" in lt:
        rows.append([f"LiberTEM PredictUDF, {data['data']['workers']} workers", "-",
                     f"{lt['predict']['seconds']:.2f} s",
                     f"{s['libertem_predict_patterns_per_s_per_core']:,.0f} (predict)",
                     f"{s['libertem_fraction_of_single_predict']:.0%} (of predict)"])
    header = ["path", "preprocess", "predict", "patterns/s per core", "of single process"]
    runs = data["dask"]["preprocess"]["runs"][-1]
    pruns = data["dask"]["predict"]["runs"][-1]
    cost = data["setup_costs"]
    # predict tasks of a ring model return ring statistics (when recorded), not patterns
    pickled = {"preprocess": cost["pickle_one_task_result_seconds"],
               "predict": cost.get("pickle_one_ring_task_result_seconds",
                                   cost["pickle_one_task_result_seconds"])}
    over = [[stage, r["tasks"], f"{r.get('compute_seconds', 0):.2f}",
             f"{r['tasks'] * pickled[stage]:.2f}",
             f"{r['worker_busy_fraction']:.0%}", f"{r['worker_cpu_seconds']:.1f}",
             f"{r['client_cpu_seconds']:.1f}"]
            for stage, r in (("preprocess", runs), ("predict", pruns))]
    caption = (f"{data['data']['n_patterns']:,} patterns of 256x256 uint16, page cache "
               f"warm; best of the repeats; cluster start-up not counted "
               f"({data['dask']['cluster_start_seconds']:.1f} s). Target: "
               f"{s['target']:.0%} of the single-process rate per core."
               + (f" CPU time per pattern, all processes: single process "
                  f"{s['cpu_ms_per_pattern']['single_process']:.2f} ms, Dask "
                  f"{s['cpu_ms_per_pattern']['dask']:.2f} ms."
                  if "cpu_ms_per_pattern" in s else "")
               + ("" if "predict" in lt else f" LiberTEM: {lt.get('skipped', 'not run')}."))
    where = (f"Opening the bundle (checks and the offset of every chunk) costs "
             f"{cost['open_bundle_seconds']:.3f} s, {cost['open_bundle_seconds_if_per_task']:.2f} s"
             f" if every task paid it (each worker now opens it once); pickling one task's "
             f"result ({cost['task_result_mb']:.0f} MB) {cost['pickle_one_task_result_seconds']:.3f} s.")
    return (table(header, rows, "|---|---:|---:|---:|---:|") + "\n\n" + caption + "\n\n"
            + table(["Dask run (last repeat)", "tasks", "task compute (s)",
                     "pickling results, estimate (s)", "workers busy", "worker CPU (s)",
                     "client CPU (s)"], over,
                    "|---|---:|---:|---:|---:|---:|---:|")
            + "\n\n" + where + "\n\n" + source_line(name))


def engines() -> str:
    """Per physics engine: every model and strategy, the information bound and the EDS ceiling."""
    name = "engines.json"
    data = load(name)
    elements = ("O", "Si", "Ge", "Sb", "Te")
    header = ["engine (held-out series)", "model", "strategy", *elements, "mean"]
    rows = []

    def row(label, model, strategy, r):
        vals = [r.get(el) for el in elements]
        mean = sum(vals) / len(vals) if all(v is not None for v in vals) else None
        rows.append([label, model, strategy, *(r3(v) for v in vals), f"**{r3(mean)}**"])

    for engine, entry in data["engines"].items():
        series = entry["series"]
        settings = series["provenance"].get("settings", {})
        label = (f"{engine}, seed {settings.get('seed', '?')} ({series['n_scans']} scans of "
                 f"{series['scan_shape'][0]}x{series['scan_shape'][1]}, "
                 f"{series['detector'][0]} px)")
        ceiling = None
        for model, by_strategy in entry["models"].items():
            for strategy, res in by_strategy.items():
                row(label, f"`{model}`" + (" (default)" if model == "radial" else ""),
                    strategy, res["pearson"])
                ceiling = ceiling or res.get("ceiling")
        for model, res in entry.get("bound", {}).items():
            row(label, f"information bound, `{model}`", "leave-one-out, noise-free targets",
                res["pearson"])
        if ceiling:
            row(label, "EDS noise ceiling", "measured (filtered) EDS vs truth", ceiling)
    caption = ("Pearson r per element against the simulator's noise-free composition of "
               "the predicted scans (uncalibrated maps). Information bound: the model trained "
               "leave-one-scan-out on the noise-free composition of all other scans instead "
               "of their EDS. The series were simulated with seeds chosen before any of these "
               "runs and never used while making design choices.")
    settings = data["provenance"].get("settings", {})
    if settings:
        caption += (f" Training: bin {settings.get('bin_factor')}, at most "
                    f"{settings.get('max_epochs')} epochs (patience {settings.get('patience')}).")
    return table(header, rows) + "\n\n" + caption + "\n\n" + source_line(name)


def _repeats(variant: dict, n: int) -> str:
    """Every repeat's wall time, and the rate of the median one."""
    seconds = sorted(r["seconds"] for r in variant.get("repeats", [variant]))
    median = seconds[len(seconds) // 2]
    return f"{', '.join(f'{s:.2f}' for s in seconds)} ({n / median:,.0f})"


def fused() -> str:
    """The fused ring-statistics path against the ordinary one (benchmarks/bench_fused.py)."""
    name = "fused.json"
    data = load(name)
    fe, pr, acc, tr = data["frontend_cpu"], data["predict"], data["accuracy_simulated"], data["train"]
    cur, fus = pr["current"], pr["fused"]
    rows = [
        ["front end alone, CPU per pattern (1 thread)",
         f"{fe['ordinary']['cpu_us_per_pattern']:.0f} µs",
         f"{fe['fused']['cpu_us_per_pattern']:.0f} µs ({fe['fused_over_ordinary']:.1f}x less)"],
        [f"`stem2eds predict`, {pr['n_patterns']:,} patterns, whole process: wall (CPU)",
         f"{cur['seconds']:.1f} s ({cur['cpu_seconds']:.1f} s)",
         f"{fus['seconds']:.1f} s ({fus['cpu_seconds']:.1f} s)"],
        ["patterns/s, whole process (best run)", f"{cur['patterns_per_s']:,.0f}",
         f"{fus['patterns_per_s']:,.0f}"],
        ["every run: wall s (patterns/s of the median run)", _repeats(cur, pr["n_patterns"]),
         _repeats(fus, pr["n_patterns"])],
        ["peak RSS", f"{cur['peak_rss_mb']:,.0f} MB", f"{fus['peak_rss_mb']:,.0f} MB"],
    ]
    if "fused_before" in pr:  # the same bundle and run with the code before a change
        rows.append(["fused, the code before this run's change: every run", "-",
                     _repeats(pr["fused_before"], pr["n_patterns"])])
    if "fused_torch_head" in pr:  # runs without head.npz predict with the torch model
        th = pr["fused_torch_head"]
        rows.append(["fused, torch head (runs without `head.npz`): wall (CPU), peak RSS", "-",
                     f"{th['seconds']:.1f} s ({th['cpu_seconds']:.1f} s), "
                     f"{th['peak_rss_mb']:,.0f} MB"])
    if "startup" in pr:
        st = pr["startup"]
        rows.append(["torch imported by the fused predict", "yes",
                     "yes" if st["torch_imported"] else "no"])
    rows += [
        ["paper CNN in the same run, patterns/s without start-up",
         f"{data['paper']['marginal_patterns_per_s']:.1f}",
         f"ratio {data['summary']['speedup_vs_paper']:.0f}x (whole process)"],
        [f"largest prediction difference, {acc['engine']} scan ({acc['n_patterns']} patterns)",
         "-", f"{acc['max_abs_prediction_diff']:.1e} atomic fraction"],
        ["largest ring-mean difference (same scan)", "-",
         f"{acc['max_abs_ring_feature_diff']:.0e}"],
        *([[f"largest prediction difference, multislice scan ({ms['n_patterns']} patterns, "
            "run trained on multislice scans)", "-",
            f"{ms['max_abs_prediction_diff']:.1e} atomic fraction"]]
          if isinstance(ms := acc.get("multislice"), dict) else []),
        ["filling the training cache from the raw bundle", "-",
         f"{tr['cache_fill']['patterns_per_s']:,.0f} patterns/s"],
        [f"one epoch of the default on {tr['epoch_100k']['n_patterns']:,} cached rows "
         f"(batch {tr['epoch_100k']['batch_size']})", "-", f"{tr['epoch_100k']['seconds']:.1f} s"],
    ]
    prov = data["provenance"]
    caption = ("Load average before the run: "
               + ", ".join(f"{v:.2f}" for v in prov.get("load_average_before", [])) + ".")
    return (table(["what", "ordinary path", "fused path"], rows) + "\n\n" + caption + "\n\n"
            + source_line(name))


def sparse_guard() -> str:
    """The sparse-completion guard per series and scan (benchmarks/bench_sparse_guard.py)."""
    name = "sparse_guard.json"
    data = load(name)
    rows, totals = [], {}
    for label, series in data["series"].items():
        role = series["role"]
        for scan, entry in series["scans"].items():
            cells = [f"{label} ({role})", scan,
                     ", ".join(f"{100 * f:g}" for f in entry["fractions"])]
            for ref in ("truth", "eds"):
                r = entry["refs"][ref]
                n = len(r["ok_after"])
                cells += [f"{r['worst_margin_before']:+.3f}", f"{r['worst_margin_after']:+.3f}",
                          f"{sum(r['ok_before'])}/{n}", f"{sum(r['ok_after'])}/{n}"]
                t = totals.setdefault((role, ref), [0, 0, 0, 0.0, 0.0])
                t[0] += sum(r["ok_before"])
                t[1] += sum(r["ok_after"])
                t[2] += n
                t[3] = min(t[3], r["worst_margin_before"])
                t[4] = min(t[4], r["worst_margin_after"])
            rows.append(cells)
    header = ["series", "new scan", "fractions (%)",
              "truth: worst before", "worst after", "within 0.01 before", "after",
              "EDS: worst before", "worst after", "within 0.01 before", "after"]
    summary = [f"- **{role}**, against the {'truth' if ref == 'truth' else 'blurred EDS'}: "
               f"{t[1]} of {t[2]} points within 0.01 (unguarded kriging {t[0]}); worst "
               f"margin {t[4]:+.3f} (unguarded {t[3]:+.3f})"
               for (role, ref), t in sorted(totals.items())]
    return (table(header, rows) + "\n\n" + "\n".join(summary) + "\n\n" + source_line(name)
            + f" Criterion: {data['criterion']}. Design: {data['design']}.")


def sparse_guard_variants() -> str:
    """Guard variants on the design and held-out series (bench_sparse_guard_variants.py)."""
    name = "sparse_guard_variants.json"
    data = load(name)
    labels = {"per_element": "per-element stack (previous round)",
              "pooled_0.3_min": "pooled, prior variance 0.3, too-few-samples rule (first round)",
              "pooled_0.1_min": "pooled, prior variance 0.1, too-few-samples rule (**kept**)",
              "pooled_0.1_min_linear": "kept rule + linear interpolation as a candidate "
                                       "(tried after all series were seen)",
              "pooled_0.1_min_distance": "kept rule, distance-matched left-out residuals "
                                         "(tried after all series were seen)",
              "unguarded": "unguarded kriging", "calibrated": "calibrated model alone"}
    roles = [r for r in ("design", "held-out") if f"total_{r}" in data]
    header = ["rule"] + [f"{r}: fails of {data[f'total_{r}']['per_element']['points']} (worst)"
                         for r in roles]
    rows = [[labels.get(rule, rule.replace("_", " "))]
            + [f"{data[f'total_{r}'][rule]['fails']} ({data[f'total_{r}'][rule]['worst_margin']:+.3f})"
               for r in roles] for rule in data["rules"]]
    series = ", ".join(f"{k} ({v['role']})" for k, v in data["series"].items())
    return table(header, rows) + f"\n\nSeries: {series}.\n\n" + source_line(name)


def sparse_guard_separability() -> str:
    """Can left-out errors rank the guard's parts? (bench_sparse_guard_variants.py, in hindsight)."""
    name = "sparse_guard_variants.json"
    data = load(name)["separability"]
    header = ["samples", f"pairs of parts with r gap ≥ {data['clear_gap']:g}", "median gap",
              "left-out comparison undecided (\\|z\\| < 2)", "ranked the wrong way (z < 0)",
              "median z"]
    rows = []
    for b in data["bins"]:
        span = f"{b['n_min']}-{b['n_max']}" if b["n_max"] is not None else f"≥ {b['n_min']}"
        if not b["pairs"]:
            continue
        rows.append([span, b["pairs"], f"{b['median_gap']:.3f}", f"{b['undecided']:.0%}",
                     f"{b['wrong_way']:.0%}", f"{b['median_z']:+.2f}"])
    noise = data["noise_to_signal"]
    elements = list(next(iter(noise.values())))
    spans = []
    for engine in ("kinematic", "multislice"):
        values = [v for k, v in noise.items() if k.startswith(engine)]
        if values:
            spans.append([f"{engine} ({len(values)} series)"]
                         + [f"{min(v[e] for v in values):.2f}-{max(v[e] for v in values):.2f}"
                            for e in elements])
    noise_table = table(["EDS noise variance / map variance"] + elements, spans)
    share = ", ".join(f"{e} {v:.0%}" for e, v in data["element_share_of_gaps"].items())
    return (table(header, rows) + "\n\n" + noise_table
            + f"\n\nShare of each element in the per-element r differences of the clearly "
            f"ranked pairs (all sample counts): {share}."
            + f"\n\nThe best single part, picked per scan and fraction with "
            f"the truth, misses the criterion at {data['oracle_fails']} of {data['points']} "
            f"points ({len(data['per_series_oracle_fails'])} series).\n\n" + source_line(name))


def sparse_experiment() -> str:
    """Accuracy, dose saved, interval coverage and anomalies of one sparse run (metrics.json)."""
    name = "sparse_experiment.json"
    data = load(name)
    sampled = data["sampled_positions"]  # {percent: positions}
    cols = [f"{k} % ({n})" for k, n in sampled.items()]
    curve, labels = data["curve"], data["method_labels"]
    rows = [[f"`{m}`: {labels.get(m, m)}"] + [f"{v:.3f}" for v in curve[m]["eds"]]
            for m in curve]
    dose = data["dose_saved"]["eds"]
    rows.append(["F'/F, dose saved by `model_uk`"]
                + [f"{d['ratio']:.1f}" if d["reached"] else "(not reached)" for d in dose])
    parts = [table(["estimate (mean r, unsampled positions, vs blurred EDS)", *cols], rows)]
    truth = [[f"`{m}`"] + [f"{v:.3f}" for v in curve[m]["truth"]]
             for m in ("model_linear", "interp_gp", "model_uk")]
    parts.append(table(["vs noise-free truth", *cols], truth))
    only = data["model_only"]["eds"]["pearson"]
    parts.append("The model alone, no EDS of the new scan: r "
                 + ", ".join(f"{el} {v:.3f}" for el, v in only.items())
                 + f" (mean {sum(only.values()) / len(only):.3f}) against the blurred EDS.")
    unc = data.get("uncertainty")
    if unc:
        per = unc["per_fraction"]
        keys = list(per)
        cov = [["`model_uk`, measurement interval vs measured EDS"]
               + [f"{100 * per[k]['model_uk']['measured']['scaled_mean']:.1f}" for k in keys],
               ["`model_uk`, map interval vs blurred EDS"]
               + [f"{100 * per[k]['model_uk']['eds']['scaled_mean']:.1f}" for k in keys],
               ["`model_uk`, map interval vs truth"]
               + [f"{100 * per[k]['model_uk']['truth']['scaled_mean']:.1f}" for k in keys],
               ["ensemble, factor fitted vs measured EDS, vs measured"]
               + [f"{100 * per[k]['ensemble']['measured']['scaled_mean']:.1f}" for k in keys],
               ["ensemble, noise separated, vs blurred EDS"]
               + [f"{100 * per[k]['ensemble']['eds']['scaled_mean']:.1f}" for k in keys]]
        parts.append(table(["share inside the nominal 90 % interval, %", *cols], cov))
        ex = unc["extrapolation"]
        parts.append("No EDS of the new scan (`extrapolation`): the raw ensemble std covers "
                     f"{100 * ex['eds']['unscaled_mean']:.1f} % (blurred EDS) and "
                     f"{100 * ex['truth']['unscaled_mean']:.1f} % (truth); with the factor "
                     f"from the members' validation positions {100 * ex['eds']['scaled_mean']:.1f}"
                     f" % and {100 * ex['truth']['scaled_mean']:.1f} %.")
    an = data["anomaly"]
    comb, cr = an["combined"], an["crystallinity"]["detection"]
    parts.append(f"Anomalies: {an['flagged']} of {an['positions']} positions flagged, precision "
                 f"{comb['precision']:.2f}, recall {comb['recall']:.2f} against the "
                 f"{an['grain_positions']} grain positions; crystallinity map {cr['flagged']} "
                 f"crystalline, precision {cr['precision']:.2f}, recall {cr['recall']:.2f}.")
    parts.append(f"Scans {', '.join(data['train_scans'])} train, {data['target_scan']} is "
                 "the new scan; "
                 f"`{data['model']}` ensemble of {data['ensemble']}, up to {data['epochs']} "
                 "epochs; random sampling, seed " + str(data["sampling_seed"]) + ".")
    return "\n\n".join(parts) + "\n\n" + source_line(name)


def normalise_scan() -> str:
    """Leave-one-out r per element for each ``normalise``, per series; dose and thickness."""
    name = "normalise_scan.json"
    data = load(name)
    els = ["O", "Si", "Ge", "Sb", "Te"]
    labels = {"pattern": "`pattern` (default)", "scan": "`scan`", "none": "`none`",
              "normalise_on": "`pattern` (default)", "normalise_scan": "`scan`"}
    rows = []
    for role in ("development", "held_out"):
        for series, variants in data[role].items():
            for v, res in variants.items():
                r = res["truth"]
                rows.append([f"{series} ({role.replace('_', ' ')})", labels.get(v, v)]
                            + [r3(r[e]) for e in els] + [r3(sum(r[e] for e in els) / len(els))])
    parts = [table(["series", "normalise", *els, "mean"], rows)]
    dose = data.get("dose")
    if dose:
        cases = list(next(iter(dose["summary"].values())))
        drows = [[labels.get(v, v)] + [f"{c['mean_r_truth']:.3f} ({c['mean_abs_change_vs_training_dose']:.3f})"
                                       for c in res.values()]
                 for v, res in dose["summary"].items()]
        parts.append(table(["normalise", *[c.replace("_", " ") for c in cases]], drows))
        parts.append(dose["note"])
    return "\n\n".join(parts) + "\n\n" + source_line(name)


TABLES = {
    "normalise_scan": normalise_scan,
    "sparse_experiment": sparse_experiment,
    "sparse_guard_variants": sparse_guard_variants,
    "sparse_guard_separability": sparse_guard_separability,
    "sparse_guard": sparse_guard,
    "fused": fused,
    "engines": engines,
    "compare_models": compare_models,
    "compare_models_bin4": compare_models_bin4,
    "ablation_heads": ablation_heads,
    "bench_full": bench_full,
    "bench_train": bench_train,
    "scaling": scaling,
    "distributed": distributed,
}


def main() -> None:
    # Outside a MkDocs build, mkdocs_gen_files.open writes to the real docs/
    # pages, replacing their table markers for good: print tables instead.
    from mkdocs_gen_files.editor import FilesEditor

    if FilesEditor._current is None:
        names = sys.argv[1:] or sorted(TABLES)
        unknown = sorted(set(names) - set(TABLES))
        if unknown:
            raise SystemExit(f"unknown table(s) {unknown}; known: {sorted(TABLES)}")
        for name in names:
            print(f"<!-- table: {name} -->\n{TABLES[name]()}\n")
        return
    used = set()
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        names = MARKER.findall(text)
        if not names:
            continue
        unknown = sorted(set(names) - set(TABLES))
        if unknown:
            raise KeyError(f"docs: {page}: unknown table(s) {unknown}; known: {sorted(TABLES)}")
        used.update(names)
        text = MARKER.sub(lambda m: TABLES[m.group(1)](), text)
        with mkdocs_gen_files.open(page.relative_to(DOCS).as_posix(), "w") as fh:
            fh.write(text)
    unused = sorted(set(TABLES) - used)
    if unused:
        raise RuntimeError(f"docs: no page shows the table(s) {unused}")


main()
