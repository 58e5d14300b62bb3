"""`study run` on real tiny training: kill -9, SIGTERM, concurrent workers, divergence, full disk.

Workers are real `study run` processes started by the tests; results are compared bit for bit
with an uninterrupted run of the same grid.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from scaling_study import db
from tiny_datasets import fashion_subset

FASHION = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not Path(FASHION).exists(), reason="apt-get install dataset-fashion-mnist")
pytestmark = needs_fashion


@pytest.fixture(scope="module", autouse=True)
def small_fashion(tmp_path_factory) -> None:
    """The first 3,000 training and 1,000 test images of the real Fashion-MNIST, as IDX files:
    the same code paths as the full set, with evaluations ten times cheaper."""
    global DATA
    folder = fashion_subset(tmp_path_factory.mktemp("fashion-small"), 3000, 1000)
    DATA = str(folder)


DATA = FASHION


def grid_text(name="runner", models=('"B-1/Wi-16"',), examples="[300, 600]", epochs="[1, 2, 3]", lr="1e-3",
              optimizer="lion", batch=50, data=None) -> str:
    return f"""
[study]
name = "{name}"
seed = 0

[data.pretrain]
dataset = "fashion-mnist"
path = "{data or DATA}"

[[data.downstream]]
dataset = "fashion-mnist"
path = "{data or DATA}"
protocol = "linear"

[grid]
models = [{", ".join(models)}]
examples = {examples}
epochs = {epochs}

[train]
optimizer = "{optimizer}"
lr = {lr}
batch_size = {batch}
precision = "fp32"

