"""The scaling curve: wall time and peak memory of convert, preprocess and predict vs scan size.

Each stage runs as its own ``stem2eds`` command in a fresh process (start-up
and imports included) and reports its wall time, CPU time and peak resident
memory (``VmHWM``), exactly as ``benchmarks/run.py`` measures the stage
table. Sizes are 1k, 10k, 100k and 1M patterns of 256x256 uint16, as scans
of 100 columns (10, 100, 1,000 and 10,000 rows).

Bundles: 1k and 10k are real, converted from synthetic MRC stacks (the data
of ``benchmarks/run.py``: disk, composition-dependent rings, Poisson noise,
drifting beam). Larger scans are *tiled*: a bundle whose ``diffraction`` is an
HDF5 virtual dataset (VDS) repeating the rows of the largest real bundle
(:func:`tile_bundle`), with its EDS maps tiled the same way, so that 1M
patterns (131 GB of patterns) take 1.3 GB of disk. ``stem2eds`` reads such
a bundle with the same direct ``preadv`` reads as a real one
(:mod:`stem2eds.io.stream`). The repeated block stays in the page cache, so
the large sizes measure the pipeline, not the disk.

The paper CNN (256x256 input) is timed in the same run, as in
``benchmarks/run.py``: trained for 2 epochs on 100 patterns, then predicted on
scans of 100 and 300 patterns; its rate without start-up (the 200 extra
patterns over the extra wall time: its best case) is the reference of the
``x paper`` ratios.

Usage (``make bench`` runs the first; the others are the full curve)::

    .venv/bin/python benchmarks/bench_scaling.py --sizes 1k,10k
    .venv/bin/python benchmarks/bench_scaling.py --sizes 1k,10k,100k,1M
    .venv/bin/python benchmarks/bench_scaling.py --sizes 1k,10k,100k,1M --convert-sizes 1k,10k,100k

Convert runs only at ``--convert-sizes`` (default 1k,10k; 100k needs 26 GB of
scratch disk: the MRC and the bundle) and preprocess up to
``--preprocess-max`` (default 100k: a preprocessed bundle keeps the binned
float32 patterns, 16 GB at 1M). Sizes skipped are listed in the JSON.
Writes ``benchmarks/results/scaling.json`` (``--out``); ``docs/scripts/plot_scaling.py``
draws the figure from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as stage_bench  # noqa: E402  (benchmarks/run.py: data, measured processes)

ROOT = Path(__file__).resolve().parents[1]
DETECTOR = 256
COLUMNS = 100
#: Largest scan converted for real and used as the block of the tiled ones.
BLOCK = 10_000
PAPER_SCANS = {"short": (2, 50), "long": (6, 50)}


def parse_size(text: str) -> int:
    """``"1k"`` -> 1000, ``"1M"`` -> 1000000, ``"2500"`` -> 2500 (a multiple of 100)."""
    t = text.strip()
    scale = {"k": 10**3, "K": 10**3, "M": 10**6, "m": 10**6}.get(t[-1:], 1)
    n = int(float(t[:-1] if scale > 1 else t) * scale)
    if n <= 0 or n % COLUMNS:
        raise argparse.ArgumentTypeError(f"size {text!r}: a positive multiple of {COLUMNS}")
    return n


def label(n: int) -> str:
    if n >= 10**6 and n % 10**6 == 0:
        return f"{n // 10**6}M"
    if n >= 10**3 and n % 10**3 == 0:
        return f"{n // 10**3}k"
    return str(n)


# -- bundles ---------------------------------------------------------------------

def tile_bundle(block: Path, out: Path, rows: int) -> Path:
    """A bundle of ``rows`` scan rows whose ``diffraction`` repeats the rows of ``block``.

    Parameters
    ----------
    block : Path
        A real bundle, ``diffraction`` of shape (R0, Ry, Qx, Qy).
    out : Path
        The tiled bundle to write, in the same folder as ``block`` (the VDS
        names its source relative to its own folder).
    rows : int
        Scan rows of the tiled bundle; ``diffraction`` is (rows, Ry, Qx, Qy),
        a virtual dataset whose row ``i`` is row ``i % R0`` of ``block``.
        Every 2D map (EDS, HAADF) of shape (R0, Ry) is tiled the same way;
        the root attributes are copied.
    """
    if out.resolve().parent != block.resolve().parent:
        raise ValueError("the tiled bundle must lie beside its block")
    with h5py.File(block, "r") as src:
        ds = src["diffraction"]
        r0, ry = ds.shape[:2]
        layout = h5py.VirtualLayout((rows, *ds.shape[1:]), ds.dtype)
        source = h5py.VirtualSource(block.name, "diffraction", shape=ds.shape, dtype=ds.dtype)
        for i in range(0, rows, r0):
            h = min(r0, rows - i)
            layout[i:i + h] = source[:h]
        index = np.arange(rows) % r0
        with h5py.File(out, "w") as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            dst.attrs["scan_name"] = out.stem
            dst.create_virtual_dataset("diffraction", layout, fillvalue=0)

            def copy_map(name, obj):
                if isinstance(obj, h5py.Dataset) and obj.shape == (r0, ry):
                    new = dst.create_dataset(name, data=obj[()][index])
                    new.attrs.update(dict(obj.attrs))
            src.visititems(copy_map)
    return out


def convert_cmd(inputs: dict, scan: tuple[int, int], out: Path) -> list:
    return ["convert", "--diffraction", inputs["mrc"], "--scan-shape", f"{scan[0]}x{scan[1]}",
            "--eds", inputs["eds"], "--elements", ",".join(stage_bench.ELEMENTS),
            "--r-pixel", "1.053", "--q-pixel", "0.1451", "--beam-energy", "200", "--out", out]


def convert_real(work: Path, n: int, seed: int = 0, measure: bool = True) -> tuple[Path, dict]:
    """Write the MRC of ``n`` patterns, convert it (measured), delete the MRC."""
    scan = (n // COLUMNS, COLUMNS)
    inputs = stage_bench.make_inputs(work / f"in_{label(n)}", scan, DETECTOR, seed)
    out = work / f"scan_{label(n)}.h5"
    r = stage_bench.cli(*convert_cmd(inputs, scan, out))
    shutil.rmtree(work / f"in_{label(n)}")
    r.pop("stdout", None)
    r["patterns_per_s"] = round(n / r["seconds"], 1)
    r["bundle_mb"] = round(out.stat().st_size / 2**20, 1)
    return out, r


# -- measurement -----------------------------------------------------------------

def _stage(args: list, n: int) -> dict:
    r = stage_bench.cli(*args)
    r.pop("stdout", None)
    r["patterns_per_s"] = round(n / r["seconds"], 1)
    return r


def paper_rate(work: Path, device: str, say) -> dict:
    """The paper CNN's predict rate without start-up, measured as in ``benchmarks/run.py``."""
    bundles = {}
    for k, (key, scan) in enumerate(PAPER_SCANS.items()):
        inputs = stage_bench.make_inputs(work / f"paper_{key}", scan, DETECTOR, seed=10 + k)
        bundles[key] = work / f"paper_{key}.h5"
        stage_bench.cli(*convert_cmd(inputs, scan, bundles[key]))
        shutil.rmtree(work / f"paper_{key}")
    say("train paper CNN")
    run_dir = work / "run_paper"
    stage_bench.cli("train", bundles["short"], "--out", run_dir, "--model", "paper",
                    "--bin", "1", "--epochs", "2", "--patience", "100", "--device", device,
                    "--quiet")
    runs = {}
    for key in PAPER_SCANS:
        say(f"predict paper CNN ({key})")
        runs[key] = stage_bench.cli("predict", run_dir, bundles[key], "--out",
                                    work / f"pred_paper_{key}.h5", "--device", device,
                                    "--batch", "32")
    n = {k: s[0] * s[1] for k, s in PAPER_SCANS.items()}
    extra = runs["long"]["seconds"] - runs["short"]["seconds"]
    rate = (n["long"] - n["short"]) / extra if extra > 0 else n["long"] / runs["long"]["seconds"]
    return {"patterns_per_s": round(rate, 1), "what": "extra patterns of the long scan over "
            "the extra wall time (rate without start-up)",
            "short": {"n_patterns": n["short"], "seconds": runs["short"]["seconds"]},
            "long": {"n_patterns": n["long"], "seconds": runs["long"]["seconds"],
                     "peak_rss_mb": runs["long"]["peak_rss_mb"]}}


