"""Fitting a law in log space: the Huber loss of log residuals, minimised by L-BFGS-B from the best
few starts of a grid (screened in one vectorised pass), then polished by a vectorised damped
Gauss-Newton (Levenberg-Marquardt) iteration on the iteratively reweighted Huber loss, which
the bootstrap also uses to refit all its resamples at once."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import minimize

from ..cores import usable_cores  # noqa: F401 - the bootstrap and the figures divide the cores with it

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - a dependency; without it BLAS may oversubscribe the cores
    threadpool_limits = None

HUBER_DELTA = 1e-3
SCREEN_VALUES = 2_000_000  # values of a (starts, points) array screened at once: ~16 MB, whatever the points


def one_blas_thread(function: Callable) -> Callable:
    """Run on one BLAS thread: the linear algebra here is on 3x3 to 5x5 matrices, where BLAS
    threads only spin against each other (5x slower on a loaded 2-core machine)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        limit = threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()
        with limit:
            return function(*args, **kwargs)

    return wrapper



def huber(r: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Huber loss of log residuals, divided by delta (so large residuals cost |r|)."""
    a = np.abs(r)
    return w * np.where(a <= HUBER_DELTA, 0.5 * r * r / HUBER_DELTA, a - 0.5 * HUBER_DELTA)


def lbfgsb(law: Callable, theta0: np.ndarray, x, logy: np.ndarray, w: np.ndarray,
            lower: np.ndarray, upper: np.ndarray):
    def loss_and_grad(theta: np.ndarray):
        loge, jac = law(theta[None], x, True)
        r = loge[0] - logy
        loss = float(huber(r, w).sum())
        grad = (w * np.clip(r / HUBER_DELTA, -1.0, 1.0)) @ jac[0]
        if not np.isfinite(loss):
            return 1e300, np.zeros_like(theta)
        return loss, grad

    return minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B", bounds=list(zip(lower, upper)),
                    options={"maxiter": 5000, "maxfun": 10000, "ftol": 1e-13, "gtol": 1e-10})


def refine(law: Callable, theta: np.ndarray, x, logy: np.ndarray, w: np.ndarray,
            lower: np.ndarray, upper: np.ndarray, max_iter: int = 200, rtol: float = 1e-10):
    """Minimise each row's Huber loss at once (vectorised Levenberg-Marquardt on IRLS weights).

    theta (B, k); logy and w broadcast to (B, n); lower and upper to (B, k).
    Returns the refined theta, each row's loss, and whether each row converged.
    The rows still iterating are a compacted working set (views while all of them are), so
    that the (B, n, k) Jacobian is not copied on every iteration.
    """
    theta = np.array(theta, float)
    rows, k = theta.shape
    loge, jac = law(theta, x, True)
    n = loge.shape[1]
    r = loge - logy
    w = np.broadcast_to(w, (rows, n))
    loss = huber(r, w).sum(1)
    converged = np.zeros(rows, bool)
    eye = np.eye(k)
    # the working set: global row numbers and each row's state; finished rows leave it
    ids = np.flatnonzero(np.isfinite(loss))
    th, res, jj, ll = theta[ids], r[ids], jac[ids], loss[ids]
    ly = np.broadcast_to(logy, (rows, n))[ids]
    ww, lo, up = w[ids], np.broadcast_to(lower, (rows, k))[ids], np.broadcast_to(upper, (rows, k))[ids]
    damping = np.full(ids.size, 1e-3)
    for _ in range(max_iter):
        if ids.size == 0:
            break
        psi = ww * np.clip(res / HUBER_DELTA, -1.0, 1.0)
        omega = ww / np.maximum(np.abs(res), HUBER_DELTA)  # psi / r: the IRLS weights
        grad = np.matmul(psi[:, None, :], jj)[:, 0, :]
        hess = np.matmul(np.swapaxes(jj * omega[..., None], 1, 2), jj)
        # parameters on a bound that the gradient pushes against are held there (an active set)
        held = ((th <= lo + 1e-12 * (1 + np.abs(lo))) & (grad > 0)) | ((th >= up - 1e-12 * (1 + np.abs(up))) & (grad < 0))
        free = (~held).astype(float)
        grad = grad * free
        hess = hess * free[:, :, None] * free[:, None, :] + held[:, :, None] * eye
        diag = np.diagonal(hess, axis1=1, axis2=2)
        system = hess + (damping[:, None] * diag + 1e-12)[:, :, None] * eye
        try:
            step = np.linalg.solve(system, -grad[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = -grad / np.maximum(diag, 1e-12)
        trial = np.clip(th + step, lo, up)
        tloge, tjac = law(trial, x, True)
        tr = tloge - ly
        tloss = huber(tr, ww).sum(1)
        ok = np.isfinite(tloss) & (tloss <= ll)
        gain = np.where(ok, ll - tloss, 0.0)
        tiny = (np.abs(trial - th) <= 1e-10 * (1.0 + np.abs(th))).all(1)
        small = ok & (gain <= rtol * (1.0 + ll)) & (damping < 1.0)
        if ok.all():
            th, res, jj, ll = trial, tr, tjac, tloss
        else:
            np.copyto(th, trial, where=ok[:, None])
            np.copyto(res, tr, where=ok[:, None])
            np.copyto(jj, tjac, where=ok[:, None, None])
            np.copyto(ll, tloss, where=ok)
        damping = np.where(ok, damping / 3.0, damping * 5.0)
        # a negligible step, or none that lowers the loss: a minimum (possibly on a bound)
        stop = small | tiny | (damping > 1e10)
        if stop.any():
            theta[ids[stop]], loss[ids[stop]], converged[ids[stop]] = th[stop], ll[stop], True
            keep = ~stop
            ids, th, res, jj, ll, damping = ids[keep], th[keep], res[keep], jj[keep], ll[keep], damping[keep]
            ly, ww, lo, up = ly[keep], ww[keep], lo[keep], up[keep]
    theta[ids], loss[ids] = th, ll  # rows that ran out of iterations
    return theta, loss, converged


def multistart(law: Callable, starts: np.ndarray, x, logy: np.ndarray, w: np.ndarray,
                lower: np.ndarray, upper: np.ndarray, keep: int = 6):
    """Screen a grid of starts, run L-BFGS-B from the best few, polish the best: (theta, loss, converged)."""
    starts = np.clip(starts, lower, upper)
    n = np.shape(logy)[-1]
    size = max(1, SCREEN_VALUES // max(n, 1))  # starts per pass: (starts, points) arrays of bounded size
    losses = np.empty(len(starts))
    for first in range(0, len(starts), size):
        loge, _ = law(starts[first:first + size], x, False)
        with np.errstate(invalid="ignore"):
            losses[first:first + size] = huber(loge - logy, w).sum(1)
    order = np.argsort(np.where(np.isfinite(losses), losses, np.inf))[:keep]
    results = [lbfgsb(law, start, x, logy, w, lower, upper) for start in starts[order]]
    best = min(results, key=lambda res: res.fun)
    theta, loss, converged = refine(law, best.x[None], x, logy, w, lower, upper)
    return theta[0], float(loss[0]), bool(converged[0] or best.success)



def bound_status(theta: np.ndarray, lower: np.ndarray, upper: np.ndarray, names: Sequence[str],
                  meaning: dict[tuple[str, str], str]) -> str | None:
    span = np.maximum(upper - lower, 1.0)
    hits = []
    for i, name in enumerate(names):
        for side, bound in (("lower", lower[i]), ("upper", upper[i])):
            if abs(theta[i] - bound) <= 1e-6 * span[i]:
                hits.append(meaning.get((name, side), f"{name} at its {side} bound"))
    return "hit a bound: " + "; ".join(hits) if hits else None



def status_of(converged: bool, bound: str | None) -> str:
    if bound:
        return bound
    return "converged" if converged else "failed: the optimiser stopped before converging"
