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
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .errors import BadInput, Fault, StudyError

DEFAULT_URL = "sqlite:///results.db"
URL_VARIABLE = "STUDY_DB"

JOB_STATES = ("pending", "running", "done", "failed", "diverged", "cancelled", "pruned")

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


def _sqlite_file(engine: Engine) -> str | None:
    """The file of a SQLite engine, None for an in-memory one or another dialect."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    return None if not database or database == ":memory:" or database.startswith("file:") else database


def _check_sqlite_file(url: str, path: str, create: bool, write: bool) -> bool:
    """Refuse, before any work, a database file that is missing (for commands that only use existing
    jobs), not a file, or read-only (with its folder: SQLite writes its log beside it) for a command
    that writes; True when it is read-only and the command only reads."""
    file = Path(path)
    if not file.exists():
        if not create:
            raise BadInput(f"database {url} does not exist (no file {file}); check --db or ${URL_VARIABLE}, "
                           "or `study plan GRID` to create it")
        if not file.parent.is_dir():
            raise BadInput(f"cannot create database {url}: folder {file.parent} does not exist")
    elif not file.is_file():
        raise BadInput(f"database {url}: {file} is not a file")
    folder = file.parent if str(file.parent) else Path(".")
    if write or not file.exists():
        if file.exists() and not os.access(file, os.W_OK):
            raise BadInput(f"database {url} is read-only ({file}); make it writable or copy it somewhere writable")
        if not os.access(folder, os.W_OK):
            raise BadInput(f"database {url} is in a read-only folder ({folder}; SQLite writes its log beside the "
                           "file); make the folder writable or copy the database somewhere writable")
    return file.exists() and not (os.access(file, os.W_OK) and os.access(folder, os.W_OK))


def _read_only_engine(path: str) -> Engine:
    """SQLite opened read-only and immutable: a file on read-only media can be read, never changed."""
    import sqlite3
    import urllib.parse

    uri = f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode=ro&immutable=1"
    engine = sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
                              future=True)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN")

    return engine


def _check_current(engine: Engine, url: str) -> None:
    """A read-only database must already hold every migration: it cannot be brought up to date."""
    with engine.connect() as conn:
        recorded = set(conn.execute(sa.select(migrations_table.c.name)).scalars())
    if unknown := sorted(recorded - {name for name, _ in MIGRATIONS}):
        raise BadInput(f"the database {url} was written by a newer scaling-study (migration {', '.join(unknown)}); "
                       "upgrade scaling-study to use it")
    if missing := [name for name, _ in MIGRATIONS if name not in recorded]:
        raise BadInput(f"the database {url} is read-only and from an older scaling-study (without migration "
                       f"{missing[0]}); copy it somewhere writable to upgrade it")


def connect(url: str | None = None, migrate: bool = True, create: bool = True, write: bool = True) -> Engine:
    """An engine for `url` with the schema migrated to the newest version.

    create=False: a SQLite file that does not exist is refused rather than made (commands that only
    read or change existing jobs); write=False: a read-only file is fine (commands that only read)."""
    url = database_url(url)
    try:
        engine = sa.create_engine(url, future=True)
    except (sa.exc.ArgumentError, ImportError, ModuleNotFoundError) as error:
        raise StudyError(f"cannot use database URL {url!r}: {error}") from None
    read_only = False
    if engine.dialect.name == "sqlite":
        if path := _sqlite_file(engine):
            read_only = _check_sqlite_file(url, path, create, write)
        if read_only:
            engine = _read_only_engine(path)
        else:
            _sqlite_setup(engine)
    try:
        if read_only:
            _check_current(engine, url)
        elif migrate:
            apply_migrations(engine)
    except sa.exc.OperationalError as error:
        raise StudyError(f"cannot open database {url!r}: {error.orig}") from None
    except sa.exc.DatabaseError as error:  # e.g. random bytes, a text file, a truncated database
        if engine.dialect.name == "sqlite":
            raise BadInput(f"{_sqlite_file(engine) or url} is not a readable SQLite database ({error.orig}); "
                           "check --db") from None
        raise StudyError(f"cannot open database {url!r}: {error.orig}") from None
    return engine


def apply_migrations(engine: Engine) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction; returns their names."""
    applied = []
    with engine.connect() as conn:  # a database from a newer version is refused before anything is written
        recorded = set(conn.execute(sa.select(migrations_table.c.name)).scalars()) if sa.inspect(conn).has_table(
            migrations_table.name) else set()
    if unknown := sorted(recorded - {name for name, _ in MIGRATIONS}):
        raise BadInput(f"the database {engine.url.render_as_string(hide_password=True)} was written by a newer "
                         f"scaling-study (migration {', '.join(unknown)}); upgrade scaling-study to use it")
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