def _marginal(rows: list[dict], stage: str) -> None:
    """Add ``marginal_patterns_per_s``: extra patterns over extra seconds from the size below.

    Start-up (imports, loading the run) is paid once per process, so the
    whole-process rate grows with the scan; the marginal rate is the work
    itself and is flat when time is linear in patterns.
    """
    prev = None
    for r in rows:
        cur = r.get(stage)
        if cur and prev:
            dn, dt = r["n_patterns"] - prev[0], cur["seconds"] - prev[1]
            cur["marginal_patterns_per_s"] = round(dn / dt, 1) if dt > 0 else None
        if cur:
            prev = (r["n_patterns"], cur["seconds"])


def _exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(seconds) against log(patterns): 1 is linear."""
    pts = [(n, t) for n, t in points if t and t > 0]
    if len(pts) < 2:
        return None
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def summarise(results: dict) -> dict:
    """Ratios to the paper CNN, the time exponent and the memory range of every stage."""
    paper = results["paper_cnn"]["patterns_per_s"]
    out: dict = {"predict_vs_paper": {}, "time_exponent": {}, "peak_rss_mb_range": {}}
    for stage in ("convert", "preprocess", "predict"):
        rows = [r for r in results["sizes"] if r.get(stage)]
        if not rows:
            continue
        # whole-process time: the exponent is below 1 while start-up weighs
        # much (small sizes); the marginal rates say whether the work is linear
        _marginal(rows, stage)
        out["time_exponent"][stage] = _exponent([(r["n_patterns"], r[stage]["seconds"])
                                                 for r in rows])
        rss = [r[stage]["peak_rss_mb"] for r in rows]
        out["peak_rss_mb_range"][stage] = [min(rss), max(rss)]
    for r in results["sizes"]:
        if r.get("predict"):
            out["predict_vs_paper"][r["label"]] = round(r["predict"]["patterns_per_s"] / paper, 1)
    return out


def provenance(load_before: list, load_after: list, argv: list) -> dict:
    """Commit, machine, date and load average of a run."""
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD") or "not recorded"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")),
                         model)
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"commit": commit + (" (with uncommitted changes)" if dirty else ""),
            "machine": f"{model}, {nproc} cores", "nproc": nproc,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_before": load_before, "load_average_after": load_after,
            "command": "benchmarks/bench_scaling.py " + " ".join(argv),
            "note": f"load average {load_before[0] if load_before else '?'} before, "
                    f"{load_after[0] if load_after else '?'} after: other jobs shared the "
                    "machine unless both are near 0."}


def free_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 2**30


def make_bundles(work: Path, sizes: list[int], convert_sizes: list[int], block_size: int,
                 say) -> tuple[dict, dict, list, int]:
    """Real bundles at ``convert_sizes`` (measured) and tiled ones for the rest.

    Returns the bundles and convert measurements by size, the skipped
    conversions, and the rows of the block the tiled bundles repeat.
    """
    pattern_gb = DETECTOR * DETECTOR * 2 / 2**30
    bundles, converts, skipped = {}, {}, []
    real = {n for n in sizes if n <= block_size} | set(convert_sizes)
    if any(n not in real for n in sizes):
        real.add(block_size)
    for n in sorted(real):
        need = 2.2 * n * pattern_gb  # the MRC and the bundle, with room
        if free_gb(work) < need + 5:
            skipped.append(f"convert {label(n)}: {need:.0f} GB of scratch disk needed, "
                           f"{free_gb(work):.0f} GB free")
            continue
        say(f"convert {label(n)}")
        bundles[n], r = convert_real(work, n)
        if n in convert_sizes:
            converts[n] = r
    block = bundles[max(bundles)]
    r0 = max(bundles) // COLUMNS
    for n in sizes:
        if n not in bundles:
            bundles[n] = tile_bundle(block, work / f"tiled_{label(n)}.h5", n // COLUMNS)
    return bundles, converts, skipped, r0


def run_scaling(work: Path, sizes: list[int], convert_sizes: list[int], preprocess_max: int,
                device: str, say, block_size: int = BLOCK) -> dict:
    """Measure every stage at every size (see the module docstring); the results dict."""
    load_before = stage_bench._load()
    bundles, converts, skipped, r0 = make_bundles(work, sizes, convert_sizes, block_size, say)
    train_on = bundles[min(bundles)]
    say(f"train radial on {train_on.name}")
    run_dir = work / "run_radial"
    stage_bench.cli("train", train_on, "--out", run_dir, "--epochs", "2", "--patience", "100",
                    "--device", device, "--quiet")
    rows = []
    for n in sizes:
        real = bundles[n].name.startswith("scan_")
        row = {"n_patterns": n, "label": label(n), "scan_shape": [n // COLUMNS, COLUMNS],
               "bundle": "real" if real else f"tiled (VDS) from {r0 * COLUMNS:,} real patterns",
               "convert": converts.get(n)}
        if n not in converts:
            skipped.append(f"convert {label(n)}: not in --convert-sizes")
        if n <= preprocess_max:
            say(f"preprocess {label(n)}")
            row["preprocess"] = _stage(["preprocess", bundles[n], "--out", work / "pre.h5",
                                        "--quiet"], n)
            (work / "pre.h5").unlink()
        else:
            row["preprocess"] = None
            skipped.append(f"preprocess {label(n)}: above --preprocess-max")
        say(f"predict {label(n)}")
        row["predict"] = _stage(["predict", run_dir, bundles[n], "--out", work / "pred.h5",
                                 "--device", device], n)
        (work / "pred.h5").unlink()
        rows.append(row)
    paper = paper_rate(work, device, say)
    results = {"data": {"detector": [DETECTOR, DETECTOR], "dtype": "uint16",
                        "scan_columns": COLUMNS, "model": "radial (default)", "device": device,
                        "train_bundle_patterns": min(bundles)},
               "sizes": rows, "paper_cnn": paper, "skipped": skipped}
    results["summary"] = summarise(results)
    results["load_after"] = stage_bench._load()
    results["load_before"] = load_before
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1k,10k", help="comma-separated, e.g. 1k,10k,100k,1M")
    p.add_argument("--convert-sizes", default="1k,10k")
    p.add_argument("--preprocess-max", default="100k")
    p.add_argument("--block", default="10k", help="patterns of the real bundle the tiled ones repeat")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling.json"))
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    convert_sizes = sorted({parse_size(s) for s in args.convert_sizes.split(",") if s.strip()})
    say = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="stem2eds-scaling-")
        work = Path(tmp.name)
    try:
        results = run_scaling(work, sizes, [n for n in convert_sizes if n in sizes],
                              parse_size(args.preprocess_max), args.device, say,
                              parse_size(args.block))
    finally:
        if tmp is not None:
            tmp.cleanup()
    before, after = results.pop("load_before"), results.pop("load_after")
    results = {"provenance": provenance(before, after, argv), **results}
    text = json.dumps(results, indent=1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
