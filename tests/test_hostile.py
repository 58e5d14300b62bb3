"""The hostile try-out's further cases: each bad input goes through the real CLI and ends in one
`error:` line with its exit code (user errors: 2), no traceback, the database and files as they were;
the quiet faults (a curve missing columns, a number rounded, a worker oversubscribing the cores) are
checked on the real files they leave.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from scaling_study import cores, db
from scaling_study.models import build, parse_model

from test_bad_inputs import (  # noqa: F401 - fixtures
    DB, grid_text, here, invoke, mounted, needs_root, planned, refused, unchanged,
)

INT64_MAX = 2**63 - 1


# ---- curves ---------------------------------------------------------------------------------


def test_every_curve_row_has_its_learning_rate_and_speed(tmp_path):
    """A job of a few steps writes one row per step: lr and img/s arrive after the step's loss is read."""
    from tiny_datasets import write_idx

    write_idx(tmp_path / "data", n_train=40, n_test=10)
    (tmp_path / "grid.toml").write_text(grid_text(tmp_path / "data", examples="[40]"))
    assert invoke("plan", "grid.toml", *DB, cwd=tmp_path).exit_code == 0
    assert invoke("run", *DB, "--device", "cpu", cwd=tmp_path).exit_code == 0
    (curve,) = (tmp_path / "runs").rglob("curve.csv")
    rows = list(csv.DictReader(curve.read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert float(row["lr"]) == pytest.approx(1e-3) and float(row["images_per_s"]) > 0, row


# ---- grids ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds, needles", [
    ("[99999999999999999999]", ("[grid].seeds", "99999999999999999999", "2**63 - 1")),
    ("[-1]", ("[grid].seeds", "must be 0 or more, got -1")),
    ("[1.5]", ("integers of 0 or more",)),
])
def test_seeds_out_of_range_are_refused_at_plan(here, seeds, needles):
    (here / "seeds.toml").write_text(grid_text(here / "data", seeds=seeds))
    refused(unchanged(here, lambda: invoke("plan", "seeds.toml", *DB, cwd=here)), 2, *needles)


def test_the_largest_seed_is_planned(here):
    (here / "seeds.toml").write_text(grid_text(here / "data", name='"big-seed"', seeds=f"[0, {INT64_MAX}]"))
    result = invoke("plan", "seeds.toml", *DB, cwd=here)
    assert result.exit_code == 0 and "added 4 jobs" in result.stdout, result.stderr
    engine = db.connect(f"sqlite:///{here / 'results.db'}")
    assert {row["seed"] for row in db.job_rows(engine, "big-seed")} == {0, INT64_MAX}
    engine.dispose()


@pytest.mark.parametrize("value, needles", [
    ("100000000000", ("[adaptive].resamples", "must lie in [10, 10,000]", "100,000,000,000")),
    ("1e11", ("[adaptive].resamples", "expected an integer")),
])
def test_absurd_resamples_are_refused_at_plan(here, value, needles):
    (here / "adaptive.toml").write_text(grid_text(here / "data") + f"\n[adaptive]\nenabled = true\nresamples = {value}\n")
    refused(unchanged(here, lambda: invoke("plan", "adaptive.toml", *DB, cwd=here)), 2, *needles)


def test_a_recorded_grid_with_absurd_resamples_stops_the_run_before_any_claim(here):
    """A grid recorded by a version that let it in: `study run` says so instead of never pruning."""
    engine = sa.create_engine(f"sqlite:///{here / 'results.db'}")
    with engine.begin() as conn:
        text = conn.execute(sa.select(db.studies.c.grid_toml).where(db.studies.c.name == "corpus")).scalar()
        conn.execute(db.studies.update().where(db.studies.c.name == "corpus").values(
            grid_toml=text + "\n[adaptive]\nenabled = true\nresamples = 100000000000\n"))
    engine.dispose()
    result = unchanged(here, lambda: invoke("run", *DB, "--device", "cpu", cwd=here))
    refused(result, 2, "study 'corpus'", "[adaptive].resamples", "must lie in")


