"""`study submit --slurm` on a real SLURM cluster: `bash scripts/slurm-local.sh start` makes one of
this machine (scripts/test.sh does, so CI runs these tests; elsewhere they skip without `sbatch`).

The workers are real SLURM jobs running real tiny training on a real PostgreSQL database. While they
run, one is requeued mid-job (`scontrol requeue`), then cancelled (`scancel`), and every worker lives
under a one-minute time limit, so each is warned and requeues itself until the study is done. The
rows must equal those of one uninterrupted worker on this machine, each job done once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from scaling_study import db
from test_runner import attempts_per_job, points, states, study
from test_runner import grid_text as runner_grid
from tiny_datasets import FASHION, fashion_subset

pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="apt-get install dataset-fashion-mnist")

# A one-minute limit, warned 10 s before it: slurmctld checks limits every 30 s, so the warning
# comes 20 to 50 s into each run, and each worker is warned, released and requeued about once a minute.
LIMIT = ("--hours", "0.0167", "--signal-delay", "10")
SMALL = ("--cpus-per-worker", "1", "--gpus-per-worker", "0", "--mem-gb", "1")


@pytest.fixture(scope="module")
def cluster() -> None:
    """The SLURM cluster this machine submits to: skipped without `sbatch`, failed when CI says it must be there."""
    problem = ""
    if shutil.which("sbatch") is None:
        problem = "no sbatch on PATH: `bash scripts/slurm-local.sh start` installs and starts a one-node cluster"
    elif subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("UP") == 0:
        problem = "slurmctld does not answer: `bash scripts/slurm-local.sh start`"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)


def grid_text(data: Path, name: str = "slurm", examples: str = "[400, 500, 600, 700, 800, 900]",
              epochs: str = "[1, 300]") -> str:
    return runner_grid(name=name, examples=examples, epochs=epochs, batch=20, data=data)


def slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True).stdout


def in_queue(ids: list[str]) -> dict[str, str]:
    """{SLURM job id: state} of those of `ids` still pending or running."""
    out = slurm("squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted({i.split("_")[0] for i in ids})))
    listed = dict(line.split() for line in out.splitlines() if line.strip())
    return {i: listed[i] for i in ids if i in listed}


def open_attempts(url: str) -> dict[str, int]:
    """{SLURM job id: job id} of the attempts now running."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.attempts.c.slurm_job, db.attempts.c.job_id)
                            .where(db.attempts.c.outcome.is_(None))).all()
    engine.dispose()
    return {slurm_job: job_id for slurm_job, job_id in rows if slurm_job}


def attempt_rows(url: str) -> list[dict]:
    engine = db.connect(url)
    rows = db.attempt_rows(engine)
    engine.dispose()
    return rows


def wait_until(condition, what: str, timeout: float = 300.0, every: float = 0.5):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


def submitted_ids(stdout: str) -> list[str]:
    """The SLURM job ids `study submit` printed: 'submitted 2 workers: 12_0, 12_1 (logs in ...)'."""
    listed = stdout.split("workers:", 1)[1].split("(", 1)[0]
    return [part.strip() for part in listed.split(",")]


