"""Studies and their jobs: planning them, and reading them back for listings."""

from __future__ import annotations

import json
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..errors import Fault, StudyError
from .schema import TRAINING_METRIC_KINDS, attempts, jobs, metric_kinds, now, studies


def add_jobs(engine: Engine, study_name: str, grid_path: str, grid_toml: str, specs: Iterable) -> tuple[int, int]:
    """Record a study and those of its jobs not yet known, in one transaction: (added, existing)."""
    specs = list(specs)
    try:
        return _add_jobs(engine, study_name, grid_path, grid_toml, specs)
    except sa.exc.OperationalError as error:  # a full disk, a lock held too long: the transaction rolled back
        words = str(error.orig).strip().splitlines()[0]
        raise Fault(f"the database refused the plan ({words}); nothing was planned, the database is as it "
                    "was: free space (or retry when it is free) and plan again") from None


def _add_jobs(engine: Engine, study_name: str, grid_path: str, grid_toml: str, specs: list) -> tuple[int, int]:
    with engine.begin() as conn:
        row = conn.execute(sa.select(studies.c.id).where(studies.c.name == study_name)).first()
        if row:
            study_id = row.id
            conn.execute(studies.update().where(studies.c.id == study_id).values(grid_path=grid_path, grid_toml=grid_toml))
        else:
            study_id = conn.execute(
                studies.insert().values(name=study_name, grid_path=grid_path, grid_toml=grid_toml, created_at=now())
            ).inserted_primary_key[0]
        recorded = set(conn.execute(sa.select(metric_kinds.c.metric).where(metric_kinds.c.study_id == study_id)).scalars())
        if kinds := [dict(study_id=study_id, metric=metric, kind=kind)
                     for metric, kind in TRAINING_METRIC_KINDS.items() if metric not in recorded]:
            conn.execute(metric_kinds.insert(), kinds)  # train/loss is a loss, whatever the grid's models
        known = set(conn.execute(sa.select(jobs.c.spec_hash).where(jobs.c.study_id == study_id)).scalars())
        added = 0
        for spec in specs:
            if spec.id in known:
                continue
            known.add(spec.id)
            conn.execute(
                jobs.insert().values(
                    study_id=study_id,
                    spec_hash=spec.id,
                    spec=json.dumps(spec.to_dict(), sort_keys=True),
                    model=spec.model.name,
                    params=spec.params,
                    flops_per_example=spec.flops,
                    examples=spec.examples,
                    epochs=spec.total_epochs,
                    seed=spec.seed,
                    state="pending",
                    attempts=0,
                    epochs_done=0,
                    created_at=now(),
                )
            )
            added += 1
    return added, len(specs) - added


def study_names(engine: Engine) -> list[str]:
    """Every study in the database, oldest first."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(studies.c.name).order_by(studies.c.id)).scalars())


def study_grid_text(engine: Engine, study: str) -> str:
    """The grid TOML a study was last planned from ('' for an imported study); a StudyError for an unknown name."""
    with engine.connect() as conn:
        text = conn.execute(sa.select(studies.c.grid_toml).where(studies.c.name == study)).scalar()
    if text is None:
        raise StudyError(f"no study {study!r}")
    return text


def job_counts(engine: Engine, study_name: str | None = None) -> dict[str, dict[str, int]]:
    """Jobs per state, per study: {study: {state: count}}."""
    query = (
        sa.select(studies.c.name, jobs.c.state, sa.func.count())
        .select_from(jobs.join(studies))
        .group_by(studies.c.name, jobs.c.state)
        .order_by(studies.c.name)
    )
    if study_name:
        query = query.where(studies.c.name == study_name)
    counts: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for name, state, count in conn.execute(query):
            counts.setdefault(name, {})[state] = count
    return counts


_JOB_COLUMNS = (jobs, studies.c.name.label("study"), studies.c.created_at.label("study_created_at"))


def _selected(query: sa.Select, study: str | None, states: tuple[str, ...] | None) -> sa.Select:
    if study:
        query = query.where(studies.c.name == study)
    if states:
        query = query.where(jobs.c.state.in_(states))
    return query


def job_rows(engine: Engine, study: str | None = None, states: tuple[str, ...] | None = None) -> list[dict]:
    """Jobs with their study name, for status listings."""
    query = _selected(sa.select(*_JOB_COLUMNS).select_from(jobs.join(studies)).order_by(jobs.c.id), study, states)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def job_listing(engine: Engine, study: str | None = None, states: tuple[str, ...] | None = None,
                limit: int | None = None) -> list[dict]:
    """What `study status` lists, in one query: the first `limit` jobs by id, without their specs, each
    with the SLURM job of its running attempt (`slurm_job`, None outside SLURM or when not running)."""
    columns = [c for c in jobs.c if c.name not in ("spec", "provenance")]
    running_in = (sa.select(attempts.c.slurm_job).where(attempts.c.job_id == jobs.c.id, attempts.c.outcome.is_(None))
                  .order_by(attempts.c.attempt.desc()).limit(1).scalar_subquery().label("slurm_job"))
    query = (sa.select(*columns, studies.c.name.label("study"), running_in).select_from(jobs.join(studies))
             .order_by(jobs.c.id))
    query = _selected(query, study, states)
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def job_row(engine: Engine, job_id: int) -> dict:
    """One job, or a StudyError naming it."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(*_JOB_COLUMNS).select_from(jobs.join(studies)).where(jobs.c.id == job_id)
        ).mappings().first()
    if row is None:
        raise StudyError(f"no job {job_id}; `study status --jobs` lists them")
    return dict(row)


def attempt_rows(engine: Engine, job_id: int | None = None) -> list[dict]:
    """Every attempt of a job (or of all jobs): who ran it, when, and how it ended."""
    query = sa.select(attempts).order_by(attempts.c.job_id, attempts.c.attempt)
    if job_id is not None:
        query = query.where(attempts.c.job_id == job_id)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]
