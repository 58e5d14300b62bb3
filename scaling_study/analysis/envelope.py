"""The compute-optimal envelope and Eq. 5, E(C) = a (b + C)^-alpha + E_inf, fitted to it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..budget import PFLOP
from ..errors import StudyError
from .bootstrap import estimates, resampled
from .identifiability import bound_shares
from .optimize import bound_status, multistart, one_blas_thread, status_of
from .results import LawFit

COMPUTE_LAW = "E(C) = a (b + C)^-alpha + E_inf"


def envelope(frame: pd.DataFrame) -> pd.DataFrame:
    """The compute-optimal points: sorted by compute, those with lower error than every point of lower compute.

    When the frame has a `budget` column (an iso-FLOP sweep, see `sweeps`), each budget's points have
    the same compute up to noise: only its best point competes (rows with budget -1 all do).
    """
    if "budget" in frame.columns and len(frame):
        in_budget = frame["budget"].to_numpy() >= 0
        best = frame[in_budget].groupby("budget")["error"].idxmin()
        frame = frame[~in_budget | frame.index.isin(best)]
    ordered = frame.sort_values(["compute", "error"], kind="stable")
    return ordered[envelope_mask(ordered["error"].to_numpy())]


def envelope_mask(errors: np.ndarray) -> np.ndarray:
    """For errors sorted by compute (rows of a 2-D array independently): which points are on the lower envelope."""
    errors = np.asarray(errors, float)
    best_before = np.minimum.accumulate(errors, axis=-1)
    shifted = np.concatenate([np.full(errors.shape[:-1] + (1,), np.inf), best_before[..., :-1]], axis=-1)
    return errors < shifted



def log_compute_law(theta: np.ndarray, x: np.ndarray, jac: bool):
    """theta = (log a', log b', alpha, E_inf) of E = a' (b' + c)^-alpha + E_inf, c = C / C0."""
    la, lb, alpha, e_inf = (theta[:, i, None] for i in range(4))
    b = np.exp(lb)
    s = b + x
    ls = np.log(s)
    t = np.exp(la - alpha * ls)
    e = t + e_inf
    loge = np.log(e)
    if not jac:
        return loge, None
    q = t / e
    return loge, np.stack([q, -alpha * (b / s) * q, -ls * q, 1.0 / e], axis=-1)



@one_blas_thread
def fit_compute_law(frame: pd.DataFrame, bootstrap: int = 1000, rng: np.random.Generator | None = None) -> LawFit:
    """Eq. 5 fitted to the compute-optimal envelope; bootstrap resamples the envelope points."""
    rng = rng or np.random.default_rng(0)
    env = envelope(frame)
    if len(env) < 4:
        raise StudyError(
            f"cannot fit {COMPUTE_LAW}: only {len(env)} compute-optimal point(s) among {len(frame)} evaluation "
            f"points; the law has 4 parameters"
        )
    pflops = env["compute"].to_numpy() / PFLOP
    error = env["error"].to_numpy()
    c0 = float(np.exp(np.log(pflops).mean()))  # compute in units of its geometric mean: a well-conditioned fit
    x = pflops / c0
    logy = np.log(error)
    lower = np.array([-30.0, math.log(x.min()) - 12.0, 0.0, 0.0])
    upper = np.array([30.0, math.log(x.max()) + 3.0, 5.0, error.min() * (1 - 1e-9)])
    grid = np.array(np.meshgrid(
        np.linspace(math.log(x.min()) - 3.0, math.log(x.max()), 4),
        [0.1, 0.25, 0.5, 1.0, 2.0],
        error.min() * np.array([0.0, 0.25, 0.5, 0.75, 0.95]),
        indexing="ij",
    )).reshape(3, -1).T
    lb, alpha, e_inf = grid.T
    la = np.median(np.log(error[None] - e_inf[:, None]) + alpha[:, None] * np.log(np.exp(lb)[:, None] + x[None]), axis=1)
    starts = np.column_stack([la, lb, alpha, e_inf])
    weights = np.ones_like(x)
    theta, loss, converged = multistart(log_compute_law, starts, x, logy, weights, lower, upper)

    def named(t: np.ndarray) -> dict[str, np.ndarray]:
        # back to C in PFLOPs: a' (b' + C/C0)^-alpha = a' C0^alpha (b' C0 + C)^-alpha
        return {"alpha": t[..., 2], "E_inf": t[..., 3], "a": np.exp(t[..., 0] + t[..., 2] * math.log(c0)),
                "b": np.exp(t[..., 1]) * c0}

    thetas, ok = resampled(log_compute_law, theta, x, logy, rng, bootstrap, lower, upper)
    samples = None if thetas is None else named(thetas)
    shares = {} if thetas is None else bound_shares(thetas, ok, lower, upper, ["a", "b", "alpha", "E_inf"])
    bound = bound_status(theta, lower, upper, ["log a", "log b", "alpha", "E_inf"], {
        ("log b", "lower"): "b -> 0 (a pure power law plus E_inf)",
        ("E_inf", "lower"): "E_inf = 0",
        ("E_inf", "upper"): "E_inf = the lowest error",
    })
    points = env.assign(pflops=pflops, predicted=np.exp(log_compute_law(theta[None], x, False)[0][0]))
    return LawFit(
        name="compute", formula=COMPUTE_LAW, params=estimates(named(theta), samples, ok),
        status=status_of(converged, bound), points=points, loss=loss,
        resamples=int(ok.sum()) if ok is not None else 0,
        bootstrap="envelope points resampled with replacement (the envelope is not re-taken)"
                  + ("; the envelope takes the best point per compute budget" if "budget" in frame.columns else ""),
        bound_share=shares,
        samples=None if samples is None else {**samples, "ok": ok},
    )


def compute_law(pflops: np.ndarray, fit: LawFit) -> np.ndarray:
    """E(C) of a fitted Eq. 5 at `pflops`."""
    return fit.value("a") * (fit.value("b") + np.asarray(pflops, float)) ** -fit.value("alpha") + fit.value("E_inf")
