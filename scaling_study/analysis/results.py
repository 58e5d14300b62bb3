"""What the analysis returns: fitted numbers with intervals, laws, allocations, and what was skipped."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

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
    samples: dict | None = field(default=None, repr=False)  # bootstrap draws per parameter, and "ok" (converged)
    bound_share: dict = field(default_factory=dict)  # per parameter: share of the resamples on a bound

    def value(self, name: str) -> float:
        """A parameter's point estimate."""
        return self.params[name].value

    def draws(self) -> dict:
        """The converged bootstrap refits' parameters, {name: array} (empty arrays without a bootstrap)."""
        if self.samples is None:
            return {}
        ok = self.samples["ok"]
        return {k: v[ok] for k, v in self.samples.items() if k != "ok"}


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
    mode: str = ""  # iso-FLOP: "budgets" (an iso-FLOP sweep) or "levels" (interpolated compute levels)
    resampled: str = ""  # what the bootstrap resampled
    samples: dict | None = field(default=None, repr=False)  # bootstrap draws of a, b, p0, n0 and "ok"


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
    data_constrained: LawFit | Skipped | None = None  # E(P, D') with repeated epochs discounted
    form: FormChoice | None = None  # which of E(P, D) and E(P, D') the held-out score chose
    seeds: SeedSpread | None = None  # how the seeds were averaged into cells
    backtest: list[BackTest] = field(default_factory=list)  # rolling-origin extrapolation per law
    agreement: dict = field(default_factory=dict)  # do the allocation estimators agree, and the checks that say why not
    sweep: dict = field(default_factory=dict)  # sweeps.describe: iso-FLOP mode, budgets, sizes merged
    calibration: dict = field(default_factory=dict)  # per law: the back-test's interval coverage and widening


@dataclass(frozen=True)
class FormChoice:
    """E(P, D = N T) against E(P, D'): each form's held-out score (k-fold over trajectories), the one chosen."""

    chosen: str  # "parametric" or "data_constrained"
    scores: dict[str, float]  # form -> RMS log residual of held-out trajectories
    folds: int
    method: str


@dataclass(frozen=True)
class SeedSpread:
    """Seeds averaged per (model, N, T) cell: how many, and the pooled seed-to-seed spread of log values."""

    points: int  # evaluation points before averaging
    cells: int
    seeds_per_cell: float  # mean
    cells_with_seeds: int  # cells with 2 or more seeds
    log_std: float  # pooled within-cell standard deviation of log value (NaN with one seed per cell)


@dataclass(frozen=True)
class BackTest:
    """One law fitted below a compute level and scored above it."""

    law: str
    level: int
    threshold_pflops: float
    train_points: int
    test_points: int
    mean_abs_rel_error: float  # on the envelope points above the threshold
    max_abs_rel_error: float
