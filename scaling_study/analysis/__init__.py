"""The analysis of `study fit`: pure functions over a frame of evaluation points (no I/O).

The frame has one row per evaluation point (the columns of `db.evaluations_frame`): a job
(model, N, seed) evaluated after T epochs has `error` and `compute` = FLOP(f) * 3 * N * T
multiply-accumulates (Eq. 4). Compute enters every fit in PFLOPs.

Every law is fitted in log space: the loss is the Huber loss (delta = 1e-3) of
log(E_pred) - log(E), minimised by L-BFGS-B from the best few starts of a grid (the grid is
screened in one vectorised pass), then polished. Bootstrap refits start from the best fit and
run all resamples at once: a damped Gauss-Newton (Levenberg-Marquardt) iteration on the
iteratively reweighted Huber loss, vectorised over the resamples, with the same bounds.
Intervals are the 2.5 and 97.5 percentiles of the bootstrap estimates.

Modules: `select` (which points), `envelope` (the envelope and Eq. 5), `bottleneck` (Fig. 6),
`parametric` (E(P, D)), `allocation` (Fig. 7's three estimators), `extrapolation` (held-out checks at the
highest compute), `backtest` (rolling-origin extrapolation), `calibration` (prediction intervals calibrated on it),
`sweeps` (iso-FLOP sweep or grid; near-equal sizes merged), `isoflop` (approach 2 at
the budgets, intervals over runs), `optimize` and `bootstrap` (how every law is fitted and its intervals drawn), `results` (what
they return). `analyse` runs them all on one selection.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import StudyError
from .allocation import allocation_envelope, allocation_isoflop, allocation_parametric, isoflop_minima
from .sweeps import BUDGET_TOLERANCE, MERGE_TOLERANCE, describe, merge_sizes, sweep_shape
from .cells import average_seeds
from .data_constrained import DATA_CONSTRAINED_LAW, at_fixed_epochs, data_constrained_law, fit_data_constrained
from .agreement import diagnose
from .backtest import best_law, origin_predictions, rolling_origin, scores
from .calibration import calibrate
from .forms import choose_form, law_value
from .bottleneck import SATURATING_LAW, fit_bottleneck_examples, fit_bottleneck_params, saturating_law
from .envelope import COMPUTE_LAW, compute_law, envelope, envelope_mask, fit_compute_law
from .optimize import HUBER_DELTA, one_blas_thread
from .parametric import PARAMETRIC_LAW, fit_parametric, flops_scaling, parametric_law
from .extrapolation import HELD_OUT_FRACTION, held_out_compute, held_out_parametric
from .results import Allocation, Analysis, BackTest, Estimate, FormChoice, HeldOut, LawFit, SeedSpread, Skipped
from .select import default_metric, select

__all__ = [
    "BUDGET_TOLERANCE", "DATA_CONSTRAINED_LAW", "MERGE_TOLERANCE", "BackTest", "FormChoice", "SeedSpread",
    "summary_lines", "at_fixed_epochs", "average_seeds", "best_law", "diagnose", "rolling_origin", "choose_form", "data_constrained_law", "fit_data_constrained", "law_value",
    "COMPUTE_LAW", "HELD_OUT_FRACTION", "HUBER_DELTA", "PARAMETRIC_LAW", "SATURATING_LAW", "Allocation", "Analysis",
    "Estimate", "HeldOut", "LawFit", "Skipped", "allocation_envelope", "allocation_isoflop", "allocation_parametric",
    "analyse", "compute_law", "default_metric", "envelope", "envelope_mask", "fit_bottleneck_examples",
    "fit_bottleneck_params", "fit_compute_law", "fit_parametric", "flops_scaling", "isoflop_minima", "parametric_law",
    "saturating_law", "select",
]


def summary_lines(analysis: Analysis) -> list[str]:
    """The diagnostics in a few lines for `study fit`: the form chosen, seeds, the back-test, agreement."""
    lines = []
    if analysis.form is not None and len(analysis.form.scores) > 1:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in analysis.form.scores.items())
        lines.append(f"parametric form: {analysis.form.chosen} (held-out mean |log error|: {scores})")
    if analysis.seeds is not None and analysis.seeds.cells_with_seeds:
        s = analysis.seeds
        lines.append(f"seeds: {s.points} points in {s.cells} cells, {s.seeds_per_cell:.2g} per cell, "
                     f"seed spread {100 * np.expm1(s.log_std):.2f}%")
    best = best_law(analysis.backtest)
    if best:
        lines.append(f"back-test: {best} extrapolated best over {len({r.level for r in analysis.backtest})} compute levels")
    for law, c in analysis.calibration.items():
        if c["calibrated"]:
            lines.append(f"{law} prediction intervals on the back-test: {c['coverage_before']:.0%} inside before calibration, "
                         f"{c['coverage_after']:.0%} after (widened x{c['factor_below']:.2f} below, x{c['factor_above']:.2f} above)")
    d = analysis.agreement
    if d:
        lines.append(f"allocation estimators {d['verdict']}" + (f"; flags: {', '.join(d['flags'])}" if d["flags"] else ""))
    return lines


@one_blas_thread
def analyse(frame: pd.DataFrame, filters: dict | None = None, epochs: int | None = None,
            bootstrap: int = 1000, seed: int = 0, merge_tolerance: float = MERGE_TOLERANCE,
            budget_tolerance: float = BUDGET_TOLERANCE) -> Analysis:
    """Every fit of `study fit` on one selection of points (see `select`), seeds averaged into cells.

    Model sizes within `merge_tolerance` are merged first; when the points then cluster into compute
    budgets (log C within `budget_tolerance`, see `sweeps.sweep_shape`) the frame gets a `budget`
    column: the envelope takes the best point per budget and iso-FLOP fits each budget's curve.
    """
    filters = dict(filters or {})
    metric = filters.get("metric") or (frame["metric"].iloc[0] if len(frame) else "")
    if frame.empty:
        raise StudyError(f"no evaluation points to fit for metric {metric!r}")
    if bootstrap < 0:
        raise StudyError(f"--bootstrap must be >= 0, not {bootstrap}")
    if not 0 <= merge_tolerance < 1:
        raise StudyError(f"--merge-sizes must be a relative tolerance in [0, 1), not {merge_tolerance}")
    if budget_tolerance <= 0:
        raise StudyError(f"--budget-tolerance must be > 0, not {budget_tolerance}")
    frame, merged = merge_sizes(frame, merge_tolerance)
    shape = sweep_shape(frame, budget_tolerance)
    if shape.mode == "budgets":
        frame = frame.assign(budget=shape.labels)
    available = sorted(int(t) for t in frame["epochs"].unique())
    if epochs is None:
        epochs = available[0]
    elif epochs not in available:
        raise StudyError(f"no evaluation points at T = {epochs} epochs; epochs present: {', '.join(map(str, available))}")
    frame, seeds = average_seeds(frame)
    rng = np.random.default_rng(seed)
    compute = fit_compute_law(frame, bootstrap, rng)
    kappa, gamma = flops_scaling(frame)
    parametric = fit_parametric(frame, bootstrap, rng, gamma)
    constrained = (fit_data_constrained(frame, 0, rng, gamma, start=parametric) if isinstance(parametric, LawFit)
                   else Skipped("data_constrained", parametric.reason))
    form = choose_form(frame, parametric, constrained)
    if form is not None and form.chosen == "data_constrained" and bootstrap:
        # intervals for the chosen form only: its 6-parameter bootstrap is the slowest fit here
        constrained = fit_data_constrained(frame, bootstrap, np.random.default_rng([seed, 5]), gamma, start=parametric)
    chosen = constrained if form is not None and form.chosen == "data_constrained" else parametric
    allocations: list[Allocation | Skipped] = [
        allocation_envelope(frame, epochs, bootstrap, rng),
        allocation_isoflop(frame, epochs, bootstrap, rng, shape),
        (allocation_parametric(at_fixed_epochs(chosen, epochs) if chosen is constrained else chosen, epochs, kappa, gamma)
         if isinstance(chosen, LawFit) else Skipped("parametric", chosen.reason)),
    ]
    threshold = float(np.quantile(frame["compute"], 1 - HELD_OUT_FRACTION))
    held_out = [held_out_compute(frame, threshold)]
    if isinstance(parametric, LawFit):
        held_out.append(held_out_parametric(frame, threshold, gamma))
    on_envelope = frame.index.isin(envelope(frame).index)
    predictions = origin_predictions(frame, compute, [parametric, constrained])
    filters["epochs_for_allocation"] = epochs
    return Analysis(
        metric=metric, filters=filters, frame=frame.assign(envelope=on_envelope), epochs=epochs,
        compute=compute,
        bottleneck_params=fit_bottleneck_params(frame, bootstrap, rng),
        bottleneck_examples=fit_bottleneck_examples(frame, bootstrap, rng),
        parametric=parametric, allocations=allocations, held_out=held_out,
        flops_exponent=gamma, flops_scale=kappa, bootstrap=bootstrap, seed=seed,
        data_constrained=constrained, form=form, seeds=seeds,
        backtest=scores(predictions),
        calibration=calibrate(predictions, frame, [compute, parametric, constrained], seeds, seed),
        agreement=diagnose(frame, epochs, allocations, parametric, chosen),
        sweep=describe(shape, merged, merge_tolerance),
    )
