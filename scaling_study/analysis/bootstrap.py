"""Bootstrap intervals: resamples drawn as counts, refitted all at once from the best fit, and
summarised as 2.5 and 97.5 percentiles."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .optimize import refine, usable_cores
from .results import Estimate

CHUNK = 250  # bootstrap resamples refined at once (bounds the (chunk, points, params) Jacobian)
CHUNK_VALUES = 1_000_000  # and at most this many values in that Jacobian (~8 MB): fewer resamples when points are many


def refit_resamples(law: Callable, theta: np.ndarray, x, logy: np.ndarray, w: np.ndarray,
               lower: np.ndarray, upper: np.ndarray):
    """Refit every resample (rows of logy and/or w) from theta, in chunks: (thetas, converged).

    The chunks are independent and their arithmetic is numpy's, which releases the GIL, so they
    run on threads where there are spare cores (the same numbers, in less time)."""
    rows = max(np.shape(logy)[0] if np.ndim(logy) == 2 else 1, np.shape(w)[0] if np.ndim(w) == 2 else 1)
    per_chunk = max(1, min(CHUNK, CHUNK_VALUES // max(1, np.shape(logy)[-1] * len(theta))))  # each row is refined alone

    def chunk(start: int):
        part = slice(start, min(rows, start + per_chunk))
        ly = logy[part] if np.ndim(logy) == 2 else logy
        ww = w[part] if np.ndim(w) == 2 else w
        up = upper[part] if np.ndim(upper) == 2 else upper
        size = part.stop - part.start
        # rtol 1e-8: the intervals agree with 1e-10 to 4 digits, in two thirds of the time
        t, _, ok = refine(law, np.repeat(theta[None], size, 0), x, ly, ww, lower, up, rtol=1e-8)
        return t, ok

    starts = range(0, rows, per_chunk)
    workers = min(len(starts), usable_cores())
    if workers < 2:
        parts = [chunk(start) for start in starts]
    else:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(chunk, starts))
    return np.concatenate([t for t, _ in parts]), np.concatenate([ok for _, ok in parts])


def interval(samples: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    good = samples[ok & np.isfinite(samples)]
    if good.size < 2:
        return math.nan, math.nan
    low, high = np.percentile(good, [2.5, 97.5])
    return float(low), float(high)


def estimates(values: dict[str, float], samples: dict[str, np.ndarray] | None, ok: np.ndarray | None) -> dict[str, Estimate]:
    if samples is None:
        return {k: Estimate(float(v)) for k, v in values.items()}
    return {k: Estimate(float(v), *interval(samples[k], ok)) for k, v in values.items()}


def multinomial(rng: np.random.Generator, resamples: int, n: int) -> np.ndarray:
    """Bootstrap resamples as counts: row i says how often each of n points was drawn."""
    # float32 holds every count exactly, in half the memory of float64 (resamples x points values)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float32)


def resampled(law: Callable, theta: np.ndarray, x, logy: np.ndarray, rng: np.random.Generator, resamples: int,
              lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The law refitted to `resamples` bootstrap resamples of its points, from `theta`: (thetas, converged),
    or (None, None) when no bootstrap was asked for."""
    if not resamples:
        return None, None
    return refit_resamples(law, theta, x, logy, multinomial(rng, resamples, len(logy)), lower, upper)
