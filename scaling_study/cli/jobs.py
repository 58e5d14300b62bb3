"""Running a study: `study status`, `prune`, `run`, `logs`, `retry`, `cancel` and `submit`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import db
from .. import submit as submission
from ..checks import printable
from ..errors import BadInput, Fault, StudyError
from ..formatting import estimate_interval, pflops
from .common import DbOption, app, console, one_study, user_errors, wrapping_table


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

    from ..progress import job_eta_seconds

    engine = db.connect(db_url, create=False, write=False)
    if study:
        one_study(engine, study)
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
    in_slurm = any(row["slurm_job"] for row in rows)  # the column only for workers that run in SLURM jobs
    for column in ("id", "study", "model", "N", "state", "epochs", "worker", *(["SLURM job"] if in_slurm else []), "ETA"):
        jobs_table.add_column(column, no_wrap=True)
    jobs_table.add_column("reason", overflow="fold", min_width=30)
    for row in rows:
        left = job_eta_seconds(row, db.now())
        eta = "" if left is None else str(dt.timedelta(seconds=round(left)))
        jobs_table.add_row(
            str(row["id"]), printable(row["study"]), printable(row["model"]), f"{row['examples']:,}", row["state"],
            f"{row['epochs_done']}/{row['epochs']}", printable(row["worker"] or ""),
            *([printable(row["slurm_job"] or "")] if in_slurm else []), eta, printable(row["error"] or ""),
        )
    console.print(jobs_table)
    if len(rows) < total:
        console.print(f"listed {len(rows):,} of {total:,} jobs (the first by id); --limit 0 lists all")


def _law_so_far(engine, names) -> None:  # noqa: ANN001
    """For each adaptive study (or one with pruned jobs): E(C) alpha so far, points, compute spent vs planned.
    A plain study costs one look at its grid's text: status imports the analysis (and torch) only for these."""
    from ..grid_text import recorded_section

    def adaptive_grid(name: str) -> bool:
        try:
            return recorded_section(db.study_grid_text(engine, name), "adaptive").get("enabled") is True
        except StudyError:
            return False

    for name in names:
        if not adaptive_grid(name) and not db.pruning_rows(engine, name):
            continue
        from .. import adaptive
        config = _adaptive_config(engine, name)
        if config is not None and config.policy == "uncertainty":
            _anytime_standing(engine, name, config)
            continue
        now = adaptive.progress(engine, name)
        spent = (f"compute spent {pflops(now.spent)} of {pflops(now.planned)} PFLOPs planned "
                 f"({now.spent / now.planned:.0%})" if now.planned else "no compute planned")
        if now.pruned:
            spent += f"; {now.pruned} trajectories pruned, saving {pflops(now.saved)} PFLOPs"
        if now.alpha is None:
            law = f"no law yet ({now.points} points: {now.note})"
        else:
            law = (f"E(C) alpha {estimate_interval(now.alpha, '.3g')} (95%, 200 resamples) over "
                   f"{now.envelope_points} envelope points of {now.points}")
        console.print(f"the law so far, study {name!r}: {law}; {spent}", markup=False, highlight=False, soft_wrap=True)


def _adaptive_config(engine, name: str):  # noqa: ANN001
    """The study's [adaptive] settings, or None when its recorded grid no longer parses."""
    from .. import adaptive

    try:
        return adaptive.settings(engine, name)
    except StudyError:
        return None


def _anytime_standing(engine, name: str, config) -> None:  # noqa: ANN001
    """An anytime study's headlines now with their 95% intervals (and targets), compute, and next actions."""
    import math

    from .. import anytime

    now = anytime.standing(engine, name, config)
    bounded = now.planned and now.limit < math.inf
    allowed = f", budget {pflops(now.limit)} PFLOPs ({now.limit / now.planned:.0%})" if bounded else ""
    console.print(f"anytime study {name!r}: compute spent {pflops(now.spent)} of {pflops(now.planned)} PFLOPs planned "
                  f"({now.spent / now.planned if now.planned else 0:.1%}){allowed}; {now.points} points, {now.paused} "
                  f"trajectories paused, {now.decisions} decisions recorded", markup=False, highlight=False, soft_wrap=True)
    table = wrapping_table(f"study {name!r}: the headlines now (measured points only, 95% bootstrap, "
                           f"{config.resamples} resamples)", ["headline", "value", "95% interval", "half-width", "target"],
                           left={"headline"})
    for headline_name, (value, low, high) in now.headlines.items():
        bounded = low is not None and high is not None and math.isfinite(low) and math.isfinite(high)
        target = now.targets.get(headline_name)
        table.add_row(headline_name, f"{value:.3g}", f"[{low:.3g}, {high:.3g}]" if bounded else "",
                      f"{(high - low) / 2:.3g}" if bounded else "", f"{target:g}" if target else "")
    for headline_name, target in now.targets.items():
        if headline_name not in now.headlines:
            table.add_row(headline_name, "not fitted yet", "", "", f"{target:g}")
    if now.headlines or now.targets:
        console.print(table)
    if now.next_actions:
        actions = wrapping_table(f"study {name!r}: next actions at the latest decision ({now.rule}), best first",
                                 ["job", "model", "N", "to T", "cost PFLOPs", "score"], left={"model"})
        for a in now.next_actions:
            actions.add_row(str(a["job_id"]), printable(a["model"]), f"{a['examples']:,}", str(a["epoch"]),
                            pflops(a["cost"]), "warm-up" if a["score"] is None else f"{a['score']:.3g}")
        console.print(actions)


