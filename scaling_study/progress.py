"""When work should end at the rate so far: one job's epochs (`study status`) or a study's compute (the page)."""

from __future__ import annotations

import datetime as dt


def eta_seconds(elapsed_s: float, done: float, left: float) -> float | None:
    """Seconds until `left` more work ends, at the rate of `done` in `elapsed_s`; None before any of either."""
    if done <= 0 or elapsed_s <= 0:
        return None
    return elapsed_s / done * left


def job_eta_seconds(job: dict, now: dt.datetime) -> float | None:
    """A running job's remaining epochs at its rate since it started; None when it is not running or has no epoch yet."""
    if job["state"] != "running" or not job["epochs_done"] or not job["started_at"]:
        return None
    return eta_seconds((now - job["started_at"]).total_seconds(), job["epochs_done"], job["epochs"] - job["epochs_done"])
