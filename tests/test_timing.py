"""EpochClock: an epoch's seconds by part, nested parts counted once, and the rest as `other`."""

from __future__ import annotations

import time

import pytest

from scaling_study.timing import PARTS, EpochClock, describe


def test_nested_parts_count_once_and_the_parts_add_up_to_the_wall_time():
    laps = []
    clock = EpochClock(on_lap=lambda epoch, times: laps.append((epoch, times)))
    with clock.part("train"):
        time.sleep(0.02)
        with clock.part("curves"):
            time.sleep(0.03)
    with clock.part("eval"):
        time.sleep(0.01)
    time.sleep(0.02)  # claimed by no part
    first = clock.lap(1)
    second = clock.lap(2)
    assert [epoch for epoch, _ in laps] == [1, 2] and laps[0][1] is first
    assert first["curves"] >= 0.03 and 0.02 <= first["train"] < 0.03 + 0.02  # the curves' 0.03 s are not the train's
    assert first["other"] >= 0.02
    assert sum(first[p] for p in PARTS) == pytest.approx(first["wall"])
    assert second["train"] == second["eval"] == 0 and second["wall"] < first["wall"]  # a lap starts the next epoch
    assert clock.epochs == 2 and clock.total["wall"] == pytest.approx(first["wall"] + second["wall"])
    text = describe(first)
    assert text.startswith(f"{first['wall']:.2f} s = train ") and "curves" in text and "setup" not in text
