"""The fused ring-statistics path (issue 18): whole-process predict, accuracy, training.

Measures, in one run on this machine:

* ``stem2eds predict`` of the default model (``radial``) on the 12,000-pattern
  256x256 bundle of ``benchmarks/run.py`` (its synthetic data, converted by
  ``stem2eds convert``), whole process (start-up and imports included), with
  the **current** path (patterns centred, beam-removed, binned and normalised
  by :func:`stem2eds.preprocess.iter_preprocessed`, then the model: the child
  process swaps the predictor's raw stream back to it) and the **fused** path
  (ring statistics straight from the raw counts, :mod:`stem2eds.features`,
  and the head in numpy from the run's ``head.npz``, so torch is never
  imported), the fused path with the torch head (the run without
  ``head.npz``) and, with ``--before-src``, another source tree's
  ``stem2eds predict`` (e.g. the main checkout): seconds, patterns/s, CPU
  seconds, peak RSS (VmHWM); and what its start-up is made of (the imports
  and the kernel load, timed one after another in a fresh process);
* the ``paper`` CNN (256x256 input) predicting in the same run, its rate
  without start-up (the patterns of a longer scan over the extra time), for
  the ratio;
* accuracy: the largest difference between the two paths' predictions on
  that bundle, and on a scan of the kinematic simulator
  (:mod:`stem2eds.simulate`), and of the ring features themselves;
* training: one epoch of the default model on 100,000 front-end feature
  rows (synthetic, in memory, as training on cached features does), and the
  rate at which the fused path fills the cache from a raw bundle.

The numba kernel is compiled (and cached on disk) by a warm-up predict on a
small scan before anything is timed. Usage::

    .venv/bin/python benchmarks/bench_fused.py --out benchmarks/results/fused.json
    .venv/bin/python benchmarks/bench_fused.py --small   # 2,000 patterns, quick
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import _HWM, ELEMENTS, cli, make_inputs, measured  # noqa: E402

#: The child that predicts with the pre-fused path: patterns are preprocessed
#: (iter_preprocessed) and go through the whole model, as before issue 18.
_CURRENT_CHILD = _HWM + r"""
import sys
import stem2eds.predict.bundle as B
import stem2eds.predict.predictor as P
import stem2eds.predict.scanning as S
from stem2eds.preprocess import iter_preprocessed

def _stream(scan, settings, batch, client=None, forked=None):
    return iter_preprocessed(scan, settings, batch=batch, client=client)