# ---- The runner's side: claiming, leases, progress and outcomes (one transaction each) ----

attempts = sa.Table(
    "job_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker", sa.String(200), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("ended_at", sa.DateTime),
    sa.Column("outcome", sa.String(20)),  # done | diverged | failed | released | lost | cancelled
    sa.Column("message", sa.Text),
    sa.Column("slurm_job", sa.String(40)),  # the SLURM job (12345, or 12345_3 in an array) the worker ran in
    sa.UniqueConstraint("job_id", "attempt", name="uq_job_attempts"),
)


def _attempts_table(conn: Connection) -> None:
    if not sa.inspect(conn).has_table("job_attempts"):
        attempts.create(conn)


MIGRATIONS.append(("0002_job_attempts", _attempts_table))

FINAL_STATES = ("done", "failed", "diverged", "cancelled")
HELD_STATES = ("running", "pruned")  # a worker holds a pruned job until its epoch ends


def _worker_alive(worker: str, host: str) -> bool:
    """False only when `worker` ran on this host and its process is gone (so its lease is void)."""
    parts = worker.split(":")
    if len(parts) < 2 or parts[0] != host:
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


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


def reclaim_lost(engine: Engine, host: str, max_attempts: int) -> list[tuple[int, str]]:
    """Jobs whose worker died (lease expired, or its process is gone on this host) go back to
    pending, or to failed after `max_attempts`; returns (job id, new state)."""
    changed = []
    with engine.begin() as conn:
        running = conn.execute(
            sa.select(jobs.c.id, jobs.c.worker, jobs.c.lease_expires, jobs.c.attempts).where(jobs.c.state == "running")
        ).all()
        for row in running:
            expired = row.lease_expires is None or row.lease_expires < now()
            if not expired and _worker_alive(row.worker or "", host):
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
) -> dict | None:
    """Atomically take the next pending job: BEGIN IMMEDIATE on SQLite, FOR UPDATE SKIP LOCKED on
    PostgreSQL. Without `resume`, jobs that ran before (and may have a checkpoint) are left alone.
    `order` ({job id: rank}, an adaptive study's coarse-to-fine order) claims by rank, then id.
    `slurm_job`: the SLURM job the worker runs in, recorded with the attempt."""
    with engine.begin() as conn:
        ranked = [jobs.c.id]
        if order:
            ranked.insert(0, sa.case(order, value=jobs.c.id, else_=len(order)))
        query = sa.select(jobs).where(jobs.c.state == "pending").order_by(*ranked).limit(1)
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


def _examples_per_epoch(job: dict) -> int:
    """Eq. 4's N for a job's points: its examples, less the dropped last partial batch under drop_last
    (the job's spec says), so that the recorded compute is that of the steps actually taken."""
    from .budget import examples_per_epoch

    try:
        train = json.loads(job.get("spec") or "{}").get("train") or {}
    except (ValueError, AttributeError):
        train = {}
    if not train.get("drop_last"):
        return job["examples"]
    return examples_per_epoch(job["examples"], int(train["batch_size"]), True)


def _insert_points(conn: Connection, job_id: int, flops: int, examples: int, points: Iterable) -> int:
    """Insert evaluation points not yet recorded (the unique constraint decides); returns how many were new."""
    from .budget import compute

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
        _insert_points(conn, job["id"], job["flops_per_example"], _examples_per_epoch(job), points)
    return True


