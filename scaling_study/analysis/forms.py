"""Which parametric form to believe: E(P, D = N T) or the data-constrained E(P, D'), chosen by the
error each makes on trajectories it was not fitted to (k-fold over trajectories).

Each fold's refit starts from the full fit and runs the vectorised Levenberg-Marquardt of the
bootstrap with the held-out trajectories at weight 0 (all folds at once): a local refit, cheap
enough to run on every `study fit`. The simpler form wins unless the other's held-out error is
lower by more than `MARGIN`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .bootstrap import refit_resamples
from .data_constrained import bounds, data_constrained_law, design, log_data_constrained_law
from .parametric import log_parametric_law, parametric_law
from .results import FormChoice, LawFit, Skipped

FOLDS = 5
MARGIN = 0.02  # relative: E(P, D') must beat E(P, D) by 2% of its held-out error to be chosen


def law_value(fit: LawFit, params, examples, epochs):  # noqa: ANN001, ANN201 - numpy in, numpy out
    """The value a fitted parametric form (either) predicts at P, N, T."""
    if fit.name == "data_constrained":
        return data_constrained_law(params, examples, epochs, fit)
    return parametric_law(params, np.asarray(examples, float) * np.asarray(epochs, float), fit)


def theta_of(fit: LawFit, frame: pd.DataFrame) -> tuple[np.ndarray, tuple, object]:
    """(theta, x, log law) of a fitted form on `frame`, in the units its fit used."""
    x, p0, d0 = design(frame)
    base = [math.log(fit.value("E_inf")), math.log(fit.value("A")) - fit.value("alpha") * math.log(p0),
            math.log(fit.value("B")) - fit.value("beta") * math.log(d0), fit.value("alpha"), fit.value("beta")]
    if fit.name == "data_constrained":
        return np.array([*base, math.log(fit.value("R_star"))]), x, log_data_constrained_law
    lp, ln, repeats = x
    return np.array(base), (lp, ln + np.log(repeats + 1.0)), log_parametric_law


def trajectory_folds(frame: pd.DataFrame, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """A fold number per point: whole trajectories (model, N) go to one fold, drawn at random."""
    ids = pd.factorize(pd.Series(list(zip(frame["params"], frame["examples"]))))[0]
    count = min(folds, ids.max() + 1)
    order = np.random.default_rng(seed).permutation(ids.max() + 1)
    return order[ids] % count


def held_out_score(fit: LawFit, frame: pd.DataFrame, fold: np.ndarray) -> float:
    """Mean |log(predicted / observed)| over points, each predicted by the refit without its fold."""
    theta, x, law = theta_of(fit, frame)
    logy = np.log(frame["error"].to_numpy())
    lower, upper = bounds(frame["error"].to_numpy())
    lower, upper = lower[: theta.size], upper[: theta.size]
    weights = np.stack([(fold != k).astype(float) for k in range(fold.max() + 1)])
    thetas, _ = refit_resamples(law, np.clip(theta, lower, upper), x, logy, weights, lower, upper)
    loge, _ = law(thetas, x, False)
    residual = loge[fold, np.arange(fold.size)] - logy
    return float(np.mean(np.abs(residual)))


def choose_form(frame: pd.DataFrame, parametric: LawFit | Skipped, constrained: LawFit | Skipped,
                folds: int = FOLDS) -> FormChoice | None:
    """Score both forms on held-out trajectories; None when E(P, D) was not fitted."""
    if not isinstance(parametric, LawFit):
        return None
    fold = trajectory_folds(frame, folds)
    count = int(fold.max() + 1)
    method = (f"{count}-fold over the {len(set(zip(frame['params'], frame['examples'])))} trajectories (model, N): "
              "mean |log(predicted / observed)| on the held-out trajectories, each fold refitted from the full fit; "
              f"E(P, D') is chosen only if it is lower by more than {MARGIN:.0%}")
    if count < 2:
        return FormChoice("parametric", {}, count, "one trajectory: nothing to hold out; " + method)
    scores = {"parametric": held_out_score(parametric, frame, fold)}
    if isinstance(constrained, LawFit):
        scores["data_constrained"] = held_out_score(constrained, frame, fold)
    chosen = "parametric"
    if scores.get("data_constrained", math.inf) < scores["parametric"] * (1 - MARGIN):
        chosen = "data_constrained"
    return FormChoice(chosen, scores, count, method)
