"""How well the laws extrapolate: refitted without the highest-compute points, scored on them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..budget import PFLOP
from .envelope import compute_law, envelope, fit_compute_law
from .parametric import fit_parametric, parametric_law
from .results import HeldOut, Skipped

HELD_OUT_FRACTION = 0.2


def held_out_compute(frame: pd.DataFrame, threshold: float) -> HeldOut | Skipped:
    train = frame[frame["compute"] <= threshold]
    test = envelope(frame)
    test = test[test["compute"] > threshold]
    if test.empty or len(envelope(train)) < 4:
        return Skipped("compute", "too few envelope points on either side of the held-out threshold")
    fit = fit_compute_law(train, bootstrap=0)
    relative = compute_law(test["compute"].to_numpy() / PFLOP, fit) / test["error"].to_numpy() - 1
    return HeldOut("compute", threshold / PFLOP, len(fit.points), len(test), float(np.abs(relative).mean()),
                   float(np.abs(relative).max()), {k: v.value for k, v in fit.params.items()})


def held_out_parametric(frame: pd.DataFrame, threshold: float, gamma: float) -> HeldOut | Skipped:
    train = frame[frame["compute"] <= threshold]
    test = frame[frame["compute"] > threshold]
    fit = fit_parametric(train, 0, np.random.default_rng(0), gamma) if len(test) else Skipped("parametric", "")
    if isinstance(fit, Skipped):
        return Skipped("parametric", "too few points on either side of the held-out threshold")
    predicted = parametric_law(test["params"].to_numpy(), (test["examples"] * test["epochs"]).to_numpy(), fit)
    relative = predicted / test["error"].to_numpy() - 1
    return HeldOut("parametric", threshold / PFLOP, len(train), len(test), float(np.abs(relative).mean()),
                   float(np.abs(relative).max()), {k: v.value for k, v in fit.params.items()})