# ---- checkpoints ----------------------------------------------------------------------------


def _checkpoint(path: Path, how: str) -> Path:
    model = build(parse_model("B-1/Wi-8", "--model"), 64, 10)
    if how == "random bytes":
        path.write_bytes(os.urandom(5000))
    else:
        scale = {"nan": float("nan"), "huge": 1e30}[how]
        state = {k: (torch.full_like(v, scale) if how == "nan" else v * scale) if k.endswith("weight") else v
                 for k, v in model.state_dict().items()}
        torch.save(state, path)
    return path


@pytest.mark.parametrize("probe", ["fast", "paper"])
@pytest.mark.parametrize("how, code, needles", [
    ("nan", 2, ("non-finite weight(s)", "no score")),
    ("huge", 2, ("non-finite value(s)", "features", "no score")),
    ("random bytes", 2, ("is not a readable checkpoint", "corrupt")),
])
def test_a_diverged_or_corrupt_checkpoint_gets_no_score(here, probe, how, code, needles):
    checkpoint = _checkpoint(here / "model.pt", how)
    result = unchanged(here, lambda: invoke("evaluate", checkpoint, "--model", "B-1/Wi-8", "--downstream",
                                            f"fashion-mnist={here / 'data'}", "--probe", probe, "--probe-epochs", "1",
                                            "--device", "cpu", cwd=here))
    line = refused(result, code, *needles)
    assert "weights_only" not in line and "0.9" not in result.stdout


# ---- reports --------------------------------------------------------------------------------


def test_names_reach_report_md_as_text_not_markup(here):
    rows = ["model,params,flops_per_example,examples,epochs,error,metric"]
    names = ["<script>alert(1)</script>", "B|x*y_[z]", "B-3/Wi-8", "B-4/Wi-8"]
    params = [300, 301, 900, 2700]  # the first two merge (within 1%): their names are listed
    rows += [f"{name},{p},{p},{n},{t},{0.5 + 1.0 / p ** 0.3 + 1.0 / (n * t) ** 0.3:.6f},<b>m|x</b>"
             for name, p in zip(names, params) for n in (1000, 3000) for t in (1, 2)]
    (here / "hostile.csv").write_text("\n".join(rows) + "\n")
    assert invoke("import", "hostile.csv", *DB, cwd=here).exit_code == 0
    result = invoke("fit", *DB, "--study", "hostile", "--bootstrap", "0", "--no-page", "--out", "rep", cwd=here)
    assert result.exit_code == 0, result.stderr
    text = (here / "rep" / "report.md").read_text()
    assert "<script>" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "B\\|x\\*y\\_\\[z\\]" in text
    assert "metric &lt;b&gt;m\\|x&lt;/b&gt;" in text


# ---- predictions ----------------------------------------------------------------------------


@pytest.mark.parametrize("args, needles", [
    (("--model", "B-1/Wi-8", "--examples", 10**30, "--epochs", 1), ("N*T 1e+30", "x above the largest", "refused")),
    (("--compute", "1e-300"), ("--compute (PFLOPs) 1e-300", "x below the smallest", "refused")),
])
def test_predictions_far_outside_the_data_are_refused(here, args, needles):
    result = unchanged(here, lambda: invoke("predict", *DB, "--study", "points", "--bootstrap", "0", *args, cwd=here))
    refused(result, 2, *needles)


def test_a_prediction_beyond_the_data_is_marked_and_an_error_rate_stays_in_its_range(here):
    from scaling_study import analysis as fits
    from scaling_study.analysis.predict import predict_compute, predict_run

    engine = db.connect(f"sqlite:///{here / 'results.db'}")
    selected, filters = fits.select(db.evaluations_frame(engine, "points"), None)
    engine.dispose()
    analysis = fits.analyse(selected, filters, None, 0, 0)
    run = predict_run(analysis, "B-1/Wi-8", 200_000, 1)
    assert any("100x above the largest" in note and "extrapolation" in note for note in run["notes"]), run["notes"]
    low = predict_compute(analysis, float(selected["compute"].min()) / 1e15 / 1000)
    assert 0.0 <= low["compute_law"]["value"] <= 1.0 and low["compute_law"]["high"] <= 1.0
    assert any("x below the smallest" in note for note in low["notes"])


