"""Grids planned into a real SQLite file, through the CLI; bad grids leave the database unchanged."""

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa

from scaling_study import db
from scaling_study.grid import parse_grid
from scaling_study.plan import JobSpec, expand, summarize

ROOT = Path(__file__).resolve().parent.parent

SMOKE = ROOT / "grids" / "smoke.toml"
CIFAR100 = ROOT / "grids" / "cifar100.toml"


def count_jobs(url: str) -> int:
    with sa.create_engine(url).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(db.jobs)).scalar()


def test_cifar100_grid_plans_30_trajectories_with_150_points(cli, db_url):
    result = cli("plan", CIFAR100, "--db", db_url)
    assert result.exit_code == 0, result.output
    assert "30 trajectories, 150 evaluation points" in result.output
    for params in ("9.19M", "12.35M", "24.66M", "37.26M", "74.47M", "124.84M"):
        assert params in result.output
    assert "save 48%" in result.output
    assert "added 30 jobs" in result.output
    again = cli("plan", CIFAR100, "--db", db_url)
    assert "added 0 jobs (30 already planned)" in again.output
    assert count_jobs(db_url) == 30


def test_shared_trajectories_spend_800_of_1550_epochs():
    jobs = expand(parse_grid(CIFAR100.read_text()))
    summary = summarize(jobs)
    assert summary.compute / summary.naive_compute == pytest.approx(800 / 1550)
    assert {job.epochs for job in jobs} == {(50, 100, 200, 400, 800)}
    assert sorted({job.examples for job in jobs}) == [118017, 354050, 1180168, 3540504, 11801680]


def test_cosine_makes_one_job_per_epoch_count():
    text = SMOKE.read_text().replace('precision = "fp32"', 'precision = "fp32"\nschedule = "cosine"')
    jobs = expand(parse_grid(text))
    assert len(jobs) == 8 and {job.epochs for job in jobs} == {(1,), (2,)}
    summary = summarize(jobs)
    assert summary.compute == summary.naive_compute


def test_changing_a_grid_adds_only_new_jobs(cli, db_url, tmp_path):
    assert cli("plan", SMOKE, "--db", db_url).exit_code == 0
    engine = db.connect(db_url)
    with engine.begin() as conn:  # a finished job must stay as it is
        conn.execute(db.jobs.update().where(db.jobs.c.id == 1).values(state="done", epochs_done=2))
    bigger = tmp_path / "bigger.toml"
    bigger.write_text(SMOKE.read_text().replace("examples = [500, 1000]", "examples = [500, 1000, 2000]"))
    result = cli("plan", bigger, "--db", db_url)
    assert "added 2 jobs (4 already planned)" in result.output
    with engine.connect() as conn:
        assert conn.execute(sa.select(db.jobs.c.state).where(db.jobs.c.id == 1)).scalar() == "done"


def test_job_identity_ignores_paths_but_not_recipe():
    base = parse_grid(SMOKE.read_text())
    moved = parse_grid(SMOKE.read_text().replace("/usr/share/datasets/fashion-mnist", "/elsewhere"))
    retuned = parse_grid(SMOKE.read_text().replace("lr = 3e-4", "lr = 1e-3"))
    assert [j.id for j in expand(base)] == [j.id for j in expand(moved)]
    assert not {j.id for j in expand(base)} & {j.id for j in expand(retuned)}


def test_spec_round_trips_through_json():
    for job in expand(parse_grid(CIFAR100.read_text())):
        assert JobSpec.from_dict(job.to_dict()) == job


def test_dry_run_writes_nothing(cli, db_url, tmp_path):
    result = cli("plan", SMOKE, "--db", db_url, "--dry-run")
    assert result.exit_code == 0 and "4 trajectories" in result.output
    assert not (tmp_path / "results.db").exists()


def test_db_url_from_environment(cli, db_url, monkeypatch):
    monkeypatch.setenv("STUDY_DB", db_url)
    assert cli("plan", SMOKE).exit_code == 0
    assert count_jobs(db_url) == 4
    status = cli("status")
    assert "smoke" in status.output and "4" in status.output


def test_migrations_are_recorded_once(db_url):
    engine = db.connect(db_url)
    assert db.apply_migrations(engine) == []
    with engine.connect() as conn:
        names = list(conn.execute(sa.select(db.migrations_table.c.name)).scalars())
    assert names == [name for name, _ in db.MIGRATIONS]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


