"""Live prediction speed: frames per second through ``stem2eds live`` (Merlin simulator).

Trains a small run on a simulated 16x16 scan of 256x256 frames (the
project's test scan builder, default preprocessing: bin 4), writes a larger
scan (the frames of another simulated scan, tiled to ``--scan``) as a MIB
file, serves it with libertem-live's Merlin simulator on 127.0.0.1 and
runs :func:`stem2eds.libertem.live.predict_live` (the simulator in a process of its own) (inline LiberTEM executor,
model on the CPU). Reports the live frames/s (first partial result to the
last frame), the time of the exact final maps (recorded frames, fitted
origins) and the load average before and after: the machine is shared.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_live.py [--scan 32x32] [--out benchmarks/results/live.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_listening(*ports: int, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError(f"the simulator did not listen on port {port}")
                time.sleep(0.2)


def _train(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from builders import make_raw_scan, small_config

    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.fit import train

    make_raw_scan(folder / "train.h5", seed=1, scan_shape=(16, 16), detector=256)
    make_raw_scan(folder / "other.h5", seed=2, scan_shape=(16, 16), detector=256)
    cfg = small_config(targets=("eds", "haadf"), max_epochs=2,
                       preprocess=PreprocessSettings(bin_factor=4))
    return train([folder / "train.h5"], folder / "run", cfg, quiet=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", default="32x32", help="live scan shape RXxRY")
    ap.add_argument("--frames-per-partition", type=int, default=128)
    ap.add_argument("--final", choices=("exact", "live"), default="exact",
                    help="exact also records the raw frames (RecordUDF) while acquiring")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/live.json")
    args = ap.parse_args()
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.libertem.live import LiveSettings, predict_live
    from stem2eds.libertem.mib import write_mib

    rx, ry = (int(v) for v in args.scan.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = _train(folder)
        with open_bundle(folder / "other.h5") as s:
            base = s.diffraction[()]
        frames = np.tile(base, (-(-rx // 16), -(-ry // 16), 1, 1))[:rx, :ry]
        hdr = write_mib(folder / "scan.mib", frames)
        del frames, base
        data_port, control_port, trigger_port = _ports(3)
        # The simulator runs in its own process, as a detector would: in this
        # one its threads would take the GIL from the receiving side.
        sim = subprocess.Popen(
            [sys.executable, "-m", "libertem_live.detectors.merlin.sim", str(hdr),
             "--host", "127.0.0.1", "--data-port", str(data_port), "--control-port",
             str(control_port), "--trigger-port", str(trigger_port), "--nav-shape", str(rx),
             str(ry), "--cached", "MEM"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(data_port, control_port)
        states = []
        load_before = os.getloadavg()
        settings = LiveSettings(detector="merlin", port=data_port, api_port=control_port,
                                scan_shape=(rx, ry), interval=2.0,
                                frames_per_partition=args.frames_per_partition,
                                final=args.final)
        t0 = time.monotonic()
        try:
            predict_live(run, folder / "live", settings, on_update=states.append)
        finally:
            sim.terminate()
            sim.wait(30)
        total = time.monotonic() - t0
        load_after = os.getloadavg()
    acquired = [s for s in states if not s.complete]
    first, last = acquired[0], acquired[-1]
    # the first partial result's frames arrived before the clock started
    rate = (last.frames_done - first.frames_done) / max(last.elapsed - first.elapsed, 1e-9)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    result = {
        "what": "stem2eds live on libertem-live's Merlin simulator (127.0.0.1), inline executor, "
                "CPU model; frames/s between the first and the last partial result (frames done / seconds)",
        "scan_shape": [rx, ry], "detector": [256, 256], "dtype": "uint16", "bin_factor": 4,
        "model": "radial", "frames_per_partition": args.frames_per_partition,
        "final": args.final,
        "live_frames_per_s": round(rate, 1),
        "frames": last.frames_done, "partial_results": len(acquired),
        "total_s_including_start_and_final_maps": round(total, 2),
        "provenance": {
            "commit": commit, "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, "
            f"shared with other jobs", "date": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in load_after]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
