"""Pieces every experiment shares: scan names, targets, scoring, the preprocessed-scan cache.

Both workflows (:mod:`.crossscan` and :mod:`.sparse`) import from here and
never from each other.

Training runs of a cross-scan experiment are named after the model they
train: ``models/<part>/<model>`` (e.g. ``models/extrapolate/radial``) beside
the baseline's ``models/<part>/ridge``. When the chosen model *is* the
baseline model, its folder is ``models/<part>/ridge_main`` so the two runs
never share a folder (:func:`model_folder`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .. import metrics
from ..errors import InputError
from ..formats.bundle import TRUTH, fingerprint, open_bundle
from ..formats.names import check_file_name, name_in_folder
from ..formats.prediction import write_prediction_file
from ..formats.targets_file import Targets

#: The model every cross-scan training run is repeated with.
BASELINE_MODEL = "ridge"


def model_folder(model: str) -> str:
    """Folder name (under ``models/<part>``) of the main model's training run.

    Parameters
    ----------
    model : str
        Registered model name of the main model.

    Returns
    -------
    str
        ``model``, or ``"<model>_main"`` when it is the baseline model (whose
        run has the folder ``BASELINE_MODEL``).
    """
    return f"{model}_main" if model == BASELINE_MODEL else model


def prepare_run_dir(run_dir: str | os.PathLike) -> Path:
    """``run_dir`` as a Path, refused when it exists and is not a folder (not created)."""
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise InputError("output exists and is not a folder", path=run,
                         hint="choose another output folder")
    return run


#: What an experiment writes in its folder; no input may lie there.
PRODUCTS = ("predictions", "targets", "preprocessed", "models", "anomaly", "figures",
            "metrics.json", "report.html")


@contextlib.contextmanager
def locked_run_dir(run_dir: str | os.PathLike, bundles: Sequence[str | os.PathLike]
                   ) -> Iterator[Path]:
    """Check, create and lock an experiment's folder while the experiment writes it.

    No input bundle may be the folder or lie among what the experiment
    writes (:data:`PRODUCTS`). A second experiment into the same folder gets
    an InputError naming the process that holds it (an OS lock, released
    when the holder dies). A folder this call created is removed again when
    the experiment fails before writing anything into it.
    """
    from ..atomic import check_path_encoding, refuse_overwrite
    from ..atomic import folder_lock

    run = prepare_run_dir(run_dir)
    check_path_encoding(run, "run_dir")
    for b in bundles:
        refuse_overwrite(run, b, what="run_dir", contents=False)
        for product in PRODUCTS:
            refuse_overwrite(run / product, b, what="run_dir")
    run.parent.mkdir(parents=True, exist_ok=True)
    try:
        run.mkdir()
        created = True
    except FileExistsError:
        created = False
    try:
        with folder_lock(run):
            yield run
    except BaseException:
        if created and not any(run.iterdir()):
            run.rmdir()
        raise


def scan_file(folder: Path, name: str, suffix: str = ".h5") -> Path:
    """``folder/<scan><suffix>``: a scan name becomes a path only through this check."""
    return name_in_folder(folder, name, suffix)


def scan_names(bundles: Sequence[Path]) -> list[str]:
    """Scan names of raw bundles (need diffraction and EDS); each must appear once.

    Parameters
    ----------
    bundles : sequence of Path

    Returns
    -------
    list of str
        One name per bundle, in order.

    Raises
    ------
    InputError
        A bundle lacks diffraction or EDS, or two bundles have the same scan name.
    """
    names = []
    for path in bundles:
        with open_bundle(path, require=("diffraction", "eds")) as scan:
            names.append(check_file_name(scan.name, "attribute 'scan_name'", path))
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"scan name(s) {', '.join(dupes)} appear more than once",
                         hint="give each bundle once; scan names come from the bundles' "
                              "scan_name attribute")
    return names


def cropped_shape(path: Path, settings) -> tuple[int, int]:
    """Scan shape ``(Rx', Ry')`` of a raw bundle after the settings' crop."""
    from ..preprocess.maps import check_crop

    with open_bundle(path) as scan:
        r0, r1, c0, c1 = check_crop(getattr(settings, "crop", None), scan.scan_shape)
    return r1 - r0, c1 - c0


