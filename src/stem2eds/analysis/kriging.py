"""Universal kriging: one estimator that weighs a model against sparse measurements.

A map ``y`` measured at a few scan positions is modelled as

    y(x) = F(x) @ beta + f(x) + delta(x) + eps(x)

with ``F`` known covariates at every position (a constant and the 4D-STEM
model's prediction), ``f`` a smooth Gaussian process (constant x RBF
kernel, length in scan pixels), ``delta`` the model's position-specific
error, uncorrelated, with variance ``tau2 * s(x)^2`` proportional to the
ensemble's variance ``s^2`` there, and ``eps`` the measurement noise
(variance ``noise_var``). ``beta`` is estimated by generalised least
squares jointly with the kernel (restricted maximum likelihood, REML), so a
model that does not explain the sampled values gets a small weight and the
estimate falls back to Gaussian-process interpolation, while a good one
carries the map between the samples.

The noise-free map is ``F beta + f + delta``; its interval excludes ``eps``
and the interval of a new *measurement* includes it. Leave-one-out
residuals of the measured values have a closed form (Dubrule 1983), with
``beta`` re-estimated for each left-out point.

Written by hand because scikit-learn's Gaussian process has no regression
mean function, and the kriging packages (e.g. PyKrige) fit their variogram
to an empirical one, which is poor with a few dozen points.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

_JITTER = 1e-8


@dataclass(frozen=True)
class KrigingFit:
    """A fitted universal-kriging model of one map (all values in the units of ``y``).

    Attributes
    ----------
    beta : ndarray, shape (p,)
        GLS coefficients of the covariates (the columns of ``F``).
    beta_std : ndarray, shape (p,)
        Their standard errors.
    signal_var : float
        Variance of the smooth GP term ``f``.
    length_scale : float
        RBF length scale of ``f``, scan pixels.
    noise_var : float
        Measurement-noise variance (the nugget not explained by ``s``).
    tau2 : float
        Factor of the ensemble variance in the model-error variance (0 without ``s``).
    loo_residual : ndarray, shape (n,)
        Leave-one-out residual of every measured value (``beta`` re-estimated).
    loo_std : ndarray, shape (n,)
        Predictive standard deviation of a measured value with it left out.
    """

    beta: np.ndarray
    beta_std: np.ndarray
    signal_var: float
    length_scale: float
    noise_var: float
    tau2: float
    loo_residual: np.ndarray
    loo_std: np.ndarray
    points: np.ndarray
    residual_weights: np.ndarray  # K^-1 (y - F beta), (n,)
    chol: np.ndarray  # Cholesky factor of K, (n, n)
    covariates: np.ndarray  # F, (n, p)
    gls_cov: np.ndarray  # (F^T K^-1 F)^-1, (p, p)

    def predict(self, points: np.ndarray, covariates: np.ndarray,
                model_var: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Mean and standard deviations at new positions.

        Parameters
        ----------
        points : ndarray, shape (N, 2)
            Scan positions (row, column), pixels.
        covariates : ndarray, shape (N, p)
            ``F`` at those positions.
        model_var : ndarray, shape (N,), optional
            Ensemble variance ``s^2`` there (needed when ``tau2 > 0``).

        Returns
        -------
        dict
            ``mean`` (N,); ``std_map`` (N,): the noise-free map's standard
            deviation, from ``f``, ``beta`` and the model error ``delta``;
            ``std_measured`` (N,): that of a new measurement (adds the noise).
        """
        from scipy.linalg import cho_solve, solve_triangular

        k_star = self.signal_var * _rbf(points, self.points, self.length_scale)
        mean = covariates @ self.beta + k_star @ self.residual_weights
        v = solve_triangular(self.chol, k_star.T, lower=True)  # (n, N)
        u = covariates - k_star @ cho_solve((self.chol, True), self.covariates)  # (N, p)
        var = (self.signal_var - np.sum(v * v, axis=0)
               + np.einsum("ij,jk,ik->i", u, self.gls_cov, u))
        if self.tau2 > 0 and model_var is not None:
            var = var + self.tau2 * np.asarray(model_var, np.float64)
        var = np.maximum(var, 0.0)
        return {"mean": mean, "std_map": np.sqrt(var),
                "std_measured": np.sqrt(var + self.noise_var)}


