"""Anytime studies (`[adaptive] policy = "uncertainty"`) on real tiny training: rung by rung, paused
trajectories resumed bit for bit, each stop rule, two workers on SQLite and PostgreSQL, the decisions
recorded, `study status`, and bad rules refused.

Real B-MLPs on the first 2,000 Fashion-MNIST images, scored by their own head (upstream top-1)."""

from __future__ import annotations

import pytest
from test_adaptive import data  # noqa: F401 - the module's tiny Fashion-MNIST fixture
from test_runner import attempts_per_job, needs_fashion, points, start, study

from scaling_study import anytime, budget, db
from scaling_study.grid import adaptive_settings

pytestmark = needs_fashion


def grid(images: str, adaptive_table: str) -> str:
    return f"""
[study]
name = "anytime"

[data.pretrain]
dataset = "fashion-mnist"
path = "{images}"

[grid]
models = ["B-1/Wi-8", "B-1/Wi-32", "B-2/Wi-64"]
examples = [250, 1000]
epochs = [1, 2, 3]

[train]
lr = 1e-3
batch_size = 50
precision = "fp32"

[evaluation]
upstream = true

{adaptive_table}
"""


ANYTIME = '[adaptive]\nenabled = true\npolicy = "uncertainty"\nmin_points = 8\nresamples = 30\nscore_resamples = 8\n'
RUNGS = 6 * 3  # six trajectories, evaluated at T = 1, 2, 3


@pytest.fixture(scope="module")
def plain(tmp_path_factory, data) -> dict:  # noqa: F811
    """The same grid without [adaptive], run to the end: what every anytime run must reproduce."""
    folder = tmp_path_factory.mktemp("plain")
    (folder / "g.toml").write_text(grid(data, ""))
    url = f"sqlite:///{folder / 'results.db'}"
    study("plan", "g.toml", "--db", url, cwd=folder)
    study("run", "--db", url, cwd=folder)
    engine = db.connect(url)
    assert db.decision_rows(engine, "anytime") == []  # a plain grid records no decisions
    engine.dispose()
    return points(url)


def planned(folder, data, url: str, table: str = ANYTIME) -> None:  # noqa: F811
    (folder / "g.toml").write_text(grid(data, table))
    study("plan", "g.toml", "--db", url, cwd=folder)


def decisions_and_rows(url: str) -> tuple[list[dict], list[dict]]:
    engine = db.connect(url)
    out = db.decision_rows(engine, "anytime"), db.job_rows(engine, "anytime")
    engine.dispose()
    return out


def test_a_budget_stops_the_study_and_a_larger_one_resumes_it_bit_identically(tmp_path, data, plain):  # noqa: F811
    url = f"sqlite:///{tmp_path / 'results.db'}"
    planned(tmp_path, data, url)
    first = study("run", "--db", url, "--budget", "50%", cwd=tmp_path)
    assert "study 'anytime' is done: budget reached" in first.stdout, first.stdout
    decided, rows = decisions_and_rows(url)
    totals = budget.study_compute(rows)
    assert totals.spent <= 0.5 * totals.planned * (1 + 1e-9)
    assert any(r["state"] == "pending" and r["epochs_done"] > 0 for r in rows)  # paused trajectories
    assert any(r["state"] == "pending" for r in rows) and totals.spent > 0.2 * totals.planned
    rungs = [(d["job_id"], d["epoch"]) for d in decided]
    assert len(rungs) == len(set(rungs))  # every rung is decided once
    for job_id in {j for j, _ in rungs}:  # a trajectory advances rung by rung
        assert [t for j, t in rungs if j == job_id] == list(range(1, len([t for j, t in rungs if j == job_id]) + 1))
    assert {d["rule"] for d in decided} == {"warm-up", "uncertainty"}  # the law took over once it could be fitted
    scored = [d for d in decided if d["rule"] == "uncertainty"]
    assert all(d["score"] is not None and d["score"] >= 0 and d["actions"].startswith("[") for d in scored)
    first_points = points(url)
    assert first_points.items() <= plain.items()  # only measured points, each as the plain run measured it

    # the same recorded points give the same decision (seeded)
    engine = db.connect(url)
    config = adaptive_settings(db.study_grid_text(engine, "anytime"))
    again = [anytime.choose(engine, "anytime", config, anytime.StopRules(share=1.0)).order for _ in range(2)]
    engine.dispose()
    assert again[0] == again[1] and again[0]

    shown = study("status", "--db", url, cwd=tmp_path).stdout
    assert "anytime study 'anytime': compute spent" in shown and "trajectories paused" in shown
    assert "the headlines now" in shown and "E(P,D) beta" in shown and "next actions" in shown

    study("run", "--db", url, "--budget", "1", cwd=tmp_path)
    assert points(url) == plain  # paused trajectories continued bit for bit
    decided, rows = decisions_and_rows(url)
    assert {r["state"] for r in rows} == {"done"}
    assert sorted((d["job_id"], d["epoch"]) for d in decided) == sorted((r["id"], t) for r in rows for t in (1, 2, 3))
    for outcomes in attempts_per_job(url).values():  # one attempt per rung: paused, paused, done
        assert outcomes == ["paused", "paused", "done"], outcomes


