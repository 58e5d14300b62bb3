"""What `study predict` answers, from one fitted Analysis: the value of a run not yet paid for (of a
model in the study or of any size), and the compute-optimal (P*, N*) at a target compute, each with a
95% interval (prediction intervals as `calibration` draws and calibrates them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..budget import PFLOP
from ..errors import BadInput, StudyError
from . import calibration as calibrated
from .envelope import compute_law
from .forms import law_value
from .results import Allocation, Analysis, LawFit

LEVEL = calibrated.LEVEL
WARN_BEYOND = 10.0  # a prediction this far outside the data's range says so
REFUSE_BEYOND = 1e4  # and this far (four decades) is refused: the law was never seen to hold there


def _outside(value: float, low: float, high: float) -> float:
    """How many times `value` lies outside [low, high] (1 inside)."""
    return max(value / high, low / value, 1.0)


def _range_check(what: str, value: float, observed: np.ndarray, notes: list[str]) -> None:
    """Refuse `value` beyond REFUSE_BEYOND times the observed range; note it beyond WARN_BEYOND."""
    low, high = float(observed.min()), float(observed.max())
    factor = _outside(value, low, high)
    side = "above the largest" if value > high else "below the smallest"
    if factor > REFUSE_BEYOND:
        raise BadInput(f"{what} {value:.3g} is {factor:.3g}x {side} in the study ({low:.3g} to {high:.3g}); a prediction "
                       f"more than {REFUSE_BEYOND:,.0f}x outside the data is refused: the law was never seen to hold there")
    if factor > WARN_BEYOND:
        notes.append(f"{what} {value:.3g} is {factor:.3g}x {side} in the study: an extrapolation; the interval is the "
                     "law's uncertainty, not evidence that the law holds that far")


def _clip_error(row: dict, kind: str, label: str, notes: list[str]) -> dict:
    """An error rate's prediction (and its interval) clipped to [0, 1], with a note when it had to be."""
    if kind != "error":
        return row
    clipped = False
    for key in ("value", "low", "high"):
        if row.get(key) is not None and not 0.0 <= row[key] <= 1.0:
            row[key] = min(max(row[key], 0.0), 1.0)
            clipped = True
    if clipped:
        notes.append(f"{label}: the law's value lies outside [0, 1]; clipped to the error rate's range")
    return row


def chosen_form(analysis: Analysis) -> LawFit:
    """The parametric form the held-out score chose (E(P, D) when none was compared)."""
    if analysis.form is not None and analysis.form.chosen == "data_constrained" and isinstance(analysis.data_constrained, LawFit):
        return analysis.data_constrained
    if not isinstance(analysis.parametric, LawFit):
        raise BadInput(f"no parametric law to predict a run with: {analysis.parametric.reason}")
    return analysis.parametric


def resolve_model(frame: pd.DataFrame, model: str) -> tuple[str, list[str]]:
    """A model name as the fit knows it: itself, or the model it was merged into (`--merge-sizes`), with a note."""
    if model in set(frame["model"]):
        notes = []
        if "model_as_recorded" in frame.columns:
            others = sorted(set(frame.loc[frame["model"] == model, "model_as_recorded"]) - {model})
            if others:
                notes.append(f"{model} stands for the near-equal sizes merged into it: {', '.join(others)}")
        return model, notes
    if "model_as_recorded" in frame.columns and model in set(frame["model_as_recorded"]):
        kept = str(frame.loc[frame["model_as_recorded"] == model, "model"].iloc[0])
        return kept, [(f"{model} was merged into {kept} (parameter counts within the --merge-sizes tolerance); "
                       f"predicted as {kept}")]
    known = sorted(set(frame["model"]) | set(frame.get("model_as_recorded", [])))
    raise BadInput(f"unknown model {model!r}; models in the study: {', '.join(known)}")


