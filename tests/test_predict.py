"""`study predict`: held-out runs of a demo-like study fall inside the 95% prediction
interval; allocations at a compute come with intervals; bad input is one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scaling_study import analysis as fits
from scaling_study import synthetic
from scaling_study.analysis.predict import predict_compute, predict_run

COLUMNS = ["model", "params", "flops_per_example", "examples", "epochs", "error", "metric", "seed"]


@pytest.fixture(scope="module")
def demo_like():
    """The demo's shape: 4 models x 6 subset sizes x T in {2, 4, 8, 16}, 2% run-to-run noise."""
    law = synthetic.ParametricLaw(e_inf=0.08, A=20.0, alpha=0.4, B=3.0, beta=0.3)
    frame = synthetic.parametric_study(law=law, models=4, examples=6, epochs=(2, 4, 8, 16), noise=0.02, outliers=0,
                                       params_range=(2e4, 6e5), examples_range=(1875, 60000), seed=7)
    held = frame["job_id"].isin([3, 10, 17, 22])  # four whole trajectories, one per model
    return frame, held


def test_held_out_runs_fall_inside_the_prediction_interval(demo_like):
    frame, held = demo_like
    analysis = fits.analyse(frame[~held].reset_index(drop=True), {"metric": "synthetic/linear"}, bootstrap=200)
    inside = []
    for row in frame[held].itertuples():
        run = predict_run(analysis, row.model, row.examples, row.epochs)["prediction"]
        assert run["low"] < run["value"] < run["high"]
        inside.append(run["low"] <= row.error <= run["high"])
    assert len(inside) == 16 and np.mean(inside) >= 0.85
    at = predict_compute(analysis, 0.01)
    for estimator in ("envelope", "parametric"):
        row = at["allocation"][estimator]
        assert row["params_low"] < row["params"] < row["params_high"]
        assert row["examples_low"] < row["examples"] < row["examples_high"]
    assert at["compute_law"]["low"] < at["compute_law"]["value"] < at["compute_law"]["high"]


def test_predict_cli_prints_json_and_a_table(cli, db_url, tmp_path, demo_like):
    frame, held = demo_like
    path = tmp_path / "demo.csv"
    frame[~held][COLUMNS].to_csv(path, index=False)
    assert cli("import", path, "--db", db_url).exit_code == 0
    target = frame[held].iloc[5]
    result = cli("predict", "--db", db_url, "--model", target["model"], "--examples", target["examples"],
                 "--epochs", target["epochs"], "--compute", "0.01", "--bootstrap", "100", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    run = answer["run"]["prediction"]
    assert run["low"] <= target["error"] <= run["high"]
    assert set(answer["compute"]["allocation"]) == {"envelope", "isoflop", "parametric"}
    text = cli("predict", "--db", db_url, "--compute", "0.01", "--bootstrap", "20")
    assert text.exit_code == 0 and "compute-optimal allocation at 0.01 PFLOPs" in text.output


def test_bad_input_is_one_line_and_exit_2(cli, db_url, tmp_path, demo_like):
    def refused(*args: str) -> str:
        result = cli("predict", "--db", db_url, *args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        return lines[0]

    assert "does not exist" in refused("--compute", "1")  # predict never creates a database
    few = tmp_path / "few.csv"
    few.write_text("model,params,flops_per_example,examples,epochs,error\nm,100,100,1000,50,0.5\nm,100,100,1000,100,0.4\n")
    assert cli("import", few, "--db", db_url, "--study", "few").exit_code == 0
    assert "cannot be fitted" in refused("--compute", "1")
    frame, _ = demo_like
    path = tmp_path / "demo.csv"
    frame[COLUMNS].to_csv(path, index=False)
    assert cli("import", path, "--db", db_url, "--study", "demo").exit_code == 0
    assert "unknown model 'B-9/Wi-1'" in refused("--study", "demo", "--model", "B-9/Wi-1", "--examples", "10", "--epochs", "2")
    assert "--compute must be a positive number of PFLOPs, not 0" in refused("--study", "demo", "--compute", "0")
    assert "--compute must be a positive number" in refused("--study", "demo", "--compute", "-3")
    assert "say what to predict" in refused("--study", "demo")
    assert "--model needs --examples N and --epochs T" in refused("--study", "demo", "--model", "x")
    assert "no study 'nope'" in refused("--study", "nope", "--compute", "1")
