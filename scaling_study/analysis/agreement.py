"""Do the allocation estimators agree, and if not, why: numbers a reader can check, not prose alone.

- `intervals_overlap`: whether the estimators' 95% intervals of a (and of b) share a common range;
- `isoflop_edge_share`: of the compute levels reached by >= 3 models at T, the share whose lowest
  interpolated value is at the smallest or largest of those models (the optimum is beyond the sizes run);
- `sizes_per_level`: how many models reach each compute level (median and minimum);
- `residual_by_epochs`: E(P, D = N T)'s mean log residual per T, its range and its ratio to the
  residuals' robust spread (structure by T says a repeated epoch is not worth a new one); the same
  for the chosen form as `residual_by_epochs_chosen` when that is E(P, D');
- `envelope_points`: compute-optimal points at T (the envelope estimator's regression points).

Each check has a threshold; a check past it is a flag with a sentence naming the likely cause.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .envelope import envelope
from .results import Allocation, LawFit, Skipped

EDGE_SHARE = 0.34  # more than a third of the iso-FLOP levels with an edge minimum
MIN_SIZES = 4  # fewer models than this per compute level (median)
RESIDUAL_RANGE = 0.05  # mean log residuals per T spanning more than 5%...
RESIDUAL_RATIO = 2.0  # ...and more than twice the residuals' robust spread
MIN_ENVELOPE = 6  # fewer compute-optimal points at T than this


def _overlap(fitted: list[Allocation], exponent: str) -> tuple[bool | None, float]:
    values = [getattr(f, exponent) for f in fitted]
    spread = max(v.value for v in values) - min(v.value for v in values)
    if any(math.isnan(v.low) for v in values):
        return None, spread
    return bool(max(v.low for v in values) <= min(v.high for v in values)), spread


def isoflop_levels(frame: pd.DataFrame, epochs: int, count: int = 12) -> pd.DataFrame:
    """Per compute level at T: how many models reach it, and whether the lowest value is at an edge model."""
    at_t = frame[frame["epochs"] == epochs]
    curves = (at_t.assign(logc=np.log(at_t["compute"]), loge=np.log(at_t["error"]))
              .groupby(["params", "examples"], as_index=False)[["logc", "loge"]].mean())
    if curves.empty:
        return pd.DataFrame(columns=["logc", "models", "edge"])
    grid = np.linspace(curves["logc"].min(), curves["logc"].max(), count + 2)[1:-1]
    rows = []
    sizes = np.sort(curves["params"].unique())
    table = np.full((grid.size, sizes.size), np.nan)
    for j, size in enumerate(sizes):
        runs = curves[curves["params"] == size].sort_values("logc")
        if len(runs) < 2:
            continue
        c, e = runs["logc"].to_numpy(), runs["loge"].to_numpy()
        inside = (grid >= c[0]) & (grid <= c[-1])
        table[inside, j] = np.interp(grid[inside], c, e)
    for level, values in zip(grid, table):
        have = np.flatnonzero(np.isfinite(values))
        if have.size < 3:
            rows.append({"logc": level, "models": int(have.size), "edge": None})
            continue
        best = have[np.argmin(values[have])]
        rows.append({"logc": level, "models": int(have.size), "edge": bool(best in (have[0], have[-1]))})
    return pd.DataFrame(rows)


def _residuals_by_epochs(fit: LawFit) -> dict:
    points = fit.points
    residual = np.log(points["error"].to_numpy()) - np.log(points["predicted"].to_numpy())
    by_t = pd.Series(residual).groupby(points["epochs"].to_numpy()).mean()
    scale = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    spread = float(by_t.max() - by_t.min())
    return {"form": fit.name, "mean_log_residual": {int(t): float(v) for t, v in by_t.items()},
            "range": spread, "robust_std": scale, "ratio": spread / scale if scale > 0 else None}


def diagnose(frame: pd.DataFrame, epochs: int, allocations: list[Allocation | Skipped],
             parametric: LawFit | Skipped | None, chosen: LawFit | Skipped | None = None) -> dict:
    """Every agreement number and the flags past their thresholds (see the module's docstring)."""
    fitted = [a for a in allocations if isinstance(a, Allocation)]
    checks: dict = {"estimators": [a.estimator for a in fitted]}
    agree = None
    if len(fitted) >= 2:
        overlap_a, spread_a = _overlap(fitted, "a")
        overlap_b, spread_b = _overlap(fitted, "b")
        checks["intervals_overlap"] = {"a": overlap_a, "b": overlap_b}
        checks["spread"] = {"a": spread_a, "b": spread_b}
        agree = None if overlap_a is None or overlap_b is None else bool(overlap_a and overlap_b)
    levels = isoflop_levels(frame, epochs)
    judged = levels[levels["edge"].notna()] if len(levels) else levels
    checks["isoflop_levels"] = int(len(judged))
    checks["isoflop_edge_share"] = float(judged["edge"].astype(bool).mean()) if len(judged) else None
    checks["sizes_per_level"] = ({"median": float(levels["models"].median()), "min": int(levels["models"].min())}
                                 if len(levels) else None)
    checks["models"] = int(frame["params"].nunique())
    for key, fit in (("residual_by_epochs", parametric), ("residual_by_epochs_chosen", chosen)):
        if isinstance(fit, LawFit) and frame["epochs"].nunique() > 1 and (key == "residual_by_epochs" or fit is not parametric):
            checks[key] = _residuals_by_epochs(fit)
    env = envelope(frame[frame["epochs"] == epochs])
    checks["envelope_points"] = {"at_epochs": int(len(env)), "all": int(len(envelope(frame)))}
    causes = []
    if checks["isoflop_edge_share"] is not None and checks["isoflop_edge_share"] > EDGE_SHARE:
        causes.append(("isoflop_edge", f"{checks['isoflop_edge_share']:.0%} of the iso-FLOP levels have their minimum at the "
                       "smallest or largest model there: the optimum lies beyond the sizes trained"))
    if checks["sizes_per_level"] is not None and checks["sizes_per_level"]["median"] < MIN_SIZES:
        causes.append(("few_sizes", f"a median of {checks['sizes_per_level']['median']:g} models per compute level "
                       f"(< {MIN_SIZES}): an iso-FLOP minimum is placed by too few sizes"))
    r = checks.get("residual_by_epochs")
    if r and r["range"] > RESIDUAL_RANGE and (r["ratio"] or 0) > RESIDUAL_RATIO:
        fixed = checks.get("residual_by_epochs_chosen")
        remedy = (f"; the chosen {fixed['form']} form brings it to {fixed['range']:.1%}" if fixed else "")
        causes.append(("residuals_by_epochs", f"E(P, D = N T)'s mean residual varies by {r['range']:.1%} across T "
                       f"({r['ratio']:.1f}x its spread): a repeated epoch is not worth a new one{remedy}"))
    if checks["envelope_points"]["at_epochs"] < MIN_ENVELOPE:
        causes.append(("few_envelope_points", f"{checks['envelope_points']['at_epochs']} compute-optimal points at "
                       f"T = {epochs} (< {MIN_ENVELOPE}): the envelope regression rests on few points"))
    return {"agree": agree, "checks": checks, "flags": [name for name, _ in causes],
            "causes": [text for _, text in causes],
            "thresholds": {"isoflop_edge_share": EDGE_SHARE, "sizes_per_level_median": MIN_SIZES,
                           "residual_range": RESIDUAL_RANGE, "residual_ratio": RESIDUAL_RATIO,
                           "envelope_points_at_epochs": MIN_ENVELOPE}}
