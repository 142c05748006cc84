"""GPU benchmark of the whole prediction pipeline: end to end from a bundle in page cache, and the model alone.

One command, a few minutes, prints one JSON object (and writes it with ``--out``)::

    .venv/bin/python benchmarks/gpu_pipeline.py                      # CUDA, 200,000 patterns
    .venv/bin/python benchmarks/gpu_pipeline.py --device cpu --patterns 2k --block 1k   # check

Steps: synthetic 256x256 uint16 patterns (``benchmarks/run.py``'s data) are
converted into a real bundle of ``--block`` patterns, a default (``radial``)
run is trained on it for 2 epochs (``--train-device``, CPU by default: the
training is not what is measured), and a tiled bundle of ``--patterns``
patterns repeats it as an HDF5 virtual dataset (``bench_scaling.tile_bundle``)
so that 1.3 GB of disk stands for any size; the block is read once first,
so every read comes from the page cache. Then, in this process:

* **end to end**: ``predict_bundle(run, bundle, out, device=...)``: reading,
  origins, the front end, the model and writing the prediction file, as
  ``stem2eds predict`` does (whatever path the run takes there: the fused
  ring statistics in torch on CUDA where built, else the CPU preprocessing
  feeding the model); ``--repeats`` times, the first also paying CUDA
  start-up; the best is the rate;
* **model alone**: batches of ``--model-batch`` preprocessed inputs already
  on the device through the model (``TorchHead._forward``, autocast as in
  prediction), synchronised; and with the host copy (``predict_patterns`` on
  a numpy batch: pinned, non-blocking copies);
* **ring front end alone** (runs whose model starts with ring statistics,
  when ``stem2eds.models.rings.RingFrontend`` exists): ``forward_rings`` on
  statistics already on the device.

Nothing here is a test; the suite never depends on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scaling  # noqa: E402
import run as stage_bench  # noqa: E402


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(fn, n: int, repeats: int, device) -> dict:
    """Patterns/s of ``fn()`` (``n`` patterns a call): one warm-up, then ``repeats`` timed calls."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    seconds = (time.perf_counter() - t0) / repeats
    return {"patterns_per_s": round(n / seconds, 1), "seconds_per_call": round(seconds, 6),
            "patterns_per_call": n}


def model_alone(run_dir: Path, device_name: str, batch: int, repeats: int) -> dict:
    """The model on preprocessed batches: on the device, with the host copy, and rings only."""
    import torch

    from stem2eds.predict.predictor import load_run

    predictor = load_run(run_dir, device=device_name)
    device = predictor.device
    shape = tuple(predictor.info["input_shape"])
    host = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    x = torch.from_numpy(host).to(device)
    out: dict = {"input_shape": list(shape), "batch": batch}
    model = predictor.head.torch_head  # the torch model even where CPU predict uses numpy
    with torch.inference_mode():
        out["on_device"] = _rate(lambda: model._forward(x), batch, repeats, device)
    out["from_host"] = _rate(lambda: predictor.predict_patterns(host), batch, repeats, device)
    try:
        from stem2eds.models.rings import RingFrontend
    except ImportError:
        out["rings_only"] = {"skipped": "no fused ring front end in this checkout"}
        return out
    if isinstance(predictor.model, RingFrontend):
        with torch.inference_mode():
            stats = predictor.model.frontend(x[:1])
            s = torch.rand((batch, *stats.shape[1:]), device=device) + 1.0
            out["rings_only"] = _rate(lambda: model._forward_rings(s), batch, repeats, device)
    return out


def end_to_end(run_dir: Path, bundle: Path, work: Path, device: str, batch: int,
               repeats: int, n: int) -> dict:
    """``predict_bundle`` on the tiled bundle, ``repeats`` times; the best is the rate."""
    from stem2eds.predict.bundle import predict_bundle

    runs = []
    for k in range(repeats):
        out = work / f"pred_{k}.h5"
        t0 = time.perf_counter()
        predict_bundle(run_dir, bundle, out, batch=batch, device=device)
        runs.append(round(time.perf_counter() - t0, 3))
        out.unlink()
    best = min(runs)
    return {"patterns": n, "batch": batch, "seconds": runs, "best_seconds": best,
            "patterns_per_s": round(n / best, 1)}


def prepare(work: Path, n: int, block: int, train_device: str, say) -> tuple[Path, Path]:
    say(f"convert a real block of {block} patterns")
    real, _ = bench_scaling.convert_real(work, block)
    say("train the default model")
    run_dir = work / "run"
    stage_bench.cli("train", real, "--out", run_dir, "--epochs", "2", "--patience", "100",
                    "--device", train_device, "--quiet")
    bundle = real
    if n != block:
        bundle = bench_scaling.tile_bundle(real, work / f"tiled_{n}.h5",
                                           n // bench_scaling.COLUMNS)
    with open(real, "rb") as fh:  # page cache
        while fh.read(1 << 26):
            pass
    return bundle, run_dir


def machine(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--patterns", default="200k", help="patterns predicted end to end")
    p.add_argument("--block", default="2k", help="real patterns the tiled bundle repeats")
    p.add_argument("--batch", type=int, default=None,
                   help="patterns per prediction batch (default 8192 on CUDA, 1024 on CPU)")
    p.add_argument("--model-batch", type=int, default=None,
                   help="batch of the model-alone timing (default 65536 CUDA, 1024 CPU)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train-device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_pipeline.py: no CUDA device (use --device cpu)", file=sys.stderr)
            return 2
    n = bench_scaling.parse_size(args.patterns)
    block = min(n, bench_scaling.parse_size(args.block))
    cuda = args.device == "cuda"
    batch = args.batch or (8192 if cuda else 1024)
    model_batch = args.model_batch or (65536 if cuda else 1024)
    say = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    load_before = stage_bench._load()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stem2eds-gpu-", dir=args.work) as tmp:
        work = Path(tmp)
        bundle, run_dir = prepare(work, n, block, args.train_device, say)
        say(f"end to end, {n} patterns on {args.device}")
        e2e = end_to_end(run_dir, bundle, work, args.device, batch, max(1, args.repeats), n)
        say("model alone")
        alone = model_alone(run_dir, args.device, model_batch, 5 if cuda else 2)
    prov = bench_scaling.provenance(load_before, stage_bench._load(), argv)
    prov["command"] = "benchmarks/gpu_pipeline.py " + " ".join(argv)
    doc = {"provenance": prov, "device": args.device, "machine": machine(args.device),
           "data": {"detector": [256, 256], "dtype": "uint16", "real_block_patterns": block,
                    "page_cache": "warm (the tiled bundle repeats one block read beforehand)"},
           "end_to_end": e2e, "model_alone": alone,
           "targets": {"end_to_end_patterns_per_s": 100_000, "model_alone_patterns_per_s": 1e6},
           "total_seconds": round(time.perf_counter() - t_start, 1)}
    text = json.dumps(doc, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
