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
from sqlalchemy import exc as sa_errors

from . import budget, db
from .checks import output_problem, printable
from .errors import BadInput, StudyError

app = typer.Typer(
    help="Plan, run, resume and fit compute-scaling studies of MLPs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(emoji=False, markup=False)  # user text (names, paths, cuda:O) is printed as it is
errors = Console(stderr=True, emoji=False, markup=False)

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
            errors.print(f"error: {printable(error)}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except (OSError, sa_errors.SQLAlchemyError) as error:  # a fault no check foresaw: still one line
            words = printable(getattr(error, "orig", None) or error).strip().splitlines()
            errors.print(f"error: {type(error).__name__}: {words[0] if words else ''}", markup=False,
                         highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _pflops(value: float) -> str:
    return f"{value / budget.PFLOP:,.3g}"


def _hours(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.2g}"  # a CPU demo's hours are not all 0.0


@app.command()
@user_errors
def plan(
    grid_file: Annotated[Path, typer.Argument(help="Grid TOML file, e.g. grids/cifar100.toml")],
    db_url: DbOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan without writing to the database")] = False,
    on: Annotated[Optional[str], typer.Option("--on", help="Hours from `study bench` figures of the device whose name contains this, e.g. H200 [default: the device measured last]")] = None,
) -> None:
    """Expand a grid into jobs in the database and print what it will cost."""
    from .grid import load_grid  # here, not at the top: grids import torch (models), which the
    from .plan import estimated_seconds, expand, summarize  # commands that only read the database do not need

    grid = load_grid(grid_file)
    specs = expand(grid)
    summary = summarize(specs)
    engine = None if dry_run else db.connect(db_url)
    first = specs[0]
    measured, devices = (db.latest_calibrations(engine, first.resolution, first.channels, grid.train.batch_size, on)
                         if engine else ({}, []))
    seconds = estimated_seconds(specs, measured)
    device = next(iter(measured.values()))["device"] if measured else None  # one device: see latest_calibrations
    estimate = len(seconds) == len(summary.rows)
    train_h = {name: train / 3600 for name, (train, _) in seconds.items()}
    eval_h = {name: evaluation / 3600 for name, (_, evaluation) in seconds.items() if evaluation is not None}
    hours = {name: train_h[name] + eval_h.get(name, 0.0) for name in train_h}
    table = Table(title=f"study {grid.study.name!r}: {grid.pretrain.dataset} at {first.resolution}px")
    columns = ["model", "params", "FLOP(f)", "jobs", "eval points", "PFLOPs (naive)", "PFLOPs (run)"]
    for column in columns + (["hours"] if estimate else []):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
    for row in summary.rows:
        table.add_row(
            row.name, f"{row.params / 1e6:,.2f}M", f"{row.flops / 1e6:,.2f}M", str(row.jobs), str(row.points),
            _pflops(row.naive_compute), _pflops(row.compute), *([_hours(hours[row.name])] if estimate else []),
        )
    table.add_row(
        "total", "", "", str(summary.jobs), str(summary.points),
        _pflops(summary.naive_compute), _pflops(summary.compute),
        *([_hours(sum(hours.values()))] if estimate else []), style="bold",
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
        if others := [name for name in devices if name != device]:
            console.print(f"also measured on {'; '.join(others)} (`--on` picks one)", markup=False, highlight=False)
        if len(eval_h) == len(hours):
            console.print(f"estimated {_hours(sum(hours.values()))} hours on {device} (study bench): "
                          f"{_hours(sum(train_h.values()))} of training and {_hours(sum(eval_h.values()))} of "
                          f"evaluation at {summary.points} points")
        else:
            missing = ", ".join(name for name in hours if name not in eval_h)
            what = "of training" if not eval_h else "of training and some evaluation"
            console.print(f"estimated {_hours(sum(hours.values()))} hours {what} on {device} (study bench); "
                          f"evaluation not measured for {missing} (`study bench` on a machine with the grid's data)")
    elif engine is not None:
        missing = ", ".join(row.name for row in summary.rows if row.name not in train_h)
        if on is not None and not measured and devices:
            why = f"no device measured at this resolution and batch size matches --on {on!r} ({'; '.join(devices)})"
        elif not train_h:
            why = f"`study bench {grid_file}` measures this machine's speed first"
        else:
            where = f" on {device}" if len(devices) > 1 else ""
            why = f"{missing} not measured at this resolution and batch size{where} (`study bench {grid_file}`)"
        console.print(f"no hours yet: {why}", markup=False, highlight=False)
    from .checks import missing_data

    for where, path in missing_data(specs[:1] or ()):
        errors.print(f"warning: no data at {path} ({where}) on this machine; planned anyway, for a machine that "
                     "has it: `study run` there (here it refuses to start until the path exists)", soft_wrap=True)
    if engine is None:
        return
    added, existing = db.add_jobs(engine, grid.study.name, str(grid_file), grid.text, specs)
    console.print(f"added {added} jobs ({existing} already planned) to {engine.url.render_as_string(hide_password=True)}")
    engine.dispose()  # close now: SQLite folds its write-ahead log into the file before we return


@app.command()
@user_errors
def bench(
    grid_file: Annotated[Path, typer.Argument(help="Grid TOML file whose models are measured")],
    models: Annotated[Optional[list[str]], typer.Option("--models", help="Only this model of the grid (repeat, or comma-separate, for more)")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda, cuda:1, ...")] = "auto",
    steps: Annotated[int, typer.Option(min=1, help="Training steps timed per model, after 3 warm-up steps")] = 10,
    evaluation: Annotated[bool, typer.Option(help="Also time one evaluation point on the grid's data")] = True,
    db_url: DbOption = None,
) -> None:
    """Measure each model's training img/s, MFU, loader img/s, peak memory and evaluation time here;
    `study plan` then gives hours."""
    from . import bench as benchmark
    from .grid import load_grid
    from .runner import resolve_device

    grid = load_grid(grid_file)
    names = [name.strip() for value in models or () for name in value.split(",") if name.strip()]
    specs = benchmark.model_specs(grid, names or None)
    dev = resolve_device(device)
    engine = db.connect(db_url)
    first = specs[0]
    table = Table(title=f"{grid.pretrain.dataset} at {first.resolution}px x {first.channels}, "
                        f"batch {grid.train.batch_size}, {benchmark.resolved_precision(grid.train.precision, dev)}")
    for column in ("model", "train img/s", "loader img/s", "train TFLOP/s", "GEMM TFLOP/s", "MFU", "peak memory",
                   "eval s/point"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
    unmeasured = ""
    for spec in specs:  # stored one by one: an interrupted bench keeps what it measured
        m = benchmark.measure(spec, dev, steps, evaluation=evaluation)
        db.add_calibration(engine, **m.row())
        table.add_row(m.model, f"{m.images_per_s:,.0f}", f"{m.loader_images_per_s:,.0f}",
                      f"{m.train_flops_per_s / 1e12:.3g}", f"{m.gemm_flops_per_s / 1e12:.3g}", f"{m.mfu:.0%}",
                      f"{m.peak_memory_bytes / 2**20:,.0f} MiB", "-" if m.evaluation_s is None else f"{m.evaluation_s:.3g}")
        if m.evaluation_s is None:
            unmeasured = m.details["evaluation"]
    console.print(table)
    if unmeasured:
        console.print(f"evaluation {unmeasured}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"stored {len(specs)} calibrations for {m.device} in "
                  f"{engine.url.render_as_string(hide_password=True)}; `study plan {grid_file}` now prints hours",
                  markup=False, highlight=False, soft_wrap=True)
    engine.dispose()


@app.command()
@user_errors
def status(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Only this study")] = None,
    all_jobs: Annotated[bool, typer.Option("--jobs", help="List every job")] = False,
    limit: Annotated[int, typer.Option(min=0, help="List at most this many jobs, the first by id (0: all)")] = 100,
) -> None:
    """Jobs by state per study; running jobs with worker, progress and ETA; failures with reason."""
    import datetime as dt

    engine = db.connect(db_url, create=False, write=False)
    if study:
        _one_study(engine, study)
    counts = db.job_counts(engine, study)
    if not counts:
        console.print("no jobs planned yet: run `study plan GRID` first")
        return
    table = Table(title="jobs by state")
    table.add_column("study")
    for state in db.JOB_STATES:
        table.add_column(state, justify="right")
    for name, by_state in counts.items():
        table.add_row(printable(name), *(str(by_state.get(state, 0)) for state in db.JOB_STATES))
    console.print(table)
    _law_so_far(engine, list(counts))
    shown = None if all_jobs else ("running", "failed", "diverged")
    total = sum(n for name, by_state in counts.items() for state, n in by_state.items() if not shown or state in shown)
    rows = db.job_listing(engine, study, shown, limit or None)  # one query, as many rows as are printed
    if not rows:
        return
    jobs_table = Table(title="jobs" if all_jobs else "running and failed jobs")
    for column in ("id", "study", "model", "N", "state", "epochs", "worker", "ETA"):
        jobs_table.add_column(column, no_wrap=True)
    jobs_table.add_column("reason", overflow="fold", min_width=30)
    for row in rows:
        eta = ""
        if row["state"] == "running" and row["epochs_done"] and row["started_at"]:
            elapsed = (db.now() - row["started_at"]).total_seconds()
            left = elapsed / row["epochs_done"] * (row["epochs"] - row["epochs_done"])
            eta = str(dt.timedelta(seconds=round(left)))
        jobs_table.add_row(
            str(row["id"]), printable(row["study"]), printable(row["model"]), f"{row['examples']:,}", row["state"],
            f"{row['epochs_done']}/{row['epochs']}", printable(row["worker"] or ""), eta, printable(row["error"] or ""),
        )
    console.print(jobs_table)
    if len(rows) < total:
        console.print(f"listed {len(rows):,} of {total:,} jobs (the first by id); --limit 0 lists all")


def _law_so_far(engine, names) -> None:  # noqa: ANN001
    """For each adaptive study (or one with pruned jobs): E(C) alpha so far, points, compute spent vs planned.
    A plain study costs one look at its grid's text: status imports the analysis (and torch) only for these."""
    import tomllib

    def adaptive_grid(name: str) -> bool:
        try:
            table = tomllib.loads(db.study_grid_text(engine, name)).get("adaptive", {})
        except (tomllib.TOMLDecodeError, StudyError):
            return False
        return isinstance(table, dict) and table.get("enabled") is True

    for name in names:
        if not adaptive_grid(name) and not db.pruning_rows(engine, name):
            continue
        from . import adaptive
        now = adaptive.progress(engine, name)
        spent = (f"compute spent {_pflops(now.spent)} of {_pflops(now.planned)} PFLOPs planned "
                 f"({now.spent / now.planned:.0%})" if now.planned else "no compute planned")
        if now.pruned:
            spent += f"; {now.pruned} trajectories pruned, saving {_pflops(now.saved)} PFLOPs"
        if now.alpha is None:
            law = f"no law yet ({now.points} points: {now.note})"
        else:
            a = now.alpha
            law = (f"E(C) alpha {a.value:.3g} [{a.low:.3g}, {a.high:.3g}] (95%, 200 resamples) over "
                   f"{now.envelope_points} envelope points of {now.points}")
        console.print(f"the law so far, study {name!r}: {law}; {spent}", markup=False, highlight=False, soft_wrap=True)


@app.command()
@user_errors
def prune(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Study to decide for [default: the only one in the database]")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be pruned now and why; change nothing")] = False,
    show_kept: Annotated[bool, typer.Option("--kept", help="Also list the trajectories kept, and why")] = False,
) -> None:
    """Refit the law on what is recorded and prune the pending or running trajectories it rules out."""
    from . import adaptive

    engine = db.connect(db_url, migrate=not dry_run, create=False, write=not dry_run)
    name = _one_study(engine, study)
    config = adaptive.settings(engine, name, True)
    decisions, pruned, note = adaptive.prune_now(engine, name, config, "study prune", dry_run=dry_run)
    if note:
        console.print(f"nothing to decide: {note}", markup=False, highlight=False, soft_wrap=True)
        return
    chosen = [d for d in decisions if d.prune and (dry_run or d.job_id in pruned)]
    shown = decisions if show_kept else chosen
    if shown:
        table = Table(title=f"study {name!r}: {'would prune' if dry_run else 'pruned'} {len(chosen)} of "
                            f"{len(decisions)} pending or running trajectories ({config.confidence:.0%} lower bounds)")
        for column in ("id", "model", "N", "state", "epochs", "why"):
            table.add_column(column, no_wrap=column != "why", overflow="fold")
        for d in shown:
            table.add_row(str(d.job_id), d.model, f"{d.examples:,}", d.state, str(d.epochs_done), d.reason)
        console.print(table)
    fit = decisions[0].fit if decisions else {}
    console.print(f"{'would prune' if dry_run else 'pruned'} {len(chosen)}; fit: {fit.get('law')} on {fit.get('points')} "
                  f"points of {fit.get('metric')}, {fit.get('resamples')} resamples (seed {fit.get('seed')})"
                  + ("; nothing was changed" if dry_run else ""), markup=False, highlight=False, soft_wrap=True)


class _RichEvents:
    """Runner callbacks drawn as rich progress bars: jobs overall, and the current job's epochs."""

    def __init__(self, progress, total_jobs: int):
        self.bars = progress
        self.overall = progress.add_task("jobs", total=total_jobs, rate="")
        self.current = None

    def job_started(self, job, spec) -> None:
        if self.current is not None:
            self.bars.remove_task(self.current)
        label = f"job {job['id']} {spec.model.name} N={spec.examples:,}"
        self.current = self.bars.add_task(label, total=spec.total_epochs, rate="")

    def progress(self, job, progress) -> None:
        done = progress.step / max(progress.steps_per_epoch, 1)  # steps of the whole trajectory, in epochs
        self.bars.update(self.current, completed=done, rate=f"{progress.images_per_s:,.0f} img/s")

    def job_ended(self, job, outcome: str, message: str) -> None:
        self.bars.advance(self.overall)
        text = f"job {job['id']} {job['model']} N={job['examples']:,}: {outcome}" + (f" ({message})" if message else "")
        self.bars.console.print(text, markup=False, highlight=False)


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
    checkpoint_every: Annotated[float, typer.Option(help="Checkpoint after this many seconds (mid-epoch, or at the next epoch end), besides every evaluation epoch", min=1)] = 600.0,
    max_attempts: Annotated[int, typer.Option(help="A job whose worker died this often is marked failed", min=1)] = 3,
    adaptive: Annotated[Optional[bool], typer.Option("--adaptive/--no-adaptive", help="Claim coarse to fine and prune "
                        "trajectories the law rules out (README, 'Adaptive studies') [default: as the grid's [adaptive] table says]")] = None,
) -> None:
    """Train pending jobs one after another, checkpointing so a killed run continues where it stopped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from . import runner

    runner.resolve_device(device)  # a bad --device is a usage error, found before any job is claimed
    options = runner.RunOptions(
        db_url=db_url, device=device, resume=resume, study=study, max_jobs=max_jobs, until=_parse_until(until),
        runs_dir=runs_dir, lease_s=lease, checkpoint_every_s=checkpoint_every, max_attempts=max_attempts,
        adaptive=adaptive,
    )
    engine = db.connect(db_url)
    if study:
        _one_study(engine, study)
    pending = [r for r in db.job_rows(engine, study, ("pending",)) if resume or r["attempts"] == 0]
    _refuse_missing_data(pending)
    total = min(len(pending), max_jobs or len(pending))
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        summary = runner.run(options, _RichEvents(progress, total), engine=engine)
    console.print(
        f"{len(summary.done)} done, {len(summary.diverged)} diverged, {len(summary.failed)} failed, "
        f"{len(summary.released)} interrupted (checkpointed)"
        + (f", {len(summary.pruned)} pruned while running (checkpointed)" if summary.pruned else "")
        + (f"; stopped: {summary.stop_reason}" if summary.stop_reason else "")
    )
    if summary.waiting_for_resume:
        console.print(f"{summary.waiting_for_resume} interrupted jobs wait: `study run --resume` continues them")
    if summary.fatal:
        raise StudyError(summary.fatal)
    if summary.failed:
        raise StudyError(f"{len(summary.failed)} jobs failed ({', '.join(map(str, summary.failed))}): `study status` shows why")
    if summary.stop_reason:
        raise typer.Exit(143 if "SIGTERM" in summary.stop_reason else 130 if "SIGINT" in summary.stop_reason else 0)


def _refuse_missing_data(pending: list[dict]) -> None:
    """`study run` starts only when every job it may claim finds its data here: a job is not
    failed, nor an attempt spent, for a path that is missing on this machine."""
    import json

    from .checks import missing_data

    by_path: dict[str, tuple[str, list[int]]] = {}
    for row in pending:
        for where, path in missing_data([json.loads(row["spec"])]):
            by_path.setdefault(path, (where, []))[1].append(row["id"])
    if by_path:
        path, (where, ids) = next(iter(by_path.items()))
        more = f" (and {len(by_path) - 1} more missing path(s))" if len(by_path) > 1 else ""
        shown = ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")
        raise BadInput(f"no data at {path} ({where} of job(s) {shown}){more} on this machine; nothing was claimed: "
                       "put the data there (or a link to it), or run with --study for another study")


@app.command()
@user_errors
def logs(job: Annotated[int, typer.Argument(help="Job id (see `study status --jobs`)")], db_url: DbOption = None,
         runs_dir: Annotated[Path, typer.Option(envvar="STUDY_RUNS")] = Path("runs")) -> None:
    """Print a job's log file and its attempts."""
    from .runner import job_dir

    engine = db.connect(db_url, create=False, write=False)
    row = db.job_row(engine, job)
    path = job_dir(runs_dir, row) / "log.txt"
    for attempt in db.attempt_rows(engine, job):
        console.print(
            f"attempt {attempt['attempt']}: {printable(attempt['worker'])} {attempt['started_at']:%Y-%m-%d %H:%M:%S} -> "
            f"{attempt['outcome'] or 'running'}" + (f" ({printable(attempt['message'])})" if attempt["message"] else ""),
            markup=False, highlight=False,
        )
    if not path.exists():
        raise StudyError(f"{path}: no log yet (job {job} is {row['state']})")
    console.print(printable(path.read_text(errors="replace"), keep="\n\t"), markup=False, highlight=False, end="")


@app.command()
@user_errors
def retry(job: Annotated[int, typer.Argument(help="Job id")], db_url: DbOption = None) -> None:
    """Put a failed, diverged, cancelled or pruned job back to pending (it resumes from its checkpoint if any)."""
    old = db.set_state(db.connect(db_url, create=False), job, "pending", ("failed", "diverged", "cancelled", "pruned"))
    console.print(f"job {job}: {old} -> pending")


@app.command()
@user_errors
def cancel(job: Annotated[int, typer.Argument(help="Job id")], db_url: DbOption = None) -> None:
    """Cancel a pending or running job (a running worker stops at its next heartbeat)."""
    old = db.set_state(db.connect(db_url, create=False), job, "cancelled", ("pending", "running"))
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


@app.command("evaluate")
@user_errors
def evaluate_checkpoint(
    checkpoint: Annotated[Path, typer.Argument(help="A state dict in the reference code's layout (the paper's "
                                               "released weights) or ours, or a job's checkpoint.pt")],
    model: Annotated[str, typer.Option(help="Its architecture, e.g. B-12/Wi-1024 (S-L/Wi-m/ref: the reference S-MLP)")],
    downstream: Annotated[list[str], typer.Option(help="DATASET=PATH to evaluate on, e.g. cifar100=data/cifar100-64 (repeat for more)")],
    protocol: Annotated[str, typer.Option(help="linear (probe) or finetune")] = "linear",
    probe: Annotated[str, typer.Option(help="paper (LION), fast (L-BFGS) or reference (its code's SGD on crops)")] = "paper",
    probe_epochs: Annotated[int, typer.Option(min=1)] = 50,
    probe_lr: Annotated[float, typer.Option(min=0.0, help="LION lr of the paper probe")] = 1e-5,
    probe_batch_size: Annotated[int, typer.Option(min=1)] = 4096,
    probe_examples: Annotated[int, typer.Option(min=0, help="Probe on a class-stratified subset of this many (0: all)")] = 0,
    finetune_epochs: Annotated[int, typer.Option(min=1)] = 50,
    tta_crops: Annotated[int, typer.Option(min=0, help="Test-time crops averaged (the paper: 100)")] = 0,
    label_smoothing: Annotated[float, typer.Option(min=0.0)] = 0.3,
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA), fp32, bf16, fp16")] = "auto",
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda, cuda:1, ...")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the probe's or fine-tuning's order and head")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the metrics to this JSON file")] = None,
) -> None:
    """Score a checkpoint (e.g. the paper's released weights) with any of our evaluation protocols."""
    import dataclasses
    import json

    from . import reference
    from .grid import PRECISIONS, PROBES, PROTOCOLS, DownstreamData, EvaluationConfig
    from .models import parse_model
    from .runner import resolve_device

    for value, valid, name in ((protocol, PROTOCOLS, "--protocol"), (probe, PROBES, "--probe"),
                               (precision, PRECISIONS, "--precision")):
        if value not in valid:
            raise StudyError(f"unknown {name} {value!r}; valid choices: {', '.join(valid)}")
    sets = []
    for item in downstream:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise StudyError(f"--downstream {item!r}: expected DATASET=PATH, e.g. cifar100=data/cifar100-64")
        sets.append(DownstreamData(name, path, protocol))
    spec = parse_model(model, "--model")
    evaluation = EvaluationConfig(probe=probe, probe_epochs=probe_epochs, probe_lr=probe_lr,
                                  probe_batch_size=probe_batch_size, probe_examples=probe_examples,
                                  finetune_epochs=finetune_epochs, tta_crops=tta_crops)
    channels = reference.input_channels(sets)
    module, layout = reference.load_state_dict(checkpoint, spec, channels)
    params = sum(p.numel() for p in module.parameters())
    console.print(f"loaded {spec.name} from {checkpoint} ({layout} layout): {params / 1e6:,.2f}M parameters, "
                  f"{module.head.out_features} classes, {module.embed.in_features} inputs", markup=False,
                  highlight=False, soft_wrap=True)
    metrics = reference.evaluate_checkpoint(module, spec, sets, evaluation, device=str(resolve_device(device)),
                                            precision=precision, label_smoothing=label_smoothing, seed=seed)
    table = Table(title=f"{spec.name}: {protocol}" + (f" ({probe} probe)" if protocol == "linear" else ""))
    table.add_column("metric")
    table.add_column("error", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps({"checkpoint": str(checkpoint), "model": spec.name, "layout": layout,
                                        "evaluation": dataclasses.asdict(evaluation), "metrics": metrics}, indent=1))
        console.print(f"wrote {json_out}", markup=False, highlight=False)


data_app = typer.Typer(help="Convert raw datasets into prepared stores.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
@user_errors
def data_prepare(
    source: Annotated[Path, typer.Argument(help="Raw dataset directory (IDX, CIFAR batches, .npz, STL-10, folders)")],
    out: Annotated[Path, typer.Option("--out", help="Store directory to write")],
    fmt: Annotated[str, typer.Option("--format", help="auto, idx, cifar, npz, stl10, tiny-imagenet, folders")] = "auto",
    resolution: Annotated[int, typer.Option(min=0, help="Side length to resize to [default: native]")] = 0,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset name for the store [default: from the files]")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Decoding threads [default: CPU count]")] = 0,
    chunk_size: Annotated[int, typer.Option(min=0, help="Images per chunk between progress saves [default: auto]")] = 0,
    beton: Annotated[bool, typer.Option("--beton", help="Also write FFCV .beton files (needs the ffcv extra)")] = False,
    resize: Annotated[str, typer.Option("--resize", help="squash: each image whole to R x R (Chrabaszcz et al.); "
                                        "keep-aspect: longest side R, as the paper's code")] = "squash",
) -> None:
    """Convert a dataset once into a memory-mappable uint8 store; an interrupted run resumes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .store import prepare

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def report(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = progress.add_task(f"{split} images", total=total)
            progress.update(tasks[split], completed=done)

        result = prepare(source, out, fmt, resolution, dataset or "", workers, chunk_size, progress=report, beton=beton,
                         resize=resize)
    meta = result.meta
    counts = ", ".join(f"{meta['splits'][s]['count']:,} {s}" for s in meta["splits"])
    state = "already prepared" if result.already else "resumed and prepared" if result.resumed else "prepared"
    console.print(
        f"{state} {meta['dataset']} ({counts} images, {len(meta['classes'])} classes, {meta['channels']} channel(s), "
        f"{meta['resolution']}px{', keep-aspect' if meta.get('resize') == 'keep-aspect' else ''}) in {out}; "
        f"{meta['skipped_count']} unreadable file(s) skipped",
        markup=False, highlight=False, soft_wrap=True,
    )


# ---- Analysis: import, export, fit ----

MODEL_KINDS = ("bottleneck", "standard")


def _one_study(engine, study: str | None) -> str:  # noqa: ANN001 - an Engine
    """The study named, or the only one in the database."""
    names = db.study_names(engine)
    if study:
        if study not in names:
            raise BadInput(f"no study {study!r}; studies in the database: {', '.join(map(repr, names)) or 'none'}")
        return study
    if not names:
        raise BadInput("the database has no studies yet: `study plan GRID` or `study import FILE.csv` first")
    if len(names) > 1:
        raise BadInput(f"{len(names)} studies in the database; choose one with --study: {', '.join(names)}")
    return names[0]


@app.command("import")
@user_errors
def import_results(
    file: Annotated[Path, typer.Argument(help="CSV: model, params, flops_per_example, examples, epochs, error[, metric, seed]")],
    study: Annotated[Optional[str], typer.Option(help="Study to import into [default: the file's `study` column, else its name]")] = None,
    db_url: DbOption = None,
) -> None:
    """Import results produced elsewhere; every bad row is reported and then nothing is imported."""
    import csv

    from .exchange import BadRows, read_results_csv

    try:
        trajectories = read_results_csv(file, study)
    except BadRows as bad:  # one line per bad row, then the summary as the error
        for row in bad.rows:
            errors.print(printable(row), markup=False, highlight=False, soft_wrap=True)
        raise StudyError(bad.summary) from None
    except UnicodeDecodeError as error:
        raise BadInput(f"{file}: not a UTF-8 text CSV (byte {error.start}: {error.reason}); give the results as CSV text") from None
    except csv.Error as error:  # e.g. a NUL byte
        raise BadInput(f"{file}: not a readable CSV ({error}); give the results as CSV text") from None
    engine = db.connect(db_url)
    jobs_added, points_added, present = db.import_trajectories(engine, str(file), trajectories)
    names = sorted({t["study"] for t in trajectories})
    console.print(
        f"imported {points_added} evaluation points ({present} already present) in {len(trajectories)} trajectories "
        f"({jobs_added} new jobs) into study {', '.join(names)}",
        markup=False, highlight=False,
    )


@app.command("export")
@user_errors
def export_results(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Only this study")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Only this metric, e.g. cifar100/linear")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
    out: Annotated[Optional[Path], typer.Option(help="File to write [default: evaluations.<format>]")] = None,
) -> None:
    """Write every evaluation point (one row per job, epoch and metric) as CSV or Parquet."""
    from .exchange import FORMATS, write_frame

    if fmt not in FORMATS:
        raise StudyError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    target = out or Path(f"evaluations.{fmt}")
    if problem := output_problem(target):
        raise BadInput(f"cannot write --out {target}: {problem}")
    engine = db.connect(db_url, create=False, write=False)
    if study:
        _one_study(engine, study)
    frame = db.evaluations_frame(engine, study, metric)
    if frame.empty:
        raise StudyError("no evaluation points to export" + (f" for metric {metric!r}" if metric else ""))
    try:
        path = write_frame(frame, target, fmt)
    except OSError as error:  # e.g. /proc, a full disk: what stood there is left as it was
        raise BadInput(f"cannot write --out {target}: {error.strerror or error}; choose another path") from None
    console.print(f"wrote {len(frame)} evaluation points to {path}", markup=False, highlight=False)


@app.command("fit")
@user_errors
def fit_laws(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Study to fit [default: the only one in the database]")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Metric [default: the first */linear, else upstream/top1]")] = None,
    kind: Annotated[Optional[str], typer.Option(help="Only models of this kind: bottleneck (B-MLP) or standard (S-MLP)")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="T of the envelope and iso-FLOP allocation [default: the smallest T]")] = None,
    exclude: Annotated[Optional[list[int]], typer.Option(help="Leave out this job id (repeat for more)")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% intervals")] = 1000,
    out: Annotated[Path, typer.Option(help="Directory for the figures, report.md, fit.json and index.html")] = Path("reports"),
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resamples")] = 0,
    merge_sizes: Annotated[float, typer.Option(min=0.0, max=0.5, help="Merge models whose parameter counts differ by less than this relative tolerance")] = 0.01,
    budget_tolerance: Annotated[float, typer.Option(min=1e-6, max=2.0, help="Points whose log compute differ by at most this share an iso-FLOP budget")] = 0.1,
    page: Annotated[bool, typer.Option("--page/--no-page", help="Also write the study's page, index.html")] = True,
    runs_dir: Annotated[Path, typer.Option(help="Job folders, for the page's loss curves", envvar="STUDY_RUNS")] = Path("runs"),
) -> None:
    """Fit E(C), the bottleneck laws and the compute-optimal allocation; write figures, a report and the page."""
    from . import analysis as fits
    from .analysis import identifiability

    if kind and kind not in MODEL_KINDS:
        raise StudyError(f"unknown --kind {kind!r}; valid kinds: {', '.join(MODEL_KINDS)}")
    if problem := output_problem(out, folder=True):
        raise BadInput(f"cannot write --out {out}: {problem}")
    engine = db.connect(db_url, create=False, write=False)
    name = _one_study(engine, study)
    selected, analysis, figures, written, pruned = _fit_and_write(engine, name, metric, kind, epochs, exclude, bootstrap,
                                                                  out, seed, merge_sizes, budget_tolerance)
    if page:
        from .page import write_page

        try:
            written.append(write_page(engine, name, out, runs_dir))
        except OSError as error:
            raise BadInput(f"cannot write --out {out}: {error.strerror or error}; choose another folder") from None

    def cell(e) -> str:  # noqa: ANN001 - a fit.Estimate
        return f"{e.value:.3g}" + ("" if e.low != e.low else f" [{e.low:.3g}, {e.high:.3g}]")

    laws = Table(title=f"study {name!r}, {analysis.metric}: {len(selected)} points, 95% bootstrap intervals")
    for column in ("law", "points", "alpha", "E_inf", "status"):
        laws.add_column(column, justify="left" if column in ("law", "status") else "right")
    named = (("E(C) envelope", analysis.compute), ("E vs params", analysis.bottleneck_params),
             ("E vs examples", analysis.bottleneck_examples), ("E(P, D)", analysis.parametric))
    if analysis.data_constrained is not None:
        named += (("E(P, D')", analysis.data_constrained),)
    for label, law in named:
        if isinstance(law, fits.Skipped):
            laws.add_row(label, "", "", "", f"not fitted: {law.reason}")
        else:
            alpha = cell(law.params["alpha"])
            if "beta" in law.params:
                alpha += f", beta {cell(law.params['beta'])}"
            laws.add_row(label, str(len(law.points)), alpha, cell(law.params["E_inf"]),
                         identifiability.status_text(law.status, identifiability.law_flags(law)))
    console.print(laws)
    allocation = Table(title=f"compute-optimal allocation P* ~ C^a, N* ~ C^b (T = {analysis.epochs})")
    for column in ("estimator", "a", "b", "mode"):
        allocation.add_column(column, justify="left" if column in ("estimator", "mode") else "right")
    for estimate in analysis.allocations:
        if isinstance(estimate, fits.Skipped):
            allocation.add_row(estimate.name, "not fitted", estimate.reason, "")
        else:
            allocation.add_row(estimate.estimator, cell(estimate.a), cell(estimate.b),
                               identifiability.status_text(estimate.mode, identifiability.allocation_flags(estimate)))
    console.print(allocation)
    for line in fits.summary_lines(analysis):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    sweep = analysis.sweep
    console.print(f"sweep: {sweep['mode']} ({sweep['reason']})", markup=False, highlight=False, soft_wrap=True)
    for name, flags in identifiability.analysis_flags(analysis).items():
        for flag in flags:
            console.print(f"not identified: {name} {flag['param']}: {flag['reason']}", markup=False, highlight=False,
                          soft_wrap=True)
    for group in sweep["merged_sizes"]["groups"]:
        if group["merged"]:
            console.print(f"merged into {group['model']}: " + ", ".join(m["model"] for m in group["merged"]),
                          markup=False, highlight=False, soft_wrap=True)
        if group.get("kept_apart"):
            console.print(f"kept apart from {group['model']} (near-equal size, but both ran the same N, T and seed): "
                          + ", ".join(m["model"] for m in group["kept_apart"]), markup=False, highlight=False,
                          soft_wrap=True)
    if pruned:
        saved = sum(p["saved_pflops"] for p in pruned)
        table = Table(title=f"pruned trajectories (adaptive): {len(pruned)}, saving {saved:.3g} PFLOPs")
        for column in ("job", "model", "N", "epochs run", "saved PFLOPs", "closest point vs envelope"):
            table.add_column(column, justify="left" if column in ("model", "closest point vs envelope") else "right")
        for p in pruned:
            table.add_row(str(p["job_id"]), p["model"], f"{p['examples']:,}", f"{p['epochs_done']}/{p['epochs']}",
                          f"{p['saved_pflops']:.3g}", f"T = {p['epoch']}: low {p['low']:.4f} > {p['envelope']:.4f}")
        console.print(table)
    console.print("wrote " + ", ".join(str(p) for p in [*figures, *written]), markup=False, highlight=False)


@app.command("predict")
@user_errors
def predict(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Study to fit [default: the only one in the database]")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Metric [default: the first */linear, else upstream/top1]")] = None,
    kind: Annotated[Optional[str], typer.Option(help="Only models of this kind: bottleneck or standard")] = None,
    model: Annotated[Optional[str], typer.Option(help="Predict a run of this model (with --examples and --epochs)")] = None,
    examples: Annotated[Optional[int], typer.Option(help="N of the run to predict")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="T of the run to predict; with --compute, the T of the allocation")] = None,
    compute: Annotated[Optional[float], typer.Option(help="Target compute in PFLOPs: the best value and (P*, N*) there")] = None,
    exclude: Annotated[Optional[list[int]], typer.Option(help="Leave out this job id (repeat for more)")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% intervals")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resamples")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Predict a run's value, or the compute-optimal (P*, N*) at a compute, with 95% intervals."""
    import json

    from . import analysis as fits
    from .analysis.predict import predict_compute, predict_run
    from .errors import BadInput

    if model is None and compute is None:
        raise BadInput("say what to predict: --model M --examples N --epochs T, and/or --compute PFLOPS")
    if model is not None and (examples is None or epochs is None):
        raise BadInput("--model needs --examples N and --epochs T")
    if compute is not None and not (compute > 0 and compute < float("inf")):
        raise BadInput(f"--compute must be a positive number of PFLOPs, not {compute:g}")
    if kind and kind not in MODEL_KINDS:
        raise BadInput(f"unknown --kind {kind!r}; valid kinds: {', '.join(MODEL_KINDS)}")
    try:
        engine = db.connect(db_url, create=False, write=False)  # predict only reads
        name = _one_study(engine, study)
        frame = db.evaluations_frame(engine, name, metric)
        if frame.empty:
            raise BadInput(f"study {name!r} has no evaluation points" + (f" for metric {metric!r}" if metric else "")
                           + ": nothing to fit a prediction to")
        selected, filters = fits.select(frame, metric, kind, exclude or ())
    except StudyError as error:
        raise BadInput(str(error)) from None
    if model is not None and model not in set(selected["model"]):
        raise BadInput(f"unknown model {model!r}; models in the study: {', '.join(sorted(set(selected['model'])))}")
    allocation_epochs = epochs if compute is not None and model is None else None
    try:
        analysis = fits.analyse(selected, filters, allocation_epochs, bootstrap, seed)
    except BadInput:
        raise
    except StudyError as error:
        raise BadInput(f"study {name!r} cannot be fitted: {error}") from None
    answer: dict = {"study": name}
    if model is not None:
        answer["run"] = predict_run(analysis, model, examples, epochs, seed)
    if compute is not None:
        answer["compute"] = predict_compute(analysis, compute, seed)
    if as_json:
        from .report import _clean

        print(json.dumps(_clean(answer), indent=2, allow_nan=False))
        return

    def interval(row: dict, key: str = "value") -> str:
        low, high = row.get("low" if key == "value" else f"{key}_low"), row.get("high" if key == "value" else f"{key}_high")
        return f"{row[key]:.4g}" + ("" if low is None else f" [{low:.4g}, {high:.4g}]")

    if "run" in answer:
        run = answer["run"]
        console.print(f"{run['model']} at N = {run['examples']:,}, T = {run['epochs']} ({run['pflops']:.3g} PFLOPs): "
                      f"{run['metric']} {run['metric_kind']} {interval(run['prediction'])} (95% prediction interval, "
                      f"{run['chosen_form']} form)", markup=False, highlight=False)
        for form, row in run["forms"].items():
            if form != run["chosen_form"]:
                console.print(f"  {form} form: {interval(row)}", markup=False, highlight=False)
    if "compute" in answer:
        at = answer["compute"]
        console.print(f"at {at['pflops']:.4g} PFLOPs ({at['extrapolation']:.3g}x the largest run): best "
                      f"{at['metric_kind']} {interval(at['compute_law'])} by {at['compute_law']['formula']}",
                      markup=False, highlight=False)
        table = Table(title=f"compute-optimal allocation at {at['pflops']:.4g} PFLOPs (T = {at['epochs_for_allocation']}), 95% intervals")
        for column in ("estimator", "P*", "N*", f"{at['metric_kind']} there"):
            table.add_column(column, justify="left" if column == "estimator" else "right")
        for estimator, row in at["allocation"].items():
            if "skipped" in row:
                table.add_row(estimator, "not fitted", row["skipped"], "")
            else:
                there = row.get("value_there")
                table.add_row(estimator, interval(row, "params"), interval(row, "examples"), "" if there is None else f"{there:.4g}")
        console.print(table)


