"""Claims, leases and outcomes on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections import namedtuple
from pathlib import Path

import pytest

from scaling_study import db
from scaling_study.grid import load_grid
from scaling_study.plan import expand

EvalPoint = namedtuple("EvalPoint", "epoch metric value")  # what train.EvalPoint holds
SMOKE = Path(__file__).resolve().parent.parent / "grids" / "smoke.toml"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = db.connect(url)
    grid = load_grid(SMOKE)
    db.add_jobs(engine, grid.study.name, str(SMOKE), grid.text, expand(grid))
    yield engine
    engine.dispose()


def test_parallel_claims_never_hand_out_a_job_twice(engine):
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while (job := db.claim_job(engine, f"elsewhere:{n}:w", 60)) is not None:
            with lock:
                claimed.append(job["id"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 4


def test_expired_lease_returns_the_job_then_fails_it(engine):
    job = db.claim_job(engine, "elsewhere:1:a", 60)
    assert db.reclaim_lost(engine, "here", max_attempts=2) == []  # lease still valid, other host
    with engine.begin() as conn:
        conn.execute(db.jobs.update().values(lease_expires=db.now() - dt.timedelta(seconds=1)))
    assert db.reclaim_lost(engine, "here", max_attempts=2) == [(job["id"], "pending")]
    again = db.claim_job(engine, "elsewhere:2:b", 60)
    assert again["id"] == job["id"] and again["attempts"] == 2
    assert not db.renew_lease(engine, job["id"], "elsewhere:1:a", 60)  # the old worker lost it
    with engine.begin() as conn:
        conn.execute(db.jobs.update().values(lease_expires=db.now() - dt.timedelta(seconds=1)))
    assert db.reclaim_lost(engine, "here", max_attempts=2) == [(job["id"], "failed")]
    row = db.job_row(engine, job["id"])
    assert row["state"] == "failed" and "gave up after 2 attempts" in row["error"]
    assert [a["outcome"] for a in db.attempt_rows(engine, job["id"])] == ["lost", "lost"]


def test_dead_process_on_this_host_voids_its_lease(engine):
    job = db.claim_job(engine, "thishost:999999999:a", 3600)  # no such pid
    assert db.reclaim_lost(engine, "thishost", max_attempts=3) == [(job["id"], "pending")]


def test_points_are_recorded_once_with_their_compute(engine):
    job = db.claim_job(engine, "elsewhere:1:a", 60)
    points = [EvalPoint(1, "upstream/top1", 0.5), EvalPoint(1, "fashion-mnist/linear", 0.25)]
    assert db.record_epoch(engine, job, "elsewhere:1:a", 1, points, 60)
    assert db.record_epoch(engine, job, "elsewhere:1:a", 1, points, 60)  # a replay adds nothing
    assert db.finish_job(engine, job, "elsewhere:1:a", "done", 2, points + [EvalPoint(2, "upstream/top1", 0.4)])
    rows = db.point_rows(engine, job["id"])
    assert [(r["epoch"], r["metric"]) for r in rows] == [(1, "fashion-mnist/linear"), (1, "upstream/top1"), (2, "upstream/top1")]
    assert rows[2]["compute"] == pytest.approx(job["flops_per_example"] * 3 * job["examples"] * 2)
    assert not db.finish_job(engine, job, "elsewhere:1:a", "done", 2, [])  # not running any more


def test_without_resume_interrupted_jobs_are_left_alone(engine):
    first = db.claim_job(engine, "elsewhere:1:a", 60)
    db.finish_job(engine, first, "elsewhere:1:a", "pending", 1, [], "interrupted", outcome="released")
    fresh = [db.claim_job(engine, "elsewhere:1:a", 60, resume=False) for _ in range(4)]
    assert [j["id"] for j in fresh if j] == [first["id"] + 1, first["id"] + 2, first["id"] + 3]
    assert fresh[3] is None
    assert db.claim_job(engine, "elsewhere:1:a", 60, resume=True)["id"] == first["id"]


def test_cancel_stops_the_lease_and_retry_resets(engine):
    job = db.claim_job(engine, "elsewhere:1:a", 60)
    assert db.set_state(engine, job["id"], "cancelled", ("pending", "running")) == "running"
    assert not db.renew_lease(engine, job["id"], "elsewhere:1:a", 60)
    assert db.set_state(engine, job["id"], "pending", ("failed", "cancelled")) == "cancelled"
    assert db.job_row(engine, job["id"])["attempts"] == 0
    with pytest.raises(db.StudyError, match="only failed"):
        db.set_state(engine, job["id"], "pending", ("failed",))


def test_a_database_from_an_earlier_release_is_migrated_to_the_current_schema(tmp_path):
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.executescript((Path(__file__).parent / "sqlite_schema_0005.sql").read_text())
    conn.close()
    engine = db.connect(f"sqlite:///{old}")
    assert db.apply_migrations(engine) == []
    fresh = db.connect(f"sqlite:///{tmp_path / 'new.db'}")

    def schema(engine):  # tables, their columns and indexes (an added column's CREATE text differs)
        with engine.connect() as conn:
            names = conn.exec_driver_sql("SELECT type, name FROM sqlite_master ORDER BY name").all()
            columns = {name: conn.exec_driver_sql(f"PRAGMA table_info('{name}')").all()
                       for kind, name in names if kind == "table"}
            return names, columns

    assert schema(engine) == schema(fresh)
    grid = load_grid(SMOKE)
    assert db.add_jobs(engine, grid.study.name, str(SMOKE), grid.text, expand(grid)) == (4, 0)
    assert db.claim_job(engine, "elsewhere:1:a", 60)["id"] == 1
    engine.dispose()
    fresh.dispose()
