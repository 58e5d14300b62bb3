"""Throughput calibrations from `study bench`, so that `study plan` can estimate hours."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .schema import calibrations, now


def add_calibration(engine: Engine, **values) -> None:
    """Record one `study bench` measurement."""
    with engine.begin() as conn:
        conn.execute(calibrations.insert().values(created_at=now(), **values))


def latest_calibrations(engine: Engine, resolution: int, channels: int, batch_size: int,
                        device: str | None = None) -> tuple[dict[str, dict], list[str]]:
    """The newest calibration per model for this input shape and batch size on one device:
    ({model: row}, every device measured at that shape). Figures from two machines never mix in
    one estimate: the device is the one whose name contains `device` (case-insensitive) and, of
    those, or of all when `device` is None, the one measured most recently."""
    query = (
        sa.select(calibrations)
        .where(calibrations.c.resolution == resolution, calibrations.c.channels == channels,
               calibrations.c.batch_size == batch_size)
        .order_by(calibrations.c.id)
    )
    with engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(query).mappings()]
    devices = list(dict.fromkeys(row["device"] for row in reversed(rows)))  # newest first
    chosen = next((name for name in devices if device is None or device.lower() in name.lower()), None)
    return {row["model"]: row for row in rows if row["device"] == chosen}, devices
