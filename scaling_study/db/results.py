"""Evaluation points: recording them, reading them back (every point as one frame), and importing them."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..budget import compute
from ..errors import StudyError
from .schema import DEFAULT_METRIC_KIND, evaluations, jobs, metric_kinds, now, studies

FRAME_COLUMNS = ("study", "job_id", "model", "kind", "params", "flops_per_example", "examples", "epochs", "seed",
                 "metric", "error", "compute", "state", "metric_kind")
_KIND_PREFIXES = {"B-": "bottleneck", "S-": "standard"}


def insert_points(conn: Connection, job_id: int, flops: int, examples: int, points: Iterable) -> int:
    """Insert evaluation points not yet recorded (the unique constraint decides); returns how many were new."""
    rows = [
        dict(job_id=job_id, epoch=p.epoch, metric=p.metric, value=float(p.value),
             compute=compute(flops, examples, p.epoch), created_at=now())
        for p in points
    ]
    if not rows:
        return 0
    if conn.dialect.name in ("sqlite", "postgresql"):
        dialect = __import__(f"sqlalchemy.dialects.{conn.dialect.name}", fromlist=["insert"])
        statement = dialect.insert(evaluations).on_conflict_do_nothing(index_elements=["job_id", "epoch", "metric"])
        return conn.execute(statement, rows).rowcount
    existing = set(
        conn.execute(sa.select(evaluations.c.epoch, evaluations.c.metric).where(evaluations.c.job_id == job_id)).all()
    )
    new = [r for r in rows if (r["epoch"], r["metric"]) not in existing]
    if new:
        conn.execute(evaluations.insert(), new)
    return len(new)


def point_rows(engine: Engine, job_id: int | None = None) -> list[dict]:
    """Evaluation points, oldest first."""
    query = sa.select(evaluations).order_by(evaluations.c.job_id, evaluations.c.epoch, evaluations.c.metric)
    if job_id is not None:
        query = query.where(evaluations.c.job_id == job_id)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def metric_points(engine: Engine, job_ids: Iterable[int], metrics: Iterable[str]) -> list[tuple[int, str, int, float]]:
    """(job id, metric, epoch, value) of these jobs' points of these metrics, by job, then epoch."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            sa.select(evaluations.c.job_id, evaluations.c.metric, evaluations.c.epoch, evaluations.c.value)
            .where(evaluations.c.metric.in_(list(metrics)), evaluations.c.job_id.in_(list(job_ids)))
            .order_by(evaluations.c.job_id, evaluations.c.epoch)
        )]


def point_stamp(engine: Engine, study: str) -> tuple[int, dt.datetime | None]:
    """How many points a study has and when the newest was recorded (naive UTC): changes with every new point."""
    with engine.connect() as conn:
        count, newest = conn.execute(
            sa.select(sa.func.count(), sa.func.max(evaluations.c.created_at))
            .select_from(evaluations.join(jobs).join(studies)).where(studies.c.name == study)
        ).one()
    return count, newest


def _model_kind(model: str, spec: str) -> str:
    """bottleneck / standard from the job's spec, else from the model's name (B-... / S-...), else unknown."""
    try:
        described = json.loads(spec).get("model")
    except (ValueError, AttributeError):
        described = None
    if isinstance(described, dict) and described.get("kind"):
        return str(described["kind"])
    return next((kind for prefix, kind in _KIND_PREFIXES.items() if model.startswith(prefix)), "unknown")


def evaluations_frame(engine: Engine, study: str | None = None, metric: str | None = None):
    """Every evaluation point with its job's description: one row per (job, epoch, metric), `epochs` = T."""
    import pandas as pd  # only the analysis needs pandas

    query = (
        sa.select(
            studies.c.name.label("study"), jobs.c.id.label("job_id"), jobs.c.model, jobs.c.params,
            jobs.c.flops_per_example, jobs.c.examples, evaluations.c.epoch.label("epochs"), jobs.c.seed,
            evaluations.c.metric, evaluations.c.value.label("error"), evaluations.c.compute, jobs.c.state,
        )
        .select_from(evaluations.join(jobs, evaluations.c.job_id == jobs.c.id).join(studies))
        .order_by(studies.c.name, jobs.c.id, evaluations.c.metric, evaluations.c.epoch)
    )
    specs = sa.select(jobs.c.id, jobs.c.model, jobs.c.spec).select_from(jobs.join(studies))
    recorded = sa.select(studies.c.name, metric_kinds.c.metric, metric_kinds.c.kind).select_from(metric_kinds.join(studies))
    if study:
        query = query.where(studies.c.name == study)
        specs = specs.where(studies.c.name == study)
        recorded = recorded.where(studies.c.name == study)
    if metric:
        query = query.where(evaluations.c.metric == metric)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        kinds = {row.id: _model_kind(row.model, row.spec) for row in conn.execute(specs)}
        metric_kind = {(row.name, row.metric): row.kind for row in conn.execute(recorded)}
    frame = pd.DataFrame(rows, columns=[c for c in FRAME_COLUMNS if c not in ("kind", "metric_kind")])
    frame.insert(3, "kind", frame["job_id"].map(kinds))
    frame["metric_kind"] = [metric_kind.get(key, DEFAULT_METRIC_KIND) for key in zip(frame["study"], frame["metric"])]
    types = {"study": str, "model": str, "kind": str, "metric": str, "state": str, "metric_kind": str, "job_id": "int64", "params": "int64", "flops_per_example": "int64", "examples": "int64",
             "epochs": "int64", "seed": "int64", "error": "float64", "compute": "float64"}
    return frame.astype(types)