# kind: (text to replace in smoke.toml, its replacement, what the message must say)
BAD_GRIDS = {
    "malformed TOML": ("[grid]", "[grid", "line "),
    "unknown section": ("[evaluation]", "[evaluatoin]", "unknown section [evaluatoin]"),
    "misspelt key": ("lr = 3e-4", "lrr = 3e-4", "unknown key 'lrr'; valid keys: optimizer, lr,"),
    "wrong type": ("batch_size = 128", 'batch_size = "big"', "[train].batch_size: expected an integer"),
    "non-positive size": ("examples = [500, 1000]", "examples = [0, 1000]", "[grid].examples: must be positive, got 0"),
    "zero epochs": ("epochs = [1, 2]", "epochs = [0, 2]", "[grid].epochs: must be positive"),
    "unknown model": ('"B-1/Wi-32"', '"C-1/Wi-32"', "unknown model name 'C-1/Wi-32'; valid names"),
    "unknown optimizer": ('"lion"', '"adam"', "unknown value 'adam'; valid choices: lion, adamw, sgd"),
    "too many examples": ("500, 1000", "500, 70000", "70000 is larger than fashion-mnist's 60000"),
    "missing name": ('name = "smoke"', "", "missing required key 'name'"),
    "bad crop pair": ("[evaluation]", "[train.augmentation]\ncrop_scale = [0.9, 0.1]\n\n[evaluation]", "low must not exceed high"),
    "bad protocol": ('protocol = "linear"', 'protocol = "knn"', "valid choices: linear, finetune"),
    "unknown dataset": ('dataset = "fashion-mnist"\npath', 'dataset = "mystery"\npath', "is not built in"),
    "fraction above 1": ("500, 1000", "500, 1.5", "expected positive integers or fractions"),
    "negative rate": ("lr = 3e-4", "lr = -3e-4", "[train].lr: must be a finite non-negative number"),
    "logging not a boolean": ("[evaluation]", '[logging]\ntensorboard = "yes"\n\n[evaluation]', "[logging].tensorboard: expected true or false"),
    "unknown logging key": ("[evaluation]", "[logging]\nwandb = true\n\n[evaluation]", "unknown key 'wandb'; valid keys: tensorboard"),
    "negative probe subset": ('probe = "fast"', 'probe = "fast"\nprobe_examples = -5', "[evaluation].probe_examples: must not be negative, got -5"),
}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", BAD_GRIDS)
def test_bad_grid_is_one_line_exit_2_and_db_unchanged(kind, cli, db_url, tmp_path):
    assert cli("plan", SMOKE, "--db", db_url).exit_code == 0
    db_file = tmp_path / "results.db"
    before = file_digest(db_file)
    old, new, expected = BAD_GRIDS[kind]
    text = SMOKE.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    result = cli("plan", bad, "--db", db_url)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message, message
    assert message.startswith(f"error: {bad}"), message
    assert expected in message, message
    assert "Traceback" not in result.output
    assert file_digest(db_file) == before
    assert count_jobs(db_url) == 4


def test_misspelt_key_names_its_line(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    text = SMOKE.read_text().replace("batch_size = 128", "batchsize = 128")
    bad.write_text(text)
    line = text.splitlines().index("batchsize = 128") + 1
    result = cli("plan", bad, "--dry-run")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {bad}:{line}: [train]: unknown key 'batchsize'")


def test_missing_grid_file(cli, tmp_path):
    result = cli("plan", tmp_path / "nope.toml")
    assert result.exit_code == 2 and "no such grid file" in result.stderr


def test_every_command_has_help(cli):
    from scaling_study.cli import app
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.help, name
        assert cli(name, "--help").exit_code == 0


@pytest.mark.parametrize("path", sorted((ROOT / "grids").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_grid_plans_and_opens_with_its_command(path, cli):
    header = path.read_text().split("[study]")[0]
    assert f"study plan grids/{path.name}" in header and "Plans" in header
    result = cli("plan", path, "--dry-run")
    assert result.exit_code == 0, result.stderr


def test_batch_size_axis_makes_one_trajectory_per_batch_size():
    jobs = expand(parse_grid((ROOT / "grids" / "batch-size.toml").read_text()))
    assert sorted(job.train.batch_size for job in jobs) == [1024, 2048, 4096, 8192, 16384]
    assert len({job.id for job in jobs}) == 5


def test_database_commands_start_without_importing_torch(tmp_path):
    """`study status`, `logs`, `cancel` ... only read the database: the CLI module must not pull in
    torch (about 1 s of start-up) until a command that trains, benches or plans needs it."""
    import subprocess
    import sys

    check = "import sys, scaling_study.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], cwd=tmp_path).returncode == 0


def test_a_prepared_store_gives_the_plan_its_own_size_and_classes(cli, db_url, tmp_path):
    """A store's meta.json, not the catalogue, says how many images and classes there are, so a
    grid that contradicts it is refused at plan time instead of failing every job at run time."""
    from scaling_study import store
    from tiny_datasets import write_idx

    write_idx(tmp_path / "raw", n_train=40, n_test=10, side=28)
    store.prepare(tmp_path / "raw", tmp_path / "store", dataset="fashion-mnist")

    def grid(examples: str, extra: str = "") -> Path:
        path = tmp_path / "g.toml"
        path.write_text(f"""
[study]
name = "stored"

[data.pretrain]
dataset = "fashion-mnist"
path = "{tmp_path / 'store'}"
{extra}

[grid]
models = ["B-1/Wi-16"]
examples = {examples}
epochs = [1]
""")
        return path

    (spec,) = expand(parse_grid(grid("[20]").read_text(), "g.toml"))
    assert (spec.classes, spec.channels, spec.resolution) == (10, 1, 28)
    too_many = cli("plan", grid("[100]"), "--db", db_url)  # the catalogue's Fashion-MNIST has 60,000
    assert too_many.exit_code == 2 and "100 is larger than fashion-mnist's 40 training examples" in too_many.output
    contradicted = cli("plan", grid("[20]", "classes = 12"), "--db", db_url)
    assert contradicted.exit_code == 2
    assert "classes = 12, but the store at" in contradicted.output and "holds 10" in contradicted.output
    assert "Traceback" not in contradicted.output
    assert not Path(db_url.removeprefix("sqlite:///")).exists()  # refused before anything was written