def _rbf(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    """exp(-|a - b|^2 / (2 length^2)), shape (len(a), len(b))."""
    d2 = (np.sum(a ** 2, 1)[:, None] + np.sum(b ** 2, 1)[None, :] - 2 * a @ b.T)
    return np.exp(-np.maximum(d2, 0.0) / (2 * length ** 2))


def _restricted_nll(log_params: np.ndarray, dist2: np.ndarray, y: np.ndarray, F: np.ndarray,
                    model_var: np.ndarray | None, prior_precision: np.ndarray) -> float:
    """Negative restricted log-likelihood (constants dropped) of the log hyperparameters.

    ``y`` is already shifted by the prior mean of ``beta``; the coefficients
    are integrated out (flat prior where ``prior_precision`` is 0).
    """
    from scipy.linalg import cho_factor, cho_solve

    signal, length, noise = np.exp(log_params[:3])
    diag = noise + (np.exp(log_params[3]) * model_var if model_var is not None else 0.0)
    K = signal * np.exp(-dist2 / (2 * length ** 2))
    K[np.diag_indices_from(K)] += diag + _JITTER
    try:
        c = cho_factor(K, lower=True)
        kinv_f = cho_solve(c, F)
        A = F.T @ kinv_f + np.diag(prior_precision)
        ca = cho_factor(A, lower=True)
    except np.linalg.LinAlgError:
        return 1e10
    kinv_y = cho_solve(c, y)
    beta = cho_solve(ca, F.T @ kinv_y)
    r = y - F @ beta
    quad = float(r @ cho_solve(c, r) + beta @ (prior_precision * beta))
    return 0.5 * (2 * np.sum(np.log(np.diag(c[0]))) + 2 * np.sum(np.log(np.diag(ca[0])))
                  + quad)


def _fit_hyperparameters(dist2: np.ndarray, ys: np.ndarray, F: np.ndarray,
                         mvn: np.ndarray | None, precision: np.ndarray, extent: float,
                         min_length: float) -> np.ndarray:
    """Log hyperparameters (signal, length, noise[, tau2]) maximising the restricted likelihood.

    Parameters
    ----------
    dist2 : ndarray, shape (n, n)
        Squared distances between the sampled points.
    ys : ndarray, shape (n,)
        Values in units of their spread, prior mean removed.
    F : ndarray, shape (n, p)
    mvn : ndarray, shape (n,), or None
        Normalised model variance.
    precision : ndarray, shape (p,)
        Prior precision of the coefficients (0: flat).
    extent : float
        Scan size in pixels.
    min_length : float

    Returns
    -------
    ndarray, shape (3,) or (4,)
    """
    from scipy.optimize import minimize

    min_length = min(max(float(min_length), 1.0), 4 * extent)
    # the smooth term cannot vary more than the measured values do: with a handful of
    # points an unbounded likelihood can trade a huge, very long-range GP (a steep trend
    # extrapolated across the scan) against the model's weight
    bounds = [(np.log(1e-3), 0.0), (np.log(min_length), np.log(4 * extent)),
              (np.log(1e-4), np.log(10.0))]
    if mvn is not None:
        bounds.append((np.log(1e-4), np.log(1e2)))
    best = None
    # two starts: a short and a long correlation length (the likelihood can be bimodal)
    for length0 in (extent / 10, extent / 3):
        x0 = [np.log(0.5), np.log(max(length0, 1.0)), np.log(0.1)]
        x0 += [np.log(0.1)] if mvn is not None else []
        x0 = np.clip(x0, [b[0] for b in bounds], [b[1] for b in bounds])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = minimize(_restricted_nll, x0, args=(dist2, ys, F, mvn, precision),
                           method="L-BFGS-B", bounds=bounds)
        if best is None or res.fun < best.fun:
            best = res
    return best.x


def fit_universal_kriging(points: np.ndarray, y: np.ndarray, covariates: np.ndarray,
                          model_var: np.ndarray | None = None,
                          extent: float | None = None,
                          prior_mean: np.ndarray | None = None,
                          prior_std: np.ndarray | None = None,
                          min_length: float = 1.0) -> KrigingFit:
    """Fit universal kriging by REML: GLS coefficients with the GP's hyperparameters.

    With ``prior_std`` finite for a coefficient, it gets a Gaussian prior
    (Bayesian kriging, Rasmussen & Williams section 2.7): its estimate is
    the posterior mean, between the prior and the GLS value by their
    precisions, and its uncertainty enters the predictive variance.

    Parameters
    ----------
    points : ndarray, shape (n, 2)
        Sampled scan positions (row, column), pixels.
    y : ndarray, shape (n,)
        Measured values there.
    covariates : ndarray, shape (n, p)
        ``F`` at the sampled positions; include a constant column for a free
        offset. Needs ``n > p``.
    model_var : ndarray, shape (n,), optional
        Ensemble variance at the sampled positions, in the units of ``y``
        squared: adds the model-error term ``tau2 * s^2``.
    extent : float, optional
        Scan size in pixels (bounds the length scale); default the spread of
        ``points``.
    prior_mean, prior_std : ndarray, shape (p,), optional
        Gaussian prior of ``beta``; ``inf`` std (the default) is a flat prior.
    min_length : float
        Smallest length scale of ``f``, pixels.

    Returns
    -------
    KrigingFit
    """
    from scipy.linalg import cho_factor, cho_solve

    pts = np.asarray(points, np.float64)
    y = np.asarray(y, np.float64)
    F = np.asarray(covariates, np.float64)
    n, p = F.shape
    if n <= p:
        raise ValueError(f"universal kriging needs more points ({n}) than covariates ({p})")
    # work in units of the data's spread so that one set of bounds fits every map
    y_scale = float(np.std(y)) or 1.0
    mu = np.zeros(p) if prior_mean is None else np.asarray(prior_mean, np.float64)
    sd = np.full(p, np.inf) if prior_std is None else np.asarray(prior_std, np.float64)
    # priors in the scaled units; the data are shifted by the prior mean so that every
    # coefficient's prior is centred on 0 (its mean is added back below)
    precision = np.where(np.isfinite(sd), (y_scale / np.where(sd > 0, sd, 1e-12)) ** 2, 0.0)
    ys = (y - F @ mu) / y_scale
    mv = None if model_var is None else np.asarray(model_var, np.float64) / y_scale ** 2
    if mv is not None and not np.any(mv > 0):
        mv = None
    mv_scale = 1.0 if mv is None else float(np.mean(mv))
    mvn = None if mv is None else mv / mv_scale
    extent = float(extent or max(np.ptp(pts, axis=0).max(), 1.0))
    dist2 = np.sum((pts[:, None, :] - pts[None, :, :]) ** 2, axis=-1)
    lp = _fit_hyperparameters(dist2, ys, F, mvn, precision, extent, min_length)
    signal, length, noise = np.exp(lp[:3])
    tau2 = float(np.exp(lp[3])) / mv_scale if mvn is not None else 0.0
    diag = noise + (tau2 * mv if mvn is not None else 0.0)
    K = signal * np.exp(-dist2 / (2 * length ** 2))
    K[np.diag_indices_from(K)] += diag + _JITTER
    c = cho_factor(K, lower=True)
    kinv_f = cho_solve(c, F)
    gls_cov = np.linalg.inv(F.T @ kinv_f + np.diag(precision))
    beta = gls_cov @ (F.T @ cho_solve(c, ys))
    alpha = cho_solve(c, ys - F @ beta)
    # Dubrule's closed form: with P = K^-1 - K^-1 F (F^T K^-1 F + B^-1)^-1 F^T K^-1, the
    # left-out residual is (P y)_i / P_ii and its predictive variance 1 / P_ii (the
    # prior B of the coefficients is never left out)
    k_inv = cho_solve(c, np.eye(n))
    P = k_inv - kinv_f @ gls_cov @ kinv_f.T
    p_diag = np.maximum(np.diag(P), 1e-12)
    loo_res = (P @ ys) / p_diag
    s2 = y_scale ** 2
    return KrigingFit(beta=beta * y_scale + mu, beta_std=np.sqrt(np.diag(gls_cov) * s2),
                      signal_var=float(signal * s2), length_scale=float(length),
                      noise_var=float(noise * s2), tau2=tau2,
                      loo_residual=loo_res * y_scale, loo_std=np.sqrt(1 / p_diag) * y_scale,
                      points=pts, residual_weights=alpha / y_scale,
                      chol=np.tril(c[0]) * y_scale, covariates=F, gls_cov=gls_cov * s2)


def refit_loo_residuals(points: np.ndarray, y: np.ndarray, covariates: np.ndarray,
                        model_var: np.ndarray | None = None, **fit_kwargs) -> np.ndarray:
    """Leave-one-out residuals with every hyperparameter re-estimated without the left-out point.

    The closed form of :func:`fit_universal_kriging` keeps the hyperparameters
    fitted on all points, which with a handful of points is far too
    optimistic (a GP fitted through three points with no nugget "predicts"
    each of them). Costs one fit per point.

    Parameters
    ----------
    points : ndarray, shape (n, 2)
    y : ndarray, shape (n,)
    covariates : ndarray, shape (n, p)
    model_var : ndarray, shape (n,), optional
    **fit_kwargs
        Passed to :func:`fit_universal_kriging` (``extent``, priors, ``min_length``).

    Returns
    -------
    ndarray, shape (n,)
        Value minus prediction; NaN where the rest cannot be fitted (``n - 1 <= p``).
    """
    pts = np.asarray(points, np.float64)
    y = np.asarray(y, np.float64)
    F = np.asarray(covariates, np.float64)
    n = len(y)
    out = np.full(n, np.nan)
    if n - 1 <= F.shape[1]:
        return out
    keep = np.ones(n, bool)
    for i in range(n):
        keep[i] = False
        mv = None if model_var is None else np.asarray(model_var)[keep]
        fit = fit_universal_kriging(pts[keep], y[keep], F[keep], mv, **fit_kwargs)
        out[i] = y[i] - fit.predict(pts[i:i + 1], F[i:i + 1])["mean"][0]
        keep[i] = True
    return out


def krige_with_model(predicted: np.ndarray, measured: np.ndarray, mask: np.ndarray,
                     predicted_std: np.ndarray | None = None,
                     slope_prior_std: float = np.inf, min_length: float | None = None,
                     refit_below: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Universal kriging of every element map with the model's prediction as covariate.

    Per element ``k`` the covariates are a constant (flat prior) and
    ``predicted[k]``, whose weight has the prior ``N(1, slope_prior_std^2)``
    (the model was trained to predict this very element; ``inf``: flat,
    plain universal kriging); with ``predicted_std`` the model-error term
    uses ``predicted_std[k]^2``.

    Parameters
    ----------
    predicted : ndarray, shape (E, Rx, Ry)
        The 4D-STEM model's prediction of every position (atomic fractions).
    measured : ndarray, shape (E, Rx, Ry)
        EDS atomic fractions; only the entries at ``mask`` are used.
    mask : ndarray of bool, shape (Rx, Ry)
        Sampled positions (at least 3).
    predicted_std : ndarray, shape (E, Rx, Ry), optional
        Ensemble standard deviation of the prediction (atomic fraction).
    slope_prior_std : float
        Prior standard deviation of the model's weight about 1.
    min_length : float, optional
        Smallest GP length scale, pixels. Default: the spacing of a regular
        grid with as many points, ``sqrt(Rx * Ry / n)``. Structure finer than
        the sampling cannot be resolved by the samples; left free, a few
        points fit it with a short length and no noise, and put
        measurement noise into the map around every sample.
    refit_below : int
        With fewer sampled positions, also compute the leave-one-out
        residuals by refitting (:func:`refit_loo_residuals`), as
        ``loo_residual_refit`` in ``fits``.

    Returns
    -------
    mean : ndarray, shape (E, Rx, Ry), float32
        Estimated noise-free map, clipped to [0, 1].
    std_map, std_measured : ndarray, shape (E, Rx, Ry), float32
        Standard deviation of the noise-free map and of a new measurement
        (atomic fraction; 0 at no position).
    fits : list of dict
        Per element: ``slope`` and ``offset`` (the GLS weight of the model
        and the constant), ``slope_std``, ``length_scale`` (pixels),
        ``noise_std``, ``signal_std``, ``tau`` (model-error factor on the
        ensemble std), ``loo_mse``, and the leave-one-out residuals and
        standard deviations ``loo_residual``, ``loo_std`` (arrays, (n,);
        closed form), and with ``refit_below`` ``loo_residual_refit``.
    """
    mask = np.asarray(mask, bool)
    shape = mask.shape
    grid = np.indices(shape).reshape(2, -1).T.astype(np.float64)
    pts = np.argwhere(mask).astype(np.float64)
    pred = np.asarray(predicted, np.float64)
    meas = np.asarray(measured, np.float64)
    var = None if predicted_std is None else np.asarray(predicted_std, np.float64) ** 2
    if min_length is None:
        min_length = float(np.sqrt(mask.size / max(int(mask.sum()), 1)))
    means, std_map, std_meas, fits = [], [], [], []
    for k in range(pred.shape[0]):
        F_all = np.stack([np.ones(grid.shape[0]), pred[k].ravel()], axis=1)
        F = F_all[mask.ravel()]
        y = meas[k][mask]
        mv_all = None if var is None else var[k].ravel()
        if np.ptp(F[:, 1]) == 0:  # a constant prediction carries no information
            F, F_all = F[:, :1], F_all[:, :1]
        prior_mean, prior_std = np.array([0.0, 1.0]), np.array([np.inf, slope_prior_std])
        options = dict(extent=float(max(shape)), prior_mean=prior_mean[:F.shape[1]],
                       prior_std=prior_std[:F.shape[1]], min_length=min_length)
        mv = None if mv_all is None else mv_all[mask.ravel()]
        fit = fit_universal_kriging(pts, y, F, mv, **options)
        out = fit.predict(grid, F_all, mv_all)
        means.append(out["mean"])
        std_map.append(out["std_map"])
        std_meas.append(out["std_measured"])
        fits.append({"offset": float(fit.beta[0]),
                     "slope": float(fit.beta[1]) if len(fit.beta) > 1 else 0.0,
                     "slope_std": float(fit.beta_std[1]) if len(fit.beta) > 1 else 0.0,
                     "length_scale": fit.length_scale, "noise_std": float(np.sqrt(fit.noise_var)),
                     "signal_std": float(np.sqrt(fit.signal_var)),
                     "tau": float(np.sqrt(fit.tau2)),
                     "loo_mse": float(np.mean(fit.loo_residual ** 2)),
                     "loo_residual": fit.loo_residual, "loo_std": fit.loo_std})
        if len(y) < refit_below:
            fits[-1]["loo_residual_refit"] = refit_loo_residuals(pts, y, F, mv, **options)
    reshape = lambda a: np.stack(a).reshape(pred.shape).astype(np.float32)  # noqa: E731
    return np.clip(reshape(means), 0, 1), reshape(std_map), reshape(std_meas), fits