def _ahead(batch, settings, scan):
    qx, qy = scan.detector_shape
    f = int(settings.bin_factor)
    return int(max(2, min(64, S.READ_AHEAD_BYTES // max(batch * (qx // f) * (qy // f) * 4, 1))))

P._raw_stream = B._raw_stream = S._raw_stream = _stream
B._read_ahead = S._read_ahead = _ahead
P.Predictor.warm_up = lambda self, scan: None  # no numba kernel on this path
from stem2eds.cli import main
sys.exit(main(sys.argv[1:]))  # not forking: this path measures its own origins
"""

#: A child that predicts with the stem2eds of another source tree (``--before-src``).
_BEFORE_CHILD = _HWM + r"""
sys.path.insert(0, sys.argv.pop(1))
from stem2eds.cli import main
sys.exit(main())  # as the command runs (benchmarks.run._CLI_CHILD)
"""

TARGETS = {"fused_patterns_per_s": 10000.0, "fused_peak_rss_mb": 1024.0,
           "speedup_vs_paper": 250.0, "max_abs_prediction_diff": 0.002}


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _convert(inputs: dict, scan: tuple[int, int], out: Path) -> dict:
    return cli("convert", "--diffraction", inputs["mrc"], "--scan-shape",
               f"{scan[0]}x{scan[1]}", "--eds", inputs["eds"], "--elements", ",".join(ELEMENTS),
               "--r-pixel", "1.053", "--q-pixel", "0.1451", "--beam-energy", "200", "--out", out)


def _eds(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return np.stack([f["eds"][el][()] for el in ELEMENTS])


def predict_rates(work: Path, scan: tuple[int, int], repeats: int,
                  before_src: Path | None = None) -> dict:
    """Whole-process predict on a converted bundle of ``scan`` positions.

    Variants: ``current`` (preprocessed patterns through the torch model),
    ``fused`` (this checkout: fused ring statistics and, for this CPU run,
    the numpy head from ``head.npz``, no torch), ``fused_torch_head`` (the
    same run folder without ``head.npz``: the torch model, as runs trained
    before it predict) and, with ``before_src``, ``fused_before`` (that
    source tree's ``stem2eds predict`` on the same run and bundle).
    """
    n = scan[0] * scan[1]
    big = make_inputs(work / "big", scan, 256, seed=0)
    raw = work / "raw.h5"
    _convert(big, scan, raw)
    shutil.rmtree(work / "big")
    train_in = make_inputs(work / "train", (20, 50), 256, seed=1)
    raw_train = work / "raw_train.h5"
    _convert(train_in, (20, 50), raw_train)
    shutil.rmtree(work / "train")
    run = work / "run_radial"
    cli("train", raw_train, "--out", run, "--epochs", "2", "--patience", "100", "--quiet")
    cli("predict", run, raw_train, "--out", work / "warm.h5")  # compiles and caches numba
    old_run = work / "run_radial_without_head"
    shutil.copytree(run, old_run)
    (old_run / "head.npz").unlink()
    out: dict = {"n_patterns": n, "bundle_mb": round(raw.stat().st_size / 2**20, 1)}
    variants = [("current", _CURRENT_CHILD, [], run), ("fused", None, [], run),
                ("fused_torch_head", None, [], old_run)]
    if before_src is not None:
        variants.append(("fused_before", _BEFORE_CHILD, [str(before_src)], run))
    for name, code, pre, run_dir in variants:
        runs = []
        for k in range(repeats):
            target = work / f"pred_{name}_{k}.h5"
            args = ["predict", run_dir, raw, "--out", target]
            r = measured(code, pre + args) if code else cli(*args)
            r.pop("stdout", None)
            r["load_average"] = _load()
            runs.append(r)
        best = min(runs, key=lambda r: r["seconds"])
        out[name] = {**best, "patterns_per_s": round(n / best["seconds"], 1),
                     "repeats": runs}
    a, b = _eds(work / "pred_current_0.h5"), _eds(work / "pred_fused_0.h5")
    out["max_abs_eds_diff_filtered_maps"] = float(np.abs(a - b).max())
    out["max_abs_eds_diff_numpy_vs_torch_head"] = float(np.abs(
        _eds(work / "pred_fused_torch_head_0.h5") - b).max())
    out["startup"] = import_breakdown(run, raw, work / "pred_importtime.h5")
    out["run"] = str(run)
    out["raw"] = str(raw)
    return out


#: A child that imports the pieces of the fused predict one after another, timed.
_IMPORTS_CHILD = r"""
import json, sys, time
out = {"python start": {"seconds": round(time.time() - float(sys.argv[1]), 3)}}
steps = [("numpy", "import numpy as np"), ("h5py", "import h5py"),
         ("stem2eds.cli", "import stem2eds.cli"),
         ("predict modules", "import stem2eds.predict.bundle, stem2eds.predict.heads"),
         ("cv2", "import cv2"), ("numba", "import numba"),
         ("ring kernel module", "from stem2eds.features import RingGeometry, ring_features\n"
                                "import stem2eds.features._kernel"),
         ("ring kernel, first call (cached code)",
          "ring_features(np.zeros((1, 256, 256), np.uint16), np.full((1, 2), 127.5), "
          "RingGeometry((256, 256), 4, 4.5, 'none', 400.0, ('mean',)))"),
         ("torch (not imported by the fused predict)", "import torch")]
space = {}
for name, stmt in steps:
    w, c = time.perf_counter(), time.process_time()
    exec(stmt, space)
    out[name] = {"seconds": round(time.perf_counter() - w, 3),
                 "cpu_seconds": round(time.process_time() - c, 3)}
print(json.dumps(out))
"""

#: A child that runs ``stem2eds predict`` and says which heavy packages it imported.
_MODULES_CHILD = r"""
import sys
from stem2eds.cli import main
code = main(sys.argv[1:])
print(",".join(m for m in ("torch", "lightning", "numba", "scipy.linalg", "sklearn")
               if m in sys.modules))
sys.exit(code)
"""


def import_breakdown(run: Path, raw: Path, target: Path) -> dict:
    """What the start-up of the fused predict is made of, piece by piece, in a fresh process.

    The pieces are imported one after another, each timed in wall and CPU
    seconds (``python start``: from launching the child to its first line),
    and torch last, for what it would add. ``modules_imported``: the heavy packages a
    real ``stem2eds predict`` of the run imported.
    """
    done = subprocess.run([sys.executable, "-c", _IMPORTS_CHILD, repr(time.time())],
                          capture_output=True, text=True, check=True)
    pieces = json.loads(done.stdout.strip().splitlines()[-1])
    done = subprocess.run([sys.executable, "-c", _MODULES_CHILD, "predict", str(run), str(raw),
                           "--out", str(target), "--quiet"], capture_output=True, text=True,
                          check=True)
    modules = [m for m in done.stdout.strip().splitlines()[-1].split(",") if m]
    return {"pieces": pieces, "modules_imported": modules, "torch_imported": "torch" in modules,
            "load_average": _load()}


def paper_rate(work: Path) -> dict:
    """The paper CNN's predict rate without start-up (as benchmarks/run.py)."""
    scans = {1: (2, 50), 2: (6, 50)}
    raws = {}
    for k, shape in scans.items():
        inputs = make_inputs(work / f"paper{k}", shape, 256, seed=1 + k)
        raws[k] = work / f"raw_paper{k}.h5"
        _convert(inputs, shape, raws[k])
        shutil.rmtree(work / f"paper{k}")
    run = work / "run_paper"
    cli("train", raws[1], "--out", run, "--model", "paper", "--bin", "1", "--epochs", "1",
        "--patience", "100", "--quiet")
    runs = [cli("predict", run, raws[k], "--out", work / f"pred_paper{k}.h5", "--batch", "32")
            for k in (1, 2)]
    extra_n = (scans[2][0] - scans[1][0]) * scans[1][1]
    extra = runs[1]["seconds"] - runs[0]["seconds"]
    return {"marginal_patterns_per_s": round(extra_n / extra, 1) if extra > 0 else None,
            "seconds": [r["seconds"] for r in runs], "n_patterns": [100, 300],
            "load_average": _load()}


def paths_agree(run: Path, bundle: Path) -> dict:
    """Ordinary vs fused predictions and ring features of one run on one raw bundle."""
    import torch

    from stem2eds.features.stream import iter_raw_blocks
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.models.rings import RingStatistics
    from stem2eds.predict.predictor import load_run
    from stem2eds.preprocess import iter_preprocessed, measure_origins

    p = load_run(run)
    with open_bundle(bundle) as scan:
        old = np.concatenate([v for _, v in p._outputs(scan, iter_preprocessed(scan, p.settings,
                                                                                256))])
        new = np.concatenate([v for _, v in p.iter_outputs(scan, 256)])
        rings = RingStatistics(tuple(p.info["input_shape"]), p.model.ring_statistics)
        want = np.concatenate([rings(torch.from_numpy(x)).reshape(len(x), -1).numpy()
                               for _, x in iter_preprocessed(scan, p.settings, 256)])
        got = np.concatenate([b.ring_features(p.settings, p.model.ring_statistics)
                              for _, b in iter_raw_blocks(scan, p.settings, 256)])
        fitted = measure_origins(scan, p.settings).fitted
        truth = scan.file["simulation/origin"][()] if "simulation/origin" in scan.file else None
    out = {"n_patterns": len(old),
           "max_abs_prediction_diff": float(np.abs(old - new).max()),
           "max_abs_ring_feature_diff": float(np.abs(want - got).max()),
           "max_rel_ring_feature_diff": float((np.abs(want - got) / np.maximum(want, 1e-6)).max())}
    if truth is not None:
        # both paths use the same fitted origins; this is the fit against the simulator's
        # own (a plane cannot follow the kinematic simulator's 0.15 px random jitter)
        out["max_fitted_vs_true_origin_px"] = float(np.abs(fitted.reshape(-1, 2)
                                                  - truth.reshape(-1, 2)).max())
    return out


def accuracy_on_simulated(work: Path, run: Path, multislice: str | None = None) -> dict:
    """Ordinary vs fused on a kinematic-simulator scan; on a multislice one when given.

    ``multislice``: ``RUN=BUNDLE``, a run trained on multislice scans and a raw
    multislice bundle (the engine takes minutes per scan, so the benchmark does
    not simulate one itself).
    """
    from stem2eds.simulate import SimulationSettings, simulate_series

    sim = simulate_series(work / "sim", SimulationSettings(n_scans=1, scan_shape=(30, 20),
                                                           workers=1, seed=5))[0]
    out = {"engine": "kinematic (stem2eds.simulate)", **paths_agree(run, sim)}
    if multislice:
        ms_run, _, ms_bundle = multislice.partition("=")
        out["multislice"] = {"run": ms_run, "bundle": ms_bundle,
                             **paths_agree(Path(ms_run), Path(ms_bundle))}
    else:
        out["multislice"] = "not measured (no --multislice RUN=BUNDLE given)"
    return out


def cache_rate(raw: Path, run: Path) -> dict:
    """Patterns/s at which the fused path fills a training cache from a raw bundle."""
    from stem2eds.features.cache import ring_statistics_cache
    from stem2eds.predict.predictor import load_run

    p = load_run(run)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stats = ring_statistics_cache(Path(tmp) / "c.npy", [raw], p.settings,
                                      p.model.ring_statistics, p.model.rings.n_rings)
        dt = time.perf_counter() - t0
    return {"n_patterns": len(stats), "seconds": round(dt, 3),
            "patterns_per_s": round(len(stats) / dt, 1), "load_average": _load()}


def frontend_cpu(n: int = 512, repeats: int = 3) -> dict:
    """CPU seconds per pattern of the front end alone, one thread: ordinary vs fused.

    CPU time (``time.process_time``) rather than wall time, so that other
    processes on a loaded machine weigh less. Synthetic 256x256 uint16
    patterns (benchmarks/run.py), default settings (bin 4, counts).
    """
    import numba
    import torch

    from stem2eds.features import RingGeometry, ring_features
    from stem2eds.models.rings import RingStatistics
    from stem2eds.preprocess.patterns import normalise, process_patterns

    from run import synthetic_block

    raw, _ = synthetic_block(n, 256)
    origins = 127.5 + np.random.default_rng(0).uniform(-3, 3, (n, 2))
    g = RingGeometry((256, 256), 4, 4.5, "none", 400.0, ("mean",))
    rings = RingStatistics(g.binned_shape, g.statistics)
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    ring_features(raw[:4], origins[:4], g)  # load the compiled kernel

    def ordinary():
        x = normalise(process_patterns(raw, origins, 4.5, 4, "none"), 400.0)
        with torch.inference_mode():
            return rings(torch.from_numpy(x))

    out = {}
    for name, fn in (("ordinary", ordinary), ("fused", lambda: ring_features(raw, origins, g))):
        best = min(_cpu(fn) for _ in range(repeats))
        out[name] = {"cpu_us_per_pattern": round(best / n * 1e6, 1),
                     "patterns_per_cpu_s": round(n / best, 1)}
    out["fused_over_ordinary"] = round(out["ordinary"]["cpu_us_per_pattern"]
                                       / out["fused"]["cpu_us_per_pattern"], 2)
    out.update(n_patterns=n, threads=1, load_average=_load())
    return out


def _cpu(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def epoch_seconds(n: int = 100_000) -> dict:
    """One epoch of the default model (TrainConfig defaults) on ``n`` cached feature rows."""
    import lightning as L
    import torch
    from torch.utils.data import TensorDataset

    from stem2eds.models import build_model
    from stem2eds.train.config import TrainConfig
    from stem2eds.train.data import make_loader
    from stem2eds.train.module import Regressor

    c = TrainConfig()
    torch.set_num_threads(1)
    net = build_model(c.model, (64, 64), 5, c.hparams)
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(np.log(rng.random((n, 1, net.rings.n_rings), np.float32) + 1e-3))
    targets = torch.from_numpy(rng.dirichlet(np.ones(5), n).astype(np.float32))
    net.start_from_data(feats[:5000], targets[:5000])
    module = Regressor(net, 5, c.loss, c.loss_weights, c.learning_rate, on_features=True)
    loader = make_loader(TensorDataset(feats, targets), c.batch_size, True, 0)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    t0 = time.perf_counter()
    trainer.fit(module, loader)
    dt = time.perf_counter() - t0
    return {"n_patterns": n, "batch_size": c.batch_size, "seconds": round(dt, 3),
            "torch_threads": 1, "load_average": _load()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/fused.json")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--small", action="store_true", help="20x100 scan instead of 120x100")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--before-src", type=Path, default=None,
                   help="also time the stem2eds of this source tree (e.g. the main "
                        "checkout's src) on the same run and bundle")
    p.add_argument("--multislice", default=None, metavar="RUN=BUNDLE",
                   help="also compare the two paths with a multislice-trained run on a "
                        "raw multislice bundle")
    p.add_argument("--multislice-only", action="store_true",
                   help="only run the multislice comparison and add it to --out")
    args = p.parse_args()
    if args.multislice_only:
        if not args.multislice:
            p.error("--multislice-only needs --multislice RUN=BUNDLE")
        result = json.loads(Path(args.out).read_text())
        run, _, bundle = args.multislice.partition("=")
        result["accuracy_simulated"]["multislice"] = {
            "run": run, "bundle": bundle, "commit": _commit(), "load_average": _load(),
            **paths_agree(Path(run), Path(bundle))}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["accuracy_simulated"]["multislice"], indent=2))
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_fused_"))
    work.mkdir(parents=True, exist_ok=True)
    scan = (20, 100) if args.small else (120, 100)
    say = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    result: dict = {"provenance": {"commit": _commit(), "date": time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version()}, "load_average_before": _load()}}
    say("front end alone (CPU time)")
    result["frontend_cpu"] = frontend_cpu()
    say("predict: current vs fused")
    result["predict"] = predict = predict_rates(work, scan, args.repeats, args.before_src)
    say("paper CNN")
    result["paper"] = paper_rate(work)
    say("accuracy on a simulated scan")
    result["accuracy_simulated"] = accuracy_on_simulated(work, Path(predict.pop("run")),
                                                         args.multislice)
    say("training: cache fill and one epoch on 100,000")
    result["train"] = {"cache_fill": cache_rate(Path(predict.pop("raw")),
                                                Path(work / "run_radial")),
                       "epoch_100k": epoch_seconds()}
    paper = result["paper"]["marginal_patterns_per_s"]
    fused, current = predict["fused"], predict["current"]
    result["summary"] = {
        "current_patterns_per_s": current["patterns_per_s"],
        "fused_patterns_per_s": fused["patterns_per_s"],
        "fused_over_current": round(fused["patterns_per_s"] / current["patterns_per_s"], 2),
        "current_peak_rss_mb": current["peak_rss_mb"], "fused_peak_rss_mb": fused["peak_rss_mb"],
        "fused_torch_head_patterns_per_s": predict["fused_torch_head"]["patterns_per_s"],
        "fused_torch_head_peak_rss_mb": predict["fused_torch_head"]["peak_rss_mb"],
        **({"fused_before_patterns_per_s": predict["fused_before"]["patterns_per_s"],
            "fused_before_peak_rss_mb": predict["fused_before"]["peak_rss_mb"]}
           if "fused_before" in predict else {}),
        "fused_torch_imported": predict["startup"]["torch_imported"],
        "paper_patterns_per_s": paper,
        "speedup_vs_paper": round(fused["patterns_per_s"] / paper, 1) if paper else None,
        "max_abs_prediction_diff": result["accuracy_simulated"]["max_abs_prediction_diff"],
        "epoch_100k_seconds": result["train"]["epoch_100k"]["seconds"],
        "frontend_cpu_us_per_pattern": {k: result["frontend_cpu"][k]["cpu_us_per_pattern"]
                                        for k in ("ordinary", "fused")}}
    result["targets"] = TARGETS
    result["provenance"]["load_average_after"] = _load()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
