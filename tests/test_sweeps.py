"""Iso-FLOP sweeps: budgets detected, approach 2 at the real budgets, intervals over runs,
one envelope point per budget, near-equal sizes merged, identifiability flags, figures at 50 models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from scaling_study import analysis as fit
from scaling_study import synthetic
from scaling_study.analysis import allocation, isoflop, sweeps

LAW = synthetic.ParametricLaw()  # a = 0.35, b = 0.65 with FLOP(f) = P


@pytest.fixture(scope="module")
def sweep() -> pd.DataFrame:
    """6 budgets over 5 decades, 5-9 sizes each, 0.5% noise, compute jittered ~1%, 4 digitised sizes."""
    return synthetic.isoflop_study(seed=0)


def test_budgets_are_detected_on_a_sweep_and_not_on_grids(sweep):
    shape = sweeps.sweep_shape(sweep)
    assert shape.mode == "budgets" and len(shape.budgets) == 6
    assert shape.budgets["sizes"].between(5, 9).all() and (shape.labels >= 0).all()
    assert shape.budgets["pflops"].to_numpy() == pytest.approx(np.geomspace(1e-3, 1e2, 6), rel=0.03)
    assert "6 compute budgets" in shape.reason
    for grid in (synthetic.parametric_study(seed=0), synthetic.compute_study(seed=0)):
        shape = sweeps.sweep_shape(grid)
        assert shape.mode == "levels" and shape.reason.startswith("grid-shaped") and (shape.labels == -1).all()
    # scattered points (every run its own compute) are neither a grid nor budgets
    scattered = sweep.assign(compute=sweep["compute"] * np.geomspace(1, 50, len(sweep)))
    assert sweeps.sweep_shape(scattered).mode == "levels"


def test_cluster_compute_splits_at_gaps_wider_than_the_tolerance():
    labels = sweeps.cluster_compute(np.array([1.0, 1.05, 2.0, 0.97, 2.1, 8.0]), tolerance=0.1)
    assert labels.tolist() == [0, 0, 1, 0, 1, 2]


def test_isoflop_at_the_budgets_recovers_the_allocation_exponent(sweep):
    merged, _ = sweeps.merge_sizes(sweep)
    shape = sweeps.sweep_shape(merged)
    fit = allocation.allocation_isoflop(merged, 1, 200, np.random.default_rng(0), shape)
    assert fit.mode == "budgets" and fit.resampled == isoflop.BUDGET_RESAMPLING
    assert fit.a.value == pytest.approx(LAW.a, abs=0.03)
    assert fit.b.value == pytest.approx(LAW.b, abs=0.03)
    assert fit.a.low < LAW.a < fit.a.high and fit.resamples >= 190
    assert 4 <= len(fit.points) <= 6  # interior minima only, one per budget


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_isoflop_recovery_is_not_luck(seed):
    frame = synthetic.isoflop_study(seed=seed)
    fit = allocation.allocation_isoflop(frame, 1, 0, np.random.default_rng(0), sweeps.sweep_shape(frame))
    assert fit.mode == "budgets" and fit.a.value == pytest.approx(LAW.a, abs=0.03)


def test_parabola_minimum_is_its_vertex_and_edges_are_not_interior():
    x = np.log(np.array([1, 2, 4, 8, 16.0]))
    y = (x - np.log(5.0)) ** 2 + 0.1
    vertex, interior = isoflop.parabola_minima(x, y, np.ones((1, 5)))
    assert vertex[0] == pytest.approx(np.log(5.0)) and interior[0]
    _, interior = isoflop.parabola_minima(x, -x, np.ones((1, 5)))  # falling all the way: no minimum
    assert not interior[0]
    _, interior = isoflop.parabola_minima(x, (x - np.log(30.0)) ** 2, np.ones((1, 5)))  # beyond the largest
    assert not interior[0]


def test_envelope_takes_the_best_point_per_budget(sweep):
    analysis = fit.analyse(*fit.select(sweep), bootstrap=100, seed=0)
    envelope = {a.estimator: a for a in analysis.allocations}["envelope"]
    assert envelope.mode == "budgets" and "best point per compute budget" in envelope.method
    assert envelope.a.value == pytest.approx(LAW.a, abs=0.05)
    assert envelope.b.value == pytest.approx(LAW.b, abs=0.05)
    on = analysis.frame[analysis.frame["envelope"]]
    assert on["budget"].is_unique and len(on) == 6  # one point per budget, each below every cheaper budget
    best = analysis.frame.loc[analysis.frame.groupby("budget")["error"].idxmin()]
    assert sorted(on.index) == sorted(best.index)
    assert "best point per compute budget" in analysis.compute.bootstrap
    # without budgets (a plain frame) the envelope is the usual one: noise in compute makes more points optimal
    assert len(fit.envelope(sweep)) > 6


def test_near_equal_sizes_are_merged_into_one_model(sweep):
    merged, groups = sweeps.merge_sizes(sweep, 0.01)
    assert len(groups) == 4 and all(len(g["merged"]) == 1 and not g["kept_apart"] for g in groups)  # 4 digitised
    assert merged["params"].nunique() == sweep["params"].nunique() - 4
    for g in groups:
        for m in g["merged"]:
            assert abs(m["params"] / g["params"] - 1) < 0.01
            assert set(merged.loc[merged["model_as_recorded"] == m["model"], "model"]) == {g["model"]}
    assert sweeps.merge_sizes(sweep, 0.0) == (sweep, [])
    # different kinds are never merged, and sizes 2% apart stay apart at 1%
    two = pd.DataFrame({"kind": ["bottleneck", "standard", "bottleneck"], "model": ["a", "b", "c"],
                        "params": [1000, 1001, 1020], "flops_per_example": [1, 2, 3], "error": [0.5, 0.5, 0.5],
                        "examples": [10, 10, 20], "epochs": 1, "seed": 0})
    assert sweeps.merge_sizes(two, 0.01)[1] == []
    assert sweeps.merge_sizes(two, 0.05)[1] == [{"kind": "bottleneck", "model": "a", "params": 1000,
                                                  "merged": [{"model": "c", "params": 1020}], "kept_apart": []}]
    # two architectures of near-equal size that both ran N = 10: different models, kept apart
    clash = two.assign(examples=10)
    kept, apart = sweeps.merge_sizes(clash, 0.05)
    assert kept is clash and apart == [{"kind": "bottleneck", "model": "a", "params": 1000, "merged": [],
                                          "kept_apart": [{"model": "c", "params": 1020}]}]
    from scaling_study.report import _sweep_lines

    lines = _sweep_lines({"mode": "levels", "reason": "r", "merged_sizes": {"tolerance": 0.05, "groups": apart}})
    assert lines[1:] == ["- Near-equal sizes kept apart (both ran the same N, T and seed): a / c."]
    analysis = fit.analyse(*fit.select(sweep), bootstrap=0)
    assert analysis.sweep["merged_sizes"]["groups"] == groups and analysis.sweep["mode"] == "budgets"


def test_an_unidentified_parameter_is_flagged_and_a_well_identified_one_is_not(sweep):
    from scaling_study.analysis import identifiability

    rng = np.random.default_rng(0)
    merged, _ = sweeps.merge_sizes(sweep)
    tagged = merged.assign(budget=sweeps.sweep_shape(merged).labels)
    # E(C) on 6 budget optima: b (where the curve bends) is not placed by the data, alpha is
    law = fit.fit_compute_law(tagged, bootstrap=200, rng=rng)
    flags = {f["param"]: f["reason"] for f in identifiability.law_flags(law)}
    assert "b" in flags and "decades" in flags["b"] and "alpha" not in flags and "E_inf" not in flags
    assert identifiability.status_text(law.status, identifiability.law_flags(law)).endswith("not identified: b")
    # the parametric law on its own grid: every parameter identified
    grid = synthetic.parametric_study(seed=0)
    assert identifiability.law_flags(fit.fit_parametric(grid, 100, rng)) == []
    # a pure power law (E_inf = 0): the saturating law's E_inf sits on its bound 0 in most resamples
    x = np.geomspace(1e3, 1e6, 8)
    points = pd.DataFrame({"examples": x, "error": 3.0 * x**-0.3 * np.exp(rng.normal(0, 0.01, x.size)),
                           "params": 1e6, "model": "m"})
    from scaling_study.analysis.bottleneck import _fit_saturating
    pure = _fit_saturating("examples", x, points["error"].to_numpy(), points, 200, rng, "")
    reasons = {f["param"]: f["reason"] for f in identifiability.law_flags(pure)}
    assert "E_inf" in reasons and "alpha" not in reasons
    assert identifiability.estimate_flag(fit.Estimate(0.5, 0.45, 0.55)) is None
    assert "reaches 0" in identifiability.estimate_flag(fit.Estimate(0.1, -0.2, 0.4))
    assert "2.0 decades" in identifiability.estimate_flag(fit.Estimate(1.0, 0.1, 10.0))


@pytest.mark.parametrize("models", [4, 50])
def test_fig1_keeps_its_legend_or_colour_bar_inside_the_figure(models, tmp_path, monkeypatch):
    from scaling_study import plots

    drawn = {}
    save = plots._save

    def keep(figure, out, stem):  # the real save, and the figure kept to measure
        drawn[stem] = figure
        return save(figure, out, stem)

    monkeypatch.setattr(plots, "_save", keep)
    grid = synthetic.parametric_study(models=models, examples=5, epochs=(50, 800), outliers=0, seed=0)
    analysis = fit.analyse(*fit.select(grid), bootstrap=0)
    with plots.matplotlib.rc_context(plots.STYLE):
        paths = plots.error_vs_compute(analysis, tmp_path)
        # Fig. 6 of a sweep: neither bottleneck law can be fitted (one model at the largest N)
        swept = fit.analyse(*fit.select(synthetic.isoflop_study(seed=0)), bootstrap=0)
        plots.bottlenecks(swept, tmp_path)
        profiles = plots.isoflop_profiles(swept, tmp_path)  # budgets mode only
        assert "fig_isoflop_profiles.png" in [p.name for p in profiles]
        assert plots.isoflop_profiles(analysis, tmp_path / "grid") == []
        stars = [line for line in drawn["fig_isoflop_profiles"].axes[0].lines if line.get_marker() == "*"]
        assert len(stars) == len(next(a for a in swept.allocations if a.estimator == "isoflop").points)

    def rendered(figure):
        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)  # lays it out as the save did
        return renderer

    figure = drawn["fig1_error_vs_compute"]
    renderer = rendered(figure)
    tight, canvas = figure.get_tightbbox(renderer), figure.bbox_inches
    assert tight.x0 >= canvas.x0 - 0.01 and tight.x1 <= canvas.x1 + 0.01, (tight, canvas)
    assert tight.y0 >= canvas.y0 - 0.01 and tight.y1 <= canvas.y1 + 0.01, (tight, canvas)
    main = figure.axes[0]
    legends = [a for a in main.get_children() if isinstance(a, plots.matplotlib.legend.Legend)]
    if models == 50:
        assert len(figure.axes) == 2 and "50 models" in figure.axes[1].get_ylabel()  # the colour bar
        assert len(legends) == 1 and len(legends[0].get_texts()) <= 6  # the fit legend only, no names
        svg = tmp_path / "fig1_error_vs_compute.svg"  # the page inlines it: a vector colour bar, no image
        assert svg.exists() and "<image" not in svg.read_text()
        bar = figure.axes[1].get_window_extent(renderer)
        assert not legends[0].get_window_extent(renderer).overlaps(bar)
    else:
        assert len(figure.axes) == 1 and len(legends) == 2
        names, fitted = (legend.get_window_extent(renderer) for legend in legends)
        assert not names.overlaps(fitted)
    assert paths[0].stat().st_size > 0
    # Fig. 6's "not fitted" note stays inside its panel, clear of the y label
    six = drawn["fig6_bottlenecks"]
    renderer = rendered(six)
    assert [len(ax.texts) for ax in six.axes] == [1, 1]
    for ax in six.axes:
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            assert ax.get_window_extent(renderer).contains(*box.min) and ax.get_window_extent(renderer).contains(*box.max)
            assert not text.get_window_extent(renderer).overlaps(ax.yaxis.label.get_window_extent(renderer))


def test_an_estimate_every_resample_agrees_on_is_not_flagged():
    """A 95% interval that is one value (an allocation exponent of 0 in every resample, as a tiny
    study gives) is identified, not a division by zero."""
    from scaling_study.analysis import identifiability
    from scaling_study.analysis.results import Estimate

    assert identifiability.estimate_flag(Estimate(0.0, 0.0, 0.0)) is None
    assert identifiability.estimate_flag(Estimate(0.5, 0.5, 0.5)) is None
    assert "reaches 0" in identifiability.estimate_flag(Estimate(0.1, -0.2, 0.3))
