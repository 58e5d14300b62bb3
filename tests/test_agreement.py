"""Rolling-origin back-test and the agreement diagnosis, as numbers."""

from __future__ import annotations

import pytest

from scaling_study import analysis as fits
from scaling_study import synthetic
from scaling_study.report import as_dict, markdown

REPEATED = synthetic.DataConstrainedLaw(e_inf=0.1, r_star=5.0)


@pytest.fixture(scope="module")
def repeated():
    frame = synthetic.parametric_study(law=REPEATED, models=6, examples=8, epochs=(1, 2, 4, 8, 16, 32, 64),
                                       examples_range=(1e4, 1e7), seed=1)
    return fits.analyse(frame, {"metric": "synthetic/linear"}, epochs=8, bootstrap=100)


def test_backtest_names_the_law_that_generated_the_data(repeated):
    results = repeated.backtest
    assert {r.law for r in results} == {"compute", "parametric", "data_constrained"}
    assert sorted({r.level for r in results}) == [1, 2, 3, 4]
    assert fits.best_law(results) == "data_constrained"
    constrained = [r for r in results if r.law == "data_constrained"]
    assert all(r.mean_abs_rel_error < 0.02 and r.test_points > 0 for r in constrained)
    assert all(a.train_points < b.train_points for a, b in zip(constrained, constrained[1:]))  # the origin rolls


def test_residuals_by_epochs_point_at_repeated_data(repeated):
    checks = repeated.agreement["checks"]
    assert checks["residual_by_epochs"]["form"] == "parametric"
    assert checks["residual_by_epochs"]["range"] > 0.1  # E(P, D = N T) misses the repeats by T
    assert checks["residual_by_epochs_chosen"]["range"] < 0.03  # E(P, D') does not
    assert "residuals_by_epochs" in repeated.agreement["flags"]


def test_a_narrow_model_range_is_flagged_as_edge_minima():
    narrow = synthetic.parametric_study(models=4, examples=8, params_range=(1e5, 3e5), seed=3)
    analysis = fits.analyse(narrow, {"metric": "synthetic/linear"}, bootstrap=100)
    diagnosis = analysis.agreement
    assert diagnosis["agree"] is False and diagnosis["checks"]["intervals_overlap"] == {"a": False, "b": False}
    assert diagnosis["checks"]["isoflop_edge_share"] >= 0.5 and "isoflop_edge" in diagnosis["flags"]
    wide = synthetic.parametric_study(models=8, examples=8, seed=3)
    diagnosis = fits.analyse(wide, {"metric": "synthetic/linear"}, bootstrap=100).agreement
    assert diagnosis["agree"] is True and "isoflop_edge" not in diagnosis["flags"]


def test_fit_json_and_report_carry_the_new_sections(repeated):
    numbers = as_dict(repeated, "s", [])
    assert numbers["backtest"]["best"] == "data_constrained" and len(numbers["backtest"]["levels"]) == 12
    assert numbers["parametric_form"]["chosen"] == "data_constrained"
    assert numbers["laws"]["data_constrained"]["params"]["R_star"]["value"] == pytest.approx(5.0, rel=0.1)
    checks = numbers["agreement"]["checks"]
    for key in ("isoflop_edge_share", "sizes_per_level", "residual_by_epochs", "envelope_points", "intervals_overlap"):
        assert checks[key] is not None
    text = markdown(repeated, "s", [], __import__("pathlib").Path("."))
    for heading in ("### Which parametric form", "## Rolling-origin back-test", "## Agreement diagnosis",
                    "Data-constrained E(P, D')", "Extrapolated best: **E(P, D')**"):
        assert heading in text