def test_a_target_half_width_stops_the_study(tmp_path, data):  # noqa: F811
    url = f"sqlite:///{tmp_path / 'results.db'}"
    planned(tmp_path, data, url, ANYTIME + 'targets = "beta_PD=10"\n')
    result = study("run", "--db", url, cwd=tmp_path)
    assert "study 'anytime' is done: targets reached: E(P,D) beta +-" in result.stdout, result.stdout
    decided, rows = decisions_and_rows(url)
    assert len(decided) < RUNGS and any(r["state"] == "pending" for r in rows)
    again = study("run", "--db", url, cwd=tmp_path)  # the rule still holds: nothing more runs
    assert "0 done" in again.stdout and len(decisions_and_rows(url)[0]) == len(decided)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_two_workers_never_run_the_same_rung(dialect, request, tmp_path, data, plain):  # noqa: F811
    url = f"sqlite:///{tmp_path / 'results.db'}" if dialect == "sqlite" else request.getfixturevalue("postgres_url")
    planned(tmp_path, data, url)
    workers = [start("run", "--db", url, cwd=tmp_path) for _ in range(2)]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, out + err
    decided, rows = decisions_and_rows(url)
    rungs = [(d["job_id"], d["epoch"]) for d in decided]
    assert sorted(rungs) == sorted((r["id"], t) for r in rows for t in (1, 2, 3))  # each rung decided and run once
    assert len({d["decided_by"] for d in decided}) == 2  # both workers decided
    assert points(url) == plain
    for outcomes in attempts_per_job(url).values():
        assert outcomes == ["paused", "paused", "done"], outcomes


@pytest.mark.parametrize(("where", "text", "message"), [
    ("run", "--budget=1.5", "--budget '1.5': a share of the grid's compute in (0, 1]"),
    ("run", "--target=alpha=-1", "a half-width must be a positive number"),
    ("run", "--target=gamma=0.1", "unknown headline 'gamma'"),
    ("grid", 'policy = "greedy"', "[adaptive].policy: unknown value 'greedy'"),
    ("grid", "budget = 0.5", "stop rules of policy = \"uncertainty\""),
])
def test_bad_rules_are_one_line_and_change_nothing(tmp_path, data, where, text, message):  # noqa: F811
    url = f"sqlite:///{tmp_path / 'results.db'}"
    if where == "grid":
        (tmp_path / "g.toml").write_text(grid(data, f"[adaptive]\nenabled = true\n{text}\n"))
        result = study("plan", "g.toml", "--db", url, cwd=tmp_path, check=False)
        assert not (tmp_path / "results.db").exists()
    else:
        planned(tmp_path, data, url)
        before = points(url), decisions_and_rows(url)
        result = study("run", "--db", url, text, cwd=tmp_path, check=False)
        assert (points(url), decisions_and_rows(url)) == before
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
