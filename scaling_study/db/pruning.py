"""An adaptive study's decisions: prunings (applied here, read back with their evidence) and an anytime
study's choices of the next rung (recorded with each claim, `claims.claim_job`; read back here)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .schema import decisions, jobs, now, prunings, studies


def prune_jobs(engine: Engine, decisions: Iterable, decided_by: str) -> list[int]:
    """Apply pruning decisions in one transaction; returns the jobs pruned.

    Each job moves only if it is still where the decision saw it (same state, same epochs done), so
    workers that decide at once, on SQLite or PostgreSQL, prune each job once and never prune one whose
    newer points the decision has not seen. A running job keeps its worker: the worker records its
    epoch's points, then stops (runner) and clears it."""
    pruned = []
    with engine.begin() as conn:
        for d in decisions:
            moved = conn.execute(
                jobs.update().where(jobs.c.id == d.job_id, jobs.c.state == d.state, jobs.c.epochs_done == d.epochs_done,
                                    jobs.c.state.in_(("pending", "running"))).values(
                    state="pruned", finished_at=now(), error=d.reason)
            )
            if moved.rowcount != 1:
                continue
            best = d.closest
            conn.execute(prunings.insert().values(
                job_id=d.job_id, decided_at=now(), previous_state=d.state, epochs_done=d.epochs_done,
                confidence=d.confidence, epoch=best.epoch, compute=best.compute, predicted=best.predicted,
                low=best.low, high=best.high, envelope=best.envelope,
                evidence=json.dumps([e._asdict() for e in d.evidence]), fit=json.dumps(d.fit, sort_keys=True),
                decided_by=decided_by,
            ))
            pruned.append(d.job_id)
    return pruned


def pruning_rows(engine: Engine, study: str | None = None) -> list[dict]:
    """Every pruning decision recorded (oldest first), with its job's study, model, size and progress;
    [] for a database from before pruning existed."""
    if not sa.inspect(engine).has_table("prunings"):
        return []
    query = (
        sa.select(prunings, studies.c.name.label("study"), jobs.c.model, jobs.c.params, jobs.c.examples,
                  jobs.c.flops_per_example, jobs.c.epochs.label("total_epochs"), jobs.c.state.label("job_state"),
                  jobs.c.epochs_done.label("job_epochs_done"), jobs.c.spec)
        .select_from(prunings.join(jobs, prunings.c.job_id == jobs.c.id).join(studies))
        .order_by(prunings.c.id)
    )
    if study:
        query = query.where(studies.c.name == study)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def decision_rows(engine: Engine, study: str) -> list[dict]:
    """An anytime study's recorded choices, oldest first, each with its trajectory's model and size;
    [] for a database from before they were recorded."""
    if not sa.inspect(engine).has_table("decisions"):
        return []
    query = (
        sa.select(decisions, jobs.c.model, jobs.c.examples)
        .select_from(decisions.join(jobs, decisions.c.job_id == jobs.c.id).join(studies, decisions.c.study_id == studies.c.id))
        .where(studies.c.name == study).order_by(decisions.c.id)
    )
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]
