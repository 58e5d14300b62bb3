"""The fits recover the exponents of the laws that generated the data (noise and outliers included)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from scaling_study import analysis as fit
from scaling_study import cores, synthetic
from scaling_study.analysis import bootstrap, optimize, parametric
from scaling_study.errors import StudyError

LAW = synthetic.ParametricLaw()  # alpha 0.65, beta 0.35: a = 0.35, b = 0.65
COMPUTE_LAW = synthetic.ComputeLaw()  # alpha 0.25, E_inf 0.15, b = 0.02 PFLOPs


@pytest.fixture(scope="module")
def grid() -> pd.DataFrame:
    """A 10 models x 13 N x 5 T grid from E(P, D), 1% noise, 3 outliers."""
    return synthetic.parametric_study(seed=0)


def test_parametric_fit_recovers_alpha_beta_and_allocation(grid):
    law = fit.fit_parametric(grid, bootstrap=200, rng=np.random.default_rng(0))
    assert law.status == "converged"
    assert law.value("alpha") == pytest.approx(LAW.alpha, abs=0.02)
    assert law.value("beta") == pytest.approx(LAW.beta, abs=0.02)
    assert law.value("E_inf") == pytest.approx(LAW.e_inf, abs=0.005)
    assert law.value("a") == pytest.approx(LAW.a, abs=0.02)
    assert law.value("b") == pytest.approx(LAW.b, abs=0.02)
    assert law.resamples >= 190
    for name in ("alpha", "beta", "a", "b"):
        e = law.params[name]
        assert e.low <= e.value <= e.high and e.high - e.low < 0.05


def test_envelope_and_isoflop_allocation_recover_a_and_b(grid):
    rng = np.random.default_rng(0)
    envelope = fit.allocation_envelope(grid, 50, 200, rng)
    isoflop = fit.allocation_isoflop(grid, 50, 200, rng)
    for estimate in (envelope, isoflop):
        assert estimate.a.value == pytest.approx(LAW.a, abs=0.05), estimate.estimator
        assert estimate.b.value == pytest.approx(LAW.b, abs=0.05), estimate.estimator
        assert estimate.a.low < estimate.a.value < estimate.a.high
    assert len(isoflop.points) >= 10  # levels with an interior minimum


def test_parametric_allocation_line_is_the_optimum_of_the_fitted_law(grid):
    kappa, gamma = fit.flops_scaling(grid)
    assert gamma == pytest.approx(1.0) and kappa == pytest.approx(1.0)  # FLOP(f) = P in the synthetic grid
    law = fit.fit_parametric(grid, bootstrap=0, rng=np.random.default_rng(0))
    line = fit.allocation_parametric(law, 50, kappa, gamma)
    pflops = 1.0  # at 1 PFLOP: P* from the line minimises E(P, D) along C = 3 P D
    macs = pflops * 1e15
    sizes = np.geomspace(1e4, 1e9, 20001)
    errors = fit.parametric_law(sizes, macs / (3 * sizes), law)
    assert math.log(sizes[np.argmin(errors)]) == pytest.approx(line.p0, abs=1e-3)
    assert line.n0 == pytest.approx(math.log(macs / (3 * math.exp(line.p0)) / 50), abs=1e-9)


def test_compute_law_recovers_alpha_with_bootstrap_intervals():
    frame = synthetic.compute_study(seed=0)
    law = fit.fit_compute_law(frame, bootstrap=1000, rng=np.random.default_rng(0))
    assert law.status == "converged"
    assert law.value("alpha") == pytest.approx(COMPUTE_LAW.alpha, abs=0.03)
    assert law.value("E_inf") == pytest.approx(COMPUTE_LAW.e_inf, abs=0.01)
    assert law.resamples >= 950
    for e in law.params.values():
        assert e.low <= e.value <= e.high
    assert law.params["alpha"].low <= COMPUTE_LAW.alpha <= law.params["alpha"].high


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compute_law_recovery_is_not_luck(seed):
    law = fit.fit_compute_law(synthetic.compute_study(seed=seed), bootstrap=0)
    assert law.value("alpha") == pytest.approx(COMPUTE_LAW.alpha, abs=0.03)


def test_bottleneck_laws_recover_alpha_p_and_alpha_n(grid):
    rng = np.random.default_rng(0)
    params = fit.fit_bottleneck_params(grid, 200, rng)
    examples = fit.fit_bottleneck_examples(grid, 200, rng)
    # at the largest N (best T = 800) error vs P is E_inf' + A / P^alpha; for the largest model, vs N is beta
    assert params.value("alpha") == pytest.approx(LAW.alpha, abs=0.05)
    assert examples.value("alpha") == pytest.approx(LAW.beta, abs=0.05)
    assert len(params.points) == 10 and len(examples.points) == 13
    assert params.params["alpha"].low < params.value("alpha") < params.params["alpha"].high


def test_envelope_keeps_points_below_everything_cheaper():
    frame = pd.DataFrame({"compute": [1, 2, 2, 3, 4, 5], "error": [0.9, 0.95, 0.7, 0.7, 0.6, 0.65]})
    assert fit.envelope(frame)["error"].tolist() == [0.9, 0.7, 0.6]
    rows = np.array([[0.9, 0.8, 0.85, 0.5], [0.5, 0.6, 0.4, 0.3]])
    assert fit.envelope_mask(rows).tolist() == [[True, True, False, True], [True, False, True, True]]


def _parametric_problem(grid: pd.DataFrame):
    """E(P, D)'s design, log errors and bounds on a grid, as fit_parametric sets them up."""
    params = grid["params"].to_numpy(float)
    data = (grid["examples"] * grid["epochs"]).to_numpy(float)
    x = (np.log(params / params.mean()), np.log(data / data.mean()))
    logy = np.log(grid["error"].to_numpy())
    lower = np.array([math.log(1e-6), -20.0, -20.0, 0.01, 0.01])
    upper = np.array([math.log(grid["error"].max()), 5.0, 5.0, 4.0, 4.0])
    return x, logy, lower, upper


