"""Out-of-distribution score: how far a scan's patterns lie from the training scans'.

Model-agnostic: the features are the log ring means of the *preprocessed*
patterns (:class:`stem2eds.models.rings.RingStatistics`, the radial profile
every model sees in some form), with each pattern's mean log level removed,
so that dose and thickness (which the models are made robust to) do not
count as novelty while a change of q scale (another camera length,
untransferred) does: it moves every ring.

At train time :func:`fit_reference` estimates the mean and a Ledoit-Wolf
shrunk covariance of the training positions' features; a position's score
is its Mahalanobis distance from that mean. The threshold is the 99th
percentile of the scores of the held-out (validation) positions of the
training scans, which the covariance did not see. A scan's score is the
median of its positions' scores: a whole scan lies outside the training
distribution when that median exceeds the threshold (most of its positions
score like the rarest 1 % of held-out training positions).

Arrays in, arrays out; the run folder stores :meth:`OodReference.to_arrays`
(``RunDir.write_ood``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: Percentile of the held-out training positions' scores used as threshold.
THRESHOLD_PERCENTILE = 99.0
#: Most training positions used to fit the covariance (a random subset beyond).
MAX_FIT_POSITIONS = 20000
_EPS = 1e-5


@lru_cache(maxsize=4)
def _rings(shape: tuple[int, int]):
    from ..models.rings import RingStatistics

    return RingStatistics(shape, ("mean",))


def first_ring(beam_radius: float, bin_factor: int) -> int:
    """First ring of the OOD features: beyond twice the removed beam's radius.

    What preprocessing leaves of the unscattered beam (its convergence tails,
    softened further when a binned scan is resampled) is the beam's, not the
    specimen's, and would make another detector setup look novel.

    Parameters
    ----------
    beam_radius : float
        Removed beam radius, raw detector px (``PreprocessSettings.beam_radius``).
    bin_factor : int
    """
    return int(np.ceil(2.0 * float(beam_radius) / int(bin_factor)))


def ring_features(patterns: np.ndarray, first: int = 0) -> np.ndarray:
    """Log ring means of preprocessed patterns, each pattern's mean level removed.

    Parameters
    ----------
    patterns : ndarray, shape (n, Qx, Qy)
        Centred, preprocessed patterns (as the models take them).
    first : int
        Rings before this one are left out (:func:`first_ring`).

    Returns
    -------
    ndarray, shape (n, R - first), float64
        Rings about the detector centre (R: :func:`stem2eds.models.rings.n_rings`).
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(patterns, dtype=np.float32))
    with torch.inference_mode():
        means = _rings(tuple(patterns.shape[1:]))(x)[:, 0].numpy()
    return features_from_means(means, first)


def features_from_means(means: np.ndarray, first: int = 0) -> np.ndarray:
    """:func:`ring_features` from ring means already computed (e.g. by the fused path).

    Parameters
    ----------
    means : ndarray, shape (n, R)
        Ring means of the preprocessed patterns (:class:`~stem2eds.models.rings.RingStatistics`).
    first : int

    Returns
    -------
    ndarray, shape (n, R - first), float64
    """
    feats = np.log(np.asarray(means, dtype=np.float64)[:, first:] + _EPS)
    return feats - feats.mean(axis=1, keepdims=True)


