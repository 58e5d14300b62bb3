"""Workers started through submitit: SLURM jobs, or local processes, each a `study run --resume` on one database.

Under SLURM a worker lives through its time limit and through preemption: SLURM warns it
`signal_delay_s` before the limit (SIGUSR2, submitit's signal), `study run` checkpoints and
releases its job at once, and the worker requeues its SLURM job, which resumes the study when
SLURM starts it again. A worker stopped by SIGTERM (`scancel`, a preemption, `scontrol requeue`)
releases its job the same way; SLURM itself requeues a preempted or requeued one. One that dies
without a signal loses its lease, and another worker takes the job over.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput, StudyError

MAX_REQUEUES = 10_000  # time limits a worker may requeue itself through: it ends when no job is left
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
SET_BY_SUBMIT = {  # sbatch options `study submit` writes itself, with the option to use instead
    "signal": "--signal-delay", "time": "--hours", "output": "(submitit's logs)", "error": "(submitit's logs)",
    "open-mode": "(submitit's logs)", "array": "--workers", "wrap": "(the worker's command)",
}


@dataclass(frozen=True)
class SlurmResources:
    """What each worker asks SLURM for; None leaves it to the cluster's defaults."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cpus_per_worker: int = 8  # the loader and the evaluation work beside one GPU
    gpus_per_worker: int = 1
    mem_gb: float | None = None
    hours: float = 24.0
    signal_delay_s: int = 120  # SLURM warns this long before the limit: time to checkpoint and requeue
    sbatch_flags: tuple[str, ...] = ()  # more sbatch options, "--constraint=a100" or "--exclusive"

    @property
    def minutes(self) -> int:
        """SLURM's time limit, whole minutes."""
        return max(1, round(self.hours * 60))

    def extra_options(self) -> dict[str, str | bool]:
        """`sbatch_flags` as {name: value, or True for a flag}; a short, malformed or reserved one is refused."""
        options: dict[str, str | bool] = {}
        for flag in self.sbatch_flags:
            name, sep, value = flag.removeprefix("--").partition("=")
            if flag.startswith("-") and not flag.startswith("--") or not re.fullmatch(r"[a-z][a-z0-9-]*", name):
                raise BadInput(f"--sbatch {flag!r}: give sbatch's long options, --name=value or --flag; "
                               "nothing submitted")
            if name in SET_BY_SUBMIT:
                raise BadInput(f"--sbatch {flag!r}: `study submit` sets --{name} itself ({SET_BY_SUBMIT[name]}); "
                               "nothing submitted")
            options[name] = value if sep else True
        return options

    def sbatch_options(self) -> dict[str, str | bool]:
        """Every option of a worker's sbatch script (submitit adds its logs), as {name: value}."""
        options: dict[str, str | bool] = {
            "job-name": "study-worker", "nodes": "1", "ntasks-per-node": "1", "cpus-per-task": str(self.cpus_per_worker),
            "time": str(self.minutes), "signal": f"USR2@{self.signal_delay_s}",
        }
        if self.gpus_per_worker:
            options["gpus-per-node"] = str(self.gpus_per_worker)
        if self.mem_gb:
            options["mem"] = f"{round(self.mem_gb * 1024)}M"
        for name in ("partition", "account", "qos"):
            if value := getattr(self, name):
                options[name] = value
        return options | self.extra_options()


def sbatch_line(options: dict[str, str | bool]) -> list[str]:
    return [f"--{name}" if value is True else f"--{name}={value}" for name, value in options.items()]


def network_warning(url: str, slurm: bool) -> str:
    """A warning for SQLite shared by workers on several machines ('' when there is none)."""
    if url.startswith("sqlite") and slurm:
        return "warning: SQLite over a network file system is unsafe for many machines; use PostgreSQL"
    return ""


def check_reachable(url: str) -> None:
    """Refuse a database the compute nodes cannot open as this machine does: a relative or in-memory SQLite."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return  # db.connect says what is wrong with it
    if parsed.get_backend_name() != "sqlite":
        return
    path = parsed.database or ""
    if not path or path == ":memory:" or path.startswith("file:"):
        raise BadInput(f"--db {url}: an in-memory database, which SLURM workers cannot share; nothing submitted")
    if not Path(path).is_absolute():
        raise BadInput(f"--db {url}: a relative path, which each compute node would look for in its own working "
                       f"folder; give an absolute one on a shared file system (sqlite:///{Path(path).resolve()}), "
                       "or PostgreSQL; nothing submitted")


def check_slurm(resources: SlurmResources) -> None:
    """Ask SLURM, before anything is submitted, whether it would take these workers (`sbatch --test-only`):
    a partition, account, QoS, feature or size the cluster lacks is one line naming it."""
    if shutil.which("sbatch") is None:
        raise BadInput("no sbatch on PATH: --slurm submits from a SLURM login node (`bash scripts/slurm-local.sh "
                       "start` makes a one-node cluster of this machine); nothing submitted")
    line = sbatch_line(resources.sbatch_options())
    try:
        answer = subprocess.run(["sbatch", "--test-only", *line, "--wrap=true"], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise StudyError(f"sbatch --test-only did not answer ({error}); nothing submitted") from None
    if answer.returncode != 0:
        words = [w.removeprefix("sbatch: error: ").strip() for w in (answer.stderr + answer.stdout).splitlines()]
        words = list(dict.fromkeys(w for w in words if w))
        raise BadInput(f"SLURM refuses these workers: {'; '.join(words) or f'exit {answer.returncode}'} "
                       f"(sbatch --test-only {' '.join(line)}); nothing submitted")


def local_database_warning(url: str, partition: str | None) -> str:
    """A warning when the database is reached through this machine's own name (localhost, a Unix socket)
    and the workers may run on other nodes ('' otherwise)."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return ""
    host = parsed.host or str(parsed.query.get("host") or "")
    if parsed.get_backend_name() == "sqlite" or (host and host not in ("localhost", "127.0.0.1", "::1")
                                                 and not host.startswith("/")):
        return ""
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%N", *(["-p", partition] if partition else [])],
                               capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        nodes = []
    if set(nodes) <= {socket.gethostname(), socket.gethostname().split(".")[0]} and nodes:
        return ""  # a cluster of this one machine
    return (f"warning: the database is on {host or 'a local socket'}, which each compute node reaches as itself; "
            "give the database server's name in --db")