def predict_run(analysis: Analysis, model: str | None, examples: int, epochs: int, seed: int = 0,
                params: float | None = None, flops_per_example: float | None = None) -> dict:
    """The value of a run of N examples for T epochs, by each parametric form fitted: of a model of the
    study (`model`), or of any size (`params`, with FLOP(f) given or the study's kappa P^gamma)."""
    frame = analysis.frame
    if examples <= 0 or epochs <= 0:
        raise BadInput(f"examples and epochs must be positive, not N = {examples}, T = {epochs}")
    notes: list[str] = []
    if model is not None:
        model, notes = resolve_model(frame, model)
        known = frame.drop_duplicates("model").set_index("model")
        params = float(known.loc[model, "params"])
        flops = float(known.loc[model, "flops_per_example"])
        flops_source = "the model's"
    elif params is None or not (params > 0 and math.isfinite(params)):
        raise BadInput(f"--params must be a positive parameter count, not {params}")
    elif flops_per_example is not None:
        flops, flops_source = float(flops_per_example), "given"
    else:
        flops = analysis.flops_scale * params ** analysis.flops_exponent
        flops_source = (f"the study's FLOP(f) = {analysis.flops_scale:.4g} P^{analysis.flops_exponent:.4f} "
                        "(a log-log fit across its models)")
    if model is None:
        _range_check("--params", float(params), frame["params"].to_numpy(float), notes)
    _range_check("N*T", float(examples) * float(epochs), (frame["examples"] * frame["epochs"]).to_numpy(float), notes)
    kind = analysis.filters.get("metric_kind", "error")
    rng = np.random.default_rng(seed)
    calibration = analysis.calibration or {}
    forms = {}
    for fit in (analysis.parametric, analysis.data_constrained):
        if not isinstance(fit, LawFit):
            continue
        point = float(law_value(fit, params, examples, epochs))
        at = pd.DataFrame({"params": [params], "examples": [examples], "epochs": [epochs]})
        draws = calibrated.law_draws(fit, at)
        row = calibrated.interval(point, None if draws is None else draws[:, 0], calibrated.noise(fit, analysis.seeds),
                                  rng, calibration.get(fit.name))
        forms[fit.name] = {**_clip_error(row, kind, f"{fit.name} form", notes), "formula": fit.formula,
                           "resamples": fit.resamples}
    if not forms:
        raise BadInput(f"no parametric law to predict a run with: {analysis.parametric.reason}")
    chosen = chosen_form(analysis).name
    return {"model": model, "params": float(params), "flops_per_example": flops, "flops_per_example_from": flops_source,
            "examples": int(examples), "epochs": int(epochs),
            "pflops": 3.0 * flops * examples * epochs / PFLOP, "metric": analysis.metric,
            "metric_kind": kind, "level": LEVEL,
            "chosen_form": chosen, "prediction": forms[chosen], "forms": forms, "notes": notes}


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
    notes: list[str] = []
    observed = analysis.frame["compute"] / PFLOP
    _range_check("--compute (PFLOPs)", pflops, observed.to_numpy(float), notes)
    kind = analysis.filters.get("metric_kind", "error")
    rng = np.random.default_rng(seed)
    law = analysis.compute
    point = float(compute_law(pflops, law))
    draws = calibrated.law_draws(law, pd.DataFrame({"pflops": [pflops]}))
    allocations = {}
    chosen = chosen_form(analysis) if isinstance(analysis.parametric, LawFit) else None
    for estimate in analysis.allocations:
        if not isinstance(estimate, Allocation):
            allocations[estimate.name] = {"skipped": estimate.reason}
            continue
        row = _allocation_at(estimate, pflops, analysis.epochs, analysis.flops_scale, analysis.flops_exponent)
        if chosen is not None:
            there = {"value": float(law_value(chosen, row["params"], row["examples"], analysis.epochs))}
            row["value_there"] = _clip_error(there, kind, f"{estimate.estimator}'s allocation", notes)["value"]
        allocations[estimate.estimator] = row
    best = calibrated.interval(point, None if draws is None else draws[:, 0], calibrated.noise(law, analysis.seeds), rng,
                               (analysis.calibration or {}).get("compute"))
    best = _clip_error(best, kind, "the compute law", notes)
    return {"pflops": pflops, "metric": analysis.metric, "metric_kind": kind,
            "level": LEVEL, "extrapolation": float(pflops / observed.max()),
            "compute_law": {**best, "formula": law.formula},
            "epochs_for_allocation": analysis.epochs, "allocation": allocations,
            "value_there_by": None if chosen is None else chosen.name, "notes": notes}


def check_question(model: str | None, examples: int | None, epochs: int | None, compute: float | None,
                   params: float | None = None, flops_per_example: float | None = None) -> None:
    """`study predict` asks for a run (a model or a parameter count, with N and T), a compute, or both;
    found before any work."""
    if model is None and params is None and compute is None:
        raise BadInput("say what to predict: --model M (or --params P) --examples N --epochs T, and/or --compute PFLOPS")
    if model is not None and params is not None:
        raise BadInput("--model and --params both name the run's size; give one")
    if flops_per_example is not None and params is None:
        raise BadInput("--flops-per-example goes with --params (a model of the study has its own)")
    for name, value in (("--params", params), ("--flops-per-example", flops_per_example)):
        if value is not None and not (value > 0 and value < float("inf")):
            raise BadInput(f"{name} must be a positive number, not {value:g}")
    if (model is not None or params is not None) and (examples is None or epochs is None):
        raise BadInput(f"{'--model' if model is not None else '--params'} needs --examples N and --epochs T")
    if compute is not None and not (compute > 0 and compute < float("inf")):
        raise BadInput(f"--compute must be a positive number of PFLOPs, not {compute:g}")


def answer(frame: pd.DataFrame, study: str, metric: str | None = None, kind: str | None = None,
           exclude: Sequence[int] = (), model: str | None = None, examples: int | None = None,
           epochs: int | None = None, compute: float | None = None, bootstrap: int = 300, seed: int = 0,
           params: float | None = None, flops_per_example: float | None = None) -> dict:
    """`study predict`'s answer from a study's evaluation points: {"study", and "run" and/or "compute"}."""
    from . import analyse
    from .select import select

    if frame.empty:
        raise BadInput(f"study {study!r} has no evaluation points" + (f" for metric {metric!r}" if metric else "")
                       + ": nothing to fit a prediction to")
    selected, filters = select(frame, metric, kind, exclude)
    if model is not None and model not in set(selected["model"]):
        raise BadInput(f"unknown model {model!r}; models in the study: {', '.join(sorted(set(selected['model'])))}")
    run = model is not None or params is not None
    allocation_epochs = epochs if compute is not None and not run else None
    try:
        analysis = analyse(selected, filters, allocation_epochs, bootstrap, seed)
    except BadInput:
        raise
    except StudyError as error:
        raise BadInput(f"study {study!r} cannot be fitted: {error}") from None
    result: dict = {"study": study}
    if run:
        result["run"] = predict_run(analysis, model, examples, epochs, seed, params, flops_per_example)
    if compute is not None:
        result["compute"] = predict_compute(analysis, compute, seed)
    return result
