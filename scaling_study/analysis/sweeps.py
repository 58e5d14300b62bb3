"""The shape of a sweep: whether its points cluster into compute budgets (an iso-FLOP sweep, several
model sizes trained at each of a few budgets) or form a grid (models x N x T, the paper's), and the
merging of model sizes that are nearly equal (digitised or rounded parameter counts).

The estimators follow the shape: on an iso-FLOP sweep the iso-FLOP minima are those of each
budget's curve and the envelope takes the best point per budget; on a grid they interpolate
between budgets (see `allocation`). `analyse` decides once and says why in fit.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..budget import PFLOP

BUDGET_TOLERANCE = 0.1  # points whose log compute differ by at most this (about 10%) share a budget
MERGE_TOLERANCE = 0.01  # model sizes within 1% of each other are one model
MIN_SIZES = 3  # a budget's curve over log P needs 3 sizes for a parabola
GRID_COVERAGE = 0.5  # (P, N) pairs covering this share of the models x N product make a grid
BUDGET_SHARE = 2 / 3  # the share of points that must lie in budgets of >= MIN_SIZES sizes


@dataclass(frozen=True, eq=False)
class SweepShape:
    """How a frame's points are arranged, and which estimator mode follows."""

    mode: str  # "budgets" (iso-FLOP sweep) or "levels" (grid: interpolate between compute levels)
    reason: str
    tolerance: float
    labels: np.ndarray  # per row: its budget (0, 1, ... by compute), -1 when not in a budget
    budgets: pd.DataFrame  # budget, pflops (geometric mean), points, sizes, spread (max - min log C)


def cluster_compute(compute: np.ndarray, tolerance: float = BUDGET_TOLERANCE) -> np.ndarray:
    """Budget labels: sorted log compute split wherever consecutive values differ by more than `tolerance`."""
    logc = np.log(np.asarray(compute, float))
    if logc.size == 0:
        return np.zeros(0, int)
    order = np.argsort(logc, kind="stable")
    starts = np.concatenate([[True], np.diff(logc[order]) > tolerance])
    labels = np.empty(logc.size, int)
    labels[order] = np.cumsum(starts) - 1
    return labels


def grid_coverage(frame: pd.DataFrame) -> tuple[float, int, int]:
    """(share of the models x N product that was run, models, distinct N)."""
    sizes, examples = frame["params"].nunique(), frame["examples"].nunique()
    pairs = len(frame.drop_duplicates(["params", "examples"]))
    return (pairs / (sizes * examples) if sizes and examples else 0.0), sizes, examples


def sweep_shape(frame: pd.DataFrame, tolerance: float = BUDGET_TOLERANCE) -> SweepShape:
    """Budgets when the points (not a grid) cluster in compute into >= 2 budgets of >= 3 sizes holding
    most points; else levels, with the reason."""
    if tolerance <= 0:
        raise ValueError(f"budget tolerance must be positive, not {tolerance}")
    labels = cluster_compute(frame["compute"].to_numpy(float), tolerance)
    logc = np.log(frame["compute"].to_numpy(float))
    rows = []
    for budget in range(labels.max() + 1 if labels.size else 0):
        mine = labels == budget
        rows.append({"budget": budget, "pflops": float(np.exp(logc[mine].mean()) / PFLOP), "points": int(mine.sum()),
                     "sizes": int(frame["params"][mine].nunique()), "spread": float(np.ptp(logc[mine]))})
    table = pd.DataFrame(rows, columns=["budget", "pflops", "points", "sizes", "spread"])
    full = table[(table["sizes"] >= MIN_SIZES) & (table["spread"] <= 2 * tolerance)]
    share = full["points"].sum() / max(len(frame), 1)
    coverage, sizes, examples = grid_coverage(frame)
    if examples >= 3 and sizes >= 2 and coverage >= GRID_COVERAGE:
        reason = (f"grid-shaped: {sizes} model sizes x {examples} values of N, {coverage:.0%} of the pairs run; "
                  "each model's error is interpolated between compute levels")
        return SweepShape("levels", reason, tolerance, np.full(len(frame), -1), table)
    if len(full) >= 2 and share >= BUDGET_SHARE:
        kept = table["budget"].isin(full["budget"]).to_numpy()
        labels = np.where(kept[labels], labels, -1)
        renumber = {old: new for new, old in enumerate(full["budget"])}
        labels = np.array([renumber.get(v, -1) for v in labels], int)
        budgets = full.assign(budget=range(len(full))).reset_index(drop=True)
        reason = (f"{share:.0%} of the points fall into {len(full)} compute budgets (log C within {tolerance:g}) "
                  f"of {budgets['sizes'].min()}-{budgets['sizes'].max()} model sizes each; the grid of models x N "
                  f"is {coverage:.0%} covered")
        return SweepShape("budgets", reason, tolerance, labels, budgets)
    reason = (f"not a grid ({coverage:.0%} of models x N run) and only {share:.0%} of the points lie in "
              f"{len(full)} compute budget(s) of >= {MIN_SIZES} sizes (log C within {tolerance:g}); "
              "interpolating between compute levels")
    return SweepShape("levels", reason, tolerance, np.full(len(frame), -1), table)