class Worker:
    """One `study run --resume` process in a submitit job.

    submitit calls `checkpoint` when SLURM's warning comes: the process is told to stop (it has
    the same signal from SLURM), is given the grace to checkpoint and release its job, and submitit
    then requeues the SLURM job with a fresh Worker. A SIGTERM (submitit ignores it) is passed on."""

    def __init__(self, command: list[str], grace_s: float = 60.0):
        self.command = command
        self.grace_s = grace_s
        self._process: subprocess.Popen | None = None

    def __call__(self) -> str:
        self._process = subprocess.Popen(self.command)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._pass_on)
        while self._process.poll() is None:  # not wait(): it would hold the lock checkpoint() waits on
            time.sleep(0.5)
        if code := self._process.returncode:
            stopped = " (stopped by SIGTERM: cancelled, preempted or requeued)" if code in (143, -15) else ""
            raise StudyError(f"`study run` exited {code}{stopped}")
        return "`study run` finished"

    def _pass_on(self, signum: int, _frame) -> None:  # noqa: ANN001
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    def checkpoint(self, *_args, **_kwargs):  # noqa: ANN201 - a submitit DelayedSubmission
        """Let `study run` release its job, then hand submitit the worker to requeue."""
        import submitit

        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGUSR2)
            try:
                process.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:  # killed at the limit: its lease hands the job on
                pass
        return submitit.helpers.DelayedSubmission(Worker(self.command, self.grace_s))


def worker_command(url: str, runs_dir: Path, study: str | None, device: str) -> list[str]:
    """`study run --resume` with this interpreter (the compute nodes share it), absolute paths and the device."""
    if not DEVICE.fullmatch(device):
        raise BadInput(f"--device {device!r}: not a device; use auto, cpu, cuda, cuda:N or mps; nothing submitted")
    return ([sys.executable, "-m", "scaling_study", "run", "--resume", "--db", url, "--runs-dir",
             str(Path(runs_dir).resolve()), "--device", device] + (["--study", study] if study else []))


def start_workers(workers: int, command: list[str], runs_dir: Path, resources: SlurmResources,
                  slurm: bool) -> tuple[list, Path]:
    """Submit `workers` workers in one batch, a SLURM array (or local processes, which heed only
    `resources.hours`): (their submitit jobs, the folder of their logs)."""
    import submitit

    folder = Path(runs_dir).resolve() / "submitit"
    if slurm:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
        options = resources.sbatch_options()
        executor.update_parameters(
            time=resources.minutes, signal_delay_s=resources.signal_delay_s,
            additional_parameters={name.replace("-", "_"): value for name, value in options.items()
                                   if name not in ("time", "signal")},
        )
        grace_s = max(1.0, resources.signal_delay_s * 0.8)
    else:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=resources.minutes)
        grace_s = 60.0
    with executor.batch():
        handles = [executor.submit(Worker(command, grace_s)) for _ in range(workers)]
    return handles, folder


def in_slurm_queue(ids: list[str]) -> set[str]:
    """Those of `ids` SLURM still holds (pending, running, requeued, completing); all of them when it does not answer."""
    arrays = sorted({job_id.split("_")[0] for job_id in ids})
    try:
        answer = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return set(ids)
    if answer.returncode != 0 and "Invalid job id" not in answer.stderr:
        return set(ids)  # slurmctld busy or restarting: ask again later
    return set(ids) & set(answer.stdout.split())


def wait_for(handles: list, slurm: bool, poll_s: float = 10.0) -> dict[str, str]:
    """Wait until every worker has ended (under SLURM: has left the queue, requeues included);
    {job id: how it ended}."""
    ids = [handle.job_id for handle in handles]
    while True:
        running = in_slurm_queue(ids) if slurm else {h.job_id for h in handles if not h.done()}
        if not running:
            break
        time.sleep(poll_s)
    return {handle.job_id: _ending(handle) for handle in handles}


def _ending(handle) -> str:  # noqa: ANN001 - a submitit Job
    """What a worker's last run left: its result, its error's last line, or that it left none (killed)."""
    if not handle.paths.result_pickle.exists():
        return "ended without a result (cancelled or killed before `study run` stopped)"
    try:
        return str(handle.result())
    except Exception as error:  # noqa: BLE001 - a worker's failure is reported, not raised
        words = str(error).strip().splitlines()
        last = re.sub(r"^[\w.]+(Error|Exception): ", "", words[-1]) if words else type(error).__name__
        return f"failed: {last}"
