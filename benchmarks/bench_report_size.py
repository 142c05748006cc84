"""Benchmark: size of the report's interactive explorer for a 256 x 256-position scan.

The explorer embeds, per scan, 16-bit maps (predicted, measured, std per
element; OOD, crystallinity, anomaly score, pattern sum, HAADF) and an 8-bit
PNG sprite of the patterns of a subsampled grid
(:data:`stem2eds.report.interactive.MAX_GRID` positions per axis, patterns
binned to at most :data:`~stem2eds.report.interactive.MAX_CELL` pixels).
Patterns here are noisy synthetic ones (disk + amorphous ring + Poisson
noise, 128 x 128 detector): noise compresses worst, so this is an upper-end
size. Run from the checkout::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_report_size.py [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from stem2eds.report.interactive import (ScanView, bin_factor, quantise_patterns,
                                         render_interactive, sample_grid, sprite_sheet)


def synthetic_patterns(n: int, q: int, rng: np.random.Generator) -> np.ndarray:
    """(n, q, q) counts: central disk, amorphous ring of varying radius, Poisson noise."""
    y, x = np.mgrid[0:q, 0:q] - (q - 1) / 2
    r = np.hypot(y, x)
    ring = rng.uniform(0.25, 0.35, n)[:, None, None] * q
    expected = 40 * np.exp(-0.5 * ((r - ring) / 3) ** 2) + 2000 * (r < q / 16) + 2
    return rng.poisson(expected).astype(np.uint16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/report_size.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape, q, elements = (256, 256), 128, ["O", "Si", "Ge", "Sb", "Te"]
    rows, cols = sample_grid(shape)
    start = time.perf_counter()
    cells, scaling = quantise_patterns(synthetic_patterns(len(rows) * len(cols), q, rng),
                                       bin_factor((q, q)))
    sprite = sprite_sheet(cells, rows, cols, scaling)
    maps = rng.uniform(0, 1, (len(elements), *shape)).astype(np.float32)
    smooth = lambda: rng.uniform(0, 1, shape).astype(np.float32)  # noqa: E731
    view = ScanView("s", elements, maps, maps * 0.9, maps * 0.05,
                    {"OOD score": smooth(), "crystallinity": smooth(), "crystalline": smooth() > .5,
                     "anomaly score": smooth()},
                    {"pattern sum": smooth(), "HAADF (measured)": smooth()}, sprite)
    text = render_interactive([view])
    seconds = time.perf_counter() - start
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    result = {
        "scan_shape": list(shape), "detector": [q, q], "elements": len(elements),
        "grid": [len(rows), len(cols)], "cell_px": int(cells.shape[-1]),
        "sprite_png_bytes": len(sprite.png), "explorer_html_bytes": len(text.encode()),
        "explorer_html_mb": round(len(text.encode()) / 1e6, 2), "build_seconds": round(seconds, 2),
        "provenance": {"commit": commit.strip(), "machine": f"{os.cpu_count()} CPUs, "
                       f"{platform.machine()}, Python {platform.python_version()}",
                       "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "load_average": [round(v, 2) for v in os.getloadavg()],
                       "note": "synthetic noisy patterns and uniform-random maps "
                               "(worst case for compression); shared, loaded machine"}}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