def import_trajectories(engine: Engine, source: str, trajectories: Iterable[dict]) -> tuple[int, int, int]:
    """Record imported results in one transaction: (jobs added, points added, points already present).

    Each trajectory is a dict with study, spec (a dict), spec_hash, model, params, flops_per_example,
    examples, seed and points [(epoch, metric, error)], optionally metric_kinds {metric: kind}, recorded
    per study (a metric already recorded with another kind is an error). Its job is `done`; a study or job that exists
    is reused, a point that exists with the same value is skipped, and one that exists with another
    value, or a model recorded with other params or flops_per_example, is an error (nothing is written).
    """
    jobs_added = points_added = points_present = 0
    conflicts: list[str] = []
    with engine.begin() as conn:
        study_ids: dict[str, int] = {}
        for trajectory in trajectories:
            name = trajectory["study"]
            if name not in study_ids:
                row = conn.execute(sa.select(studies.c.id).where(studies.c.name == name)).first()
                study_ids[name] = row.id if row else conn.execute(
                    studies.insert().values(name=name, grid_path=source, grid_toml="", created_at=now())
                ).inserted_primary_key[0]
            study_id = study_ids[name]
            for metric, kind in trajectory.get("metric_kinds", {}).items():
                known = conn.execute(sa.select(metric_kinds.c.kind).where(
                    metric_kinds.c.study_id == study_id, metric_kinds.c.metric == metric)).scalar()
                if known is None:
                    has_points = conn.execute(sa.select(evaluations.c.id).select_from(evaluations.join(jobs)).where(
                        jobs.c.study_id == study_id, evaluations.c.metric == metric).limit(1)).first()
                    known = DEFAULT_METRIC_KIND if has_points else None
                    if known is None:
                        conn.execute(metric_kinds.insert().values(study_id=study_id, metric=metric, kind=kind))
                        known = kind
                if known != kind:
                    raise StudyError(f"metric {metric!r} of study {name!r} is recorded with kind {known}, not {kind}; "
                                     "nothing imported")
            described = conn.execute(sa.select(jobs.c.params, jobs.c.flops_per_example).where(
                jobs.c.study_id == study_id, jobs.c.model == trajectory["model"]).limit(1)).first()
            if described and tuple(described) != (trajectory["params"], trajectory["flops_per_example"]):
                raise StudyError(f"model {trajectory['model']} of study {name!r} has params {trajectory['params']} and "
                                 f"flops_per_example {trajectory['flops_per_example']} here, but {described.params} "
                                 f"and {described.flops_per_example} in the database; nothing imported")
            last = max(epoch for epoch, _, _ in trajectory["points"])
            row = conn.execute(
                sa.select(jobs.c.id, jobs.c.epochs).where(jobs.c.study_id == study_id, jobs.c.spec_hash == trajectory["spec_hash"])
            ).first()
            if row is None:
                stamp = now()
                job_id = conn.execute(jobs.insert().values(
                    study_id=study_id, spec_hash=trajectory["spec_hash"], spec=json.dumps(trajectory["spec"], sort_keys=True),
                    model=trajectory["model"], params=trajectory["params"], flops_per_example=trajectory["flops_per_example"],
                    examples=trajectory["examples"], epochs=last, seed=trajectory["seed"], state="done", attempts=0,
                    epochs_done=last, provenance=json.dumps({"imported_from": source}), created_at=stamp,
                    started_at=stamp, finished_at=stamp,
                )).inserted_primary_key[0]
                jobs_added += 1
                existing: dict[tuple[int, str], float] = {}
            else:
                job_id = row.id
                if last > row.epochs:
                    conn.execute(jobs.update().where(jobs.c.id == job_id).values(epochs=last, epochs_done=last))
                existing = {
                    (r.epoch, r.metric): r.value
                    for r in conn.execute(sa.select(evaluations.c.epoch, evaluations.c.metric, evaluations.c.value)
                                          .where(evaluations.c.job_id == job_id))
                }
            new = []
            for epoch, metric, value in trajectory["points"]:
                known = existing.get((epoch, metric))
                if known is None:
                    new.append(dict(job_id=job_id, epoch=epoch, metric=metric, value=float(value), created_at=now(),
                                    compute=compute(trajectory["flops_per_example"], trajectory["examples"], epoch)))
                elif abs(known - value) <= 1e-12 * max(1.0, abs(known)):
                    points_present += 1
                else:
                    conflicts.append(f"{trajectory['model']} N={trajectory['examples']} seed={trajectory['seed']} "
                                     f"T={epoch} {metric}: {value!r} here, {known!r} in the database")
            if new:
                conn.execute(evaluations.insert(), new)
                points_added += len(new)
        if conflicts:
            shown = "; ".join(conflicts[:3]) + (f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else "")
            raise StudyError(f"{len(conflicts)} imported point(s) differ from points already recorded "
                             f"({shown}); nothing imported")
    return jobs_added, points_added, points_present
