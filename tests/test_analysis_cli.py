"""`study import`, `study export` and `study fit` on a real SQLite file, driven through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from scaling_study import db, synthetic

IMPORT_COLUMNS = ["model", "params", "flops_per_example", "examples", "epochs", "error", "metric", "seed"]


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame[IMPORT_COLUMNS].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def grid() -> pd.DataFrame:
    return synthetic.parametric_study(seed=0)


def test_import_records_done_jobs_and_is_idempotent(cli, db_url, tmp_path, grid):
    path = write_csv(grid, tmp_path / "grid.csv")
    first = cli("import", path, "--db", db_url)
    assert first.exit_code == 0, first.output
    assert "imported 650 evaluation points (0 already present) in 130 trajectories (130 new jobs) into study grid" in " ".join(first.output.split())
    second = cli("import", path, "--db", db_url)
    assert "imported 0 evaluation points (650 already present)" in " ".join(second.output.split())
    engine = db.connect(db_url)
    frame = db.evaluations_frame(engine)
    assert len(frame) == 650 and set(frame["state"]) == {"done"} and set(frame["study"]) == {"grid"}
    assert db.job_counts(engine) == {"grid": {"done": 130}}
    assert (frame["compute"] == 3.0 * frame["flops_per_example"] * frame["examples"] * frame["epochs"]).all()
    expected = grid.sort_values(["model", "examples", "epochs"])["error"].to_numpy()
    assert frame.sort_values(["model", "examples", "epochs"])["error"].to_numpy() == pytest.approx(expected, rel=1e-15)
    spec = json.loads(db.job_rows(engine)[0]["spec"])
    assert spec["imported"] is True and {"model", "params", "examples", "seed"} <= set(spec)


def test_import_with_defaults_and_a_study_name(cli, db_url, tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("model,params,flops_per_example,examples,epochs,error\n"
                    "B-6/Wi-256,9.19e6,9170000,1000,50,0.61\nB-6/Wi-256,9190000,9170000,1000,100,0.55\n")
    result = cli("import", path, "--study", "elsewhere", "--db", db_url)
    assert result.exit_code == 0, result.output
    frame = db.evaluations_frame(db.connect(db_url), "elsewhere")
    assert frame["metric"].tolist() == ["imported", "imported"] and frame["seed"].tolist() == [0, 0]
    assert frame["kind"].tolist() == ["bottleneck", "bottleneck"] and frame["job_id"].nunique() == 1


def test_bad_rows_are_all_reported_and_nothing_is_imported(cli, db_url, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "model,params,flops_per_example,examples,epochs,error\n"
        "B-6/Wi-256,100,100,1000,50,0.5\n"       # line 2: fine
        "B-6/Wi-256,100,100,1000,50,0.4\n"       # line 3: duplicate of line 2
        "B-6/Wi-256,100,100,-5,100,0.5\n"        # line 4: negative N
        ",100,100,1000,200,1.5\n"                # line 5: no model, error > 1
        "B-6/Wi-256,200,100,1000,400,0.3\n"      # line 6: params disagree with line 2
        "B-6/Wi-256,100,100,1000,two,0.3\n"      # line 7: epochs not a number
    )
    result = cli("import", path, "--db", db_url)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert [line.split(":")[1] for line in lines[:5]] == ["3", "4", "5", "6", "7"]
    assert "duplicate of line 2" in lines[0] and "examples '-5' is not a positive integer" in lines[1]
    assert "model is empty" in lines[2] and "error '1.5' is not an error rate in [0, 1]" in lines[2]
    assert "but 100 and 100 on line 2" in lines[3] and "epochs 'two'" in lines[4]
    assert lines[-1] == f"error: 5 bad row(s) of 6 in {path}; nothing imported" and len(lines) == 6
    assert db.study_names(db.connect(db_url)) == []


def test_unknown_and_missing_columns_are_named(cli, db_url, tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text("model,params,examples,epochs,error,colour\nB-6/Wi-256,1,1,1,0.5,red\n")
    result = cli("import", path, "--db", db_url)
    assert result.exit_code == 2 and "missing column(s) flops_per_example" in result.output
    path.write_text("model,params,flops_per_example,examples,epochs,error,colour\nB-6/Wi-256,1,1,1,1,0.5,red\n")
    result = cli("import", path, "--db", db_url)
    assert result.exit_code == 2 and "unknown column(s) colour; valid columns: model," in result.output


def test_conflicting_reimport_changes_nothing(cli, db_url, tmp_path, grid):
    path = write_csv(grid, tmp_path / "grid.csv")
    cli("import", path, "--db", db_url)
    changed = grid.copy()
    changed.loc[5, "error"] += 0.01
    result = cli("import", write_csv(changed, tmp_path / "grid.csv"), "--db", db_url)
    assert result.exit_code == 2 and "1 imported point(s) differ from points already recorded" in result.output
    stored = db.evaluations_frame(db.connect(db_url))
    assert len(stored) == 650 and not stored["error"].isin([changed.loc[5, "error"]]).any()


def test_export_round_trip_csv_and_parquet(cli, db_url, tmp_path, grid):
    cli("import", write_csv(grid, tmp_path / "grid.csv"), "--db", db_url)
    out = tmp_path / "out.csv"
    result = cli("export", "--db", db_url, "--out", out)
    assert result.exit_code == 0 and "wrote 650 evaluation points" in result.output
    second = f"sqlite:///{tmp_path / 'second.db'}"
    assert cli("import", out, "--db", second).exit_code == 0  # the export's extra columns are accepted
    before = db.evaluations_frame(db.connect(db_url)).drop(columns="job_id")
    after = db.evaluations_frame(db.connect(second)).drop(columns="job_id")
    pd.testing.assert_frame_equal(before, after)
    parquet = tmp_path / "out.parquet"
    assert cli("export", "--db", db_url, "--format", "parquet", "--out", parquet, "--metric", "synthetic/linear").exit_code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), db.evaluations_frame(db.connect(db_url)))
    assert cli("export", "--db", db_url, "--format", "xlsx").exit_code == 2


def test_fit_writes_figures_report_and_numbers(cli, db_url, tmp_path, grid):
    cli("import", write_csv(grid, tmp_path / "grid.csv"), "--db", db_url)
    out = tmp_path / "reports"
    result = cli("fit", "--db", db_url, "--bootstrap", "200", "--out", out, "--exclude", "7", "--exclude", "8")
    assert result.exit_code == 0, result.output
    for stem in ("fig1_error_vs_compute", "fig6_bottlenecks", "fig7_allocation", "residuals_compute"):
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    numbers = json.loads((out / "fit.json").read_text())
    assert numbers["metric"] == "synthetic/linear" and numbers["filters"]["excluded_jobs"] == [7, 8]
    assert numbers["points"] == 640 and numbers["bootstrap_resamples"] == 200
    assert numbers["laws"]["parametric"]["params"]["alpha"]["value"] == pytest.approx(0.65, abs=0.02)
    for estimator in ("envelope", "isoflop", "parametric"):
        assert numbers["allocation"][estimator]["a"]["value"] == pytest.approx(0.35, abs=0.05)
    assert set(numbers["laws"]["compute"]["params"]) == {"alpha", "E_inf", "a", "b"}
    report = (out / "report.md").read_text()
    for heading in ("## Data", "## Fits", "## Compute-optimal allocation", "Agreement:", "## Held-out check"):
        assert heading in report
    assert "compute-optimal allocation" in result.output and "fit.json" in result.output


def test_fit_refuses_too_few_points_in_one_line(cli, db_url, tmp_path):
    path = tmp_path / "few.csv"
    path.write_text("model,params,flops_per_example,examples,epochs,error\n"
                    "m,100,100,1000,50,0.5\nm,100,100,1000,100,0.4\nm,100,100,1000,200,0.35\n")
    cli("import", path, "--db", db_url)
    result = cli("fit", "--db", db_url, "--bootstrap", "0", "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: cannot fit E(C) = a (b + C)^-alpha + E_inf: only 3 compute-optimal point(s) among 3 evaluation "
        "points; the law has 4 parameters"
    ]
    assert not (tmp_path / "r").exists()


def test_fit_option_errors_are_one_line(cli, db_url, tmp_path, grid):
    assert "does not exist" in cli("fit", "--db", db_url).output  # fit never creates a database
    cli("import", write_csv(grid, tmp_path / "grid.csv"), "--db", db_url)
    cli("import", write_csv(grid, tmp_path / "other.csv"), "--db", db_url)
    assert "2 studies in the database; choose one with --study: grid, other" in cli("fit", "--db", db_url).output
    for args, message in ((["--metric", "nope"], "no evaluation points for metric 'nope'"),
                          (["--kind", "wide"], "unknown --kind 'wide'; valid kinds: bottleneck, standard, cnn, vit"),
                          (["--epochs", "3"], "no evaluation points at T = 3 epochs"),
                          (["--exclude", "999"], "--exclude: no job 999 among the points")):
        result = cli("fit", "--db", db_url, "--study", "grid", *args)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and message in result.output


@pytest.mark.parametrize("command", ["import", "export", "fit"])
def test_analysis_commands_have_help(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_fit_of_an_isoflop_sweep_says_its_mode_budgets_and_merges(cli, db_url, tmp_path):
    sweep = synthetic.isoflop_study(seed=0)
    assert cli("import", write_csv(sweep, tmp_path / "sweep.csv"), "--db", db_url).exit_code == 0
    out = tmp_path / "reports"
    result = cli("fit", "--db", db_url, "--bootstrap", "50", "--out", out)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "sweep: budgets (100% of the points fall into 6 compute budgets" in text
    assert "merged into P-1M: P-1.000589M" in text
    assert "not identified: compute b: its 95% interval" in text
    data = json.loads((out / "fit.json").read_text())
    assert data["sweep"]["mode"] == "budgets" and len(data["sweep"]["budgets"]) == 6
    assert data["sweep"]["merged_sizes"]["tolerance"] == 0.01 and len(data["sweep"]["merged_sizes"]["groups"]) == 4
    iso = data["allocation"]["isoflop"]
    assert iso["mode"] == "budgets" and iso["bootstrap"].startswith("runs resampled with replacement within each budget")
    assert abs(iso["a"]["value"] - 0.35) < 0.03
    assert data["allocation"]["envelope"]["mode"] == "budgets"
    assert "**budgets** mode" in (out / "report.md").read_text()
    assert "**Not identified: b**" in (out / "report.md").read_text()
    assert [f["param"] for f in data["laws"]["compute"]["not_identified"]] == ["b"]
    assert data["identifiability"]["flagged"]["compute"][0]["param"] == "b"
    # no merging: every digitised count is a model of its own, recorded as such
    again = cli("fit", "--db", db_url, "--bootstrap", "0", "--out", tmp_path / "r2", "--merge-sizes", "0")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "r2" / "fit.json").read_text())["sweep"]["merged_sizes"]["groups"] == []
    bad = cli("fit", "--db", db_url, "--out", tmp_path / "r3", "--budget-tolerance", "0")
    assert bad.exit_code == 2 and "--budget-tolerance" in bad.output and not (tmp_path / "r3").exists()
