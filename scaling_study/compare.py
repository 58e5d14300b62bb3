"""Comparing model families: each group of points (a study, or a kind within one) fitted on its own,
then their exponents side by side and whether they differ.

Groups are fitted independently, with their own bootstrap. An exponent differs between two groups
when the 95% interval of the difference of their bootstrap draws (paired in order; the draws are
independent) excludes 0; without draws, when their 95% intervals are disjoint.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import analysis as fits
from . import db, plots
from .errors import BadInput, StudyError
from .files import write_atomic
from .formatting import interval
from .report import json_text, md, write_report

JSON_NAME = "fit.json"
MARKDOWN_NAME = "report.md"


def groups(engine, studies: Sequence[str], by_kind: bool, metric: str | None, kind: str | None,
           exclude: Sequence[int]) -> dict[str, tuple[pd.DataFrame, dict]]:
    """The selected points (fits.select) of each study, or of each model kind of one study."""
    selected = {}
    for study in studies:
        points, filters = fits.select(db.evaluations_frame(engine, study, None), metric, kind, exclude)
        if by_kind:
            for name, part in points.groupby("kind", sort=True):
                selected[str(name)] = (part.reset_index(drop=True), {**filters, "kind": str(name)})
        else:
            selected[study] = (points, filters)
    if len(selected) < 2:
        found = ", ".join(selected) or "none"
        raise BadInput(f"a comparison needs two groups of points; found {found}: give two --study, or "
                       "--compare-kinds on a study of two model kinds")
    metrics = {f["metric"] for _, f in selected.values()}
    if len(metrics) > 1:
        raise BadInput(f"the groups default to different metrics ({', '.join(sorted(metrics))}); choose one with --metric")
    return selected


def exponents(analysis: fits.Analysis) -> dict[str, tuple[fits.Estimate, np.ndarray]]:
    """E(C)'s alpha and each allocation estimator's P* and N* exponents, with their bootstrap draws."""
    out = {}
    if analysis.compute.params.get("alpha") is not None:
        out["E(C) alpha"] = (analysis.compute.params["alpha"], analysis.compute.draws().get("alpha", np.array([])))
    for allocation in analysis.allocations:
        if isinstance(allocation, fits.Skipped):
            continue
        samples = allocation.samples or {}
        ok = samples.get("ok")
        for symbol, key in (("P*", "a"), ("N*", "b")):
            draws = np.asarray(samples[key])[ok] if ok is not None and key in samples else np.array([])
            out[f"{symbol} exponent ({allocation.estimator})"] = (getattr(allocation, key), draws)
    return out


def verdict(first: tuple[fits.Estimate, np.ndarray], second: tuple[fits.Estimate, np.ndarray]) -> dict:
    """Whether one exponent differs between two groups, by the bootstrap draws or by the intervals."""
    (a, draws_a), (b, draws_b) = first, second
    count = min(len(draws_a), len(draws_b))
    if count >= 20:
        difference = draws_a[:count] - draws_b[:count]
        low, high = np.percentile(difference, [2.5, 97.5])
        return {"difference": a.value - b.value, "low": float(low), "high": float(high), "draws": int(count),
                "differ": bool(low > 0 or high < 0), "by": "bootstrap difference"}
    if any(math.isnan(x) for x in (a.low, a.high, b.low, b.high)):
        return {"difference": a.value - b.value, "differ": None, "by": "no intervals: not compared"}
    return {"difference": a.value - b.value, "differ": bool(a.high < b.low or b.high < a.low),
            "by": "intervals"}


def compare(selected: dict[str, tuple[pd.DataFrame, dict]], epochs: int | None, bootstrap: int, seed: int,
            merge_tolerance: float, budget_tolerance: float) -> dict[str, fits.Analysis]:
    """Each group's own analysis (fits.analyse), in the groups' order."""
    out = {}
    for label, (points, filters) in selected.items():
        try:
            out[label] = fits.analyse(points, filters, epochs, bootstrap, seed, merge_tolerance=merge_tolerance,
                                      budget_tolerance=budget_tolerance)
        except StudyError as error:
            raise StudyError(f"{label}: {error}") from None
    return out


def table(analyses: dict[str, fits.Analysis]) -> list[dict]:
    """One row per exponent both groups have: each group's estimate, and (for two groups) the verdict."""
    per_group = {label: exponents(a) for label, a in analyses.items()}
    labels = list(per_group)
    names = [n for n in per_group[labels[0]] if all(n in per_group[label] for label in labels[1:])]
    rows = []
    for name in names:
        row = {"quantity": name, "groups": {label: {"value": per_group[label][name][0].value,
                                                    "low": per_group[label][name][0].low,
                                                    "high": per_group[label][name][0].high} for label in labels}}
        row["verdicts"] = {pair_name(a, b): verdict(per_group[a][name], per_group[b][name])
                           for a, b in itertools.combinations(labels, 2)}
        rows.append(row)
    return rows