[evaluation]
probe = "fast"
"""


def study(*args, cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the real `study` command in a subprocess."""
    result = subprocess.run([sys.executable, "-m", "scaling_study", *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, timeout=600, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"study {' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def start(*args, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scaling_study", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def points(url: str) -> dict[tuple, float]:
    """Every evaluation point, keyed by (job spec hash, epoch, metric)."""
    engine = sa.create_engine(url)
    query = sa.select(db.jobs.c.spec_hash, db.evaluations.c.epoch, db.evaluations.c.metric, db.evaluations.c.value)
    with engine.connect() as conn:
        rows = conn.execute(query.select_from(db.evaluations.join(db.jobs))).all()
    engine.dispose()
    keys = [(h, e, m) for h, e, m, _ in rows]
    assert len(keys) == len(set(keys)), "an evaluation point was recorded twice"
    return {(h, e, m): v for h, e, m, v in rows}


def states(url: str) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        result = list(conn.execute(sa.select(db.jobs.c.state).order_by(db.jobs.c.id)).scalars())
    engine.dispose()
    return result


def attempts_per_job(url: str) -> dict[int, list[str]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.attempts.c.job_id, db.attempts.c.outcome)).all()
    engine.dispose()
    out: dict[int, list[str]] = {}
    for job_id, outcome in rows:
        out.setdefault(job_id, []).append(outcome)
    return out


def folder_of(url: str, runs: Path, job_id: int) -> Path:
    """The job's checkpoint-and-log folder, as `study run` and `study logs` find it."""
    from scaling_study.runner import job_dir

    engine = db.connect(url)
    row = db.job_row(engine, job_id)
    engine.dispose()
    return job_dir(runs, row)


def log_lines(folder: Path) -> int:
    """Lines in all job logs: a worker writes one when it claims a job, one per finished epoch and
    one when the job ends, so counting them follows its progress without timing it."""
    return sum(len(p.read_text().splitlines()) for p in folder.glob("runs/*/job-*/log.txt"))


def wait_for_lines(worker: subprocess.Popen, folder: Path, count: int) -> float:
    """Block until the job logs hold `count` lines or the worker has exited; returns the time."""
    while log_lines(folder) < count and worker.poll() is None:
        time.sleep(0.01)
    return time.monotonic()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[dict[tuple, float], float]:
    """The grid run once, uninterrupted: its points (what every interrupted run must reproduce bit
    for bit) and the seconds from the first claim to the end (how long an epoch takes)."""
    folder = tmp_path_factory.mktemp("reference")
    (folder / "grid.toml").write_text(grid_text())
    url = f"sqlite:///{folder / 'results.db'}"
    study("plan", "grid.toml", "--db", url, cwd=folder)
    worker = start("run", "--db", url, cwd=folder)
    claimed = wait_for_lines(worker, folder, 1)
    out, err = worker.communicate(timeout=600)
    work_s = time.monotonic() - claimed
    assert worker.returncode == 0, out + err
    assert states(url) == ["done", "done"]
    result = points(url)
    # 2 jobs x 3 epochs x (upstream top1, top5, probe, train loss)
    assert len(result) == 2 * 3 * 4, sorted(result)
    return result, work_s


@pytest.fixture(scope="module")
def reference(reference_run) -> dict[tuple, float]:
    return reference_run[0]


def test_run_records_every_point_once(reference):
    metrics = {m for _, _, m in reference}
    assert metrics == {"upstream/top1", "upstream/top5", "fashion-mnist/linear", "train/loss"}
    assert all(0 <= v <= 1 for (_, _, m), v in reference.items() if m != "train/loss")


@pytest.mark.parametrize("trial", range(3))
def test_kill_9_then_resume_is_bit_identical(trial, reference_run, tmp_path):
    """Each kill lands a random fraction of an epoch after a random log line (claim, epoch end or
    job end), chosen so that work is left: a kill that comes after the end would test nothing,
    and waiting on log lines rather than on a measured duration keeps that true on a slow machine."""
    reference, work_s = reference_run
    (tmp_path / "grid.toml").write_text(grid_text())
    url = f"sqlite:///{tmp_path / 'results.db'}"
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    rng = random.Random(trial)
    epoch_s = work_s / 6  # 2 jobs x 3 epochs
    # an uninterrupted run logs 10 lines (per job: claim, 3 epochs, end); after line 7 at least
    # two epochs of job 2 are left, more than the at most half an epoch slept after the line
    kills = 0
    for last_line in (rng.randint(1, 7), rng.randint(1, 3)):  # the second worker may find it all done
        before = log_lines(tmp_path)
        worker = start("run", "--resume", "--db", url, "--checkpoint-every", 1, cwd=tmp_path)
        seen = wait_for_lines(worker, tmp_path, before + last_line)
        time.sleep(max(0.0, seen + rng.uniform(0.0, 0.5) * epoch_s - time.monotonic()))
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            kills += 1
        worker.communicate(timeout=60)
    study("run", "--resume", "--db", url, cwd=tmp_path)  # the dead worker's lease is void at once (same host)
    assert states(url) == ["done", "done"]
    assert points(url) == reference
    assert kills >= 1, "the first worker finished before its kill: the test killed nothing"


def test_sigterm_checkpoints_releases_and_resumes(reference, tmp_path):
    (tmp_path / "grid.toml").write_text(grid_text())
    url = f"sqlite:///{tmp_path / 'results.db'}"
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    worker = start("run", "--db", url, cwd=tmp_path)
    job_dir = folder_of(url, tmp_path / "runs", 1)
    deadline = time.time() + 60
    while not (job_dir / "log.txt").exists() and time.time() < deadline:  # the job has started
        time.sleep(0.05)
    time.sleep(0.3)
    sent = time.time()
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert time.time() - sent < 10, "SIGTERM must stop the worker within seconds"
    assert worker.returncode == 143, (out, err)
    assert "SIGTERM received" in out
    assert states(url)[0] == "pending"
    assert attempts_per_job(url)[1] == ["released"]
    assert (job_dir / "checkpoint.pt").exists()
    plain = study("run", "--db", url, cwd=tmp_path)  # without --resume the interrupted job waits
    assert "interrupted jobs wait" in plain.stdout
    study("run", "--resume", "--db", url, cwd=tmp_path)
    assert states(url) == ["done", "done"]
    assert points(url) == reference
    assert "resuming from" in (job_dir / "log.txt").read_text()


def run_concurrently(url: str, folder: Path, workers: int = 4) -> None:
    (folder / "grid.toml").write_text(grid_text(examples="[100, 200, 300]", epochs="[1, 2]",
                                                models=('"B-1/Wi-8"', '"B-1/Wi-16"', '"B-2/Wi-8"')))
    study("plan", "grid.toml", "--db", url, cwd=folder)
    procs = [start("run", "--db", url, cwd=folder) for _ in range(workers)]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (out, err)
    assert states(url) == ["done"] * 9
    runs = attempts_per_job(url)
    assert all(outcomes == ["done"] for outcomes in runs.values()), runs
    assert len(points(url)) == 9 * 2 * 4


def test_four_workers_on_sqlite_never_run_a_job_twice(tmp_path):
    run_concurrently(f"sqlite:///{tmp_path / 'results.db'}", tmp_path)


def test_four_workers_on_postgresql_never_run_a_job_twice(postgres_url, tmp_path):
    run_concurrently(postgres_url, tmp_path)


def test_diverged_and_failed_jobs_are_rows_and_the_study_goes_on(tmp_path, cli):
    text = grid_text(name="mixed", optimizer="sgd", lr="1e6", examples="[200]", epochs="[1]")
    text = text.replace('models = ["B-1/Wi-16"]', 'models = ["B-1/Wi-16", "B-1/Wi-8"]')
    (tmp_path / "grid.toml").write_text(text)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    broken = tmp_path / "broken.toml"  # same study, one more job whose data is missing
    broken.write_text(grid_text(name="mixed", examples="[200]", epochs="[1]").replace(DATA, str(tmp_path / "nowhere"), 1))
    study("plan", broken, "--db", url, cwd=tmp_path)
    refused = study("run", "--db", url, cwd=tmp_path, check=False)  # missing data: nothing claimed
    assert refused.returncode == 2 and "nowhere" in refused.stderr and "nothing was claimed" in refused.stderr
    assert states(url) == ["pending"] * 3
    (tmp_path / "nowhere").mkdir()  # a folder without the data: the job fails at run time, with the reason
    result = study("run", "--db", url, cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: 1 jobs failed"), result.stderr
    assert "Traceback" not in result.stderr
    assert states(url) == ["diverged", "diverged", "failed"]
    engine = db.connect(url)
    rows = db.job_rows(engine)
    assert "step" in rows[0]["error"] and "nowhere" in rows[2]["error"]
    status = study("status", "--db", url, cwd=tmp_path).stdout
    assert "diverged" in status and "nowhere" in status
    assert "failed" in study("logs", 3, "--db", url, cwd=tmp_path).stdout
    assert "failed -> pending" in study("retry", 3, "--db", url, cwd=tmp_path).stdout
    assert "pending -> cancelled" in study("cancel", 3, "--db", url, cwd=tmp_path).stdout
    assert study("cancel", 3, "--db", url, cwd=tmp_path, check=False).returncode == 2


def test_full_disk_keeps_the_previous_checkpoint(tmp_path):
    # 300 steps per epoch: SIGTERM, sent once epoch 1's checkpoint is there, lands well inside epoch 2
    (tmp_path / "grid.toml").write_text(grid_text(name="disk", models=('"B-2/Wi-128"',), examples="[3000]",
                                                  epochs="[1, 2]", batch=10))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    worker = start("run", "--db", url, cwd=tmp_path)
    checkpoint = folder_of(url, tmp_path / "runs", 1) / "checkpoint.pt"
    deadline = time.time() + 60
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.02)
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=30)
    before = checkpoint.read_bytes()
    assert len(before) > 2_000_000

    def small_files():  # any file written beyond 1.5 MB fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))

    result = study("run", "--resume", "--db", url, cwd=tmp_path, check=False, preexec_fn=small_files)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "disk full" in result.stderr and "previous checkpoint is intact" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert checkpoint.read_bytes() == before
    assert not [p for p in checkpoint.parent.iterdir()
                if p.name not in ("checkpoint.pt", "log.txt", "curve.csv", "tensorboard")]  # no temporary file left
    assert states(url) == ["pending"]
    study("run", "--resume", "--db", url, cwd=tmp_path)
    assert states(url) == ["done"]


