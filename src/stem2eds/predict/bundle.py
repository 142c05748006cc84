"""``stem2eds predict``: a raw bundle in, a prediction file out, streaming.

Preprocessing of the scan starts from the run's ``run.json`` before torch is
imported and the model built (:class:`~stem2eds.io.stream.Prefetcher`), so the
first batches are ready when the model is.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path

from ..atomic import refuse_overwrite
from ..formats.bundle import open_bundle
from ..progress import track_blocks
from .predictor import Predictor, _load_model, finished_run
from .scanning import refuse_run_outputs, scan_calibration_attrs, started_stream, transferred


def predict_bundle(run_dir: str | os.PathLike, bundle: str | os.PathLike,
                   out: str | os.PathLike, *, batch: int = 1024, device: str = "cpu",
                   scheduler=None, quiet: bool = True, transfer: bool = True,
                   fork: bool = False) -> Path:
    """Predict a scan with a trained run and write the prediction file, streaming.

    Outputs are written into the file batch by batch as they are predicted
    (the file appears under ``out`` only when complete), so memory stays at
    a few batches of patterns whatever the scan size. For runs that filter
    their predictions (:meth:`Predictor.finish_eds`) the EDS maps are then
    read back, filtered and rewritten: E float32 maps, small beside the
    patterns (4 MB per element for a 1024 x 1024 scan).

    Parameters
    ----------
    run_dir : path-like
        Finished training run.
    bundle : path-like
        Raw scan bundle to predict.
    out : path-like
        Output prediction file (:mod:`stem2eds.formats.prediction`); root attributes
        ``scan_name``, ``model``, ``run_dir``, ``stem2eds_version``,
        ``scan_shape``, ``targets``, ``source``.
    batch : int
        Patterns per batch.
    device : {"cpu", "cuda", "auto"}
    scheduler : str or dask.distributed.Client, optional
        Preprocess on a Dask cluster (``"local"`` or a scheduler address; see
        :mod:`stem2eds.preprocess.distributed`); the model runs here.
    quiet : bool
        No progress on stderr (``stem2eds predict`` shows it unless ``--quiet``).
    transfer : bool
        Resample a scan of another camera length or binning onto the run's q
        grid (:func:`~stem2eds.predict.predictor.transferred`).
    fork : bool
        Measure the origins in a forked child while the model loads
        (:mod:`stem2eds.preprocess.forked`; Linux, and only where nothing else
        runs in the process yet: ``stem2eds predict`` sets it). Same results.

    Notes
    -----
    Runs that stored their training distribution (``ood.npz``) score every
    position (dataset ``ood``, attributes ``ood_score``, ``ood_threshold``,
    ``ood_outside``) and log a warning when the whole scan lies outside it.

    Returns
    -------
    Path
        ``out``.
    """
    from .. import __version__
    from ..formats.prediction import open_prediction_writer
    
    run_dir = Path(run_dir)
    out = Path(out)
    refuse_overwrite(out, bundle)
    refuse_run_outputs(out, run_dir)  # the run's own files are inputs too
    info, settings = finished_run(run_dir)
    if scheduler is not None:
        from ..preprocess.distributed import dask_client
    with open_bundle(bundle) as raw, \
            transferred(raw, info, transfer, distributed=scheduler is not None) as scan, \
            (dask_client(scheduler) if scheduler is not None else nullcontext()) as client:
        with started_stream(scan, settings, batch, client, fork) as early:
            predictor = _load_model(run_dir, info, settings, device)
            if early is not None:
                predictor.warm_up(scan)  # the numba kernel loads while origins are measured
            shape = predictor.output_shape(scan)
            attrs = {"scan_name": scan.name, "model": predictor.model_name,
                     "run_dir": str(run_dir.resolve()), "stem2eds_version": __version__,
                     "scan_shape": list(shape), "targets": list(predictor.targets),
                     "source": str(Path(bundle).resolve()),
                     "eds_filter": _filter_description(predictor)}
            # calibration of the maps (read by Prediction.load for to_hyperspy / to_xarray)
            attrs.update(scan_calibration_attrs(predictor, scan))
            monitor = predictor.start_ood(shape)
            with open_prediction_writer(out, predictor.elements,
                                        haadf="haadf" in predictor.targets, shape=shape,
                                        attrs=attrs) as writer:
                n, per_scan = shape[0] * shape[1], predictor.scan_normalised
                # a run normalised per scan computes the scan's statistics before its
                # first output: the progress is that pass
                outputs = predictor._outputs(scan, track_blocks(
                    early, n, "ring statistics of the scan", quiet) if per_scan else early) \
                    if early is not None else predictor.iter_outputs(scan, batch, client=client)
                for start, values in track_blocks(outputs, n, "predicting positions",
                                                  quiet or per_scan):
                    writer.write_flat(start, values)
                if predictor.filter_predictions:
                    writer.replace_eds(predictor.finish_eds(writer.read_eds()))
                if monitor is not None:
                    _write_ood(writer, monitor.result(), scan.name)
    return out


def _write_ood(writer, result, scan_name: str) -> None:
    """The OOD map and verdict into the prediction file; warnings for what it found."""
    writer.write_ood(result.positions, ood_attrs(result))
    warn_ood(result, scan_name)


def ood_attrs(result) -> dict:
    """The prediction file's root attributes of an OOD verdict (:class:`~stem2eds.analysis.ood.ScanScore`)."""
    return {"ood_score": result.score, "ood_threshold": result.threshold,
            "ood_outside": result.outside, "empty_positions": result.empty}


def warn_ood(result, scan_name: str) -> None:
    """One warning line each: the scan lies outside the training data; positions without counts."""
    log = logging.getLogger("stem2eds.predict")
    if result.outside:
        log.warning("%s: %s", scan_name, result.message())
    if result.empty:
        log.warning("%s: %s", scan_name, result.empty_message())


def _filter_description(predictor: Predictor) -> str:
    """How the EDS maps of a prediction file were filtered, for its attributes."""
    s = predictor.settings
    if not predictor.filter_predictions or s.eds_filter == "none":
        return "none (per-pattern predictions)"
    size = f"sigma {s.eds_sigma} px" if s.eds_sigma else f"{s.eds_kernel}x{s.eds_kernel}"
    return f"{s.eds_filter} {size}, as the training EDS targets"
