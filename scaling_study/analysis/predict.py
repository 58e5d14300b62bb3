"""What `study predict` answers, from one fitted Analysis: the value of a run not yet paid for, and
the compute-optimal (P*, N*) at a target compute, each with a 95% interval.

A prediction interval adds the scatter of single runs around the law to the uncertainty of the law
itself: each bootstrap refit's prediction gets one draw of log-normal noise whose spread is the
robust (1.4826 MAD) spread of the fit's log residuals, plus the seed spread a single run has beyond a
cell's mean. With no bootstrap, the noise alone makes the interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..budget import PFLOP
from ..errors import BadInput, StudyError
from .envelope import compute_law
from .forms import law_value
from .results import Allocation, Analysis, LawFit

LEVEL = 0.95


def _noise(fit: LawFit, analysis: Analysis) -> float:
    """Std of log value of one new run around the law: the residual spread, plus the seed spread within cells."""
    residual = np.log(fit.points["error"].to_numpy()) - np.log(fit.points["predicted"].to_numpy())
    sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    seeds = analysis.seeds
    if seeds is not None and seeds.cells_with_seeds and math.isfinite(seeds.log_std):
        sigma = math.sqrt(sigma**2 + seeds.log_std**2 * (1 - 1 / seeds.seeds_per_cell))
    return sigma


def _interval(point: float, draws: np.ndarray | None, sigma: float, rng: np.random.Generator) -> dict:
    """Percentile interval of draws (log scale) with noise added; a normal one when there are no draws."""
    tail = 100 * (1 - LEVEL) / 2
    if draws is None or draws.size < 2:
        z = 1.959963984540054
        return {"value": point, "low": point * math.exp(-z * sigma), "high": point * math.exp(z * sigma)}
    logs = np.log(draws) + rng.normal(0.0, sigma, draws.size)
    low, high = np.exp(np.percentile(logs, [tail, 100 - tail]))
    return {"value": point, "low": float(low), "high": float(high)}


def _law_draws(fit: LawFit, params: float, examples: float, epochs: float) -> np.ndarray | None:
    if fit.samples is None:
        return None
    s, ok = fit.samples, fit.samples["ok"]
    data = examples * epochs
    if "R_star" in s:
        data = examples * (1.0 - s["R_star"] * np.expm1(-(epochs - 1.0) / s["R_star"]))
    values = s["E_inf"] + s["A"] / params ** s["alpha"] + s["B"] / data ** s["beta"]
    return values[ok & np.isfinite(values) & (values > 0)]


def chosen_form(analysis: Analysis) -> LawFit:
    """The parametric form the held-out score chose (E(P, D) when none was compared)."""
    if analysis.form is not None and analysis.form.chosen == "data_constrained" and isinstance(analysis.data_constrained, LawFit):
        return analysis.data_constrained
    if not isinstance(analysis.parametric, LawFit):
        raise BadInput(f"no parametric law to predict a run with: {analysis.parametric.reason}")
    return analysis.parametric


def predict_run(analysis: Analysis, model: str, examples: int, epochs: int, seed: int = 0) -> dict:
    """The value of `model` trained on N examples for T epochs, by each parametric form fitted."""
    frame = analysis.frame
    known = frame.drop_duplicates("model").set_index("model")
    if model not in known.index:
        raise BadInput(f"unknown model {model!r}; models in the study: {', '.join(sorted(known.index))}")
    if examples <= 0 or epochs <= 0:
        raise BadInput(f"examples and epochs must be positive, not N = {examples}, T = {epochs}")
    params = float(known.loc[model, "params"])
    flops = float(known.loc[model, "flops_per_example"])
    rng = np.random.default_rng(seed)
    forms = {}
    for fit in (analysis.parametric, analysis.data_constrained):
        if not isinstance(fit, LawFit):
            continue
        point = float(law_value(fit, params, examples, epochs))
        forms[fit.name] = {**_interval(point, _law_draws(fit, params, examples, epochs), _noise(fit, analysis), rng),
                           "formula": fit.formula, "resamples": fit.resamples}
    if not forms:
        raise BadInput(f"no parametric law to predict a run with: {analysis.parametric.reason}")
    chosen = chosen_form(analysis).name
    return {"model": model, "params": int(params), "examples": int(examples), "epochs": int(epochs),
            "pflops": 3.0 * flops * examples * epochs / PFLOP, "metric": analysis.metric,
            "metric_kind": analysis.filters.get("metric_kind", "error"), "level": LEVEL,
            "chosen_form": chosen, "prediction": forms[chosen], "forms": forms}


def _allocation_at(estimate: Allocation, pflops: float, epochs: int, flops_scale: float, flops_exponent: float) -> dict:
    logc = math.log(pflops)
    params = math.exp(estimate.p0 + estimate.a.value * logc)
    examples = math.exp(estimate.n0 + estimate.b.value * logc)
    row = {"params": params, "examples": examples, "epochs": epochs, "params_low": None, "params_high": None,
           "examples_low": None, "examples_high": None}
    s = estimate.samples
    if s is not None:
        ok = s["ok"] & np.isfinite(s["p0"]) & np.isfinite(s["a"])
        if ok.sum() >= 2:
            tail = 100 * (1 - LEVEL) / 2
            p = np.exp(s["p0"][ok] + s["a"][ok] * logc)
            n = np.exp(s["n0"][ok] + s["b"][ok] * logc)
            row["params_low"], row["params_high"] = (float(v) for v in np.percentile(p, [tail, 100 - tail]))
            row["examples_low"], row["examples_high"] = (float(v) for v in np.percentile(n, [tail, 100 - tail]))
    return row


def predict_compute(analysis: Analysis, pflops: float, seed: int = 0) -> dict:
    """At a compute C (PFLOPs): the best value reachable (Eq. 5 on the envelope), and (P*, N*) by each estimator."""
    if not (pflops > 0 and math.isfinite(pflops)):
        raise BadInput(f"--compute must be a positive number of PFLOPs, not {pflops}")
    rng = np.random.default_rng(seed)
    law = analysis.compute
    point = float(compute_law(pflops, law))
    draws = None
    if law.samples is not None:
        s = law.samples
        values = s["a"] * (s["b"] + pflops) ** -s["alpha"] + s["E_inf"]
        draws = values[s["ok"] & np.isfinite(values) & (values > 0)]
    allocations = {}
    chosen = chosen_form(analysis) if isinstance(analysis.parametric, LawFit) else None
    for estimate in analysis.allocations:
        if not isinstance(estimate, Allocation):
            allocations[estimate.name] = {"skipped": estimate.reason}
            continue
        row = _allocation_at(estimate, pflops, analysis.epochs, analysis.flops_scale, analysis.flops_exponent)
        if chosen is not None:
            row["value_there"] = float(law_value(chosen, row["params"], row["examples"], analysis.epochs))
        allocations[estimate.estimator] = row
    observed = analysis.frame["compute"] / PFLOP
    return {"pflops": pflops, "metric": analysis.metric, "metric_kind": analysis.filters.get("metric_kind", "error"),
            "level": LEVEL, "extrapolation": float(pflops / observed.max()),
            "compute_law": {**_interval(point, draws, _noise(law, analysis), rng), "formula": law.formula},
            "epochs_for_allocation": analysis.epochs, "allocation": allocations,
            "value_there_by": None if chosen is None else chosen.name}


def check_question(model: str | None, examples: int | None, epochs: int | None, compute: float | None) -> None:
    """`study predict` asks for a run (model, N and T), a compute, or both; found before any work."""
    if model is None and compute is None:
        raise BadInput("say what to predict: --model M --examples N --epochs T, and/or --compute PFLOPS")
    if model is not None and (examples is None or epochs is None):
        raise BadInput("--model needs --examples N and --epochs T")
    if compute is not None and not (compute > 0 and compute < float("inf")):
        raise BadInput(f"--compute must be a positive number of PFLOPs, not {compute:g}")


def answer(frame: pd.DataFrame, study: str, metric: str | None = None, kind: str | None = None,
           exclude: Sequence[int] = (), model: str | None = None, examples: int | None = None,
           epochs: int | None = None, compute: float | None = None, bootstrap: int = 300, seed: int = 0) -> dict:
    """`study predict`'s answer from a study's evaluation points: {"study", and "run" and/or "compute"}."""
    from . import analyse
    from .select import select

    if frame.empty:
        raise BadInput(f"study {study!r} has no evaluation points" + (f" for metric {metric!r}" if metric else "")
                       + ": nothing to fit a prediction to")
    selected, filters = select(frame, metric, kind, exclude)
    if model is not None and model not in set(selected["model"]):
        raise BadInput(f"unknown model {model!r}; models in the study: {', '.join(sorted(set(selected['model'])))}")
    allocation_epochs = epochs if compute is not None and model is None else None
    try:
        analysis = analyse(selected, filters, allocation_epochs, bootstrap, seed)
    except BadInput:
        raise
    except StudyError as error:
        raise BadInput(f"study {study!r} cannot be fitted: {error}") from None
    result: dict = {"study": study}
    if model is not None:
        result["run"] = predict_run(analysis, model, examples, epochs, seed)
    if compute is not None:
        result["compute"] = predict_compute(analysis, compute, seed)
    return result
