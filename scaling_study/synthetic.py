"""Evaluation points generated from a known law, to check that a fit recovers its exponents.

Before trusting `study fit` on a sweep of a new shape, fit points drawn from a law whose
exponents you chose, with the noise, outliers and grid you expect:

    from scaling_study import analysis, synthetic
    truth = synthetic.ParametricLaw(alpha=0.6, beta=0.4)
    fit = analysis.analyse(synthetic.parametric_study(law=truth, models=6, examples=8), bootstrap=200)
    fit.parametric.params["alpha"]  # value 0.592, 95% interval 0.585-0.600, for a truth of 0.6

Laws: `ParametricLaw` E(P, D), `DataConstrainedLaw` (repeated data), `ComputeLaw` E(C), and
`CHINCHILLA`. Studies: `parametric_study` (a models x N x T grid), `loss_study` (language-model
losses), `compute_study` (points on and above E(C)), `isoflop_study` (an iso-FLOP sweep). Each
returns a frame with the columns of `db.evaluations_frame`: fit it directly, or write it as a CSV
for `study import` and fit it through the CLI. `parametric_study` and `compute_study` clip errors to
[1e-4, 1] like a real error rate: choose a law whose errors stay below 1 on the grid, or the clipped
points bend the fit. The tests and benchmarks use the same frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import budget

EPOCHS = (50, 100, 200, 400, 800)


@dataclass(frozen=True)
class ParametricLaw:
    """E(P, D) = E_inf + A / P^alpha + B / D^beta with D = N * T (Hoffmann et al. 2022, approach 3)."""

    e_inf: float = 0.2
    A: float = 400.0
    alpha: float = 0.65
    B: float = 15.0
    beta: float = 0.35

    @property
    def a(self) -> float:
        """Exponent of P*(C) when FLOP(f) is proportional to P."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of N*(C) (and D*(C)) when FLOP(f) is proportional to P."""
        return self.alpha / (self.alpha + self.beta)

    def error(self, params, examples, epochs):  # noqa: ANN001, ANN201 - numpy in, numpy out
        """The law's error at P parameters, N examples and T epochs."""
        data = np.asarray(examples, float) * np.asarray(epochs, float)
        return self.e_inf + self.A / np.asarray(params, float) ** self.alpha + self.B / data**self.beta


@dataclass(frozen=True)
class DataConstrainedLaw:
    """Muennighoff et al. (2023): E = E_inf + A / P^alpha + B / D'^beta with effective data
    D' = N (1 + R* (1 - exp(-(T - 1) / R*))): T epochs of N examples are worth less than N T new ones."""

    e_inf: float = 0.2
    A: float = 400.0
    alpha: float = 0.65
    B: float = 15.0
    beta: float = 0.35
    r_star: float = 15.0

    def effective_data(self, examples, epochs):  # noqa: ANN001, ANN201 - numpy in, numpy out
        """D': what T epochs of N examples are worth in new examples."""
        repeats = np.asarray(epochs, float) - 1.0
        return np.asarray(examples, float) * (1.0 - self.r_star * np.expm1(-repeats / self.r_star))

    def error(self, params, examples, epochs):  # noqa: ANN001, ANN201 - numpy in, numpy out
        """The law's value at P parameters, N examples and T epochs."""
        return (self.e_inf + self.A / np.asarray(params, float) ** self.alpha
                + self.B / self.effective_data(examples, epochs) ** self.beta)


# Epoch AI's refit of Chinchilla (Besiroglu et al. 2024): losses of about 2 to 4.6 nats over the grid below
CHINCHILLA = ParametricLaw(e_inf=1.82, A=482.0, alpha=0.348, B=2085.0, beta=0.366)


@dataclass(frozen=True)
class ComputeLaw:
    """E(C) = a (b + C)^-alpha + E_inf (Eq. 5), C in PFLOPs."""

    a: float = 0.35
    b: float = 0.02
    alpha: float = 0.25
    e_inf: float = 0.15

    def error(self, pflops):  # noqa: ANN001, ANN201 - numpy in, numpy out
        """The law's error at `pflops` of compute."""
        return self.a * (self.b + np.asarray(pflops, float)) ** -self.alpha + self.e_inf


