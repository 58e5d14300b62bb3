"""Prediction intervals, and their calibration on the rolling-origin back-test.

A prediction interval adds the scatter of single runs around a law to the uncertainty of the law
itself: each bootstrap refit's prediction gets one draw of log-normal noise whose spread is the
robust (1.4826 MAD) spread of the fit's log residuals, plus the seed spread a single run has
beyond a cell's mean. With no bootstrap, the noise alone makes the interval.

Such an interval assumes the law holds where it is asked; an extrapolation also carries the law's
own error there. The back-test measures it: each law fitted below a compute level predicts the
points above it, out of sample. Split-conformal calibration on those log residuals: each residual
is scored as a multiple of the interval's half-width on its side (above or below the point), and
each side is widened by the conformal 97.5% quantile of its scores (never narrowed), so that at
least 95% of the back-test's points would have fallen inside. An interval that was too narrow, or a
law biased one way, widens the side that missed. The coverage before and after is recorded; the
coverage after is cross-validated over the back-test's levels (each level scored with the factors
of the others).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..budget import PFLOP
from .envelope import compute_law
from .forms import law_value
from .results import LawFit, SeedSpread

LEVEL = 0.95
Z = 1.959963984540054  # the normal 97.5% quantile
MIN_RESIDUALS = 5  # fewer out-of-sample residuals than this: no calibration


def noise(fit: LawFit, seeds: SeedSpread | None) -> float:
    """Std of log value of one new run around the law: the residual spread, plus the seed spread within cells."""
    residual = np.log(fit.points["error"].to_numpy()) - np.log(fit.points["predicted"].to_numpy())
    sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    if seeds is not None and seeds.cells_with_seeds and math.isfinite(seeds.log_std):
        sigma = math.sqrt(sigma**2 + seeds.log_std**2 * (1 - 1 / seeds.seeds_per_cell))
    return sigma


def law_draws(fit: LawFit, rows: pd.DataFrame) -> np.ndarray | None:
    """Each bootstrap refit's value at the rows (columns params, examples, epochs, or pflops for E(C)):
    (resamples, rows), NaN where a refit gives no positive value; None without a bootstrap."""
    if fit.samples is None:
        return None
    s = {k: np.asarray(v)[fit.samples["ok"], None] for k, v in fit.samples.items() if k != "ok"}
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if fit.name == "compute":
            values = s["a"] * (s["b"] + rows["pflops"].to_numpy(float)[None]) ** -s["alpha"] + s["E_inf"]
        else:
            examples, epochs = rows["examples"].to_numpy(float)[None], rows["epochs"].to_numpy(float)[None]
            data = examples * epochs
            if "R_star" in s:
                data = examples * (1.0 - s["R_star"] * np.expm1(-(epochs - 1.0) / s["R_star"]))
            values = s["E_inf"] + s["A"] / rows["params"].to_numpy(float)[None] ** s["alpha"] + s["B"] / data ** s["beta"]
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def law_values(fit: LawFit, rows: pd.DataFrame) -> np.ndarray:
    """The fitted law's values at the rows (as law_draws reads them)."""
    if fit.name == "compute":
        return compute_law(rows["pflops"].to_numpy(float), fit)
    return np.asarray(law_value(fit, rows["params"].to_numpy(float), rows["examples"].to_numpy(float),
                                rows["epochs"].to_numpy(float)), float)