def finish_job(
    engine: Engine, job: dict, worker: str, state: str, epochs_done: int, points: Iterable, message: str = "",
    outcome: str | None = None, from_states: tuple[str, ...] = ("running",),
) -> bool:
    """Close an attempt: `state` is done/diverged/failed, or pending to release the job (interrupted),
    or pruned (a pruned job stopped at its epoch boundary; from_states then includes "pruned").
    The job's points are inserted (idempotently) in the same transaction. False if it was not ours."""
    with engine.begin() as conn:
        values = dict(state=state, worker=None, lease_expires=None, epochs_done=epochs_done, error=message or None)
        if state in FINAL_STATES:
            values["finished_at"] = now()
        if state == "pruned":
            values.pop("error")  # the pruning's reason stays
        ours = conn.execute(
            jobs.update().where(jobs.c.id == job["id"], jobs.c.worker == worker, jobs.c.state.in_(from_states)).values(**values)
        )
        if ours.rowcount != 1:
            return False
        _insert_points(conn, job["id"], job["flops_per_example"], _examples_per_epoch(job), points)
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


_JOB_COLUMNS = (jobs, studies.c.name.label("study"), studies.c.created_at.label("study_created_at"))


def job_rows(engine: Engine, study: str | None = None, states: tuple[str, ...] | None = None) -> list[dict]:
    """Jobs with their study name, for status listings."""
    query = sa.select(*_JOB_COLUMNS).select_from(jobs.join(studies)).order_by(jobs.c.id)
    if study:
        query = query.where(studies.c.name == study)
    if states:
        query = query.where(jobs.c.state.in_(states))
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
    if study:
        query = query.where(studies.c.name == study)
    if states:
        query = query.where(jobs.c.state.in_(states))
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


def point_rows(engine: Engine, job_id: int | None = None) -> list[dict]:
    """Evaluation points, oldest first."""
    query = sa.select(evaluations).order_by(evaluations.c.job_id, evaluations.c.epoch, evaluations.c.metric)
    if job_id is not None:
        query = query.where(evaluations.c.job_id == job_id)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


# ---- Throughput calibrations from `study bench`, so that `study plan` can estimate hours ----

calibrations = sa.Table(
    "calibrations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("device", sa.String(200), nullable=False),  # e.g. "NVIDIA H100 80GB HBM3" or "cpu"
    sa.Column("model", sa.String(100), nullable=False),
    sa.Column("resolution", sa.Integer, nullable=False),
    sa.Column("channels", sa.Integer, nullable=False),
    sa.Column("batch_size", sa.Integer, nullable=False),
    sa.Column("precision", sa.String(10), nullable=False),
    sa.Column("images_per_s", sa.Float, nullable=False),  # training, loader and augmentation included
    sa.Column("mfu", sa.Float),  # model FLOP/s over the same process's GEMM FLOP/s
    sa.Column("peak_memory_bytes", sa.BigInteger),
    sa.Column("details", sa.Text),  # JSON: GEMM FLOP/s, loader img/s, versions
    sa.Column("created_at", sa.DateTime, nullable=False),
)


def _calibrations_table(conn: Connection) -> None:
    if not sa.inspect(conn).has_table("calibrations"):
        calibrations.create(conn)


MIGRATIONS.append(("0003_calibrations", _calibrations_table))


def add_calibration(engine: Engine, **values) -> None:
    """Record one `study bench` measurement."""
    with engine.begin() as conn:
        conn.execute(calibrations.insert().values(created_at=now(), **values))


def latest_calibrations(engine: Engine, resolution: int, channels: int, batch_size: int,
                        device: str | None = None) -> tuple[dict[str, dict], list[str]]:
    """The newest calibration per model for this input shape and batch size on one device:
    ({model: row}, every device measured at that shape). Figures from two machines never mix in
    one estimate: the device is the one whose name contains `device` (case-insensitive) and, of
    those, or of all when `device` is None, the one measured most recently."""
    query = (
        sa.select(calibrations)
        .where(calibrations.c.resolution == resolution, calibrations.c.channels == channels,
               calibrations.c.batch_size == batch_size)
        .order_by(calibrations.c.id)
    )
    with engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(query).mappings()]
    devices = list(dict.fromkeys(row["device"] for row in reversed(rows)))  # newest first
    chosen = next((name for name in devices if device is None or device.lower() in name.lower()), None)
    return {row["model"]: row for row in rows if row["device"] == chosen}, devices


# ---- Analysis: every evaluation point as a frame, and results imported from elsewhere ----

FRAME_COLUMNS = ("study", "job_id", "model", "kind", "params", "flops_per_example", "examples", "epochs", "seed",
                 "metric", "error", "compute", "state", "metric_kind")
_KIND_PREFIXES = {"B-": "bottleneck", "S-": "standard"}


