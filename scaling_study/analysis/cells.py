"""Seeds: the runs of one configuration (model, N, T) differ only by chance, so they are one cell.

Every law is fitted to the cells (the mean value over seeds), and the bootstrap resamples cells,
not points: three seeds of one run are not three independent configurations. The seed-to-seed
spread is the pooled within-cell standard deviation of log values.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .results import SeedSpread

CELL = ["model", "examples", "epochs"]


def average_seeds(frame: pd.DataFrame) -> tuple[pd.DataFrame, SeedSpread]:
    """One row per (model, N, T): the mean value over seeds (same columns, in first-seen order), with
    `seeds` (how many) and `log_std` (their spread, NaN for one seed) added; and the pooled spread.

    A cell's job_id is its trajectory's smallest job id across seeds, so one trajectory per (model, N).
    """
    logs = np.log(frame["error"].where(frame["error"] > 0))
    grouped = frame.assign(_log=logs).groupby(CELL, sort=False)
    seeds = grouped["error"].transform("size").to_numpy()
    if (seeds == 1).all():
        cells = frame.assign(seeds=1, log_std=math.nan)
    else:
        first = grouped.head(1).index
        trajectory = frame.groupby(["model", "examples"], sort=False)["job_id"].transform("min")
        cells = frame.assign(job_id=trajectory).loc[first].copy()
        cells["error"] = grouped["error"].mean().to_numpy()
        cells["seeds"] = grouped["error"].size().to_numpy()
        cells["log_std"] = grouped["_log"].std(ddof=1).to_numpy()
        cells = cells.reset_index(drop=True)
    free = (cells["seeds"] - 1).to_numpy(float)
    pooled = (float(np.sqrt(np.nansum(free * cells["log_std"].to_numpy() ** 2) / free.sum()))
              if free.sum() > 0 else math.nan)
    spread = SeedSpread(points=len(frame), cells=len(cells), seeds_per_cell=float(cells["seeds"].mean()),
                        cells_with_seeds=int((cells["seeds"] > 1).sum()), log_std=pooled)
    return cells, spread