def test_bootstrap_rows_reproduce_independent_fits(grid):
    """Refining many resamples at once equals fitting each on its own."""
    x, logy, lower, upper = _parametric_problem(grid)
    start = np.array([[math.log(0.15), -2.0, -2.0, 0.5, 0.5]])
    best, _, ok = optimize.refine(parametric.log_parametric_law, start, x, logy, np.ones_like(logy), lower, upper, max_iter=500)
    assert ok[0]
    counts = bootstrap.multinomial(np.random.default_rng(2), 4, len(logy))
    batch, loss, ok = optimize.refine(parametric.log_parametric_law, np.repeat(best, 4, 0), x, logy, counts, lower, upper)
    assert ok.all()
    for row, theta, value in zip(counts, batch, loss):
        alone = optimize.lbfgsb(parametric.log_parametric_law, best[0], x, logy, row, lower, upper)
        assert value <= alone.fun + 1e-6
        assert theta[3:] == pytest.approx(alone.x[3:], abs=2e-4)


def test_fewer_envelope_points_than_parameters_is_refused():
    frame = pd.DataFrame({"compute": [1e15, 2e15, 4e15], "error": [0.5, 0.4, 0.35]})
    with pytest.raises(StudyError, match=r"only 3 compute-optimal point\(s\) among 3 .* 4 parameters"):
        fit.fit_compute_law(frame, bootstrap=0)


def test_held_out_check_predicts_the_most_expensive_points(grid):
    analysis = fit.analyse(*fit.select(grid), bootstrap=0)
    held = {h.name: h for h in analysis.held_out}
    assert held["parametric"].test_points == pytest.approx(0.2 * len(grid), abs=20)
    assert held["parametric"].mean_abs_rel_error < 0.02
    assert held["compute"].mean_abs_rel_error < 0.05


def test_analyse_selects_and_reports_every_fit(grid):
    frame = pd.concat([grid, grid.assign(metric="upstream/top1", error=grid["error"] * 0.9)])
    selected, filters = fit.select(frame, exclude=[1, 2])
    assert filters["metric"] == "synthetic/linear" and filters["excluded_jobs"] == [1, 2]
    assert not selected["job_id"].isin([1, 2]).any()
    analysis = fit.analyse(selected, filters, epochs=100, bootstrap=50, seed=3)
    assert analysis.epochs == 100 and analysis.metric == "synthetic/linear"
    assert [a.estimator for a in analysis.allocations] == ["envelope", "isoflop", "parametric"]
    assert analysis.frame["envelope"].sum() == len(analysis.compute.points)
    with pytest.raises(StudyError, match="epochs present: 50, 100, 200, 400, 800"):
        fit.analyse(selected, filters, epochs=7, bootstrap=0)
    with pytest.raises(StudyError, match="no 'standard' models"):
        fit.select(frame, kind="standard")


def test_default_metric_prefers_linear_probe_then_upstream():
    assert fit.default_metric(["upstream/top1", "cifar100/linear", "cifar10/linear"]) == "cifar10/linear"
    assert fit.default_metric(["upstream/top5", "upstream/top1"]) == "upstream/top1"
    assert fit.default_metric(["imported"]) == "imported"
    with pytest.raises(StudyError, match="choose one with --metric"):
        fit.default_metric(["a/finetune", "b/tta"])


def test_threaded_bootstrap_chunks_give_the_numbers_of_one_thread(grid, monkeypatch):
    """The resample chunks refine on threads where there are cores: the same thetas, bit for bit."""
    x, logy, lower, upper = _parametric_problem(grid)
    start = np.array([math.log(0.15), -2.0, -2.0, 0.5, 0.5])
    counts = bootstrap.multinomial(np.random.default_rng(5), 9, len(logy))
    monkeypatch.setattr(bootstrap, "CHUNK", 2)  # 5 chunks
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    threaded, ok_threaded = bootstrap.refit_resamples(parametric.log_parametric_law, start, x, logy, counts, lower, upper)
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    alone, ok_alone = bootstrap.refit_resamples(parametric.log_parametric_law, start, x, logy, counts, lower, upper)
    assert threaded.shape == (9, 5) and np.array_equal(threaded, alone) and np.array_equal(ok_threaded, ok_alone)
    assert len({tuple(t) for t in threaded}) == 9  # each resample its own fit


def test_figures_drawn_in_forked_processes_equal_those_drawn_in_one(grid, tmp_path):
    """write_figures forks where there are spare cores: the same files, in the same order, byte for byte."""
    from scaling_study import plots

    analysis = fit.analyse(*fit.select(grid), bootstrap=20, seed=0)
    forked = plots.write_figures(analysis, tmp_path / "forked", workers=2)
    serial = plots.write_figures(analysis, tmp_path / "serial", workers=1)
    assert [p.name for p in forked] == [p.name for p in serial]
    assert {p.suffix for p in forked} == {".png", ".pdf", ".svg"} and plots._TO_DRAW is None
    for one, other in zip(forked, serial):
        if one.suffix == ".png":  # PDF and SVG carry a creation date or an id
            assert one.read_bytes() == other.read_bytes(), one.name
        assert one.stat().st_size > 1000
