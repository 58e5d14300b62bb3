"""Fitting the scaling laws: pure functions over a frame of evaluation points (no I/O).

The frame has one row per evaluation point (the columns of `db.evaluations_frame`): a job
(model, N, seed) evaluated after T epochs has `error` and `compute` = FLOP(f) * 3 * N * T
multiply-accumulates (Eq. 4). Compute enters every fit in PFLOPs.

Every law is fitted in log space: the loss is the Huber loss (delta = 1e-3) of
log(E_pred) - log(E), minimised by L-BFGS-B from the best few starts of a grid (the grid is
screened in one vectorised pass), then polished. Bootstrap refits start from the best fit and
run all resamples at once: a damped Gauss-Newton (Levenberg-Marquardt) iteration on the
iteratively reweighted Huber loss, vectorised over the resamples, with the same bounds.
Intervals are the 2.5 and 97.5 percentiles of the bootstrap estimates.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.interpolate import Akima1DInterpolator
from scipy.optimize import minimize

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - a dependency; without it BLAS may oversubscribe the cores
    threadpool_limits = None

from .budget import PFLOP
from .errors import StudyError

HUBER_DELTA = 1e-3
HELD_OUT_FRACTION = 0.2
COMPUTE_LAW = "E(C) = a (b + C)^-alpha + E_inf"
SATURATING_LAW = "E(x) = A x^-alpha + E_inf"
PARAMETRIC_LAW = "E(P, D) = E_inf + A / P^alpha + B / D^beta, D = N T"
_CHUNK = 250  # bootstrap resamples refined at once (bounds the (chunk, points, params) Jacobian)


def _one_blas_thread(function: Callable) -> Callable:
    """Run on one BLAS thread: the linear algebra here is on 3x3 to 5x5 matrices, where BLAS
    threads only spin against each other (5x slower on a loaded 2-core machine)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        limit = threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()
        with limit:
            return function(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Estimate:
    """A fitted number and its bootstrap 95% interval (NaN when not bootstrapped)."""

    value: float
    low: float = math.nan
    high: float = math.nan


@dataclass(frozen=True, eq=False)
class LawFit:
    """One fitted law: its parameters with intervals, how the fit ended, and the points it used."""

    name: str
    formula: str
    params: dict[str, Estimate]
    status: str  # "converged", "hit a bound: ...", or "failed: ..."
    points: pd.DataFrame
    loss: float
    resamples: int  # bootstrap resamples whose refit converged
    bootstrap: str  # what was resampled
    note: str = ""

    def value(self, name: str) -> float:
        """A parameter's point estimate."""
        return self.params[name].value


@dataclass(frozen=True, eq=False)
class Allocation:
    """P*(C) = exp(p0) C^a and N*(C) = exp(n0) C^b (C in PFLOPs) by one estimator."""

    estimator: str
    a: Estimate
    b: Estimate
    p0: float
    n0: float
    points: pd.DataFrame  # columns pflops, params, examples (the points regressed, if any)
    method: str
    resamples: int


@dataclass(frozen=True)
class Skipped:
    """A fit that was not done, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class HeldOut:
    """A law refitted without the highest-compute points, scored on them."""

    name: str
    threshold_pflops: float
    train_points: int
    test_points: int
    mean_abs_rel_error: float
    max_abs_rel_error: float
    params: dict[str, float]


@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything `study fit` computes for one (study, metric) selection."""

    metric: str
    filters: dict
    frame: pd.DataFrame  # the points used, with an `envelope` column
    epochs: int  # T of the envelope and iso-FLOP allocation estimators
    compute: LawFit
    bottleneck_params: LawFit | Skipped
    bottleneck_examples: LawFit | Skipped
    parametric: LawFit | Skipped
    allocations: list[Allocation | Skipped]
    held_out: list[HeldOut | Skipped]
    flops_exponent: float  # gamma in FLOP(f) = kappa P^gamma across the models
    flops_scale: float  # kappa
    bootstrap: int
    seed: int
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- data selection


def default_metric(metrics: Iterable[str]) -> str:
    """The first downstream linear-probe metric, else upstream top-1, else the only metric there is."""
    metrics = sorted(set(metrics))
    linear = [m for m in metrics if m.endswith("/linear")]
    if linear:
        return linear[0]
    if "upstream/top1" in metrics:
        return "upstream/top1"
    if len(metrics) == 1:
        return metrics[0]
    if not metrics:
        raise StudyError("no evaluation points to fit: run or import a study first")
    raise StudyError(f"no */linear or upstream/top1 metric; choose one with --metric: {', '.join(metrics)}")


def select(
    frame: pd.DataFrame,
    metric: str | None = None,
    kind: str | None = None,
    exclude: Sequence[int] = (),
) -> tuple[pd.DataFrame, dict]:
    """The points of one metric (default: `default_metric`), optionally one model kind, minus excluded jobs."""
    metric = metric or default_metric(frame["metric"].unique())
    if metric not in set(frame["metric"]):
        known = ", ".join(sorted(frame["metric"].unique())) or "none"
        raise StudyError(f"no evaluation points for metric {metric!r}; metrics present: {known}")
    chosen = frame[frame["metric"] == metric]
    if kind:
        if kind not in set(chosen["kind"]):
            raise StudyError(f"no {kind!r} models for metric {metric!r}; kinds present: {', '.join(sorted(chosen['kind'].unique()))}")
        chosen = chosen[chosen["kind"] == kind]
    excluded = sorted({int(j) for j in exclude})
    unknown = sorted(set(excluded) - set(chosen["job_id"]))
    if unknown:
        raise StudyError(f"--exclude: no job {', '.join(map(str, unknown))} among the points of metric {metric!r}")
    if excluded:
        chosen = chosen[~chosen["job_id"].isin(excluded)]
    nonpositive = int((chosen["error"] <= 0).sum())
    chosen = chosen[chosen["error"] > 0]  # log-space fits: a zero error has no logarithm
    filters = {"metric": metric, "kind": kind or "all", "excluded_jobs": excluded, "dropped_zero_error": nonpositive}
    return chosen.reset_index(drop=True), filters


def envelope(frame: pd.DataFrame) -> pd.DataFrame:
    """The compute-optimal points: sorted by compute, those with lower error than every point of lower compute."""
    ordered = frame.sort_values(["compute", "error"], kind="stable")
    return ordered[envelope_mask(ordered["error"].to_numpy())]


def envelope_mask(errors: np.ndarray) -> np.ndarray:
    """For errors sorted by compute (rows of a 2-D array independently): which points are on the lower envelope."""
    errors = np.asarray(errors, float)
    best_before = np.minimum.accumulate(errors, axis=-1)
    shifted = np.concatenate([np.full(errors.shape[:-1] + (1,), np.inf), best_before[..., :-1]], axis=-1)
    return errors < shifted


# ----------------------------------------------------------------------------- laws in log space
# Each law maps a batch of parameter vectors theta (B, k) and shared inputs to log E_pred (B, n)
# and, when asked, its Jacobian (B, n, k).


def _compute_law(theta: np.ndarray, x: np.ndarray, jac: bool):
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


def _saturating_law(theta: np.ndarray, lx: np.ndarray, jac: bool):
    """theta = (log A', alpha, E_inf) of E = A' x'^-alpha + E_inf, lx = log x'."""
    la, alpha, e_inf = (theta[:, i, None] for i in range(3))
    t = np.exp(la - alpha * lx)
    e = t + e_inf
    loge = np.log(e)
    if not jac:
        return loge, None
    q = t / e
    return loge, np.stack([q, -lx * q, 1.0 / e], axis=-1)


def _parametric_law(theta: np.ndarray, x: tuple[np.ndarray, np.ndarray], jac: bool):
    """theta = (log E_inf, log A', log B', alpha, beta); log E = LSE(e, a - alpha lp, b - beta ld) (Hoffmann et al.)."""
    lp, ld = x
    e, la, lb, alpha, beta = (theta[:, i, None] for i in range(5))
    u0 = np.broadcast_to(e, (theta.shape[0], lp.size))
    u1 = la - alpha * lp
    u2 = lb - beta * ld
    top = np.maximum(np.maximum(u0, u1), u2)
    w0, w1, w2 = np.exp(u0 - top), np.exp(u1 - top), np.exp(u2 - top)
    total = w0 + w1 + w2
    loge = top + np.log(total)
    if not jac:
        return loge, None
    s0, s1, s2 = w0 / total, w1 / total, w2 / total
    return loge, np.stack([s0, s1, s2, -lp * s1, -ld * s2], axis=-1)


# ----------------------------------------------------------------------------- optimisation


def _huber(r: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Huber loss of log residuals, divided by delta (so large residuals cost |r|)."""
    a = np.abs(r)
    return w * np.where(a <= HUBER_DELTA, 0.5 * r * r / HUBER_DELTA, a - 0.5 * HUBER_DELTA)


def _lbfgsb(law: Callable, theta0: np.ndarray, x, logy: np.ndarray, w: np.ndarray,
            lower: np.ndarray, upper: np.ndarray):
    def loss_and_grad(theta: np.ndarray):
        loge, jac = law(theta[None], x, True)
        r = loge[0] - logy
        loss = float(_huber(r, w).sum())
        grad = (w * np.clip(r / HUBER_DELTA, -1.0, 1.0)) @ jac[0]
        if not np.isfinite(loss):
            return 1e300, np.zeros_like(theta)
        return loss, grad

    return minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B", bounds=list(zip(lower, upper)),
                    options={"maxiter": 5000, "maxfun": 10000, "ftol": 1e-13, "gtol": 1e-10})


def _refine(law: Callable, theta: np.ndarray, x, logy: np.ndarray, w: np.ndarray,
            lower: np.ndarray, upper: np.ndarray, max_iter: int = 200, rtol: float = 1e-10):
    """Minimise each row's Huber loss at once (vectorised Levenberg-Marquardt on IRLS weights).

    theta (B, k); logy and w broadcast to (B, n); lower and upper to (B, k).
    Returns the refined theta, each row's loss, and whether each row converged.
    """
    theta = np.array(theta, float)
    rows, k = theta.shape
    loge, jac = law(theta, x, True)
    n = loge.shape[1]
    logy = np.broadcast_to(logy, (rows, n))
    w = np.broadcast_to(w, (rows, n))
    lower = np.broadcast_to(lower, (rows, k))
    upper = np.broadcast_to(upper, (rows, k))
    r = loge - logy
    loss = _huber(r, w).sum(1)
    damping = np.full(rows, 1e-3)
    done = ~np.isfinite(loss)
    converged = np.zeros(rows, bool)
    eye = np.eye(k)
    for _ in range(max_iter):
        idx = np.flatnonzero(~done)
        if idx.size == 0:
            break
        ri, ji, wi = r[idx], jac[idx], w[idx]
        psi = wi * np.clip(ri / HUBER_DELTA, -1.0, 1.0)
        omega = wi / np.maximum(np.abs(ri), HUBER_DELTA)  # psi / r: the IRLS weights
        grad = np.matmul(psi[:, None, :], ji)[:, 0, :]
        hess = np.matmul(np.swapaxes(ji * omega[..., None], 1, 2), ji)
        # parameters on a bound that the gradient pushes against are held there (an active set)
        ti, lo, up = theta[idx], lower[idx], upper[idx]
        held = ((ti <= lo + 1e-12 * (1 + np.abs(lo))) & (grad > 0)) | ((ti >= up - 1e-12 * (1 + np.abs(up))) & (grad < 0))
        free = (~held).astype(float)
        grad = grad * free
        hess = hess * free[:, :, None] * free[:, None, :] + held[:, :, None] * eye
        diag = np.diagonal(hess, axis1=1, axis2=2)
        system = hess + (damping[idx, None] * diag + 1e-12)[:, :, None] * eye
        try:
            step = np.linalg.solve(system, -grad[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = -grad / np.maximum(diag, 1e-12)
        trial = np.clip(theta[idx] + step, lower[idx], upper[idx])
        tloge, tjac = law(trial, x, True)
        tr = tloge - logy[idx]
        tloss = _huber(tr, wi).sum(1)
        ok = np.isfinite(tloss) & (tloss <= loss[idx])
        gain = np.where(ok, loss[idx] - tloss, 0.0)
        tiny = (np.abs(trial - theta[idx]) <= 1e-10 * (1.0 + np.abs(theta[idx]))).all(1)
        small = ok & (gain <= rtol * (1.0 + loss[idx])) & (damping[idx] < 1.0)
        acc = idx[ok]
        theta[acc], r[acc], jac[acc], loss[acc] = trial[ok], tr[ok], tjac[ok], tloss[ok]
        damping[acc] /= 3.0
        damping[idx[~ok]] *= 5.0
        # a negligible step, or none that lowers the loss: a minimum (possibly on a bound)
        stop = small | tiny | (damping[idx] > 1e10)
        converged[idx[stop]] = True
        done[idx[stop]] = True
    return theta, loss, converged


def _multistart(law: Callable, starts: np.ndarray, x, logy: np.ndarray, w: np.ndarray,
                lower: np.ndarray, upper: np.ndarray, keep: int = 6):
    """Screen a grid of starts, run L-BFGS-B from the best few, polish the best: (theta, loss, converged)."""
    starts = np.clip(starts, lower, upper)
    loge, _ = law(starts, x, False)
    with np.errstate(invalid="ignore"):
        losses = _huber(loge - logy, w).sum(1)
    order = np.argsort(np.where(np.isfinite(losses), losses, np.inf))[:keep]
    results = [_lbfgsb(law, start, x, logy, w, lower, upper) for start in starts[order]]
    best = min(results, key=lambda res: res.fun)
    theta, loss, converged = _refine(law, best.x[None], x, logy, w, lower, upper)
    return theta[0], float(loss[0]), bool(converged[0] or best.success)


def _bootstrap(law: Callable, theta: np.ndarray, x, logy: np.ndarray, w: np.ndarray,
               lower: np.ndarray, upper: np.ndarray):
    """Refit every resample (rows of logy and/or w) from theta, in chunks: (thetas, converged)."""
    rows = max(np.shape(logy)[0] if np.ndim(logy) == 2 else 1, np.shape(w)[0] if np.ndim(w) == 2 else 1)
    thetas, oks = [], []
    for start in range(0, rows, _CHUNK):
        part = slice(start, min(rows, start + _CHUNK))
        ly = logy[part] if np.ndim(logy) == 2 else logy
        ww = w[part] if np.ndim(w) == 2 else w
        up = upper[part] if np.ndim(upper) == 2 else upper
        size = part.stop - part.start
        # rtol 1e-8: the intervals agree with 1e-10 to 4 digits, in two thirds of the time
        t, _, ok = _refine(law, np.repeat(theta[None], size, 0), x, ly, ww, lower, up, rtol=1e-8)
        thetas.append(t)
        oks.append(ok)
    return np.concatenate(thetas), np.concatenate(oks)


def _bound_status(theta: np.ndarray, lower: np.ndarray, upper: np.ndarray, names: Sequence[str],
                  meaning: dict[tuple[str, str], str]) -> str | None:
    span = np.maximum(upper - lower, 1.0)
    hits = []
    for i, name in enumerate(names):
        for side, bound in (("lower", lower[i]), ("upper", upper[i])):
            if abs(theta[i] - bound) <= 1e-6 * span[i]:
                hits.append(meaning.get((name, side), f"{name} at its {side} bound"))
    return "hit a bound: " + "; ".join(hits) if hits else None


def _interval(samples: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    good = samples[ok & np.isfinite(samples)]
    if good.size < 2:
        return math.nan, math.nan
    low, high = np.percentile(good, [2.5, 97.5])
    return float(low), float(high)


def _estimates(values: dict[str, float], samples: dict[str, np.ndarray] | None, ok: np.ndarray | None) -> dict[str, Estimate]:
    if samples is None:
        return {k: Estimate(float(v)) for k, v in values.items()}
    return {k: Estimate(float(v), *_interval(samples[k], ok)) for k, v in values.items()}


def _multinomial(rng: np.random.Generator, resamples: int, n: int) -> np.ndarray:
    """Bootstrap resamples as counts: row i says how often each of n points was drawn."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)


def _status(converged: bool, bound: str | None) -> str:
    if bound:
        return bound
    return "converged" if converged else "failed: the optimiser stopped before converging"


# ----------------------------------------------------------------------------- E(C), Eq. 5


@_one_blas_thread
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
    theta, loss, converged = _multistart(_compute_law, starts, x, logy, weights, lower, upper)

    def named(t: np.ndarray) -> dict[str, np.ndarray]:
        # back to C in PFLOPs: a' (b' + C/C0)^-alpha = a' C0^alpha (b' C0 + C)^-alpha
        return {"alpha": t[..., 2], "E_inf": t[..., 3], "a": np.exp(t[..., 0] + t[..., 2] * math.log(c0)),
                "b": np.exp(t[..., 1]) * c0}

    samples = ok = None
    if bootstrap:
        counts = _multinomial(rng, bootstrap, len(x))
        thetas, ok = _bootstrap(_compute_law, theta, x, logy, counts, lower, upper)
        samples = named(thetas)
    bound = _bound_status(theta, lower, upper, ["log a", "log b", "alpha", "E_inf"], {
        ("log b", "lower"): "b -> 0 (a pure power law plus E_inf)",
        ("E_inf", "lower"): "E_inf = 0",
        ("E_inf", "upper"): "E_inf = the lowest error",
    })
    points = env.assign(pflops=pflops, predicted=np.exp(_compute_law(theta[None], x, False)[0][0]))
    return LawFit(
        name="compute", formula=COMPUTE_LAW, params=_estimates(named(theta), samples, ok),
        status=_status(converged, bound), points=points, loss=loss,
        resamples=int(ok.sum()) if ok is not None else 0,
        bootstrap="envelope points resampled with replacement (the envelope is not re-taken)",
    )


def compute_law(pflops: np.ndarray, fit: LawFit) -> np.ndarray:
    """E(C) of a fitted Eq. 5 at `pflops`."""
    return fit.value("a") * (fit.value("b") + np.asarray(pflops, float)) ** -fit.value("alpha") + fit.value("E_inf")


# ----------------------------------------------------------------------------- bottleneck laws (Fig. 6)


def _fit_saturating(name: str, variable: np.ndarray, error: np.ndarray, points: pd.DataFrame,
                    bootstrap: int, rng: np.random.Generator, note: str) -> LawFit:
    """E = A x^-alpha + E_inf; bootstrap resamples the log residuals (one point per model or N)."""
    x0 = float(np.exp(np.log(variable).mean()))
    lx = np.log(variable / x0)
    logy = np.log(error)
    lower = np.array([-30.0, 0.0, 0.0])
    upper = np.array([30.0, 5.0, error.min() * (1 - 1e-9)])
    grid = np.array(np.meshgrid([0.05, 0.2, 0.5, 1.0, 2.0], error.min() * np.array([0.0, 0.3, 0.6, 0.9]),
                                indexing="ij")).reshape(2, -1).T
    alpha, e_inf = grid.T
    la = np.median(np.log(error[None] - e_inf[:, None]) + alpha[:, None] * lx[None], axis=1)
    starts = np.column_stack([la, alpha, e_inf])
    weights = np.ones_like(lx)
    theta, loss, converged = _multistart(_saturating_law, starts, lx, logy, weights, lower, upper)

    def named(t: np.ndarray) -> dict[str, np.ndarray]:
        return {"alpha": t[..., 1], "E_inf": t[..., 2], "A": np.exp(t[..., 0] + t[..., 1] * math.log(x0))}

    fitted = _saturating_law(theta[None], lx, False)[0][0]
    samples = ok = None
    if len(lx) <= 3:  # as many points as parameters: the curve interpolates them, no residuals to resample
        bootstrap = 0
        note += "; as many points as parameters, so no bootstrap interval"
    if bootstrap:
        residuals = logy - fitted
        draws = fitted[None] + residuals[rng.integers(0, len(lx), (bootstrap, len(lx)))]
        up = np.tile(upper, (bootstrap, 1))
        up[:, 2] = np.exp(draws.min(1)) * (1 - 1e-9)
        thetas, ok = _bootstrap(_saturating_law, np.minimum(theta, up.min(0)), lx, draws, weights, lower, up)
        samples = named(thetas)
    bound = _bound_status(theta, lower, upper, ["log A", "alpha", "E_inf"], {
        ("E_inf", "lower"): "E_inf = 0 (a pure power law)",
        ("E_inf", "upper"): "E_inf = the lowest error",
    })
    return LawFit(
        name=name, formula=SATURATING_LAW, params=_estimates(named(theta), samples, ok),
        status=_status(converged, bound), points=points.assign(predicted=np.exp(fitted)), loss=loss,
        resamples=int(ok.sum()) if ok is not None else 0,
        bootstrap="log residuals of the fit resampled with replacement (one point per model or per N)",
        note=note,
    )


def saturating_law(x: np.ndarray, fit: LawFit) -> np.ndarray:
    """E(x) = A x^-alpha + E_inf of a fitted bottleneck law."""
    return fit.value("A") * np.asarray(x, float) ** -fit.value("alpha") + fit.value("E_inf")


@_one_blas_thread
def fit_bottleneck_params(frame: pd.DataFrame, bootstrap: int, rng: np.random.Generator) -> LawFit | Skipped:
    """Error vs parameters when data is plentiful: each model's best point at the largest N."""
    largest = frame["examples"].max()
    at_max = frame[frame["examples"] == largest]
    best = at_max.loc[at_max.groupby("model")["error"].idxmin()].sort_values("params")
    if best["params"].nunique() < 3:
        return Skipped("params", f"error vs parameters needs 3 models at the largest N = {largest:,}; "
                                 f"found {best['params'].nunique()} (the law has 3 parameters)")
    note = f"points: each model's lowest error at the largest N = {largest:,} (any T)"
    return _fit_saturating("params", best["params"].to_numpy(float), best["error"].to_numpy(), best,
                           bootstrap, rng, note)


@_one_blas_thread
def fit_bottleneck_examples(frame: pd.DataFrame, bootstrap: int, rng: np.random.Generator) -> LawFit | Skipped:
    """Error vs examples when parameters are plentiful: the largest model's best point at each N."""
    largest = frame["params"].max()
    model = frame[frame["params"] == largest]
    best = model.loc[model.groupby("examples")["error"].idxmin()].sort_values("examples")
    name = best["model"].iloc[0]
    if len(best) < 3:
        return Skipped("examples", f"error vs examples needs 3 values of N for the largest model {name}; "
                                   f"found {len(best)} (the law has 3 parameters)")
    note = f"points: the lowest error of the largest model ({name}, {largest:,} parameters) at each N (any T)"
    return _fit_saturating("examples", best["examples"].to_numpy(float), best["error"].to_numpy(), best,
                           bootstrap, rng, note)


# ----------------------------------------------------------------------------- parametric E(P, D)


def flops_scaling(frame: pd.DataFrame) -> tuple[float, float]:
    """(kappa, gamma) of FLOP(f) = kappa P^gamma, a log-log fit across the models (gamma = 1 with one model)."""
    models = frame.drop_duplicates("params")
    logp = np.log(models["params"].to_numpy(float))
    logf = np.log(models["flops_per_example"].to_numpy(float))
    if len(models) < 2 or np.ptp(logp) == 0:
        return float(np.exp(np.mean(logf - logp))), 1.0
    gamma, log_kappa = np.polyfit(logp, logf, 1)
    return float(np.exp(log_kappa)), float(gamma)


@_one_blas_thread
def fit_parametric(frame: pd.DataFrame, bootstrap: int, rng: np.random.Generator, gamma: float = 1.0) -> LawFit | Skipped:
    """E(P, D) fitted to every point (Hoffmann et al. approach 3); bootstrap resamples all points."""
    if len(frame) < 5:
        return Skipped("parametric", f"{PARAMETRIC_LAW} needs 5 points; found {len(frame)}")
    if frame["params"].nunique() < 2 or (frame["examples"] * frame["epochs"]).nunique() < 2:
        return Skipped("parametric", f"{PARAMETRIC_LAW} needs at least 2 model sizes and 2 values of N*T")
    params = frame["params"].to_numpy(float)
    data = (frame["examples"] * frame["epochs"]).to_numpy(float)
    error = frame["error"].to_numpy()
    p0, d0 = float(np.exp(np.log(params).mean())), float(np.exp(np.log(data).mean()))
    x = (np.log(params / p0), np.log(data / d0))
    logy = np.log(error)
    lower = np.array([math.log(1e-6), -20.0, -20.0, 0.01, 0.01])
    # E_inf is not bounded by the lowest error: one low outlier would otherwise pin it
    upper = np.array([math.log(error.max()), 5.0, 5.0, 4.0, 4.0])
    starts = np.array(np.meshgrid(
        np.log(error.min() * np.array([0.1, 0.5, 0.9])),
        np.log([0.01, 0.05, 0.2, 0.8]),
        np.log([0.01, 0.05, 0.2, 0.8]),
        [0.1, 0.3, 0.6, 1.0, 1.6],
        [0.1, 0.3, 0.6, 1.0, 1.6],
        indexing="ij",
    )).reshape(5, -1).T
    weights = np.ones_like(error)
    theta, loss, converged = _multistart(_parametric_law, starts, x, logy, weights, lower, upper)

    def named(t: np.ndarray) -> dict[str, np.ndarray]:
        alpha, beta = t[..., 3], t[..., 4]
        return {"alpha": alpha, "beta": beta, "E_inf": np.exp(t[..., 0]),
                "A": np.exp(t[..., 1] + alpha * math.log(p0)), "B": np.exp(t[..., 2] + beta * math.log(d0)),
                "a": beta / (alpha + gamma * beta), "b": alpha / (alpha + gamma * beta)}

    samples = ok = None
    if bootstrap:
        counts = _multinomial(rng, bootstrap, len(error))
        thetas, ok = _bootstrap(_parametric_law, theta, x, logy, counts, lower, upper)
        samples = named(thetas)
    bound = _bound_status(theta, lower, upper, ["log E_inf", "log A", "log B", "alpha", "beta"], {
        ("log E_inf", "upper"): "E_inf = the highest error",
        ("log E_inf", "lower"): "E_inf -> 0",
    })
    points = frame.assign(predicted=np.exp(_parametric_law(theta[None], x, False)[0][0]))
    return LawFit(
        name="parametric", formula=PARAMETRIC_LAW, params=_estimates(named(theta), samples, ok),
        status=_status(converged, bound), points=points, loss=loss,
        resamples=int(ok.sum()) if ok is not None else 0,
        bootstrap="all points resampled with replacement",
        note=f"allocation exponents a = beta / (alpha + gamma beta), b = alpha / (alpha + gamma beta) with FLOP(f) ~ P^gamma, gamma = {gamma:.3f}",
    )


def parametric_law(params: np.ndarray, data: np.ndarray, fit: LawFit) -> np.ndarray:
    """E(P, D) of a fitted parametric law."""
    return (fit.value("E_inf") + fit.value("A") / np.asarray(params, float) ** fit.value("alpha")
            + fit.value("B") / np.asarray(data, float) ** fit.value("beta"))


# ----------------------------------------------------------------------------- allocation (Fig. 7)


def _weighted_slopes(x: np.ndarray, ys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts of weighted least squares of each y in ys (q, n) on x, for each weight row (B, n)."""
    weights = np.atleast_2d(weights)
    total = weights.sum(1, keepdims=True)
    mx = (weights * x).sum(1, keepdims=True) / total
    dx = x[None] - mx
    sxx = (weights * dx * dx).sum(1)
    slopes, intercepts = [], []
    for y in ys:
        my = (weights * y).sum(1, keepdims=True) / total
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(sxx > 1e-12, (weights * dx * (y[None] - my)).sum(1) / np.where(sxx > 1e-12, sxx, 1.0), np.nan)
        slopes.append(slope)
        intercepts.append(my[:, 0] - slope * mx[:, 0])
    return np.array(slopes), np.array(intercepts)


def _regression_allocation(estimator: str, points: pd.DataFrame, weights: np.ndarray, method: str,
                           bootstrap: int, rng: np.random.Generator) -> Allocation:
    logc = np.log(points["pflops"].to_numpy())
    ys = np.log(points[["params", "examples"]].to_numpy(float)).T
    slopes, intercepts = _weighted_slopes(logc, ys, weights)
    a = Estimate(float(slopes[0, 0]))
    b = Estimate(float(slopes[1, 0]))
    resamples = 0
    if bootstrap:
        counts = _multinomial(rng, bootstrap, len(points)) * weights
        boot, _ = _weighted_slopes(logc, ys, counts)
        ok = np.isfinite(boot).all(0)
        resamples = int(ok.sum())
        a = Estimate(a.value, *_interval(boot[0], ok))
        b = Estimate(b.value, *_interval(boot[1], ok))
    return Allocation(estimator, a, b, float(intercepts[0, 0]), float(intercepts[1, 0]), points, method, resamples)


def allocation_envelope(frame: pd.DataFrame, epochs: int, bootstrap: int, rng: np.random.Generator) -> Allocation | Skipped:
    """Hoffmann et al. approach 1 (the paper's Fig. 7): log P and log N of the envelope points at T on log C."""
    env = envelope(frame[frame["epochs"] == epochs])
    if len(env) < 2 or env["params"].nunique() < 2:
        return Skipped("envelope", f"the envelope at T = {epochs} has {len(env)} point(s) and "
                                   f"{env['params'].nunique()} model size(s); a log-log line needs 2 of each")
    points = pd.DataFrame({"pflops": env["compute"].to_numpy() / PFLOP, "params": env["params"].to_numpy(),
                           "examples": env["examples"].to_numpy()})
    method = f"OLS of log P and log N on log C over the {len(points)} envelope points at T = {epochs}; bootstrap over them"
    return _regression_allocation("envelope", points, np.ones(len(points)), method, bootstrap, rng)


def isoflop_minima(frame: pd.DataFrame, epochs: int, levels: int | None = None) -> pd.DataFrame:
    """Per compute level: each model's error there (interpolated along its runs at T), the Akima minimum over log P.

    Columns pflops, params, examples, models (how many models bracket the level); levels whose
    minimum lies on the edge of the models that reach it are dropped.
    """
    at_t = frame[frame["epochs"] == epochs]
    curves = (at_t.assign(logc=np.log(at_t["compute"] / PFLOP), loge=np.log(at_t["error"]))
              .groupby(["params", "examples"], as_index=False)
              .agg(logc=("logc", "mean"), loge=("loge", "mean"), flops=("flops_per_example", "first")))
    if curves.empty:
        return pd.DataFrame(columns=["pflops", "params", "examples", "models"])
    low, high = curves["logc"].min(), curves["logc"].max()
    count = levels or int(np.clip(round(4 * (high - low) / math.log(10)), 5, 30))
    grid = np.linspace(low, high, count + 2)[1:-1]
    sizes = np.sort(curves["params"].unique())
    logp = np.log(sizes)
    logf = np.log(curves.drop_duplicates("params").sort_values("params")["flops"].to_numpy(float))
    table = np.full((grid.size, sizes.size), np.nan)
    for j, size in enumerate(sizes):
        runs = curves[curves["params"] == size].sort_values("logc")
        if len(runs) < 2:
            continue
        c, e = runs["logc"].to_numpy(), runs["loge"].to_numpy()
        inside = (grid >= c[0]) & (grid <= c[-1])
        table[inside, j] = np.interp(grid[inside], c, e)
    rows = []
    for level, errors in zip(grid, table):
        have = np.isfinite(errors)
        if have.sum() < 3:
            continue
        xs, ys = logp[have], errors[have]
        fine = np.linspace(xs[0], xs[-1], 400)
        curve = Akima1DInterpolator(xs, ys)(fine)
        best = int(np.nanargmin(curve))
        if best == 0 or best == fine.size - 1:
            continue  # the optimum lies beyond the models that reach this compute
        lp = fine[best]
        flops = math.exp(np.interp(lp, logp, logf))
        examples = math.exp(level) * PFLOP / (3.0 * flops * epochs)
        rows.append({"pflops": math.exp(level), "params": math.exp(lp), "examples": examples, "models": int(have.sum())})
    return pd.DataFrame(rows, columns=["pflops", "params", "examples", "models"])


def allocation_isoflop(frame: pd.DataFrame, epochs: int, bootstrap: int, rng: np.random.Generator) -> Allocation | Skipped:
    """Hoffmann et al. approach 2: weighted regression of the iso-FLOP minima on log C."""
    minima = isoflop_minima(frame, epochs)
    if len(minima) < 2:
        return Skipped("isoflop", f"iso-FLOP at T = {epochs}: {len(minima)} compute level(s) with an interior "
                                  f"minimum over >= 3 models; a log-log line needs 2")
    weights = minima["models"].to_numpy(float)
    method = (f"{len(minima)} compute levels at T = {epochs}: each model's error interpolated in log C along its runs, "
              "Akima in log P across models, interior minima only; least squares weighted by the number of models "
              "at the level; bootstrap over the levels")
    return _regression_allocation("isoflop", minima, weights, method, bootstrap, rng)


def allocation_parametric(fit: LawFit, epochs: int, kappa: float, gamma: float) -> Allocation:
    """Hoffmann et al. approach 3: the optimum of the fitted E(P, D) at C = 3 kappa P^gamma D; N* = D*/T."""
    alpha, beta = fit.value("alpha"), fit.value("beta")
    denominator = alpha + gamma * beta
    log_c_unit = math.log(PFLOP) - math.log(3.0 * kappa)  # log(C / (3 kappa)) at C = 1 PFLOP
    p0 = (math.log(alpha * fit.value("A")) - math.log(gamma * beta * fit.value("B")) + beta * log_c_unit) / denominator
    n0 = log_c_unit - gamma * p0 - math.log(epochs)
    grid = np.geomspace(fit.points["compute"].min(), fit.points["compute"].max(), 20) / PFLOP
    points = pd.DataFrame({"pflops": grid, "params": np.exp(p0 + fit.params["a"].value * np.log(grid)),
                           "examples": np.exp(n0 + fit.params["b"].value * np.log(grid))})
    method = f"the minimum of the fitted E(P, D) subject to C = 3 FLOP(f) N T; N* = D*/T at T = {epochs}"
    return Allocation("parametric", fit.params["a"], fit.params["b"], p0, n0, points, method, fit.resamples)


# ----------------------------------------------------------------------------- held-out check


def _held_out_compute(frame: pd.DataFrame, threshold: float) -> HeldOut | Skipped:
    train = frame[frame["compute"] <= threshold]
    test = envelope(frame)
    test = test[test["compute"] > threshold]
    if test.empty or len(envelope(train)) < 4:
        return Skipped("compute", "too few envelope points on either side of the held-out threshold")
    fit = fit_compute_law(train, bootstrap=0)
    relative = compute_law(test["compute"].to_numpy() / PFLOP, fit) / test["error"].to_numpy() - 1
    return HeldOut("compute", threshold / PFLOP, len(fit.points), len(test), float(np.abs(relative).mean()),
                   float(np.abs(relative).max()), {k: v.value for k, v in fit.params.items()})


def _held_out_parametric(frame: pd.DataFrame, threshold: float, gamma: float) -> HeldOut | Skipped:
    train = frame[frame["compute"] <= threshold]
    test = frame[frame["compute"] > threshold]
    fit = fit_parametric(train, 0, np.random.default_rng(0), gamma) if len(test) else Skipped("parametric", "")
    if isinstance(fit, Skipped):
        return Skipped("parametric", "too few points on either side of the held-out threshold")
    predicted = parametric_law(test["params"].to_numpy(), (test["examples"] * test["epochs"]).to_numpy(), fit)
    relative = predicted / test["error"].to_numpy() - 1
    return HeldOut("parametric", threshold / PFLOP, len(train), len(test), float(np.abs(relative).mean()),
                   float(np.abs(relative).max()), {k: v.value for k, v in fit.params.items()})


# ----------------------------------------------------------------------------- everything


@_one_blas_thread
def analyse(frame: pd.DataFrame, filters: dict | None = None, epochs: int | None = None,
            bootstrap: int = 1000, seed: int = 0) -> Analysis:
    """Every fit of `study fit` on one selection of points (see `select`)."""
    filters = dict(filters or {})
    metric = filters.get("metric") or (frame["metric"].iloc[0] if len(frame) else "")
    if frame.empty:
        raise StudyError(f"no evaluation points to fit for metric {metric!r}")
    if bootstrap < 0:
        raise StudyError(f"--bootstrap must be >= 0, not {bootstrap}")
    available = sorted(int(t) for t in frame["epochs"].unique())
    if epochs is None:
        epochs = available[0]
    elif epochs not in available:
        raise StudyError(f"no evaluation points at T = {epochs} epochs; epochs present: {', '.join(map(str, available))}")
    rng = np.random.default_rng(seed)
    compute = fit_compute_law(frame, bootstrap, rng)
    kappa, gamma = flops_scaling(frame)
    parametric = fit_parametric(frame, bootstrap, rng, gamma)
    allocations: list[Allocation | Skipped] = [
        allocation_envelope(frame, epochs, bootstrap, rng),
        allocation_isoflop(frame, epochs, bootstrap, rng),
        allocation_parametric(parametric, epochs, kappa, gamma) if isinstance(parametric, LawFit)
        else Skipped("parametric", parametric.reason),
    ]
    threshold = float(np.quantile(frame["compute"], 1 - HELD_OUT_FRACTION))
    held_out = [_held_out_compute(frame, threshold)]
    if isinstance(parametric, LawFit):
        held_out.append(_held_out_parametric(frame, threshold, gamma))
    on_envelope = frame.index.isin(envelope(frame).index)
    filters["epochs_for_allocation"] = epochs
    return Analysis(
        metric=metric, filters=filters, frame=frame.assign(envelope=on_envelope), epochs=epochs,
        compute=compute,
        bottleneck_params=fit_bottleneck_params(frame, bootstrap, rng),
        bottleneck_examples=fit_bottleneck_examples(frame, bootstrap, rng),
        parametric=parametric, allocations=allocations, held_out=held_out,
        flops_exponent=gamma, flops_scale=kappa, bootstrap=bootstrap, seed=seed,
    )
