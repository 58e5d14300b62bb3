"""The data-constrained law of Muennighoff et al. (2023): repeated epochs are worth less than new data.

E(P, N, T) = E_inf + A / P^alpha + B / D'^beta with effective data D' = N (1 + R* (1 - exp(-(T - 1) / R*))):
the first epoch counts in full, each repeat a little less, and D' -> N (1 + R*) as T grows (R* -> infinity
gives back D = N T). Their effective-parameter term is left out: it discounts parameters in excess of
the data, which needs a fit of P*(D') first and did not lower the held-out error on our grids.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from .bootstrap import estimates, resampled
from .optimize import bound_status, multistart, one_blas_thread, status_of
from .parametric import fit_parametric, log_sum_exp3
from .results import Estimate, LawFit, Skipped

DATA_CONSTRAINED_LAW = "E(P, N, T) = E_inf + A / P^alpha + B / D'^beta, D' = N (1 + R* (1 - exp(-(T - 1) / R*)))"
R_STAR_RANGE = (0.05, 1e5)


def repeat_factor(epochs: np.ndarray, r_star: np.ndarray) -> np.ndarray:
    """D' / N = 1 + R* (1 - exp(-(T - 1) / R*)), elementwise (broadcasting)."""
    return 1.0 - r_star * np.expm1(-(np.asarray(epochs, float) - 1.0) / r_star)


def log_data_constrained_law(theta: np.ndarray, x: tuple[np.ndarray, np.ndarray, np.ndarray], jac: bool):
    """theta = (log E_inf, log A', log B', alpha, beta, log R*); x = (log P/P0, log N/D0, T - 1)."""
    lp, ln, repeats = x
    e, la, lb, alpha, beta, lr = (theta[:, i, None] for i in range(6))
    r = np.exp(lr)
    decay = np.exp(-repeats / r)
    g = 1.0 - r * np.expm1(-repeats / r)
    ld = ln + np.log(g)
    loge, (s0, s1, s2) = log_sum_exp3(e, la - alpha * lp, lb - beta * ld)
    if not jac:
        return loge, None
    dg = r * (-np.expm1(-repeats / r) - (repeats / r) * decay)  # R dg/dR
    return loge, np.stack([s0, s1, s2, -lp * s1, -ld * s2, -beta * s2 * dg / g], axis=-1)


def _named(t: np.ndarray, p0: float, d0: float, gamma: float) -> dict[str, np.ndarray]:
    alpha, beta = t[..., 3], t[..., 4]
    return {"alpha": alpha, "beta": beta, "E_inf": np.exp(t[..., 0]), "A": np.exp(t[..., 1] + alpha * math.log(p0)),
            "B": np.exp(t[..., 2] + beta * math.log(d0)), "R_star": np.exp(t[..., 5]),
            "a": beta / (alpha + gamma * beta), "b": alpha / (alpha + gamma * beta)}


def design(frame: pd.DataFrame) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], float, float]:
    """x = (log P/P0, log N/D0, T - 1) of the frame, with P0 and D0 the geometric means of P and N T."""
    params = frame["params"].to_numpy(float)
    examples = frame["examples"].to_numpy(float)
    epochs = frame["epochs"].to_numpy(float)
    p0 = float(np.exp(np.log(params).mean()))
    d0 = float(np.exp(np.log(examples * epochs).mean()))
    return (np.log(params / p0), np.log(examples / d0), epochs - 1.0), p0, d0