def merge_sizes(frame: pd.DataFrame, tolerance: float = MERGE_TOLERANCE) -> tuple[pd.DataFrame, list[dict]]:
    """Merge models of one kind whose parameter counts differ by less than `tolerance` (relative to the
    group's smallest) into the group's most-evaluated model: its name, params and FLOP(f).

    Two models that both ran the same (N, T, seed) are different models of near-equal size, not one
    model counted twice: they stay apart (`kept_apart` in the group). Compute stays as recorded.
    Returns the frame (with `model_as_recorded` when anything merged) and the groups, each naming
    the model kept, those merged into it and those kept apart.
    """
    if tolerance < 0:
        raise ValueError(f"merge tolerance must be >= 0, not {tolerance}")
    if frame.empty or tolerance == 0:
        return frame, []
    models = (frame.groupby(["kind", "model"], as_index=False)
              .agg(params=("params", "first"), flops=("flops_per_example", "first"), points=("error", "size"))
              .sort_values(["kind", "params", "model"]))
    runs = {key: set(zip(part["examples"], part["epochs"], part["seed"]))
            for key, part in frame.groupby(["kind", "model"])}
    renames: dict[tuple[str, str], pd.Series] = {}
    groups = []
    for kind, of_kind in models.groupby("kind", sort=False):
        start = None
        members: list[pd.Series] = []
        apart: list[pd.Series] = []
        taken: set = set()
        for _, row in list(of_kind.iterrows()) + [(None, None)]:
            if row is not None and start is not None and row["params"] < start * (1 + tolerance):
                if runs[(kind, row["model"])] & taken:
                    apart.append(row)  # ran what a member ran: another model, not another count of it
                else:
                    members.append(row)
                    taken |= runs[(kind, row["model"])]
                continue
            if len(members) > 1 or apart:
                keep = max(members, key=lambda m: (m["points"], -m["params"]))
                for m in members:
                    renames[(kind, m["model"])] = keep
                groups.append({"kind": kind, "model": keep["model"], "params": int(keep["params"]),
                               "merged": [{"model": m["model"], "params": int(m["params"])}
                                          for m in members if m["model"] != keep["model"]],
                               "kept_apart": [{"model": m["model"], "params": int(m["params"])} for m in apart]})
            if row is not None:
                start, members, apart = row["params"], [row], []
                taken = set(runs[(kind, row["model"])])
    if not any(group["merged"] for group in groups):
        return frame, groups
    keys = list(zip(frame["kind"], frame["model"]))
    kept = [renames.get(k) for k in keys]
    merged = frame.assign(
        model_as_recorded=frame["model"],
        model=[k[1] if m is None else m["model"] for k, m in zip(keys, kept)],
        params=[p if m is None else m["params"] for p, m in zip(frame["params"], kept)],
        flops_per_example=[f if m is None else m["flops"] for f, m in zip(frame["flops_per_example"], kept)],
    )
    merged["params"] = merged["params"].astype(frame["params"].dtype)
    merged["flops_per_example"] = merged["flops_per_example"].astype(frame["flops_per_example"].dtype)
    return merged, groups


def describe(shape: SweepShape, merged: list[dict], merge_tolerance: float) -> dict:
    """fit.json's `sweep`: the mode and why, the budgets, and the model sizes merged."""
    return {
        "mode": shape.mode, "reason": shape.reason, "budget_tolerance_log_compute": shape.tolerance,
        "budgets": shape.budgets.to_dict(orient="records") if shape.mode == "budgets" else [],
        "merged_sizes": {"tolerance": merge_tolerance, "groups": merged},
    }

