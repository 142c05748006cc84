"""Throughput and peak memory of every stage: convert, preprocess, train, predict.

Each stage runs as its own ``stem2eds`` command in a fresh subprocess, so its
wall time includes start-up and imports (what a user waits for) and its
peak resident memory (``ru_maxrss`` of that process, from ``os.wait4``) is
not mixed with other stages'. Training and prediction run for the default
model (``radial``, on 4x-binned patterns) and for the ``paper`` CNN on the
full-resolution patterns (``--bin 1``: the paper's 256x256 input), in the
same run.

Data: synthetic 16-bit patterns (direct disk of radius 3 px with a soft edge,
an amorphous ring whose strength and radius follow the composition, diffuse
background, Poisson noise, a drifting and jittering beam centre), made in
blocks of 512 patterns repeated over the scan, written as an MRC stack plus
one ``.npy`` EDS map per element, then converted by ``stem2eds convert``
(timed). The training scan is smaller than the predicted one; per-epoch
times come from a Lightning callback added in the training subprocess.

Usage::

    .venv/bin/python benchmarks/run.py --size small --out benchmarks/results/small.json
    .venv/bin/python benchmarks/run.py --size full --out benchmarks/results/full.json
    .venv/bin/python benchmarks/run.py --table benchmarks/results/full.json   # README table

Sizes (predicted scan, training scan, detector): ``tiny`` 10x8 and 10x8 at
64x64 (a CI smoke check); ``small`` 40x50 and 20x50 at 256x256; ``full``
120x100 (12,000 patterns, 1.5 GB) and 40x50 at 256x256.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ELEMENTS = ("O", "Ge", "Sb", "Te")
SIZES = {
    # scan: predicted (default model), train_scan: trained on (default model),
    # paper_scan: trained on and predicted by the paper CNN (it is hundreds of
    # times slower, so a smaller scan); its predict rate is also measured on a
    # scan ``paper_extra_rows`` rows longer, and the extra patterns over the
    # extra time give its rate without start-up (its best case). The extra
    # rows make that difference tens of seconds, so noise of a second or two
    # on a shared machine moves the rate by a few percent.
    "tiny": dict(scan=(10, 8), train_scan=(10, 8), paper_scan=(10, 8), detector=64, epochs=2,
                 paper_batch=64, paper_marginal=False),
    "small": dict(scan=(40, 50), train_scan=(20, 50), paper_scan=(2, 50), detector=256,
                  epochs=2, paper_batch=32, paper_extra_rows=4),
    "full": dict(scan=(120, 100), train_scan=(40, 50), paper_scan=(4, 50), detector=256,
                 epochs=2, paper_batch=32, paper_extra_rows=20),
}
#: Issue 8's targets for the whole ``stem2eds predict`` process on 2 CPU cores.
TARGETS = {"predict_patterns_per_s": 1500.0, "speedup_vs_paper": 20.0, "peak_rss_mb": 1536.0}

#: Prefix of every measured child: at exit, write the process's peak resident
#: memory (VmHWM of /proc/self/status) to the file named by argv[1]. Unlike
#: ``ru_maxrss``, which Linux carries over from the forking parent (so every
#: child would report at least the benchmark driver's own peak), VmHWM
#: belongs to the memory map that ``exec`` creates fresh.
_HWM = r"""
import atexit, sys
_hwm_path = sys.argv.pop(1)

def _dump_hwm():
    with open("/proc/self/status") as fh:
        kb = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))
    with open(_hwm_path, "w") as out:
        out.write(str(kb))

atexit.register(_dump_hwm)
"""

#: ``stem2eds ARGS...`` as the installed command runs it: ``main()`` without
#: arguments (it then skips the final garbage collections, and ``predict``
#: forks its origin measurement: :func:`stem2eds.cli.main`).
_CLI_CHILD = _HWM + r"""
from stem2eds.cli import main
sys.exit(main())
"""

_TRAIN_CHILD = _HWM + r"""
import json, sys, time
import lightning.pytorch as pl

epochs = []

class _EpochTimer(pl.Callback):
    def on_train_epoch_start(self, trainer, module):
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        epochs.append(time.perf_counter() - self.t0)

_init = pl.Trainer.__init__

def _with_timer(self, *args, **kwargs):
    kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [_EpochTimer()]
    _init(self, *args, **kwargs)