metric_kinds = sa.Table(
    "metric_kinds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.ForeignKey("studies.id"), nullable=False),
    sa.Column("metric", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # error (a rate in [0, 1]) | loss | value (any positive number)
    sa.UniqueConstraint("study_id", "metric", name="uq_metric_kinds"),
)
DEFAULT_METRIC_KIND = "error"  # what training records (top-1 and probe errors), and any metric not recorded


def _metric_kinds_table(conn: Connection) -> None:
    if not sa.inspect(conn).has_table("metric_kinds"):
        metric_kinds.create(conn)




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
    value is an error (nothing is written).
    """
    from .budget import compute

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


# ---- Adaptive studies: pruning decisions and their evidence (issue #12) ----

prunings = sa.Table(
    "prunings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("decided_at", sa.DateTime, nullable=False),
    sa.Column("previous_state", sa.String(20), nullable=False),  # pending or running
    sa.Column("epochs_done", sa.Integer, nullable=False),  # where the trajectory was when it was pruned
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),  # the remaining evaluation epoch closest to the envelope
    sa.Column("compute", sa.Float, nullable=False),  # Eq. 4 at that epoch
    sa.Column("predicted", sa.Float, nullable=False),  # predicted error there
    sa.Column("low", sa.Float, nullable=False),  # its bootstrap interval at `confidence` (low: one-sided bound)
    sa.Column("high", sa.Float, nullable=False),
    sa.Column("envelope", sa.Float, nullable=False),  # the envelope's error at that compute
    sa.Column("evidence", sa.Text, nullable=False),  # JSON: the same at every remaining evaluation epoch
    sa.Column("fit", sa.Text, nullable=False),  # JSON: law, parameters, points, resamples, seed, metric
    sa.Column("decided_by", sa.String(200), nullable=False),  # worker name, or "study prune"
)


def _widen_state_check(conn: Connection) -> None:
    """Let jobs.state hold every state of JOB_STATES (0001 wrote the constraint with the states of its day).

    SQLite cannot alter a constraint; widening a CHECK leaves every stored row valid, so the table's
    recorded CREATE statement is rewritten in place (SQLite's documented procedure for dropping or
    relaxing CHECK constraints: writable_schema, then a new schema_version)."""
    allowed = "(" + ", ".join(f"'{state}'" for state in JOB_STATES) + ")"
    if conn.dialect.name == "sqlite":
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").scalar()
        import re

        wanted = re.sub(r"CHECK \(state IN \([^)]*\)\)", f"CHECK (state IN {allowed})", sql)
        if wanted == sql:
            return
        version = conn.exec_driver_sql("PRAGMA schema_version").scalar()
        conn.exec_driver_sql("PRAGMA writable_schema = ON")
        conn.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'jobs'", (wanted,))
        conn.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
        conn.exec_driver_sql("PRAGMA writable_schema = OFF")
    else:
        conn.execute(sa.text("ALTER TABLE jobs DROP CONSTRAINT IF EXISTS ck_jobs_state"))
        conn.execute(sa.text(f"ALTER TABLE jobs ADD CONSTRAINT ck_jobs_state CHECK (state IN {allowed})"))


def _pruning(conn: Connection) -> None:
    _widen_state_check(conn)
    if not sa.inspect(conn).has_table("prunings"):
        prunings.create(conn)


MIGRATIONS.append(("0004_pruning", _pruning))


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


def study_grid_text(engine: Engine, study: str) -> str:
    """The grid TOML recorded for a study (what `study plan` read)."""
    with engine.connect() as conn:
        text = conn.execute(sa.select(studies.c.grid_toml).where(studies.c.name == study)).scalar()
    if text is None:
        raise StudyError(f"no study {study!r}")
    return text


MIGRATIONS.append(("0005_metric_kinds", _metric_kinds_table))  # after 0004_pruning: the list is in name order


def _attempts_slurm_job(conn: Connection) -> None:
    """job_attempts.slurm_job (0002 creates it in a new database)."""
    if "slurm_job" not in {column["name"] for column in sa.inspect(conn).get_columns("job_attempts")}:
        conn.execute(sa.text("ALTER TABLE job_attempts ADD COLUMN slurm_job VARCHAR(40)"))


MIGRATIONS.append(("0006_attempts_slurm_job", _attempts_slurm_job))
