"""An experiment's ``metrics.json``: the one module that writes, reads and validates it.

``metrics.json`` lies at the top of an experiment's run folder
(``stem2eds experiment``). It is a JSON object whose layout depends on its
``strategy``:

- cross-scan strategies (``random``, ``extrapolate``, ``interpolate``,
  ``leave-one-out``): see :mod:`stem2eds.experiments.crossscan`;
- ``sparse``: see :mod:`stem2eds.experiments.sparse`.

Both may list figures as ``figures: [{"file", "title", "caption"}, ...]``.
A figure's ``file`` names a PNG in the run's own ``figures/`` folder, either
as a bare name (``"maps_0001.png"``, cross-scan runs) or as
``"figures/<name>"`` (sparse runs). Anything else (an absolute path, ``..``,
a subfolder) is refused when the file is read, so a report built from a
``metrics.json`` never embeds or links a file from outside ``RUN/figures``.

NaN and infinite numbers are written as ``null`` (strict JSON).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np

from ..atomic import atomic_output
from ..errors import InputError

FILE_NAME = "metrics.json"
FIGURES_FOLDER = "figures"

#: Keys every metrics.json has.
REQUIRED = ("strategy", "elements")
#: Further keys by strategy (what the report pages read without a default).
REQUIRED_BY_STRATEGY = {
    "sparse": ("target_scan", "train_scans", "model", "ensemble", "pattern", "fractions",
               "sampled_positions", "method_labels", "curve", "dose_saved", "anomaly",
               "scored_on", "sparse_values"),
}
REQUIRED_CROSSSCAN = ("scans", "summary")


def metrics_path(run_dir: str | os.PathLike) -> Path:
    """``run_dir/metrics.json``."""
    return Path(run_dir) / FILE_NAME


def to_jsonable(value: Any) -> Any:
    """Nested dicts/lists/arrays with NaN and inf turned into None (valid JSON).

    Parameters
    ----------
    value : object
        Mappings, sequences, ndarrays (any shape) and scalars, nested.

    Returns
    -------
    object
        The same structure of dicts, lists and Python scalars.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_metrics(run_dir: str | os.PathLike, doc: Mapping[str, Any]) -> Path:
    """Validate ``doc`` and write it to ``run_dir/metrics.json`` atomically.

    Parameters
    ----------
    run_dir : path-like
        The experiment's run folder (exists).
    doc : mapping
        The metrics document; NumPy scalars and arrays are converted, NaN
        becomes ``null``.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        ``doc`` lacks a required key or names a figure outside ``figures/``
        (a programming error caught before anything is written).
    """
    path = metrics_path(run_dir)
    data = to_jsonable(dict(doc))
    validate_metrics(data, path)
    text = json.dumps(data, indent=1)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``run_dir/metrics.json``.

    Parameters
    ----------
    run_dir : path-like
        An experiment's run folder.

    Returns
    -------
    dict
        The metrics document.

    Raises
    ------
    InputError
        No ``metrics.json`` there, it is not valid JSON, not a JSON object,
        lacks a required key, or lists a figure outside ``figures/``; the
        message names the file and the key.
    """
    run = Path(run_dir)
    path = metrics_path(run)
    if not path.is_file():
        raise InputError("no metrics.json here; not an experiment run directory", path=run,
                         hint="run the experiment into this folder first")
    from .jsonfile import read_json

    data = read_json(path, "metrics.json")
    validate_metrics(data, path)
    return data


def validate_metrics(data: Any, path: str | os.PathLike = FILE_NAME) -> None:
    """Check the structure of a metrics document.

    Parameters
    ----------
    data : object
        Parsed ``metrics.json``.
    path : path-like
        Named in the error message.

    Raises
    ------
    InputError
        Not a JSON object, a required key missing, ``elements`` not a list
        of names, or a bad ``figures`` entry (see :func:`figure_file`).
    """
    if not isinstance(data, dict):
        raise InputError(f"metrics.json is not a JSON object (got {type(data).__name__})",
                         path=path)
    strategy = data.get("strategy")
    needed = REQUIRED + REQUIRED_BY_STRATEGY.get(strategy, REQUIRED_CROSSSCAN)
    for key in needed:
        if key not in data:
            raise InputError(f"metrics.json lacks the required key {key!r}", path=path)
    if not isinstance(strategy, str):
        raise InputError("metrics.json key 'strategy' is not a string", path=path)
    elements = data["elements"]
    if not isinstance(elements, list) or not all(isinstance(e, str) for e in elements):
        raise InputError("metrics.json key 'elements' is not a list of element names",
                         path=path)
    from ..elements import check_element

    for e in elements:
        if check_element(e, source=path) != e:
            raise InputError(f"metrics.json key 'elements' holds {e[:20]!r}, not a symbol as "
                             "written by experiment", path=path)
    parts = data.get("parts", [])
    if not isinstance(parts, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str)
            and all(isinstance(p.get(k), list) and all(isinstance(s, str) for s in p[k])
                    for k in ("train_scans", "test_scans")) for p in parts):
        raise InputError("metrics.json key 'parts' is not a list of parts (name, train_scans, "
                         "test_scans)", path=path)
    figures = data.get("figures", [])
    if not isinstance(figures, list):
        raise InputError("metrics.json key 'figures' is not a list", path=path)
    for k, entry in enumerate(figures):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise InputError(f"metrics.json key 'figures[{k}].file' is missing or not a "
                             "string", path=path)
        figure_file(entry["file"], path, key=f"figures[{k}].file")


def figure_file(name: str, path: str | os.PathLike = FILE_NAME, key: str = "figures") -> str:
    """The file name, inside the run's ``figures/``, of a figure entry's ``file``.

    Parameters
    ----------
    name : str
        ``"<name>.png"`` or ``"figures/<name>.png"``.
    path : path-like
        The ``metrics.json`` concerned (named in the error).
    key : str
        The entry's key (named in the error).

    Returns
    -------
    str
        The bare file name (no folder).

    Raises
    ------
    InputError
        An absolute path, ``..``, a backslash, an empty name or any folder
        other than ``figures/``.
    """
    parts = PurePosixPath(name).parts
    bad = (not name or "\\" in name or ":" in name or name.startswith("/")
           or name.endswith("/") or any(p in ("", ".", "..") for p in parts)
           or not (len(parts) == 1 or (len(parts) == 2 and parts[0] == FIGURES_FOLDER)))
    if bad:
        raise InputError(f"metrics.json key {key!r} names {name!r}, not a file in the run's "
                         f"{FIGURES_FOLDER}/ folder", path=path)
    return parts[-1]


def figure_path(run_dir: str | os.PathLike, name: str) -> Path:
    """``run_dir/figures/<file>`` of a figure entry's ``file`` (validated by :func:`figure_file`)."""
    run = Path(run_dir)
    path = run / FIGURES_FOLDER / figure_file(name, metrics_path(run))
    # A link in figures/ pointing elsewhere would embed that file in the report.
    if path.is_symlink() or (path.exists() and (run / FIGURES_FOLDER).resolve()
                             not in path.resolve().parents):
        raise InputError(f"figure {name!r} is a link out of the run's {FIGURES_FOLDER}/ folder",
                         path=path)
    return path
