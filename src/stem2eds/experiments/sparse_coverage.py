"""Interval checks of the sparse experiment: do the nominal 90 % intervals cover 90 %?

Two situations: EDS at a sampled fraction of the new scan's positions
(:func:`sparse_coverage`), and no EDS of the new scan at all
(:func:`extrapolation_coverage`). The statistics live in
:mod:`stem2eds.analysis.uncertainty`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..analysis.sparse_calibration import calibrate_on_sparse
from .common import load_targets


def sparse_coverage(estimates: dict[str, np.ndarray], uk: dict[str, Any], mean: np.ndarray,
                     std: np.ndarray | None, measured: np.ndarray,
                     references: dict[str, np.ndarray], mask: np.ndarray,
                     elements: Sequence[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Coverage of the nominal 90 % intervals of one sampled fraction, unsampled positions.

    ``model_uk``: the universal-kriging interval, scaled by the factor from
    the leave-one-out residuals of the sampled values; the interval of a
    measurement (with noise) is checked against the measured EDS, that of the
    noise-free map against the blurred EDS and the truth. ``ensemble``: the
    calibrated ensemble mean +/- scale x |slope| x ensemble std, its scale
    fitted on the sampled positions against the measured EDS (for the
    measured target) or with the kriging fit's noise variance removed from
    each error (for the map targets).

    Parameters
    ----------
    estimates : dict
        ``{method: (E, Rx', Ry') estimate}`` of :func:`stem2eds.analysis.sparse_eds.complete_sparse`.
    uk : dict
        Its ``details["model_uk"]``: ``fits``, ``std_map``, ``std_measured``.
    mean : ndarray, shape (E, Rx', Ry')
    std : ndarray, shape (E, Rx', Ry'), or None
        Ensemble mean and std.
    measured : ndarray, shape (E, Rx', Ry')
        Raw measured EDS.
    references : dict
        ``{ref: (E, Rx', Ry') map}``.
    mask : ndarray of bool, shape (Rx', Ry')
        Sampled positions.
    elements : sequence of str

    Returns
    -------
    entry : dict
        ``{"model_uk": {...}, "ensemble": {...}}`` with scales and, per
        target, :func:`stem2eds.analysis.uncertainty.coverage_summary`.
    uk_std : ndarray, shape (E, Rx, Ry), float32
        The scaled map std of the universal-kriging estimate.
    """
    from ..analysis.uncertainty import coverage_summary, fit_std_scale, loo_std_scale

    held_out = ~mask
    fits = uk["fits"]
    targets = {"measured": measured, **references}
    scale = loo_std_scale([f["loo_residual"] for f in fits], [f["loo_std"] for f in fits])
    entry: dict[str, Any] = {"fitted_on": int(mask.sum())}
    entry["model_uk"] = {"scale": dict(zip(elements, scale.tolist()))}
    for ref, values in targets.items():
        sd = uk["std_measured"] if ref == "measured" else uk["std_map"]
        entry["model_uk"][ref] = coverage_summary(estimates["model_uk"], sd, values, held_out,
                                                  elements, scale)
    if std is not None:
        slopes, _ = calibrate_on_sparse(mean, measured, mask)
        cal_std = (np.abs(slopes)[:, None, None] * std).astype(np.float32)
        noise_var = np.array([f["noise_std"] ** 2 for f in fits])
        scales = {"measured": fit_std_scale(estimates["model_linear"], cal_std, measured, mask),
                  "map": fit_std_scale(estimates["model_linear"], cal_std, measured, mask,
                                       noise_var=noise_var)}
        ens: dict[str, Any] = {f"scale_{k}": dict(zip(elements, v.tolist()))
                               for k, v in scales.items()}
        for ref, values in targets.items():
            ens[ref] = coverage_summary(estimates["model_linear"], cal_std, values, held_out,
                                        elements, scales["measured" if ref == "measured"
                                                         else "map"])
        entry["ensemble"] = ens
    return entry, (uk["std_map"] * scale[:, None, None]).astype(np.float32)


def extrapolation_coverage(members: Sequence[Path], predictors: Sequence[Any],
                            train_paths: Sequence[Path], mean: np.ndarray, std: np.ndarray,
                            references: dict[str, np.ndarray], settings,
                            elements: Sequence[str]) -> dict[str, Any]:
    """Coverage of the ensemble interval on the new scan with no EDS of it at all.

    The std factor comes from the training scans: each member's error on its
    own validation positions (read from its ``split.npz``) in units of the
    ensemble std there (:func:`stem2eds.analysis.uncertainty.validation_std_scale`),
    pooled over scans and members. The interval ``mean +/- 1.645 x factor x
    std`` of the raw ensemble mean is then counted on every position of the
    new scan.

    Parameters
    ----------
    members : sequence of Path
        The ensemble's run folders (their ``split.npz`` give the validation positions).
    predictors : sequence of Predictor
        The loaded members.
    train_paths : sequence of Path
        Raw training bundles, in training order.
    mean, std : ndarray, shape (E, Rx', Ry')
        Ensemble mean and std of the new scan.
    references : dict
        ``{ref: (E, Rx', Ry') map}`` the interval is counted against.
    settings : PreprocessSettings
    elements : sequence of str

    Returns
    -------
    dict
        ``scale`` per element, ``fitted_on``, ``split`` and, per reference,
        :func:`stem2eds.analysis.uncertainty.coverage_summary`.
    """
    from ..analysis.uncertainty import Z90, coverage_summary, validation_std_scale

    splits = [np.load(m / "split.npz") for m in members]
    rel = predictors[0].info.get("preprocessed", [])
    ratios = []
    for i, path in enumerate(train_paths):
        pre = members[0] / rel[i] if i < len(rel) and (members[0] / rel[i]).is_file() else path
        preds = [p.predict_scan(pre).eds for p in predictors]
        target = load_targets(path, settings, elements).eds
        r, _ = validation_std_scale(preds, [sp[f"val_mask_{i}"] for sp in splits], target)
        ratios.append(r)
    ratios = np.concatenate(ratios, axis=1)
    scale = np.array([np.nanquantile(r, 0.9) / Z90 for r in ratios])
    out: dict[str, Any] = {"scale": dict(zip(elements, scale.tolist())),
                           "fitted_on": int(np.isfinite(ratios[0]).sum()),
                           "split": predictors[0].info.get("split", {}).get("mode")}
    for ref, values in references.items():
        out[ref] = coverage_summary(mean, std, values, None, elements, scale)
    return out