def pair_name(first: str, second: str) -> str:
    return f"{first} - {second}"


def answer(v: dict) -> str:
    """A verdict in a few words."""
    return {True: "differ", False: "not shown to differ", None: "not compared"}[v["differ"]] + f" ({v['by']})"


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "group"


def _cell(row: dict) -> str:
    return interval(row["value"], row["low"], row["high"], ".3g")


def markdown(analyses: dict[str, fits.Analysis], rows: list[dict], figures: list[Path]) -> str:
    labels = list(analyses)
    pairs = [pair_name(a, b) for a, b in itertools.combinations(labels, 2)]
    first = next(iter(analyses.values()))
    lines = [f"# Comparison: {' vs '.join(md(label) for label in labels)}", "",
             (f"Metric {md(first.metric)}; each group fitted on its own ({first.bootstrap} bootstrap resamples); "
              "intervals are 95%."), "",
             *[f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"], "",
             ("| quantity | " + " | ".join(md(label) for label in labels) + " | "
              + " | ".join(md(pair) for pair in pairs) + " |"),
             "|---" * (len(labels) + len(pairs) + 1) + "|"]
    for row in rows:
        cells = [_cell(row["groups"][label]) for label in labels]
        for pair in pairs:
            v = row["verdicts"][pair]
            cells.append(interval(v["difference"], v.get("low", math.nan), v.get("high", math.nan), ".3g")
                         + f": {answer(v)}")
        lines.append(f"| {row['quantity']} | " + " | ".join(cells) + " |")
    lines += ["", ("A difference column gives the first group's exponent minus the second's, with the 95% interval "
                   "of the difference of their bootstrap draws; they differ when it excludes 0 (without draws: when "
                   "their intervals are disjoint).")]
    lines += ["", "Points per group: " + ", ".join(f"{md(label)} {len(a.frame)} points of {a.frame['job_id'].nunique()} "
                                                  f"runs" for label, a in analyses.items()) + ".",
              "Each group's own report: " + ", ".join(f"[{md(label)}]({_slug(label)}/report.md)" for label in labels) + "."]
    return "\n".join(lines) + "\n"


def write(analyses: dict[str, fits.Analysis], out: Path) -> tuple[list[Path], list[dict]]:
    """The comparison's figure, report.md and fit.json into `out`, each group's own fit in out/<group>/."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for label, analysis in analyses.items():
        folder = out / _slug(label)
        folder.mkdir(exist_ok=True)
        figures = plots.write_figures(analysis, folder)
        written += write_report(analysis, label, figures, folder)
    figures = plots.compare_error_vs_compute(analyses, out)
    rows = table(analyses)
    report = {"comparison": {"groups": list(analyses), "metric": next(iter(analyses.values())).metric,
                             "rows": rows, "figures": [p.name for p in figures],
                             "reports": {label: f"{_slug(label)}/report.md" for label in analyses}}}
    write_atomic(out / JSON_NAME, lambda temp: Path(temp).write_text(json_text(report)))
    write_atomic(out / MARKDOWN_NAME, lambda temp: Path(temp).write_text(markdown(analyses, rows, figures)))
    return [*figures, out / JSON_NAME, out / MARKDOWN_NAME, *written], rows
