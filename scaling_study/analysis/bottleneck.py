"""The bottleneck laws of Fig. 6: error against parameters, and against examples, E = A x^-alpha + E_inf."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .bootstrap import estimates, refit_resamples
from .identifiability import bound_shares
from .optimize import bound_status, multistart, one_blas_thread, status_of
from .results import LawFit, Skipped

SATURATING_LAW = "E(x) = A x^-alpha + E_inf"


def log_saturating_law(theta: np.ndarray, lx: np.ndarray, jac: bool):
    """theta = (log A', alpha, E_inf) of E = A' x'^-alpha + E_inf, lx = log x'."""
    la, alpha, e_inf = (theta[:, i, None] for i in range(3))
    t = np.exp(la - alpha * lx)
    e = t + e_inf
    loge = np.log(e)
    if not jac:
        return loge, None
    q = t / e
    return loge, np.stack([q, -lx * q, 1.0 / e], axis=-1)



def _fit_saturating(name: str, variable: np.ndarray, error: np.ndarray, points: pd.DataFrame,
                    bootstrap: int, rng: np.random.Generator, note: str) -> LawFit:
    """E = A x^-alpha + E_inf; bootstrap resamples the log residuals (one point per model or N)."""
    x0 = float(np.exp(np.log(variable).mean()))
    lx = np.log(variable / x0)
    logy = np.log(error)
    lower = np.array([-30.0, 0.0, 0.0])
    upper = np.array([30.0, 5.0, error.min() * (1 - 1e-9)])
    grid = np.array(np.meshgrid([0.05, 0.2, 0.5, 1.0, 2.0], error.min() * np.array([0.0, 0.3, 0.6, 0.9]),
                                indexing="ij")).reshape(2, -1).T
    alpha, e_inf = grid.T
    la = np.median(np.log(error[None] - e_inf[:, None]) + alpha[:, None] * lx[None], axis=1)
    starts = np.column_stack([la, alpha, e_inf])
    weights = np.ones_like(lx)
    theta, loss, converged = multistart(log_saturating_law, starts, lx, logy, weights, lower, upper)

    def named(t: np.ndarray) -> dict[str, np.ndarray]:
        return {"alpha": t[..., 1], "E_inf": t[..., 2], "A": np.exp(t[..., 0] + t[..., 1] * math.log(x0))}

    fitted = log_saturating_law(theta[None], lx, False)[0][0]
    samples = ok = None
    shares: dict[str, float] = {}
    if len(lx) <= 3:  # as many points as parameters: the curve interpolates them, no residuals to resample
        bootstrap = 0
        note += "; as many points as parameters, so no bootstrap interval"
    if bootstrap:
        residuals = logy - fitted
        draws = fitted[None] + residuals[rng.integers(0, len(lx), (bootstrap, len(lx)))]
        up = np.tile(upper, (bootstrap, 1))
        up[:, 2] = np.exp(draws.min(1)) * (1 - 1e-9)
        thetas, ok = refit_resamples(log_saturating_law, np.minimum(theta, up.min(0)), lx, draws, weights, lower, up)
        samples = named(thetas)
        shares = bound_shares(thetas, ok, lower, up, ["A", "alpha", "E_inf"])
    bound = bound_status(theta, lower, upper, ["log A", "alpha", "E_inf"], {
        ("E_inf", "lower"): "E_inf = 0 (a pure power law)",
        ("E_inf", "upper"): "E_inf = the lowest error",
    })
    return LawFit(
        name=name, formula=SATURATING_LAW, params=estimates(named(theta), samples, ok),
        status=status_of(converged, bound), points=points.assign(predicted=np.exp(fitted)), loss=loss,
        resamples=int(ok.sum()) if ok is not None else 0,
        bootstrap="log residuals of the fit resampled with replacement (one point per model or per N)",
        note=note,
        bound_share=shares,
    )


def saturating_law(x: np.ndarray, fit: LawFit) -> np.ndarray:
    """E(x) = A x^-alpha + E_inf of a fitted bottleneck law."""
    return fit.value("A") * np.asarray(x, float) ** -fit.value("alpha") + fit.value("E_inf")


@one_blas_thread
def fit_bottleneck_params(frame: pd.DataFrame, bootstrap: int, rng: np.random.Generator) -> LawFit | Skipped:
    """Error vs parameters when data is plentiful: each model's best point at the largest N."""
    largest = frame["examples"].max()
    at_max = frame[frame["examples"] == largest]
    best = at_max.loc[at_max.groupby("model")["error"].idxmin()].sort_values("params")
    if best["params"].nunique() < 3:
        return Skipped("params", f"error vs parameters needs 3 models at the largest N = {largest:,}; "
                                 f"found {best['params'].nunique()} (the law has 3 parameters)")
    note = f"points: each model's lowest error at the largest N = {largest:,} (any T)"
    return _fit_saturating("params", best["params"].to_numpy(float), best["error"].to_numpy(), best,
                           bootstrap, rng, note)


@one_blas_thread
def fit_bottleneck_examples(frame: pd.DataFrame, bootstrap: int, rng: np.random.Generator) -> LawFit | Skipped:
    """Error vs examples when parameters are plentiful: the largest model's best point at each N."""
    largest = frame["params"].max()
    model = frame[frame["params"] == largest]
    best = model.loc[model.groupby("examples")["error"].idxmin()].sort_values("examples")
    name = best["model"].iloc[0]
    if len(best) < 3:
        return Skipped("examples", f"error vs examples needs 3 values of N for the largest model {name}; "
                                   f"found {len(best)} (the law has 3 parameters)")
    note = f"points: the lowest error of the largest model ({name}, {largest:,} parameters) at each N (any T)"
    return _fit_saturating("examples", best["examples"].to_numpy(float), best["error"].to_numpy(), best,
                           bootstrap, rng, note)
