"""Adaptive studies: spend compute only where the scaling law needs it.

Two things, both opt-in per grid (`[adaptive]`, or `study run --adaptive`):

- a coarse-to-fine claim order (`claim_order`): every other model and subset first, cheapest first
  within a pass, so that a first fit exists after a small share of the compute;
- pruning against the law (`decide`, pure; `prune_now` applies it): after each evaluation epoch
  the parametric law E(P, D) is refitted (seeded, few resamples) and every pending or running
  trajectory's error is predicted at each of its remaining evaluation epochs with a bootstrap
  interval (`predict_trajectory`). One whose every remaining point has its lower bound above the
  envelope at that compute cannot be compute-optimal: it is pruned, with the evidence as data.

The runs that span the fits (`spanning_jobs`) are never pruned unless `protect_spanning = false`,
nothing is pruned before `min_points` points, and a job is pruned at most once (`study retry`
overrides the law for good).
"""

from __future__ import annotations

import json
import math
from collections import namedtuple
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import budget, db
from .analysis import PARAMETRIC_LAW, LawFit, choose_form, fit_data_constrained, fit_parametric, flops_scaling, select
from .analysis.data_constrained import repeat_factor
from .errors import StudyError
from .formatting import interval
from .grid import AdaptiveConfig

PREDICTION_FORM = ("the parametric form study fit chooses by its held-out score (E(P, D), or E(P, D') with repeated "
                   "epochs discounted), anchored at the trajectory's latest point")

Evidence = namedtuple("Evidence", "epoch compute predicted low high envelope")


@dataclass(frozen=True)
class Decision:
    """What the law says of one pending or running trajectory, and why."""

    job_id: int
    model: str
    examples: int
    state: str  # pending or running, as the decision saw it
    epochs_done: int
    confidence: float
    evidence: tuple[Evidence, ...]  # one per remaining evaluation epoch
    fit: dict
    prune: bool
    reason: str

    @property
    def closest(self) -> Evidence:
        """The remaining point whose lower bound comes closest to (or under) the envelope."""
        return min(self.evidence, key=lambda e: e.low / e.envelope if math.isfinite(e.envelope) else math.inf)


def job_facts(row: dict) -> dict:
    """A job row's evaluation epochs, examples per epoch and Eq. 4 per epoch (from its stored spec)."""
    spec = json.loads(row["spec"] or "{}")
    epochs = tuple(int(t) for t in spec.get("epochs") or (row["epochs"],))
    per_epoch = budget.job_examples_per_epoch(row)
    return {"epochs": epochs, "examples_per_epoch": per_epoch,
            "compute": lambda t: budget.compute(row["flops_per_example"], per_epoch, t)}


def remaining_points(rows: list[dict]):
    """(row, epoch, Eq. 4 there) for every evaluation epoch still ahead of a pending or running trajectory."""
    for row in rows:
        if row["state"] in ("pending", "running"):
            facts = job_facts(row)
            yield from ((row, t, facts["compute"](t)) for t in facts["epochs"] if t > row["epochs_done"])


def planned_compute(row: dict) -> float:
    """Eq. 4 of the whole trajectory, as planned."""
    return budget.job_compute(row, row["epochs"])


def spent_compute(row: dict) -> float:
    """Eq. 4 of the epochs actually trained."""
    return budget.job_compute(row, row["epochs_done"])


def claim_order(rows: list[dict]) -> dict[int, int]:
    """{job id: rank} for one study, coarse to fine: pass 0 is every other model and every other subset
    (by size; the largest of each always in), pass 1 the rest; cheapest (planned Eq. 4) first in a pass."""
    models = sorted({r["params"] for r in rows})
    sizes = sorted({r["examples"] for r in rows})

    def coarse(value, values) -> bool:  # noqa: ANN001
        i = values.index(value)
        return i % 2 == 0 or i == len(values) - 1

    keyed = sorted(rows, key=lambda r: (0 if coarse(r["params"], models) and coarse(r["examples"], sizes) else 1,
                                        planned_compute(r), r["id"]))
    return {r["id"]: rank for rank, r in enumerate(keyed)}


