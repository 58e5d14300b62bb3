"""Predictions a run can be bet on: any size by its parameter count, intervals calibrated on the
back-test, agreement as a number, edge minima counted where the estimator counts them, merged
models named, and tables that never cut a reason."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from scaling_study import analysis as fits
from scaling_study import synthetic
from scaling_study.analysis import agreement, calibration
from scaling_study.analysis.allocation import isoflop_minima
from scaling_study.analysis.predict import predict_compute, predict_run
from scaling_study.analysis.results import Allocation, Estimate
from scaling_study.cli import app
from scaling_study.report import as_dict, markdown

COLUMNS = ["model", "params", "flops_per_example", "examples", "epochs", "error", "metric", "seed"]
LAW = synthetic.ParametricLaw(e_inf=0.08, A=20.0, alpha=0.4, B=3.0, beta=0.3)


@pytest.fixture(scope="module")
def without_largest():
    """5 models x 6 N x T in {2, 4, 8, 16}, 2% noise; the largest model is left out of the fit."""
    frame = synthetic.parametric_study(law=LAW, models=5, examples=6, epochs=(2, 4, 8, 16), noise=0.02, outliers=0,
                                       params_range=(2e4, 1.2e6), examples_range=(1875, 60000), seed=7)
    largest = frame["params"] == frame["params"].max()
    analysis = fits.analyse(frame[~largest].reset_index(drop=True), {"metric": "synthetic/linear"}, bootstrap=200)
    return frame, largest, analysis


def test_a_size_not_in_the_study_is_predicted_by_its_parameter_count(without_largest):
    frame, largest, analysis = without_largest
    inside = []
    for row in frame[largest].itertuples():
        run = predict_run(analysis, None, row.examples, row.epochs, params=float(row.params))
        assert run["model"] is None and run["flops_per_example"] == pytest.approx(row.params, rel=1e-6)  # FLOP(f) = P
        assert "the study's FLOP(f)" in run["flops_per_example_from"]
        p = run["prediction"]
        assert p["low"] < p["value"] < p["high"]
        inside.append(p["low"] <= row.error <= p["high"])
    assert len(inside) == 24 and np.mean(inside) >= 0.9
    given = predict_run(analysis, None, 30000, 4, params=1.2e6, flops_per_example=2.4e6)
    assert given["flops_per_example"] == 2.4e6 and given["flops_per_example_from"] == "given"
    assert given["pflops"] == pytest.approx(3 * 2.4e6 * 30000 * 4 / 1e15)


def test_every_estimator_has_an_interval_at_a_compute(without_largest):
    _, _, analysis = without_largest
    at = predict_compute(analysis, 0.05)
    fields = None
    for estimator, row in at["allocation"].items():
        assert "skipped" not in row, (estimator, row)
        assert row["params_low"] < row["params"] < row["params_high"], estimator
        assert row["examples_low"] < row["examples"] < row["examples_high"], estimator
        fields = fields or set(row)
        assert set(row) == fields  # the same fields for every estimator
    assert set(at["allocation"]) == {"envelope", "isoflop", "parametric"}


def test_conformal_factors_widen_the_side_that_missed():
    below, above = np.full(40, -0.1), np.full(40, 0.1)
    residual = np.concatenate([np.full(20, 0.05), np.full(20, -0.2)])  # too high by twice the half-width
    factor_below, factor_above = calibration._factors(residual, below, above)
    assert factor_below == pytest.approx(2.0) and factor_above == 1.0  # never narrowed
    row = calibration.interval(1.0, None, 0.05, np.random.default_rng(0),
                               {"calibrated": True, "factor_below": 2.0, "factor_above": 1.0})
    assert row["calibrated"] and row["low"] == pytest.approx(math.exp(-2 * 1.959963984540054 * 0.05))
    assert row["bootstrap_low"] > row["low"] and row["high"] == pytest.approx(row["bootstrap_high"])


@pytest.fixture(scope="module")
def drifting():
    """A law that bends away at high compute (errors 4% above E(P, D) per decade of compute beyond the
    median): extrapolations from below miss, which the back-test measures."""
    frame = synthetic.parametric_study(law=LAW, models=6, examples=8, epochs=(1, 2, 4, 8), noise=0.01, outliers=0,
                                       params_range=(1e4, 3e6), examples_range=(1e3, 1e6), seed=2)
    excess = np.maximum(0.0, np.log10(frame["compute"] / frame["compute"].median()))
    frame["error"] = frame["error"] * np.exp(0.04 * excess)
    return fits.analyse(frame, {"metric": "synthetic/linear"}, bootstrap=200)


def test_intervals_are_calibrated_on_the_back_test(drifting):
    c = drifting.calibration["parametric"]
    assert c["calibrated"] and c["residuals"] > 50 and c["levels"] == 4
    assert c["coverage_before"] < 0.9  # the bootstrap interval alone misses the drift
    assert c["factor_above"] > 1.5 and c["coverage_after"] > c["coverage_before"] + 0.1
    assert c["median_log_residual"] > 0.01  # the law extrapolates too low: a bias, reported
    run = predict_run(drifting, None, 300000, 8, params=2e6)["forms"]["parametric"]
    assert run["calibrated"] and run["high"] > run["bootstrap_high"]
    numbers = as_dict(drifting, "s", [])
    assert numbers["calibration"]["laws"]["parametric"]["coverage_before"] == c["coverage_before"]
    text = markdown(drifting, "s", [], __import__("pathlib").Path("."))
    assert "## Prediction intervals, calibrated on the back-test" in text and "too low on the median" in text


def _allocation(name: str, value: float, low: float, high: float) -> Allocation:
    return Allocation(name, Estimate(value, low, high), Estimate(0.5, 0.49, 0.51), 0.0, 0.0, None, "", 100)


def test_agreement_is_a_standardised_spread_with_its_threshold():
    # a spread of 0.05 between tight estimates: 3.5 joint standard deviations, they disagree
    tight = [_allocation("envelope", 0.50, 0.48, 0.52), _allocation("isoflop", 0.55, 0.53, 0.57)]
    spread = agreement.standardised_spread(tight, "a")
    assert spread["z"] == pytest.approx(0.05 / math.hypot(0.04 / 3.92, 0.04 / 3.92), rel=1e-3)
    agree, verdict = agreement.verdict_of({e: agreement.standardised_spread(tight, e) for e in ("a", "b")})
    assert agree is False and verdict.startswith("disagree") and f"<= {agreement.AGREE_Z:g}" in verdict
    # a spread of 0.18 that passes only because one interval is huge: undecided, not agreement
    loose = [_allocation("envelope", 0.50, 0.10, 0.90), _allocation("isoflop", 0.68, 0.66, 0.70)]
    agree, verdict = agreement.verdict_of({e: agreement.standardised_spread(loose, e) for e in ("a", "b")})
    assert agree is None and verdict.startswith("undecided")
    close = [_allocation("envelope", 0.50, 0.48, 0.52), _allocation("isoflop", 0.51, 0.49, 0.53)]
    assert agreement.verdict_of({e: agreement.standardised_spread(close, e) for e in ("a", "b")})[0] is True


def test_edge_minima_are_counted_on_what_the_estimator_used():
    sweep = fits.analyse(synthetic.isoflop_study(seed=1, budgets=8, sizes=(3, 5)), {"metric": "m"}, bootstrap=0)
    edges = sweep.agreement["checks"]["isoflop_edge"]
    isoflop = next(a for a in sweep.allocations if getattr(a, "estimator", "") == "isoflop")
    assert edges["counted_on"] == "budgets" and edges["used"] == 8
    assert edges["used"] - edges["edge"] == len(isoflop.points)  # the budgets it kept
    sizes = sweep.agreement["checks"]["sizes_per_level"]  # the sizes each budget ran (3 to 5)
    assert 3 <= sizes["min"] <= sizes["median"] <= 5
    narrow = synthetic.parametric_study(models=4, examples=8, params_range=(1e5, 3e5), seed=3)
    grid = fits.analyse(narrow, {"metric": "m"}, bootstrap=0)
    edges = grid.agreement["checks"]["isoflop_edge"]
    assert edges["counted_on"] == "levels" and edges["edge"] > 0
    assert edges["used"] - edges["edge"] == len(isoflop_minima(grid.frame, grid.epochs))


def test_a_merged_model_is_named_and_predictable_under_either_name():
    frame = synthetic.isoflop_study(seed=0)
    analysis = fits.analyse(frame, {"metric": "m"}, bootstrap=0)
    group = next(g for g in analysis.sweep["merged_sizes"]["groups"] if g["merged"])
    kept, merged = group["model"], group["merged"][0]["model"]
    by_merged = predict_run(analysis, merged, 10000, 1)
    by_kept = predict_run(analysis, kept, 10000, 1)
    assert by_merged["model"] == kept and by_merged["prediction"]["value"] == by_kept["prediction"]["value"]
    assert any(f"{merged} was merged into {kept}" in note for note in by_merged["notes"])
    assert any(merged in note for note in by_kept["notes"])


def test_cli_predicts_by_params_and_never_cuts_a_table(cli, db_url, tmp_path, without_largest):
    frame, largest, _ = without_largest
    path = tmp_path / "study.csv"
    frame[~largest][COLUMNS].to_csv(path, index=False)
    assert cli("import", path, "--db", db_url).exit_code == 0
    target = frame[largest].iloc[3]
    result = cli("predict", "--db", db_url, "--params", str(target["params"]), "--examples", target["examples"],
                 "--epochs", target["epochs"], "--compute", "0.05", "--bootstrap", "60", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["run"]["params"] == target["params"] and answer["compute"]["allocation"]["isoflop"]["params_low"]
    text = cli("predict", "--db", db_url, "--params", "1e6", "--examples", "30000", "--epochs", "4", "--bootstrap", "30")
    assert text.exit_code == 0 and "a model of 1e+06 parameters" in text.output
    far = cli("predict", "--db", db_url, "--params", "1e20", "--examples", "30000", "--epochs", "4", "--bootstrap", "0")
    assert far.exit_code == 2 and far.output.startswith("error: --params 1e+20 is") and len(far.output.splitlines()) == 1
    out = tmp_path / "reports"
    fitted = cli("fit", "--db", db_url, "--out", out, "--bootstrap", "30", "--no-page", "--json")
    assert fitted.exit_code == 0, fitted.output
    assert json.loads(fitted.output)["calibration"]["laws"]["parametric"]["coverage_before"] is not None
    statuses = [law.get("status") or law["skipped"] for law in json.loads(fitted.output)["laws"].values()]
    for env in ({}, {"COLUMNS": "50"}):  # piped, and a narrow terminal
        table = CliRunner().invoke(app, ["fit", "--db", db_url, "--out", str(out), "--bootstrap", "30", "--no-page"], env=env)
        assert table.exit_code == 0 and "…" not in table.output, table.output
        if not env:  # piped: as wide as the table needs, every status whole on its line
            assert all(status in table.output for status in statuses), table.output


@pytest.mark.parametrize("args, message", [
    (("--params", "1e6", "--model", "x", "--examples", "10", "--epochs", "1"), "give one"),
    (("--params", "0", "--examples", "10", "--epochs", "1"), "--params must be a positive number"),
    (("--params", "1e6"), "--params needs --examples N and --epochs T"),
    (("--flops-per-example", "5", "--compute", "1"), "--flops-per-example goes with --params"),
])
def test_bad_size_questions_are_one_line_and_exit_2(cli, db_url, args, message):
    result = cli("predict", "--db", db_url, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
