"""Choosing the points to fit: one metric, optionally one model kind, minus excluded jobs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from ..errors import BadInput, StudyError

MODEL_KINDS = ("bottleneck", "standard")


FAMILY_KINDS = ("cnn", "vit")  # built-in families besides the MLPs; a user family's kind is its module:callable


def check_kind(kind: str | None) -> None:
    """A --kind is one of MODEL_KINDS, a built-in family or a user family's module:callable (or none: every kind)."""
    if kind and kind not in MODEL_KINDS + FAMILY_KINDS and ":" not in kind:
        raise BadInput(f"unknown --kind {kind!r}; valid kinds: {', '.join(MODEL_KINDS + FAMILY_KINDS)}, "
                       "or a family's module:callable")


def default_metric(metrics: Iterable[str]) -> str:
    """The first downstream linear-probe metric, else upstream top-1, else the only metric there is."""
    metrics = sorted(set(metrics))
    linear = [m for m in metrics if m.endswith("/linear")]
    if linear:
        return linear[0]
    if "upstream/top1" in metrics:
        return "upstream/top1"
    if len(metrics) == 1:
        return metrics[0]
    if not metrics:
        raise StudyError("no evaluation points to fit: run or import a study first")
    raise StudyError(f"no */linear or upstream/top1 metric; choose one with --metric: {', '.join(metrics)}")


def select(
    frame: pd.DataFrame,
    metric: str | None = None,
    kind: str | None = None,
    exclude: Sequence[int] = (),
) -> tuple[pd.DataFrame, dict]:
    """The points of one metric (default: `default_metric`), optionally one model kind, minus excluded jobs."""
    metric = metric or default_metric(frame["metric"].unique())
    if metric not in set(frame["metric"]):
        known = ", ".join(sorted(frame["metric"].unique())) or "none"
        raise StudyError(f"no evaluation points for metric {metric!r}; metrics present: {known}")
    chosen = frame[frame["metric"] == metric]
    if kind:
        if kind not in set(chosen["kind"]):
            raise StudyError(f"no {kind!r} models for metric {metric!r}; kinds present: {', '.join(sorted(chosen['kind'].unique()))}")
        chosen = chosen[chosen["kind"] == kind]
    excluded = sorted({int(j) for j in exclude})
    unknown = sorted(set(excluded) - set(chosen["job_id"]))
    if unknown:
        raise StudyError(f"--exclude: no job {', '.join(map(str, unknown))} among the points of metric {metric!r}")
    if excluded:
        chosen = chosen[~chosen["job_id"].isin(excluded)]
    nonpositive = int((chosen["error"] <= 0).sum())
    chosen = chosen[chosen["error"] > 0]  # log-space fits: a zero error has no logarithm
    metric_kind = str(chosen["metric_kind"].iloc[0]) if "metric_kind" in chosen and len(chosen) else "error"
    filters = {"metric": metric, "kind": kind or "all", "excluded_jobs": excluded, "dropped_zero_error": nonpositive,
               "metric_kind": metric_kind}
    return chosen.reset_index(drop=True), filters
