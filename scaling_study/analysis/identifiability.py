"""Which fitted parameters the data do not pin down: a fit can converge while a parameter's
bootstrap 95% interval spans orders of magnitude (E(C)'s b on an iso-FLOP sweep: [6e-9, 0.026]).

A parameter is flagged when its interval spans more than a decade (a ratio high/low above 10, or
an interval reaching zero or changing sign), or when it sits on a bound of the fit in a large
share of the bootstrap resamples. The flags go to `study fit`'s table, fit.json and report.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .results import Allocation, Analysis, Estimate, LawFit, Skipped

DECADES = 1.0  # an interval wider than this many decades is not an estimate
BOUND_SHARE = 0.25  # on a bound in this share of the resamples: the data do not place it
RULE = (f"a parameter is flagged when its bootstrap 95% interval spans more than {DECADES:g} decade (or reaches 0), "
        f"or when it sits on a bound of the fit in more than {BOUND_SHARE:.0%} of the resamples")


def bound_shares(thetas: np.ndarray, ok: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                 names: Sequence[str | None]) -> dict[str, float]:
    """The share of the converged resamples in which each coordinate of theta is on a bound, under the
    reported parameter's name (None: not reported)."""
    thetas = np.asarray(thetas, float)
    lower = np.broadcast_to(lower, thetas.shape)
    upper = np.broadcast_to(upper, thetas.shape)
    span = np.maximum(upper - lower, 1.0)
    at = (np.abs(thetas - lower) <= 1e-6 * span) | (np.abs(thetas - upper) <= 1e-6 * span)
    good = np.asarray(ok, bool)
    if not good.any():
        return {}
    return {name: float(at[good, i].mean()) for i, name in enumerate(names) if name}


def estimate_flag(e: Estimate) -> str | None:
    """Why an estimate is not identified, or None."""
    if math.isnan(e.low) or math.isnan(e.high):
        return None
    low, high = e.low, e.high
    if low == high:  # every resample gave the same value (an allocation exponent of 0, say)
        return None
    if low <= 0 <= high:
        return f"its 95% interval [{low:.3g}, {high:.3g}] reaches 0"
    ratio = high / low if low > 0 else low / high
    if ratio > 10**DECADES:
        return f"its 95% interval [{low:.3g}, {high:.3g}] spans {math.log10(ratio):.1f} decades"
    return None


def law_flags(law: LawFit | Skipped) -> list[dict]:
    """[{param, reason}] for each unidentified parameter of a fitted law."""
    if isinstance(law, Skipped):
        return []
    flags = []
    for name, e in law.params.items():
        reasons = [r for r in [estimate_flag(e)] if r]
        share = law.bound_share.get(name, 0.0)
        if share > BOUND_SHARE:
            reasons.append(f"on a bound in {share:.0%} of the resamples")
        if reasons:
            flags.append({"param": name, "reason": "; ".join(reasons)})
    return flags


def allocation_flags(estimate: Allocation | Skipped) -> list[dict]:
    """[{param, reason}] for the exponents a and b of one allocation estimator."""
    if isinstance(estimate, Skipped):
        return []
    return [{"param": name, "reason": r} for name in ("a", "b") if (r := estimate_flag(getattr(estimate, name)))]


def analysis_flags(analysis: Analysis) -> dict[str, list[dict]]:
    """Every law's and allocation's flags, by the names fit.json uses (only those with a flag)."""
    laws = {"compute": analysis.compute, "bottleneck_params": analysis.bottleneck_params,
            "bottleneck_examples": analysis.bottleneck_examples, "parametric": analysis.parametric}
    flags = {name: law_flags(law) for name, law in laws.items()}
    for estimate in analysis.allocations:
        if isinstance(estimate, Allocation):
            flags[f"allocation_{estimate.estimator}"] = allocation_flags(estimate)
    return {k: v for k, v in flags.items() if v}


def status_text(status: str, flags: list[dict]) -> str:
    """A law's status with its flags: 'converged; not identified: b'."""
    if not flags:
        return status
    return f"{status}; not identified: {', '.join(f['param'] for f in flags)}"
