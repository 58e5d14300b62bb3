"""Do the allocation estimators agree, and if not, why: numbers a reader can check, not prose alone.

- `standardised_spread`: per exponent, the largest difference between two estimators over its joint
  bootstrap uncertainty; the verdict (`agree`, `verdict`) says agree when it is at most AGREE_Z for a
  and b, and undecided when the joint uncertainty is too wide for the comparison to tell;
- `intervals_overlap`: whether the estimators' 95% intervals of a (and of b) share a common range;
- `isoflop_edge` (and `isoflop_edge_share`): of the budgets (an iso-FLOP sweep) or compute levels (a
  grid) the iso-FLOP estimator could use, those whose minimum is at the smallest or largest size
  there, which it dropped (the optimum is beyond the sizes run);
- `sizes_per_level`: how many models each budget ran, or reach each compute level (median and minimum);
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
from scipy.interpolate import Akima1DInterpolator

from ..budget import PFLOP
from .envelope import envelope
from .isoflop import budget_profiles, level_grid
from .results import Allocation, LawFit, Skipped

AGREE_Z = 2.0  # estimators agree while no exponent differs by more than 2 joint standard deviations
INFORMATIVE_SD = 0.05  # and the comparison says something only while that joint sd is at most this
Z95 = 1.959963984540054
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


def isoflop_levels(frame: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """Per compute level at T of the iso-FLOP estimator (the same levels): how many models reach it, and
    whether the lowest value is at an edge model (then the estimator drops the level)."""
    at_t = frame[frame["epochs"] == epochs]
    curves = (at_t.assign(logc=np.log(at_t["compute"] / PFLOP), loge=np.log(at_t["error"]))
              .groupby(["params", "examples"], as_index=False)[["logc", "loge"]].mean())
    if curves.empty:
        return pd.DataFrame(columns=["logc", "models", "edge"])
    grid = level_grid(curves["logc"].min(), curves["logc"].max())
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
        fine = np.linspace(np.log(sizes[have[0]]), np.log(sizes[have[-1]]), 400)  # as the estimator places its minimum
        arg = int(np.nanargmin(Akima1DInterpolator(np.log(sizes[have]), values[have])(fine)))
        rows.append({"logc": level, "models": int(have.size), "edge": arg in (0, fine.size - 1)})
    return pd.DataFrame(rows)


def edge_minima(frame: pd.DataFrame, epochs: int) -> dict:
    """The iso-FLOP estimator's own count of edge minima: of the budgets (an iso-FLOP sweep) or compute levels
    (a grid) it could use, how many have their minimum at the smallest or largest size, and so were dropped."""
    if "budget" in frame.columns:
        profiles = budget_profiles(frame, epochs)
        used, edge = len(profiles), sum(not p["interior"] for p in profiles)
        return {"counted_on": "budgets", "used": used, "edge": edge, "share": edge / used if used else None}
    levels = isoflop_levels(frame, epochs)
    judged = levels[levels["edge"].notna()] if len(levels) else levels
    edge = int(judged["edge"].astype(bool).sum()) if len(judged) else 0
    return {"counted_on": "levels", "used": int(len(judged)), "edge": edge,
            "share": edge / len(judged) if len(judged) else None}


def standardised_spread(fitted: list[Allocation], exponent: str) -> dict:
    """The largest difference of an exponent between two estimators, in units of its joint bootstrap
    uncertainty: |x_i - x_j| / sqrt(s_i^2 + s_j^2), s the 95% interval's width / (2 x 1.96)."""
    values = [getattr(f, exponent) for f in fitted]
    spread = max(v.value for v in values) - min(v.value for v in values)
    if any(math.isnan(v.low) or math.isnan(v.high) for v in values):
        return {"spread": spread, "z": None, "joint_sd": None, "pair": None}
    sd = [(v.high - v.low) / (2 * Z95) for v in values]
    best = None
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            joint = math.hypot(sd[i], sd[j])
            z = abs(values[i].value - values[j].value) / joint if joint > 0 else math.inf
            if best is None or z > best["z"]:
                best = {"z": z, "joint_sd": joint, "pair": [fitted[i].estimator, fitted[j].estimator]}
    return {"spread": spread, **best}


def _residuals_by_epochs(fit: LawFit) -> dict:
    points = fit.points
    residual = np.log(points["error"].to_numpy()) - np.log(points["predicted"].to_numpy())
    by_t = pd.Series(residual).groupby(points["epochs"].to_numpy()).mean()
    scale = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    spread = float(by_t.max() - by_t.min())
    return {"form": fit.name, "mean_log_residual": {int(t): float(v) for t, v in by_t.items()},
            "range": spread, "robust_std": scale, "ratio": spread / scale if scale > 0 else None}


