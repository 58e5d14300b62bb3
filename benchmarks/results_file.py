"""Where every benchmark writes its measured figures: benchmarks/results/NAME.json, with provenance."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    """Device, versions and date of a measurement."""
    import numpy
    import torch

    from scaling_study.bench import cpu_name

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({cpu_name()})"
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def write(name: str, figures: dict) -> Path:
    """Save `figures` with the environment they were measured in; returns the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, **environment(), **figures}, indent=2) + "\n")
    return path