def spanning_jobs(rows: list[dict]) -> set[int]:
    """The runs the fits hang on: the smallest and the largest model at the largest N (Fig. 6 left's
    ends), and the largest model at every N (Fig. 6 right)."""
    if not rows:
        return set()
    largest_n = max(r["examples"] for r in rows)
    at_largest_n = [r["params"] for r in rows if r["examples"] == largest_n]
    largest_p = max(r["params"] for r in rows)
    return {r["id"] for r in rows
            if (r["examples"] == largest_n and r["params"] in (min(at_largest_n), max(at_largest_n)))
            or r["params"] == largest_p}


def fit_law(points: pd.DataFrame, resamples: int, seed: int) -> LawFit | None:
    """The parametric form `study fit` would choose, refitted on `points` (seeded): E(P, D), or the
    data-constrained E(P, D') when it wins the held-out score (analysis.forms); None when neither fits."""
    _, gamma = flops_scaling(points)
    fit = fit_parametric(points, resamples, np.random.default_rng(seed), gamma)
    if not isinstance(fit, LawFit):
        return None
    constrained = fit_data_constrained(points, 0, np.random.default_rng(seed), gamma, start=fit)
    form = choose_form(points, fit, constrained)
    if form is not None and form.chosen == "data_constrained":
        chosen = fit_data_constrained(points, resamples, np.random.default_rng([seed, 5]), gamma, start=fit)
        fit = chosen if isinstance(chosen, LawFit) else fit
    return fit if fit.samples is not None and len(fit.draws()["alpha"]) >= 2 else None


def predict_trajectory(points: pd.DataFrame, targets: pd.DataFrame, fit: LawFit, confidence: float) -> pd.DataFrame:
    """Predicted error at each target row (job_id, params, examples, epochs) with a bootstrap interval:
    `trajectory_draws`' point prediction, and its draws' (1 - confidence) and confidence quantiles."""
    point, boot = trajectory_draws(points, targets, fit)
    low, high = np.quantile(boot, [1 - confidence, confidence], axis=0)
    return targets.assign(predicted=point[0], low=low, high=high)


def trajectory_draws(points: pd.DataFrame, targets: pd.DataFrame, fit: LawFit) -> tuple[np.ndarray, np.ndarray]:
    """Predicted error at each target row (job_id, params, examples, epochs): (the fit's, shape (1, n);
    one per bootstrap refit, shape (resamples, n)).

    The one place that says how a trajectory's future is predicted: the fitted form's E(P, N, T)
    (D = N T, or D' = N g(T) for the data-constrained form), times the ratio of the trajectory's
    latest recorded error to the law's value there (pending trajectories have none: the law alone)."""
    s = fit.draws()
    names = ("E_inf", "A", "alpha", "B", "beta") + (("R_star",) if fit.name == "data_constrained" else ())
    point = np.array([[fit.value(k)] for k in names])
    boot = np.array([s[k] for k in names])

    def law(theta: np.ndarray, p: np.ndarray, n: np.ndarray, t: np.ndarray) -> np.ndarray:
        e_inf, a, alpha, b, beta = (v[:, None] for v in theta[:5])
        repeats = repeat_factor(t[None], theta[5][:, None]) if len(theta) > 5 else t[None]
        return e_inf + a / p[None] ** alpha + b / (n[None] * repeats) ** beta

    p = targets["params"].to_numpy(float)
    n = targets["examples"].to_numpy(float)
    t = targets["epochs"].to_numpy(float)
    latest = points.sort_values("epochs").groupby("job_id").last()
    anchor = targets["job_id"].map(latest["epochs"]) if len(latest) else pd.Series(np.nan, index=targets.index)
    anchored = anchor.notna().to_numpy()
    t_last = np.where(anchored, anchor.fillna(1).to_numpy(float), t)
    e_last = targets["job_id"].map(latest["error"]).to_numpy(float) if len(latest) else np.full(len(targets), np.nan)
    predictions = []
    for theta in (point, boot):
        value = law(theta, p, n, t)
        ratio = np.where(anchored[None], np.nan_to_num(e_last)[None] / law(theta, p, n, t_last), 1.0)
        predictions.append(value * ratio)
    return predictions[0], predictions[1]


