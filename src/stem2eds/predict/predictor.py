"""Prediction from a run directory: EDS atomic-fraction maps and HAADF for any raw scan.

Raw scans stream from the bundle in blocks with their fitted origins, through
the fused ring statistics (ring models) or preprocessed with the run's stored
settings (:func:`stem2eds.preprocess.iter_preprocessed`, exactly as in
training), then through the model (:mod:`stem2eds.predict.heads`: torch, or
numpy for ring models on the CPU, without importing torch). Reading and
preprocessing run in background threads ahead of the model (numpy, OpenCV,
HDF5 and torch release the GIL); :func:`stem2eds.predict.bundle.predict_bundle`
starts reading before the model is built and writes the outputs as they come.
On CUDA, batches go through pinned memory and the trainable layers run under
autocast; front ends that subtract large similar sums stay in float32.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..errors import InputError
from ..formats.bundle import ScanBundle, open_bundle
# not from ..train: that would import Lightning (seconds of start-up) for nothing here
from ..formats.rundir import RunDir
from .heads import Head, finished_run, load_head  # noqa: F401 - finished_run: public here
from .per_scan import PerScanPrediction
from .result import Prediction
from .scanning import (_cropped_shape, _raw_stream, check_preprocessed, scan_step_nm,
                       transferred)

if TYPE_CHECKING:  # torch is imported when the model is built
    import torch


class Predictor(PerScanPrediction):
    """A trained model with its preprocessing settings, ready to predict scans.

    Use :func:`load_run`.

    Attributes
    ----------
    run_dir : Path
    info : dict
        Contents of ``run.json``.
    head : Head
        What runs the model (:mod:`stem2eds.predict.heads`).
    model : torch.nn.Module
        The network in eval mode, on ``device`` (built on first use when the
        head is numpy).
    settings : PreprocessSettings
        Resolved preprocessing of the training data.
    """

    #: Scores the preprocessed patterns as they stream to the model
    #: (:meth:`start_ood`); None: no OOD score.
    ood_monitor = None

    def start_ood(self, scan_shape: tuple[int, int]):
        """Score the next scan's positions (an :class:`~stem2eds.analysis.ood.OodMonitor`).

        None (and no scoring) for runs made without ``ood.npz``.
        """
        from ..analysis.ood import OodMonitor, OodReference

        run = RunDir(self.run_dir)
        arrays = run.read_ood()
        self.ood_monitor = None if arrays is None else OodMonitor(OodReference.from_arrays(
            arrays, tuple(self.info["input_shape"]), run.ood_npz), scan_shape)
        return self.ood_monitor

    def __init__(self, run_dir: Path, info: dict[str, Any], head: Head, settings):
        self.run_dir = run_dir
        self.info = info
        self.head = head
        self.settings = settings

    @property
    def model(self) -> torch.nn.Module:
        return self.head.model

    @property
    def device(self) -> torch.device:
        return self.head.device

    @property
    def elements(self) -> list[str]:
        return list(self.info["elements"])

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.info["targets"])

    @property
    def model_name(self) -> str:
        return str(self.info["model"])

    @property
    def filter_predictions(self) -> bool:
        """Whether predicted EDS maps get the training targets' filter (``run.json``).

        Runs written before this option existed predicted pattern by pattern.
        """
        return bool(self.info.get("filter_predictions", False))

    def finish_eds(self, eds: np.ndarray, filtered: bool | None = None) -> np.ndarray:
        """The run's spatial filter on whole predicted EDS maps.

        The EDS targets were filtered (``settings.eds_filter``, e.g. the
        paper's 7x7 Gaussian) before training, so the model predicts a
        filtered map; filtering its per-pattern predictions the same way
        averages out the noise of single patterns as the targets' filter
        averaged the EDS counts. A no-op for runs that do not filter.

        Parameters
        ----------
        eds : ndarray, shape (E, Rx', Ry')
            Per-pattern predictions (atomic fractions).
        filtered : bool, optional
            Override the run's choice (e.g. to compare with and without).

        Returns
        -------
        ndarray, shape (E, Rx', Ry'), float32 in [0, 1]
        """
        if not (self.filter_predictions if filtered is None else filtered):
            return eds
        from ..preprocess.maps import filter_maps

        s = self.settings
        return filter_maps(eds, s.eds_filter, s.eds_kernel, s.eds_sigma)

    @property
    def haadf_scale(self) -> float | None:
        return self.info.get("target_scales", {}).get("haadf")

    def predict_patterns(self, patterns: np.ndarray) -> np.ndarray:
        """Outputs for preprocessed patterns.

        Parameters
        ----------
        patterns : ndarray, shape (n, Qb, Qb), float32
            Preprocessed patterns (as in a preprocessed bundle).

        Returns
        -------
        ndarray, shape (n, E [+ 1]), float32
            EDS atomic fractions clipped to [0, 1], then HAADF in detector units.
        """
        return self._finish(self.head.outputs(patterns))

    def predict(self, data, batch: int = 1024, filtered: bool | None = None, *,
                client=None, name: str | None = None, transfer: bool = True) -> Prediction:
        """Predict every probe position of a scan, streamed in blocks of ``batch`` patterns.

        Parameters
        ----------
        data : path-like, ScanBundle, ScanSource, ndarray, dask array, HyperSpy signal or DataCube
            A raw bundle (or one preprocessed with the run's settings), any
            :class:`~stem2eds.io.scan.ScanSource`, or a raw scan in memory,
            (Rx, Ry, Qx, Qy) (see :func:`stem2eds.predict.sources.as_scan`);
            it is preprocessed with the run's settings, block by block.
        batch : int
            Patterns per batch (memory use is about ``batch`` patterns).
        filtered : bool, optional
            Filter the EDS maps (:meth:`finish_eds`) or not; default: as the
            run says (``filter_predictions`` in ``run.json``).
        client : dask.distributed.Client or str, optional
            Preprocess on a Dask cluster; bundle files only (workers reopen them).
        name : str, optional
            Name of an in-memory scan (default: its title or ``"array"``).
        transfer : bool
            Resample a scan of another detector setup onto the run's q grid
            (:func:`transferred`); False predicts its patterns as they are.

        Returns
        -------
        Prediction
            With the scan step (nm, when calibrated) and name of the source.
        """
        from ..io.scan import ScanSource
        from .sources import as_scan

        distributed = client is not None
        if isinstance(data, ScanBundle):
            with transferred(data, self.info, transfer, distributed) as scan:
                return self._predict_open(scan, batch, filtered, client)
        if isinstance(data, (str, os.PathLike)):
            with open_bundle(data) as raw, \
                    transferred(raw, self.info, transfer, distributed) as scan:
                return self._predict_open(scan, batch, filtered, client)
        scan = data if isinstance(data, ScanSource) else as_scan(data, name)
        if client is not None and scan.path is None:
            raise InputError("a Dask `client` reads the scan from its file on every worker, "
                             "but this scan is in memory",
                             hint="write it as a bundle (stem2eds.create_bundle) and predict "
                                  "that, or predict without `client`")
        with transferred(scan, self.info, transfer) as seen:
            return self._predict_open(seen, batch, filtered)

    def predict_scan(self, bundle: str | os.PathLike | ScanBundle,
                     batch: int = 1024, filtered: bool | None = None,
                     transfer: bool = True) -> Prediction:
        """Predict a bundle: :meth:`predict` (kept for existing notebooks)."""
        return self.predict(bundle, batch, filtered, transfer=transfer)

    def _predict_open(self, scan, batch: int, filtered: bool | None = None,
                      client=None) -> Prediction:
        """Prediction of an open scan source (:class:`stem2eds.io.scan.ScanSource`)."""
        rx, ry = self.output_shape(scan)
        n_eds = len(self.elements)
        out = np.empty((rx * ry, self.n_outputs), dtype=np.float32)
        for start, values in self.iter_outputs(scan, batch, client=client):
            out[start:start + len(values)] = values
        eds = out[:, :n_eds].T.reshape(n_eds, rx, ry).copy()
        eds = self.finish_eds(eds, filtered)
        haadf = out[:, n_eds].reshape(rx, ry).copy() if out.shape[1] > n_eds else None
        return Prediction(eds, haadf, self.elements, (rx, ry),
                          scan_step_nm=scan_step_nm(scan.calibration),
                          source_name=scan.name, offset=self._offset(scan))

    def _offset(self, scan) -> tuple[int, int]:
        """First predicted position in the source scan: the run's crop of a raw scan."""
        crop = self.settings.crop
        if scan.kind == "preprocessed" or crop is None:
            return (0, 0)
        return (int(crop[0]), int(crop[2]))

    @property
    def n_outputs(self) -> int:
        return len(self.elements) + (1 if "haadf" in self.targets else 0)

    def output_shape(self, scan: ScanBundle) -> tuple[int, int]:
        """Scan shape (Rx', Ry') of the predicted maps (after the run's crop for raw bundles)."""
        if scan.kind == "preprocessed":
            return tuple(scan.scan_shape)  # type: ignore[return-value]
        return _cropped_shape(scan.scan_shape, self.settings.crop, scan.path)

    def iter_outputs(self, scan: ScanBundle, batch: int = 1024, read_ahead: int = 2,
                     client=None) -> "Iterator[tuple[int, np.ndarray]]":
        """Stream the outputs of an open bundle, batch by batch, in scan (C) order.

        Raw blocks (with their fitted origins) are read in a background
        thread ``read_ahead`` blocks ahead of the model. For a model whose
        front end is ring statistics (``radial``, ``ridge``) they go through
        the fused front end (:mod:`stem2eds.features`: no preprocessed
        patterns are formed); other models get them preprocessed in a
        thread ahead of the model. With a Dask ``client`` the preprocessing
        runs on the cluster's workers (blocks of scan rows, arriving in any
        order) and the model here.

        Yields
        ------
        start : int
            Flat index (in the predicted, cropped scan) of the batch's first position.
        outputs : ndarray, shape (n, E [+ 1]), float32
            As :meth:`predict_patterns`.
        """
        from ..io.stream import prefetch

        if batch < 1:
            raise InputError(f"batch must be positive, got {batch}")
        if scan.kind == "preprocessed":
            check_preprocessed(scan, self.settings)
            stream = scan.iter_patterns(batch=batch)
        else:
            self.output_shape(scan)  # checks the crop before the long pass
            stream = _raw_stream(scan, self.settings, batch, client)
        if read_ahead > 0:
            stream = prefetch(stream, read_ahead)
        return self._outputs(scan, stream)

    def _outputs(self, scan: ScanBundle, stream) -> "Iterator[tuple[int, np.ndarray]]":
        """Model outputs of a stream of (start, preprocessed patterns or raw blocks).

        Raw blocks (:class:`stem2eds.features.stream.RawBlock`, from
        :func:`_raw_stream`) go through the fused ring statistics when the
        model starts with ring statistics (:class:`~stem2eds.models.rings.RingFrontend`)
        and the run centres after binning (numba on CPU, torch on CUDA);
        otherwise they are preprocessed as ever, in a thread ahead of the model.
        """
        from ..features.stream import RawBlock

        stream = iter(stream)
        first = next(stream, None)
        if first is None:
            return
        stream = itertools.chain([first], stream)
        fused = isinstance(first[1], RawBlock) and self._fused()
        if self.scan_normalised:
            if not fused:
                raise self._whole_scans_only("from raw bundles through the fused ring statistics")
            yield from self._scan_outputs(scan, stream)
            return
        if isinstance(first[1], RawBlock):
            if fused:
                for start, block in stream:
                    yield start, self._predict_block(scan, start, block)
                return
            from ..io.stream import prefetch

            stream = prefetch(((start, block.preprocessed(self.settings))
                               for start, block in stream), 2)
        for start, patterns in stream:
            self._check_input_shape(scan, patterns.shape[1:])
            if self.ood_monitor is not None:
                self.ood_monitor.observe(start, patterns)
            yield start, self.predict_patterns(patterns)

    def predict_raw(self, patterns: np.ndarray, origins: np.ndarray,
                    beam_radius: float) -> np.ndarray:
        """Outputs of raw patterns centred on given origins (e.g. a LiberTEM tile).

        The fused ring statistics when the model can take them (as
        :meth:`iter_outputs` does), else the run's preprocessing then
        :meth:`predict_patterns`.

        Parameters
        ----------
        patterns : ndarray, shape (n, Qx, Qy)
            Raw counts on the run's detector.
        origins : ndarray, shape (n, 2)
            Fitted origins (row, column), detector px.
        beam_radius : float
            Radius of the removed central disk, detector px.

        Returns
        -------
        ndarray, shape (n, E [+ 1]), float32
        """
        from ..features.stream import RawBlock

        if self.scan_normalised:
            raise self._whole_scans_only("with `stem2eds predict` (either engine) or "
                                         "Predictor.predict")
        block = RawBlock(np.ascontiguousarray(patterns), np.asarray(origins, np.float64),
                         float(beam_radius))
        if self._fused():
            return self._predict_block(None, 0, block)
        values = block.preprocessed(self.settings)
        self._check_input_shape(None, values.shape[1:])
        return self.predict_patterns(values)

    def predict_raw_with_means(self, patterns: np.ndarray, origins: np.ndarray,
                               beam_radius: float) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_raw` and each pattern's ring means (n, R), which the OOD score takes.

        For runs whose raw patterns go through the fused ring statistics
        (:attr:`fused`); the means come from the same pass.
        """
        from ..features.stream import RawBlock

        if self.scan_normalised or not self._fused():
            raise InputError("ring means come with the outputs only for ring models that "
                             "predict frame by frame", path=self.run_dir)
        block = RawBlock(np.ascontiguousarray(patterns), np.asarray(origins, np.float64),
                         float(beam_radius))
        used = self.head.ring_statistics
        geometry = block.geometry(self.settings, used if "mean" in used else used + ("mean",))
        self._check_input_shape(None, geometry.binned_shape)
        out, means = self.head.ring_outputs(block, geometry, self.settings, means=True)
        return self._finish(out), means

    @property
    def fused(self) -> bool:
        """Whether raw patterns go through the fused ring statistics (ring models, binned centring)."""
        return self._fused()

    def _check_input_shape(self, scan: ScanBundle | None, shape) -> None:
        if tuple(shape) != tuple(self.info["input_shape"]):
            raise InputError(f"preprocessed patterns are {shape[0]}x{shape[1]} but the model "
                             f"takes {self.info['input_shape'][0]}x{self.info['input_shape'][1]}",
                             path=None if scan is None else scan.path,
                             hint="use scans from the same detector setup")

    def _fused(self) -> bool:
        """Whether raw blocks go through the fused ring statistics (see :meth:`_outputs`)."""
        return self.head.ring_statistics is not None and self.settings.centring == "binned"

    def warm_up(self, scan: ScanBundle) -> threading.Thread | None:
        """Load the fused front end's compiled kernel for ``scan`` in a background thread.

        Loading the cached numba kernel is the slowest step of the fused
        path's start-up; started here, it overlaps the origin measurement
        that precedes the first block instead of following it
        (:func:`stem2eds.features.rings.load_kernel`). A no-op (None) unless
        raw blocks of ``scan`` will go through the numba ring statistics
        (:meth:`_fused`, on the CPU).
        """
        if scan.kind != "raw" or not self._fused() or self.head.device_type != "cpu":
            return None
        from ..features.rings import load_kernel

        return load_kernel(self.settings, tuple(int(v) for v in scan.detector_shape),
                           scan.diffraction.dtype, self.head.ring_statistics)

    def _predict_block(self, scan: ScanBundle | None, start: int, block) -> np.ndarray:
        """Outputs (n, E [+ 1]) of a raw block through the fused front end.

        The ring means the OOD score needs come from the same pass (added to
        the model's statistics when it does not use them).
        """
        geometry = self._block_geometry(scan, block)
        out, means = self.head.ring_outputs(block, geometry, self.settings,
                                            means=self.ood_monitor is not None)
        if self.ood_monitor is not None:
            self.ood_monitor.observe_means(start, means)
        return self._finish(out)

    def _block_geometry(self, scan: ScanBundle | None, block):
        """A raw block's ring geometry: the model's statistics, and the means the OOD score needs."""
        used = self.head.ring_statistics
        wanted = used if self.ood_monitor is None or "mean" in used else used + ("mean",)
        geometry = block.geometry(self.settings, wanted)
        self._check_input_shape(scan, geometry.binned_shape)
        return geometry

    def _finish(self, out: np.ndarray) -> np.ndarray:
        """Output activations of ``out`` (n, E [+ 1]) float32 (changed in place): EDS in [0, 1]."""
        if not np.isfinite(out).all():  # NaN survives the clip: never write it as a map
            bad = int((~np.isfinite(out)).any(axis=1).sum())
            raise InputError(f"the model gave NaN or infinite outputs at {bad} of {len(out)} "
                             "positions (non-finite counts in the scan?)")
        n_eds = len(self.elements)
        # the activations of apply_output_activation: EDS linear, HAADF ReLU
        out[:, :n_eds] = np.clip(out[:, :n_eds], 0.0, 1.0)
        if out.shape[1] > n_eds:
            out[:, n_eds] = np.maximum(out[:, n_eds], 0.0) * np.float32(self.haadf_scale)
        return out


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> Predictor:
    """Load a finished run directory for prediction.

    Parameters
    ----------
    run_dir : path-like
        Folder written by :func:`stem2eds.train.fit.train`.
    device : {"cpu", "cuda", "auto"}

    Returns
    -------
    Predictor

    Raises
    ------
    InputError
        If the folder is not a finished run, is from a newer run format, or
        its weights do not match its description.
    """
    run_dir = Path(run_dir)
    info, settings = finished_run(run_dir)
    return _load_model(run_dir, info, settings, device)


def _load_model(run_dir: Path, info: dict[str, Any], settings, device: str) -> Predictor:
    """The run's model (:func:`~.heads.load_head`) wrapped with its settings."""
    return Predictor(run_dir, info, load_head(run_dir, info, settings, device), settings)
