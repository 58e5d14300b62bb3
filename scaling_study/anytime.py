"""Anytime studies: spend each rung where the headline quantities are still uncertain.

Every trajectory advances rung by rung (one evaluation epoch at a time) and waits, paused, until it
is chosen again. After each rung the parametric law is refitted on the measured points (seeded, a
few bootstrap refits), and each possible next action (start a pending trajectory to its first rung,
or extend a paused one by a rung) is scored by the expected shrink of the headline quantities'
variance per unit of its Eq. 4 cost (`score_actions`); the best one runs.

The score is an ensemble (Kalman) update. Each bootstrap refit k of the law predicts every point
not yet measured; the grid completed with those predictions gives one draw H_k of the headlines
(E(C) alpha, alpha_P, alpha_N, the allocation exponents a and b by each estimator, E(P, D)'s alpha
and beta). Measuring an action's point y (log error, predicted y_k by draw k, noise s^2 from the
law's residuals) would shrink headline j's variance by Cov(H_j, y)^2 / (Var(y) + s^2): the linear-
Gaussian update, with every covariance read off the draws. The score sums that shrink relative to
Var(H_j) over the headlines and divides by the action's cost. Predictions only steer: the headlines
reported are fitted on measured points alone (`headline`).

`study run` follows it for a grid with `[adaptive] policy = "uncertainty"` (`choose`: the next rung,
recorded with the claim as a decision); `benchmarks/adaptive.py replay` runs it on a finished study's
points. A study stops when one of its rules is met (`StopRules`): a compute budget, or 95% half-widths
of named headlines.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import budget, db
from .adaptive import claim_order, fit_law, job_facts, remaining_points, trajectory_draws
from .analysis import (
    LawFit,
    allocation_envelope,
    allocation_isoflop,
    allocation_parametric,
    at_fixed_epochs,
    average_seeds,
    choose_form,
    fit_bottleneck_examples,
    fit_bottleneck_params,
    fit_compute_law,
    fit_data_constrained,
    fit_parametric,
    flops_scaling,
    merge_sizes,
    select,
    sweep_shape,
)
from .errors import BadInput, StudyError
from .grid import AdaptiveConfig, parse_targets

SHOWN_ACTIONS = 10  # the best-scored actions a decision keeps (and `study status` shows)


@dataclass(frozen=True)
class Action:
    """One possible next step: run trajectory `job_id` from `epochs_done` to its next rung `epoch`."""

    job_id: int
    epoch: int
    cost: float  # Eq. 4 of the rung (FLOPs)
    score: float  # expected relative variance shrink of the headlines per PFLOP (nan during warm-up)


def prepare(points: pd.DataFrame) -> tuple[pd.DataFrame, object, int]:
    """`study fit`'s preprocessing of a selection: sizes merged, budgets labelled, seeds averaged;
    (frame, sweep shape, the epochs the allocations read)."""
    frame, _ = merge_sizes(points)
    shape = sweep_shape(frame)
    if shape.mode == "budgets":
        frame = frame.assign(budget=shape.labels)
    frame, _ = average_seeds(frame)
    return frame, shape, int(frame["epochs"].min())


def headline(points: pd.DataFrame, bootstrap: int = 0, seed: int = 0, with_parametric: bool = True) -> dict:
    """The headline numbers `study fit` reports, fitted on `points` (a `select` output): {name: (value,
    low, high)}, the interval None without a bootstrap. Quantities that cannot be fitted are absent.
    `with_parametric = False` leaves out E(P, D) and its allocation (the slowest fit)."""
    frame, shape, epochs = prepare(points)
    rng = np.random.default_rng(seed)
    out: dict[str, tuple] = {}

    def put(name: str, e) -> None:
        if e.value is not None and np.isfinite(e.value):
            out[name] = (float(e.value), e.low, e.high)

    def fitted(law) -> bool:
        return isinstance(law, LawFit) and not law.status.startswith("failed")

    compute = _quiet(lambda: fit_compute_law(frame, bootstrap, rng))
    if fitted(compute):
        put("E(C) alpha", compute.params["alpha"])
    for name, fit in (("alpha_P", fit_bottleneck_params), ("alpha_N", fit_bottleneck_examples)):
        law = _quiet(lambda fit=fit: fit(frame, bootstrap, rng))
        if fitted(law):
            put(name, law.params["alpha"])
    kappa, gamma = flops_scaling(frame)
    parametric = _quiet(lambda: fit_parametric(frame, bootstrap, rng, gamma)) if with_parametric else None
    if fitted(parametric):
        for name in ("alpha", "beta"):
            put(f"E(P,D) {name}", parametric.params[name])
    for estimator, allocate in (("envelope", lambda: allocation_envelope(frame, epochs, bootstrap, rng)),
                                ("isoflop", lambda: allocation_isoflop(frame, epochs, bootstrap, rng, shape))):
        allocation = _quiet(allocate)
        if allocation is not None and hasattr(allocation, "a"):
            put(f"a ({estimator})", allocation.a)
            put(f"b ({estimator})", allocation.b)
    if fitted(parametric):  # the allocation of the form study fit chooses, as analysis.analyse does
        chosen = parametric
        constrained = _quiet(lambda: fit_data_constrained(frame, 0, rng, gamma, start=parametric))
        form = _quiet(lambda: choose_form(frame, parametric, constrained)) if constrained is not None else None
        if form is not None and form.chosen == "data_constrained":
            chosen = constrained
            if bootstrap:
                chosen = fit_data_constrained(frame, bootstrap, np.random.default_rng([seed, 5]), gamma, start=parametric)
            chosen = at_fixed_epochs(chosen, epochs)
        allocation = allocation_parametric(chosen, epochs, kappa, gamma)
        put("a (parametric)", allocation.a)
        put("b (parametric)", allocation.b)
    return out


def _quiet(fit):
    """A fit, or None when too few points make it raise (an anytime study starts with almost none)."""
    try:
        return fit()
    except (ValueError, np.linalg.LinAlgError, KeyError, IndexError, StudyError):
        return None


def score_actions(measured: pd.DataFrame, unmeasured: pd.DataFrame, actions: list[tuple[int, int, float]],
                  resamples: int = 16, seed: int = 0) -> tuple[list[Action], dict]:
    """Score each action (job_id, epoch, cost) on the measured points (a `select` output) and the rows
    of the points not measured yet (same columns; their `error` is ignored). Returns (actions, best
    first; the fit used), or ([], {"note": why}) when the law cannot be fitted yet."""
    fit = fit_law(measured, resamples, seed)
    if fit is None:
        return [], {"note": "the parametric law cannot be fitted yet"}
    _, draws = trajectory_draws(measured, unmeasured, fit)
    residual = np.log(measured["error"].to_numpy(float)) - np.log(
        trajectory_draws(measured.iloc[:0], measured, fit)[0][0])
    noise = float(np.var(residual)) if len(residual) > 1 else 0.0
    keys: list[str] = []
    rows: list[dict] = []
    for k, theta in enumerate(draws):
        completed = pd.concat([measured, unmeasured.assign(error=theta)], ignore_index=True)
        values = headline(completed, 0, seed, with_parametric=False)
        s = fit.draws()
        values.update({"E(P,D) alpha": (s["alpha"][k],), "E(P,D) beta": (s["beta"][k],),
                       "a (parametric)": (s["a"][k],), "b (parametric)": (s["b"][k],)})
        rows.append({name: v[0] for name, v in values.items()})
        keys += [name for name in values if name not in keys]
    table = pd.DataFrame(rows, columns=keys).to_numpy(float)
    logs = np.log(np.clip(draws, 1e-12, None))
    where = {(int(j), int(t)): i for i, (j, t) in enumerate(zip(unmeasured["job_id"], unmeasured["epochs"]))}
    scored = []
    for job_id, epoch, cost in actions:
        y = logs[:, where[(job_id, epoch)]]
        shrink = 0.0
        for h in table.T:
            ok = np.isfinite(h)
            if ok.sum() < 4 or np.var(h[ok]) <= 0:
                continue
            covariance = np.cov(h[ok], y[ok])
            shrink += covariance[0, 1] ** 2 / ((covariance[1, 1] + noise) * covariance[0, 0])
        scored.append(Action(job_id, epoch, cost, shrink / (cost / 1e15)))
    scored.sort(key=lambda a: (-a.score, a.cost, a.job_id))
    spread = {name: float(np.nanstd(table[:, i])) for i, name in enumerate(keys)}
    return scored, {"law": fit.formula, "points": len(measured), "resamples": len(draws), "seed": seed,
                    "noise": noise, "params": {k: v.value for k, v in fit.params.items()}, "spread": spread}


# ---- the policy in `study run` ----

@dataclass(frozen=True)
class StopRules:
    """When an anytime study is done: its compute (a share of the grid's, or PFLOPs) would pass a budget,
    or every named headline's 95% interval is at most its half-width."""

    share: float | None = None
    pflops: float | None = None
    targets: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, config: AdaptiveConfig, budget_option: str | None = None, target_option: str | None = None) -> StopRules:
        """The grid's rules, each replaced by the `study run` option that names it (--budget, --target)."""
        share, pflops = config.budget, config.budget_pflops
        if budget_option:
            share, pflops = parse_budget(budget_option)
        targets = (parse_targets(target_option, "--target") if target_option
                   else parse_targets(config.targets, "[adaptive].targets"))
        return cls(share, pflops, targets)

    def limit(self, planned: float) -> float:
        """The compute (FLOPs) the study may spend: the tighter budget; inf without one."""
        limits = [math.inf]
        if self.share is not None:
            limits.append(self.share * planned)
        if self.pflops is not None:
            limits.append(self.pflops * budget.PFLOP)
        return min(limits)


