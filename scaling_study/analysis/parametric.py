"""The parametric law E(P, D) = E_inf + A / P^alpha + B / D^beta (Hoffmann et al. approach 3)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .bootstrap import estimates, resampled
from .identifiability import bound_shares
from .optimize import bound_status, multistart, one_blas_thread, status_of
from .results import LawFit, Skipped

PARAMETRIC_LAW = "E(P, D) = E_inf + A / P^alpha + B / D^beta, D = N T"


def log_parametric_law(theta: np.ndarray, x: tuple[np.ndarray, np.ndarray], jac: bool):
    """theta = (log E_inf, log A', log B', alpha, beta); log E = LSE(e, a - alpha lp, b - beta ld) (Hoffmann et al.)."""
    lp, ld = x
    e, la, lb, alpha, beta = (theta[:, i, None] for i in range(5))
    loge, (s0, s1, s2) = log_sum_exp3(e, la - alpha * lp, lb - beta * ld)
    if not jac:
        return loge, None
    return loge, np.stack([s0, s1, s2, -lp * s1, -ld * s2], axis=-1)


def log_sum_exp3(u0: np.ndarray, u1: np.ndarray, u2: np.ndarray):
    """log(e^u0 + e^u1 + e^u2) without overflow, and each term's share (the gradient wrt u0, u1, u2)."""
    shape = np.broadcast_shapes(np.shape(u0), np.shape(u1), np.shape(u2))
    u0, u1, u2 = (np.broadcast_to(u, shape) for u in (u0, u1, u2))
    top = np.maximum(np.maximum(u0, u1), u2)
    w0, w1, w2 = np.exp(u0 - top), np.exp(u1 - top), np.exp(u2 - top)
    total = w0 + w1 + w2
    return top + np.log(total), (w0 / total, w1 / total, w2 / total)



def flops_scaling(frame: pd.DataFrame) -> tuple[float, float]:
    """(kappa, gamma) of FLOP(f) = kappa P^gamma, a log-log fit across the models (gamma = 1 with one model)."""
    models = frame.drop_duplicates("params")
    logp = np.log(models["params"].to_numpy(float))
    logf = np.log(models["flops_per_example"].to_numpy(float))
    if len(models) < 2 or np.ptp(logp) == 0:
        return float(np.exp(np.mean(logf - logp))), 1.0
    gamma, log_kappa = np.polyfit(logp, logf, 1)
    return float(np.exp(log_kappa)), float(gamma)


@one_blas_thread
def fit_parametric(frame: pd.DataFrame, bootstrap: int, rng: np.random.Generator, gamma: float = 1.0) -> LawFit | Skipped:
    """E(P, D) fitted to every point (Hoffmann et al. approach 3); bootstrap resamples all points."""
    if len(frame) < 5:
        return Skipped("parametric", f"{PARAMETRIC_LAW} needs 5 points; found {len(frame)}")
    if frame["params"].nunique() < 2 or (frame["examples"] * frame["epochs"]).nunique() < 2:
        return Skipped("parametric", f"{PARAMETRIC_LAW} needs at least 2 model sizes and 2 values of N*T")
    params = frame["params"].to_numpy(float)
    data = (frame["examples"] * frame["epochs"]).to_numpy(float)
    error = frame["error"].to_numpy()
    p0, d0 = float(np.exp(np.log(params).mean())), float(np.exp(np.log(data).mean()))
    x = (np.log(params / p0), np.log(data / d0))
    logy = np.log(error)
    # E_inf in (0, lowest observed value): an irreducible value above a measured one is not one (losses too)
    lower = np.array([math.log(error.min()) - 14.0, -20.0, -20.0, 0.01, 0.01])
    upper = np.array([math.log(error.min() * (1 - 1e-9)), 5.0 + math.log(max(1.0, error.max())), 5.0 + math.log(max(1.0, error.max())), 4.0, 4.0])
    scale = max(1.0, float(np.median(error)))  # the reducible terms' starts in the metric's own units
    starts = np.array(np.meshgrid(
        np.log(error.min() * np.array([0.1, 0.5, 0.9])),
        np.log(scale * np.array([0.01, 0.05, 0.2, 0.8])),
        np.log(scale * np.array([0.01, 0.05, 0.2, 0.8])),
        [0.1, 0.3, 0.6, 1.0, 1.6],
        [0.1, 0.3, 0.6, 1.0, 1.6],
        indexing="ij",
    )).reshape(5, -1).T
    weights = np.ones_like(error)
    theta, loss, converged = multistart(log_parametric_law, starts, x, logy, weights, lower, upper)

    def named(t: np.ndarray) -> dict[str, np.ndarray]:
        alpha, beta = t[..., 3], t[..., 4]
        return {"alpha": alpha, "beta": beta, "E_inf": np.exp(t[..., 0]),
                "A": np.exp(t[..., 1] + alpha * math.log(p0)), "B": np.exp(t[..., 2] + beta * math.log(d0)),
                "a": beta / (alpha + gamma * beta), "b": alpha / (alpha + gamma * beta)}

    thetas, ok = resampled(log_parametric_law, theta, x, logy, rng, bootstrap, lower, upper)
    samples = None if thetas is None else named(thetas)
    shares = {} if thetas is None else bound_shares(thetas, ok, lower, upper, ["E_inf", "A", "B", "alpha", "beta"])
    bound = bound_status(theta, lower, upper, ["log E_inf", "log A", "log B", "alpha", "beta"], {
        ("log E_inf", "upper"): "E_inf = the lowest observed value",
        ("log E_inf", "lower"): "E_inf -> 0",
    })
    points = frame.assign(predicted=np.exp(log_parametric_law(theta[None], x, False)[0][0]))
    return LawFit(
        name="parametric", formula=PARAMETRIC_LAW, params=estimates(named(theta), samples, ok),
        status=status_of(converged, bound), points=points, loss=loss,
        resamples=int(ok.sum()) if ok is not None else 0,
        bootstrap="all points resampled with replacement",
        bound_share=shares,
        note=f"allocation exponents a = beta / (alpha + gamma beta), b = alpha / (alpha + gamma beta) with FLOP(f) ~ P^gamma, gamma = {gamma:.3f}",
        samples=None if samples is None else {**samples, "ok": ok},
    )


def parametric_law(params: np.ndarray, data: np.ndarray, fit: LawFit) -> np.ndarray:
    """E(P, D) of a fitted parametric law."""
    return (fit.value("E_inf") + fit.value("A") / np.asarray(params, float) ** fit.value("alpha")
            + fit.value("B") / np.asarray(data, float) ** fit.value("beta"))
