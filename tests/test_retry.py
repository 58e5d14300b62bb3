"""`study retry` and `study cancel` with real workers: attempt numbers only grow, every attempt
gets an outcome, and a job that cannot be set up fails with its reason while the study goes on."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from scaling_study import db
from tiny_datasets import fashion_subset

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="apt-get install dataset-fashion-mnist")


def small_fashion(folder: Path, train: int = 300, test: int = 100) -> Path:
    """The first images of the real Fashion-MNIST: real data, tiny jobs."""
    return fashion_subset(folder, train, test)


def grid(data: Path, name: str = "retry", epochs: str = "[1]") -> str:
    return f"""
[study]
name = "{name}"

[data.pretrain]
dataset = "fashion-mnist"
path = "{data}"

[grid]
models = ["B-1/Wi-8"]
examples = [100]
epochs = {epochs}
seeds = [0, 1, 2]

[train]
lr = 1e-3
batch_size = 50
precision = "fp32"

[evaluation]
probe = "fast"
"""


def study(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "scaling_study", *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"study {' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def attempts(url: str) -> dict[int, list[tuple[int, str | None]]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.attempts.c.job_id, db.attempts.c.attempt, db.attempts.c.outcome)
                            .order_by(db.attempts.c.job_id, db.attempts.c.attempt)).all()
    engine.dispose()
    out: dict[int, list] = {}
    for job_id, number, outcome in rows:
        out.setdefault(job_id, []).append((number, outcome))
    return out


def job_folder(url: str, runs: Path, job_id: int) -> Path:
    from scaling_study.runner import job_dir

    engine = db.connect(url)
    row = db.job_row(engine, job_id)
    engine.dispose()
    return job_dir(runs, row)


def retry_then_resume_runs_everything(url: str, tmp_path: Path) -> None:
    data = small_fashion(tmp_path / "data")
    (tmp_path / "grid.toml").write_text(grid(data))
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    # job 1 fails for real at set-up: its folder's place is taken by a file
    blocker = job_folder(url, tmp_path / "runs", 1)
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    failed = study("run", "--db", url, "--device", "cpu", "--max-jobs", 1, cwd=tmp_path, check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    engine = db.connect(url)
    row = db.job_row(engine, 1)
    assert row["state"] == "failed" and "set-up failed" in row["error"] and "job-1" in row["error"], row["error"]
    blocker.unlink()
    assert "failed -> pending" in study("retry", 1, "--db", url, cwd=tmp_path).stdout
    done = study("run", "--resume", "--db", url, "--device", "cpu", cwd=tmp_path)
    assert "3 done" in done.stdout, done.stdout
    assert [r["state"] for r in db.job_rows(engine)] == ["done"] * 3
    assert attempts(url) == {1: [(1, "failed"), (2, "done")], 2: [(1, "done")], 3: [(1, "done")]}
    # a second retry-and-run of a done job is refused; a failed-again job keeps numbering upwards
    assert study("retry", 1, "--db", url, cwd=tmp_path, check=False).returncode != 0
    logs = study("logs", 1, "--db", url, cwd=tmp_path).stdout
    assert "attempt 1:" in logs and "attempt 2:" in logs and "-> failed (set-up failed" in logs
    engine.dispose()


def test_retry_then_resume_runs_every_job_on_sqlite(tmp_path):
    retry_then_resume_runs_everything(f"sqlite:///{tmp_path / 'results.db'}", tmp_path)


def test_retry_then_resume_runs_every_job_on_postgresql(postgres_url, tmp_path):
    retry_then_resume_runs_everything(postgres_url, tmp_path)


def test_cancel_of_a_running_job_records_its_attempt_and_retry_numbers_the_next(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    data = small_fashion(tmp_path / "data")
    (tmp_path / "grid.toml").write_text(grid(data, name="cancel", epochs="[1, 5000]"))  # long: cancelled midway
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    log = job_folder(url, tmp_path / "runs", 1) / "log.txt"
    for attempt in (1, 2):
        worker = subprocess.Popen([sys.executable, "-m", "scaling_study", "run", "--resume", "--db", url, "--device",
                                   "cpu", "--max-jobs", "1", "--lease", "3"], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        while worker.poll() is None and not (log.exists() and f"attempt {attempt} by" in log.read_text()):
            time.sleep(0.02)  # wait for the claim's log line, whatever the machine's speed
        assert "job 1: running -> cancelled" in study("cancel", 1, "--db", url, cwd=tmp_path).stdout
        out, err = worker.communicate(timeout=600)
        assert "Traceback" not in err, err
        assert attempts(url)[1] == [(n, "cancelled") for n in range(1, attempt + 1)]
        assert "cancelled -> pending" in study("retry", 1, "--db", url, cwd=tmp_path).stdout


def test_a_job_whose_curves_cannot_be_opened_fails_with_the_reason_and_the_study_goes_on(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    data = small_fashion(tmp_path / "data")
    (tmp_path / "grid.toml").write_text(grid(data, name="curves") + "\n[logging]\ntensorboard = true\n")
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    folder = job_folder(url, tmp_path / "runs", 1)
    folder.mkdir(parents=True)
    (folder / "tensorboard").write_text("a file where the events' folder goes")
    result = study("run", "--db", url, "--device", "cpu", cwd=tmp_path, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    engine = db.connect(url)
    states = {row["id"]: (row["state"], row["error"]) for row in db.job_rows(engine)}
    engine.dispose()
    assert states[1][0] == "failed" and states[1][1].startswith("set-up failed: "), states[1]
    assert states[2][0] == states[3][0] == "done"
    assert attempts(url)[1] == [(1, "failed")]
