"""The guard variants compared on the sparse benchmark's scans (how the guard was chosen).

Reads the ensemble predictions that ``bench_sparse_guard.py`` cached
(``WORK/LABEL/<scan>.npz``), computes at every fraction the candidates of
:func:`~stem2eds.analysis.sparse_eds.complete_sparse` with their left-out
residuals (cached beside them as ``<scan>.candidates.npz``), and scores
stacking rules built from them against the same criterion: the headline's
mean r (over elements, unsampled positions) at least the better part's minus
0.01. Rules:

- ``per_element``: a stack per element, prior variance 1 (the guard of the
  previous round);
- ``pooled_<v>``: one stack for all elements, prior variance ``v``;
- ``pooled_<v>_min``: the same, a candidate entering only when its left-out
  fits have more points than parameters (the guard kept: ``v`` =
  ``STACK_PRIOR_VAR``, 0.1 since the second round's choice on the design series);
- ``pooled_corr_min``: pooled weights chosen on a grid by the mean left-out
  correlation instead of squared error;
- ``pooled_0.1_min_linear``: the kept rule with the linear interpolation of
  the sparse EDS as a third stack candidate (the best part at 9 of the kept
  rule's 37 fails over all twelve series);
- ``pooled_0.1_min_distance``: the kept rule with each GP-type candidate's
  left-out residuals scaled by the square root of its GP's expected squared
  error at the unsampled positions over that at the left-out samples (a
  left-out sample is farther from the other samples than an unsampled
  position is from its nearest sample);
- ``unguarded`` (the universal kriging) and ``calibrated`` (the calibrated
  model alone).

Then, in hindsight (with the truth; not rules), whether the criterion is
within reach of left-out errors at all (:func:`separability`): how often the
best single part, picked per scan and fraction, misses it, and for pairs of
parts whose r differs by at least 0.02, how often the paired left-out
comparison cannot rank them (|z| < 2) or ranks them the wrong way.

Usage::

    .venv/bin/python benchmarks/bench_sparse_guard_variants.py --work /tmp/bench-guard \\
        --series kinematic-seed0=design --series kinematic-seed106=held-out \\
        --out benchmarks/results/sparse_guard_variants.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_crystallinity import _provenance, write_doc  # noqa: E402
from bench_sparse_guard import SAMPLING_SEED, TOLERANCE  # noqa: E402

STACK = ("model_uk_unguarded", "interp_gp")
KINEMATIC_FRACTIONS = (0.005, 0.01, 0.02, 0.05)
MULTISLICE_FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def candidates(cache: Path, fractions) -> dict:
    """``{fraction: {"mask", "est": {method: maps}, "loo": {name: (E, n)}}}``, cached."""
    from stem2eds.analysis.sparse_eds import complete_sparse, sample_positions

    out_path = cache.with_name(cache.stem + ".candidates.npz")
    if out_path.is_file():
        flat = np.load(out_path)
        out: dict = {}
        for key in flat.files:
            f, kind, name = key.split("|")
            entry = out.setdefault(float(f), {"est": {}, "loo": {}})
            if kind == "mask":
                entry["mask"] = flat[key].astype(bool)
            else:
                entry[kind][name] = flat[key]
        return out
    d = np.load(cache)
    flat, out = {}, {}
    for f in fractions:
        mask = sample_positions(d["measured"].shape[1:], f, "random", SAMPLING_SEED)
        details: dict = {}
        est = complete_sparse(d["mean"], d["measured"], mask, d["std"], details)
        loo = details["guard"]["loo_residual"]
        out[f] = {"mask": mask, "est": est, "loo": loo}
        flat[f"{f}|mask|-"] = mask
        flat.update({f"{f}|est|{k}": v for k, v in est.items()})
        flat.update({f"{f}|loo|{k}": v for k, v in loo.items()})
    tmp = out_path.with_name(out_path.stem + ".part.npz")
    np.savez(tmp, **flat)
    tmp.replace(out_path)
    return out


def element_r(est: np.ndarray, ref: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Pearson r of each element on ``keep``, (E,) (NaN where undefined)."""
    from stem2eds import metrics

    names = [str(e) for e in range(len(est))]
    return np.array(list(metrics.element_metrics(est, ref, names, keep)["pearson"].values()),
                    np.float64)


def mean_r(est: np.ndarray, ref: np.ndarray, keep: np.ndarray) -> float:
    """Mean over elements of Pearson r on ``keep`` (NaN-aware, as the experiment's curve)."""
    return float(np.nanmean(element_r(est, ref, keep)))