pl.Trainer.__init__ = _with_timer
from stem2eds.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as fh:
    json.dump(epochs, fh)
sys.exit(code)
"""


_MODEL_CHILD = _HWM + r"""
import json, sys, time
import numpy as np
import torch
from stem2eds.predict.predictor import load_run

run_dir, device, batch, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
predictor = load_run(run_dir, device=device)
shape = tuple(predictor.info["input_shape"])
x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
predictor.predict_patterns(x)  # warm-up (allocations, cuDNN autotuning)
if device == "cuda":
    torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(repeats):
    predictor.predict_patterns(x)
if device == "cuda":
    torch.cuda.synchronize()
print(json.dumps({"patterns_per_s": batch * repeats / (time.perf_counter() - t0),
                  "batch": batch, "threads": torch.get_num_threads()}))
"""


# -- synthetic data ------------------------------------------------------------

def synthetic_block(n: int, detector: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic patterns (n, Q, Q) uint16 and their compositions (n, E).

    The amorphous ring's radius and strength follow the composition, so the
    data are learnable; the beam centre drifts by 3 px across the block with
    0.15 px jitter.
    """
    rng = np.random.default_rng(seed)
    comp = rng.dirichlet(np.full(len(ELEMENTS), 4.0), size=n).astype(np.float32)
    s = detector / 256  # keep the physics at the same scale for any detector
    centre = (detector - 1) / 2
    origins = centre + np.stack([np.linspace(-1.5, 1.5, n), np.linspace(1, -1, n)], 1) * s \
        + rng.normal(0, 0.15, (n, 2))
    q = np.arange(detector, dtype=np.float32)
    out = np.empty((n, detector, detector), np.uint16)
    for lo in range(0, n, 64):  # 64 at a time bounds the float work arrays
        hi = min(n, lo + 64)
        o = origins[lo:hi]
        r = np.hypot(q[None, :, None] - o[:, 0, None, None], q[None, None, :] - o[:, 1, None, None])
        c = comp[lo:hi]
        ring_r = (38 + 10 * c[:, 0] - 6 * c[:, 3])[:, None, None] * s
        lam = (3000 / (1 + np.exp((r - 3 * s) / 0.4))
               + 30 * np.exp(-r / (40 * s))
               + (4 + 8 * c[:, 1:2, None]) * np.exp(-((r - ring_r) / (5 * s)) ** 2)
               + (2 + 6 * c[:, 2:3, None]) * np.exp(-((r - 1.8 * ring_r) / (7 * s)) ** 2))
        out[lo:hi] = rng.poisson(lam / (s * s) if s < 1 else lam).astype(np.uint16)
    return out, comp


def make_inputs(folder: Path, scan: tuple[int, int], detector: int, seed: int) -> dict:
    """Write ``scan.mrc`` (Rx*Ry frames) and ``eds/<El>.npy`` (Rx, Ry) into ``folder``."""
    import mrcfile

    folder.mkdir(parents=True, exist_ok=True)
    n = scan[0] * scan[1]
    block, comp = synthetic_block(min(512, n), detector, seed)
    mrc_path = folder / "scan.mrc"
    with mrcfile.new_mmap(str(mrc_path), shape=(n, detector, detector), mrc_mode=6,
                          overwrite=True) as mrc:
        for lo in range(0, n, len(block)):
            hi = min(n, lo + len(block))
            mrc.data[lo:hi] = block[:hi - lo]
    index = np.arange(n) % len(block)
    eds = folder / "eds"
    eds.mkdir(exist_ok=True)
    for e, el in enumerate(ELEMENTS):
        np.save(eds / f"{el}.npy", comp[index, e].reshape(scan))
    return {"mrc": mrc_path, "eds": eds, "n_patterns": n}


# -- measurement --------------------------------------------------------------