def test_two_workers_finish_the_study_through_requeue_time_limits_and_scancel(cluster, postgres_url, tmp_path):
    data = fashion_subset(tmp_path / "fashion", 1000, 300)  # about 3 minutes of work on one idle core
    one_thread = dict(os.environ, STUDY_THREADS="1")  # the workers and the lone run compute alike (sbatch passes it on)
    (tmp_path / "grid.toml").write_text(grid_text(data))
    study("plan", "grid.toml", "--db", postgres_url, cwd=tmp_path)
    started = time.monotonic()
    result = study("submit", "--slurm", "--workers", 2, *SMALL, *LIMIT, "--db", postgres_url, "--runs-dir",
                   tmp_path / "runs", cwd=tmp_path, env=one_thread)
    ids = submitted_ids(result.stdout)
    assert len(ids) == 2
    requeued, other = ids
    try:
        # mid-job: once the worker holds a job, `scontrol requeue` stops it (SIGTERM) and queues it again.
        # A time-limit warning may come first (the worker then requeues itself): try again at its next claim.
        wide = dict(os.environ, COLUMNS="200")
        while not any(a["slurm_job"] == requeued and "SIGTERM" in (a["message"] or "") for a in attempt_rows(postgres_url)):
            held = wait_until(lambda: open_attempts(postgres_url).get(requeued), f"{requeued} to claim a job")
            assert requeued in study("status", "--db", postgres_url, cwd=tmp_path, env=wide).stdout  # its SLURM job
            if subprocess.run(["scontrol", "requeue", requeued], capture_output=True).returncode == 0:
                wait_until(lambda: open_attempts(postgres_url).get(requeued) != held, f"{requeued} to release {held}")
            else:  # not running: it requeued itself meanwhile
                wait_until(lambda: not open_attempts(postgres_url).get(requeued), f"{requeued} to stop")
        # back from the queue, it starts again and claims a job (unless the other worker left none);
        # then `scancel` ends it for good, its job released
        log = next((tmp_path / "runs" / "submitit").glob(f"{requeued}_*log.out"))
        came_back = wait_until(lambda: open_attempts(postgres_url).get(requeued) or (
            log.read_text().count("Starting with") >= 2 and not in_queue([requeued]) and "finished"),
            f"{requeued} to start again after its requeue")
        if came_back != "finished":
            slurm("scancel", requeued)
        # meanwhile, a one-worker run of the same grid on this machine: the rows every run must have
        (tmp_path / "alone").mkdir()
        (tmp_path / "alone" / "grid.toml").write_text(grid_text(data))
        alone = f"sqlite:///{tmp_path / 'alone' / 'results.db'}"
        study("plan", "grid.toml", "--db", alone, cwd=tmp_path / "alone")
        subprocess.run([sys.executable, "-m", "scaling_study", "run", "--db", alone], cwd=tmp_path / "alone",
                       capture_output=True, check=True, timeout=1200, env=one_thread)  # the helper's 600 s are short on a busy machine
        wait_until(lambda: not in_queue(ids), "the workers to leave the queue", timeout=1200, every=2)
    finally:
        subprocess.run(["scancel", *ids], capture_output=True)
    elapsed = time.monotonic() - started
    assert states(postgres_url) == ["done"] * 6, study("status", "--db", postgres_url, cwd=tmp_path).stdout
    outcomes = attempts_per_job(postgres_url)
    assert all(runs.count("done") == 1 for runs in outcomes.values()), outcomes
    assert points(postgres_url) == points(alone)  # each point once (points() checks), and equal to one worker's
    history = attempt_rows(postgres_url)
    by = {slurm_job: [a for a in history if a["slurm_job"] == slurm_job] for slurm_job in ids}
    assert {a["slurm_job"] for a in history} == set(ids), "every attempt records the SLURM job that made it"
    released = [a["message"] for a in history if a["outcome"] == "released"]
    assert any("SIGTERM" in m for m in released), released  # the requeue (and the scancel, unless a warning came first)
    assert any("SIGUSR2" in m for m in released), released  # a time-limit warning: checkpointed, requeued
    assert all(a["outcome"] in ("released", "done") for a in history), history  # nobody lost a job
    assert by[requeued][-1]["outcome"] == "released"
    assert len(by[requeued]) >= 2 or came_back == "finished"  # it claimed again after its requeue
    assert by[other], "the other worker ran nothing"
    print(f"the study took {elapsed:.0f} s on SLURM, {len(history)} attempts")


def test_a_partition_or_resources_the_cluster_lacks_submit_nothing(cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    data = fashion_subset(tmp_path / "fashion", 100, 100)
    (tmp_path / "grid.toml").write_text(grid_text(data, examples="[100]", epochs="[1]"))
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    before = slurm("squeue", "-h", "-o", "%i")
    for extra, needle in ((("--partition", "nowhere"), "nowhere"),
                          (("--gpus-per-worker", "1"), "gres"),  # the default: this cluster has no GPUs
                          (("--sbatch=--constraint=nosuchfeature",), "nosuchfeature")):
        args = ("--cpus-per-worker", "1", "--gpus-per-worker", "0", *extra)  # the last --gpus-per-worker counts
        result = study("submit", "--slurm", *args, "--db", url, cwd=tmp_path, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (extra, result.stdout, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0].lower(), lines
        assert "nothing submitted" in lines[0]
        assert not (tmp_path / "runs" / "submitit").exists()
    assert slurm("squeue", "-h", "-o", "%i") == before


def test_submit_wait_on_sqlite_reports_the_workers_and_the_study(cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    data = fashion_subset(tmp_path / "fashion", 300, 100)
    (tmp_path / "grid.toml").write_text(grid_text(data, name="smoke", examples="[100]", epochs="[1]"))
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    result = study("submit", "--slurm", "--workers", 2, *SMALL, "--device", "cpu", "--db", url, "--wait",
                   cwd=tmp_path)
    assert "SQLite over a network file system is unsafe" in result.stdout  # one node is fine, many are not
    assert "all workers finished: 1 done" in result.stdout, result.stdout
    assert states(url) == ["done"]
    provenance = db.job_rows(db.connect(url))[0]["provenance"]
    assert '"device": "cpu"' in provenance

