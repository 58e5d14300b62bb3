"""The compute-optimal allocation P* ~ C^a, N* ~ C^b (Fig. 7) by Hoffmann et al.'s three approaches:
the envelope, iso-FLOP minima, and the optimum of the parametric law."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy.interpolate import Akima1DInterpolator

from ..budget import PFLOP
from . import isoflop
from .bootstrap import interval, multinomial
from .sweeps import SweepShape
from .envelope import envelope
from .results import Allocation, Estimate, LawFit, Skipped


def _weighted_slopes(x: np.ndarray, ys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts of weighted least squares of each y in ys (q, n) on x, for each weight row (B, n)."""
    weights = np.atleast_2d(weights)
    total = weights.sum(1, keepdims=True)
    mx = (weights * x).sum(1, keepdims=True) / total
    dx = x[None] - mx
    sxx = (weights * dx * dx).sum(1)
    slopes, intercepts = [], []
    for y in ys:
        my = (weights * y).sum(1, keepdims=True) / total
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(sxx > 1e-12, (weights * dx * (y[None] - my)).sum(1) / np.where(sxx > 1e-12, sxx, 1.0), np.nan)
        slopes.append(slope)
        intercepts.append(my[:, 0] - slope * mx[:, 0])
    return np.array(slopes), np.array(intercepts)


def _regression_allocation(estimator: str, points: pd.DataFrame, weights: np.ndarray, method: str,
                           bootstrap: int, rng: np.random.Generator) -> Allocation:
    logc = np.log(points["pflops"].to_numpy())
    ys = np.log(points[["params", "examples"]].to_numpy(float)).T
    slopes, intercepts = _weighted_slopes(logc, ys, weights)
    a = Estimate(float(slopes[0, 0]))
    b = Estimate(float(slopes[1, 0]))
    resamples = 0
    if bootstrap:
        counts = multinomial(rng, bootstrap, len(points)) * weights
        boot, boot_intercepts = _weighted_slopes(logc, ys, counts)
        ok = np.isfinite(boot).all(0)
        resamples = int(ok.sum())
        a = Estimate(a.value, *interval(boot[0], ok))
        b = Estimate(b.value, *interval(boot[1], ok))
        samples = {"a": boot[0], "b": boot[1], "p0": boot_intercepts[0], "n0": boot_intercepts[1], "ok": ok}
    return Allocation(estimator, a, b, float(intercepts[0, 0]), float(intercepts[1, 0]), points, method, resamples,
                      samples=samples if bootstrap else None)


def allocation_envelope(frame: pd.DataFrame, epochs: int, bootstrap: int, rng: np.random.Generator) -> Allocation | Skipped:
    """Hoffmann et al. approach 1 (the paper's Fig. 7): log P and log N of the envelope points at T on log C."""
    env = envelope(frame[frame["epochs"] == epochs])
    if len(env) < 2 or env["params"].nunique() < 2:
        return Skipped("envelope", f"the envelope at T = {epochs} has {len(env)} point(s) and "
                                   f"{env['params'].nunique()} model size(s); a log-log line needs 2 of each")
    points = pd.DataFrame({"pflops": env["compute"].to_numpy() / PFLOP, "params": env["params"].to_numpy(),
                           "examples": env["examples"].to_numpy()})
    by_budget = "budget" in frame.columns
    method = (f"OLS of log P and log N on log C over the {len(points)} envelope points at T = {epochs}"
              + (" (the best point per compute budget, then those below every cheaper budget's best)" if by_budget else "")
              + "; bootstrap over them")
    fitted = _regression_allocation("envelope", points, np.ones(len(points)), method, bootstrap, rng)
    return replace(fitted, mode="budgets" if by_budget else "points",
                   resampled="envelope points resampled with replacement" if bootstrap else "")


def isoflop_minima(frame: pd.DataFrame, epochs: int, levels: int | None = None) -> pd.DataFrame:
    """Per compute level: each model's error there (interpolated along its runs at T), the Akima minimum over log P.

    Columns pflops, params, examples, models (how many models bracket the level); levels whose
    minimum lies on the edge of the models that reach it are dropped.
    """
    at_t = frame[frame["epochs"] == epochs]
    curves = (at_t.assign(logc=np.log(at_t["compute"] / PFLOP), loge=np.log(at_t["error"]))
              .groupby(["params", "examples"], as_index=False)
              .agg(logc=("logc", "mean"), loge=("loge", "mean"), flops=("flops_per_example", "first")))
    if curves.empty:
        return pd.DataFrame(columns=["pflops", "params", "examples", "models"])
    low, high = curves["logc"].min(), curves["logc"].max()
    grid = isoflop.level_grid(low, high, levels)
    sizes = np.sort(curves["params"].unique())
    logf = np.log(curves.drop_duplicates("params").sort_values("params")["flops"].to_numpy(float))
    model = np.searchsorted(sizes, curves["params"].to_numpy())
    rows = level_minima(grid, np.log(sizes), logf, model, curves["logc"].to_numpy(), curves["loge"].to_numpy(), epochs)
    return pd.DataFrame(rows, columns=["pflops", "params", "examples", "models"])