def envelope_at(points: pd.DataFrame, compute: np.ndarray) -> np.ndarray:
    """The envelope's error at each compute: the lowest error recorded at that compute or less (inf below all)."""
    ordered = points.sort_values("compute")
    best = np.minimum.accumulate(ordered["error"].to_numpy())
    where = np.searchsorted(ordered["compute"].to_numpy(), np.asarray(compute, float), side="right")
    return np.where(where > 0, best[np.maximum(where - 1, 0)], np.inf)


def decide(frame: pd.DataFrame, rows: list[dict], config: AdaptiveConfig, exempt: set[int] = frozenset(),
           metric: str | None = None) -> tuple[list[Decision], str]:
    """Pure: what the law says of every pending or running trajectory of one study, given the recorded
    points (`db.evaluations_frame`) and the job rows (`db.job_rows`). Returns (decisions, note), the
    note saying why nothing could be decided when that is so; `Decision.prune` marks the ones to prune."""
    if frame.empty:
        return [], "no evaluation points yet"
    targets = [{"job_id": row["id"], "params": row["params"], "examples": row["examples"], "epochs": t, "compute": c}
               for row, t, c in remaining_points(rows)]  # first: with nothing left to decide, no law is fitted
    if not targets:
        return [], "no pending or running trajectory has an evaluation epoch left"
    points, _ = select(frame, metric)
    if len(points) < config.min_points:
        return [], f"{len(points)} of the {config.min_points} points ([adaptive] min_points) before anything is pruned"
    fit = fit_law(points, config.resamples, config.seed)
    if fit is None:
        return [], f"{PARAMETRIC_LAW} cannot be fitted yet (needs 2 model sizes, 2 values of N*T and converged resamples)"
    protected = spanning_jobs(rows) if config.protect_spanning else set()
    metric_name = str(points["metric"].iloc[0])
    summary = {"law": fit.formula, "form": PREDICTION_FORM, "metric": metric_name, "points": len(points),
               "resamples": fit.resamples, "seed": config.seed, "status": fit.status,
               "params": {k: v.value for k, v in fit.params.items()}}
    table = predict_trajectory(points, pd.DataFrame(targets), fit, config.confidence)
    table["envelope"] = envelope_at(points, table["compute"].to_numpy())
    decisions = []
    for row in rows:
        mine = table[table["job_id"] == row["id"]]
        if mine.empty:
            continue
        evidence = tuple(Evidence(int(r.epochs), float(r.compute), float(r.predicted), float(r.low), float(r.high),
                                  float(r.envelope)) for r in mine.itertuples())
        above = all(e.low > e.envelope for e in evidence)
        closest = min(evidence, key=lambda e: e.low / e.envelope if math.isfinite(e.envelope) else math.inf)
        if row["id"] in protected:
            prune, why = False, "kept: it spans the fits (smallest/largest model at the largest N, or the largest model)"
        elif row["id"] in exempt:
            prune, why = False, "kept: pruned before and retried by hand"
        elif above:
            prune = True
            why = (f"pruned: at each of its {len(evidence)} remaining evaluation epochs the {config.confidence:.0%} lower "
                   f"bound lies above the envelope; closest at T = {closest.epoch}: predicted "
                   f"{interval(closest.predicted, closest.low, closest.high, '.4f')} vs envelope {closest.envelope:.4f}")
        else:
            prune = False
            why = (f"kept: at T = {closest.epoch} its lower bound {closest.low:.4f} is not above the envelope "
                   f"{closest.envelope:.4f}" if math.isfinite(closest.envelope) else
                   f"kept: no recorded point at or below its compute at T = {closest.epoch}")
        decisions.append(Decision(row["id"], row["model"], row["examples"], row["state"], row["epochs_done"],
                                  config.confidence, evidence, summary, prune, why))
    return decisions, ""


def settings(engine, study: str, override: bool | None = None) -> AdaptiveConfig | None:  # noqa: ANN001
    """The study's [adaptive] settings when it is adaptive (its grid says so, or `override` is True); else None."""
    from dataclasses import replace

    from .grid import adaptive_settings

    config = adaptive_settings(db.study_grid_text(engine, study), f"study {study!r}'s grid")
    if override is False or (override is None and not config.enabled):
        return None
    return replace(config, enabled=True)