def test_submitit_local_executor_runs_the_study(tmp_path):
    (tmp_path / "grid.toml").write_text(grid_text(examples="[100]", epochs="[1]"))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = study("submit", "--workers", 2, "--db", url, "--wait", cwd=tmp_path, env=env)
    assert "all workers finished" in result.stdout
    assert states(url) == ["done"]
    assert list(attempts_per_job(url).values()) == [["done"]]


def test_a_database_that_refuses_writes_stops_the_worker_and_loses_nothing(tmp_path):
    (tmp_path / "grid.toml").write_text(grid_text(name="refused", examples="[300]", epochs="[1, 2]"))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the real engine refuses every new evaluation point, as a full disk would
        conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE INSERT ON evaluations "
                             "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    result = study("run", "--db", url, cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"error: the database {tmp_path / 'results.db'} (in {tmp_path}) is on a full disk: "
                                    "could not record job 1's progress (database or disk is full)"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert (folder_of(url, tmp_path / "runs", 1) / "checkpoint.pt").exists()
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse")
    engine.dispose()
    assert points(url) == {}
    study("run", "--resume", "--db", url, cwd=tmp_path)
    assert states(url) == ["done"]
    assert sorted({(e, m) for _, e, m in points(url)}) == [
        (e, m) for e in (1, 2) for m in ("fashion-mnist/linear", "train/loss", "upstream/top1", "upstream/top5")]