@app.command()
@user_errors
def prune(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Study to decide for [default: the only one in the database]")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be pruned now and why; change nothing")] = False,
    show_kept: Annotated[bool, typer.Option("--kept", help="Also list the trajectories kept, and why")] = False,
) -> None:
    """Refit the law on what is recorded and prune the pending or running trajectories it rules out."""
    from .. import adaptive

    engine = db.connect(db_url, migrate=not dry_run, create=False, write=not dry_run)
    name = one_study(engine, study)
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
        overall = self.bars.tasks[self.overall]
        if overall.total is not None and overall.completed >= overall.total:  # a job another worker let go meanwhile
            self.bars.update(self.overall, total=overall.completed + 1)
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
        raise BadInput(f"--until {value!r}: expected a local time HH:MM") from None
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
    budget: Annotated[Optional[str], typer.Option(help="Anytime studies ([adaptive] policy = \"uncertainty\"): stop "
                      "before passing this share of the grid's compute (0.5, 50%) or PFLOPs (2.5PF) [default: the grid's]")] = None,
    target: Annotated[Optional[str], typer.Option(help="Anytime studies: stop once these 95% half-widths are reached, "
                      "e.g. alpha=0.02,a=0.05 (docs: Adaptive studies) [default: the grid's]")] = None,
) -> None:
    """Train pending jobs one after another, checkpointing so a killed run continues where it stopped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .. import anytime, runner
    from ..grid import parse_targets

    runner.resolve_device(device)  # a bad --device is a usage error, found before any job is claimed
    options = runner.RunOptions(
        db_url=db_url, device=device, resume=resume, study=study, max_jobs=max_jobs, until=_parse_until(until),
        runs_dir=runs_dir, lease_s=lease, checkpoint_every_s=checkpoint_every, max_attempts=max_attempts,
        adaptive=adaptive, budget=budget, target=target,
    )
    if budget:
        anytime.parse_budget(budget)
    if target:
        parse_targets(target, "--target")
    engine = db.connect(db_url, create=False)  # `study plan` creates a database; a typo in --db is refused
    if study:
        one_study(engine, study)
    total = runner.preflight(engine, options)
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
        + (f", {len(summary.paused)} rungs run and paused (checkpointed)" if summary.paused else "")
        + (f"; stopped: {summary.stop_reason}" if summary.stop_reason else "")
    )
    for name, why in summary.rules_met.items():
        console.print(f"study {name!r} is done: {why}; `study status` shows where it stands, a larger --budget or "
                      "a tighter --target continues it", markup=False, highlight=False, soft_wrap=True)
    if summary.waiting_for_resume:
        console.print(f"{summary.waiting_for_resume} interrupted jobs wait: `study run --resume` continues them")
    if summary.fatal:
        raise Fault(summary.fatal)
    if summary.failed:
        raise Fault(f"{len(summary.failed)} jobs failed ({', '.join(map(str, summary.failed))}): `study status` shows why")
    if summary.stop_reason:
        raise typer.Exit(143 if "SIGTERM" in summary.stop_reason else 130 if "SIGINT" in summary.stop_reason else 0)


@app.command()
@user_errors
def logs(job: Annotated[int, typer.Argument(help="Job id (see `study status --jobs`)")], db_url: DbOption = None,
         runs_dir: Annotated[Path, typer.Option(envvar="STUDY_RUNS")] = Path("runs")) -> None:
    """Print a job's log file and its attempts."""
    from ..runner import job_dir

    engine = db.connect(db_url, create=False, write=False)
    row = db.job_row(engine, job)
    path = job_dir(runs_dir, row) / "log.txt"
    for attempt in db.attempt_rows(engine, job):
        console.print(
            f"attempt {attempt['attempt']}: {printable(attempt['worker'])}"
            + (f" (SLURM job {printable(attempt['slurm_job'])})" if attempt["slurm_job"] else "")
            + f" {attempt['started_at']:%Y-%m-%d %H:%M:%S} -> "
            f"{attempt['outcome'] or 'running'}" + (f" ({printable(attempt['message'])})" if attempt["message"] else ""),
            markup=False, highlight=False,
        )
    imported = _imported_from(row["provenance"])
    if imported is not None and not path.exists():  # its results were made elsewhere: there is no log to wait for
        console.print(f"job {job} was imported from {printable(imported)}: it has no training log", markup=False,
                      highlight=False, soft_wrap=True)
        return
    if not path.exists():
        raise StudyError(f"{path}: no log yet (job {job} is {row['state']})")
    console.print(printable(path.read_text(errors="replace"), keep="\n\t"), markup=False, highlight=False, end="")


