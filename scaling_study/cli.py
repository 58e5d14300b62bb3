"""The `study` command line: the only module that knows the CLI. It parses, calls and prints."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import budget, db
from .errors import StudyError
from .grid import load_grid
from .plan import expand, summarize

app = typer.Typer(
    help="Plan, run, resume and fit compute-scaling studies of MLPs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

DbOption = Annotated[
    Optional[str],
    typer.Option("--db", help=f"SQLAlchemy URL of the results database [default: ${db.URL_VARIABLE} or {db.DEFAULT_URL}]"),
]


def user_errors(command: Callable) -> Callable:
    """Turn a StudyError into one line on stderr and its exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except StudyError as error:
            errors.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None

    return wrapper


def _pflops(value: float) -> str:
    return f"{value / budget.PFLOP:,.3g}"


@app.command()
@user_errors
def plan(
    grid_file: Annotated[Path, typer.Argument(help="Grid TOML file, e.g. grids/cifar100.toml")],
    db_url: DbOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan without writing to the database")] = False,
) -> None:
    """Expand a grid into jobs in the database and print what it will cost."""
    grid = load_grid(grid_file)
    specs = expand(grid)
    summary = summarize(specs)
    engine = None if dry_run else db.connect(db_url)
    first = specs[0]
    measured = db.latest_calibrations(engine, first.resolution, first.channels, grid.train.batch_size) if engine else {}
    hours: dict[str, float] = {}
    for spec in specs:  # training images over measured img/s; evaluation time is not included
        if spec.model.name in measured:
            seconds = spec.examples * spec.total_epochs / measured[spec.model.name]["images_per_s"]
            hours[spec.model.name] = hours.get(spec.model.name, 0.0) + seconds / 3600
    estimate = len(hours) == len(summary.rows)
    table = Table(title=f"study {grid.study.name!r}: {grid.pretrain.dataset} at {first.resolution}px")
    columns = ["model", "params", "FLOP(f)", "jobs", "eval points", "PFLOPs (naive)", "PFLOPs (run)"]
    for column in columns + (["hours"] if estimate else []):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
    for row in summary.rows:
        table.add_row(
            row.name, f"{row.params / 1e6:,.2f}M", f"{row.flops / 1e6:,.2f}M", str(row.jobs), str(row.points),
            _pflops(row.naive_compute), _pflops(row.compute), *([f"{hours[row.name]:,.1f}"] if estimate else []),
        )
    table.add_row(
        "total", "", "", str(summary.jobs), str(summary.points),
        _pflops(summary.naive_compute), _pflops(summary.compute),
        *([f"{sum(hours.values()):,.1f}"] if estimate else []), style="bold",
    )
    console.print(table)
    saved = 1 - summary.compute / summary.naive_compute
    console.print(
        f"{summary.jobs} trajectories, {summary.points} evaluation points, "
        f"{_pflops(summary.compute)} PFLOPs to run ({_pflops(summary.naive_compute)} PFLOPs if every "
        f"epoch count were its own run; shared trajectories save {saved:.0%}). "
        "Compute per Eq. 4, C = FLOP(f)*3*N*T, one multiply-accumulate = one FLOP."
    )
    if estimate:
        devices = sorted({measured[name]["device"] for name in hours})
        console.print(f"estimated {sum(hours.values()):,.1f} hours of training on {', '.join(devices)} (study bench)")
    elif engine is not None:
        console.print("no throughput calibration for these models yet: `study bench GRID` measures one")
    if engine is None:
        return
    added, existing = db.add_jobs(engine, grid.study.name, str(grid_file), grid.text, specs)
    console.print(f"added {added} jobs ({existing} already planned) to {engine.url.render_as_string(hide_password=True)}")


