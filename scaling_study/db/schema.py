"""The tables, and the ordered, named migrations that build them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import BadInput

JOB_STATES = ("pending", "running", "done", "failed", "diverged", "cancelled", "pruned")
DEFAULT_METRIC_KIND = "error"  # what training records (top-1 and probe errors), and any metric not recorded
TRAINING_METRIC_KINDS = {"train/loss": "loss"}  # what training records that is not an error rate: kept per planned study

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

calibrations = sa.Table(  # throughput measured by `study bench`, so that `study plan` can estimate hours
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

prunings = sa.Table(  # an adaptive study's pruning decisions, with their evidence
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

decisions = sa.Table(  # an anytime study's choices of the next rung, with the scores that chose it
    "decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.ForeignKey("studies.id"), nullable=False, index=True),
    sa.Column("job_id", sa.ForeignKey("jobs.id"), nullable=False),  # the trajectory claimed
    sa.Column("epoch", sa.Integer, nullable=False),  # the rung it runs to
    sa.Column("cost", sa.Float, nullable=False),  # Eq. 4 of that rung
    sa.Column("score", sa.Float),  # its score; null in the warm-up, before the law can be fitted
    sa.Column("rank", sa.Integer, nullable=False),  # its place among the actions (0: the best; more when ahead ones were taken)
    sa.Column("rule", sa.String(20), nullable=False),  # uncertainty | warm-up
    sa.Column("spent", sa.Float, nullable=False),  # the study's compute spent and claimed when it was decided
    sa.Column("actions", sa.Text, nullable=False),  # JSON: the best-scored actions (job_id, epoch, cost, score)
    sa.Column("fit", sa.Text, nullable=False),  # JSON: law, parameters, points, resamples, seed, noise, spread
    sa.Column("decided_at", sa.DateTime, nullable=False),
    sa.Column("decided_by", sa.String(200), nullable=False),  # worker name
)

metric_kinds = sa.Table(
    "metric_kinds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.ForeignKey("studies.id"), nullable=False),
    sa.Column("metric", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # error (a rate in [0, 1]) | loss | value (any positive number)
    sa.UniqueConstraint("study_id", "metric", name="uq_metric_kinds"),
)


def now() -> dt.datetime:
    """UTC wall time, naive (as SQLite stores it)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


# ---- Migrations ----

def _initial(conn: Connection) -> None:
    for table in (studies, jobs, evaluations):
        table.create(conn)  # with its indexes


def _create_if_missing(table: sa.Table) -> Callable[[Connection], None]:
    """A migration that adds `table`, unless 0001 already made it (a fresh database)."""
    def migration(conn: Connection) -> None:
        if not sa.inspect(conn).has_table(table.name):
            table.create(conn)
    return migration


def _widen_state_check(conn: Connection) -> None:
    """Let jobs.state hold every state of JOB_STATES (0001 wrote the constraint with the states of its day).

    SQLite cannot alter a constraint; widening a CHECK leaves every stored row valid, so the table's
    recorded CREATE statement is rewritten in place (SQLite's documented procedure for dropping or
    relaxing CHECK constraints: writable_schema, then a new schema_version)."""
    allowed = "(" + ", ".join(f"'{state}'" for state in JOB_STATES) + ")"
    if conn.dialect.name == "sqlite":
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").scalar()
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
    _create_if_missing(prunings)(conn)


def _attempts_slurm_job(conn: Connection) -> None:
    """job_attempts.slurm_job (0001/0002 already create it in a new database)."""
    if "slurm_job" not in {column["name"] for column in sa.inspect(conn).get_columns("job_attempts")}:
        conn.execute(sa.text("ALTER TABLE job_attempts ADD COLUMN slurm_job VARCHAR(40)"))


def _training_metric_kinds(conn: Connection) -> None:
    """Record train/loss as a loss (not an error rate) in every planned study and every study with such points."""
    for metric, kind in TRAINING_METRIC_KINDS.items():
        with_points = sa.select(jobs.c.study_id).join(evaluations, evaluations.c.job_id == jobs.c.id).where(
            evaluations.c.metric == metric)
        recorded = sa.select(metric_kinds.c.study_id).where(metric_kinds.c.metric == metric)
        wanted = conn.execute(sa.select(studies.c.id).where(
            sa.or_(studies.c.grid_toml != "", studies.c.id.in_(with_points)), studies.c.id.not_in(recorded))).scalars()
        rows = [dict(study_id=study_id, metric=metric, kind=kind) for study_id in wanted]
        if rows:
            conn.execute(metric_kinds.insert(), rows)


# Every migration, in the order it runs. A database records the names it has applied
# (schema_migrations), so a name, once shipped, never changes and its migration is never edited.
# To change the schema: edit the table above, then append ("000N_what", function) here; 0001
# creates its tables as they are defined above, so a migration that adds to an existing table
# must check (sa.inspect) whether a fresh database already has what it adds.
MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_initial", _initial),
    ("0002_job_attempts", _create_if_missing(attempts)),
    ("0003_calibrations", _create_if_missing(calibrations)),
    ("0004_pruning", _pruning),
    ("0005_metric_kinds", _create_if_missing(metric_kinds)),
    ("0006_attempts_slurm_job", _attempts_slurm_job),
    ("0007_training_metric_kinds", _training_metric_kinds),
    ("0008_decisions", _create_if_missing(decisions)),
]


def _recorded(conn: Connection) -> set[str]:
    if not sa.inspect(conn).has_table(migrations_table.name):
        return set()
    return set(conn.execute(sa.select(migrations_table.c.name)).scalars())


def _newer_than_this_code(recorded: set[str], url: str) -> None:
    """Refuse a database from a newer scaling-study (a migration this code does not know)."""
    if unknown := sorted(recorded - {name for name, _ in MIGRATIONS}):
        raise BadInput(f"the database {url} was written by a newer scaling-study (migration {', '.join(unknown)}); "
                       "upgrade scaling-study to use it")


def check_current(engine: Engine, url: str) -> None:
    """A read-only database must already hold every migration: it cannot be brought up to date."""
    with engine.connect() as conn:
        recorded = set(conn.execute(sa.select(migrations_table.c.name)).scalars())
    _newer_than_this_code(recorded, url)
    if missing := [name for name, _ in MIGRATIONS if name not in recorded]:
        raise BadInput(f"the database {url} is read-only and from an older scaling-study (without migration "
                       f"{missing[0]}); copy it somewhere writable to upgrade it")


def apply_migrations(engine: Engine) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction; returns their names."""
    applied = []
    with engine.connect() as conn:  # a database from a newer version is refused before anything is written
        _newer_than_this_code(_recorded(conn), engine.url.render_as_string(hide_password=True))
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