# ---- imports --------------------------------------------------------------------------------

HEADER = "model,params,flops_per_example,examples,epochs,error"


def test_a_semicolon_separated_csv_is_read(here):
    (here / "semi.csv").write_text(HEADER.replace(",", ";") + "\nB-1/Wi-8;100;100;1000;1;0.5\nB-2/Wi-8;200;200;1000;1;0.4\n")
    result = invoke("import", "semi.csv", *DB, cwd=here)
    assert result.exit_code == 0 and "imported 2 evaluation points" in result.stdout, result.stderr


def test_a_bad_study_name_is_said_once(here):
    (here / "many.csv").write_text(HEADER + "\n" + "".join(f"B-{i}/Wi-8,{i}00,100,1000,1,0.5\n" for i in range(1, 61)))
    result = unchanged(here, lambda: invoke("import", "many.csv", "--study", "a/b", *DB, cwd=here))
    refused(result, 2, "--study 'a/b'", "must not contain /")


def test_a_short_row_is_named_short(here):
    (here / "short.csv").write_text(HEADER + "\nB-1/Wi-8,100,100,1000,1\n")
    result = unchanged(here, lambda: invoke("import", "short.csv", *DB, cwd=here))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code in (1, 2) and "Traceback" not in result.stderr
    assert lines[0] == "short.csv:2: a short row: 5 fields, the header has 6 (no error)"
    assert lines[1].startswith("error: 1 bad row(s) of 1 in short.csv")


def test_a_repeated_header_is_refused(here):
    (here / "twice.csv").write_text(HEADER + ",error\nB-1/Wi-8,100,100,1000,1,0.5,0.6\n")
    refused(unchanged(here, lambda: invoke("import", "twice.csv", *DB, cwd=here)), 2, "error appear more than once")


def test_imported_integers_are_kept_exact(here):
    (here / "exact.csv").write_text(HEADER + f"\nB-1/Wi-8,9007199254740993,100,1000,1,0.5\nB-2/Wi-8,{INT64_MAX},200,1000,1,0.4\n")
    result = invoke("import", "exact.csv", *DB, cwd=here)
    assert result.exit_code == 0, result.stderr
    engine = db.connect(f"sqlite:///{here / 'results.db'}")
    assert sorted(row["params"] for row in db.job_rows(engine, "exact")) == [9007199254740993, INT64_MAX]
    engine.dispose()


# ---- workers sharing a machine --------------------------------------------------------------

HOLD = "import sys, time; from scaling_study.cores import HostSlot; s = HostSlot(); print('up', flush=True); time.sleep(60)"


