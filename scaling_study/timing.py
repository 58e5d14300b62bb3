"""Where a job's wall time goes, epoch by epoch: training steps, evaluation, checkpoint, database, curves.

train() and the runner time their parts on one `EpochClock`; at each epoch's end `lap()` gives
that epoch's seconds by part, with `other` for whatever no part claimed (callbacks' own work,
the log). Parts nest: time spent in an inner part (curves written during a training step, say)
counts for the inner part only, so the parts add up to the epoch's wall time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

# In the order they are reported. setup (reading the data, building the loader and model,
# loading a checkpoint) falls in a job's first epoch; adaptive is the refit of an adaptive study.
PARTS = ("setup", "train", "eval", "checkpoint", "database", "curves", "adaptive", "other")


class EpochClock:
    """Seconds by part of the epoch in progress, and of every epoch so far (`total`)."""

    def __init__(self, on_lap: Callable[[int, dict[str, float]], None] | None = None):
        self.on_lap = on_lap
        self.total = dict.fromkeys(PARTS, 0.0)
        self.total["wall"] = 0.0
        self.epochs = 0
        self._parts = dict.fromkeys(PARTS, 0.0)
        self._nested: list[float] = []  # per open part, the seconds its inner parts took
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Time the block as `name` (one of PARTS), less what inner parts took."""
        start = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self._parts[name] += elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed

    def lap(self, epoch: int) -> dict[str, float]:
        """End epoch `epoch`: its seconds by part, `other` and `wall` included; the next epoch starts now."""
        now = time.perf_counter()
        times = dict(self._parts)
        times["wall"] = now - self._started
        times["other"] = max(0.0, times["wall"] - sum(times[p] for p in PARTS if p != "other"))
        for key, value in times.items():
            self.total[key] += value
        self.epochs += 1
        self._parts = dict.fromkeys(PARTS, 0.0)
        self._started = now
        if self.on_lap is not None:
            self.on_lap(epoch, times)
        return times


ALWAYS_SHOWN = ("train", "eval", "checkpoint", "database", "curves")


def describe(times: dict[str, float]) -> str:
    """'12.30 s = train 9.10 (74%) + eval 2.50 (20%) + ...': the main parts always, the others when they took any time."""
    wall = times.get("wall", 0.0)
    shown = [f"{p} {times[p]:.2f} ({times[p] / wall:.0%})" if wall > 0 else f"{p} {times[p]:.2f}"
             for p in PARTS if times.get(p, 0.0) >= 0.005 or p in ALWAYS_SHOWN]
    return f"{wall:.2f} s = " + " + ".join(shown)
