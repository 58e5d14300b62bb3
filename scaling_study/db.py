"""The results database: the one module that talks SQL (SQLAlchemy 2.x Core, any URL).

SQLite (the default, `results.db`) runs in WAL mode with a busy timeout, and every transaction
takes the write lock up front (BEGIN IMMEDIATE) so that concurrent workers serialise instead of
failing mid-transaction. The schema is built by ordered, named migrations recorded in a table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .errors import StudyError

DEFAULT_URL = "sqlite:///results.db"
URL_VARIABLE = "STUDY_DB"

JOB_STATES = ("pending", "running", "done", "failed", "diverged", "cancelled")

metadata = sa.MetaData()

migrations_table = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("applied_at", sa.DateTime, nullable=False),
)

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("grid_path", sa.Text, nullable=False),
    sa.Column("grid_toml", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.ForeignKey("studies.id"), nullable=False),
    sa.Column("spec_hash", sa.String(32), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # JobSpec.to_dict() as JSON
    sa.Column("model", sa.String(100), nullable=False),
    sa.Column("params", sa.BigInteger, nullable=False),
    sa.Column("flops_per_example", sa.BigInteger, nullable=False),
    sa.Column("examples", sa.BigInteger, nullable=False),
    sa.Column("epochs", sa.Integer, nullable=False),  # length of the trajectory
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("state", sa.String(20), nullable=False, default="pending", index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("epochs_done", sa.Integer, nullable=False, default=0),
    sa.Column("worker", sa.String(200)),
    sa.Column("lease_expires", sa.DateTime),
    sa.Column("error", sa.Text),
    sa.Column("provenance", sa.Text),  # JSON: code version, library versions, device
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("started_at", sa.DateTime),
    sa.Column("finished_at", sa.DateTime),
    sa.UniqueConstraint("study_id", "spec_hash", name="uq_jobs_study_spec"),
    sa.CheckConstraint(f"state IN {JOB_STATES}", name="ck_jobs_state"),
)

evaluations = sa.Table(
    "evaluations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("metric", sa.String(100), nullable=False),  # e.g. upstream/top1, cifar100/linear
    sa.Column("value", sa.Float, nullable=False),  # an error rate in [0, 1] unless the name says otherwise
    sa.Column("compute", sa.Float, nullable=False),  # Eq. 4 at this epoch, multiply-accumulates
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("job_id", "epoch", "metric", name="uq_evaluations_point"),
)


def _initial(conn: Connection) -> None:
    for table in (studies, jobs, evaluations):
        table.create(conn)  # with its indexes


# Ordered, named, append-only: a migration, once shipped, is never edited. 0001 creates the
# tables as defined above, so a later migration that adds to an existing table must check
# (sa.inspect) whether a fresh database already has what it adds.
MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_initial", _initial),
]


def now() -> dt.datetime:
    """UTC wall time, naive (as SQLite stores it)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def database_url(url: str | None = None) -> str:
    """The URL to use: --db, else $STUDY_DB, else sqlite:///results.db."""
    return url or os.environ.get(URL_VARIABLE) or DEFAULT_URL


def _sqlite_setup(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 60000")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def connect(url: str | None = None, migrate: bool = True) -> Engine:
    """An engine for `url` with the schema migrated to the newest version."""
    url = database_url(url)
    try:
        engine = sa.create_engine(url, future=True)
    except (sa.exc.ArgumentError, ImportError, ModuleNotFoundError) as error:
        raise StudyError(f"cannot use database URL {url!r}: {error}") from None
    if engine.dialect.name == "sqlite":
        _sqlite_setup(engine)
    try:
        if migrate:
            apply_migrations(engine)
    except sa.exc.OperationalError as error:
        raise StudyError(f"cannot open database {url!r}: {error.orig}") from None
    return engine


def apply_migrations(engine: Engine) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction; returns their names."""
    applied = []
    with engine.begin() as conn:
        migrations_table.create(conn, checkfirst=True)
    for name, migration in MIGRATIONS:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242)"))  # one migrator at a time
            done = conn.execute(sa.select(migrations_table.c.name).where(migrations_table.c.name == name))
            if done.first():
                continue
            migration(conn)
            conn.execute(migrations_table.insert().values(name=name, applied_at=now()))
            applied.append(name)
    return applied


def add_jobs(engine: Engine, study_name: str, grid_path: str, grid_toml: str, specs: Iterable) -> tuple[int, int]:
    """Record a study and those of its jobs not yet known, in one transaction: (added, existing)."""
    specs = list(specs)
    with engine.begin() as conn:
        row = conn.execute(sa.select(studies.c.id).where(studies.c.name == study_name)).first()
        if row:
            study_id = row.id
            conn.execute(studies.update().where(studies.c.id == study_id).values(grid_path=grid_path, grid_toml=grid_toml))
        else:
            study_id = conn.execute(
                studies.insert().values(name=study_name, grid_path=grid_path, grid_toml=grid_toml, created_at=now())
            ).inserted_primary_key[0]
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


def study_names(engine: Engine) -> list[str]:
    """Every study in the database, oldest first."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(studies.c.name).order_by(studies.c.id)).scalars())
