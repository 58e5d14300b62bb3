"""The written results of `study fit`: reports/fit.json (every number) and reports/report.md (tables), and
the fit that `study fit` and `study report` share (fit_study: select, fit, draw, write)."""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

from . import analysis as fits
from .analysis import identifiability
from .checks import output_problem, printable
from .errors import BadInput, StudyError
from .files import write_atomic
from .formatting import estimate_interval, interval, pflops

JSON_NAME = "fit.json"
MARKDOWN_NAME = "report.md"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#!~])")


def md(text: object) -> str:
    """Text from the study (a model, metric or study name, a reason quoting one) as literal Markdown: HTML's
    & < > as entities, Markdown's punctuation escaped, control characters and line breaks shown as escapes,
    so that a name like <script> or a | cannot become markup or break a table."""
    text = printable(text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _estimate(e: fits.Estimate) -> dict:
    return {"value": _number(e.value), "low": _number(e.low), "high": _number(e.high)}


def _law(law: fits.LawFit | fits.Skipped) -> dict:
    if isinstance(law, fits.Skipped):
        return {"skipped": law.reason}
    return {
        "formula": law.formula, "status": law.status, "points": len(law.points), "huber_loss": law.loss,
        "bootstrap": law.bootstrap, "resamples_converged": law.resamples, "note": law.note,
        "params": {k: _estimate(v) for k, v in law.params.items()},
        "not_identified": identifiability.law_flags(law), "bound_share": law.bound_share,
    }


def _allocation(a: fits.Allocation | fits.Skipped) -> dict:
    if isinstance(a, fits.Skipped):
        return {"skipped": a.reason}
    return {"a": _estimate(a.a), "b": _estimate(a.b), "log_p_at_1_pflop": a.p0, "log_n_at_1_pflop": a.n0,
            "method": a.method, "resamples": a.resamples, "mode": a.mode or None, "bootstrap": a.resampled or None,
            "not_identified": identifiability.allocation_flags(a),
            "points": a.points.to_dict(orient="records")}


def _held_out(h: fits.HeldOut | fits.Skipped) -> dict:
    if isinstance(h, fits.Skipped):
        return {"skipped": h.reason}
    return {"threshold_pflops": h.threshold_pflops, "train_points": h.train_points, "test_points": h.test_points,
            "mean_abs_relative_error": h.mean_abs_rel_error, "max_abs_relative_error": h.max_abs_rel_error,
            "params": {k: _number(v) for k, v in h.params.items()}}


def _form(form: fits.FormChoice | None) -> dict | None:
    if form is None:
        return None
    return {"chosen": form.chosen, "held_out_mean_abs_log_error": form.scores, "folds": form.folds,
            "method": form.method, "used_by": "allocation.parametric"}


def _backtest(results: list) -> dict:
    return {"best": fits.best_law(results), "quantiles": list(fits.backtest.QUANTILES),
            "method": "each law refitted to the cells below a compute level (from its full fit, the points above at "
                      "weight 0), scored on the compute-optimal points above it",
            "levels": [r.__dict__ for r in results]}


def _seeds(seeds: fits.SeedSpread | None) -> dict | None:
    if seeds is None:
        return None
    return {"points": seeds.points, "cells": seeds.cells, "seeds_per_cell": seeds.seeds_per_cell,
            "cells_with_seeds": seeds.cells_with_seeds, "log_std": _number(seeds.log_std),
            "note": "laws fitted to cells (mean over seeds per model, N, T); the bootstrap resamples cells"}


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("scaling-study", "numpy", "scipy", "pandas", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def as_dict(analysis: fits.Analysis, study: str, figures: list[Path], pruned: list[dict] | None = None) -> dict:
    """Every number of the analysis, JSON-ready (NaN as null); an adaptive study's pruned trajectories too."""
    frame = analysis.frame
    extra = {} if pruned is None else {
        "pruned": pruned, "compute_saved_pflops": sum(p["saved_pflops"] for p in pruned)}
    return {
        "study": study,
        "metric": analysis.metric,
        "filters": analysis.filters,
        "compute_unit": "PFLOPs: 1e15 multiply-accumulates, C = FLOP(f) * 3 * N * T (Eq. 4)",
        "points": len(frame),
        "runs": int(frame["job_id"].nunique()),
        "models": int(frame["model"].nunique()),
        "envelope_points": int(frame["envelope"].sum()),
        "epochs_for_allocation": analysis.epochs,
        "bootstrap_resamples": analysis.bootstrap,
        "seed": analysis.seed,
        "huber_delta": fits.HUBER_DELTA,
        "flops_per_example": {"kappa": analysis.flops_scale, "gamma": analysis.flops_exponent,
                              "law": "FLOP(f) = kappa * P^gamma"},
        "laws": {
            "compute": _law(analysis.compute),
            "bottleneck_params": _law(analysis.bottleneck_params),
            "bottleneck_examples": _law(analysis.bottleneck_examples),
            "parametric": _law(analysis.parametric),
            **({"data_constrained": _law(analysis.data_constrained)} if analysis.data_constrained is not None else {}),
        },
        "parametric_form": _form(analysis.form),
        "backtest": _backtest(analysis.backtest),
        "calibration": {"level": fits.calibration.LEVEL, "method": CALIBRATION_METHOD, "laws": analysis.calibration},
        "agreement": analysis.agreement or None,
        "seeds": _seeds(analysis.seeds),
        "allocation": {a.estimator if isinstance(a, fits.Allocation) else a.name: _allocation(a)
                       for a in analysis.allocations},
        "held_out": {h.name: _held_out(h) for h in analysis.held_out},
        "sweep": analysis.sweep,
        "identifiability": {"rule": identifiability.RULE, "flagged": identifiability.analysis_flags(analysis)},
        **extra,
        "figures": [str(p) for p in figures],
        "provenance": {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **_versions()},
    }


def _law_section(title: str, law: fits.LawFit | fits.Skipped) -> list[str]:
    lines = [f"### {title}", ""]
    if isinstance(law, fits.Skipped):
        return lines + [f"Not fitted: {md(law.reason)}.", ""]
    flags = identifiability.law_flags(law)
    lines += [f"`{law.formula}`: {len(law.points)} points, status **{identifiability.status_text(law.status, flags)}**, "
              f"Huber loss {law.loss:.4g}."]
    lines += [f"**Not identified: {f['param']}**: {md(f['reason'])}." for f in flags]
    if law.note:
        lines += [f"{md(law.note[0].upper() + law.note[1:])}."]
    lines += [f"Bootstrap: {law.bootstrap}; {law.resamples} refits converged.", "",
              "| parameter | estimate [95% interval] |", "|---|---|"]
    lines += [f"| {name} | {estimate_interval(e)} |" for name, e in law.params.items()]
    return lines + [""]


LAW_NAMES = {"compute": "E(C), Eq. 5", "parametric": "E(P, D = N T)", "data_constrained": "E(P, D')"}


def _backtest_section(analysis: fits.Analysis) -> list[str]:
    results = analysis.backtest
    lines = ["", "## Rolling-origin back-test", ""]
    if not results:
        return lines + ["Not done: too few points below or above every compute level.", ""]
    best = fits.best_law(results)
    lines += [f"Each law refitted to the cells below a compute level (quantiles {', '.join(map(str, fits.backtest.QUANTILES))} "
              "of compute), from its full fit with the points above at weight 0, and scored on the compute-optimal "
              f"points above the level. Extrapolated best: **{LAW_NAMES.get(best, best)}** (lowest mean error over the levels).", "",
              "| level | below (PFLOPs) | law | train points | envelope points above | mean abs rel. error | max abs rel. error |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.level} | {r.threshold_pflops:.3g} | {LAW_NAMES.get(r.law, r.law)} | {r.train_points} | {r.test_points} | "
              f"{r.mean_abs_rel_error:.2%} | {r.max_abs_rel_error:.2%} |" for r in results]
    return lines + [""]


CALIBRATION_METHOD = ("split-conformal on the back-test's out-of-sample log residuals: each residual as a multiple of "
                      "the bootstrap prediction interval's half-width on its side; each side widened by the conformal "
                      "97.5% quantile of its multiples (never narrowed); coverage_after is cross-validated over the "
                      "back-test's levels")


def _calibration_section(analysis: fits.Analysis) -> list[str]:
    laws = analysis.calibration
    lines = ["## Prediction intervals, calibrated on the back-test", ""]
    if not laws:
        return lines + ["Not calibrated: the back-test had no out-of-sample points.", ""]
    lines += [f"Method: {CALIBRATION_METHOD}. `study predict` gives the calibrated 95% intervals.", "",
              ("| law | out-of-sample points (levels) | coverage before | coverage after | widened below, above | "
               "median log residual |"), "|---|---|---|---|---|---|"]
    for name, c in laws.items():
        after = "–" if c["coverage_after"] is None else f"{c['coverage_after']:.1%}"
        lines.append(f"| {LAW_NAMES.get(name, name)} | {c['residuals']} ({c['levels']}) | {c['coverage_before']:.1%} | "
                     f"{after} | x{c['factor_below']:.2f}, x{c['factor_above']:.2f} | {c['median_log_residual']:+.4f} |")
    biased = [(name, c["median_log_residual"]) for name, c in laws.items() if abs(c["median_log_residual"]) > BIAS]
    lines += [""] + [f"- {LAW_NAMES.get(name, name)} extrapolated {abs(math.expm1(-m)):.1%} "
                     f"too {'high' if m < 0 else 'low'} on the median: a bias"
                     + (", which the calibration widens that side for." if laws[name]["calibrated"] else
                        f"; too few out-of-sample points (< {fits.calibration.MIN_RESIDUALS}) to calibrate.")
                     for name, m in biased]
    return lines + [""]


BIAS = 0.01  # a median out-of-sample log residual beyond 1% is reported as a bias


def _diagnosis_section(analysis: fits.Analysis) -> list[str]:
    d = analysis.agreement
    if not d:
        return []
    c = d["checks"]
    lines = ["## Agreement diagnosis", "", (f"The allocation estimators ({', '.join(c['estimators']) or 'none'}): "
             f"{md(d['verdict'])} (standardised spread: the difference over the joint bootstrap standard deviation, "
             f"the 95% interval's width / 3.92; undecided when that sd exceeds {d['thresholds']['joint_sd']:g})."), "",
             "| check | value | flagged when |", "|---|---|---|"]
    t = d["thresholds"]
    share = c.get("isoflop_edge_share")
    sizes = c.get("sizes_per_level")
    residual = c.get("residual_by_epochs")
    edges = c["isoflop_edge"]
    share_text = "–" if share is None else f"{share:.0%}: {edges['edge']} of {edges['used']} {edges['counted_on']}"
    sizes_text = "–" if sizes is None else f"{sizes['median']:g}, {sizes['min']}"
    residual_text = ("–" if residual is None
                     else f"{residual['range']:.2%} ({residual['ratio'] or 0:.1f}x its spread)")
    env = c["envelope_points"]
    lines += [
        f"| iso-FLOP budgets or levels with the minimum at an edge model (dropped) | {share_text} | > {t['isoflop_edge_share']:.0%} |",
        f"| models per compute budget or level (median, min) | {sizes_text} | median < {t['sizes_per_level_median']} |",
        f"| range of the parametric fit's mean log residual over T | {residual_text} | "
        f"> {t['residual_range']:.0%} and > {t['residual_ratio']:g}x |",
        f"| envelope points at T = {analysis.epochs} (all T) | {env['at_epochs']} ({env['all']}) | "
        f"< {t['envelope_points_at_epochs']} |",
        "",
    ]
    if d["causes"]:
        lines += ["Likely causes:", ""] + [f"- {md(cause)}." for cause in d["causes"]]
    else:
        lines += ["No check is past its threshold."]
    return lines + [""]


def _form_section(analysis: fits.Analysis) -> list[str]:
    form = analysis.form
    lines = []
    if form is not None:
        names = {"parametric": "E(P, D = N T)", "data_constrained": "E(P, D')"}
        scores = ", ".join(f"{names[k]} {v:.4f}" for k, v in form.scores.items())
        lines += ["### Which parametric form", "",
                  f"Held-out mean |log(predicted / observed)|: {scores or 'not scored'}. Chosen: **{names[form.chosen]}** "
                  f"(the parametric allocation uses it). Method: {form.method}.", ""]
    seeds = analysis.seeds
    if seeds is not None and seeds.cells_with_seeds:
        lines += ["### Seeds", "",
                  f"{seeds.points} points averaged into {seeds.cells} cells (model, N, T), {seeds.seeds_per_cell:.2g} seeds "
                  f"per cell; seed-to-seed spread (pooled std of log value) {seeds.log_std:.4f} "
                  f"({100 * math.expm1(seeds.log_std):.2f}%). Every law is fitted to the cells and the bootstrap "
                  "resamples cells.", ""]
    return lines


def _agreement(fitted: list[fits.Allocation]) -> list[str]:
    if len(fitted) < 2:
        return ["Only one estimator could be fitted; nothing to compare.", ""]
    lines = []
    for exponent in ("a", "b"):
        values = {f.estimator: getattr(f, exponent) for f in fitted}
        spread = max(v.value for v in values.values()) - min(v.value for v in values.values())
        lows = [v.low for v in values.values() if not math.isnan(v.low)]
        highs = [v.high for v in values.values() if not math.isnan(v.high)]
        overlap = bool(lows) and len(lows) == len(values) and max(lows) <= min(highs)
        lines.append(f"- `{exponent}`: estimates span {spread:.3f}; the 95% intervals "
                     f"{'share a common range' if overlap else 'do not all overlap'}.")
    return lines + [""]


def _pruned_section(pruned: list[dict]) -> list[str]:
    lines = ["## Pruned trajectories (adaptive study)", ""]
    if not pruned:
        return lines + ["None: every trajectory ran to its end.", ""]
    saved = sum(p["saved_pflops"] for p in pruned)
    lines += [f"{len(pruned)} trajectories stopped because the law ruled out every remaining point: none could be "
              f"compute-optimal at the chosen confidence. They saved {saved:.4g} PFLOPs (Eq. 4 of the epochs not run). "
              "Fig. 1 draws them hollow, with dashed lines.", "",
              "| job | model | N | epochs run | saved (PFLOPs) | closest remaining point: predicted [interval] vs envelope | decided |",
              "|---|---|---|---|---|---|---|"]
    for p in pruned:
        lines.append(f"| {p['job_id']} | {md(p['model'])} | {p['examples']:,} | {p['epochs_done']}/{p['epochs']} | "
                     f"{p['saved_pflops']:.3g} | T = {p['epoch']}: {interval(p['predicted'], p['low'], p['high'], '.4f')} "
                     f"vs {p['envelope']:.4f} ({p['confidence']:.0%}) | {p['decided_at']} by {md(p['decided_by'])} |")
    return lines + [""]


def _sweep_lines(sweep: dict) -> list[str]:
    """The sweep's shape (iso-FLOP budgets or a grid) and the model sizes merged, for the Data section."""
    if not sweep:
        return []
    lines = [f"- Sweep: **{sweep['mode']}** mode: {md(sweep['reason'])}."]
    if sweep["mode"] == "budgets":
        lines.append("- Budgets (PFLOPs): " + ", ".join(f"{b['pflops']:.3g} ({b['sizes']} sizes)" for b in sweep["budgets"])
                     + "; the envelope takes the best point per budget.")
    merged = sweep["merged_sizes"]
    joined = [g for g in merged["groups"] if g["merged"]]
    if joined:
        names = "; ".join(f"{md(g['model'])} <- " + ", ".join(md(m["model"]) for m in g["merged"]) for g in joined)
        lines.append(f"- Model sizes within {merged['tolerance']:.2%} merged: {names}.")
    apart = [g for g in merged["groups"] if g.get("kept_apart")]
    if apart:
        names = "; ".join(f"{md(g['model'])} / " + ", ".join(md(m["model"]) for m in g["kept_apart"]) for g in apart)
        lines.append(f"- Near-equal sizes kept apart (both ran the same N, T and seed): {names}.")
    return lines


def markdown(analysis: fits.Analysis, study: str, figures: list[Path], out: Path,
             pruned: list[dict] | None = None) -> str:
    """The report: data and filters, every fit with intervals, estimator agreement, held-out check."""
    frame = analysis.frame
    f = analysis.filters
    lines = [
        f"# Scaling laws: study {md(study)}, metric {md(analysis.metric)}", "",
        "## Data", "",
        f"- {len(frame)} evaluation points of {frame['job_id'].nunique()} runs of {frame['model'].nunique()} models; "
        f"{int(frame['envelope'].sum())} on the compute-optimal envelope.",
        f"- Filters: metric {md(f.get('metric'))}, model kind {md(f.get('kind', 'all'))}, excluded jobs "
        f"{f.get('excluded_jobs') or 'none'}, {f.get('dropped_zero_error', 0)} zero-error point(s) dropped "
        "(the fits are in log space).",
        f"- Compute: C = FLOP(f) * 3 * N * T (Eq. 4) in PFLOPs of multiply-accumulates, "
        f"{pflops(frame['compute'].min())} to {pflops(frame['compute'].max())}.",
        f"- N from {frame['examples'].min():,} to {frame['examples'].max():,}; T in "
        f"{{{', '.join(str(t) for t in sorted(frame['epochs'].unique()))}}}; FLOP(f) = "
        f"{analysis.flops_scale:.3g} P^{analysis.flops_exponent:.3f} across the models.",
        f"- Fits: Huber loss (delta = {fits.HUBER_DELTA:g}) of log residuals, L-BFGS-B from the best starts of a grid; "
        f"{analysis.bootstrap} bootstrap resamples (seed {analysis.seed}), 95% percentile intervals.",
        *_sweep_lines(analysis.sweep),
        "",
        "## Fits", "",
        *_law_section("Error vs compute, Eq. 5 (compute-optimal envelope)", analysis.compute),
        *_law_section("Error vs parameters when data is plentiful (Fig. 6)", analysis.bottleneck_params),
        *_law_section("Error vs examples when parameters are plentiful (Fig. 6)", analysis.bottleneck_examples),
        *_law_section("Parametric E(P, D) (Hoffmann et al. approach 3)", analysis.parametric),
        *(_law_section("Data-constrained E(P, D') (Muennighoff et al. 2023)", analysis.data_constrained)
          if analysis.data_constrained is not None else []),
        *_form_section(analysis),
        "## Compute-optimal allocation (Fig. 7)", "",
        f"P*(C) ~ C^a and N*(C) ~ C^b; the envelope and iso-FLOP estimators use the points at T = {analysis.epochs}.", "",
        "| estimator | a (P*) [95%] | b (N*) [95%] | method |", "|---|---|---|---|",
    ]
    fitted = []
    for a in analysis.allocations:
        if isinstance(a, fits.Skipped):
            lines.append(f"| {a.name} | – | – | not fitted: {md(a.reason)} |")
        else:
            fitted.append(a)
            lines.append(f"| {a.estimator} | {estimate_interval(a.a)} | {estimate_interval(a.b)} | {a.method} |")
    lines += ["", "Agreement:", "", *_agreement(fitted)]
    unidentified = [(a.estimator, f) for a in fitted for f in identifiability.allocation_flags(a)]
    if unidentified:
        lines += ["Not identified:", "", *[f"- {name} `{f['param']}`: {md(f['reason'])}." for name, f in unidentified], ""]
    lines += ["## Held-out check", "",
              f"Each law refitted without the top {fits.HELD_OUT_FRACTION:.0%} of points by compute, then scored on them "
              "(for E(C): the envelope points above the threshold).", "",
              "| law | threshold (PFLOPs) | train points | held-out points | mean abs rel. error | max abs rel. error |",
              "|---|---|---|---|---|---|"]
    for h in analysis.held_out:
        if isinstance(h, fits.Skipped):
            lines.append(f"| {h.name} | – | – | – | not done: {md(h.reason)} | |")
        else:
            lines.append(f"| {h.name} | {h.threshold_pflops:.3g} | {h.train_points} | {h.test_points} | "
                         f"{h.mean_abs_rel_error:.2%} | {h.max_abs_rel_error:.2%} |")
    lines += _backtest_section(analysis) + _calibration_section(analysis) + _diagnosis_section(analysis)
    if pruned is not None:
        lines += ["", *_pruned_section(pruned)]
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(out) if p.is_relative_to(out) else p})" for p in figures if p.suffix == ".png"]
    return "\n".join(lines) + "\n"