@app.command()
@user_errors
def status(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Only this study")] = None,
    all_jobs: Annotated[bool, typer.Option("--jobs", help="List every job")] = False,
) -> None:
    """Jobs by state per study; running jobs with worker, progress and ETA; failures with reason."""
    import datetime as dt

    engine = db.connect(db_url)
    counts = db.job_counts(engine, study)
    if not counts:
        console.print("no jobs planned yet: run `study plan GRID` first")
        return
    table = Table(title="jobs by state")
    table.add_column("study")
    for state in db.JOB_STATES:
        table.add_column(state, justify="right")
    for name, by_state in counts.items():
        table.add_row(name, *(str(by_state.get(state, 0)) for state in db.JOB_STATES))
    console.print(table)
    shown = None if all_jobs else ("running", "failed", "diverged")
    rows = db.job_rows(engine, study, shown)
    if not rows:
        return
    jobs_table = Table(title="jobs" if all_jobs else "running and failed jobs")
    for column in ("id", "study", "model", "N", "state", "epochs", "worker", "ETA", "reason"):
        jobs_table.add_column(column, overflow="fold")
    for row in rows:
        eta = ""
        if row["state"] == "running" and row["epochs_done"] and row["started_at"]:
            elapsed = (db.now() - row["started_at"]).total_seconds()
            left = elapsed / row["epochs_done"] * (row["epochs"] - row["epochs_done"])
            eta = str(dt.timedelta(seconds=round(left)))
        jobs_table.add_row(
            str(row["id"]), row["study"], row["model"], f"{row['examples']:,}", row["state"],
            f"{row['epochs_done']}/{row['epochs']}", row["worker"] or "", eta, row["error"] or "",
        )
    console.print(jobs_table)


class _RichEvents:
    """Runner callbacks drawn as rich progress bars: jobs overall, and the current job's epochs."""

    def __init__(self, progress, total_jobs: int):
        self.progress = progress
        self.overall = progress.add_task("jobs", total=total_jobs, rate="")
        self.current = None

    def job_started(self, job, spec) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
        label = f"job {job['id']} {spec.model.name} N={spec.examples:,}"
        self.current = self.progress.add_task(label, total=spec.total_epochs, rate="")

    def progress(self, job, progress) -> None:
        done = progress.epoch + progress.step / max(progress.steps_per_epoch, 1)
        self.progress.update(self.current, completed=done, rate=f"{progress.images_per_s:,.0f} img/s")

    def job_ended(self, job, outcome: str, message: str) -> None:
        self.progress.advance(self.overall)
        text = f"job {job['id']} {job['model']} N={job['examples']:,}: {outcome}" + (f" ({message})" if message else "")
        self.progress.console.print(text, markup=False, highlight=False)


def _parse_until(value: str | None):
    import datetime as dt

    if not value:
        return None
    try:
        hour, minute = (int(part) for part in value.split(":"))
        moment = dt.datetime.now().replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError:
        raise StudyError(f"--until {value!r}: expected a local time HH:MM") from None
    return moment if moment > dt.datetime.now() else moment + dt.timedelta(days=1)


@app.command()
@user_errors
def run(
    db_url: DbOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Also continue interrupted jobs from their last checkpoint")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda, cuda:1, ...")] = "auto",
    study: Annotated[Optional[str], typer.Option(help="Only jobs of this study")] = None,
    max_jobs: Annotated[Optional[int], typer.Option("--max-jobs", min=1, help="Stop after this many jobs")] = None,
    until: Annotated[Optional[str], typer.Option(help="Checkpoint and stop at this local time, HH:MM")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Checkpoints and logs, one folder per job", envvar="STUDY_RUNS")] = Path("runs"),
    lease: Annotated[float, typer.Option(help="Seconds a worker's claim lasts without a heartbeat", min=1)] = 120.0,
    checkpoint_every: Annotated[float, typer.Option(help="Also checkpoint mid-epoch after this many seconds", min=1)] = 600.0,
    max_attempts: Annotated[int, typer.Option(help="A job whose worker died this often is marked failed", min=1)] = 3,
) -> None:
    """Train pending jobs one after another, checkpointing so a killed run continues where it stopped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from . import runner

    options = runner.RunOptions(
        db_url=db_url, device=device, resume=resume, study=study, max_jobs=max_jobs, until=_parse_until(until),
        runs_dir=runs_dir, lease_s=lease, checkpoint_every_s=checkpoint_every, max_attempts=max_attempts,
    )
    engine = db.connect(db_url)
    pending = [r for r in db.job_rows(engine, study, ("pending",)) if resume or r["attempts"] == 0]
    total = min(len(pending), max_jobs or len(pending))
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        summary = runner.run(options, _RichEvents(progress, total), engine=engine)
    console.print(
        f"{len(summary.done)} done, {len(summary.diverged)} diverged, {len(summary.failed)} failed, "
        f"{len(summary.released)} interrupted (checkpointed)" + (f"; stopped: {summary.stop_reason}" if summary.stop_reason else "")
    )
    if summary.waiting_for_resume:
        console.print(f"{summary.waiting_for_resume} interrupted jobs wait: `study run --resume` continues them")
    if summary.fatal:
        raise StudyError(summary.fatal)
    if summary.failed:
        raise StudyError(f"{len(summary.failed)} jobs failed ({', '.join(map(str, summary.failed))}): `study status` shows why")
    if summary.stop_reason:
        raise typer.Exit(143 if "SIGTERM" in summary.stop_reason else 130 if "SIGINT" in summary.stop_reason else 0)


@app.command()
@user_errors
def logs(job: Annotated[int, typer.Argument(help="Job id (see `study status --jobs`)")], db_url: DbOption = None,
         runs_dir: Annotated[Path, typer.Option(envvar="STUDY_RUNS")] = Path("runs")) -> None:
    """Print a job's log file and its attempts."""
    from .runner import job_dir

    engine = db.connect(db_url)
    row = db.job_row(engine, job)
    path = job_dir(runs_dir, row["study"], job) / "log.txt"
    for attempt in db.attempt_rows(engine, job):
        console.print(
            f"attempt {attempt['attempt']}: {attempt['worker']} {attempt['started_at']:%Y-%m-%d %H:%M:%S} -> "
            f"{attempt['outcome'] or 'running'}" + (f" ({attempt['message']})" if attempt["message"] else ""),
            markup=False, highlight=False,
        )
    if not path.exists():
        raise StudyError(f"{path}: no log yet (job {job} is {row['state']})")
    console.print(path.read_text(), markup=False, highlight=False, end="")


