"""Iso-FLOP minima (Hoffmann et al. approach 2) at the budgets an iso-FLOP sweep ran, and bootstrap
intervals that resample runs, for both iso-FLOP modes.

On an iso-FLOP sweep each budget's points give a curve of log E over log P; a parabola through it
(least squares) has its minimum at log P*, kept when it lies strictly between the budget's smallest
and largest size (an edge minimum says only that the optimum is beyond the sizes run). log P* and
log N* are regressed on log C, one point per budget.

Intervals resample runs, never levels or budgets' minima that share runs: on a sweep, runs within
each budget (stratified, so every budget keeps its count); on a grid, runs within each model, the
curves re-interpolated at the same compute levels.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..budget import PFLOP
from .bootstrap import interval
from .budgets import MIN_SIZES, SweepShape
from .results import Allocation, Estimate, Skipped

BUDGET_RESAMPLING = ("runs resampled with replacement within each budget (stratified); each budget's parabola "
                     "refitted; a budget whose minimum is not interior is left out of that resample")
LEVEL_RESAMPLING = ("runs resampled with replacement within each model; each model's curve re-interpolated at the "
                    "same compute levels and the minima re-taken")


def parabola_minima(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares parabolas y ~ c0 + c1 x + c2 x^2 weighted by each row of counts (B, n):
    (vertex x* per row, whether it is a minimum strictly inside the x of the points drawn)."""
    counts = np.atleast_2d(np.asarray(counts, float))
    centre = x.mean()
    u = x - centre
    design = np.stack([np.ones_like(u), u, u * u], axis=1)
    normal = np.einsum("bn,ni,nj->bij", counts, design, design)
    rhs = np.einsum("bn,ni,n->bi", counts, design, y)
    drawn = counts > 0
    distinct = np.array([np.unique(x[row]).size for row in drawn])
    vertex = np.full(counts.shape[0], np.nan)
    usable = distinct >= 3
    if usable.any():
        coef = np.linalg.solve(normal[usable], rhs[usable][..., None])[..., 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            vertex[usable] = np.where(coef[:, 2] > 0, -coef[:, 1] / (2 * coef[:, 2]), np.nan) + centre
    low = np.where(drawn, x[None], np.inf).min(1)
    high = np.where(drawn, x[None], -np.inf).max(1)
    with np.errstate(invalid="ignore"):
        interior = np.isfinite(vertex) & (vertex > low) & (vertex < high)
    return vertex, interior


def _slopes(x: np.ndarray, y: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: OLS slope and intercept of y on x over the entries `use` (NaN with fewer than 2)."""
    w = use.astype(float)
    n = w.sum(1)
    xx = np.where(use, x, 0.0)
    yy = np.where(use, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = xx.sum(1) / n, yy.sum(1) / n
        sxx = (w * (xx - mx[:, None]) ** 2).sum(1)
        sxy = (w * (xx - mx[:, None]) * (yy - my[:, None])).sum(1)
        slope = np.where((n >= 2) & (sxx > 1e-12), sxy / np.where(sxx > 1e-12, sxx, 1.0), np.nan)
    return slope, my - slope * mx


def allocation_budgets(frame: pd.DataFrame, epochs: int, shape: SweepShape, bootstrap: int,
                       rng: np.random.Generator) -> Allocation | Skipped:
    """Approach 2 at the budgets of an iso-FLOP sweep: interior parabola minima regressed on log C."""
    at = (frame["epochs"] == epochs).to_numpy()
    at_t = frame[at]
    # the frame's own `budget` column when it has one (rows may have been averaged over seeds since)
    labels = at_t["budget"].to_numpy() if "budget" in at_t.columns else shape.labels[at]
    logp_all = np.log(at_t["params"].to_numpy(float))
    loge_all = np.log(at_t["error"].to_numpy(float))
    models = at_t.drop_duplicates("params").sort_values("params")
    logp_models = np.log(models["params"].to_numpy(float))
    logf_models = np.log(models["flops_per_example"].to_numpy(float))
    ids = [b for b in np.unique(labels[labels >= 0]) if np.unique(logp_all[labels == b]).size >= MIN_SIZES]
    if len(ids) < 2:
        return Skipped("isoflop", f"iso-FLOP at T = {epochs}: {len(ids)} budget(s) with >= {MIN_SIZES} model sizes; "
                                  "a log-log line needs 2")
    rows = 1 + bootstrap
    vertex = np.full((rows, len(ids)), np.nan)
    interior = np.zeros((rows, len(ids)), bool)
    logc = np.empty(len(ids))
    sizes = np.empty(len(ids), int)
    for k, budget in enumerate(ids):
        mine = labels == budget
        x, y = logp_all[mine], loge_all[mine]
        counts = np.ones((1, x.size))
        if bootstrap:
            counts = np.vstack([counts, rng.multinomial(x.size, np.full(x.size, 1.0 / x.size), size=bootstrap)])
        vertex[:, k], interior[:, k] = parabola_minima(x, y, counts)
        logc[k] = np.log(at_t["compute"].to_numpy(float)[mine] / PFLOP).mean()
        sizes[k] = np.unique(x).size
    logn = logc[None] + math.log(PFLOP / (3.0 * epochs)) - np.interp(np.nan_to_num(vertex), logp_models, logf_models)
    a, p0 = _slopes(np.broadcast_to(logc, vertex.shape), vertex, interior)
    b, n0 = _slopes(np.broadcast_to(logc, vertex.shape), logn, interior)
    kept = interior[0]
    if kept.sum() < 2:
        return Skipped("isoflop", f"iso-FLOP at T = {epochs}: {int(kept.sum())} of {len(ids)} budgets have an interior "
                                  "minimum; a log-log line needs 2")
    points = pd.DataFrame({"pflops": np.exp(logc[kept]), "params": np.exp(vertex[0, kept]),
                           "examples": np.exp(logn[0, kept]), "models": sizes[kept]})
    ok = np.isfinite(a[1:]) & np.isfinite(b[1:])
    estimate_a, estimate_b = Estimate(float(a[0])), Estimate(float(b[0]))
    if bootstrap:
        estimate_a = Estimate(float(a[0]), *interval(a[1:], ok))
        estimate_b = Estimate(float(b[0]), *interval(b[1:], ok))
    method = (f"{int(kept.sum())} of {len(ids)} compute budgets at T = {epochs} with an interior minimum: a least-squares "
              f"parabola of log E over log P per budget (Hoffmann et al. approach 2), its vertex as log P*; OLS of "
              f"log P* and log N* on log C, one point per budget; bootstrap over the runs within each budget")
    return Allocation("isoflop", estimate_a, estimate_b, float(p0[0]), float(n0[0]), points, method,
                      int(ok.sum()) if bootstrap else 0, mode="budgets",
                      resampled=BUDGET_RESAMPLING if bootstrap else "")


def level_bootstrap(frame: pd.DataFrame, epochs: int, bootstrap: int, rng: np.random.Generator) -> tuple[tuple[float, float], tuple[float, float], int]:
    """Intervals of a and b for the interpolated-levels estimator, resampling runs within each model
    and re-taking the minima at the compute levels of the full fit: (a interval, b interval, resamples)."""
    from .allocation import level_minima  # allocation imports this module

    at_t = frame[frame["epochs"] == epochs]
    pairs = at_t.groupby(["params", "examples"]).ngroup().to_numpy()
    logc_points = np.log(at_t["compute"].to_numpy(float) / PFLOP)
    loge_points = np.log(at_t["error"].to_numpy(float))
    sizes = np.sort(at_t["params"].unique())
    point_model = np.searchsorted(sizes, at_t["params"].to_numpy())
    pair_model = np.zeros(pairs.max() + 1, int)
    pair_model[pairs] = point_model
    logf = np.log(at_t.drop_duplicates("params").sort_values("params")["flops_per_example"].to_numpy(float))
    logp = np.log(sizes)
    # the levels of the full fit (every level, also those whose minimum was on an edge)
    full_curves = np.bincount(pairs, logc_points) / np.bincount(pairs)
    low, high = full_curves.min(), full_curves.max()
    count = int(np.clip(round(4 * (high - low) / math.log(10)), 5, 30))
    grid = np.linspace(low, high, count + 2)[1:-1]
    members = [np.flatnonzero(point_model == j) for j in range(sizes.size)]
    a_samples, b_samples = np.full(bootstrap, np.nan), np.full(bootstrap, np.nan)
    for i in range(bootstrap):
        counts = np.zeros(len(at_t))
        for rows in members:
            counts[rows] = rng.multinomial(rows.size, np.full(rows.size, 1.0 / rows.size))
        weight = np.bincount(pairs, counts, minlength=pair_model.size)
        present = weight > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            logc = np.bincount(pairs, counts * logc_points, minlength=pair_model.size) / weight
            loge = np.bincount(pairs, counts * loge_points, minlength=pair_model.size) / weight
        rows = level_minima(grid, logp, logf, pair_model[present], logc[present], loge[present], epochs)
        if len(rows) < 2:
            continue
        x = np.log([r["pflops"] for r in rows])
        if np.ptp(x) <= 1e-12:
            continue
        w = np.sqrt([r["models"] for r in rows])
        a_samples[i] = np.polyfit(x, np.log([r["params"] for r in rows]), 1, w=w)[0]
        b_samples[i] = np.polyfit(x, np.log([r["examples"] for r in rows]), 1, w=w)[0]
    ok = np.isfinite(a_samples) & np.isfinite(b_samples)
    return interval(a_samples, ok), interval(b_samples, ok), int(ok.sum())