def measured(code: str, args: list) -> dict:
    """Run ``python -c code args...`` in a fresh process: wall seconds, peak RSS (MB), CPU seconds.

    ``code`` starts with :data:`_HWM`, so the child reports its own peak
    resident memory (threads included) when it exits.
    """
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as out_f, \
            tempfile.TemporaryFile() as err_f:
        hwm = Path(tmp) / "hwm"
        cmd = [sys.executable, "-c", code, str(hwm), *[str(a) for a in args]]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code_ = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
        if code_ != 0:
            raise RuntimeError(f"{' '.join(cmd[3:])} failed ({code_}):\n"
                               f"{err.decode(errors='replace')[-3000:]}")
        peak_kb = int(hwm.read_text())
    return {"seconds": round(wall, 3), "peak_rss_mb": round(peak_kb / 1024, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "stdout": out.decode(errors="replace").strip()}


def cli(*args) -> dict:
    """``stem2eds ARGS...`` in a fresh, measured process."""
    return measured(_CLI_CHILD, list(args))


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def run_benchmark(size: str, work: Path, device: str = "cpu", threads: int | None = None,
                  quiet: bool = False) -> dict:
    """Run every stage at ``size``; return the results dict (see module docstring)."""
    cfg = SIZES[size]
    det = cfg["detector"]
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    results: dict = {
        "size": size, "device": device, "created": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                  time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_before": _load()},
        "data": {"detector": [det, det], "dtype": "uint16", "scan_shape": list(cfg["scan"]),
                 "n_patterns": cfg["scan"][0] * cfg["scan"][1],
                 "train_scan_shape": list(cfg["train_scan"]),
                 "n_train_scan_patterns": cfg["train_scan"][0] * cfg["train_scan"][1]},
        "stages": {},
    }
    import torch

    results["machine"]["torch"] = torch.__version__
    results["machine"]["torch_threads"] = torch.get_num_threads()
    if device == "cuda":
        results["machine"]["gpu"] = torch.cuda.get_device_name(0)
    stages = results["stages"]
    n = results["data"]["n_patterns"]

    say(f"[{size}] writing synthetic inputs ({n} patterns of {det}x{det})")
    # scans of the same shape are converted once (fewer processes at the tiny size)
    big = make_inputs(work / "big", cfg["scan"], det, seed=0)
    raw = work / "raw.h5"
    same_train = tuple(cfg["train_scan"]) == tuple(cfg["scan"])
    small = None if same_train else make_inputs(work / "train", cfg["train_scan"], det, seed=1)
    raw_train = raw if same_train else work / "raw_train.h5"
    pr, pc = cfg["paper_scan"]
    paper_scans = {1: (pr, pc)}
    if cfg.get("paper_marginal", True):
        paper_scans[2] = (pr + cfg.get("paper_extra_rows", pr), pc)
    raw_paper = {k: (raw_train if shape == tuple(cfg["train_scan"]) else
                     work / f"raw_paper{k}.h5") for k, shape in paper_scans.items()}
    paper_inputs = {k: make_inputs(work / f"paper{k}", shape, det, seed=1 + k)
                    for k, shape in paper_scans.items() if raw_paper[k] != raw_train}
    results["data"]["paper_scan_shapes"] = [list(v) for v in paper_scans.values()]
    convert = ["convert", "--diffraction", None, "--scan-shape", None, "--eds", None,
               "--elements", ",".join(ELEMENTS), "--r-pixel", "1.053", "--q-pixel", "0.1451",
               "--beam-energy", "200", "--out", None]

    def convert_cmd(inputs, scan, out):
        c = list(convert)
        c[2], c[4], c[6], c[-1] = inputs["mrc"], f"{scan[0]}x{scan[1]}", inputs["eds"], out
        return c

    say("convert")
    r = cli(*convert_cmd(big, cfg["scan"], raw))
    r["patterns_per_s"] = round(n / r["seconds"], 1)
    r["bundle_mb"] = round(raw.stat().st_size / 2**20, 1)
    stages["convert"] = r
    results["data"]["bundle_mb"] = r["bundle_mb"]
    if small is not None:
        cli(*convert_cmd(small, cfg["train_scan"], raw_train))
        shutil.rmtree(work / "train")
    for k, inputs in paper_inputs.items():
        cli(*convert_cmd(inputs, paper_scans[k], raw_paper[k]))
        shutil.rmtree(work / f"paper{k}")
    shutil.rmtree(work / "big")  # the MRC is no longer needed: keep the disk footprint down

    say("preprocess")
    r = cli("preprocess", raw, "--out", work / "pre.h5", "--quiet")
    r["patterns_per_s"] = round(n / r["seconds"], 1)
    stages["preprocess"] = r
    (work / "pre.h5").unlink()

    models = {"radial": [], "paper": ["--bin", "1"]}
    stages["train"], stages["predict"] = {}, {}
    thread_args = ["--threads", str(threads)] if threads else []
    for model, extra in models.items():
        say(f"train {model}")
        run_dir = work / f"run_{model}"
        timing = work / f"epochs_{model}.json"
        train_on = raw_paper[1] if model == "paper" else raw_train
        r = measured(_TRAIN_CHILD, [timing, "train", train_on, "--out", run_dir,
                                    "--model", model, "--epochs", str(cfg["epochs"]),
                                    "--patience", "100", "--device", device, "--quiet", *extra,
                                    *thread_args])
        epochs = json.loads(timing.read_text())
        info = json.loads((run_dir / "run.json").read_text())
        n_train = int(info["split"]["n_train"])
        r.update(epochs=len(epochs), epoch_seconds=[round(e, 3) for e in epochs],
                 input_shape=info["input_shape"], n_train=n_train)
        # the first epoch also pays one-off costs (front-end features, warm-up)
        steady = epochs[1:] or epochs
        r["seconds_per_epoch"] = round(float(np.median(steady)), 3)
        r["train_patterns_per_s"] = round(n_train / r["seconds_per_epoch"], 1)
        stages["train"][model] = r

        say(f"predict {model}")
        if model == "paper":
            batch = ["--batch", str(cfg["paper_batch"])]
            runs = []
            for k in ((1, 2) if cfg.get("paper_marginal", True) else (1,)):
                runs.append(cli("predict", run_dir, raw_paper[k], "--out",
                                work / f"pred_paper{k}.h5", "--device", device, *batch))
            r = runs[-1]  # the longer scan: start-up weighs least
            m = paper_scans[max(paper_scans)][0] * pc
            r["n_patterns"] = m
            r["patterns_per_s"] = round(m / r["seconds"], 1)
            # patterns/s without process start-up: the extra patterns of the
            # longer scan over the extra time they took (same command, batch
            # and threads; both runs include reading and preprocessing)
            extra_n = m - pr * pc
            extra = runs[-1]["seconds"] - runs[0]["seconds"]
            r["marginal_patterns_per_s"] = round(extra_n / extra, 1) \
                if extra > 0 and extra_n > 0 else None
            r["marginal_cpu_patterns_per_s"] = round(
                extra_n / (runs[-1]["cpu_seconds"] - runs[0]["cpu_seconds"]), 1) \
                if extra_n > 0 and runs[-1]["cpu_seconds"] > runs[0]["cpu_seconds"] else None
            r["short_scan"] = {"n_patterns": pr * pc, "seconds": runs[0]["seconds"],
                               "cpu_seconds": runs[0]["cpu_seconds"]}
            r["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs)
        else:
            r = cli("predict", run_dir, raw, "--out", work / f"pred_{model}.h5",
                    "--device", device)
            r["n_patterns"] = n
            r["patterns_per_s"] = round(n / r["seconds"], 1)
        r["input_shape"] = info["input_shape"]
        stages["predict"][model] = r

        # the model alone on preprocessed patterns already in memory: the
        # ceiling that reading and preprocessing leave the model
        say(f"model only {model}")
        mb = cfg["paper_batch"] if model == "paper" else 1024
        if device == "cuda":
            mb *= 8
        reps = 3 if size == "tiny" else 10
        m = measured(_MODEL_CHILD, [run_dir, device, mb, reps])
        stages.setdefault("model_only", {})[model] = {
            **json.loads(m["stdout"].splitlines()[-1]), "input_shape": info["input_shape"]}
    results["machine"]["load_average_after"] = _load()
    pd, pp = stages["predict"]["radial"], stages["predict"]["paper"]
    # compared with the paper CNN's rate without start-up (its best case)
    paper_rate = pp.get("marginal_patterns_per_s") or pp["patterns_per_s"]
    results["summary"] = {
        "predict_patterns_per_s": pd["patterns_per_s"],
        "paper_predict_patterns_per_s": paper_rate,
        "speedup_vs_paper": round(pd["patterns_per_s"] / paper_rate, 1),
        "predict_peak_rss_mb": pd["peak_rss_mb"],
        "bundle_mb": results["data"]["bundle_mb"],
    }
    s = results["summary"]
    results["targets"] = dict(TARGETS)
    results["targets_met"] = {
        "predict_patterns_per_s": s["predict_patterns_per_s"] >= TARGETS["predict_patterns_per_s"],
        "speedup_vs_paper": s["speedup_vs_paper"] >= TARGETS["speedup_vs_paper"],
        "peak_rss_mb": s["predict_peak_rss_mb"] < TARGETS["peak_rss_mb"],
    }
    for group in stages.values():
        for item in (group.values() if "seconds" not in group else [group]):
            item.pop("stdout", None)
    return results


# -- README table --------------------------------------------------------------

def render_table(results: dict) -> str:
    """Markdown table of a results dict (the README's performance table)."""
    st = results["stages"]
    d = results["data"]
    def wall_cpu(r):
        return f"{r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s)"

    rows = [("convert (MRC -> bundle)", "-", st["convert"]["patterns_per_s"],
             st["convert"]["peak_rss_mb"], wall_cpu(st["convert"])),
            ("preprocess (raw -> preprocessed bundle)", "-", st["preprocess"]["patterns_per_s"],
             st["preprocess"]["peak_rss_mb"], wall_cpu(st["preprocess"]))]
    for model, r in st["train"].items():
        shape = "x".join(map(str, r["input_shape"]))
        rows.append((f"train, per epoch ({r['n_train']} patterns)", f"{model} ({shape})",
                     r["train_patterns_per_s"], r["peak_rss_mb"],
                     f"{r['seconds_per_epoch']:.1f} s / epoch"))
    for model, r in st["predict"].items():
        shape = "x".join(map(str, r["input_shape"]))
        rows.append((f"predict (whole process, raw bundle of {r['n_patterns']:,})",
                     f"{model} ({shape})", r["patterns_per_s"], r["peak_rss_mb"], wall_cpu(r)))
        if r.get("marginal_patterns_per_s"):
            what = "2x scan minus 1x"  # results written before short_scan was recorded
            if "short_scan" in r:
                what = f"{r['n_patterns']:,} minus {r['short_scan']['n_patterns']:,} patterns"
            rows.append((f"predict, without start-up ({what})", f"{model} ({shape})",
                         r["marginal_patterns_per_s"], r["peak_rss_mb"], "-"))
    for model, r in st.get("model_only", {}).items():
        shape = "x".join(map(str, r["input_shape"]))
        rows.append((f"model alone (preprocessed batch of {r['batch']} in memory)",
                     f"{model} ({shape})", r["patterns_per_s"], float("nan"), "-"))
    lines = ["| stage | model (input) | patterns/s | peak RSS (MB) | wall time (CPU time) |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c:,.0f} | {'-' if m != m else f'{m:,.0f}'} | {t} |"
              for a, b, c, m, t in rows]
    s = results["summary"]
    m = results["machine"]
    lines.append("")
    lines.append(f"{d['n_patterns']:,} patterns of {d['detector'][0]}x{d['detector'][1]} "
                 f"{d['dtype']} ({d['bundle_mb']:,.0f} MB bundle); training scan "
                 f"{d['n_train_scan_patterns']:,} patterns. Default model "
                 f"{s['speedup_vs_paper']:.1f}x the paper CNN's predict throughput (its rate "
                 f"without start-up). "
                 f"{m['cpus']} CPUs, device {results['device']}, load average "
                 f"{m['load_average_before'][0] if m['load_average_before'] else '?'} before / "
                 f"{m['load_average_after'][0] if m['load_average_after'] else '?'} after "
                 f"(other jobs share the machine), {results['created']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads for training")
    p.add_argument("--out", default=None, help="results JSON (default: print only)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--table", metavar="RESULTS.json", default=None,
                   help="print the markdown table of a results file and exit")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.table:
        print(render_table(json.loads(Path(args.table).read_text())))
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("benchmarks/run.py: --device cuda but no CUDA GPU is available",
                  file=sys.stderr)
            return 2
    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="stem2eds-bench-")
        work = Path(tmp.name)
    try:
        results = run_benchmark(args.size, work, args.device, args.threads, args.quiet)
    finally:
        if tmp is not None:
            tmp.cleanup()
    text = json.dumps(results, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if not args.quiet:
        print(render_table(results), file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
