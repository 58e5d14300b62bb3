"""Any positive metric: losses imported under `loss`, their kind recorded, E_inf below the lowest value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scaling_study import analysis as fits
from scaling_study import db, synthetic

COLUMNS = ["model", "params", "flops_per_example", "examples", "epochs", "metric", "seed"]


@pytest.fixture(scope="module")
def losses():
    return synthetic.loss_study(seed=0)


def test_chinchilla_like_loss_surface_recovers_its_exponents(losses):
    truth = synthetic.CHINCHILLA
    assert 2.0 < losses["error"].min() and losses["error"].max() < 4.7
    assert (losses["compute"] == 6.0 * losses["params"] * losses["examples"] * losses["epochs"]).all()  # C = 6 P D
    fit = fits.fit_parametric(losses, 0, np.random.default_rng(0))
    assert fit.value("alpha") == pytest.approx(truth.alpha, abs=0.02)
    assert fit.value("beta") == pytest.approx(truth.beta, abs=0.02)
    assert 0 < fit.value("E_inf") < losses["error"].min()
    assert fit.value("a") == pytest.approx(truth.a, abs=0.02)


def test_losses_import_under_loss_and_fit_with_their_kind(cli, db_url, tmp_path, losses):
    path = tmp_path / "lm.csv"
    losses.rename(columns={"error": "loss"})[[*COLUMNS, "loss"]].to_csv(path, index=False)
    result = cli("import", path, "--db", db_url)
    assert result.exit_code == 0, result.output
    frame = db.evaluations_frame(db.connect(db_url))
    assert set(frame["metric_kind"]) == {"loss"} and frame["error"].max() > 4
    out = tmp_path / "reports"
    result = cli("fit", "--db", db_url, "--bootstrap", "20", "--out", out)
    assert result.exit_code == 0, result.output
    assert "parametric form: parametric" not in result.output  # one T: E(P, D') is not fitted
    assert "allocation estimators" in result.output and "back-test:" in result.output
    numbers = json.loads((out / "fit.json").read_text())
    assert numbers["filters"]["metric_kind"] == "loss"
    assert "data_constrained" in numbers["laws"] and "skipped" in numbers["laws"]["data_constrained"]
    assert numbers["laws"]["parametric"]["params"]["alpha"]["value"] == pytest.approx(0.348, abs=0.02)
    for law in ("compute", "parametric"):
        assert 0 <= numbers["laws"][law]["params"]["E_inf"]["value"] < losses["error"].min()
    # the export names the kind, so a loss study re-imports from the export's `error` column
    exported = tmp_path / "out.csv"
    assert cli("export", "--db", db_url, "--out", exported).exit_code == 0
    second = f"sqlite:///{tmp_path / 'second.db'}"
    assert cli("import", exported, "--db", second).exit_code == 0
    again = db.evaluations_frame(db.connect(second))
    assert set(again["metric_kind"]) == {"loss"} and np.allclose(np.sort(again["error"]), np.sort(frame["error"]))


def test_value_columns_and_kinds_are_checked_in_one_line(cli, db_url, tmp_path):
    head = "model,params,flops_per_example,examples,epochs"
    path = tmp_path / "a.csv"
    path.write_text(f"{head},error\nm,100,100,1000,50,2.5\n")
    result = cli("import", path, "--db", db_url)
    assert result.exit_code == 2 and "error '2.5' is not an error rate in [0, 1]" in result.output
    path.write_text(f"{head},loss,value\nm,100,100,1000,50,2.5,2.5\n")
    result = cli("import", path, "--db", db_url)
    assert result.exit_code == 2 and "value columns loss, value" in result.output
    path.write_text(f"{head}\nm,100,100,1000,50\n")
    result = cli("import", path, "--db", db_url)
    assert result.exit_code == 2 and "missing column(s) error (or loss, or value)" in result.output
    path.write_text(f"{head},value\nm,100,100,1000,50,-1\nm,100,100,1000,100,inf\n")
    result = cli("import", path, "--db", db_url)
    assert result.exit_code == 2 and "value '-1' is not a finite number >= 0" in result.output
    assert "value 'inf' is not a finite number >= 0" in result.output
    path.write_text(f"{head},value,metric\nm,100,100,1000,50,12.5,ppl\n")
    assert cli("import", path, "--db", db_url, "--study", "s").exit_code == 0
    path.write_text(f"{head},error,metric\nm,100,100,1000,100,0.5,ppl\n")
    result = cli("import", path, "--db", db_url, "--study", "s")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "metric 'ppl' of study 's' is recorded with kind value, not error" in result.output
    frame = db.evaluations_frame(db.connect(db_url))
    assert frame["error"].tolist() == [12.5] and frame["metric_kind"].tolist() == ["value"]


def test_metric_kinds_migration_is_recorded():
    engine = db.connect("sqlite://")
    import sqlalchemy as sa
    with engine.connect() as conn:
        names = [r[0] for r in conn.execute(sa.text("SELECT name FROM schema_migrations"))]
    assert "0005_metric_kinds" in names and sa.inspect(engine).has_table("metric_kinds")
