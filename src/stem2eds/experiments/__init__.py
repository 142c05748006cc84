"""Workflows that chain the pipeline steps and write a run folder with a report.

========================  ==========================================================
module                    workflow
========================  ==========================================================
:mod:`.crossscan`         cross-scan strategies: train, predict unseen scans, score
:mod:`.sparse`            strategy ``sparse``: sparse EDS, uncertainty, anomalies
                          (steps in :mod:`.sparse_coverage`, :mod:`.sparse_anomaly`)
:mod:`.common`            what both share: scan names, targets, scoring, caches
:mod:`.ensemble`          deep ensembles (several seeds of one configuration)
:mod:`.demo`              ``stem2eds demo``: simulate a series and run the experiments
========================  ==========================================================

:func:`run_experiment` is the one entry point for every strategy; it is the
only place that knows which workflow runs which strategy (the workflows do
not import each other).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

#: Every strategy :func:`run_experiment` accepts.
STRATEGIES = ("random", "extrapolate", "interpolate", "leave-one-out", "sparse")


def run_experiment(bundles: Sequence[str | os.PathLike], run_dir: str | os.PathLike,
                   strategy: str, config=None, *, calibration: str = "linear",
                   quiet: bool = False, figures: bool = True,
                   sparse: dict[str, Any] | None = None) -> Path:
    """Run an experiment of any strategy and write RUN_DIR.

    Parameters
    ----------
    bundles : sequence of path-like
        Raw scan bundles in series order (for ``sparse``: training scans
        first, the new scan last).
    run_dir : path-like
        Output folder.
    strategy : {"random", "extrapolate", "interpolate", "leave-one-out", "sparse"}
    config : TrainConfig, optional
    calibration : {"linear", "poly", "isotonic"}
        Cross-scan strategies only.
    quiet, figures : bool
    sparse : dict, optional
        Keyword arguments of :func:`stem2eds.experiments.sparse.run_sparse_experiment`
        (``fractions``, ``pattern``, ``ensemble``, ...) for ``strategy="sparse"``.

    Returns
    -------
    Path
        ``run_dir``.
    """
    from .common import locked_run_dir

    with locked_run_dir(run_dir, bundles):
        if strategy == "sparse":
            from .sparse import run_sparse_experiment

            return run_sparse_experiment(bundles, run_dir, config=config, quiet=quiet,
                                         figures=figures, **(sparse or {}))
        from .crossscan import run_crossscan

        return run_crossscan(bundles, run_dir, strategy, config, calibration=calibration,
                             quiet=quiet, figures=figures)
