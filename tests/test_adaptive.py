"""Adaptive studies on real tiny training: pruning against the law, its guards, its
evidence, stopping at an epoch boundary, retry, concurrent workers, dry runs and the migration.

The studies train real B-MLPs on the first 2,000 Fashion-MNIST images, scored by their own head
(upstream top-1, so that a recipe that cannot learn is clearly far above the envelope). One
trajectory of each study is planned from a second grid with a learning rate too small to learn:
the law must prune it, and must never touch the runs that span the fits.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from scaling_study import adaptive, db, synthetic
from scaling_study.analysis import DATA_CONSTRAINED_LAW, PARAMETRIC_LAW
from scaling_study.grid import AdaptiveConfig, load_grid, parse_grid
from scaling_study.plan import expand

from test_runner import attempts_per_job, folder_of, needs_fashion, points, start, states, study
from tiny_datasets import fashion_subset

ROOT = Path(__file__).resolve().parent.parent
MODELS = '"B-1/Wi-8", "B-1/Wi-32", "B-2/Wi-64"'


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """The first 2,000 training and 500 test images of Fashion-MNIST, as IDX files."""
    folder = fashion_subset(tmp_path_factory.mktemp("fashion-2k"), 2000, 500)
    return str(folder)


def grid(data: str, models: str = MODELS, examples: str = "[250, 1000]", lr: str = "1e-3",
         adaptive_table: str = "[adaptive]\nenabled = true\nmin_points = 9\nresamples = 30\n") -> str:
    return f"""
[study]
name = "adaptive"

[data.pretrain]
dataset = "fashion-mnist"
path = "{data}"

[grid]
models = [{models}]
examples = {examples}
epochs = [1, 2, 3]

[train]
lr = {lr}
batch_size = 50
precision = "fp32"

[evaluation]
upstream = true

