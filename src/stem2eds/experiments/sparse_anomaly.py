"""The anomaly step of the sparse experiment: one map of where the new scan is unlike the known.

Combines the reconstruction error of the new scan's patterns by a PCA of the
training scans' patterns, the prediction error of the calibrated ensemble
mean and the ensemble std (:mod:`stem2eds.analysis.anomaly`), beside the
physics-based crystallinity map of the same patterns
(:mod:`stem2eds.analysis.crystallinity`: Bragg disks above the rings, no
training data involved), and writes ``anomaly/<scan>.h5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..analysis import anomaly
from ..analysis.crystallinity import CrystallinitySettings, crystallinity_map
from ..analysis.sparse_calibration import apply_linear, calibrate_on_sparse
from ..formats.anomaly_file import AnomalyFile, write_anomaly

_BATCH = 256  # patterns per streamed block of the anomaly passes


def _chained(paths: Sequence[Path], batch: int = _BATCH):
    """``iter_patterns`` of several bundles one after the other (starts per bundle)."""
    from ..formats.bundle import open_bundle

    for path in paths:
        with open_bundle(path) as scan:
            yield from scan.iter_patterns(batch)


@dataclass
class AnomalyMaps:
    """The anomaly map of the new scan.

    Attributes
    ----------
    score : ndarray, shape (Rx', Ry')
        Mean robust z-score of the components.
    components : dict
        ``{name: (Rx', Ry') map or None}``: reconstruction, prediction_error, uncertainty.
    flagged, typical : ndarray of bool, shape (Rx', Ry')
        ``score > threshold`` and ``|score| < 1``.
    mean_flagged, mean_typical : ndarray, shape (Qx, Qy)
        Mean preprocessed pattern of each set.
    threshold : float
    crystallinity : ndarray, shape (Rx', Ry'), float32
        Bragg-disk score of every pattern (:func:`stem2eds.analysis.crystallinity.bragg_scores`).
    crystalline : ndarray of bool, shape (Rx', Ry')
        Positions the score marks crystalline.
    crystal_settings : CrystallinitySettings
    """

    score: np.ndarray
    components: dict[str, np.ndarray | None]
    flagged: np.ndarray
    typical: np.ndarray
    mean_flagged: np.ndarray
    mean_typical: np.ndarray
    threshold: float
    crystallinity: np.ndarray
    crystalline: np.ndarray
    crystal_settings: CrystallinitySettings

    def summary(self, grain: np.ndarray | None) -> dict[str, Any]:
        """``metrics.json``'s ``anomaly`` entry (detection scores against ``grain``)."""
        present = {k: v for k, v in self.components.items() if v is not None}
        doc: dict[str, Any] = {"threshold": self.threshold, "components": list(present),
                               "flagged": int(self.flagged.sum()),
                               "positions": int(self.flagged.size)}
        if grain is not None:
            doc["grain_positions"] = int(grain.sum())
            doc["combined"] = anomaly.detection_scores(self.flagged, grain)
            doc["per_component"] = {
                k: anomaly.detection_scores(anomaly.robust_z(v) > self.threshold, grain)
                for k, v in present.items()}
        doc["crystallinity"] = {"settings": self.crystal_settings.to_dict(),
                                "crystalline": int(self.crystalline.sum())}
        if grain is not None:
            doc["crystallinity"]["detection"] = anomaly.detection_scores(self.crystalline, grain)
        return doc

    def write(self, path: Path, grain: np.ndarray | None) -> None:
        """``anomaly/<scan>.h5`` (:mod:`stem2eds.formats.anomaly_file`), with the grain mask if known."""
        write_anomaly(path, AnomalyFile(
            score=self.score, flagged=self.flagged, threshold=self.threshold,
            components={k: v for k, v in self.components.items() if v is not None},
            mean_flagged=self.mean_flagged, mean_typical=self.mean_typical, grain_mask=grain,
            crystallinity=self.crystallinity, crystalline=self.crystalline,
            crystal_settings=self.crystal_settings.to_dict()))


def find_anomalies(ens, maps, threshold: float) -> AnomalyMaps:
    """Reconstruction error, prediction error and ensemble std combined into one map.

    Parameters
    ----------
    ens : stem2eds.experiments.sparse.EnsemblePrediction
        Members, predictors, ensemble mean/std (E, Rx', Ry') and the
        preprocessed new scan.
    maps : stem2eds.experiments.sparse.TargetMaps
        The new scan's targets (blurred EDS) on the cropped grid.
    threshold : float
        Robust z-score above which a position is flagged.

    Returns
    -------
    AnomalyMaps
    """
    from ..formats.bundle import open_bundle

    reference = [ens.members[0] / rel for rel in ens.predictors[0].info.get("preprocessed", [])]
    recon = None
    if reference and all(r.is_file() for r in reference):
        with open_bundle(ens.preprocessed) as p_scan:
            recon = anomaly.reconstruction_error(_chained(reference),
                                                 p_scan.iter_patterns(_BATCH), maps.shape)
    eds = maps.targets.eds
    slopes, offsets = calibrate_on_sparse(ens.mean, eds, np.ones(maps.shape, bool))
    pred_error = np.abs(apply_linear(ens.mean, slopes, offsets) - eds).sum(axis=0)
    parts = {"reconstruction": recon, "prediction_error": pred_error,
             "uncertainty": None if ens.std is None else ens.std.sum(axis=0)}
    score = anomaly.anomaly_score(parts)
    flagged = score > threshold
    typical = np.abs(score) < 1
    with open_bundle(ens.preprocessed) as p_scan:
        mean_flagged, mean_typical = anomaly.mean_patterns(p_scan.iter_patterns(_BATCH),
                                                           maps.shape, flagged, typical)
    crystal = crystal_settings(ens.settings)
    crystallinity, crystalline = scan_crystallinity(ens.preprocessed, crystal)
    return AnomalyMaps(score, parts, flagged, typical, mean_flagged, mean_typical, threshold,
                       crystallinity, crystalline, crystal)


def crystal_settings(preprocess) -> CrystallinitySettings:
    """Crystallinity settings for patterns preprocessed with ``preprocess`` (PreprocessSettings).

    The Bragg disk is the probe's disk, binned; the ring band starts one disk
    and one pixel outside the zeroed beam disk, so that no Bragg disk overlaps
    the beam's edge, and at least 3 px out (nearer, the steep tail of the
    beam varies within one pixel ring).
    """
    f = float(preprocess.bin_factor)
    probe = (preprocess.probe_radius or 4.0) / f
    beam = (preprocess.beam_radius or probe * f * preprocess.beam_margin) / f
    return CrystallinitySettings(r_min=max(3.0, beam + probe + 1), disk_radius=max(probe, 0.5))


def scan_crystallinity(path: Path, settings: CrystallinitySettings | None = None,
                       batch: int = _BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Crystallinity score and ``crystalline`` map of a preprocessed (centred) bundle.

    Parameters
    ----------
    path : Path
        A preprocessed bundle (its patterns centred on the detector).
    settings : CrystallinitySettings, optional
        Default: :func:`crystal_settings` of the bundle's preprocessing.
    batch : int
        Patterns per streamed block.

    Returns
    -------
    score : ndarray, shape (Rx, Ry), float32
    crystalline : ndarray of bool, shape (Rx, Ry)
    """
    from ..formats.bundle import open_bundle
    from ..preprocess.settings import load_settings

    with open_bundle(path) as scan:
        if settings is None:
            settings = crystal_settings(load_settings(path))
        return crystallinity_map(scan.iter_patterns(batch), None, scan.scan_shape, settings)
