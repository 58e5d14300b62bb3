"""The one way numbers are written (formatting) and the one ETA (progress)."""

from __future__ import annotations

import datetime as dt
import math

from scaling_study.analysis import Estimate
from scaling_study.formatting import duration, estimate_interval, hours, interval, pflops, row_interval
from scaling_study.progress import eta_seconds, job_eta_seconds


def test_an_interval_is_written_one_way():
    assert interval(0.123456, 0.1, 0.15) == "0.1235 [0.1, 0.15]"
    assert interval(0.123456, 0.1, 0.15, ".3f") == "0.123 [0.100, 0.150]"
    assert interval(0.5, math.nan, 0.6) == interval(0.5, None, None) == "0.5"  # no interval: no brackets
    assert interval(math.nan, 0.1, 0.2) == interval(None) == "–"  # no value
    assert estimate_interval(Estimate(0.25, 0.2, 0.3), ".3g") == "0.25 [0.2, 0.3]"
    assert row_interval({"value": 2.0, "low": 1.0, "high": 3.0}) == "2 [1, 3]"
    assert row_interval({"params": 1e6, "params_low": 5e5, "params_high": None}, "params") == "1e+06"
    assert row_interval(None) == row_interval({"skipped": "why"}) == "–"


def test_compute_hours_and_durations():
    assert pflops(1.234e15) == "1.23" and pflops(1.2341e18, 4) == "1,234"
    assert hours(0.0123) == "0.012" and hours(123.44) == "123.4"
    assert duration(None) == duration(math.inf) == "–"
    assert duration(30) == "1 min" and duration(3 * 3600 + 5 * 60) == "3 h 05 min" and duration(50 * 3600) == "2 d 2 h"


def test_one_eta_for_a_job_and_a_study():
    assert eta_seconds(100.0, 2, 6) == 300.0  # 2 units in 100 s: 6 more take 300 s
    assert eta_seconds(100.0, 0, 6) is None and eta_seconds(0.0, 2, 6) is None
    now = dt.datetime(2025, 1, 1, 12, 0, 0)
    job = {"state": "running", "epochs_done": 1, "epochs": 4, "started_at": now - dt.timedelta(minutes=10)}
    assert job_eta_seconds(job, now) == 1800.0
    assert job_eta_seconds({**job, "state": "pending"}, now) is None
    assert job_eta_seconds({**job, "epochs_done": 0}, now) is None