{adaptive_table}
"""


def plan_study(folder: Path, data: str, url: str, min_points: int = 9) -> int:
    """Six good trajectories and one that cannot learn (B-1/Wi-32 at N = 500, lr 1e-9); returns its id."""
    table = f"[adaptive]\nenabled = true\nmin_points = {min_points}\nresamples = 30\n"
    (folder / "good.toml").write_text(grid(data, adaptive_table=table))
    (folder / "bad.toml").write_text(grid(data, models='"B-1/Wi-32"', examples="[500]", lr="1e-9", adaptive_table=table))
    study("plan", "good.toml", "--db", url, cwd=folder)
    study("plan", "bad.toml", "--db", url, cwd=folder)
    return 7


def spanning(url: str) -> set[int]:
    engine = db.connect(url)
    rows = db.job_rows(engine)
    engine.dispose()
    return adaptive.spanning_jobs(rows)


def dump(url: str) -> list[str]:
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    lines = list(connection.iterdump())
    connection.close()
    return lines


@pytest.fixture(scope="module")
def unpruned(tmp_path_factory, data) -> dict:
    """The bad trajectory run alone in a plain study, to its end: what a retried one must reproduce."""
    folder = tmp_path_factory.mktemp("unpruned")
    (folder / "bad.toml").write_text(grid(data, models='"B-1/Wi-32"', examples="[500]", lr="1e-9", adaptive_table=""))
    url = f"sqlite:///{folder / 'results.db'}"
    study("plan", "bad.toml", "--db", url, cwd=folder)
    study("run", "--db", url, cwd=folder)
    return points(url)


# ---- pure parts: order, guards, validation ----

def rows_of(models=(1, 2, 3, 4), sizes=(10, 20, 40, 80, 160)) -> list[dict]:
    spec = json.dumps({"epochs": [1, 2], "train": {}})
    return [{"id": i + 1, "params": p * 1000, "flops_per_example": p * 1000, "examples": n, "epochs": 2,
             "epochs_done": 0, "state": "pending", "spec": spec}
            for i, (p, n) in enumerate((p, n) for p in models for n in sizes)]


def test_claim_order_is_coarse_to_fine_and_cheapest_first():
    rows = rows_of()
    order = adaptive.claim_order(rows)
    by_rank = sorted(rows, key=lambda r: order[r["id"]])
    first = [(r["params"] // 1000, r["examples"]) for r in by_rank[:9]]
    # models 1, 3, 4 (every other, the largest always in) x subsets 10, 40, 160, cheapest first
    assert sorted(first) == sorted((p, n) for p in (1, 3, 4) for n in (10, 40, 160))
    costs = [adaptive.planned_compute(r) for r in by_rank[:9]]
    assert costs == sorted(costs)
    assert adaptive.spanning_jobs(rows) == {r["id"] for r in rows if r["params"] == 4000 or
                                            (r["examples"] == 160 and r["params"] == 1000)}


def test_a_plain_grid_plans_and_claims_as_before(tmp_path, data):
    plain = parse_grid(grid(data, adaptive_table=""))
    with_table = parse_grid(grid(data))
    assert plain.adaptive == AdaptiveConfig() and not plain.adaptive.enabled
    assert [s.id for s in expand(plain)] == [s.id for s in expand(with_table)]  # [adaptive] is not in job ids
    demo = load_grid(ROOT / "grids" / "demo.toml")
    assert [s.id for s in expand(demo)][:2] == [s.id for s in expand(parse_grid(demo.text + "\n[adaptive]\n"))][:2]
    url = f"sqlite:///{tmp_path / 'results.db'}"
    engine = db.connect(url)
    db.add_jobs(engine, "adaptive", "g.toml", plain.text, expand(plain))
    from scaling_study.runner import RunOptions, _adaptive_studies

    assert _adaptive_studies(engine, RunOptions()) == {}  # plain: no order, no pruning
    assert [db.claim_job(engine, f"w{i}", 60)["id"] for i in range(6)] == [1, 2, 3, 4, 5, 6]
    engine.dispose()


@pytest.mark.parametrize("table, message", [
    ("[adaptive]\nconfidence = 1.2", "[adaptive].confidence: must lie in [0.5, 1)"),
    ("[adaptive]\nenable = true", "unknown key 'enable'; valid keys: enabled, confidence"),
    ("[adaptive]\nmin_points = -1", "[adaptive].min_points: must not be negative"),
    ("[adaptive]\nprotect_spanning = 1", "expected true or false"),
])
def test_bad_adaptive_tables_are_one_line_and_write_nothing(tmp_path, cli, data, table, message):
    (tmp_path / "g.toml").write_text(grid(data, adaptive_table=table))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    result = cli("plan", tmp_path / "g.toml", "--db", url)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "results.db").exists()


# ---- real training ----

@needs_fashion
def test_adaptive_study_prunes_the_trajectory_off_the_envelope_and_resumes_it_bit_identically(
        tmp_path, data, unpruned, cli):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    # one worker claims 1, 2, 5, 6 (every other model and subset), then 3 and the bad 7 (cheapest first);
    # min_points = 16 lets the first decision come when 7's first point lands: it is running then
    bad = plan_study(tmp_path, data, url, min_points=16)
    protected = spanning(url)
    assert bad not in protected and len(protected) == 3
    result = study("run", "--db", url, "--max-jobs", 6, cwd=tmp_path)
    assert "pruned" in result.stdout, result.stdout
    final = states(url)
    assert final[bad - 1] == "pruned" and final[3] == "pending", final
    assert all(final[i - 1] == "done" for i in protected), final  # the spanning runs ran to their end
    engine = db.connect(url)
    job = db.job_row(engine, bad)
    evidence = db.pruning_rows(engine)
    attempts = db.attempt_rows(engine, bad)
    engine.dispose()
    # it was running when pruned, and stopped at the end of its epoch with its points and checkpoint
    assert job["epochs_done"] == 1 and job["worker"] is None
    assert [a["outcome"] for a in attempts] == ["pruned"]
    assert len(evidence) == 1 and evidence[0]["job_id"] == bad and evidence[0]["previous_state"] == "running"
    assert evidence[0]["low"] > evidence[0]["envelope"] and evidence[0]["low"] <= evidence[0]["predicted"] <= evidence[0]["high"]
    fit = json.loads(evidence[0]["fit"])
    assert fit["law"] in (PARAMETRIC_LAW, DATA_CONSTRAINED_LAW) and fit["metric"] == "upstream/top1" and fit["points"] == 16
    assert [e["epoch"] for e in json.loads(evidence[0]["evidence"])] == [2, 3]
    assert {e for (h, e, m) in points(url) if h == job["spec_hash"]} == {1}
    import torch

    checkpoint = torch.load(folder_of(url, tmp_path / "runs", bad) / "checkpoint.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batch"]) == (1, 0)  # an epoch boundary

    before = dump(url)
    listed = cli("prune", "--db", url, "--dry-run", "--kept").output
    assert "would prune" in listed and "nothing was changed" in listed and dump(url) == before  # a dry run writes nothing
    status = cli("status", "--db", url).output
    assert "the law so far" in status and "E(C) alpha" in status and "1 trajectories pruned" in status

    fit_out = cli("fit", "--db", url, "--out", tmp_path / "reports", "--bootstrap", 50).output
    assert "pruned trajectories" in fit_out
    report = json.loads((tmp_path / "reports" / "fit.json").read_text())
    assert [p["job_id"] for p in report["pruned"]] == [bad] and report["compute_saved_pflops"] > 0
    assert "## Pruned trajectories" in (tmp_path / "reports" / "report.md").read_text()

    assert "pruned -> pending" in cli("retry", bad, "--db", url).output
    study("run", "--db", url, cwd=tmp_path)  # the law does not prune a retried job again
    assert states(url)[bad - 1] == "done"
    assert "resuming from" in (folder_of(url, tmp_path / "runs", bad) / "log.txt").read_text()
    mine = {k: v for k, v in points(url).items() if k[0] == job["spec_hash"]}
    assert mine == unpruned  # bit for bit what the unpruned trajectory gives


@needs_fashion
def test_two_workers_never_both_run_a_pruned_job(tmp_path, data):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    bad = plan_study(tmp_path, data, url)
    workers = [start("run", "--db", url, cwd=tmp_path) for _ in range(2)]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, out + err
    final = states(url)
    assert final[bad - 1] == "pruned" and set(final) <= {"done", "pruned"}, final
    engine = db.connect(url)
    decided = {p["job_id"]: p["decided_at"] for p in db.pruning_rows(engine)}
    runs = db.attempt_rows(engine)
    engine.dispose()
    assert len(decided) == final.count("pruned")  # one decision per pruned job, though two workers decided
    for job_id, outcomes in attempts_per_job(url).items():
        assert len(outcomes) == 1, (job_id, outcomes)  # no job ran twice
    for attempt in runs:
        if attempt["job_id"] in decided:  # nobody started a pruned job after it was pruned
            assert attempt["started_at"] <= decided[attempt["job_id"]]


# ---- the decision is one transaction; the migration from the old schema ----

@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = db.connect(url)
    yield engine
    engine.dispose()


def test_concurrent_decisions_prune_each_job_once(engine, data):
    g = parse_grid(grid(data))
    db.add_jobs(engine, "adaptive", "g.toml", g.text, expand(g))
    rows = db.job_rows(engine)
    evidence = (adaptive.Evidence(2, 1.0, 0.5, 0.4, 0.6, 0.3),)
    decisions = [adaptive.Decision(r["id"], r["model"], r["examples"], "pending", 0, 0.95, evidence, {"law": "x"}, True,
                                   "test") for r in rows[:4]]
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(db.prune_jobs(engine, decisions, "w"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for r in results for j in r) == [1, 2, 3, 4]
    assert len(db.pruning_rows(engine)) == 4
    assert db.claim_job(engine, "w", 60)["id"] == 5  # pruned jobs are never claimed
    stale = [adaptive.Decision(5, "m", 1, "pending", 0, 0.95, evidence, {}, True, "stale")]
    assert db.prune_jobs(engine, stale, "w") == []  # it is running now: the decision saw another state


OLD_JOBS = """CREATE TABLE jobs (id INTEGER NOT NULL, study_id INTEGER NOT NULL, spec_hash VARCHAR(32) NOT NULL,
 spec TEXT NOT NULL, model VARCHAR(100) NOT NULL, params BIGINT NOT NULL, flops_per_example BIGINT NOT NULL,
 examples BIGINT NOT NULL, epochs INTEGER NOT NULL, seed INTEGER NOT NULL, state VARCHAR(20) NOT NULL,
 attempts INTEGER NOT NULL, epochs_done INTEGER NOT NULL, worker VARCHAR(200), lease_expires DATETIME, error TEXT,
 provenance TEXT, created_at DATETIME NOT NULL, started_at DATETIME, finished_at DATETIME, PRIMARY KEY (id),
 CONSTRAINT uq_jobs_study_spec UNIQUE (study_id, spec_hash),
 CONSTRAINT ck_jobs_state CHECK (state IN ('pending', 'running', 'done', 'failed', 'diverged', 'cancelled')),
 FOREIGN KEY(study_id) REFERENCES studies (id))"""  # as migrations 0001-0003 created it


def old_database(url: str) -> sa.Engine:
    """A database as the code before migration 0004 left it."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            db.migrations_table.create(conn)
            db.studies.create(conn)
            conn.exec_driver_sql(OLD_JOBS)
            conn.exec_driver_sql("CREATE INDEX ix_jobs_state ON jobs (state)")
            for table in (db.evaluations, db.attempts, db.calibrations):
                table.create(conn)
            for name in ("0001_initial", "0002_job_attempts", "0003_calibrations"):
                conn.execute(db.migrations_table.insert().values(name=name, applied_at=db.now()))
    if engine.dialect.name != "sqlite":
        db.connect(url).dispose()
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE jobs DROP CONSTRAINT ck_jobs_state"))
            conn.execute(sa.text("ALTER TABLE jobs ADD CONSTRAINT ck_jobs_state CHECK (state IN "
                                 "('pending', 'running', 'done', 'failed', 'diverged', 'cancelled'))"))
            conn.execute(sa.text("DROP TABLE prunings"))
            conn.execute(sa.text("DELETE FROM schema_migrations WHERE name = '0004_pruning'"))
    return engine


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_migration_from_the_old_schema_keeps_everything_and_allows_pruned(dialect, request, tmp_path, data):
    url = f"sqlite:///{tmp_path / 'old.db'}" if dialect == "sqlite" else request.getfixturevalue("postgres_url")
    raw = old_database(url)
    g = parse_grid(grid(data))
    with raw.begin() as conn:
        conn.execute(db.studies.insert().values(id=1, name="old", grid_path="g", grid_toml=g.text, created_at=db.now()))
        for i, spec in enumerate(expand(g)[:2], 1):
            conn.execute(db.jobs.insert().values(
                id=i, study_id=1, spec_hash=spec.id, spec=json.dumps(spec.to_dict()), model=spec.model.name,
                params=spec.params, flops_per_example=spec.flops, examples=spec.examples, epochs=3, seed=0,
                state="done", attempts=1, epochs_done=3, created_at=db.now()))
            conn.execute(db.evaluations.insert().values(job_id=i, epoch=1, metric="upstream/top1", value=0.5 / i,
                                                        compute=1.0, created_at=db.now()))
    with pytest.raises(sa.exc.IntegrityError):
        with raw.begin() as conn:
            conn.execute(db.jobs.update().where(db.jobs.c.id == 1).values(state="pruned"))
    raw.dispose()
    engine = db.connect(url)  # applies 0004_pruning
    assert db.apply_migrations(engine) == []
    with engine.begin() as conn:
        conn.execute(db.jobs.update().where(db.jobs.c.id == 1).values(state="pruned"))
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.execute(db.jobs.update().where(db.jobs.c.id == 2).values(state="bogus"))
    assert [r["state"] for r in db.job_rows(engine)] == ["pruned", "done"]
    assert [p["value"] for p in db.point_rows(engine)] == [0.5, 0.25]
    assert db.pruning_rows(engine) == []
    if dialect == "sqlite":
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    engine.dispose()


