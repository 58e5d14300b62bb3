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
from scipy.interpolate import Akima1DInterpolator

from ..budget import PFLOP
from .bootstrap import interval
from .sweeps import MIN_SIZES, SweepShape
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


def _slopes(x: np.ndarray, y: np.ndarray, use: np.ndarray, weights: np.ndarray | None = None):
    """Per row: (weighted) least-squares slope and intercept of y on x over the entries `use`
    (NaN with fewer than 2)."""
    w = use * (1.0 if weights is None else weights)
    n = w.sum(1)
    xx = np.where(use, x, 0.0)
    yy = np.where(use, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = (w * xx).sum(1) / n, (w * yy).sum(1) / n
        sxx = (w * (xx - mx[:, None]) ** 2).sum(1)
        sxy = (w * (xx - mx[:, None]) * (yy - my[:, None])).sum(1)
        slope = np.where((use.sum(1) >= 2) & (sxx > 1e-12), sxy / np.where(sxx > 1e-12, sxx, 1.0), np.nan)
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
    samples = None
    if bootstrap:
        estimate_a = Estimate(float(a[0]), *interval(a[1:], ok))
        estimate_b = Estimate(float(b[0]), *interval(b[1:], ok))
        samples = {"a": a[1:], "b": b[1:], "p0": p0[1:], "n0": n0[1:], "ok": ok}
    method = (f"{int(kept.sum())} of {len(ids)} compute budgets at T = {epochs} with an interior minimum: a least-squares "
              f"parabola of log E over log P per budget (Hoffmann et al. approach 2), its vertex as log P*; OLS of "
              f"log P* and log N* on log C, one point per budget; bootstrap over the runs within each budget")
    return Allocation("isoflop", estimate_a, estimate_b, float(p0[0]), float(n0[0]), points, method,
                      int(ok.sum()) if bootstrap else 0, mode="budgets",
                      resampled=BUDGET_RESAMPLING if bootstrap else "", samples=samples)


def level_grid(low: float, high: float, count: int | None = None) -> np.ndarray:
    """The compute levels (log C) of the interpolated iso-FLOP estimator: 4 per decade (5 to 30), inside
    [low, high]."""
    count = count or int(np.clip(round(4 * (high - low) / math.log(10)), 5, 30))
    return np.linspace(low, high, count + 2)[1:-1]


def level_bootstrap(frame: pd.DataFrame, epochs: int, bootstrap: int, rng: np.random.Generator) -> dict:
    """Bootstrap draws of a, b and the intercepts p0, n0 (log P*, log N* at 1 PFLOP) for the
    interpolated-levels estimator, resampling runs within each model and re-taking the minima at the
    compute levels of the full fit: {"a", "b", "p0", "n0", "ok"}.

    Vectorised over the resamples: at each level, the resamples whose models reach it alike share one
    Akima spline (a column each)."""
    at_t = frame[frame["epochs"] == epochs]
    pairs = at_t.groupby(["params", "examples"]).ngroup().to_numpy()
    logc_points = np.log(at_t["compute"].to_numpy(float) / PFLOP)
    loge_points = np.log(at_t["error"].to_numpy(float))
    sizes = np.sort(at_t["params"].unique())
    point_model = np.searchsorted(sizes, at_t["params"].to_numpy())
    logf = np.log(at_t.drop_duplicates("params").sort_values("params")["flops_per_example"].to_numpy(float))
    logp = np.log(sizes)
    # the levels of the full fit (as isoflop_minima places them)
    full = np.bincount(pairs, logc_points) / np.bincount(pairs)
    grid = level_grid(full.min(), full.max())
    counts = np.zeros((bootstrap, len(at_t)))
    for j in range(sizes.size):
        rows = np.flatnonzero(point_model == j)
        counts[:, rows] = rng.multinomial(rows.size, np.full(rows.size, 1.0 / rows.size), size=bootstrap)
    onehot = np.zeros((len(at_t), pairs.max() + 1))
    onehot[np.arange(len(at_t)), pairs] = 1.0
    weight = counts @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        loge = (counts * loge_points) @ onehot / weight
    pair_model = np.zeros(onehot.shape[1], int)
    pair_model[pairs] = point_model
    table = np.full((bootstrap, grid.size, sizes.size), np.nan)
    for j in range(sizes.size):  # linear interpolation in log C between the nearest runs drawn
        mine = np.flatnonzero(pair_model == j)
        mine = mine[np.argsort(full[mine], kind="stable")]
        c = full[mine]  # a pair's compute does not depend on the draw
        drawn = weight[:, mine] > 0
        index = np.arange(mine.size)
        below = np.maximum.accumulate(np.where(drawn, index, -1), axis=1)  # last drawn at or before k
        above = np.minimum.accumulate(np.where(drawn, index, mine.size)[:, ::-1], axis=1)[:, ::-1]
        k = np.clip(np.searchsorted(c, grid, side="right") - 1, 0, mine.size - 1)  # c[k] <= level
        lo, hi = below[:, k], above[:, np.clip(np.searchsorted(c, grid, side="left"), 0, mine.size - 1)]
        valid = (lo >= 0) & (hi < mine.size) & (grid[None] >= c[0]) & (grid[None] <= c[-1])
        lo_c, hi_c = np.where(valid, lo, 0), np.where(valid, hi, 0)
        e = loge[:, mine]
        x0, x1 = c[lo_c], c[hi_c]
        y0, y1 = np.take_along_axis(e, lo_c, 1), np.take_along_axis(e, hi_c, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(x1 > x0, (grid[None] - x0) / np.where(x1 > x0, x1 - x0, 1.0), 0.0)
        table[:, :, j] = np.where(valid, y0 + t * (y1 - y0), np.nan)
    best = np.full((bootstrap, grid.size), np.nan)
    models = np.zeros((bootstrap, grid.size))
    for level in range(grid.size):
        have = np.isfinite(table[:, level, :])
        # each set of models reaching the level as one code (exact for any number of models)
        _, codes = np.unique(have, axis=0, return_inverse=True)
        for code in np.unique(codes):
            which = np.flatnonzero(codes.ravel() == code)
            mask = have[which[0]]
            if mask.sum() < 3:
                continue
            xs = logp[mask]
            fine = np.linspace(xs[0], xs[-1], 400)
            curve = Akima1DInterpolator(xs, table[which, level][:, mask].T, axis=0)(fine)
            arg = np.argmin(np.where(np.isnan(curve), np.inf, curve), axis=0)
            interior = (arg > 0) & (arg < fine.size - 1)
            best[which[interior], level] = fine[arg[interior]]
            models[which[interior], level] = mask.sum()
    use = np.isfinite(best)
    logn = grid[None] + math.log(PFLOP / (3.0 * epochs)) - np.interp(np.nan_to_num(best), logp, logf)
    x = np.broadcast_to(grid, best.shape)
    a, p0 = _slopes(x, best, use, models)
    b, n0 = _slopes(x, logn, use, models)
    return {"a": a, "b": b, "p0": p0, "n0": n0, "ok": np.isfinite(a) & np.isfinite(b)}


def budget_profiles(frame: pd.DataFrame, epochs: int) -> list[dict]:
    """Per budget of a frame with a `budget` column, at T: its points (params, error), the parabola's
    coefficients of log E over log P (highest power first), its vertex P* and whether that is interior."""
    if "budget" not in frame.columns:
        return []
    at_t = frame[(frame["epochs"] == epochs) & (frame["budget"] >= 0)]
    profiles = []
    for budget, points in at_t.groupby("budget"):
        x, y = np.log(points["params"].to_numpy(float)), np.log(points["error"].to_numpy(float))
        if np.unique(x).size < MIN_SIZES:
            continue
        vertex, interior = parabola_minima(x, y, np.ones((1, x.size)))
        profiles.append({"budget": int(budget), "pflops": float(np.exp(np.log(points["compute"] / PFLOP).mean())),
                         "params": points["params"].to_numpy(float), "error": points["error"].to_numpy(float),
                         "coef": np.polyfit(x, y, 2), "vertex": float(np.exp(vertex[0])) if np.isfinite(vertex[0]) else None,
                         "interior": bool(interior[0])})
    return profiles