def write_report(analysis: fits.Analysis, study: str, figures: list[Path], out: Path,
                 pruned: list[dict] | None = None) -> list[Path]:
    """fit.json and report.md into `out` (with `pruned`, adaptive.pruned_summary, for an adaptive study)."""
    out = Path(out)
    data = as_dict(analysis, study, figures, pruned)
    text = json_text(data)
    json_path = write_atomic(out / JSON_NAME, lambda temp: temp.write_text(text + "\n"))
    md_path = write_atomic(out / MARKDOWN_NAME, lambda temp: temp.write_text(markdown(analysis, study, figures, out, pruned)))
    return [json_path, md_path]


def json_text(value: object) -> str:
    """`value` as indented JSON: numpy scalars as numbers, NaN and infinities as null."""
    return json.dumps(_clean(value), indent=2, allow_nan=False)


def _clean(value: object) -> object:
    """JSON-ready: numpy scalars as Python numbers, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- The fit of `study fit` and `study report`: select, fit, draw, write ----

@dataclass(frozen=True)
class WrittenFit:
    """What fit_study fitted and wrote."""

    points: pd.DataFrame  # the points selected for the fit
    analysis: fits.Analysis
    figures: list[Path]
    files: list[Path]  # fit.json and report.md
    pruned: list[dict] | None  # an adaptive study's pruned trajectories; None for a plain study


def writable_folder(out: Path) -> Path:
    """`out` when a report can be written there, found before any work; else BadInput."""
    if problem := output_problem(out, folder=True):
        raise BadInput(f"cannot write --out {out}: {problem}")
    return out


def _unwritable(out: Path, error: OSError) -> BadInput:
    return BadInput(f"cannot write --out {out}: {error.strerror or error}; choose another folder")


def fit_study(engine, study: str, out: Path, metric: str | None = None, kind: str | None = None,  # noqa: ANN001
              epochs: int | None = None, exclude: Sequence[int] = (), bootstrap: int = 1000, seed: int = 0,
              merge_sizes: float = 0.01, budget_tolerance: float = 0.1) -> WrittenFit:
    """Fit E(C), the bottleneck laws and the allocation to a study's points; write the figures, fit.json and
    report.md to `out`."""
    from . import adaptive, db
    from .plots import write_figures

    # every metric, so that a mistyped --metric is told the ones present
    points, filters = fits.select(db.evaluations_frame(engine, study, None), metric, kind, exclude or ())
    analysis = fits.analyse(points, filters, epochs, bootstrap, seed, merge_tolerance=merge_sizes,
                            budget_tolerance=budget_tolerance)
    pruned = adaptive.pruned_or_none(engine, study)
    try:
        figures = write_figures(analysis, out)
        files = write_report(analysis, study, figures, out, pruned)
    except OSError as error:
        raise _unwritable(out, error) from None
    return WrittenFit(points, analysis, figures, files, pruned)


def refit_if_stale(engine, study: str, out: Path, bootstrap: int = 1000) -> str:  # noqa: ANN001
    """Refit (fit_study) with the metric, kind and exclusions of the fit in `out` when points landed after it.
    Returns what the page notes: '' or why it was not refitted (too few points yet, say)."""
    from . import page

    if not page.fit_is_stale(engine, study, out):
        return ""
    last = (page.load_fit(out, study) or {}).get("filters") or {}
    kind = None if last.get("kind") in (None, "all") else last["kind"]
    try:
        fit_study(engine, study, out, last.get("metric"), kind, None, last.get("excluded_jobs") or (), bootstrap, 0)
    except StudyError as error:
        return f"not refitted: {error}"
    return ""


def write_study_page(engine, study: str, out: Path, runs_dir: Path, note: str = "",  # noqa: ANN001
                     refresh_s: float | None = None) -> Path:
    """The study's page, out/index.html (page.write_page), or BadInput when `out` cannot take it."""
    from . import page

    try:
        return page.write_page(engine, study, out, runs_dir, note=note, refresh_s=refresh_s)
    except OSError as error:
        raise _unwritable(out, error) from None