def test_a_new_database_does_not_take_over_another_databases_checkpoints(tmp_path):
    """runs/ outlives results.db: a study of the same name in a new database trains afresh in
    folders of its own, whether its grid is the same (no silent reuse of old results) or not
    (no refusal by a checkpoint written for another job), and the old folders stay untouched."""
    (tmp_path / "grid.toml").write_text(grid_text(examples="[100]", epochs="[1]"))
    first = f"sqlite:///{tmp_path / 'first.db'}"
    study("plan", "grid.toml", "--db", first, cwd=tmp_path)
    study("run", "--db", first, cwd=tmp_path)
    old = folder_of(first, tmp_path / "runs", 1)
    old_files = {str(p.relative_to(old)): p.read_bytes() for p in old.rglob("*") if p.is_file()}  # curves included
    assert "checkpoint.pt" in old_files

    for name, text in (("same.db", grid_text(examples="[100]", epochs="[1]")),
                       ("other.db", grid_text(examples="[150]", epochs="[1]", lr="2e-3"))):
        (tmp_path / "grid.toml").write_text(text)
        url = f"sqlite:///{tmp_path / name}"
        study("plan", "grid.toml", "--db", url, cwd=tmp_path)
        result = study("run", "--resume", "--db", url, cwd=tmp_path)
        assert "1 done" in result.stdout and states(url) == ["done"]
        new = folder_of(url, tmp_path / "runs", 1)
        assert new != old and new.parent.name.startswith("runner-")
        assert "resuming from" not in (new / "log.txt").read_text()
        logs = study("logs", 1, "--db", url, cwd=tmp_path).stdout  # finds the new folder
        assert "attempt 1:" in logs and "done after 1 epochs" in logs and "resuming" not in logs
    assert {str(p.relative_to(old)): p.read_bytes() for p in old.rglob("*") if p.is_file()} == old_files


def test_kill_9_then_resume_logs_every_step_of_the_curves_once(tmp_path):
    """A worker killed mid-epoch, after some of the epoch's steps reached the event file past its
    last checkpoint, then resumed: TensorBoard's own reader and curve.csv find each step once."""
    from scaling_study.curves import CSV_NAME, TENSORBOARD_DIR, read_events, run_name

    text = grid_text(name="curves", examples="[2000]", epochs="[1, 3]", batch=10) + "\n[logging]\ntensorboard = true\n"
    (tmp_path / "grid.toml").write_text(text)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    folder = folder_of(url, tmp_path / "runs", 1)
    run = folder / TENSORBOARD_DIR / run_name("B-1/Wi-16", 2000, 0)
    often = dict(os.environ, STUDY_CURVES_FLUSH_S="0.2")  # curves flushed between checkpoints too
    worker = start("run", "--db", url, cwd=tmp_path, env=often)
    wait_for_lines(worker, tmp_path, 2)  # claimed, then epoch 1 ended: checkpoint and curves at step 200
    size = lambda: sum(p.stat().st_size for p in run.glob("events.*"))  # noqa: E731
    flushed = size()
    while size() == flushed and worker.poll() is None:  # epoch 2's first steps reach the disk
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == -signal.SIGKILL, out + err
    before = read_events(run)
    assert max(step for step, _ in before["step/loss"]) > 200, "nothing past the checkpoint: the test tests nothing"
    study("run", "--resume", "--db", url, cwd=tmp_path)
    assert states(url) == ["done"]
    after = read_events(run)
    assert len(list(run.glob("events.*"))) == 2  # the resumed attempt appended a file to the same run
    for tag in ("step/loss", "step/lr", "step/images_per_s"):
        assert [step for step, _ in after[tag]] == list(range(1, 601)), tag
    evaluated = {tag for tag in after if tag.startswith("eval/")}
    assert evaluated == {f"eval/{m}" for m in ("upstream/top1", "upstream/top5", "fashion-mnist/linear", "train/loss")}
    assert all([step for step, _ in after[tag]] == [200, 600] for tag in evaluated)
    recorded = {(e, m): v for (_, e, m), v in points(url).items()}
    assert all(after[f"eval/{m}"][[200, 600].index(e * 200)][1] == pytest.approx(v, rel=1e-6)
               for (e, m), v in recorded.items())
    rows = (folder / CSV_NAME).read_text().splitlines()
    assert rows[0] == "step,loss,lr,images_per_s"
    assert [int(row.split(",")[0]) for row in rows[1:]] == list(range(1, 601))


