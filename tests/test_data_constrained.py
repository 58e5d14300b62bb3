"""The data-constrained law: recovered from a synthetic truth, and chosen over E(P, D) only
when repeated epochs are worth less than new data."""

from __future__ import annotations

import numpy as np
import pytest

from scaling_study import analysis as fits
from scaling_study import synthetic

TRUTH = synthetic.DataConstrainedLaw(e_inf=0.1, A=400.0, alpha=0.65, B=15.0, beta=0.35, r_star=5.0)
EPOCHS = (1, 2, 4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def repeated():
    return synthetic.parametric_study(law=TRUTH, models=6, examples=8, epochs=EPOCHS, examples_range=(1e4, 1e7), seed=1)


def test_data_constrained_law_recovers_its_truth(repeated):
    assert repeated["error"].max() < 1  # no error clipped at 1
    fit = fits.fit_data_constrained(repeated, 100, np.random.default_rng(0))
    assert fit.status == "converged"
    assert fit.value("alpha") == pytest.approx(TRUTH.alpha, abs=0.02)
    assert fit.value("beta") == pytest.approx(TRUTH.beta, abs=0.02)
    assert fit.value("R_star") == pytest.approx(TRUTH.r_star, rel=0.1)
    low, high = fit.params["R_star"].low, fit.params["R_star"].high
    assert low < TRUTH.r_star < high and fit.resamples >= 95
    predicted = fits.data_constrained_law(repeated["params"], repeated["examples"], repeated["epochs"], fit)
    assert np.median(np.abs(predicted / repeated["error"] - 1)) < 0.01


def test_held_out_score_chooses_the_form_that_generated_the_data(repeated):
    analysis = fits.analyse(repeated, {"metric": "synthetic/linear"}, epochs=8, bootstrap=50)
    assert analysis.form.chosen == "data_constrained"
    assert analysis.form.scores["data_constrained"] < 0.6 * analysis.form.scores["parametric"]
    allocation = next(a for a in analysis.allocations if a.estimator == "parametric")
    assert allocation.a.value == pytest.approx(TRUTH.beta / (TRUTH.alpha + TRUTH.beta), abs=0.02)
    # the allocation at fixed T is the optimum of the data-constrained law there
    fit = analysis.data_constrained
    compute = 3 * 1e15  # 1 PFLOP of multiply-accumulates, FLOP(f) = P
    sizes = np.geomspace(1e3, 1e9, 4001)
    examples = compute / (3 * sizes * 8)
    best = sizes[np.argmin(fits.data_constrained_law(sizes, examples, 8, fit))]
    assert np.log(best) == pytest.approx(allocation.p0 + allocation.a.value * np.log(3.0), abs=0.02)


def test_fresh_data_keeps_the_simpler_form():
    frame = synthetic.parametric_study(models=6, examples=8, seed=2)  # E(P, D = N T) exactly
    analysis = fits.analyse(frame, {"metric": "synthetic/linear"}, bootstrap=0)
    assert analysis.form.chosen == "parametric"
    assert analysis.data_constrained.value("R_star") > 100  # repeats worth (almost) as much as new data