def log_bands(points: np.ndarray, draws: np.ndarray | None, sigma: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The 95% prediction band around each point in log space, (below, above): below <= 0 <= above."""
    points = np.asarray(points, float)
    tail = 100 * (1 - LEVEL) / 2
    if draws is None or len(draws) < 2 or not (np.isfinite(draws).sum(0) >= 2).all():
        return np.full(points.shape, -Z * sigma), np.full(points.shape, Z * sigma)
    logs = np.log(draws) + rng.normal(0.0, sigma, draws.shape)
    percentile = np.percentile if np.isfinite(logs).all() else np.nanpercentile  # the first is 5x faster
    low, high = percentile(logs, [tail, 100 - tail], axis=0)
    tiny = 1e-9
    return np.minimum(low - np.log(points), -tiny), np.maximum(high - np.log(points), tiny)


def _factor(scores: np.ndarray) -> float:
    """The split-conformal quantile for one side at 97.5%, at least 1 (the band is never narrowed)."""
    scores = np.sort(scores[np.isfinite(scores)])
    if scores.size == 0:
        return 1.0
    k = min(scores.size, math.ceil((scores.size + 1) * (1 - (1 - LEVEL) / 2)))
    return max(1.0, float(scores[k - 1]))


def _factors(residual: np.ndarray, below: np.ndarray, above: np.ndarray) -> tuple[float, float]:
    """(factor below, factor above): each side's residuals as multiples of that side's half-width."""
    return _factor(residual / below), _factor(residual / above)


def _inside(residual: np.ndarray, below: np.ndarray, above: np.ndarray, factors: tuple[float, float]) -> np.ndarray:
    return (residual >= factors[0] * below) & (residual <= factors[1] * above)


def calibrate(predictions: list[dict], frame: pd.DataFrame, laws: list[LawFit], seeds: SeedSpread | None,
              seed: int = 0) -> dict:
    """Per law: the back-test's coverage of the 95% prediction intervals before and after calibration, and
    the factors each side of an interval is widened by (see the module's docstring)."""
    rng = np.random.default_rng([seed, 29])
    result = {}
    rows_all = frame.assign(pflops=frame["compute"] / PFLOP)
    for fit in laws:
        if not isinstance(fit, LawFit):
            continue
        mine = [p for p in predictions if p["law"] == fit.name]
        if not mine:
            continue
        rows = rows_all.loc[np.concatenate([p["index"] for p in mine])]
        level = np.concatenate([np.full(p["index"].size, p["level"]) for p in mine])
        residual = np.log(np.concatenate([p["observed"] for p in mine])) - np.log(np.concatenate([p["predicted"] for p in mine]))
        below, above = log_bands(law_values(fit, rows), law_draws(fit, rows), noise(fit, seeds), rng)
        entry = {"residuals": int(residual.size), "levels": int(np.unique(level).size),
                 "coverage_before": float(_inside(residual, below, above, (1.0, 1.0)).mean()),
                 "median_log_residual": float(np.median(residual)),
                 "factor_below": 1.0, "factor_above": 1.0, "coverage_after": None, "calibrated": False}
        if residual.size >= MIN_RESIDUALS:
            factors = _factors(residual, below, above)
            inside = np.zeros(residual.size, bool)
            for each in np.unique(level):
                rest = level != each
                held = _factors(residual[rest], below[rest], above[rest]) if rest.sum() >= MIN_RESIDUALS else factors
                inside[~rest] = _inside(residual[~rest], below[~rest], above[~rest], held)
            entry.update(factor_below=factors[0], factor_above=factors[1], coverage_after=float(inside.mean()),
                         coverage_after_in_sample=float(_inside(residual, below, above, factors).mean()),
                         calibrated=True)
        result[fit.name] = entry
    return result


def interval(point: float, draws: np.ndarray | None, sigma: float, rng: np.random.Generator,
             calibration: dict | None = None) -> dict:
    """A 95% prediction interval at one point: {value, low, high}, widened by `calibration` when it was
    calibrated (then `bootstrap_low`, `bootstrap_high` are the interval before)."""
    below, above = log_bands(np.array([point]), None if draws is None else np.asarray(draws, float).reshape(-1, 1),
                             sigma, rng)
    row = {"value": point, "low": point * math.exp(below[0]), "high": point * math.exp(above[0]), "calibrated": False}
    if calibration and calibration.get("calibrated"):
        row.update(bootstrap_low=row["low"], bootstrap_high=row["high"], calibrated=True,
                   low=point * math.exp(calibration["factor_below"] * below[0]),
                   high=point * math.exp(calibration["factor_above"] * above[0]))
    return row
