"""Compute saved by evaluating every epoch count of a constant-LR grid along one trajectory.

    python benchmarks/shared_trajectories.py [grids/cifar100.toml ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write  # noqa: E402

from scaling_study.grid import load_grid  # noqa: E402
from scaling_study.plan import expand, summarize  # noqa: E402


def main(paths: list[str]) -> None:
    figures = {}
    for path in paths:
        grid = load_grid(path)
        summary = summarize(expand(grid))
        ratio = summary.compute / summary.naive_compute
        epochs = list(grid.grid.epochs)
        print(f"{path}: epochs {epochs}: run {summary.compute:.4g} of naive {summary.naive_compute:.4g} "
              f"multiply-accumulates = {ratio:.4f} ({max(epochs)} of {sum(epochs)} epochs); saved {1 - ratio:.1%}")
        figures[path] = {"compute": summary.compute, "naive_compute": summary.naive_compute, "ratio": ratio}
    print(f"wrote {write('shared_trajectories', figures)}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["grids/cifar100.toml"])