def _fit_and_write(engine, name: str, metric: str | None, kind: str | None, epochs: int | None,  # noqa: ANN001
                   exclude, bootstrap: int, out: Path, seed: int, merge_sizes: float = 0.01,
                   budget_tolerance: float = 0.1):
    """The fit of `study fit` (and of `study report` when new points landed): (points, analysis, figures, files,
    pruned trajectories or None)."""
    from . import analysis as fits
    from .plots import write_figures
    from .report import write_report

    # every metric, so that a mistyped --metric is told the ones present
    selected, filters = fits.select(db.evaluations_frame(engine, name, None), metric, kind, exclude or ())
    analysis = fits.analyse(selected, filters, epochs, bootstrap, seed, merge_tolerance=merge_sizes,
                            budget_tolerance=budget_tolerance)
    pruned = _pruned_of(engine, name)
    try:
        figures = write_figures(analysis, out)
        written = write_report(analysis, name, figures, out, pruned)
    except OSError as error:
        raise BadInput(f"cannot write --out {out}: {error.strerror or error}; choose another folder") from None
    return selected, analysis, figures, written, pruned


@app.command("report")
@user_errors
def report_page(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Study to show [default: the only one in the database]")] = None,
    out: Annotated[Path, typer.Option(help="Directory of the page (index.html) and of the fit it shows")] = Path("reports"),
    runs_dir: Annotated[Path, typer.Option(help="Job folders, for the loss curves", envvar="STUDY_RUNS")] = Path("runs"),
    fit: Annotated[bool, typer.Option("--fit/--no-fit", help="Refit first when points landed after the last fit "
                                      "(same metric, kind and exclusions as that fit)")] = True,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples of a refit")] = 1000,
    watch: Annotated[bool, typer.Option("--watch", help="Keep rewriting the page as results land, until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between looks at the database with --watch")] = 10.0,
) -> None:
    """Write reports/index.html: the study's state, fits, figures and every job's loss curve, in one file."""
    from . import page

    if problem := output_problem(out, folder=True):
        raise BadInput(f"cannot write --out {out}: {problem}")
    engine = db.connect(db_url, create=False, write=False)
    name = _one_study(engine, study)

    def write() -> Path:
        note = ""
        if fit and page.fit_is_stale(engine, name, out):
            last = (page.load_fit(out, name) or {}).get("filters") or {}
            try:
                _fit_and_write(engine, name, last.get("metric"), None if last.get("kind") in (None, "all") else last["kind"], None,
                               last.get("excluded_jobs") or (), bootstrap, out, 0)
            except StudyError as error:  # too few points yet, say: the page shows why, and the rest
                note = f"not refitted: {error}"
        try:
            path = page.write_page(engine, name, out, runs_dir, note=note, refresh_s=interval if watch else None)
        except OSError as error:
            raise BadInput(f"cannot write --out {out}: {error.strerror or error}; choose another folder") from None
        console.print(f"wrote {path}" + (f" ({note})" if note else ""), markup=False, highlight=False, soft_wrap=True)
        return path

    if not watch:
        write()
        return
    console.print(f"watching study {name!r} every {interval:g} s; Ctrl-C stops", markup=False, highlight=False)
    page.watch(engine, name, out, runs_dir, interval, write)
    console.print("stopped watching", markup=False, highlight=False)


def _pruned_of(engine, name: str) -> list[dict] | None:  # noqa: ANN001
    """An adaptive study's pruned trajectories (adaptive.pruned_summary); None for a plain study."""
    from . import adaptive

    try:
        config = adaptive.settings(engine, name)
    except StudyError:
        config = None
    rows = adaptive.pruned_summary(engine, name)
    return rows if config is not None or rows or db.pruning_rows(engine, name) else None


def main() -> None:  # pragma: no cover - console entry for `python -m scaling_study`
    app(prog_name="study")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
