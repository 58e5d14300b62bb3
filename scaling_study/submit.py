"""Workers started through submitit: SLURM jobs, or local processes, each a `study run --resume` on one database."""

from __future__ import annotations

from pathlib import Path

from .errors import Fault

CPUS_PER_TASK = 8  # loader threads and the evaluation's work beside one GPU
SLURM_SIGNAL_DELAY_S = 120  # SLURM's warning before the time limit: time to checkpoint (`study run` stops on it)


def network_warning(url: str, slurm: bool) -> str:
    """A warning for SQLite shared by workers on several machines ('' when there is none)."""
    if url.startswith("sqlite") and slurm:
        return "warning: SQLite over a network file system is unsafe for many machines; use PostgreSQL"
    return ""


def start_workers(workers: int, url: str, runs_dir: Path, study: str | None = None, slurm: bool = False,
                  partition: str | None = None, gpus_per_worker: int = 1, hours: float = 24.0) -> tuple[list, Path]:
    """Submit `workers` workers in one batch: (their submitit jobs, the folder of their logs)."""
    import submitit

    folder = Path(runs_dir) / "submitit"
    if slurm:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(
            timeout_min=int(hours * 60), gpus_per_node=gpus_per_worker, tasks_per_node=1, cpus_per_task=CPUS_PER_TASK,
            slurm_signal_delay_s=SLURM_SIGNAL_DELAY_S, **({"slurm_partition": partition} if partition else {}),
        )
    else:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=int(hours * 60))
    command = ["study", "run", "--resume", "--db", url, "--runs-dir", str(runs_dir)] + (["--study", study] if study else [])
    with executor.batch():
        handles = [executor.submit(submitit.helpers.CommandFunction(command, verbose=False)) for _ in range(workers)]
    return handles, folder


def wait_for(handles: list) -> None:
    """Wait for every worker; the first that failed is a Fault naming it and its last words."""
    for handle in handles:
        try:
            handle.result()
        except Exception as error:  # noqa: BLE001 - report each worker's failure as one line
            raise Fault(f"worker {handle.job_id} failed: {str(error).strip().splitlines()[-1]}") from None