@app.command()
@user_errors
def retry(job: Annotated[int, typer.Argument(help="Job id")], db_url: DbOption = None) -> None:
    """Put a failed, diverged or cancelled job back to pending (it resumes from its checkpoint if any)."""
    old = db.set_state(db.connect(db_url), job, "pending", ("failed", "diverged", "cancelled"))
    console.print(f"job {job}: {old} -> pending")


@app.command()
@user_errors
def cancel(job: Annotated[int, typer.Argument(help="Job id")], db_url: DbOption = None) -> None:
    """Cancel a pending or running job (a running worker stops at its next heartbeat)."""
    old = db.set_state(db.connect(db_url), job, "cancelled", ("pending", "running"))
    console.print(f"job {job}: {old} -> cancelled")


@app.command()
@user_errors
def submit(
    workers: Annotated[int, typer.Option(min=1, help="How many `study run --resume` workers to start")] = 1,
    slurm: Annotated[bool, typer.Option("--slurm", help="Submit to SLURM (otherwise submitit's local executor)")] = False,
    partition: Annotated[Optional[str], typer.Option(help="SLURM partition")] = None,
    gpus_per_worker: Annotated[int, typer.Option(min=0)] = 1,
    hours: Annotated[float, typer.Option(help="Time limit of each worker, hours", min=0.01)] = 24.0,
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Only jobs of this study")] = None,
    runs_dir: Annotated[Path, typer.Option(envvar="STUDY_RUNS")] = Path("runs"),
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the workers and report their exit")] = False,
) -> None:
    """Start workers through submitit: SLURM jobs, or local processes. They share one database."""
    import submitit

    url = db.database_url(db_url)
    if url.startswith("sqlite") and slurm:
        console.print("warning: SQLite over a network file system is unsafe for many machines; use PostgreSQL")
    db.connect(url)  # fail here, not in the workers, on a bad URL
    folder = Path(runs_dir) / "submitit"
    if slurm:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(
            timeout_min=int(hours * 60), gpus_per_node=gpus_per_worker, tasks_per_node=1, cpus_per_task=8,
            slurm_signal_delay_s=120, **({"slurm_partition": partition} if partition else {}),
        )
    else:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=int(hours * 60))
    command = ["study", "run", "--resume", "--db", url, "--runs-dir", str(runs_dir)] + (["--study", study] if study else [])
    with executor.batch():
        handles = [executor.submit(submitit.helpers.CommandFunction(command, verbose=False)) for _ in range(workers)]
    console.print(f"submitted {workers} workers: {', '.join(h.job_id for h in handles)} (logs in {folder})")
    if wait:
        for handle in handles:
            try:
                handle.result()
            except Exception as error:  # noqa: BLE001 - report each worker's failure as one line
                raise StudyError(f"worker {handle.job_id} failed: {str(error).strip().splitlines()[-1]}") from None
        console.print("all workers finished")


def main() -> None:  # pragma: no cover - console entry for `python -m scaling_study`
    app(prog_name="study")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