def test_workers_on_one_host_share_its_cores(tmp_path, monkeypatch):
    """Live workers are counted by the locks they hold; a killed one stops counting at once."""
    monkeypatch.setenv(cores.REGISTRY_VARIABLE, str(tmp_path))
    monkeypatch.delenv(cores.THREADS_VARIABLE, raising=False)
    with cores.HostSlot():
        assert cores.live_workers() == 1
        others = [subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            for other in others:
                assert other.stdout.readline().strip() == "up"
            assert cores.live_workers() == 3
            threads = cores.worker_threads()
            assert threads.count == max(1, cores.usable_cores() // 3) and "shared by 3 worker(s)" in threads.why
            others[0].kill()
            others[0].wait()
            assert cores.live_workers() == 2
            assert len([p for p in cores.registry_folder().iterdir()]) == 2  # the dead one's file is gone
        finally:
            for other in others:
                other.kill()
                other.wait()
                other.stdout.close()
    assert cores.live_workers() == 1 and not any(cores.registry_folder().iterdir())


def test_threads_can_be_given(monkeypatch):
    assert cores.worker_threads(3) == cores.Threads(3, "--threads")
    monkeypatch.setenv(cores.THREADS_VARIABLE, "2")
    assert cores.worker_threads() == cores.Threads(2, "$STUDY_THREADS")
    monkeypatch.setenv(cores.THREADS_VARIABLE, "many")
    with pytest.raises(cores.BadInput, match="STUDY_THREADS"):
        cores.worker_threads()


# ---- runs -----------------------------------------------------------------------------------


def test_a_gpu_that_is_not_there_is_a_usage_error(here):
    refused(unchanged(here, lambda: invoke("run", *DB, "--device", "cuda:7", cwd=here)), 2, "--device cuda:7")


def test_prune_with_nothing_pending_fits_nothing(here):
    """An imported study has no pending trajectory: prune says so before fitting the law it would not use."""
    result = unchanged(here, lambda: invoke("prune", *DB, "--study", "points", "--dry-run", cwd=here))
    assert result.exit_code == 0, result.stderr
    assert "nothing to decide: no pending or running trajectory" in result.stdout


def test_a_database_deleted_while_run_works_stops_the_worker(tmp_path):
    """`rm results.db*` under a running worker: it stops at its next transaction with one line, exit 1,
    instead of writing on into the unlinked file and reporting its jobs done."""
    from tiny_datasets import write_idx

    write_idx(tmp_path / "data", n_train=40, n_test=10)
    (tmp_path / "grid.toml").write_text(grid_text(tmp_path / "data", examples="[20, 30, 40]", seeds="[0, 1, 2, 3]"))
    assert invoke("plan", "grid.toml", *DB, cwd=tmp_path).exit_code == 0
    worker = subprocess.Popen([sys.executable, "-m", "scaling_study", "run", *DB, "--device", "cpu"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any("epoch 1" in log.read_text() for log in tmp_path.rglob("log.txt")):
        time.sleep(0.01)
    for name in ("results.db", "results.db-wal", "results.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the database results.db was deleted"), err
    assert "Traceback" not in err and " done, " not in out
    assert not (tmp_path / "results.db").exists()  # not made again, empty, by a new connection


# ---- a trained study ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder with a small trained study: 3 models x 3 sizes x 2 epochs of real training, in results.db."""
    from tiny_datasets import write_idx

    folder = tmp_path_factory.mktemp("trained")
    write_idx(folder / "data", n_train=40, n_test=10)
    text = grid_text(folder / "data", examples="[20, 30, 40]").replace("epochs = [1]", "epochs = [1, 2]")
    (folder / "grid.toml").write_text(text.replace('models = ["B-1/Wi-8"]', 'models = ["B-1/Wi-8", "B-1/Wi-16", "B-2/Wi-16"]'))
    assert invoke("plan", "grid.toml", *DB, cwd=folder).exit_code == 0
    result = invoke("run", *DB, "--device", "cpu", cwd=folder)
    assert result.exit_code == 0 and "9 done" in result.stdout, result.stdout + result.stderr
    return folder


@pytest.fixture
def trained_copy(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "trained")
    return tmp_path / "trained"


def test_a_trained_study_round_trips_through_export_and_import(trained_copy):
    here = trained_copy
    assert invoke("export", *DB, "--out", "all.csv", cwd=here).exit_code == 0
    losses = [row for row in csv.DictReader((here / "all.csv").read_text().splitlines()) if row["metric"] == "train/loss"]
    assert len(losses) == 18 and {row["metric_kind"] for row in losses} == {"loss"}
    result = invoke("import", "all.csv", "--db", "sqlite:///copy.db", cwd=here)
    assert result.exit_code == 0 and "imported 54 evaluation points" in result.stdout, result.stderr
    for url in DB[1], "sqlite:///copy.db":
        result = invoke("predict", "--db", url, "--metric", "train/loss", "--bootstrap", "0", "--compute", "1e-6", cwd=here)
        assert result.exit_code == 0, result.stderr
        assert "loss there" in result.stdout and "error there" not in result.stdout


def _as_before_training_metric_kinds(url: str) -> None:
    """The database as the version before 0007 left it: no kind recorded for train/loss."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM schema_migrations WHERE name = '0007_training_metric_kinds'"))
        conn.execute(sa.text("DELETE FROM metric_kinds"))
    engine.dispose()


def _kinds(url: str) -> set[tuple[str, str]]:
    engine = db.connect(url)
    with engine.connect() as conn:
        kinds = set(conn.execute(sa.select(db.metric_kinds.c.metric, db.metric_kinds.c.kind)).all())
    engine.dispose()
    return kinds


def test_the_migration_records_train_loss_as_a_loss_on_sqlite(trained_copy):
    url = f"sqlite:///{trained_copy / 'results.db'}"
    _as_before_training_metric_kinds(url)
    assert _kinds(url) == {("train/loss", "loss")}
    engine = db.connect(url)
    frame = db.evaluations_frame(engine, "corpus")
    engine.dispose()
    assert set(frame.loc[frame["metric"] == "train/loss", "metric_kind"]) == {"loss"}
    assert set(frame.loc[frame["metric"] != "train/loss", "metric_kind"]) == {"error"}


def test_the_migration_records_train_loss_as_a_loss_on_postgresql(postgres_url, here):
    assert invoke("plan", "grid.toml", "--db", postgres_url, cwd=here).exit_code == 0
    _as_before_training_metric_kinds(postgres_url)
    assert _kinds(postgres_url) == {("train/loss", "loss")}


def test_a_second_import_that_changes_a_models_size_is_refused(here):
    """The planned fixture imported B-1/Wi-8 with 100 parameters; another file says 150."""
    (here / "other.csv").write_text(HEADER + "\nB-1/Wi-8,150,100,3000,1,0.5\nB-9/Wi-8,900,900,3000,1,0.3\n")
    result = unchanged(here, lambda: invoke("import", "other.csv", "--study", "points", *DB, cwd=here))
    refused(result, 2, "model B-1/Wi-8 of study 'points'", "params 150", "but 100 and 100 in the database",
            "nothing imported")


# ---- databases that are not what they should be ---------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["run", "--device", "cpu"], ["retry", "1"], ["export"]])
def test_a_sqlite_file_of_another_program_gets_no_tables(tmp_path, command):
    import sqlite3

    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('mine')")
    conn.close()
    before = (tmp_path / "other.db").read_bytes()
    result = invoke(*command, "--db", "sqlite:///other.db", cwd=tmp_path)
    refused(result, 2, "sqlite:///other.db is not a study database", "1 other table(s): notes", "study plan GRID")
    assert (tmp_path / "other.db").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


@pytest.mark.parametrize("command", [["plan", "grid.toml"], ["run", "--device", "cpu"], ["retry", "1"],
                                     ["import", "points.csv"], ["cancel", "1"]])
def test_a_chmod_444_database_is_not_written_by_root(here, command):
    (here / "results.db").chmod(0o444)
    before = (here / "results.db").read_bytes()
    refused(unchanged(here, lambda: invoke(*command, *DB, cwd=here)), 2, "is read-only", "make it writable")
    assert (here / "results.db").read_bytes() == before


def test_a_chmod_444_database_is_still_read_by_root(here):
    (here / "results.db").chmod(0o444)
    before = (here / "results.db").read_bytes()
    result = invoke("status", *DB, cwd=here)
    assert result.exit_code == 0 and "corpus" in result.stdout, result.stderr
    assert (here / "results.db").read_bytes() == before


def test_a_failed_postgresql_connection_does_not_print_the_password(postgres_url, tmp_path):
    url = sa.engine.make_url(postgres_url).set(password="s3cret-word", database="no_such_database")
    (tmp_path / "grid.toml").write_text(grid_text(tmp_path / "data"))
    for command in (["status"], ["plan", "grid.toml"], ["run", "--device", "cpu"]):
        result = invoke(*command, "--db", url.render_as_string(hide_password=False), cwd=tmp_path)
        line = refused(result, 2, "cannot open database", "postgres:***@", 'database "no_such_database" does not exist')
        assert "s3cret" not in result.stdout + result.stderr, line



def test_a_database_server_that_is_down_is_a_fault_not_a_bad_url(tmp_path):
    """Connection refused: exit 1 (run again later), where a database that does not exist is exit 2."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # nothing listens on it once the socket is closed
    url = sa.engine.make_url(f"postgresql+psycopg://postgres:s3cret-word@127.0.0.1:{port}/study")
    (tmp_path / "grid.toml").write_text(grid_text(tmp_path / "data"))
    for command in (["status"], ["plan", "grid.toml"], ["run", "--device", "cpu"]):
        result = invoke(*command, "--db", url.render_as_string(hide_password=False), cwd=tmp_path)
        line = refused(result, 1, "cannot reach database", "Connection refused", "nothing was changed",
                       "start the server")
        assert "s3cret" not in line

# ---- full disks -----------------------------------------------------------------------------


def _fill(folder: Path, leave: int) -> Path:
    """Fill the file system of `folder` but `leave` bytes."""
    filler = folder / "filler"
    filler.write_bytes(b"\0" * (os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize - leave))
    return filler


@needs_root
def test_a_full_database_mid_run_says_where_and_what_to_do(trained_copy):
    here = trained_copy
    with mounted(here / "small", "2m") as small:
        url = "sqlite:///small/results.db"
        assert invoke("plan", "grid.toml", "--db", url, cwd=here).exit_code == 0
        filler = _fill(small, 100_000)  # room for a job or two, not nine
        result = invoke("run", "--db", url, "--device", "cpu", "--lease", 1, cwd=here)  # this process lives on
        line = refused(result, 1, "the database small/results.db", f"(in {small})", "is on a full disk",
                       "database or disk is full", "nothing recorded was lost", "free space", "study run --resume")
        assert "OperationalError" not in line
        filler.unlink()
        time.sleep(1.5)  # the job whose progress was refused is held until its lease lapses
        result = invoke("run", "--resume", "--db", url, "--device", "cpu", cwd=here)
        assert result.exit_code == 0, result.stderr
        engine = db.connect(url.replace("///", f"///{here}/"))
        assert {row["state"] for row in db.job_rows(engine, "corpus")} == {"done"}
        engine.dispose()


@needs_root
def test_a_database_on_an_already_full_disk_says_so_and_writes_nothing(trained_copy):
    """SQLite reports a full disk at open as "database or disk is full" for a new file and as a "disk
    I/O error" for an existing one (its WAL files cannot be made): both read as a full disk, not as a
    damaged database, and a new file is not left half-made."""
    here = trained_copy
    with mounted(here / "small", "2m") as small:
        assert invoke("plan", "grid.toml", "--db", "sqlite:///small/results.db", cwd=here).exit_code == 0
        before = (small / "results.db").read_bytes()
        filler = _fill(small, 0)
        for command in (["plan", "grid.toml"], ["status"], ["run", "--device", "cpu"], ["export", "--study", "corpus"]):
            result = invoke(*command, "--db", "sqlite:///small/results.db", cwd=here)
            refused(result, 1, "cannot open database small/results.db", f"the disk holding it ({small}) is full",
                    "nothing recorded was changed", "free space")
        result = invoke("plan", "grid.toml", "--db", "sqlite:///small/new.db", cwd=here)
        refused(result, 1, "cannot open database small/new.db", "is full", "database or disk is full")
        assert not list(small.glob("new.db*"))
        assert (small / "results.db").read_bytes() == before
        filler.unlink()
        result = invoke("status", "--db", "sqlite:///small/results.db", cwd=here)
        assert result.exit_code == 0 and "corpus" in result.stdout, result.stderr


@needs_root
def test_a_full_runs_folder_keeps_the_epoch_recorded(here):
    """Epoch 1's checkpoint fits on the disk, epoch 2's new one beside it does not: the job is released
    with epoch 1 counted, its points and checkpoint kept."""
    text = grid_text(here / "data", examples="[40]", batch=40).replace("epochs = [1]", "epochs = [1, 2]")
    (here / "wide.toml").write_text(text.replace('"B-1/Wi-8"', '"B-2/Wi-256"').replace('"corpus"', '"wide"'))
    assert invoke("plan", "wide.toml", *DB, cwd=here).exit_code == 0
    (here / "probe.toml").write_text(text.replace('"B-1/Wi-8"', '"B-2/Wi-256"').replace('"corpus"', '"probe"')
                                     .replace("epochs = [1, 2]", "epochs = [1]"))
    assert invoke("plan", "probe.toml", "--db", "sqlite:///probe.db", cwd=here).exit_code == 0
    assert invoke("run", "--db", "sqlite:///probe.db", "--device", "cpu", "--runs-dir", "probe", cwd=here).exit_code == 0
    (size,) = [p.stat().st_size for p in (here / "probe").rglob("checkpoint.pt")]
    with mounted(here / "runs", str(int(size * 1.6))):
        result = invoke("run", *DB, "--device", "cpu", "--study", "wide", cwd=here)
        refused(result, 1, "disk full", "previous checkpoint is intact")
        engine = db.connect(f"sqlite:///{here / 'results.db'}")
        (job,) = db.job_rows(engine, "wide")
        assert job["state"] == "pending" and job["epochs_done"] == 1
        assert {p["epoch"] for p in db.point_rows(engine, job["id"])} == {1}
        engine.dispose()
        assert list((here / "runs").rglob("checkpoint.pt"))


# ---- what the commands say ------------------------------------------------------------------


def test_the_jobs_bar_of_a_resume_counts_the_job_a_killed_worker_left(tmp_path):
    """A worker killed mid-job leaves it running; the resume takes it back and its bar ends at 3/3, not 3/2."""
    from tiny_datasets import write_idx

    write_idx(tmp_path / "data", n_train=40, n_test=10)
    text = grid_text(tmp_path / "data", examples="[20, 30, 40]", batch=2).replace("epochs = [1]", "epochs = [1, 2]")
    (tmp_path / "grid.toml").write_text(text)
    assert invoke("plan", "grid.toml", *DB, cwd=tmp_path).exit_code == 0
    worker = subprocess.Popen([sys.executable, "-m", "scaling_study", "run", *DB, "--device", "cpu"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any("epoch 1" in log.read_text() for log in tmp_path.rglob("log.txt")):
        time.sleep(0.01)
    worker.kill()
    worker.wait()
    result = invoke("run", "--resume", *DB, "--device", "cpu", cwd=tmp_path)
    assert result.exit_code == 0 and "3 done" in result.stdout, result.stdout + result.stderr
    (bar,) = [line for line in result.stdout.splitlines() if line.startswith("jobs ")]
    assert " 3/3 " in bar, bar


def test_the_log_of_an_imported_job_says_it_was_imported(here):
    engine = db.connect(f"sqlite:///{here / 'results.db'}")
    (job, *_) = db.job_rows(engine, "points")
    engine.dispose()
    result = unchanged(here, lambda: invoke("logs", job["id"], *DB, cwd=here))
    assert result.exit_code == 0, result.stderr
    assert f"job {job['id']} was imported from points.csv: it has no training log" in result.stdout
    assert "no log yet" not in result.stdout + result.stderr


@pytest.mark.parametrize("target", ["parent is a file", "existing folder", "/proc"])
def test_an_unwritable_evaluate_json_is_refused_before_the_evaluation(here, target):
    from test_bad_inputs import _out_targets

    out = _out_targets(here)[target]
    checkpoint = here / "model.pt"
    torch.save(build(parse_model("B-1/Wi-8", "--model"), 64, 10).state_dict(), checkpoint)
    result = unchanged(here, lambda: invoke("evaluate", checkpoint, "--model", "B-1/Wi-8", "--downstream",
                                            f"fashion-mnist={here / 'data'}", "--probe", "fast", "--probe-epochs", "1",
                                            "--device", "cpu", "--json", out, cwd=here))
    refused(result, 2, f"cannot write --json {out}")
    assert "loaded" not in result.stdout  # refused before the checkpoint was even read
