"""How well each allocation estimator recovers P*(C) ~ C^a on iso-FLOP sweeps of known truth.

    python benchmarks/isoflop_recovery.py [--seeds 8]

Each sweep is `synthetic.isoflop_study(seed=s)`: 6 budgets from 1e-3 to 1e2 PFLOPs, 5-9 sizes
each from a shared ladder around the law's optimum, 0.5% noise, compute jittered ~1%, 4 sizes
digitised 0.01-0.1% off; true a = 0.35. Per seed it prints a by the budget parabolas (what
`study fit` uses on such a sweep), by the interpolated levels (what it used before, and still
uses on grids), by the best point per budget and by the plain envelope, with and without
merging near-equal sizes, and a last variant where every run has its own digitised size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write  # noqa: E402

from scaling_study import synthetic  # noqa: E402
from scaling_study.analysis import allocation, sweeps  # noqa: E402

TRUTH = synthetic.ParametricLaw().a


def exponents(frame, merge: float) -> dict[str, float | None]:
    """a by each estimator (None when it cannot fit)."""
    merged, _ = sweeps.merge_sizes(frame, merge)
    shape = sweeps.sweep_shape(merged)
    rng = np.random.default_rng(0)
    fits = {
        "budget_parabolas": allocation.allocation_isoflop(merged, 1, 0, rng, shape),
        "interpolated_levels": allocation.allocation_isoflop(merged, 1, 0, rng),
        "envelope_best_per_budget": allocation.allocation_envelope(merged.assign(budget=shape.labels), 1, 0, rng),
        "envelope_plain": allocation.allocation_envelope(merged, 1, 0, rng),
    }
    return {name: (round(fit.a.value, 4) if hasattr(fit, "a") else None) for name, fit in fits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    rows = []
    for seed in range(args.seeds):
        for variant, near in (("4 digitised sizes", 4), ("every run its own size", 40)):
            frame = synthetic.isoflop_study(seed=seed, near_equal=near)
            for merge in (0.0, 0.01):
                rows.append({"seed": seed, "variant": variant, "merge_tolerance": merge, **exponents(frame, merge)})
    names = ["budget_parabolas", "interpolated_levels", "envelope_best_per_budget", "envelope_plain"]
    print(f"true a = {TRUTH}; {args.seeds} seeds; a per estimator (none: could not fit)")
    summary = {}
    for variant in ("4 digitised sizes", "every run its own size"):
        for merge in (0.0, 0.01):
            chosen = [r for r in rows if r["variant"] == variant and r["merge_tolerance"] == merge]
            line = {}
            for name in names:
                values = [r[name] for r in chosen if r[name] is not None]
                errors = [abs(v - TRUTH) for v in values]
                line[name] = {"fitted": len(values), "median_a": statistics.median(values) if values else None,
                              "max_abs_error": max(errors) if errors else None}
            summary[f"{variant}, merge {merge:g}"] = line
            print(f"{variant}, --merge-sizes {merge:g}:")
            for name, s in line.items():
                text = (f"median a {s['median_a']:.3f}, max |a - {TRUTH}| {s['max_abs_error']:.3f}"
                        if s["fitted"] else "never fitted")
                print(f"  {name:26s} fitted {s['fitted']}/{len(chosen)}: {text}")
    print(f"wrote {write('isoflop_recovery', {'truth_a': TRUTH, 'seeds': args.seeds, 'summary': summary, 'runs': rows})}")


if __name__ == "__main__":
    main()
