"""Rolling-origin back-test: each law fitted only to the cells below a compute level and scored on the
compute-optimal points above it, at several levels. Scaling laws are used to extrapolate; this is
the check that matches the use (the held-out check in `extrapolation` is one such level).

Every law is refitted from its full fit by the vectorised Levenberg-Marquardt of the bootstrap
with the points above the level at weight 0 (all levels at once; the envelope of the cells below a
level is the envelope's part below it): a local refit, which keeps `study fit` fast; the start
has seen the held-out points, so on a multimodal fit it may flatter a law.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..budget import PFLOP
from .bootstrap import refit_resamples
from .data_constrained import bounds
from .envelope import envelope, log_compute_law
from .forms import theta_of
from .results import BackTest, LawFit, Skipped

QUANTILES = (0.5, 0.6, 0.7, 0.8)  # of the cells' compute: the origins


def _score(law: str, level: int, threshold: float, train: int, predicted: np.ndarray, observed: np.ndarray) -> BackTest:
    relative = np.abs(predicted / observed - 1)
    return BackTest(law, level, threshold / PFLOP, train, int(observed.size), float(relative.mean()), float(relative.max()))


def _compute_law_levels(law: LawFit, usable: list) -> list[dict]:
    """Eq. 5 refitted to the envelope points below each level, from the full fit."""
    points = law.points
    pflops = points["compute"].to_numpy() / PFLOP
    error = points["error"].to_numpy()
    c0 = float(np.exp(np.log(pflops).mean()))
    x = pflops / c0
    alpha = law.value("alpha")
    theta = np.array([np.log(law.value("a")) - alpha * np.log(c0), np.log(max(law.value("b"), 1e-300) / c0), alpha,
                      law.value("E_inf")])
    lower = np.array([-30.0, np.log(x.min()) - 12.0, 0.0, 0.0])
    upper = np.array([30.0, np.log(x.max()) + 3.0, 5.0, error.min() * (1 - 1e-9)])
    results, rows = [], []
    for level, threshold, test in usable:
        below = points["compute"].to_numpy() <= threshold
        if below.sum() >= 4:
            rows.append((level, threshold, test, below))
    if not rows:
        return results
    weights = np.stack([below.astype(float) for *_, below in rows])
    uppers = np.tile(upper, (len(rows), 1))
    uppers[:, 3] = [error[below].min() * (1 - 1e-9) for *_, below in rows]
    start = np.minimum(np.clip(theta, lower, upper), uppers.min(0))
    thetas, _ = refit_resamples(log_compute_law, start, x, np.log(error), weights, lower, uppers)
    for row, (level, threshold, test, below) in enumerate(rows):
        loge, _ = log_compute_law(thetas[row: row + 1], test["compute"].to_numpy() / PFLOP / c0, False)
        results.append({"law": "compute", "level": level, "threshold": threshold, "train": int(below.sum()),
                        "index": test.index.to_numpy(), "predicted": np.exp(loge[0]),
                        "observed": test["error"].to_numpy(), "envelope": np.ones(len(test), bool)})
    return results


def origin_predictions(frame: pd.DataFrame, compute_fit: LawFit, laws: list[LawFit | Skipped | None],
                       quantiles: tuple[float, ...] = QUANTILES) -> list[dict]:
    """Per level and law, the out-of-sample predictions of a fit to the cells below the level: {law, level,
    threshold, train, index (the frame's labels), predicted, observed, envelope (which are compute-optimal)}.

    E(C) predicts the envelope points above the level; a parametric form every point above it."""
    compute = frame["compute"].to_numpy()
    thresholds = np.unique(np.quantile(compute, quantiles))
    on = envelope(frame)
    usable = []
    for level, threshold in enumerate(thresholds, 1):
        test = on[on["compute"] > threshold]
        if len(test) and (compute <= threshold).sum() >= 6:
            usable.append((level, threshold, test))
    if not usable:
        return []
    results = _compute_law_levels(compute_fit, usable)
    logy = np.log(frame["error"].to_numpy())
    on_envelope = frame.index.isin(on.index)
    for law in laws:
        if not isinstance(law, LawFit):
            continue
        theta, x, log_law = theta_of(law, frame)
        lower, upper = bounds(frame["error"].to_numpy())
        lower, upper = lower[: theta.size], upper[: theta.size]
        weights = np.stack([(compute <= threshold).astype(float) for _, threshold, _ in usable])
        thetas, ok = refit_resamples(log_law, np.clip(theta, lower, upper), x, logy, weights, lower, upper)
        loge, _ = log_law(thetas, x, False)
        for row, (level, threshold, _) in enumerate(usable):
            above = compute > threshold
            results.append({"law": law.name, "level": level, "threshold": threshold, "train": int(weights[row].sum()),
                            "index": frame.index[above].to_numpy(), "predicted": np.exp(loge[row, above]),
                            "observed": np.exp(logy[above]), "envelope": on_envelope[above]})
    return results


def scores(predictions: list[dict]) -> list[BackTest]:
    """Each law's error per level on the compute-optimal points above the level."""
    results = [_score(p["law"], p["level"], p["threshold"], p["train"], p["predicted"][p["envelope"]],
                      p["observed"][p["envelope"]]) for p in predictions if p["envelope"].any()]
    return sorted(results, key=lambda r: (r.level, r.law))


def rolling_origin(frame: pd.DataFrame, compute_fit: LawFit, laws: list[LawFit | Skipped | None],
                   quantiles: tuple[float, ...] = QUANTILES) -> list[BackTest]:
    """Per level and law: the error on the envelope points above the level of a fit to the cells below it."""
    return scores(origin_predictions(frame, compute_fit, laws, quantiles))


def best_law(results: list[BackTest]) -> str | None:
    """The law with the lowest mean error over the levels where every law was scored."""
    if not results:
        return None
    table = pd.DataFrame([r.__dict__ for r in results])
    complete = table.groupby("level")["law"].transform("nunique") == table["law"].nunique()
    scored = table[complete] if complete.any() else table
    return str(scored.groupby("law")["mean_abs_rel_error"].mean().idxmin())