def _apply(c: dict, w: np.ndarray) -> np.ndarray:
    """Stack with weights ``w`` (C,) or (C, E) on the calibrated model."""
    base = c["est"]["model_linear"].astype(np.float64)
    w = np.asarray(w, np.float64)
    out = base.copy()
    for j, k in enumerate(STACK):
        wj = w[j] if w.ndim == 1 else w[j][:, None, None]
        out += wj * (c["est"][k] - base)
    return np.clip(out, 0, 1)


def _stack_inputs(c: dict, minimum: bool) -> tuple[np.ndarray, np.ndarray]:
    """Base and candidates' left-out residuals, (E, n) and (C, E, n)."""
    from stem2eds.analysis.sparse_eds import stack_inputs

    loo = stack_inputs(c["loo"], int(c["mask"].sum())) if minimum else c["loo"]
    return (np.asarray(loo["model_linear"], np.float64),
            np.stack([np.asarray(loo[k], np.float64) for k in STACK]))


def per_element(c: dict, measured: np.ndarray) -> np.ndarray:
    from stem2eds.analysis.sparse_guard import stacking_weights

    base, others = _stack_inputs(c, False)
    return _apply(c, np.stack([stacking_weights(base[e], others[:, e], 1.0)
                               for e in range(len(base))], axis=1))


def pooled(prior_var: float, minimum: bool):
    def rule(c: dict, measured: np.ndarray) -> np.ndarray:
        from stem2eds.analysis.sparse_guard import pooled_stacking_weights

        base, others = _stack_inputs(c, minimum)
        return _apply(c, pooled_stacking_weights(base, others, prior_var))
    return rule


def pooled_corr(c: dict, measured: np.ndarray) -> np.ndarray:
    """Pooled weights maximising the mean left-out correlation (grid, step 0.1)."""
    base, others = _stack_inputs(c, True)
    y = measured[:, c["mask"]].astype(np.float64)
    if not (np.all(np.isfinite(others)) and np.all(np.isfinite(base))):
        return c["est"]["model_linear"]
    preds = [y - base, *(y - o for o in others)]
    best, best_w = -np.inf, np.zeros(len(STACK))
    for w in itertools.product(np.linspace(0, 1, 11), repeat=len(STACK)):
        if sum(w) > 1 + 1e-9:
            continue
        p = (1 - sum(w)) * preds[0] + sum(wi * pi for wi, pi in zip(w, preds[1:]))
        score = np.mean([np.corrcoef(p[e], y[e])[0, 1] for e in range(len(y))])
        if score > best + 1e-12:
            best, best_w = score, np.asarray(w)
    return _apply(c, best_w)


def pooled_linear(c: dict, measured: np.ndarray) -> np.ndarray:
    """The kept rule with ``interp_linear`` as a third candidate (no fitted parameters)."""
    from stem2eds.analysis.sparse_guard import pooled_stacking_weights

    base, others = _stack_inputs(c, True)
    linear = np.asarray(c["loo"]["interp_linear"], np.float64)
    if int(c["mask"].sum()) - 1 < 3:  # a triangle needs three other samples
        linear = np.full(linear.shape, np.nan)
    w = pooled_stacking_weights(base, np.concatenate([others, linear[None]]), 0.1)
    out = _apply(c, w[:len(STACK)]) + w[-1] * (c["est"]["interp_linear"]
                                              - c["est"]["model_linear"])
    return np.clip(out, 0, 1)


