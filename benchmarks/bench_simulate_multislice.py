"""Benchmark of the multislice engine: seconds per pattern and per scan, and a cached re-run.

Propagates a batch of 10 nm Ge2Sb2Te5 patches at each detector size (the
simulation grid follows the detector), then simulates one small scan
through ``simulate_series`` twice (the second run reads the cache), and
writes JSON with provenance (commit, machine, date, load average: the
machine is shared, so the load is part of the number).

Usage::

    .venv/bin/python benchmarks/bench_simulate_multislice.py --out benchmarks/results/simulate_multislice.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def _provenance() -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"commit": commit, "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average_start": list(os.getloadavg())}


def per_pattern(detector: int, batch: int, workers: int, abtem_reference: bool = False) -> dict:
    from stem2eds.simulate import ELEMENTS
    from stem2eds.simulate import atoms as A
    from stem2eds.simulate import multislice as M
    from stem2eds.simulate.diffraction import default_q_pixel_size

    grid = M.Grid(detector, default_q_pixel_size(detector), 200.0, ELEMENTS, M.MultisliceModel())
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    template = A.amorphous_template((1.3 * grid.extent, 1.3 * grid.extent, 160.0), rng)
    template_s = time.perf_counter() - t0
    comp = np.array([0.0, 0.0, 2 / 9, 2 / 9, 5 / 9])
    t0 = time.perf_counter()
    atoms = [M.patch_atoms(template, grid, comp, 100.0, None, rng) for _ in range(batch)]
    models_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    M.propagate(grid, atoms, 100.0, workers)
    propagate_s, propagate_cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"detector": detector, "grid": grid.n, "extent_A": grid.extent, "patterns": batch,
            "thickness_nm": 10.0, "workers": workers, "template_s": round(template_s, 2),
            "atomic_models_s_per_pattern": round(models_s / batch, 4),
            "multislice_s_per_pattern": round(propagate_s / batch, 4),
            "multislice_cpu_s_per_pattern": round(propagate_cpu / batch, 4),
            "adf_range_mrad": [round(v, 1) for v in grid.adf_range_mrad],
            "load_average": list(os.getloadavg())}
    if abtem_reference:
        _abtem_time(grid, atoms[:1])                                # warm-up: numba compilation
        c0 = time.process_time()
        out["abtem_potential_and_multislice_s_per_pattern"] = round(_abtem_time(grid, atoms[1:3]), 3)
        out["abtem_cpu_s_per_pattern"] = round((time.process_time() - c0) / 2, 3)
    return out


def _abtem_time(grid, atoms) -> float:
    """The same patches through abtem.Potential + Probe.multislice, one at a time."""
    import abtem
    import ase
    from stem2eds.simulate import ELEMENTS

    t0 = time.perf_counter()
    for pos, species in atoms:
        cell = ase.Atoms([ELEMENTS[s] for s in species], positions=pos,
                         cell=[grid.extent, grid.extent, 100.0])
        potential = abtem.Potential(cell, gpts=grid.n, slice_thickness=grid.model.slice_thickness,
                                    projection="infinite", parametrization="lobato")
        probe = abtem.Probe(energy=200e3, semiangle_cutoff=grid.model.convergence_mrad)
        probe.multislice(potential, scan=[(grid.extent / 2, grid.extent / 2)], lazy=False)
    return (time.perf_counter() - t0) / len(atoms)


def scan(shape: tuple[int, int], detector: int, workers: int) -> dict:
    from stem2eds.simulate import SimulationSettings, simulate_series

    settings = SimulationSettings(n_scans=1, scan_shape=shape, detector=detector,
                                  thickness_nm=10.0, engine="multislice", workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        simulate_series(tmp, settings)
        first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        simulate_series(tmp, settings)
        again = time.perf_counter() - t0
    n = shape[0] * shape[1]
    return {"scan_shape": list(shape), "detector": detector, "workers": workers,
            "first_run_s": round(first, 1), "first_run_s_per_pattern": round(first / n, 3),
            "first_run_cpu_s": round(first_cpu, 1),
            "cached_rerun_s": round(again, 2), "load_average": list(os.getloadavg())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    result = {"provenance": _provenance(),
              "per_pattern": [per_pattern(128, 16, args.workers, abtem_reference=True),
                             per_pattern(256, 8, args.workers)],
              "scan": scan((8, 8), 128, args.workers)}
    result["provenance"]["load_average_end"] = list(os.getloadavg())
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