def bounds(error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top = 5.0 + math.log(max(1.0, float(error.max())))
    lower = np.array([math.log(error.min()) - 14.0, -20.0, -20.0, 0.01, 0.01, math.log(R_STAR_RANGE[0])])
    upper = np.array([math.log(error.min() * (1 - 1e-9)), top, top, 4.0, 4.0, math.log(R_STAR_RANGE[1])])
    return lower, upper


@one_blas_thread
def fit_data_constrained(frame: pd.DataFrame, bootstrap: int, rng: np.random.Generator, gamma: float = 1.0,
                         start: LawFit | None = None) -> LawFit | Skipped:
    """E(P, N, T) with repeats discounted, fitted to every point (cell); bootstrap resamples the points.

    Starts: the fitted E(P, D) (`start`, else fitted here) at several R*, and a coarse grid.
    """
    if frame["epochs"].nunique() < 2 or frame["epochs"].max() < 2:
        return Skipped("data_constrained", f"{DATA_CONSTRAINED_LAW} needs runs at 2 or more epoch counts, "
                                           "some repeated (T > 1)")
    if len(frame) < 6:
        return Skipped("data_constrained", f"the law has 6 parameters; found {len(frame)} points")
    if start is None:
        start = fit_parametric(frame, 0, np.random.default_rng(0), gamma)
    if isinstance(start, Skipped):
        return Skipped("data_constrained", start.reason)
    x, p0, d0 = design(frame)
    error = frame["error"].to_numpy()
    logy = np.log(error)
    lower, upper = bounds(error)
    base = np.array([math.log(start.value("E_inf")), math.log(start.value("A")) - start.value("alpha") * math.log(p0),
                     math.log(start.value("B")) - start.value("beta") * math.log(d0), start.value("alpha"),
                     start.value("beta")])
    r_grid = np.log([0.5, 2.0, 8.0, 30.0, 200.0, 5e3])
    warm = np.column_stack([np.repeat(base[None], r_grid.size, 0), r_grid])
    scale = max(1.0, float(np.median(error)))
    coarse = np.array(np.meshgrid(
        np.log(error.min() * np.array([0.3, 0.9])), np.log(scale * np.array([0.05, 0.3])),
        np.log(scale * np.array([0.05, 0.3])), [0.3, 1.0], [0.2, 0.6], np.log([2.0, 20.0]), indexing="ij",
    )).reshape(6, -1).T
    weights = np.ones_like(error)
    theta, loss, converged = multistart(log_data_constrained_law, np.vstack([warm, coarse]), x, logy, weights,
                                        lower, upper)
    thetas, ok = resampled(log_data_constrained_law, theta, x, logy, rng, bootstrap, lower, upper)
    samples = None if thetas is None else _named(thetas, p0, d0, gamma)
    bound = bound_status(theta, lower, upper, ["log E_inf", "log A", "log B", "alpha", "beta", "log R*"], {
        ("log E_inf", "upper"): "E_inf = the lowest observed value",
        ("log E_inf", "lower"): "E_inf -> 0",
        ("log R*", "upper"): "R* -> infinity (a repeated epoch is as good as new data: E(P, D = N T))",
        ("log R*", "lower"): "R* -> 0 (repeats add nothing)",
    })
    points = frame.assign(predicted=np.exp(log_data_constrained_law(theta[None], x, False)[0][0]))
    return LawFit(
        name="data_constrained", formula=DATA_CONSTRAINED_LAW, params=estimates(_named(theta, p0, d0, gamma), samples, ok),
        status=status_of(converged, bound), points=points, loss=loss,
        resamples=int(ok.sum()) if ok is not None else 0,
        bootstrap="all points resampled with replacement",
        note=("Muennighoff et al. 2023; allocation at fixed T as for E(P, D) with B (T / (D'/N))^beta in place of B; "
              f"FLOP(f) ~ P^gamma, gamma = {gamma:.3f}"),
        samples=None if samples is None else {**samples, "ok": ok},
    )


def data_constrained_law(params, examples, epochs, fit: LawFit):  # noqa: ANN001, ANN201 - numpy in, numpy out
    """E(P, N, T) of a fitted data-constrained law."""
    data = np.asarray(examples, float) * repeat_factor(epochs, fit.value("R_star"))
    return (fit.value("E_inf") + fit.value("A") / np.asarray(params, float) ** fit.value("alpha")
            + fit.value("B") / data ** fit.value("beta"))


def at_fixed_epochs(fit: LawFit, epochs: int) -> LawFit:
    """The law at fixed T as an E(P, D = N T) law: B (T / g(T))^beta in place of B (for the allocation)."""
    shrink = (epochs / repeat_factor(epochs, fit.value("R_star"))) ** fit.value("beta")
    params = dict(fit.params)
    b = params["B"]
    params["B"] = Estimate(b.value * shrink, b.low, b.high)
    return dataclasses.replace(fit, params=params)
