"""The main job on the embedded default: simulate a series, run the paper's experiments.

:func:`run_demo` simulates a six-scan Ge-Sb-Te series (``stem2eds.simulate``),
runs the random split (on the first scan), extrapolation and interpolation
(:func:`stem2eds.experiments.crossscan.run_crossscan`), each with the ridge baseline
and a linear calibration, and writes one report per experiment plus an index
page linking them::

    DIR/data/scan_0033.h5 ... scan_0038.h5     simulated raw bundles
    DIR/random/, DIR/extrapolate/, DIR/interpolate/   experiment run dirs (report.html each)
    DIR/index.html                             links and the headline numbers
    DIR/timings.json                           seconds per stage of the last run

Everything already finished in DIR (bundles, trained models) is reused, so an
interrupted demo resumes. The default sizes are chosen to keep the whole job
short on a laptop's CPU (``benchmarks/bench_demo.py`` measures it).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..atomic import atomic_output

#: Experiments of the demo, in the order of the index page.
DEMO_STRATEGIES = ("random", "extrapolate", "interpolate")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo (defaults chosen to finish in minutes on a few CPU cores).

    Attributes
    ----------
    n_scans : int
        Scans in the simulated series.
    scan_shape : (int, int)
        Probe positions per scan (Rx, Ry).
    detector : int
        Simulated detector size (px); preprocessing bins it by ``bin_factor``.
    bin_factor : int
        Detector binning before the network (256 / 4 = 64 px patterns).
    max_epochs : int
        Maximum training epochs of the trained models.
    patience : int
        Epochs without validation improvement before early stopping.
    model : str or None
        Registered model (None: the package default).
    seed : int
        Seed of the simulation and of training.
    figures : bool
        Draw the report figures (False: tables only, for quick checks).
    """

    n_scans: int = 6
    scan_shape: tuple[int, int] = (40, 30)
    detector: int = 256
    bin_factor: int = 4
    max_epochs: int = 60
    patience: int = 8
    model: str | None = None
    seed: int = 0
    figures: bool = True

    def __post_init__(self) -> None:
        for name in ("n_scans", "detector", "bin_factor", "max_epochs", "patience"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        if self.n_scans < 3:
            # extrapolation and interpolation need scans between the training ones
            raise InputError(f"`n_scans` must be at least 3, got {self.n_scans}")


def _simulate(data_dir: Path, settings: DemoSettings, quiet: bool) -> list[Path]:
    from ..simulate.series import SimulationSettings, simulate_series

    sim = SimulationSettings(n_scans=settings.n_scans, scan_shape=tuple(settings.scan_shape),
                             detector=settings.detector, seed=settings.seed)
    expected = [data_dir / f"{name}.h5" for name in sim.scan_names()]
    if all(p.is_file() for p in expected) and _same_simulation(expected[0], sim):
        return expected
    return simulate_series(data_dir, sim, quiet=quiet)


def _same_simulation(path: Path, sim) -> bool:
    """True when an existing bundle was simulated with these settings (safe to reuse)."""
    from ..formats.bundle import open_bundle
    from ..simulate.series import settings_from_provenance

    try:
        with open_bundle(path) as scan:
            text = json.dumps(scan.provenance)
        return settings_from_provenance(text).to_dict() == sim.to_dict()
    except (InputError, KeyError, ValueError, TypeError):
        return False


def run_demo(out: str | os.PathLike = "stem2eds-demo", settings: DemoSettings = DemoSettings(),
             quiet: bool = False) -> Path:
    """Simulate a series, run the demo experiments and write the index page.

    Parameters
    ----------
    out : path-like
        Output folder (created; finished parts inside are reused).
    settings : DemoSettings
    quiet : bool
        No progress output.

    Returns
    -------
    Path
        ``out/index.html``.
    """
    from ..train.config import TrainConfig
    from .crossscan import run_crossscan

    root = Path(out)
    if root.exists() and not root.is_dir():
        raise InputError("output exists and is not a folder", path=root)
    root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    bundles = _simulate(root / "data", settings, quiet)
    timings["simulate"] = time.perf_counter() - start
    config = TrainConfig(targets=("eds", "haadf"), max_epochs=settings.max_epochs,
                         patience=settings.patience, seed=settings.seed,
                         preprocess={"bin_factor": settings.bin_factor})
    if settings.model:
        config = config.replace(model=settings.model)
    for strategy in DEMO_STRATEGIES:
        t0 = time.perf_counter()
        # the random split uses one scan, as the paper's 80:20 experiment did
        scans = bundles[:1] if strategy == "random" else bundles
        if strategy == "extrapolate":
            # Extrapolation trains on the first scan with the same settings and
            # split as the random experiment: the very same training runs.
            _reuse_training(root / "random" / "models" / "random",
                            root / "extrapolate" / "models" / "extrapolate", config.model)
        run_crossscan(scans, root / strategy, strategy, config, quiet=quiet,
                      figures=settings.figures)
        timings[strategy] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    with atomic_output(root / "timings.json") as tmp:
        tmp.write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=1))
    return write_index(root, timings)


def _reuse_training(src: Path, dst: Path, model: str) -> None:
    """Copy finished training runs (main model and baseline) to where another experiment looks.

    Only called where both experiments train on the same scans with the same
    configuration; :func:`stem2eds.experiments.crossscan.run_crossscan` then finds them
    finished and skips training.
    """
    from .common import BASELINE_MODEL, model_folder

    if dst.exists() or not all((src / m / "weights.safetensors").is_file()
                               for m in (model_folder(model), BASELINE_MODEL)):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)


def write_index(root: Path, timings: dict[str, float] | None = None) -> Path:
    """Write ``root/index.html`` linking the demo's reports with their headline numbers."""
    from ..formats.metrics_file import metrics_path, read_metrics
    from ..report import render_index, summary_table_html

    if timings is None and (root / "timings.json").is_file():
        timings = json.loads((root / "timings.json").read_text())
    entries = []
    for strategy in DEMO_STRATEGIES:
        if not metrics_path(root / strategy).is_file():
            continue
        metrics = read_metrics(root / strategy)
        took = f"<p>Took {timings[strategy]:.0f} s.</p>" if timings and strategy in timings \
            else ""
        about = html.escape(metrics.get("split_description", ""))
        entries.append((strategy, f"{strategy}/report.html",
                        f"<p>{about}.</p>" + summary_table_html(metrics) + took))
    index = root / "index.html"
    with atomic_output(index) as tmp:
        tmp.write_text(render_index(entries, "stem2eds demo: simulated Ge-Sb-Te series"),
                       encoding="utf-8")
    return index