def test_the_grid_turns_tensorboard_curves_on_or_off(tmp_path, cli):
    """[logging] tensorboard is read from the study's grid in the database; false leaves curve.csv alone."""
    import json

    from scaling_study.curves import CsvCurve, TensorBoardCurve, open_curves
    from scaling_study.plan import JobSpec
    from scaling_study.runner import logging_setting

    url = f"sqlite:///{tmp_path / 'results.db'}"
    for name, extra, expected in (("off", "\n[logging]\ntensorboard = false\n", False), ("auto", "", None)):
        (tmp_path / "grid.toml").write_text(grid_text(name=name, examples="[100]", epochs="[1]") + extra)
        assert cli("plan", tmp_path / "grid.toml", "--db", url).exit_code == 0
        engine = db.connect(url)
        assert logging_setting(engine, name) is expected
        spec = JobSpec.from_dict(json.loads(db.job_rows(engine, name)[0]["spec"]))
        curves = open_curves(tmp_path / name, spec, expected)
        kinds = [type(sink) for sink in curves.sinks]
        curves.close()
        assert kinds == ([CsvCurve] if expected is False else [CsvCurve, TensorBoardCurve])  # tensorboard is installed
        assert (tmp_path / name / "tensorboard").exists() is (expected is None)


def test_each_epoch_records_its_time_by_part_in_the_log_and_the_curves(tmp_path):
    """A slow run can be explained: every epoch's line in the job's log, and its TensorBoard
    time/*_s scalars at the epoch's last step, give its seconds by part, which add up to its wall
    time; evaluation and checkpoint time fall in the epochs that evaluate and checkpoint."""
    from scaling_study.curves import TENSORBOARD_DIR, read_events, run_name
    from scaling_study.timing import PARTS

    text = grid_text(name="timing", examples="[600]", epochs="[1, 3]") + "\n[logging]\ntensorboard = true\n"
    (tmp_path / "grid.toml").write_text(text)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    study("plan", "grid.toml", "--db", url, cwd=tmp_path)
    study("run", "--db", url, cwd=tmp_path)
    folder = folder_of(url, tmp_path / "runs", 1)
    times = read_events(folder / TENSORBOARD_DIR / run_name("B-1/Wi-16", 600, 0))
    steps = [12, 24, 36]  # 600 examples in batches of 50: the last step of each epoch
    by_epoch = [{part: dict(times[f"time/{part}_s"])[step] for part in (*PARTS, "wall")} for step in steps]
    for epoch in by_epoch:
        assert sum(epoch[part] for part in PARTS) == pytest.approx(epoch["wall"], rel=1e-4)
        assert epoch["train"] > 0 and epoch["curves"] > 0 and epoch["database"] > 0
    first, second, third = by_epoch
    assert first["setup"] > 0 and second["setup"] == third["setup"] == 0  # data, loader and model: once per attempt
    assert first["eval"] > 0 and third["eval"] > 0 and second["eval"] == 0  # T = [1, 3]
    assert first["checkpoint"] > 0 and third["checkpoint"] > 0 and second["checkpoint"] == 0  # seconds after epoch 1's
    log = (folder / "log.txt").read_text()  # what `study logs 1` prints (wrapped to the terminal)
    lines = [line for line in log.splitlines() if " epoch " in line and " s = " in line]
    assert [line.split(" epoch ")[1].split(":")[0] for line in lines] == ["1", "2", "3"]
    assert "fashion-mnist/linear=" in lines[0] and "fashion-mnist/linear=" not in lines[1]
    assert all(f"{part} " in lines[0] for part in ("setup", "train", "eval", "checkpoint", "database", "curves"))
    assert "done after 3 epochs; this attempt's 3 epochs: " in log