def test_predictions_use_the_form_the_held_out_score_chooses():
    """Repeated epochs worth less than new data: the law that prunes is E(P, D'), as `study fit` would
    choose, and its predictions of the later epochs beat E(P, D)'s; on E(P, D) data it stays E(P, D)."""
    truth = synthetic.DataConstrainedLaw(e_inf=0.1, A=400.0, alpha=0.65, B=15.0, beta=0.35, r_star=5.0)
    frame = synthetic.parametric_study(law=truth, models=5, examples=6, epochs=(1, 2, 4, 8, 16, 32), noise=0.005,
                                       outliers=0, examples_range=(1e4, 1e7), seed=3)
    frame["job_id"] = frame.groupby(["params", "examples"]).ngroup() + 1
    early, late = frame[frame["epochs"] <= 8], frame[frame["epochs"] > 8]
    fit = adaptive.fit_law(early, resamples=30, seed=0)
    assert fit.name == "data_constrained" and fit.formula == DATA_CONSTRAINED_LAW
    targets = late[["job_id", "params", "examples", "epochs"]].reset_index(drop=True)
    chosen = adaptive.predict_trajectory(early, targets, fit, 0.95)
    plain = adaptive.predict_trajectory(early, targets, fits_parametric(early), 0.95)
    truth_late = late["error"].to_numpy()
    assert (np.abs(np.log(chosen["predicted"] / truth_late)).mean()
            < 0.5 * np.abs(np.log(plain["predicted"] / truth_late)).mean())
    assert (chosen["low"] <= chosen["predicted"]).all() and (chosen["predicted"] <= chosen["high"]).all()
    plain_data = synthetic.parametric_study(models=5, examples=6, epochs=(1, 2, 4, 8), outliers=0, seed=3)
    assert adaptive.fit_law(plain_data, resamples=30, seed=0).formula == PARAMETRIC_LAW


def fits_parametric(points):
    from scaling_study.analysis import fit_parametric, flops_scaling

    return fit_parametric(points, 30, np.random.default_rng(0), flops_scaling(points)[1])