def load_targets(bundle: Path, settings, elements: Sequence[str],
                 evaluated: np.ndarray | None = None,
                 train_positions: np.ndarray | None = None) -> Targets:
    """Read the target maps of a raw bundle, preprocessed as the model saw them.

    Parameters
    ----------
    bundle : Path
        Raw scan bundle.
    settings : PreprocessSettings
        The training run's resolved settings (blur and crop are applied
        exactly as in training, by :func:`stem2eds.preprocess.preprocess_maps`).
    elements : sequence of str
    evaluated, train_positions : ndarray of bool, shape (Rx', Ry'), optional
        Default: every position evaluated / none trained on.

    Returns
    -------
    Targets
        EDS clipped to [0, 1], shape (E, Rx', Ry').
    """
    from ..preprocess import crop_maps, preprocess_maps
    from ..preprocess.maps import check_crop

    with open_bundle(bundle, require=("eds",)) as scan:
        box = check_crop(getattr(settings, "crop", None), scan.scan_shape)
        eds = preprocess_maps(scan.eds(elements), settings)
        haadf = scan.haadf
        haadf = None if haadf is None else crop_maps(haadf, box)
        truth = None
        if scan.has(TRUTH) and all(e in scan.file[TRUTH] for e in elements):
            truth = crop_maps(scan.maps(TRUTH, elements), box)
    shape = eds.shape[1:]
    if evaluated is None:
        evaluated = np.ones(shape, bool)
    if train_positions is None:
        train_positions = np.zeros(shape, bool)
    return Targets(np.clip(eds, 0, 1), haadf, truth, evaluated, train_positions, box)


def score_scan(eds_pred: np.ndarray, haadf_pred: np.ndarray | None, targets: Targets,
               elements: Sequence[str]) -> dict[str, Any]:
    """Metrics of one predicted scan on its evaluated positions.

    Parameters
    ----------
    eds_pred : ndarray, shape (E, Rx', Ry')
    haadf_pred : ndarray, shape (Rx', Ry'), or None
    targets : Targets
    elements : sequence of str

    Returns
    -------
    dict
        ``{metric: {El: value}}`` plus ``haadf: {metric: value}`` when both
        predicted and real HAADF exist.
    """
    out: dict[str, Any] = metrics.element_metrics(eds_pred, targets.eds, elements,
                                                  targets.evaluated)
    if haadf_pred is not None and targets.haadf is not None:
        out["haadf"] = metrics.single_metrics(haadf_pred, targets.haadf, targets.evaluated)
    return out


def summarize_scores(per_scan: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean/std over scans of :func:`score_scan` results (HAADF summarised apart)."""
    summary = metrics.summarize({s: {k: v for k, v in d.items() if k != "haadf"}
                                 for s, d in per_scan.items()})
    haadf = {s: d["haadf"] for s, d in per_scan.items() if "haadf" in d}
    if haadf:
        summary["haadf"] = metrics.summarize_single(haadf)
    return summary


def save_prediction(path: Path, eds: np.ndarray, haadf: np.ndarray | None,
                    elements: Sequence[str], scan_name: str, predictor, source: Path,
                    **extra: Any) -> None:
    """Write maps (E, Rx', Ry') as a prediction file with the attributes ``predict`` gives."""
    from .. import __version__

    write_prediction_file(path, elements, eds, haadf=haadf, attrs={
        "scan_name": scan_name, "model": predictor.model_name,
        "run_dir": str(Path(predictor.run_dir).resolve()), "stem2eds_version": __version__,
        "scan_shape": list(np.shape(eds)[1:]), "targets": list(predictor.targets),
        "source": str(Path(source).resolve()), **extra})


class PreprocessedCache:
    """Each scan preprocessed once per set of settings, shared by every model that predicts it.

    Predicting from a preprocessed bundle gives the same numbers as predicting
    the raw bundle (``Predictor.predict_scan`` checks the settings match) but
    spares repeating the centring and binning for every model that predicts
    the scan. Files: ``RUN_DIR/preprocessed/<scan>_<fingerprint>.h5``, where
    the fingerprint covers the settings and the source's data (name, size,
    modification time, provenance): a source that changed under the same
    name gets a new file, never the old one.
    """

    def __init__(self, folder: Path, quiet: bool):
        self.folder = folder
        self.quiet = quiet

    def get(self, source: Path, name: str, settings) -> Path:
        """Path of ``source`` preprocessed with ``settings`` (made on first use)."""
        from ..preprocess import preprocess_bundle

        key = fingerprint([source], settings.to_dict())
        out = scan_file(self.folder, f"{name}_{key[:16]}")
        if not out.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            preprocess_bundle(source, out, settings, quiet=self.quiet)
        return out

    def predict(self, predictor, source: Path, name: str):
        """``predictor.predict_scan`` of the cached preprocessed scan."""
        return predictor.predict_scan(self.get(source, name, predictor.settings))