def parse_budget(text: str) -> tuple[float | None, float | None]:
    """--budget: a share of the grid's compute ("0.5", "50%") or PFLOPs ("2.5PF"): (share, pflops)."""
    raw = text.strip()
    try:
        if raw.upper().endswith("PF"):
            value = float(raw[:-2])
            if 0 < value < math.inf:
                return None, value
        else:
            value = float(raw.removesuffix("%")) / (100 if raw.endswith("%") else 1)
            if 0 < value <= 1:
                return value, None
    except ValueError:
        pass
    raise BadInput(f"--budget {text!r}: a share of the grid's compute in (0, 1] (0.5 or 50%), or PFLOPs (2.5PF)")


@dataclass
class Choice:
    """What an anytime study runs next: the claim order of its eligible rungs and the decision to record
    with the claim; or `stop`, why the study is done (then nothing of it is claimed)."""

    order: dict[int, int] = field(default_factory=dict)  # job id -> rank, best first
    skip: set[int] = field(default_factory=set)  # its jobs not to claim now: all but the ordered ones
    expected: dict[int, int] = field(default_factory=dict)  # job id -> the epochs done the decision saw
    decision: dict = field(default_factory=dict)  # db.claim_job's `decisions_by_job`: {job id: the row to record}
    stop: str = ""