def _frame(rows: dict[str, np.ndarray], study: str, metric: str, metric_kind: str = "error") -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame.insert(0, "study", study)
    frame["metric"] = metric
    frame["compute"] = budget.compute(frame["flops_per_example"], frame["examples"], frame["epochs"])
    frame["state"] = "done"
    frame["metric_kind"] = metric_kind
    order = ["study", "job_id", "model", "kind", "params", "flops_per_example", "examples", "epochs",
             "seed", "metric", "error", "compute", "state", "metric_kind"]
    return frame[order]


def _add_outliers(values: np.ndarray, outliers: int, rng: np.random.Generator) -> None:
    """Failed runs, in place: `outliers` values made 1.3-1.6x worse than the law (far above it)."""
    bad = rng.choice(values.size, size=min(outliers, values.size), replace=False)
    values[bad] *= rng.uniform(1.3, 1.6, bad.size)


def _grid(models: int, examples: int, epochs: tuple[int, ...], seeds: int,
          params_range: tuple[float, float], examples_range: tuple[float, float],
          flops_per_param: int = 1) -> dict[str, np.ndarray]:
    params = np.unique(np.round(np.geomspace(*params_range, models)).astype(np.int64))
    sizes = np.unique(np.round(np.geomspace(*examples_range, examples)).astype(np.int64))
    p, n, s, t = (a.ravel() for a in np.meshgrid(params, sizes, np.arange(seeds), np.asarray(epochs), indexing="ij"))
    names = {int(v): f"B-{i + 1}/P-{v / 1e6:.3g}M" for i, v in enumerate(params)}
    trajectory = pd.factorize(pd.Series(list(zip(p, n, s))))[0] + 1
    return {
        "job_id": trajectory.astype(np.int64),
        "model": np.array([names[int(v)] for v in p]),
        "kind": np.full(p.size, "bottleneck"),
        "params": p,
        "flops_per_example": p * flops_per_param,  # FLOP(f) = P: one multiply-accumulate per weight
        "examples": n,
        "epochs": t.astype(np.int64),
        "seed": s.astype(np.int64),
    }


def parametric_study(
    law: ParametricLaw = ParametricLaw(),
    models: int = 10,
    examples: int = 13,
    epochs: tuple[int, ...] = EPOCHS,
    seeds: int = 1,
    noise: float = 0.01,
    outliers: int = 3,
    params_range: tuple[float, float] = (1e5, 1e8),
    examples_range: tuple[float, float] = (3e2, 3e6),
    seed: int = 0,
    metric: str = "synthetic/linear",
) -> pd.DataFrame:
    """A full (model x N x seed x T) grid with errors from E(P, D), log-normal noise and a few outliers."""
    rng = np.random.default_rng(seed)
    rows = _grid(models, examples, epochs, seeds, params_range, examples_range)
    error = law.error(rows["params"], rows["examples"], rows["epochs"]) * np.exp(rng.normal(0, noise, rows["params"].size))
    _add_outliers(error, outliers, rng)
    rows["error"] = np.clip(error, 1e-4, 1.0)
    return _frame(rows, "synthetic", metric)


def loss_study(
    law: ParametricLaw | DataConstrainedLaw = CHINCHILLA,
    models: int = 8,
    examples: int = 8,
    epochs: tuple[int, ...] = (1,),
    seeds: int = 1,
    noise: float = 0.005,
    outliers: int = 0,
    params_range: tuple[float, float] = (1e7, 1e10),
    examples_range: tuple[float, float] = (1e9, 1e12),
    seed: int = 0,
    metric: str = "synthetic/loss",
) -> pd.DataFrame:
    """A language-model-like grid: losses (nats, metric kind "loss") from a law, C = 6 P D (FLOP(f) = 2 P)."""
    rng = np.random.default_rng(seed)
    rows = _grid(models, examples, epochs, seeds, params_range, examples_range, flops_per_param=2)
    loss = law.error(rows["params"], rows["examples"], rows["epochs"]) * np.exp(rng.normal(0, noise, rows["params"].size))
    _add_outliers(loss, outliers, rng)
    rows["error"] = loss
    rows["kind"] = np.full(loss.size, "transformer")
    return _frame(rows, "synthetic", metric, "loss")