@dataclass
class OodReference:
    """The training positions' feature distribution.

    Attributes
    ----------
    mean : ndarray, shape (R,)
    precision : ndarray, shape (R, R)
        Inverse of the shrunk covariance.
    threshold : float
        :data:`THRESHOLD_PERCENTILE` of the held-out positions' scores.
    heldout_median : float
        Median score of the held-out positions (a scan like the training
        ones scores about this).
    first : int
        First ring of the features (:func:`first_ring`).
    """

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    heldout_median: float
    first: int = 0

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (n, R) -> (n,) float32."""
        d = np.asarray(features, np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d),
                                  0.0)).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "precision": self.precision,
                "threshold": np.float64(self.threshold),
                "heldout_median": np.float64(self.heldout_median),
                "first_ring": np.int64(self.first)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], shape: tuple[int, int] | None = None,
                    path=None) -> "OodReference":
        """Inverse of :meth:`to_arrays`, checked (the arrays come from a file).

        Parameters
        ----------
        arrays : dict
        shape : (H, W), optional
            The patterns (binned) whose ring means the reference scores: its
            feature count must fit their rings.
        path : path-like, optional
            The file, for messages.

        Raises
        ------
        InputError
            When the arrays do not describe a usable reference.
        """
        from ..errors import InputError

        try:
            ref = cls(np.asarray(arrays["mean"], np.float64),
                      np.asarray(arrays["precision"], np.float64),
                      float(arrays["threshold"]), float(arrays["heldout_median"]),
                      int(arrays.get("first_ring", 0)))
            first = float(arrays.get("first_ring", 0))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"ood.npz does not describe an OOD reference ({exc})", path=path,
                             hint="delete it: prediction then skips the OOD score") from None
        problem = ref._problem(shape, first)
        if problem:
            raise InputError(f"ood.npz: {problem}", path=path,
                             hint="delete it: prediction then skips the OOD score")
        return ref

    def _problem(self, shape: tuple[int, int] | None, first: float) -> str | None:
        from ..features.rings import n_rings

        r = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if r < 1 or self.precision.shape != (r, r):
            return f"mean {self.mean.shape} and precision {self.precision.shape} do not fit"
        if first != self.first or self.first < 0:
            return f"first_ring must be a whole number >= 0, got {first}"
        if shape is not None and r != n_rings(shape) - self.first:
            return (f"{r} features from ring {self.first} do not fit the run's "
                    f"{n_rings(shape)} rings")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.precision))
                and np.isfinite(self.threshold) and np.isfinite(self.heldout_median)):
            return "non-finite values"
        return None


def fit_reference(train: np.ndarray, heldout: np.ndarray, seed: int = 0,
                  first: int = 0) -> OodReference:
    """Fit the reference on training features and calibrate its threshold on held-out ones.

    Parameters
    ----------
    train : ndarray, shape (n, R)
        :func:`ring_features` of the training positions.
    heldout : ndarray, shape (m, R)
        Features of held-out positions of the training scans (m >= 1); the
        training positions themselves when there are none (the threshold is
        then optimistic).
    seed : int
        Subsampling beyond :data:`MAX_FIT_POSITIONS`.
    first : int
        The first ring the features were computed from (stored with the reference).

    Returns
    -------
    OodReference
    """
    from sklearn.covariance import LedoitWolf

    train = np.asarray(train, np.float64)
    if len(train) > MAX_FIT_POSITIONS:
        pick = np.random.default_rng(seed).choice(len(train), MAX_FIT_POSITIONS, replace=False)
        train = train[np.sort(pick)]
    lw = LedoitWolf().fit(train)
    ref = OodReference(lw.location_, lw.precision_, 0.0, 0.0, int(first))
    held = ref.score(heldout if len(heldout) else train)
    ref.threshold = float(np.percentile(held, THRESHOLD_PERCENTILE))
    ref.heldout_median = float(np.median(held))
    return ref


@dataclass
class ScanScore:
    """OOD verdict on one scan.

    Attributes
    ----------
    positions : ndarray, shape (Rx, Ry), float32
        Per-position score (Mahalanobis distance; NaN where not predicted).
    score : float
        Median of ``positions``.
    threshold : float
        The reference's threshold.
    outside : bool
        ``score > threshold``: the whole scan lies outside the training distribution.
    empty : int
        Positions whose patterns have no counts beyond the direct beam (the
        OOD features' rings): nothing there to predict a composition from.
    """

    positions: np.ndarray
    score: float
    threshold: float
    outside: bool
    empty: int = 0

    def message(self) -> str:
        return (f"the scan lies outside the training scans' distribution (OOD score "
                f"{self.score:.3g} > threshold {self.threshold:.3g}; training-like scans "
                "score about the held-out median): predictions may be unreliable")

    def empty_message(self) -> str:
        return (f"{self.empty} of {self.positions.size} positions have no counts beyond the "
                "direct beam: their predicted compositions mean nothing")


class OodMonitor:
    """Scores a scan's positions as its preprocessed patterns stream past.

    Parameters
    ----------
    reference : OodReference
    scan_shape : (Rx, Ry)
        Shape of the predicted (cropped) scan; positions come as flat indices.
    """

    def __init__(self, reference: OodReference, scan_shape: tuple[int, int]):
        self.reference = reference
        self.scan_shape = tuple(int(v) for v in scan_shape)
        self._scores = np.full(self.scan_shape[0] * self.scan_shape[1], np.nan, np.float32)
        self._empty = np.zeros(self._scores.size, bool)

    def observe(self, start: int, patterns: np.ndarray) -> None:
        """Score patterns (n, Qx, Qy) of flat positions ``start .. start + n``."""
        if start + len(patterns) > self._scores.size:
            raise ValueError("positions beyond the scan this monitor was made for; start a "
                             "monitor per scan (Predictor.start_ood)")
        flat = np.asarray(patterns).reshape(len(patterns), -1)
        self._store(start, ring_features(patterns, self.reference.first),
                    ~np.any(flat > 0, axis=1))

    def observe_means(self, start: int, means: np.ndarray) -> None:
        """Score positions from their ring means (n, R) (the fused path computes them)."""
        if start + len(means) > self._scores.size:
            raise ValueError("positions beyond the scan this monitor was made for; start a "
                             "monitor per scan (Predictor.start_ood)")
        beyond = np.asarray(means)[:, self.reference.first:]
        self._store(start, features_from_means(means, self.reference.first),
                    ~np.any(beyond > 0, axis=1))

    def _store(self, start: int, feats: np.ndarray, empty: np.ndarray) -> None:
        """Scores of the features, and which positions had no counts (nothing to score)."""
        self._scores[start:start + len(feats)] = self.reference.score(feats)
        self._empty[start:start + len(feats)] = empty

    def result(self) -> ScanScore:
        positions = self._scores.reshape(self.scan_shape)
        seen = positions[np.isfinite(positions)]
        score = float(np.median(seen)) if seen.size else float("nan")
        return ScanScore(positions, score, self.reference.threshold,
                         bool(score > self.reference.threshold), int(self._empty.sum()))