def next_rung(row: dict) -> tuple[int, float] | None:
    """A trajectory's next evaluation epoch after the epochs it has done, and that rung's Eq. 4 cost."""
    facts = job_facts(row)
    later = [t for t in facts["epochs"] if t > row["epochs_done"]]
    if not later:
        return None
    return later[0], facts["compute"](later[0]) - facts["compute"](row["epochs_done"])


def unmeasured_points(rows: list[dict], measured: pd.DataFrame) -> pd.DataFrame:
    """Rows like `select`'s for every evaluation epoch not measured yet of the pending and running
    trajectories (their error unknown: NaN), to be predicted by each bootstrap draw of the law."""
    template = {c: measured[c].iloc[0] for c in ("study", "metric", "metric_kind")} if len(measured) else {}
    kinds = dict(zip(measured["job_id"], measured["kind"])) if len(measured) else {}
    out = [{**template, "job_id": row["id"], "model": row["model"], "kind": kinds.get(row["id"], "unknown"),
            "params": row["params"], "flops_per_example": row["flops_per_example"], "examples": row["examples"],
            "epochs": t, "seed": row["seed"], "error": np.nan, "compute": compute, "state": row["state"]}
           for row, t, compute in remaining_points(rows)]
    return pd.DataFrame(out, columns=list(measured.columns) if len(measured) else None)


def measured_points(engine, study: str) -> pd.DataFrame:  # noqa: ANN001
    """The study's points of the metric `study fit` reads (select's default); empty before the first."""
    frame = db.evaluations_frame(engine, study)
    if frame.empty:
        return frame
    try:
        return select(frame)[0]
    except StudyError:
        return frame.iloc[:0]


def interval_now(points: pd.DataFrame, config: AdaptiveConfig) -> dict:
    """Each headline on the measured points with its 95% bootstrap interval (seeded): {name: (value, low, high)}."""
    if len(points) < 3:
        return {}
    return headline(points, bootstrap=config.resamples, seed=config.seed)


def targets_met(now: dict, targets: dict[str, float]) -> str:
    """'' unless every named headline has an interval whose half-width is at most its target; then why."""
    said = []
    for name, wanted in targets.items():
        value = now.get(name)
        if value is None or value[1] is None or not np.isfinite(value[1]) or not np.isfinite(value[2]):
            return ""
        half = (value[2] - value[1]) / 2
        if half > wanted:
            return ""
        said.append(f"{name} +-{half:.3g} <= {wanted:g}")
    return "targets reached: " + ", ".join(said) if said else ""


