"""`study run`: claim pending jobs one at a time and train them, so that nothing is lost or run twice.

A job is claimed in one transaction and held by a lease that a heartbeat thread renews; a worker
that dies loses its lease and the job goes back to pending (or to failed after `max_attempts`).
Each epoch's progress and evaluation points are one transaction, written after the epoch's
checkpoint when it has one (every evaluation epoch does), and the final points are re-inserted
idempotently when the job ends, so a crash between the two loses nothing and records nothing
twice (a resumed job may redo, bit for bit, epochs that its progress had counted).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import platform
import signal
import socket
import subprocess
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from . import __version__, cores, db
from .checks import missing_data
from .curves import open_curves
from .errors import BadInput, DatabaseGone, GridError, StudyError
from .files import job_dir  # noqa: F401 - where it lives now; `runner.job_dir` as before
from .grid_text import recorded_section
from .plan import JobSpec
from .timing import EpochClock, describe
from .workers import worker_alive, worker_name

DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
STALE_DECISIONS = 100  # an anytime study's decisions in a row that other workers overtook before this one gives up


@dataclass(frozen=True)
class RunOptions:
    """What `study run` was asked to do."""

    db_url: str | None = None
    device: str = "auto"
    resume: bool = False
    study: str | None = None
    max_jobs: int | None = None
    until: dt.datetime | None = None  # local wall time after which the worker checkpoints and stops
    runs_dir: Path = Path("runs")
    lease_s: float = 120.0
    checkpoint_every_s: float = 600.0
    max_attempts: int = 3
    adaptive: bool | None = None  # None: as each study's [adaptive] table says; True/False: for every study
    budget: str | None = None  # anytime studies: stop at this share of the grid's compute, or PFLOPs (replaces the grid's)
    target: str | None = None  # anytime studies: stop once these 95% half-widths are reached (replaces the grid's)
    threads: int | None = None  # torch threads; None: $STUDY_THREADS, else this host's cores shared by its workers


@dataclass
class RunSummary:
    """What one `study run` did; `failed` makes the command exit non-zero."""

    done: list[int] = field(default_factory=list)
    diverged: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    pruned: list[int] = field(default_factory=list)  # jobs of this worker's that were pruned while it ran them
    paused: list[int] = field(default_factory=list)  # anytime studies: trajectories run to their rung, left paused
    rules_met: dict[str, str] = field(default_factory=dict)  # anytime studies done by a stop rule: {study: why}
    waiting_for_resume: int = 0
    stop_reason: str = ""
    fatal: str = ""  # why the worker stopped early (a full disk, say)


class Events:
    """Callbacks the CLI hooks its progress display to; the defaults do nothing."""

    def worker_started(self, line: str) -> None: ...  # who this worker is, on what, with how many threads

    def job_started(self, job: dict, spec: JobSpec) -> None: ...

    def progress(self, job: dict, progress) -> None: ...  # train.Progress

    def job_ended(self, job: dict, outcome: str, message: str) -> None: ...


class StopFlag:
    """Set by SIGTERM/SIGINT/SIGUSR1/SIGUSR2, by --until, or by a lost lease; a second Ctrl-C exits at once.

    SIGUSR1 also requeues the SLURM job the worker runs in (a job script of one's own: `--signal=B:USR1@120`);
    SIGUSR2 is the warning submitit asks SLURM for (`study submit --slurm`), whose job requeues itself."""

    def __init__(self, until: dt.datetime | None = None):
        self.reason = ""
        self.until = until
        self.requeue = False
        self._interrupts = 0

    def __call__(self) -> bool:
        if not self.reason and self.until and dt.datetime.now() >= self.until:
            self.reason = f"--until {self.until:%H:%M} reached"
        return bool(self.reason)

    def handle(self, signum: int, _frame) -> None:  # noqa: ANN001
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                os._exit(130)  # a second Ctrl-C: the user wants out now; the last checkpoint stands
        if signum == getattr(signal, "SIGUSR1", None):
            self.requeue = True
        self.reason = self.reason or f"{name} received"

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self.handle)


def slurm_job() -> str | None:
    """The SLURM job this process runs in, as squeue and scancel name it (12345, or 12345_3 in an array)."""
    if array := os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID") or None


def resolve_device(device: str) -> str:
    """'auto' is the first CUDA GPU when there is one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise BadInput(f"--device {device!r}: not a device; use auto, cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {device}: no CUDA GPU is visible to torch {torch.__version__}; use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise BadInput(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) visible "
                           f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise BadInput(f"--device {device}: MPS is not available here; use cpu")
    return device


def code_version() -> str:
    """The git commit of the code when run from a checkout, else the package version."""
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                capture_output=True, text=True, timeout=10, check=True,
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return __version__


def provenance(device: str, worker: str) -> dict:
    """Everything needed to say where and with what a result was computed."""
    import numpy
    import torch

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    return {
        "code_version": code_version(),
        "package_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "device": device,
        "device_name": name,
        "host": socket.gethostname(),
        "worker": worker,
    }


class JobLog:
    """Appends timestamped lines to the job's log file (kept after the job ends)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def __call__(self, line: str) -> None:
        with open(self.path, "a") as out:
            out.write(f"{dt.datetime.now():%Y-%m-%d %H:%M:%S} {line}\n")


class Heartbeat(threading.Thread):
    """Renews the lease every lease/3 seconds; `lost` turns true if the job stopped being ours."""

    def __init__(self, engine, job_id: int, worker: str, lease_s: float):
        super().__init__(daemon=True)
        self.engine, self.job_id, self.worker, self.lease_s = engine, job_id, worker, lease_s
        self.lost = False
        self.gone: DatabaseGone | None = None  # the database file was deleted: training stops at once
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.lease_s / 3):
            try:
                if not db.renew_lease(self.engine, self.job_id, self.worker, self.lease_s):
                    self.lost = True
                    return
            except DatabaseGone as error:
                self.gone, self.lost = error, True
                return
            except Exception:  # noqa: BLE001 - a database hiccup: try again at the next beat
                continue

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def preflight(engine, options: RunOptions) -> int:  # noqa: ANN001 - an Engine
    """How many jobs this run may claim, once every one of them finds its data here; else BadInput:
    a job is not failed, nor an attempt spent, for a path that is missing on this machine."""
    host, moment = socket.gethostname(), db.now()
    pending = [r for r in db.job_rows(engine, options.study, ("pending", "running")) if _claimable(r, options, host, moment)]
    anytime_studies = {name for name, config in _adaptive_studies(engine, options).items() if config.policy == "uncertainty"}
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
    claims = sum(_claims_left(row, anytime_studies) for row in pending)
    return min(claims, options.max_jobs or claims)


def _claims_left(row: dict, anytime_studies: set[str]) -> int:
    """Claims a job still needs: one, or in an anytime study one per rung left."""
    if row["study"] not in anytime_studies:
        return 1
    from .adaptive import remaining_points

    return max(1, sum(1 for _ in remaining_points([row])))


def _claimable(row: dict, options: RunOptions, host: str, moment: dt.datetime) -> bool:
    """Whether this run may claim the job: pending (and new, without --resume), or, with --resume, running
    for a worker that is gone and taken back by reclaim_lost (a job left by `kill -9`)."""
    if row["state"] == "pending":
        return options.resume or row["attempts"] == 0
    lost = row["lease_expires"] is None or row["lease_expires"] < moment or not worker_alive(row["worker"] or "", host)
    return options.resume and lost and row["attempts"] < options.max_attempts


def run(options: RunOptions, events: Events | None = None, engine=None) -> RunSummary:
    """Train pending jobs until none is left, --max-jobs are done, or a stop is requested."""
    from .train import train  # torch is imported only when there is training to do

    events = events or Events()
    engine = engine or db.connect(options.db_url)
    device = resolve_device(options.device)
    worker = worker_name()
    host = socket.gethostname()
    stop = StopFlag(options.until)
    stop.install()
    summary = RunSummary()
    _adaptive_studies(engine, options)  # a study whose recorded [adaptive] table is bad stops the worker here
    slot = cores.HostSlot()  # counted by the other workers of this host while this one lives
    try:
        _claim_and_train(engine, options, events, summary, stop, device, worker, host, train)
    finally:
        slot.close()
    summary.stop_reason = stop.reason
    if not options.resume:
        summary.waiting_for_resume = sum(
            1 for row in db.job_rows(engine, options.study, ("pending",)) if row["attempts"] > 0
        )
    if stop.requeue and os.environ.get("SLURM_JOB_ID"):
        subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
    return summary


def _claim_and_train(engine, options: RunOptions, events: Events, summary: RunSummary, stop: StopFlag, device: str,
                     worker: str, host: str, train: Callable) -> None:  # noqa: ANN001
    """The worker's loop: claim a job, train it, until none is left or a stop; a deleted database stops it (raised)."""
    claimed = stale = 0
    threads = cores.worker_threads(options.threads)
    if hasattr(events, "worker_started"):
        events.worker_started(f"worker {worker} on {device}: {threads.count} torch thread(s) ({threads.why})")
    while not stop() and (options.max_jobs is None or claimed < options.max_jobs):
        try:
            db.reclaim_lost(engine, host, options.max_attempts, alive=worker_alive)
            adaptive_studies = _adaptive_studies(engine, options)
            order, skip, decisions, expected = (_claim_order(engine, adaptive_studies, options, summary)
                                                if adaptive_studies else ({}, set(), {}, {}))
            job = db.claim_job(engine, worker, options.lease_s, options.study, options.resume, provenance(device, worker),
                               order=order, slurm_job=slurm_job(), skip=skip, decisions_by_job=decisions,
                               expected=expected)
        except DatabaseGone:
            raise
        except Exception as error:  # noqa: BLE001 - the claim rolled back: every job is as it was
            words = str(getattr(error, "orig", None) or error).strip().splitlines()
            summary.fatal = (_database_full(engine, error, "could not claim the next job") or
                             f"could not claim a job ({type(error).__name__}: {words[0] if words else ''}); "
                             "nothing was changed: check the database, then `study run --resume`")
            break
        if job is None and expected and stale < STALE_DECISIONS and _overtaken(engine, expected):
            stale += 1  # another worker took or paused those rungs meanwhile: decide again on what is recorded now
            continue
        if job is None:
            break
        claimed, stale = claimed + 1, 0
        cores.apply(cores.worker_threads(options.threads))  # the workers started or gone since the last job
        try:
            outcome = _run_job(engine, job, worker, device, options, stop, events, train, adaptive_studies.get(job["study"]))
        except sa.exc.DBAPIError as error:  # its outcome could not be written: the job waits for its lease to lapse
            summary.fatal = (_database_full(engine, error, f"could not record job {job['id']}'s outcome") or
                             f"the database refused job {job['id']}'s outcome ({_database_refused(error)}); its "
                             "checkpoint is kept: once the database takes writes again, `study run --resume` "
                             "continues it")
            break
        if outcome in ("done", "diverged", "failed", "released", "pruned", "paused"):
            getattr(summary, outcome).append(job["id"])
        if outcome in ("disk_full", "database_refused", "unusable"):
            summary.fatal = job["error_message"]
            break


def _overtaken(engine, expected: dict[int, int]) -> bool:  # noqa: ANN001
    """Whether another worker claimed or advanced a trajectory since this one's decision saw it."""
    with engine.connect() as conn:
        now = conn.execute(sa.select(db.jobs.c.id, db.jobs.c.state, db.jobs.c.epochs_done)
                           .where(db.jobs.c.id.in_(list(expected)))).all()
    return any(state != "pending" or done != expected[job_id] for job_id, state, done in now)


def _adaptive_studies(engine, options: RunOptions) -> dict:
    """{study: its AdaptiveConfig} for the studies this worker serves that are adaptive."""
    from . import adaptive

    if options.adaptive is False:
        return {}
    names = [options.study] if options.study else db.study_names(engine)
    out = {}
    for name in names:
        try:
            config = adaptive.settings(engine, name, options.adaptive)
        except GridError:  # a recorded [adaptive] table this version refuses: said, not run as if plain
            raise
        except StudyError:  # no such study: nothing to claim from it anyway
            continue
        if config is not None:
            out[name] = config
    return out


def _claim_order(engine, adaptive_studies: dict, options: RunOptions,
                 summary: RunSummary) -> tuple[dict[int, int], set[int], dict[int, dict], dict[int, int]]:
    """How the adaptive studies' jobs are claimed: (ranks, study by study: coarse to fine within a pruning
    study (adaptive.claim_order), best score first within an anytime study (anytime.choose); the jobs
    not to claim now (an anytime study's rungs past its budget, or all of a study whose rule is met);
    the decisions to record with the claim; the epochs done each decision saw). A met rule is kept in
    `summary.rules_met`."""
    from . import adaptive, anytime

    order: dict[int, int] = {}
    skip: set[int] = set()
    decisions: dict[int, dict] = {}
    expected: dict[int, int] = {}
    for name, config in adaptive_studies.items():
        if config.policy == "uncertainty":
            choice = anytime.choose(engine, name, config, anytime.StopRules.of(config, options.budget, options.target))
            ranked, decisions, expected = choice.order, {**decisions, **choice.decision}, {**expected, **choice.expected}
            skip |= choice.skip
            if choice.stop:
                summary.rules_met[name] = choice.stop
        else:
            ranked = adaptive.claim_order(db.job_rows(engine, name))
        start = len(order)
        order.update({job_id: start + rank for job_id, rank in ranked.items()})
    return order, skip, decisions, expected


def _run_job(engine, job: dict, worker: str, device: str, options: RunOptions, stop: StopFlag,
             events: Events, train: Callable, adaptive_config=None) -> str:  # noqa: ANN001
    """One attempt at one job; returns done / diverged / failed / released / pruned / paused / lost / disk_full /
    database_refused / unusable (this worker cannot run the study's jobs: it releases the job and stops).
    In an adaptive study (`adaptive_config`), each evaluation epoch that lands refits the law and prunes
    what it rules out; a job pruned meanwhile stops at its epoch boundary. In an anytime study
    (policy uncertainty) the job runs to its next evaluation epoch and pauses there, pending again."""
    try:  # a job that cannot even be set up is failed with the reason, and the worker goes on
        spec = JobSpec.from_dict(json.loads(job["spec"]))
        folder = job_dir(options.runs_dir, job)
        log = JobLog(folder / "log.txt")
        checkpoint = folder / "checkpoint.pt"
        log(f"attempt {job['attempt']} by {worker} on {device}: {spec.model.name}, N={spec.examples}, "
            f"T={list(spec.epochs)}, seed={spec.seed}" + (f", resuming from {checkpoint}" if checkpoint.exists() else ""))
    except Exception as error:  # noqa: BLE001 - e.g. OSError: File name too long, a folder that is a file
        return _failed(engine, job, worker, None, events, error, "set-up failed: ")
    # Each epoch's line in the log (`study logs <job>`) ends with its wall time by part, as the curves'
    # time/*_s scalars hold it (train()), so that a slow run can be explained.
    new_points: dict[int, list] = {}

    def on_lap(epoch: int, times: dict[str, float]) -> None:
        points = new_points.pop(epoch, [])
        log(f"epoch {epoch}: " + "".join(f"{p.metric}={p.value:.4f}, " for p in points) + describe(times))

    clock = EpochClock(on_lap=on_lap)
    try:
        with clock.part("curves"):
            curves = open_curves(folder, spec, logging_setting(engine, job["study"]))
    except StudyError as error:
        message = f"{error}; job {job['id']} released"
        log(message)
        db.finish_job(engine, job, worker, "pending", job["epochs_done"], [], message, outcome="released")
        job["error_message"] = message
        return "unusable"
    except Exception as error:  # noqa: BLE001 - e.g. an OSError making tensorboard/: failed with the reason
        return _failed(engine, job, worker, log, events, error, "set-up failed: ")
    events.job_started(job, spec)
    beat = Heartbeat(engine, job["id"], worker, options.lease_s)
    beat.start()
    should_stop = lambda: beat.lost or stop()  # noqa: E731

    pruned = []  # set when this job was pruned: it stops at the end of the epoch
    anytime = adaptive_config is not None and adaptive_config.policy == "uncertainty"
    rung = []  # an anytime study's trajectory: set when its rung (next evaluation epoch) lands; it pauses there

    def on_epoch(epochs_done: int, points: list) -> None:
        with clock.part("database"):
            recorded = db.record_epoch(engine, job, worker, epochs_done, points, options.lease_s)
        if not recorded:
            beat.lost = True
        else:
            job["epochs_done"] = epochs_done  # what a release or failure of this attempt keeps
        new_points[epochs_done] = points  # logged with the epoch's times (on_lap)
        if adaptive_config is None or beat.lost:
            return
        if anytime:
            if points:
                rung.append(epochs_done)
            return
        with clock.part("adaptive"):
            if points:
                _prune(engine, job, worker, adaptive_config, log)
            if db.job_row(engine, job["id"])["state"] == "pruned":
                pruned.append(epochs_done)

    try:
        result = train(
            spec, device=device, checkpoint=checkpoint, checkpoint_every_s=options.checkpoint_every_s,
            on_progress=lambda progress: events.progress(job, progress), on_epoch=on_epoch, should_stop=should_stop,
            curves=curves, clock=clock,
            **({"stop_after_epoch": lambda: bool(pruned) or bool(rung)} if adaptive_config is not None else {}),
        )
    except Exception as error:  # noqa: BLE001 - a failed job is a row with its reason; the study goes on
        beat.stop()
        _close_quietly(curves)
        if gone := next((cause for cause in _causes(error) if isinstance(cause, DatabaseGone)), None):
            log(str(gone))
            raise gone from None
        if _disk_full(error):
            message = (f"disk full while writing {checkpoint.parent} ({_disk_full(error)}); the previous "
                       "checkpoint is intact: free space, then `study run --resume`")
            log(message)
            db.finish_job(engine, job, worker, "pending", job["epochs_done"], [], message, outcome="released")
            job["error_message"] = message
            events.job_ended(job, "released", message)
            return "disk_full"
        if refused := _database_refused(error):  # writing the failure down would fail too: stop here
            message = (_database_full(engine, error, f"could not record job {job['id']}'s progress") or
                       f"the database refused job {job['id']}'s progress ({refused}); its checkpoint is kept: "
                       "once the database takes writes again, `study run --resume` continues it")
            log(message)
            job["error_message"] = message
            events.job_ended(job, "released", message)
            return "database_refused"
        return _failed(engine, job, worker, log, events, error)
    beat.stop()
    _close_quietly(curves)
    if beat.gone:
        log(str(beat.gone))
        raise beat.gone
    spent = f"; this attempt's {clock.epochs} epochs: {describe(clock.total)}" if clock.epochs else ""
    if for_notes := "; ".join(result.notes):
        log(f"notes: {for_notes}")
    if pruned and not beat.lost:
        state = "done" if result.status == "done" else "diverged" if result.status == "diverged" else "pruned"
        message = result.message if state == "diverged" else ""
        db.finish_job(engine, job, worker, state, result.epochs_done, result.evaluations, message,
                      outcome="pruned" if state == "pruned" else None, from_states=("running", "pruned"))
        message = f"pruned: stopped at the end of epoch {result.epochs_done}, points and checkpoint kept"
        log(message if state == "pruned" else f"{state} (pruned during its last epoch)")
        events.job_ended(job, state, message if state == "pruned" else "")
        return state
    if rung and result.status == "interrupted" and not beat.lost:
        message = f"paused at T = {result.epochs_done}, the rung it was chosen for; checkpoint kept"
        db.finish_job(engine, job, worker, "pending", result.epochs_done, result.evaluations, "", outcome="paused")
        log(message + spent)
        events.job_ended(job, "paused", message)
        return "paused"
    if beat.lost:
        log("the job stopped being ours (cancelled, or its lease was taken over); stopped without recording")
        events.job_ended(job, "lost", "cancelled or taken over")
        return "lost"
    if result.status == "interrupted":
        message = f"interrupted after {result.epochs_done} epochs ({stop.reason}); checkpoint kept"
        db.finish_job(engine, job, worker, "pending", result.epochs_done, result.evaluations, message, outcome="released")
        log(message + spent)
        events.job_ended(job, "released", message)
        return "released"
    state = "diverged" if result.status == "diverged" else "done"
    message = result.message if state == "diverged" else ""
    db.finish_job(engine, job, worker, state, result.epochs_done, result.evaluations, message)
    log(f"{state}" + (f": {message}" if message else f" after {result.epochs_done} epochs") + spent)
    events.job_ended(job, state, message)
    return state


def logging_setting(engine, study: str) -> bool | None:  # noqa: ANN001 - an Engine
    """The study's `[logging] tensorboard` (validated when planned); None when its grid does not say."""
    value = recorded_section(db.study_grid_text(engine, study), "logging").get("tensorboard")
    return value if isinstance(value, bool) else None


def _close_quietly(curves) -> None:  # noqa: ANN001 - a curves.Curves
    """Curves are a view of the job, not its record: failing to close them never fails the job."""
    try:
        curves.close()
    except Exception:  # noqa: BLE001
        pass


def _prune(engine, job: dict, worker: str, config, log: JobLog) -> None:  # noqa: ANN001
    """Refit on everything recorded and prune what the law rules out (one transaction); a failure to
    decide is logged and the study goes on (pruning only ever saves compute)."""
    from . import adaptive

    try:
        decisions, ids, note = adaptive.prune_now(engine, job["study"], config, worker)
    except Exception as error:  # noqa: BLE001 - a refit that fails must not fail the job
        log(f"adaptive: no pruning decision ({type(error).__name__}: {error})")
        return
    for decision in decisions:
        if decision.job_id in ids:
            log(f"adaptive: job {decision.job_id} {decision.model} N={decision.examples:,} {decision.reason}")
    if note:
        log(f"adaptive: {note}")


def _causes(error: BaseException | None):
    """`error` and every exception it was raised from or while handling, innermost last."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _disk_full(error: BaseException | None) -> str:
    """The OS's words if `error`, or an exception it was raised from, is a full disk or quota; else ''.

    torch.save reports a failed write as a RuntimeError raised while the OSError is handled."""
    for cause in _causes(error):
        if isinstance(cause, OSError) and cause.errno in DISK_FULL:
            return os.strerror(cause.errno)
    return ""


def _database_refused(error: BaseException | None) -> str:
    """The database's words if `error` (or what it was raised from) is a failed database write; else ''.

    A full disk under SQLite, a read-only or unreachable server: the job cannot be recorded, so
    it is left to its checkpoint and `--resume` rather than marked failed."""
    for cause in _causes(error):
        if isinstance(cause, sa.exc.DBAPIError):
            words = str(cause.orig).strip()
            return words.splitlines()[0] if words else type(cause.orig).__name__
    return ""


def _database_full(engine, error: BaseException, what: str) -> str:  # noqa: ANN001 - an Engine
    """A line for a database whose disk is full (SQLite's SQLITE_FULL, PostgreSQL's disk_full): what, where and
    what to do; '' for any other error."""
    for cause in _causes(error):
        orig = getattr(cause, "orig", None)
        if orig is not None and ("database or disk is full" in str(orig) or getattr(orig, "sqlstate", "") == "53100"):
            where = engine.url.render_as_string(hide_password=True)
            if engine.dialect.name == "sqlite" and engine.url.database:
                where = f"{engine.url.database} (in {Path(engine.url.database).resolve().parent})"
            return (f"the database {where} is on a full disk: {what} ({orig}); nothing recorded was lost and "
                    "checkpoints are kept: free space on that disk, then `study run --resume`")
    return ""


def _failed(engine, job: dict, worker: str, log: JobLog | None, events: Events, error: Exception,
            prefix: str = "") -> str:
    message = prefix + (str(error) if isinstance(error, StudyError) else f"{type(error).__name__}: {error}")
    if log is not None:
        log("failed: " + message + "\n" + "".join(traceback.format_exception(error)))
    db.finish_job(engine, job, worker, "failed", job["epochs_done"], [], message)
    events.job_ended(job, "failed", message)
    return "failed"