def prune_now(engine, study: str, config: AdaptiveConfig, decided_by: str, dry_run: bool = False,  # noqa: ANN001
              metric: str | None = None) -> tuple[list[Decision], list[int], str]:
    """Decide for one study on what is recorded now and (unless dry_run) apply it in one transaction:
    (decisions, job ids pruned, note)."""
    frame = db.evaluations_frame(engine, study)
    rows = db.job_rows(engine, study)
    exempt = {r["job_id"] for r in db.pruning_rows(engine, study)}
    try:
        decisions, note = decide(frame, rows, config, exempt, metric)
    except StudyError as error:  # e.g. no metric to fit yet
        return [], [], str(error)
    chosen = [d for d in decisions if d.prune]
    pruned = [] if dry_run or not chosen else db.prune_jobs(engine, chosen, decided_by)
    return decisions, pruned, note


@dataclass(frozen=True)
class Progress:
    """Where an adaptive study stands: compute spent and planned, what pruning saved, the law so far."""

    spent: float
    planned: float
    saved: float  # planned minus spent, over the pruned trajectories
    pruned: int
    points: int
    alpha: object  # analysis.Estimate, or None when the law cannot be fitted yet
    envelope_points: int
    note: str


def progress(engine, study: str, resamples: int = 200, seed: int = 0) -> Progress:  # noqa: ANN001
    """The law so far (E(C) on the envelope, seeded bootstrap) and the compute spent against the plan."""
    from .analysis import envelope, fit_compute_law

    rows = db.job_rows(engine, study)
    totals = budget.study_compute(rows)
    pruned = [r for r in rows if r["state"] == "pruned"]
    frame = db.evaluations_frame(engine, study)
    alpha, points, on_envelope, note = None, 0, 0, ""
    try:
        chosen, _ = select(frame)
        points, on_envelope = len(chosen), len(envelope(chosen))
        law = fit_compute_law(chosen, resamples, np.random.default_rng(seed))
        alpha = law.params["alpha"]
    except StudyError as error:
        note = str(error)
    return Progress(totals.spent, totals.planned, totals.saved, len(pruned), points, alpha, on_envelope, note)


def pruned_summary(engine, study: str) -> list[dict]:  # noqa: ANN001
    """The study's pruned trajectories (still pruned now), with the evidence and the compute they saved."""
    out = []
    for p in db.pruning_rows(engine, study):
        if p["job_state"] != "pruned":
            continue
        row = {"id": p["job_id"], "spec": p["spec"], "epochs": p["total_epochs"], "epochs_done": p["job_epochs_done"],
               "flops_per_example": p["flops_per_example"], "examples": p["examples"]}
        out.append({"job_id": p["job_id"], "model": p["model"], "examples": p["examples"],
                    "epochs_done": p["job_epochs_done"], "epochs": p["total_epochs"],
                    "planned_pflops": planned_compute(row) / budget.PFLOP, "spent_pflops": spent_compute(row) / budget.PFLOP,
                    "saved_pflops": (planned_compute(row) - spent_compute(row)) / budget.PFLOP,
                    "decided_at": p["decided_at"].isoformat(timespec="seconds"), "decided_by": p["decided_by"],
                    "previous_state": p["previous_state"], "confidence": p["confidence"], "epoch": p["epoch"],
                    "predicted": p["predicted"], "low": p["low"], "high": p["high"], "envelope": p["envelope"],
                    "fit": json.loads(p["fit"])})
    return out


def pruned_or_none(engine, study: str) -> list[dict] | None:  # noqa: ANN001
    """An adaptive study's pruned trajectories (pruned_summary), for the report; None for a plain study,
    whose report has no such section."""
    try:
        config = settings(engine, study)
    except StudyError:  # a recorded grid that no longer parses: plain, unless something was pruned
        config = None
    rows = pruned_summary(engine, study)
    return rows if config is not None or rows or db.pruning_rows(engine, study) else None
