"""The results database: the one package that talks SQL (SQLAlchemy 2.x Core, any URL).

SQLite (the default, `results.db`) runs in WAL mode with a busy timeout, and every transaction
takes the write lock up front (BEGIN IMMEDIATE) so that concurrent workers serialise instead of
failing mid-transaction. The schema is built by ordered, named migrations recorded in a table.

schema.py holds the tables and migrations, engine.py opens a database, job_list.py plans and lists
jobs, claims.py is the runner's side of a job, results.py its evaluation points, pruning.py an
adaptive study's decisions (prunings, and an anytime study's choices), throughput.py the calibrations of `study bench`.
"""

from ..errors import StudyError
from .claims import FINAL_STATES, HELD_STATES, claim_job, finish_job, reclaim_lost, record_epoch, renew_lease, set_state
from .engine import DEFAULT_URL, URL_VARIABLE, connect, database_url
from .job_list import add_jobs, attempt_rows, job_counts, job_listing, job_row, job_rows, study_grid_text, study_names
from .pruning import decision_rows, prune_jobs, pruning_rows
from .results import FRAME_COLUMNS, evaluations_frame, import_trajectories, metric_points, point_rows, point_stamp
from .schema import (
    DEFAULT_METRIC_KIND, JOB_STATES, MIGRATIONS, apply_migrations, attempts, calibrations, decisions, evaluations, jobs, metadata,
    metric_kinds, migrations_table, now, prunings, studies,
)
from .throughput import add_calibration, latest_calibrations

__all__ = [
    "DEFAULT_METRIC_KIND", "DEFAULT_URL", "FINAL_STATES", "FRAME_COLUMNS", "HELD_STATES", "JOB_STATES", "MIGRATIONS",
    "URL_VARIABLE", "StudyError", "add_calibration", "add_jobs", "apply_migrations", "attempt_rows", "attempts",
    "calibrations", "claim_job", "connect", "database_url", "decision_rows", "decisions", "evaluations",
    "evaluations_frame", "finish_job",
    "import_trajectories", "job_counts", "job_listing", "job_row", "job_rows", "jobs", "latest_calibrations",
    "metadata", "metric_kinds", "metric_points", "migrations_table", "now", "point_rows", "point_stamp", "prune_jobs",
    "prunings", "pruning_rows", "reclaim_lost", "record_epoch", "renew_lease", "set_state", "studies",
    "study_grid_text", "study_names",
]
