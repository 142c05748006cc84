"""Deep ensembles: several training runs of one configuration with different seeds.

The members' predictions give a mean and a standard deviation per position
(:func:`stem2eds.analysis.uncertainty.ensemble_stats`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


def train_ensemble(bundles: Sequence[str | os.PathLike], folder: str | os.PathLike,
                   config=None, members: int = 5, quiet: bool = False) -> list[Path]:
    """Train (or reuse) ``members`` runs with seeds ``config.seed + k``.

    Parameters
    ----------
    bundles : sequence of path-like
        Raw training bundles.
    folder : path-like
        Runs go to ``folder/member_<k>``; finished runs there are reused, an
        interrupted one resumes from its checkpoint.
    config : TrainConfig, optional
    members : int
        Ensemble size (1 gives a single model).
    quiet : bool

    Returns
    -------
    list of Path
        The run folders.
    """
    from ..errors import InputError
    from ..train.config import TrainConfig
    from ..train.fit import ensure_trained

    if members < 1:
        raise InputError(f"ensemble must have at least 1 member, got {members}")
    config = config or TrainConfig()
    return [ensure_trained(bundles, Path(folder) / f"member_{k}",
                           config.replace(seed=config.seed + k), quiet=quiet)
            for k in range(members)]
