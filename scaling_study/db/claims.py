"""The runner's side of a job: claiming it, its lease, its progress and its outcome (one transaction each),
and the state changes of `study retry` and `study cancel`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..budget import job_examples_per_epoch
from ..errors import StudyError
from ..workers import worker_alive
from .results import insert_points
from .schema import attempts, decisions, jobs, now, studies

FINAL_STATES = ("done", "failed", "diverged", "cancelled")
HELD_STATES = ("running", "pruned")  # a worker holds a pruned job until its epoch ends


def _close_open_attempts(conn: Connection, job_id: int, outcome: str, message: str | None) -> None:
    """Give every attempt of a job that has no outcome yet this one (a lost worker, a cancel)."""
    conn.execute(
        attempts.update().where(attempts.c.job_id == job_id, attempts.c.outcome.is_(None)).values(
            ended_at=now(), outcome=outcome, message=message
        )
    )


def _next_attempt(conn: Connection, job_id: int) -> int:
    """One more than the highest attempt number ever recorded for the job: numbers only grow,
    across `study retry` too (which resets the job's budget of attempts, not its history)."""
    highest = conn.execute(sa.select(sa.func.max(attempts.c.attempt)).where(attempts.c.job_id == job_id)).scalar()
    return (highest or 0) + 1


def reclaim_lost(engine: Engine, host: str, max_attempts: int,
                 alive: Callable[[str, str], bool] = worker_alive) -> list[tuple[int, str]]:
    """Jobs whose worker died (lease expired, or `alive(worker, host)` says its process is gone) go back
    to pending, or to failed after `max_attempts`; returns (job id, new state)."""
    changed = []
    with engine.begin() as conn:
        running = conn.execute(
            sa.select(jobs.c.id, jobs.c.worker, jobs.c.lease_expires, jobs.c.attempts).where(jobs.c.state == "running")
        ).all()
        for row in running:
            expired = row.lease_expires is None or row.lease_expires < now()
            if not expired and alive(row.worker or "", host):
                continue
            reason = f"worker {row.worker} lost (lease expired or process gone)"
            state = "failed" if row.attempts >= max_attempts else "pending"
            conn.execute(
                jobs.update().where(jobs.c.id == row.id, jobs.c.state == "running", jobs.c.worker == row.worker).values(
                    state=state, worker=None, lease_expires=None,
                    error=f"{reason}; gave up after {row.attempts} attempts" if state == "failed" else reason,
                    finished_at=now() if state == "failed" else None,
                )
            )
            _close_open_attempts(conn, row.id, "lost", reason)
            changed.append((row.id, state))
    return changed


def claim_job(
    engine: Engine, worker: str, lease_s: float, study: str | None = None, resume: bool = True,
    provenance: dict | None = None, order: dict[int, int] | None = None, slurm_job: str | None = None,
    skip: Iterable[int] = (), decisions_by_job: dict[int, dict] | None = None, expected: dict[int, int] | None = None,
) -> dict | None:
    """Atomically take the next pending job: BEGIN IMMEDIATE on SQLite, FOR UPDATE SKIP LOCKED on
    PostgreSQL. Without `resume`, jobs that ran before (and may have a checkpoint) are left alone.
    `order` ({job id: rank}, an adaptive study's order) claims by rank, then id; jobs in `skip` are not
    claimed, nor a job in `expected` ({job id: epochs done}) that has moved on since the decision saw
    it. `decisions_by_job` ({job id: a `decisions` row}, an anytime study's choice) records the claimed
    job's row in the claim's transaction: whatever workers decide at once, each rung runs once."""
    with engine.begin() as conn:
        ranked = [jobs.c.id]
        if order:
            ranked.insert(0, sa.case(order, value=jobs.c.id, else_=len(order)))
        query = sa.select(jobs).where(jobs.c.state == "pending").order_by(*ranked).limit(1)
        if skip := list(skip):
            query = query.where(jobs.c.id.not_in(skip))
        if expected:
            query = query.where(sa.case(expected, value=jobs.c.id, else_=jobs.c.epochs_done) == jobs.c.epochs_done)
        if study:
            query = query.where(jobs.c.study_id == sa.select(studies.c.id).where(studies.c.name == study).scalar_subquery())
        if not resume:
            query = query.where(jobs.c.attempts == 0)
        if engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        row = conn.execute(query).mappings().first()
        if row is None:
            return None
        budget_used = row["attempts"] + 1  # attempts since the job was planned or last retried
        attempt = _next_attempt(conn, row["id"])  # its number in the job's whole history
        claimed = conn.execute(
            jobs.update().where(jobs.c.id == row["id"], jobs.c.state == "pending").values(
                state="running", worker=worker, attempts=budget_used, error=None,
                lease_expires=now() + dt.timedelta(seconds=lease_s),
                started_at=row["started_at"] or now(),
                provenance=json.dumps(provenance or {}, sort_keys=True),
            )
        )
        if claimed.rowcount != 1:  # another dialect without row locks lost the race
            return None
        conn.execute(attempts.insert().values(job_id=row["id"], attempt=attempt, worker=worker, started_at=now(),
                                              slurm_job=slurm_job))
        if decisions_by_job and row["id"] in decisions_by_job:
            conn.execute(decisions.insert().values(study_id=row["study_id"], job_id=row["id"], decided_at=now(),
                                                   decided_by=worker, **decisions_by_job[row["id"]]))
        study_name, study_created = conn.execute(
            sa.select(studies.c.name, studies.c.created_at).where(studies.c.id == row["study_id"])).one()
    job = dict(row)
    job.update(attempts=budget_used, attempt=attempt, study=study_name, study_created_at=study_created)
    return job


def renew_lease(engine: Engine, job_id: int, worker: str, lease_s: float) -> bool:
    """Extend our lease; False when the job is no longer ours (cancelled, or reclaimed). A pruned job
    stays ours until its epoch ends (the runner stops it there), so its lease is renewed too."""
    with engine.begin() as conn:
        result = conn.execute(
            jobs.update().where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.state.in_(HELD_STATES)).values(
                lease_expires=now() + dt.timedelta(seconds=lease_s)
            )
        )
    return result.rowcount == 1