def compute_study(
    law: ComputeLaw = ComputeLaw(),
    models: int = 8,
    examples: int = 8,
    epochs: tuple[int, ...] = EPOCHS,
    noise: float = 0.003,
    outliers: int = 3,
    seed: int = 0,
    metric: str = "synthetic/linear",
) -> pd.DataFrame:
    """Points on and above a known E(C) law: about a third sit on it, the rest above it (off-optimal runs)."""
    rng = np.random.default_rng(seed)
    rows = _grid(models, examples, epochs, 1, (1e5, 1e8), (1e3, 1e6))
    pflops = budget.compute(rows["flops_per_example"], rows["examples"], rows["epochs"]) / budget.PFLOP
    excess = np.where(rng.random(pflops.size) < 0.35, 0.0, rng.uniform(0.02, 0.4, pflops.size))
    error = law.error(pflops) * np.exp(excess + rng.normal(0, noise, pflops.size))
    _add_outliers(error, outliers, rng)
    rows["error"] = np.clip(error, 1e-4, 1.0)
    return _frame(rows, "synthetic", metric)


def isoflop_study(
    law: ParametricLaw = ParametricLaw(),
    budgets: int = 6,
    sizes: tuple[int, int] = (5, 9),
    pflops_range: tuple[float, float] = (1e-3, 1e2),
    ladder: int = 8,
    noise: float = 0.005,
    compute_jitter: float = 0.01,
    near_equal: int = 4,
    seed: int = 0,
    metric: str = "synthetic/linear",
) -> pd.DataFrame:
    """An iso-FLOP sweep: at each of `budgets` compute budgets, 5-9 model sizes of a shared ladder
    (`ladder` per decade) around the law's optimum P*(C), each trained once for N = C / (3 P) examples
    (T = 1, FLOP(f) = P), so P*(C) ~ C^law.a exactly. Errors get log-normal noise; each run's N is
    jittered (compute within ~1%), and `near_equal` runs get a model size 0.01-0.1% off its ladder
    rung (a digitised count), under a name of its own."""
    rng = np.random.default_rng(seed)
    pflops = np.geomspace(*pflops_range, budgets)
    macs = pflops * budget.PFLOP
    # the law's optimum on C = 3 P D: P* = (alpha A / (beta B))^(1/(alpha+beta)) (C/3)^a
    scale = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
    optimum = scale * (macs / 3.0) ** law.a
    rows = []
    for c, best in zip(macs, optimum):
        count = int(rng.integers(sizes[0], sizes[1] + 1))
        rung = np.round(np.log10(best) * ladder)
        # consecutive rungs around the optimum's; an even count leans one rung left or right at random
        offsets = np.arange(count) - (count - 1) // 2 - (rng.integers(0, 2) if count % 2 == 0 else 0)
        for r in rung + offsets:
            rows.append((c, int(round(10 ** (r / ladder)))))
    c, p = (np.array(v) for v in zip(*rows))
    names = {int(v): f"P-{v / 1e6:.4g}M" for v in np.unique(p)}
    model = np.array([names[int(v)] for v in p], dtype=object)
    odd = rng.choice(p.size, size=min(near_equal, p.size), replace=False)
    for i in odd:  # a digitised count: the same model, reported 0.01-0.1% off
        p[i] = int(round(p[i] * (1 + rng.uniform(1e-4, 1e-3))))
        model[i] = f"P-{p[i] / 1e6:.7g}M"
    n = np.maximum(1, np.round(c / (3.0 * p) * np.exp(rng.normal(0, compute_jitter, p.size)))).astype(np.int64)
    epochs = np.ones(p.size, np.int64)
    error = law.error(p, n, epochs) * np.exp(rng.normal(0, noise, p.size))
    rows = {
        "job_id": np.arange(1, p.size + 1, dtype=np.int64), "model": model.astype(str),
        "kind": np.full(p.size, "bottleneck"), "params": p.astype(np.int64), "flops_per_example": p.astype(np.int64),
        "examples": n, "epochs": epochs, "seed": np.zeros(p.size, np.int64), "error": np.clip(error, 1e-4, None),
    }
    return _frame(rows, "isoflop", metric)
