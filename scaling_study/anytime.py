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

Replay-only for now: `benchmarks/adaptive.py replay` runs this policy on a finished study's points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .adaptive import fit_law, trajectory_draws
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
    sweep_shape,
)


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
    except (ValueError, np.linalg.LinAlgError, KeyError, IndexError):
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