def level_minima(grid: np.ndarray, logp: np.ndarray, logf: np.ndarray, model: np.ndarray, logc: np.ndarray,
                 loge: np.ndarray, epochs: int) -> list[dict]:
    """The interior Akima minima over log P at each level of `grid` (log PFLOPs), from each model's
    curve (points `model`, `logc`, `loge`) interpolated in log C."""
    table = np.full((grid.size, logp.size), np.nan)
    for j in range(logp.size):
        mine = model == j
        if mine.sum() < 2:
            continue
        order = np.argsort(logc[mine], kind="stable")
        c, e = logc[mine][order], loge[mine][order]
        inside = (grid >= c[0]) & (grid <= c[-1])
        table[inside, j] = np.interp(grid[inside], c, e)
    rows = []
    for level, errors in zip(grid, table):
        have = np.isfinite(errors)
        if have.sum() < 3:
            continue
        xs, ys = logp[have], errors[have]
        fine = np.linspace(xs[0], xs[-1], 400)
        curve = Akima1DInterpolator(xs, ys)(fine)
        best = int(np.nanargmin(curve))
        if best == 0 or best == fine.size - 1:
            continue  # the optimum lies beyond the models that reach this compute
        lp = fine[best]
        flops = math.exp(np.interp(lp, logp, logf))
        examples = math.exp(level) * PFLOP / (3.0 * flops * epochs)
        rows.append({"pflops": math.exp(level), "params": math.exp(lp), "examples": examples, "models": int(have.sum())})
    return rows


def allocation_isoflop(frame: pd.DataFrame, epochs: int, bootstrap: int, rng: np.random.Generator,
                       shape: SweepShape | None = None) -> Allocation | Skipped:
    """Hoffmann et al. approach 2: on an iso-FLOP sweep (`shape.mode == "budgets"`) the parabola minima of
    each budget; else a weighted regression of the minima at interpolated compute levels on log C."""
    if shape is not None and shape.mode == "budgets":
        return isoflop.allocation_budgets(frame, epochs, shape, bootstrap, rng)
    minima = isoflop_minima(frame, epochs)
    if len(minima) < 2:
        return Skipped("isoflop", f"iso-FLOP at T = {epochs}: {len(minima)} compute level(s) with an interior "
                                  f"minimum over >= 3 models; a log-log line needs 2")
    weights = minima["models"].to_numpy(float)
    method = (f"{len(minima)} compute levels at T = {epochs}: each model's error interpolated in log C along its runs, "
              "Akima in log P across models, interior minima only; least squares weighted by the number of models "
              "at the level; bootstrap over the runs")
    fitted = _regression_allocation("isoflop", minima, weights, method, 0, rng)
    if not bootstrap:
        return replace(fitted, mode="levels")
    s = isoflop.level_bootstrap(frame, epochs, bootstrap, rng)
    return replace(fitted, a=Estimate(fitted.a.value, *interval(s["a"], s["ok"])),
                   b=Estimate(fitted.b.value, *interval(s["b"], s["ok"])), resamples=int(s["ok"].sum()),
                   mode="levels", resampled=isoflop.LEVEL_RESAMPLING, samples=s)


def allocation_parametric(fit: LawFit, epochs: int, kappa: float, gamma: float) -> Allocation:
    """Hoffmann et al. approach 3: the optimum of the fitted E(P, D) at C = 3 kappa P^gamma D; N* = D*/T."""
    alpha, beta = fit.value("alpha"), fit.value("beta")
    denominator = alpha + gamma * beta
    log_c_unit = math.log(PFLOP) - math.log(3.0 * kappa)  # log(C / (3 kappa)) at C = 1 PFLOP
    p0 = (math.log(alpha * fit.value("A")) - math.log(gamma * beta * fit.value("B")) + beta * log_c_unit) / denominator
    n0 = log_c_unit - gamma * p0 - math.log(epochs)
    grid = np.geomspace(fit.points["compute"].min(), fit.points["compute"].max(), 20) / PFLOP
    points = pd.DataFrame({"pflops": grid, "params": np.exp(p0 + fit.params["a"].value * np.log(grid)),
                           "examples": np.exp(n0 + fit.params["b"].value * np.log(grid))})
    method = f"the minimum of the fitted E(P, D) subject to C = 3 FLOP(f) N T; N* = D*/T at T = {epochs}"
    samples = None
    if fit.samples is not None:  # the same optimum for each bootstrap refit of the law
        s = fit.samples
        shrink = 1.0 if "R_star" not in s else (epochs / (1.0 - s["R_star"] * np.expm1(-(epochs - 1.0) / s["R_star"]))) ** s["beta"]
        with np.errstate(invalid="ignore", divide="ignore"):
            bp0 = (np.log(s["alpha"] * s["A"]) - np.log(gamma * s["beta"] * s["B"] * shrink) + s["beta"] * log_c_unit) / (s["alpha"] + gamma * s["beta"])
        samples = {"a": s["a"], "b": s["b"], "p0": bp0, "n0": log_c_unit - gamma * bp0 - math.log(epochs), "ok": s["ok"]}
    return Allocation("parametric", fit.params["a"], fit.params["b"], p0, n0, points, method, fit.resamples, samples=samples)