def _error_ratio(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per element: the GP's expected squared error at the unsampled positions over at left-out samples.

    Both include the fitted white noise; the left-out variance is
    ``1 / [K^-1]_ii`` (Rasmussen & Williams eq. 5.12). 1 where no GP is fitted.
    """
    import warnings

    from scipy.linalg import cho_solve
    from sklearn.exceptions import ConvergenceWarning

    from stem2eds.analysis.sparse_eds import _gp_regressor, _grid_points

    pts = np.argwhere(mask).astype(np.float64)
    grid = _grid_points(mask.shape)[~mask.ravel()]
    out = []
    for channel in np.asarray(values, np.float64):
        y = channel[mask]
        if y.size < 3 or np.ptp(y) == 0:
            out.append(1.0)
            continue
        gp = _gp_regressor(float(max(mask.shape)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(pts, y)
        unit = float(np.ravel(gp._y_train_std)[0]) ** 2
        noise = gp.kernel_.k2.noise_level * unit
        left_out = np.mean(1.0 / np.diag(cho_solve((gp.L_, True), np.eye(len(y))))) * unit
        gp.kernel_ = gp.kernel_.k1
        _, std = gp.predict(grid, return_std=True)
        out.append(float((np.mean(std ** 2) + noise) / left_out))
    return np.array(out)


def pooled_distance(c: dict, measured: np.ndarray) -> np.ndarray:
    """The kept rule with distance-matched left-out residuals of the GP-type candidates."""
    from stem2eds.analysis.sparse_guard import pooled_stacking_weights

    base, others = _stack_inputs(c, True)
    mask = c["mask"]
    residual = np.where(mask, measured - c["est"]["model_linear"], 0)
    ratio = {"model_uk_unguarded": _error_ratio(residual, mask),
             "interp_gp": _error_ratio(measured, mask)}
    scale = np.sqrt(np.minimum(np.stack([ratio[k] for k in STACK]), 1.0))
    return _apply(c, pooled_stacking_weights(base, others * scale[:, :, None], 0.1))


RULES = {"per_element": per_element,
         **{f"pooled_{v:g}": pooled(v, False) for v in (1.0, 0.3, 0.1)},
         **{f"pooled_{v:g}_min": pooled(v, True) for v in (1.0, 0.3, 0.1, 0.03, 0.01)},
         "pooled_corr_min": pooled_corr,
         "pooled_0.1_min_linear": pooled_linear,
         "pooled_0.1_min_distance": pooled_distance,
         "unguarded": lambda c, m: c["est"]["model_uk_unguarded"],
         "calibrated": lambda c, m: c["est"]["model_linear"]}


def score_series(folder: Path) -> dict:
    fractions = KINEMATIC_FRACTIONS if "kinematic" in folder.name else MULTISLICE_FRACTIONS
    result = {name: {"fails": 0, "points": 0, "worst": np.inf, "margins": []} for name in RULES}
    for cache in sorted(folder.glob("scan_*[0-9].npz")):
        d = np.load(cache)
        for f, c in candidates(cache, fractions).items():
            keep = ~c["mask"]
            outs = {name: rule(c, d["measured"]) for name, rule in RULES.items()}
            for ref in ("truth", "eds"):
                parts = max(mean_r(c["est"][k], d[ref], keep)
                            for k in ("model_linear", "interp_gp", "interp_linear"))
                for name, est in outs.items():
                    margin = mean_r(est, d[ref], keep) - parts
                    s = result[name]
                    s["fails"] += int(margin < -TOLERANCE)
                    s["points"] += 1
                    s["worst"] = min(s["worst"], margin)
                    s["margins"].append(margin)
    return {name: {"fails": s["fails"], "points": s["points"], "worst_margin": round(s["worst"], 4),
                   "mean_margin": round(float(np.mean(s["margins"])), 4)}
            for name, s in result.items()}


#: The parts the guard weighs (its base and :data:`STACK`), for the separability analysis.
WEIGHED = ("model_linear", *STACK)
#: Sample-count bins of the separability table (left edges; the last is open).
N_BINS = (8, 20, 40)
#: A pair of parts whose r (against the truth) differs by at least this is "clearly ranked".
CLEAR_GAP = 0.02


def _paired_z(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> float:
    """z of the paired left-out comparison of two parts (> 0: ``b`` has the smaller errors).

    ``a``, ``b``: (E, n) left-out residuals; each element is divided by
    ``scale`` (E,) (the base's left-out RMS, as the pooled stack does), the
    squared residuals are averaged over elements per sample, and the mean of
    the per-sample differences is divided by its standard error. 0 with
    fewer than 4 finite samples.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.mean((a / scale[:, None]) ** 2 - (b / scale[:, None]) ** 2, axis=0)
    d = d[np.isfinite(d)]
    if len(d) < 4:
        return 0.0
    se = d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean() / se) if se > 0 else 0.0


def separability(folder: Path) -> dict:
    """Could any rule built on left-out errors meet the criterion on this series?

    Two measurements, both in hindsight (they use the truth; neither is a rule):

    - ``oracle_fails``: points where the best single part of
      ``model_linear``, ``model_uk_unguarded``, ``interp_gp`` and
      ``interp_linear``, chosen per (scan, fraction) with the truth, misses
      the criterion (for both references at once);
    - ``pairs``: for every pair of the parts the guard weighs whose mean r
      against the truth differs by at least :data:`CLEAR_GAP`, the sample
      count, that gap and the paired left-out z (sign: > 0 when the left-out
      errors favour the part that is better against the truth);
      Each pair also carries its per-element |r| differences (``element_gaps``).
    - ``noise_to_signal``: per element, the median over scans of the
      variance of the measured EDS about the noise-free (blurred) EDS over
      the variance of the latter: how much of a left-out error is counting
      noise that no part can predict.
    """
    fractions = KINEMATIC_FRACTIONS if "kinematic" in folder.name else MULTISLICE_FRACTIONS
    parts = ("model_linear", "interp_gp", "interp_linear")
    oracle_fails, points, pairs, noise = 0, 0, [], []
    for cache in sorted(folder.glob("scan_*[0-9].npz")):
        d = np.load(cache)
        eds = d["eds"].astype(np.float64)
        noise.append((d["measured"] - eds).reshape(len(eds), -1).var(axis=1)
                     / eds.reshape(len(eds), -1).var(axis=1))
        for f, c in candidates(cache, fractions).items():
            keep = ~c["mask"]
            per_element = {k: element_r(c["est"][k], d["truth"], keep) for k in WEIGHED}
            r = {ref: {k: mean_r(c["est"][k], d[ref], keep)
                       for k in (*parts, "model_uk_unguarded")} for ref in ("truth", "eds")}
            best = {ref: max(r[ref][k] for k in parts) for ref in r}
            pick = max(r["truth"], key=lambda k: min(r[ref][k] - best[ref] for ref in r))
            oracle_fails += sum(int(r[ref][pick] - best[ref] < -TOLERANCE) for ref in r)
            points += len(r)
            base = np.asarray(c["loo"]["model_linear"], np.float64)
            with np.errstate(invalid="ignore"):
                scale = np.sqrt(np.mean(base ** 2, axis=1))
            if not np.all(np.isfinite(scale) & (scale > 0)):
                continue
            n = int(c["mask"].sum())
            for a, b in itertools.combinations(WEIGHED, 2):
                gap = r["truth"][b] - r["truth"][a]
                if abs(gap) < CLEAR_GAP:
                    continue
                worse, better = (a, b) if gap > 0 else (b, a)
                z = _paired_z(np.asarray(c["loo"][worse], np.float64),
                              np.asarray(c["loo"][better], np.float64), scale)
                pairs.append({"n": n, "gap": round(abs(gap), 4), "z": round(z, 3),
                              "element_gaps": np.round(np.abs(np.nan_to_num(
                                  per_element[a] - per_element[b])), 4).tolist()})
    return {"oracle_fails": oracle_fails, "points": points, "pairs": pairs,
            "elements": [str(e) for e in d["elements"]],
            "noise_to_signal": np.round(np.median(noise, axis=0), 3).tolist()}


def _separability_summary(per_series: list[dict]) -> dict:
    pairs = [p for s in per_series for p in s["pairs"]]
    bins = []
    edges = (*N_BINS, None)
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = [p for p in pairs if p["n"] >= lo and (hi is None or p["n"] < hi)]
        z = np.array([p["z"] for p in sel])
        bins.append({"n_min": lo, "n_max": None if hi is None else hi - 1, "pairs": len(sel),
                     "median_gap": round(float(np.median([p["gap"] for p in sel])), 3)
                     if sel else None,
                     "undecided": round(float(np.mean(np.abs(z) < 2)), 3) if sel else None,
                     "wrong_way": round(float(np.mean(z < 0)), 3) if sel else None,
                     "median_z": round(float(np.median(z)), 2) if sel else None})
    gaps = np.sum([p["element_gaps"] for p in pairs], axis=0)
    share = dict(zip(per_series[0]["elements"], np.round(gaps / gaps.sum(), 3).tolist()))
    return {"oracle_fails": sum(s["oracle_fails"] for s in per_series),
            "element_share_of_gaps": share,
            "points": sum(s["points"] for s in per_series), "clear_gap": CLEAR_GAP,
            "bins": bins}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="bench_sparse_guard.py's --work")
    ap.add_argument("--series", action="append", required=True, help="LABEL=ROLE (repeatable)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    doc: dict = {"series": {}, "rules": list(RULES),
                 "criterion": f"mean r >= better part - {TOLERANCE}, truth and blurred EDS"}
    for item in args.series:
        label, role = item.split("=", 1)
        doc["series"][label] = {"role": role, "rules": score_series(args.work / label)}
        print(label, role, {k: (v["fails"], v["worst_margin"])
                            for k, v in doc["series"][label]["rules"].items()}, flush=True)
    separable = {item.split("=", 1)[0]: separability(args.work / item.split("=", 1)[0])
                 for item in args.series}
    doc["separability"] = _separability_summary(list(separable.values()))
    doc["separability"]["per_series_oracle_fails"] = {k: v["oracle_fails"]
                                                      for k, v in separable.items()}
    doc["separability"]["noise_to_signal"] = {k: dict(zip(v["elements"], v["noise_to_signal"]))
                                              for k, v in separable.items()}
    print("separability", doc["separability"], flush=True)
    for role in sorted({s["role"] for s in doc["series"].values()}):
        members = [s["rules"] for s in doc["series"].values() if s["role"] == role]
        doc[f"total_{role}"] = {name: {"fails": sum(m[name]["fails"] for m in members),
                                       "points": sum(m[name]["points"] for m in members),
                                       "worst_margin": min(m[name]["worst_margin"] for m in members)}
                                for name in RULES}
    doc["provenance"] = _provenance()
    write_doc(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
