"""Render every `study fit` figure at 4, 15 and 50 models (synthetic grids and an iso-FLOP sweep) into
a folder, to look at them: `python scripts/figures_at_sizes.py [OUT]` (default /tmp/figures_at_sizes)."""

from __future__ import annotations

import sys
from pathlib import Path

from scaling_study import analysis as fits
from scaling_study import synthetic
from scaling_study.plots import write_figures


def studies():
    """(name, frame): grids of 4, 15 and 50 models, and an iso-FLOP sweep of 6 budgets."""
    for models in (4, 15, 50):
        yield f"grid{models}", synthetic.parametric_study(models=models, examples=8, epochs=(50, 200, 800), seed=0)
    yield "isoflop", synthetic.isoflop_study(seed=0)
    yield "isoflop50", synthetic.isoflop_study(budgets=9, sizes=(7, 9), pflops_range=(1e-4, 1e4), ladder=10,
                                               near_equal=0, seed=1)


def main(out: Path) -> None:
    for name, frame in studies():
        analysis = fits.analyse(*fits.select(frame), bootstrap=50)
        paths = write_figures(analysis, out / name)
        print(f"{name}: {frame['model'].nunique()} models -> {', '.join(str(p) for p in paths if p.suffix == '.png')}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/figures_at_sizes"))
