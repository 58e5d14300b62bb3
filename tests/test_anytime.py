"""The uncertainty policy's pieces (scaling_study.anytime) and the rung-by-rung replay of
benchmarks/adaptive.py, on small synthetic grids with a known law."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from scaling_study import analysis, anytime, synthetic
from scaling_study.analysis import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import adaptive as bench


@pytest.fixture(scope="module")
def grid():
    """A 4 x 4 grid evaluated at T = 1, 2, 4, 8: (points, job rows)."""
    frame = synthetic.parametric_study(models=4, examples=4, epochs=(1, 2, 4, 8), outliers=0, seed=2)
    points, _ = select(frame)
    return points, bench.synthetic_jobs(frame)


def test_headline_matches_study_fit(grid):
    points, _ = grid
    mine = anytime.headline(points)
    full = bench.headline_of(analysis.analyse(points, bootstrap=0))
    assert set(full) <= set(mine)
    for name, e in full.items():
        assert mine[name][0] == pytest.approx(e["value"], rel=1e-6), name


def test_scores_are_seeded_best_first_and_need_a_law(grid):
    points, rows = grid
    measured = points[points["epochs"] <= 2]
    unmeasured = points[points["epochs"] > 2]
    by_id = {r["id"]: r for r in rows}
    actions = [(int(j), 4, bench.rung_cost(by_id[int(j)], 2, 4)) for j in sorted(unmeasured["job_id"].unique())]
    first, fit = anytime.score_actions(measured, unmeasured, actions, resamples=8, seed=3)
    again, _ = anytime.score_actions(measured, unmeasured, actions, resamples=8, seed=3)
    assert first == again and len(first) == len(actions)
    assert [a.score for a in first] == sorted((a.score for a in first), reverse=True)
    assert all(np.isfinite(a.score) and a.score >= 0 for a in first) and first[0].score > 0
    assert fit["points"] == len(measured) and "E(C) alpha" in fit["spread"]
    few = measured.head(3)
    assert anytime.score_actions(few, points.drop(few.index), actions, resamples=8) == (
        [], {"note": "the parametric law cannot be fitted yet"})


def test_uncertainty_replay_runs_every_rung_once_in_order(grid):
    points, rows = grid
    sequence, decisions = bench.uncertainty_sequence(points, rows, resamples=6, score_until=0.25, warm_up=16)
    rungs = bench.rungs_of(points)
    assert sorted(sequence) == sorted((j, t) for j, ts in rungs.items() for t in ts)
    for job_id, epochs in rungs.items():
        assert [t for j, t in sequence if j == job_id] == epochs  # a trajectory advances rung by rung
    assert decisions and all(d["share"] < 0.25 for d in decisions)
    assert sequence[: len(rungs)] != bench.whole_trajectories(sorted(rungs), rungs)[: len(rungs)]


def test_enters_and_stays_is_the_share_after_the_last_exit():
    curve = [{"share": s, "distance": d} for s, d in ((0.1, {"x": 0.5, "y": 3}), (0.2, {"x": 2, "y": 0.1}),
                                                      (0.4, {"x": 0.9, "y": -0.5}), (1.0, {"x": 0.0, "y": 0.0}))]
    assert bench.enters_and_stays(curve, ["x", "y"]) == {"x": 0.4, "y": 0.2, "all": 0.4}
    assert bench.enters_and_stays(curve[:2], ["x", "y"]) == {"x": None, "y": 0.2, "all": None}