def _imported_from(provenance: str | None) -> str | None:
    """The file an imported job came from (`study import`), None for a planned one."""
    import json

    try:
        found = json.loads(provenance or "{}").get("imported_from")
    except (ValueError, AttributeError):
        return None
    return None if found is None else str(found)


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
    partition: Annotated[Optional[str], typer.Option(help="SLURM partition (default: the cluster's)")] = None,
    account: Annotated[Optional[str], typer.Option(help="SLURM account (default: yours)")] = None,
    qos: Annotated[Optional[str], typer.Option(help="SLURM quality of service (default: the partition's)")] = None,
    cpus_per_worker: Annotated[int, typer.Option(min=1, help="CPUs of each worker: the loader and "
                                                 "evaluation beside its GPU")] = submission.SlurmResources.cpus_per_worker,
    gpus_per_worker: Annotated[int, typer.Option(min=0, help="GPUs of each worker")] = submission.SlurmResources.gpus_per_worker,
    mem_gb: Annotated[Optional[float], typer.Option(min=0.001, help="Memory of each worker, GB (default: the "
                                                    "partition's)")] = None,
    hours: Annotated[float, typer.Option(help="Time limit of each worker, hours, at least 0.0167 (one minute); a "
                                         "worker that reaches it requeues itself", min=0.0167)] = submission.SlurmResources.hours,
    signal_delay: Annotated[int, typer.Option(help="Seconds before the time limit that SLURM warns a worker, to "
                                              "checkpoint and requeue", min=1)] = submission.SlurmResources.signal_delay_s,
    sbatch: Annotated[Optional[list[str]], typer.Option(help="Another sbatch option for each worker, e.g. "
                                                        "--sbatch=--constraint=a100 (repeat for more)")] = None,
    device: Annotated[str, typer.Option(help="The workers' --device: auto (CUDA if present), cpu, cuda, cuda:1, ...")] = "auto",
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Only jobs of this study")] = None,
    runs_dir: Annotated[Path, typer.Option(envvar="STUDY_RUNS")] = Path("runs"),
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the workers have ended (requeues included) and "
                                       "report them and the study")] = False,
) -> None:
    """Start workers through submitit: SLURM jobs, or local processes. They share one database."""
    url = db.database_url(db_url)
    resources = submission.SlurmResources(partition=partition, account=account, qos=qos, cpus_per_worker=cpus_per_worker,
                               gpus_per_worker=gpus_per_worker, mem_gb=mem_gb, hours=hours, signal_delay_s=signal_delay,
                               sbatch_flags=tuple(sbatch or ()))
    if slurm:
        submission.check_reachable(url)
        resources.extra_options()
    command = submission.worker_command(url, runs_dir, study, device)
    if slurm:
        submission.check_slurm(resources)
    for warning in (submission.network_warning(url, slurm), slurm and submission.local_database_warning(url, partition)):
        if warning:
            console.print(warning, soft_wrap=True)
    engine = db.connect(url, create=False)  # fail here, not in the workers, on a bad URL
    if study:
        one_study(engine, study)
    handles, folder = submission.start_workers(workers, command, runs_dir, resources, slurm)
    console.print(f"submitted {workers} workers: {', '.join(h.job_id for h in handles)} (logs in {folder})")
    if not wait:
        return
    for job_id, ending in submission.wait_for(handles, slurm).items():
        console.print(f"worker {job_id}: {ending}", markup=False, highlight=False)
    counts: dict[str, int] = {}
    for by_state in db.job_counts(engine, study).values():
        for state, count in by_state.items():
            counts[state] = counts.get(state, 0) + count
    console.print("all workers finished: " + ", ".join(f"{counts[s]} {s}" for s in db.JOB_STATES if counts.get(s)))
    if left := counts.get("pending", 0) + counts.get("running", 0):
        raise Fault(f"the workers ended with {left} jobs not done: `study status` shows them, `study submit` "
                    "starts more workers")
    if counts.get("failed"):
        raise Fault(f"{counts['failed']} jobs failed: `study status` shows why")
