"""How numbers are written for people, the same in the terminal, the report, the page and the figures."""

from __future__ import annotations

import math

from .budget import PFLOP


def _known(number: float | None) -> bool:
    return number is not None and not (isinstance(number, float) and math.isnan(number))


def interval(value: float | None, low: float | None = None, high: float | None = None, spec: str = ".4g") -> str:
    """`value [low, high]`, each as `spec`; no brackets when the interval is unknown (None or NaN),
    '–' when the value is."""
    if not _known(value):
        return "–"
    text = f"{value:{spec}}"
    return f"{text} [{low:{spec}}, {high:{spec}}]" if _known(low) and _known(high) else text


def estimate_interval(e: object, spec: str = ".4g") -> str:
    """interval() of a fitted estimate (anything with value, low and high, e.g. analysis.Estimate)."""
    return interval(e.value, e.low, e.high, spec)


def row_interval(row: dict | None, key: str = "value", spec: str = ".4g") -> str:
    """interval() of an estimate as JSON holds it: row[key] within row['low'], row['high'], or for another
    key within row[f'{key}_low'], row[f'{key}_high']; '–' when there is none."""
    if not isinstance(row, dict):
        return "–"
    prefix = "" if key == "value" else f"{key}_"
    return interval(row.get(key), row.get(f"{prefix}low"), row.get(f"{prefix}high"), spec)


def pflops(flops: float, digits: int = 3) -> str:
    """Compute in FLOPs written as PFLOPs, e.g. 1,234 or 0.0123."""
    return f"{flops / PFLOP:,.{digits}g}"


def hours(value: float) -> str:
    """Hours, with two significant digits below 10: a CPU demo's hours are not all 0.0."""
    return f"{value:,.1f}" if value >= 10 else f"{value:.2g}"


def duration(seconds: float | None) -> str:
    """A time to go in minutes, hours and days, e.g. 3 h 05 min; '–' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    minutes, whole_hours = round(seconds / 60), seconds / 3600
    if whole_hours >= 24:
        return f"{int(whole_hours // 24)} d {round(whole_hours % 24)} h"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(1, minutes)} min"