def choose(engine, study: str, config: AdaptiveConfig, rules: StopRules) -> Choice:  # noqa: ANN001
    """The next rung of one anytime study, from what is recorded now: every pending trajectory's next
    rung that fits the budget, scored (`score_actions`) once the law can be fitted on `min_points`
    points, else in the warm-up order (trajectories not started first, coarse to fine, cheapest first)."""
    rows = db.job_rows(engine, study)
    totals = budget.study_compute(rows)
    in_flight = sum(rung[1] for r in rows if r["state"] == "running" and (rung := next_rung(r)))
    spent = totals.spent + in_flight
    choice = Choice()
    candidates = {r["id"]: (r, rung) for r in rows if r["state"] == "pending" and (rung := next_rung(r))}
    if not candidates:
        return choice
    points = measured_points(engine, study)
    if rules.targets:
        choice.stop = targets_met(interval_now(points, config), rules.targets)
        if choice.stop:
            choice.skip = {r["id"] for r in rows}
            return choice
    limit = rules.limit(totals.planned)
    eligible = [(job_id, rung[0], rung[1]) for job_id, (_, rung) in candidates.items() if spent + rung[1] <= limit * (1 + 1e-9)]
    if not eligible:
        choice.skip = {r["id"] for r in rows}
        choice.stop = (f"budget reached: {spent / totals.planned:.1%} of the grid's compute spent "
                       f"({spent / budget.PFLOP:.4g} PFLOPs), and no next rung fits in the "
                       f"{limit / budget.PFLOP:.4g} PFLOPs allowed")
        return choice
    scored, fit = [], {}
    if len(points) >= config.min_points:
        try:
            scored, fit = score_actions(points, unmeasured_points(rows, points), eligible, config.score_resamples, config.seed)
        except (ValueError, np.linalg.LinAlgError, KeyError, IndexError, StudyError) as error:
            scored, fit = [], {"note": f"no score ({type(error).__name__}: {error})"}
    else:
        fit = {"note": f"warm-up: {len(points)} of the {config.min_points} points ([adaptive] min_points) before scoring"}
    if scored:
        ranked, rule = scored, "uncertainty"
    else:
        coarse = claim_order([r for r, _ in candidates.values()])
        ranked = sorted((Action(j, t, c, math.nan) for j, t, c in eligible),
                        key=lambda a: (candidates[a.job_id][0]["epochs_done"] > 0, coarse[a.job_id], a.epoch))
        rule = "warm-up"
    choice.order = {a.job_id: rank for rank, a in enumerate(ranked)}
    choice.skip = {r["id"] for r in rows} - set(choice.order)  # what turns pending meanwhile waits for a new decision
    choice.expected = {a.job_id: candidates[a.job_id][0]["epochs_done"] for a in ranked}
    shown = [{"job_id": a.job_id, "epoch": a.epoch, "cost": a.cost, "score": _number(a.score)} for a in ranked[:SHOWN_ACTIONS]]
    common = {"rule": rule, "spent": spent, "actions": json.dumps(shown), "fit": json.dumps(fit, sort_keys=True, default=float)}
    choice.decision = {a.job_id: {**common, "epoch": a.epoch, "cost": a.cost, "score": _number(a.score), "rank": rank}
                       for rank, a in enumerate(ranked)}
    return choice


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


@dataclass(frozen=True)
class Standing:
    """Where an anytime study stands, for `study status`: each headline now (value, 95% low, high) with its
    target when a rule names it, the compute spent and allowed, paused trajectories, and the latest
    decision's best-scored next actions (as recorded then)."""

    headlines: dict
    targets: dict[str, float]
    spent: float
    planned: float
    limit: float
    paused: int
    points: int
    decisions: int
    next_actions: list[dict]
    rule: str  # the latest decision's rule: uncertainty or warm-up ('' before the first)


def standing(engine, study: str, config: AdaptiveConfig) -> Standing:  # noqa: ANN001
    """The study's standing under its grid's rules (`study run --budget/--target` may have used others)."""
    rows = db.job_rows(engine, study)
    totals = budget.study_compute(rows)
    rules = StopRules.of(config)
    points = measured_points(engine, study)
    recorded = db.decision_rows(engine, study)
    latest = recorded[-1] if recorded else None
    by_id = {r["id"]: r for r in rows}
    actions = []
    for action in json.loads(latest["actions"]) if latest else []:
        row = by_id.get(action["job_id"])
        actions.append({**action, "model": row["model"] if row else "?", "examples": row["examples"] if row else 0})
    paused = sum(1 for r in rows if r["state"] == "pending" and r["epochs_done"] > 0)
    return Standing(interval_now(points, config), rules.targets, totals.spent, totals.planned,
                    rules.limit(totals.planned), paused, len(points), len(recorded), actions, latest["rule"] if latest else "")