def record_epoch(engine: Engine, job: dict, worker: str, epochs_done: int, points: Iterable, lease_s: float) -> bool:
    """Progress and its evaluation points in one transaction; False if the job is no longer ours.
    A job pruned while it ran is still ours until this epoch boundary: its points are recorded."""
    with engine.begin() as conn:
        ours = conn.execute(
            jobs.update().where(jobs.c.id == job["id"], jobs.c.worker == worker, jobs.c.state.in_(HELD_STATES)).values(
                epochs_done=epochs_done, lease_expires=now() + dt.timedelta(seconds=lease_s)
            )
        )
        if ours.rowcount != 1:
            return False
        insert_points(conn, job["id"], job["flops_per_example"], job_examples_per_epoch(job), points)
    return True


def finish_job(
    engine: Engine, job: dict, worker: str, state: str, epochs_done: int, points: Iterable, message: str = "",
    outcome: str | None = None, from_states: tuple[str, ...] = ("running",),
) -> bool:
    """Close an attempt: `state` is done/diverged/failed, or pending to release the job (interrupted;
    outcome "paused": an anytime study's trajectory that reached its rung, whose attempts start again
    from 0, since reaching a rung is not a failed try), or pruned (a pruned job stopped at its epoch
    boundary; from_states then includes "pruned"). The job's points are inserted (idempotently) in the
    same transaction. False if it was not ours."""
    with engine.begin() as conn:
        values = dict(state=state, worker=None, lease_expires=None, epochs_done=epochs_done, error=message or None)
        if outcome == "paused":
            values["attempts"] = 0
        if state in FINAL_STATES:
            values["finished_at"] = now()
        if state == "pruned":
            values.pop("error")  # the pruning's reason stays
        ours = conn.execute(
            jobs.update().where(jobs.c.id == job["id"], jobs.c.worker == worker, jobs.c.state.in_(from_states)).values(**values)
        )
        if ours.rowcount != 1:
            return False
        insert_points(conn, job["id"], job["flops_per_example"], job_examples_per_epoch(job), points)
        conn.execute(
            attempts.update().where(attempts.c.job_id == job["id"], attempts.c.attempt == job["attempt"]).values(
                ended_at=now(), outcome=outcome or state, message=message or None
            )
        )
    return True


def set_state(engine: Engine, job_id: int, new_state: str, allowed_from: tuple[str, ...]) -> str:
    """Move a job (retry -> pending, cancel -> cancelled) if its state allows; returns the old state."""
    with engine.begin() as conn:
        row = conn.execute(sa.select(jobs.c.state, jobs.c.worker).where(jobs.c.id == job_id)).first()
        if row is None:
            raise StudyError(f"no job {job_id}; `study status --jobs` lists them")
        if row.state not in allowed_from:
            raise StudyError(f"job {job_id} is {row.state}; only {', '.join(allowed_from)} jobs can become {new_state}")
        if row.state == "pruned" and row.worker and new_state == "pending":
            raise StudyError(f"job {job_id} was pruned while running and its worker {row.worker} has not yet reached "
                             "the end of its epoch; retry it once `study status --jobs` shows no worker")
        values: dict = dict(state=new_state)
        if new_state == "pending":
            values.update(attempts=0, error=None, finished_at=None, worker=None, lease_expires=None)
        if new_state == "cancelled":
            values.update(finished_at=now(), lease_expires=None)  # a running worker sees it at its next heartbeat
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))
        if row.state == "running":  # the worker's attempt ends here: it records nothing once it sees the cancel
            _close_open_attempts(conn, job_id, new_state, f"{new_state} by `study {'retry' if new_state == 'pending' else 'cancel'}`")
    return row.state
