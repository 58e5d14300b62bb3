"""The one converter between budgets: examples, epochs, steps and compute (Eq. 4)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple


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


def job_examples_per_epoch(job: Mapping) -> int:
    """Eq. 4's N for a job row's points: its examples, less the dropped last partial batch under drop_last
    (the job's spec says), so that the recorded compute is that of the steps actually taken."""
    try:
        train = json.loads(job.get("spec") or "{}").get("train") or {}
    except (ValueError, AttributeError):
        train = {}
    if not train.get("drop_last"):
        return job["examples"]
    return examples_per_epoch(job["examples"], int(train["batch_size"]), True)


def job_compute(job: Mapping, epochs: int) -> float:
    """Eq. 4 of a job row's trajectory after `epochs` epochs."""
    return compute(job["flops_per_example"], job_examples_per_epoch(job), epochs)


class StudyCompute(NamedTuple):
    """Eq. 4 summed over a study's job rows."""

    spent: float  # the epochs trained
    planned: float  # every trajectory in full
    to_go: float  # planned minus spent, over the pending and running jobs
    saved: float  # planned minus spent, over the pruned jobs


def study_compute(jobs: Iterable[Mapping]) -> StudyCompute:
    """Compute spent and planned (and what is left to run, and what pruning saved) of a study's job rows."""
    spent = planned = to_go = saved = 0.0
    for job in jobs:
        full = job_compute(job, job["epochs"])
        done = job_compute(job, min(job["epochs_done"], job["epochs"]))
        spent += done
        planned += full
        if job["state"] in ("pending", "running"):
            to_go += full - done
        elif job["state"] == "pruned":
            saved += full - done
    return StudyCompute(spent, planned, to_go, saved)
