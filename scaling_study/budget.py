"""The one converter between budgets: examples, epochs, steps and compute (Eq. 4)."""

from __future__ import annotations

import math


def compute(flops_per_example: float, examples: float, epochs: float) -> float:
    """Training compute C = FLOP(f) * 3 * N * T (Eq. 4), in multiply-accumulates like the paper."""
    return flops_per_example * 3.0 * examples * epochs


def steps_per_epoch(examples: int, batch_size: int, drop_last: bool = False) -> int:
    """Optimizer steps in one pass over `examples`: the last, smaller batch included, or dropped
    (the reference code's training loader drops it)."""
    return examples // batch_size if drop_last else math.ceil(examples / batch_size)


def examples_per_epoch(examples: int, batch_size: int, drop_last: bool = False) -> int:
    """Examples trained on in one pass: all of them, or floor(N / B) * B with drop_last; the N of Eq. 4."""
    return steps_per_epoch(examples, batch_size, True) * batch_size if drop_last else examples


def total_steps(examples: int, batch_size: int, epochs: int, drop_last: bool = False) -> int:
    """Optimizer steps in `epochs` passes over `examples`."""
    return steps_per_epoch(examples, batch_size, drop_last) * epochs


def resolve_examples(value: int | float, dataset_size: int) -> int:
    """A subset size from a grid: a count, or a fraction (0, 1] of the dataset."""
    if isinstance(value, float):
        return max(1, round(value * dataset_size))
    return int(value)


PFLOP = 1e15