def verdict_of(standard: dict) -> tuple[bool | None, str]:
    """Agree when every exponent's standardised spread is at most AGREE_Z and the comparison could have
    told (joint sd at most INFORMATIVE_SD); else disagree, or undecided when too uncertain to tell."""
    if any(s["z"] is None for s in standard.values()):
        return None, "no bootstrap intervals: the estimators cannot be compared by their uncertainty"
    worst = max(standard, key=lambda e: standard[e]["z"])
    w = standard[worst]
    text = (f"largest standardised spread {w['z']:.2f} ({worst}: {w['spread']:.3f} between {' and '.join(w['pair'])}, "
            f"joint sd {w['joint_sd']:.3f}); agree when <= {AGREE_Z:g}")
    if w["z"] > AGREE_Z:
        return False, "disagree: " + text
    loose = [e for e, s in standard.items() if s["joint_sd"] > INFORMATIVE_SD]
    if loose:
        return None, (f"undecided: {text}, but the joint sd of {', '.join(loose)} exceeds {INFORMATIVE_SD:g}: "
                      "too uncertain to tell a difference apart")
    return True, "agree: " + text


def diagnose(frame: pd.DataFrame, epochs: int, allocations: list[Allocation | Skipped],
             parametric: LawFit | Skipped | None, chosen: LawFit | Skipped | None = None) -> dict:
    """Every agreement number and the flags past their thresholds (see the module's docstring)."""
    fitted = [a for a in allocations if isinstance(a, Allocation)]
    checks: dict = {"estimators": [a.estimator for a in fitted]}
    agree, verdict = None, "fewer than two estimators fitted: nothing to compare"
    if len(fitted) >= 2:
        overlap_a, spread_a = _overlap(fitted, "a")
        overlap_b, spread_b = _overlap(fitted, "b")
        checks["intervals_overlap"] = {"a": overlap_a, "b": overlap_b}
        checks["spread"] = {"a": spread_a, "b": spread_b}
        standard = {e: standardised_spread(fitted, e) for e in ("a", "b")}
        checks["standardised_spread"] = standard
        agree, verdict = verdict_of(standard)
    edges = edge_minima(frame, epochs)
    checks["isoflop_edge"] = edges
    checks["isoflop_levels"] = edges["used"]
    checks["isoflop_edge_share"] = edges["share"]
    if "budget" in frame.columns:  # an iso-FLOP sweep: the sizes each budget ran
        at_t = frame[(frame["epochs"] == epochs) & (frame["budget"] >= 0)]
        models = at_t.groupby("budget")["params"].nunique()
    else:
        models = isoflop_levels(frame, epochs)["models"]
    checks["sizes_per_level"] = ({"median": float(models.median()), "min": int(models.min())} if len(models) else None)
    checks["models"] = int(frame["params"].nunique())
    for key, fit in (("residual_by_epochs", parametric), ("residual_by_epochs_chosen", chosen)):
        if isinstance(fit, LawFit) and frame["epochs"].nunique() > 1 and (key == "residual_by_epochs" or fit is not parametric):
            checks[key] = _residuals_by_epochs(fit)
    env = envelope(frame[frame["epochs"] == epochs])
    checks["envelope_points"] = {"at_epochs": int(len(env)), "all": int(len(envelope(frame)))}
    causes = []
    if checks["isoflop_edge_share"] is not None and checks["isoflop_edge_share"] > EDGE_SHARE:
        causes.append(("isoflop_edge", f"{edges['edge']} of the {edges['used']} iso-FLOP {edges['counted_on']} "
                       f"({edges['share']:.0%}) have their minimum at the smallest or largest model there, and the "
                       "estimator dropped them: the optimum lies beyond the sizes trained"))
    if checks["sizes_per_level"] is not None and checks["sizes_per_level"]["median"] < MIN_SIZES:
        causes.append(("few_sizes", f"a median of {checks['sizes_per_level']['median']:g} models per compute budget or level "
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
    return {"agree": agree, "verdict": verdict, "checks": checks, "flags": [name for name, _ in causes],
            "causes": [text for _, text in causes],
            "thresholds": {"standardised_spread": AGREE_Z, "joint_sd": INFORMATIVE_SD, "isoflop_edge_share": EDGE_SHARE, "sizes_per_level_median": MIN_SIZES,
                           "residual_range": RESIDUAL_RANGE, "residual_ratio": RESIDUAL_RATIO,
                           "envelope_points_at_epochs": MIN_ENVELOPE}}
