"""What prediction needs from a training run, without importing the trainer.

``stem2eds.train.fit`` imports Lightning at module level (its LightningModule
and callbacks subclass Lightning's), which takes several seconds; a
``stem2eds predict`` process that only loads weights should not pay for it.
These definitions mirror ``stem2eds.train.fit``'s (``RUN_FORMAT``,
``RUN_FORMAT_VERSION``, ``_read_state``, ``apply_output_activation``); a test
(tests/test_performance.py) checks that the two stay identical.

Torch is imported only by :func:`apply_output_activation`, so that
``stem2eds predict`` can read the run description and start preprocessing
while torch loads (about 2 s).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError

RUN_FORMAT = "stem2eds-run"
RUN_FORMAT_VERSION = 1


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """Contents of ``run_dir/run.json``; InputError when missing or not a run description."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise InputError("no run.json: not a stem2eds run folder", path=run_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"run.json is not valid JSON ({exc})", path=run_dir) from None
    if data.get("format") != RUN_FORMAT:
        raise InputError("run.json is not a stem2eds run description", path=run_dir)
    return data


def apply_output_activation(raw: torch.Tensor, n_eds: int) -> torch.Tensor:
    """Output activations: EDS columns linear, the HAADF column (if any) ReLU.

    Parameters
    ----------
    raw : Tensor, shape (n, E [+ 1])
    n_eds : int
        Number of EDS columns (E); a column after them is HAADF.
    """
    import torch

    if raw.shape[1] == n_eds:
        return raw
    return torch.cat([raw[:, :n_eds], torch.relu(raw[:, n_eds:])], dim=1)
