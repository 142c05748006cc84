"""``stem2eds predict --format``: a bundle predicted into a HyperSpy, TIFF or CSV file.

The HDF5 prediction file streams into place (:func:`stem2eds.predict.bundle.predict_bundle`);
the other formats hold whole maps, so the scan is predicted into memory
(E maps of Rx x Ry float32, small beside the patterns, which stream) with
:meth:`~stem2eds.predict.Predictor.predict` and then written by
:func:`stem2eds.predict.export.export_prediction`.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

from ..atomic import refuse_overwrite
from ..errors import InputError
from .export import export_prediction, format_for
from .predictor import load_run
from .scanning import refuse_run_outputs


def predict_to_file(run_dir: str | os.PathLike, bundle: str | os.PathLike,
                    out: str | os.PathLike, format: str, *, batch: int = 1024,
                    device: str = "cpu", scheduler=None, overwrite: bool = False,
                    transfer: bool = True) -> list[Path]:
    """Predict a raw bundle with a trained run and export the maps.

    Parameters
    ----------
    run_dir : path-like
        Finished training run.
    bundle : path-like
        Raw scan bundle.
    out : path-like
        The output (checked before the long prediction: format, ending,
        existing file, not an input).
    format : {"hdf5", "hspy", "zspy", "tiff", "csv"}
    batch : int
        Patterns per batch.
    device : {"cpu", "cuda", "auto"}
    scheduler : str or dask.distributed.Client, optional
        Preprocess on a Dask cluster (see :mod:`stem2eds.preprocess.distributed`).
    overwrite : bool
        Replace an existing output.
    transfer : bool
        Resample a scan of another detector setup onto the run's q grid.

    Returns
    -------
    list of Path
        The files written.
    """
    fmt = format_for(out, format)
    refuse_overwrite(out, bundle)
    refuse_run_outputs(out, run_dir)
    if Path(out).exists() and not overwrite:
        raise InputError("output exists", path=out, hint="choose another name, or pass "
                                                         "`overwrite`")
    if fmt == "zspy":
        from .export import check_zspy_writable

        check_zspy_writable()
    predictor = load_run(run_dir, device=device)
    if scheduler is not None:
        from ..preprocess.distributed import dask_client
    with (dask_client(scheduler) if scheduler is not None else nullcontext()) as client:
        pred = predictor.predict(bundle, batch=batch, client=client, transfer=transfer)
    attrs = {"model": predictor.model_name, "run_dir": str(Path(run_dir).resolve()),
             "source": str(Path(bundle).resolve())}
    return export_prediction(pred, out, fmt, overwrite=overwrite, attrs=attrs)
