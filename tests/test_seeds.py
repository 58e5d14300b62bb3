"""Seeds: cells averaged per (model, N, T), the seed spread estimated, the bootstrap over
cells; and a real tiny study with seeds = [0, 1, 2] planned, run and fitted through the CLI."""

from __future__ import annotations

import json
import math

import pytest

from scaling_study import analysis as fits
from scaling_study import synthetic

from tiny_datasets import write_idx


def test_seeds_become_cells_and_the_spread_is_recovered():
    law = synthetic.ParametricLaw()
    frame = synthetic.parametric_study(law=law, models=6, examples=8, seeds=3, noise=0.03, outliers=0, seed=3)
    cells, spread = fits.average_seeds(frame)
    assert len(cells) == len(frame) // 3 and (cells["seeds"] == 3).all()
    assert spread.cells == 240 and spread.cells_with_seeds == 240
    assert spread.log_std == pytest.approx(0.03, rel=0.1)  # the generator's seed noise
    assert cells.groupby(["model", "examples"])["job_id"].nunique().eq(1).all()  # one trajectory per (model, N)
    one = frame[(frame["model"] == cells["model"][0]) & (frame["examples"] == cells["examples"][0])
                & (frame["epochs"] == cells["epochs"][0])]
    assert cells["error"][0] == pytest.approx(one["error"].mean(), rel=1e-12)

    analysis = fits.analyse(frame, {"metric": "synthetic/linear"}, bootstrap=100)
    assert len(analysis.frame) == 240 and analysis.seeds.log_std == spread.log_std
    fit = analysis.parametric
    assert fit.value("alpha") == pytest.approx(law.alpha, abs=0.03)
    assert fit.value("beta") == pytest.approx(law.beta, abs=0.03)
    assert len(fit.points) == 240  # the bootstrap resampled the 240 cells, not the 720 points
    assert fit.params["alpha"].low < law.alpha < fit.params["alpha"].high


def test_one_seed_per_cell_leaves_the_points_as_they_are():
    frame = synthetic.parametric_study(models=4, examples=4, seed=4)
    cells, spread = fits.average_seeds(frame)
    assert cells["error"].tolist() == frame["error"].tolist() and cells["job_id"].tolist() == frame["job_id"].tolist()
    assert math.isnan(spread.log_std) and spread.cells_with_seeds == 0


GRID = """
[study]
name = "seeds"

[data.pretrain]
dataset = "fashion-mnist"
path = "{data}"

[[data.downstream]]
dataset = "fashion-mnist"
path = "{data}"
protocol = "linear"

[grid]
models = ["B-1/Wi-8", "B-1/Wi-16", "B-1/Wi-32"]
examples = [100, 200]
epochs = [1, 2, 3]
seeds = [0, 1, 2]

[train]
lr = 3e-3
batch_size = 50
precision = "fp32"

[evaluation]
probe = "fast"
"""


def test_a_study_with_three_seeds_runs_end_to_end(cli, tmp_path):
    data = tmp_path / "fashion"
    write_idx(data, n_train=200, n_test=100, side=28, signal=True)
    grid = tmp_path / "seeds.toml"
    grid.write_text(GRID.format(data=data))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    planned = cli("plan", grid, "--db", url)
    assert planned.exit_code == 0, planned.output
    ran = cli("run", "--db", url, "--device", "cpu", "--runs-dir", tmp_path / "runs")
    assert ran.exit_code == 0, ran.output
    out = tmp_path / "reports"
    fitted = cli("fit", "--db", url, "--bootstrap", "20", "--out", out)
    assert fitted.exit_code == 0, fitted.output
    numbers = json.loads((out / "fit.json").read_text())
    assert numbers["runs"] == 6 and numbers["points"] == 18  # 3 models x 2 N trajectories, 3 T each
    seeds = numbers["seeds"]
    assert seeds["points"] == 54 and seeds["cells"] == 18 and seeds["cells_with_seeds"] == 18
    assert seeds["seeds_per_cell"] == 3 and seeds["log_std"] > 0
    assert "### Seeds" in (out / "report.md").read_text()
    assert (out / "fig1_error_vs_compute.png").stat().st_size > 10_000
