"""An experiment folder read into the map explorer's records (``ScanView``).

Sources, per predicted scan ``<scan>``:

- ``predictions/calibrated/<scan>.h5`` (else ``predictions/<scan>.h5``): the
  predicted maps shown; ``predictions/<scan>.h5`` also gives ``eds_std`` and
  the per-position OOD score (dataset ``ood``) when present, and ``source``,
  the raw bundle whose diffraction patterns are shown;
- ``targets/<scan>.h5``: the measured (preprocessed) EDS and the crop of the
  map grid on the raw scan;
- ``anomaly/<scan>.h5``: the anomaly score and the crystallinity
  (``crystallinity``, ``crystalline``) when present.

The raw bundle is streamed once per scan: the patterns of a subsampled grid
go into the sprite sheet and every pattern's sum into a ``pattern sum``
navigator image (HyperSpy's default navigator).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from ..formats.bundle import open_bundle
from ..formats.names import name_in_folder
from ..formats.prediction import read_prediction
from ..formats.targets_file import read_targets
from ..progress import track_blocks
from .interactive import ScanView, bin_factor, bin_patterns, sample_grid, sprite_sheet, to_uint8

#: Patterns streamed per block when building the sprite.
_BATCH = 1024


def grid_patterns(bundle: str | Path, crop: tuple[int, int, int, int] | None,
                  shape: tuple[int, int], quiet: bool = True) -> tuple[Any, np.ndarray, Any]:
    """Sprite of a subsampled grid and the pattern-sum map, from one pass over a raw bundle.

    Parameters
    ----------
    bundle : path-like
        The raw scan bundle.
    crop : (r0, r1, c0, c1) or None
        The map grid on the raw scan (maps are ``raw[r0:r1, c0:c1]``); None:
        the maps cover the whole scan (refused when the shapes differ).
    shape : (int, int)
        Map shape (Rx', Ry') = ``(r1 - r0, c1 - c0)``.
    quiet : bool
        No progress on stderr.

    Returns
    -------
    sprite : PatternSprite
        Rows and columns on the map grid.
    total : ndarray, shape (Rx', Ry')
        Sum of each pattern (a virtual detector over the whole pattern).
    calibration : PixelCalibration
    """
    rows, cols = sample_grid(shape)
    with open_bundle(bundle, require=("diffraction",)) as scan:
        r0, r1, c0, c1 = crop or (0, scan.scan_shape[0], 0, scan.scan_shape[1])
        if (r1 - r0, c1 - c0) != tuple(shape) or r1 > scan.scan_shape[0] \
                or c1 > scan.scan_shape[1]:
            raise InputError(f"maps of shape {tuple(shape)} do not fit the scan "
                             f"{scan.scan_shape} with crop {[r0, r1, c0, c1]}", path=bundle)
        width = scan.scan_shape[1]
        binning = bin_factor(scan.detector_shape)
        wanted = {(r + r0) * width + (c + c0): k for k, (r, c) in
                  enumerate((r, c) for r in rows for c in cols)}
        qx, qy = (q // binning for q in scan.detector_shape)
        picked = np.zeros((len(wanted), qx, qy), np.float64)  # binned: at most 64 x 64
        total = np.zeros(scan.scan_shape, np.float64).ravel()
        for start, block in track_blocks(scan.iter_patterns(batch=_BATCH), scan.n_patterns,
                                         f"report: patterns of {scan.name}", quiet):
            total[start:start + len(block)] = block.reshape(len(block), -1).sum(axis=1)
            for flat in range(start, start + len(block)):
                if flat in wanted:
                    picked[wanted[flat]] = bin_patterns(block[flat - start][None], binning)[0]
        cal = scan.calibration
    cells, scaling = to_uint8(picked, binning)
    total = total.reshape(-1, width)[r0:r1, c0:c1]
    return sprite_sheet(cells, rows, cols, scaling), total.astype(np.float32), cal


def _anomaly_scores(path: Path) -> dict[str, np.ndarray | None]:
    """Anomaly score and crystallinity of ``anomaly/<scan>.h5`` (None: not computed)."""
    from ..formats.anomaly_file import read_anomaly

    out: dict[str, np.ndarray | None] = {"crystallinity": None, "crystalline": None}
    if not path.is_file():
        return out
    record = read_anomaly(path)
    out["anomaly score"] = record.score
    for label, values in (("crystallinity", record.crystallinity),
                          ("crystalline", record.crystalline)):
        out[label] = None if values is None else values.astype(np.float32)
    return out


def _crop(run: Path, name: str, shape: tuple[int, int]) -> tuple[Any, Any]:
    """(measured Targets or None, crop) of one scan."""
    path = name_in_folder(run / "targets", name, ".h5")
    if path.is_file():
        targets, _ = read_targets(path)
        return targets, targets.crop
    return None, None


def scan_view(run: Path, name: str, quiet: bool = True) -> ScanView | None:
    """The explorer's record of one predicted scan of ``run`` (None: no prediction file)."""
    raw_path = name_in_folder(run / "predictions", name, ".h5")
    if not raw_path.is_file():
        return None
    raw = read_prediction(raw_path)
    calibrated = name_in_folder(run / "predictions" / "calibrated", name, ".h5")
    shown = read_prediction(calibrated) if calibrated.is_file() else raw
    shape = tuple(int(s) for s in shown.eds.shape[1:])
    targets, crop = _crop(run, name, shape)
    measured = None
    if targets is not None and targets.eds.shape == shown.eds.shape:
        measured = targets.eds
    ood = raw.ood  # the per-position OOD score (stem2eds.analysis.ood), when predicted with it
    scores = {"OOD score": None if ood is None else np.asarray(ood, np.float32)}
    scores.update(_anomaly_scores(name_in_folder(run / "anomaly", name, ".h5")))
    view = ScanView(name, list(shown.elements), shown.eds, measured, raw.eds_std, scores,
                    note=("calibrated prediction" if shown is not raw else "prediction")
                    + (" vs the preprocessed EDS (training target)" if measured is not None
                       else "; no measured EDS in this run"))
    if targets is not None and targets.haadf is not None:
        view.layers["HAADF (measured)"] = targets.haadf
    if raw.haadf is not None:
        view.layers["HAADF (predicted)"] = raw.haadf
    source = raw.attrs.get("source")
    try:
        if not source:
            raise InputError("the prediction file names no source bundle", path=raw_path)
        view.sprite, view.layers["pattern sum"], cal = grid_patterns(source, crop, shape,
                                                                     quiet)
        view.pixel_size, view.pixel_unit = cal.r_pixel_size, cal.r_pixel_unit
    except InputError as exc:
        # The report still shows the maps when the raw scan moved or was deleted.
        view.note += f"; diffraction patterns not shown: {exc}"
    return view


def collect_views(run: str | Path, metrics: Mapping[str, Any],
                  quiet: bool = True) -> list[ScanView]:
    """One :class:`ScanView` per predicted scan of an experiment folder.

    Parameters
    ----------
    run : path-like
        The experiment folder.
    metrics : mapping
        Its ``metrics.json`` (the scans are ``test_scans``, or ``target_scan``
        of a sparse run).
    quiet : bool
        No progress while the raw scans are read (library callers are quiet
        by default; ``stem2eds report`` shows it).

    Returns
    -------
    list of ScanView
        Scans without a prediction file are left out.
    """
    run = Path(run)
    names = ([metrics["target_scan"]] if metrics.get("target_scan")
             else list(metrics.get("test_scans") or metrics.get("scans") or []))
    views = [scan_view(run, str(n), quiet) for n in names]
    return [v for v in views if v is not None]
