"""Prediction for runs that normalise per scan (``model_params.normalise = "scan"``).

Such a run divides a scan's ring statistics by the scan's reference
intensity (:mod:`stem2eds.features.normalise`), so the statistics of the
whole scan come first, then the reference, then the model. These methods of
:class:`~stem2eds.predict.predictor.Predictor` live here, beside each other,
so that the per-scan path reads as one piece.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..errors import InputError
from ..features.normalise import whole_scans_only

if TYPE_CHECKING:
    from ..formats.bundle import ScanBundle


class PerScanPrediction:
    """The per-scan path of :class:`~stem2eds.predict.predictor.Predictor` (its base class)."""

    def raw_statistics(self, patterns: np.ndarray, origins: np.ndarray,
                       beam_radius: float) -> np.ndarray:
        """The ring statistics the model takes, of raw patterns centred on given origins.

        For per-scan runs, before the reference is known (then
        :meth:`statistics_outputs`). Arguments as :meth:`predict_raw`.

        Returns
        -------
        ndarray, shape (n, S, R), float32
        """
        from ..features.stream import RawBlock

        if not self._fused():
            raise InputError("this run's model does not start with ring statistics "
                             "(or does not centre after binning)", path=self.run_dir)
        block = RawBlock(np.ascontiguousarray(patterns), np.asarray(origins, np.float64),
                         float(beam_radius))
        geometry = block.geometry(self.settings, self.head.ring_statistics)
        self._check_input_shape(None, geometry.binned_shape)
        return self.head.block_statistics(block, geometry, self.settings)

    def statistics_outputs(self, stats: np.ndarray, reference: float) -> np.ndarray:
        """Outputs (n, E [+ 1]) of one scan's ring statistics (n, S, R) divided by its reference.

        ``reference``: :func:`stem2eds.features.normalise.scan_reference` of
        all the scan's statistics (the run's crop).
        """
        return self._finish(self.head.stats_outputs(
            np.asarray(stats, np.float32) / np.float32(reference)))

    @property
    def scan_normalised(self) -> bool:
        """Whether the run divides a scan's ring statistics by its reference (``normalise = "scan"``)."""
        return whole_scans_only(self.info.get("model_params")) is not None

    def _whole_scans_only(self, how: str) -> InputError:
        return InputError(f"{whole_scans_only(self.info.get('model_params'))}, {how}",
                          path=self.run_dir)

    def _scan_outputs(self, scan: ScanBundle, stream) -> "Iterator[tuple[int, np.ndarray]]":
        """Outputs of a whole scan for a run that normalises per scan.

        The ring statistics of every block come first (n x S x R float32,
        180 MB for a million positions and 45 rings), then the scan's
        reference (:mod:`stem2eds.features.normalise`), then the model.
        """
        from ..features.normalise import ScanReference

        used = len(self.head.ring_statistics)
        reference, blocks = ScanReference(), []
        for start, block in stream:
            geometry = self._block_geometry(scan, block)
            stats = self.head.block_statistics(block, geometry, self.settings)
            if self.ood_monitor is not None:
                self.ood_monitor.observe_means(start,
                                               stats[:, geometry.statistics.index("mean")])
            blocks.append((start, np.ascontiguousarray(stats[:, :used])))
            reference.add(blocks[-1][1])
        if blocks:
            for start, stats in blocks:
                yield start, self.statistics_outputs(stats, reference.value)
