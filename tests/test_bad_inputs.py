"""The hostile try-out's corpus: each bad input or fault goes through the real
CLI and must end in one line on stderr (no traceback) with its exit code, the database's dump and
the files around it left as they were unless the case says otherwise.

Real SQLite files, real data files, real mounts where a case needs one (a read-only or full file
system: root only, as in CI, skipped elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from scaling_study import db
from scaling_study.cli import app

from tiny_datasets import write_folders, write_idx

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT and not os.environ.get("CI"), reason="mounts a tmpfs: root only")


def grid_text(data: Path, name: str = "\"corpus\"", examples: str = "[20, 30]", lr: str = "1e-3", batch: int = 10,
              seeds: str = "[0]") -> str:
    return f"""
[study]
name = {name}

[data.pretrain]
dataset = "fashion-mnist"
path = "{data}"

[grid]
models = ["B-1/Wi-8"]
examples = {examples}
epochs = [1]
seeds = {seeds}

[train]
lr = {lr}
batch_size = {batch}
precision = "fp32"

[evaluation]
probe = "fast"
"""


def toml_string(value: str) -> str:
    """A TOML basic string holding `value` exactly (control characters escaped)."""
    return '"' + "".join(f"\\u{ord(c):04x}" if not c.isprintable() or c in '"\\' else c for c in value) + '"'


def invoke(*args, cwd: Path):
    """`study ARGS` in-process (the real Typer app, no mocks), from `cwd`."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)


def dump(path: Path) -> str | bytes | None:
    """The database's SQL dump (its bytes when it is not a database), None when there is none."""
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return "\n".join(conn.iterdump())
    except sqlite3.Error:
        return path.read_bytes()


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` but the SQLite database and its log (compared by dump)."""
    skip = ("results.db", "results.db-wal", "results.db-shm")
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip and "/proc" not in str(p)}


def refused(result, code: int, *needles: str) -> str:
    """One line on stderr, starting `error:`, naming every needle; no traceback; exit `code`."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    """A folder with tiny real IDX data, a grid and a results.db holding its 2 planned jobs and an
    imported study with evaluation points (for export and fit)."""
    folder = tmp_path_factory.mktemp("planned")
    write_idx(folder / "data", n_train=40, n_test=10)
    (folder / "grid.toml").write_text(grid_text(folder / "data"))
    assert invoke("plan", "grid.toml", "--db", "sqlite:///results.db", cwd=folder).exit_code == 0
    rows = ["model,params,flops_per_example,examples,epochs,error"]
    rows += [f"B-{i}/Wi-8,{100 * i},{100 * i},1000,{t},{0.9 - 0.1 * i - 0.01 * t}" for i in (1, 2, 3) for t in (1, 2)]
    (folder / "points.csv").write_text("\n".join(rows) + "\n")
    assert invoke("import", "points.csv", "--db", "sqlite:///results.db", cwd=folder).exit_code == 0
    return folder


@pytest.fixture
def here(planned: Path, tmp_path: Path) -> Path:
    """A fresh copy of the planned folder for one case."""
    shutil.copytree(planned, tmp_path / "case")
    return tmp_path / "case"


def unchanged(folder: Path, run) -> object:  # noqa: ANN001 - a callable returning a click Result
    """Run the case; assert the database dump and every file are as they were."""
    before_db, before_files = dump(folder / "results.db"), files(folder)
    result = run()
    assert dump(folder / "results.db") == before_db, "the database changed"
    assert files(folder) == before_files, "files changed"
    return result


DB = ("--db", "sqlite:///results.db")

# ---- state bugs -------------------------------------------------------------------


def test_a_300_character_name_is_refused_at_plan(here):
    (here / "long.toml").write_text(grid_text(here / "data", name=toml_string("n" * 300)))
    refused(unchanged(here, lambda: invoke("plan", "long.toml", *DB, cwd=here)), 2, "300 characters", "at most 100")


def test_equal_subset_sizes_are_refused_as_duplicates(here):
    (here / "dup.toml").write_text(grid_text(here / "data", examples="[60000, 1.0]"))
    refused(unchanged(here, lambda: invoke("plan", "dup.toml", *DB, cwd=here)), 2, "60000 and 1.0", "keep one")


def test_a_mistyped_metric_names_the_metrics_present(here):
    result = unchanged(here, lambda: invoke("fit", *DB, "--study", "points", "--metric", "nope/linear", cwd=here))
    refused(result, 2, "'nope/linear'", "metrics present: imported")


def test_device_text_is_printed_without_emoji(here):
    line = refused(unchanged(here, lambda: invoke("run", *DB, "--device", "cuda:O", cwd=here)), 2)
    assert "'cuda:O'" in line and "\u2b55" not in line


@pytest.mark.parametrize("command", [["status"], ["status", "--jobs"], ["retry", "1"], ["cancel", "1"], ["logs", "1"],
                                     ["export"], ["fit"], ["report"], ["run", "--device", "cpu"]])
def test_commands_on_existing_jobs_do_not_create_a_database(tmp_path, command):
    result = invoke(*command, "--db", "sqlite:///typo.db", cwd=tmp_path)
    refused(result, 2, "typo.db does not exist")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_prepare_leaves_no_partial_files(tmp_path):
    write_folders(tmp_path / "raw")
    for image in (tmp_path / "raw").rglob("*.png"):
        image.write_bytes(b"not an image")
    result = invoke("data", "prepare", "raw", "--out", "store", "--resolution", "8", cwd=tmp_path)
    refused(result, 2, "no readable images", "unreadable, e.g.", "nothing kept")
    assert not (tmp_path / "store").exists()


def test_corrupt_files_among_same_size_images_are_named(tmp_path):
    write_folders(tmp_path / "raw")
    broken = sorted((tmp_path / "raw" / "train").rglob("*.png"))[0]
    broken.write_bytes(b"\x89PNG broken")
    result = invoke("data", "prepare", "raw", "--out", "store", cwd=tmp_path)
    refused(result, 2, "1 unreadable file(s)", str(broken.name), "--resolution")
    assert not (tmp_path / "store").exists()
    # with the side given the store is made, the broken file skipped and listed
    ok = invoke("data", "prepare", "raw", "--out", "store", "--resolution", "8", cwd=tmp_path)
    assert ok.exit_code == 0 and "1 unreadable file(s) skipped" in ok.stdout


def test_status_jobs_lists_a_limited_page(tmp_path):
    write_idx(tmp_path / "data", n_train=40, n_test=10)
    (tmp_path / "grid.toml").write_text(grid_text(tmp_path / "data", seeds=str(list(range(60)))))
    assert invoke("plan", "grid.toml", *DB, cwd=tmp_path).exit_code == 0
    result = invoke("status", "--jobs", "--limit", "25", *DB, cwd=tmp_path)
    assert result.exit_code == 0 and "listed 25 of 120 jobs" in result.stdout
    assert " 26 " not in result.stdout.replace("│", " ")
    every = invoke("status", "--jobs", "--limit", "0", *DB, cwd=tmp_path)
    assert "listed" not in every.stdout and " 120 " in every.stdout.replace("│", " ")


# ---- security ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/x", "a/b", "..", "a\\b"])
def test_names_that_are_paths_are_refused(here, name):
    (here / "bad.toml").write_text(grid_text(here / "data", name=toml_string(name)))
    refused(unchanged(here, lambda: invoke("plan", "bad.toml", *DB, cwd=here)), 2, "[study].name", "--runs-dir")


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/x", "a\nb\x1b[31mRED", ".hidden", "x" * 300])
def test_job_folders_stay_inside_the_runs_dir_whatever_the_recorded_name(tmp_path, name):
    import datetime as dt

    from scaling_study.runner import job_dir

    runs = tmp_path / "runs"
    folder = job_dir(runs, {"study": name, "study_created_at": dt.datetime(2026, 1, 1), "id": 7})
    assert folder.resolve().parent.parent == runs.resolve() and len(folder.parent.name) < 100
    assert folder.parent.name.isprintable()


def test_control_characters_are_refused_in_names_and_escaped_when_printed(here):
    (here / "ansi.toml").write_text(grid_text(here / "data", name=toml_string("a\nb\x1b[31mRED")))
    refused(unchanged(here, lambda: invoke("plan", "ansi.toml", *DB, cwd=here)), 2, "control character", "\\x1b")
    engine = sa.create_engine(f"sqlite:///{here / 'results.db'}")  # as an older version let it in
    with engine.begin() as conn:
        conn.execute(db.studies.update().values(name="a\nb\x1b[31mRED").where(db.studies.c.name == "corpus"))
        conn.execute(db.jobs.update().values(state="failed", error="boom\x1b[2J"))
    engine.dispose()
    for command in (["status"], ["status", "--jobs"], ["export", "--out", "out.csv"]):
        result = invoke(*command, *DB, cwd=here)
        assert result.exit_code == 0, result.stderr
        assert "\x1b" not in result.stdout and "\\x1b" in result.stdout.replace("\n", "") or command[0] == "export"
    assert "\x1b" not in invoke("fit", *DB, "--study", "nope", cwd=here).stderr


def test_an_absurd_label_is_refused_without_building_classes(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    labels = np.arange(50) % 5 + 1
    labels[7] = 10**9
    np.savez(raw / "train_data_batch_1.npz", data=rng.integers(0, 255, (50, 3 * 8 * 8), dtype=np.uint8), labels=labels)
    np.savez(raw / "val_data.npz", data=rng.integers(0, 255, (10, 3 * 8 * 8), dtype=np.uint8), labels=labels[:10] % 5 + 1)
    result = invoke("data", "prepare", "raw", "--out", "store", "--format", "npz", cwd=tmp_path)
    refused(result, 2, "999,999,999", "6 distinct labels", "at most 100,000 classes")
    assert not (tmp_path / "store").exists()


# ---- databases ---------------------------------------------------------------------


def _not_a_database(folder: Path, kind: str) -> None:
    path = folder / "results.db"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(8192))
    elif kind == "text":
        path.write_text("id,name\n1,hello\n" * 100)
    else:  # a real database cut short
        path.write_bytes(path.read_bytes()[:3000])


@pytest.mark.parametrize("kind", ["random bytes", "text", "truncated"])
@pytest.mark.parametrize("command", [["plan", "grid.toml"], ["status"]])
def test_a_file_that_is_not_a_database(here, kind, command):
    _not_a_database(here, kind)
    before = (here / "results.db").read_bytes()
    result = invoke(*command, *DB, cwd=here)
    refused(result, 2, "is not a readable SQLite database", "check --db")
    assert (here / "results.db").read_bytes() == before


def test_a_database_from_a_newer_version_is_refused(here):
    engine = sa.create_engine(f"sqlite:///{here / 'results.db'}")
    with engine.begin() as conn:
        conn.execute(db.migrations_table.insert().values(name="0099_future", applied_at=db.now()))
    engine.dispose()
    for command in (["status"], ["plan", "grid.toml"], ["run"]):
        result = unchanged(here, lambda: invoke(*command, *DB, "--device", "cpu", cwd=here) if command == ["run"]
                           else invoke(*command, *DB, cwd=here))
        refused(result, 2, "written by a newer scaling-study (migration 0099_future); upgrade")


@contextlib.contextmanager
def mounted(folder: Path, size: str):
    """A small tmpfs at `folder` (root only)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@needs_root
@pytest.mark.parametrize("command", [["plan", "grid.toml"], ["run", "--device", "cpu"], ["retry", "1"]])
def test_a_read_only_database_is_found_before_any_work(here, tmp_path, command):
    with mounted(tmp_path / "ro", "2m") as ro:
        shutil.copy(here / "results.db", ro / "results.db")
        before = dump(ro / "results.db")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        result = invoke(*command, "--db", f"sqlite:///{ro / 'results.db'}", cwd=here)
        refused(result, 2, "read-only")
        assert dump(ro / "results.db") == before


@needs_root
def test_a_read_only_database_can_still_be_read(here, tmp_path):
    with mounted(tmp_path / "ro", "2m") as ro:
        shutil.copy(here / "results.db", ro / "results.db")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        result = invoke("status", "--jobs", "--db", f"sqlite:///{ro / 'results.db'}", cwd=here)
        assert result.exit_code == 0 and "corpus" in result.stdout and "points" in result.stdout, result.stderr
        out = here / "out.csv"
        assert invoke("export", "--out", out, "--db", f"sqlite:///{ro / 'results.db'}", cwd=here).exit_code == 0
        assert len(out.read_text().splitlines()) == 7


@needs_root
def test_a_full_disk_while_planning_leaves_the_database_as_it_was(here, tmp_path):
    (here / "big.toml").write_text(grid_text(here / "data", seeds=str(list(range(500)))))  # 1000 jobs
    with mounted(tmp_path / "small", "256k") as small:  # room for the schema and a small plan, not 1000 jobs
        url = f"sqlite:///{small / 'results.db'}"
        assert invoke("plan", "grid.toml", "--db", url, cwd=here).exit_code == 0
        before = dump(small / "results.db")
        result = invoke("plan", "big.toml", "--db", url, cwd=here)
        refused(result, 1, "full", "nothing was planned")
        assert dump(small / "results.db") == before


# ---- runs --------------------------------------------------------------------------


def test_a_bad_device_is_a_usage_error_before_any_claim(here):
    refused(unchanged(here, lambda: invoke("run", *DB, "--device", "bogus", cwd=here)), 2, "'bogus'", "cpu")


def test_a_claim_the_database_refuses_is_one_line_and_changes_nothing(here):
    with contextlib.closing(sqlite3.connect(here / "results.db")) as conn:  # a real refusal, inside the claim
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON job_attempts BEGIN SELECT RAISE(ABORT, 'no'); END")
        conn.commit()
    result = unchanged(here, lambda: invoke("run", *DB, "--device", "cpu", cwd=here))
    refused(result, 1, "could not claim a job", "nothing was changed")


def test_missing_data_is_said_at_plan_and_refused_at_run(here):
    (here / "elsewhere.toml").write_text(grid_text(here / "nowhere", name='"elsewhere"'))
    planned = invoke("plan", "elsewhere.toml", *DB, cwd=here)
    assert planned.exit_code == 0 and "added 2 jobs" in planned.stdout
    assert planned.stderr.startswith("warning: no data at") and "for a machine that has it" in planned.stderr
    result = unchanged(here, lambda: invoke("run", *DB, "--device", "cpu", cwd=here))
    refused(result, 2, str(here / "nowhere"), "nothing was claimed")
    engine = db.connect(f"sqlite:///{here / 'results.db'}")
    rows = db.job_rows(engine, "elsewhere") + db.job_rows(engine, "corpus")
    assert len(rows) == 4 and all(row["attempts"] == 0 and row["state"] == "pending" for row in rows)
    engine.dispose()


@pytest.mark.parametrize("train, needles", [
    (("1e308", 10), ("[train].lr", "above 1e+06")),
    (("1e-3", 10**12), ("batch size 1000000000000", "60000 training examples")),
    (("1e-3", 2**62), ("batch size", "lower it to 60000")),
])
def test_learning_rate_and_batch_size_ranges_are_checked_at_plan(here, train, needles):
    (here / "range.toml").write_text(grid_text(here / "data", lr=train[0], batch=train[1]))
    refused(unchanged(here, lambda: invoke("plan", "range.toml", *DB, cwd=here)), 2, *needles)


@pytest.mark.parametrize("command", [["run", "--device", "cpu"], ["status"], ["export"]])
def test_an_unknown_study_names_the_studies_there(here, command):
    result = unchanged(here, lambda: invoke(*command, "--study", "nonexistent", *DB, cwd=here))
    refused(result, 2, "no study 'nonexistent'", "'corpus', 'points'")


# ---- files -------------------------------------------------------------------------


def _out_targets(here: Path) -> dict[str, Path]:
    (here / "a-file").write_text("x")
    (here / "a-folder").mkdir()
    return {"parent is a file": here / "a-file" / "out.csv", "existing folder": here / "a-folder",
            "/proc": Path("/proc/study-out/out.csv")}


@pytest.mark.parametrize("target", ["parent is a file", "existing folder", "/proc"])
def test_export_to_an_unwritable_place(here, target):
    out = _out_targets(here)[target]
    result = unchanged(here, lambda: invoke("export", *DB, "--out", out, cwd=here))
    refused(result, 2, "cannot write --out")


@pytest.mark.parametrize("target", ["parent is a file", "/proc"])
def test_fit_to_an_unwritable_place(here, target):
    out = _out_targets(here)[target]
    result = unchanged(here, lambda: invoke("fit", *DB, "--study", "points", "--bootstrap", "0", "--out", out, cwd=here))
    refused(result, 2, "cannot write --out")


@needs_root
def test_export_to_a_read_only_folder(here, tmp_path):
    with mounted(tmp_path / "ro", "1m") as ro:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        result = unchanged(here, lambda: invoke("export", *DB, "--out", ro / "out.csv", cwd=here))
        refused(result, 2, "cannot write --out", "read-only")


def test_import_of_a_binary_file(here):
    (here / "binary.csv").write_bytes(bytes(range(256)) * 8)
    refused(unchanged(here, lambda: invoke("import", "binary.csv", *DB, cwd=here)), 2, "binary.csv", "CSV text")


def test_import_of_params_beyond_int64_is_a_bad_row(here):
    (here / "huge.csv").write_text("model,params,flops_per_example,examples,epochs,error\nB-1/Wi-8,1e30,100,1000,1,0.5\n")
    result = unchanged(here, lambda: invoke("import", "huge.csv", *DB, cwd=here))
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert "huge.csv:2: params '1e30' is not a positive integer of at most 2**63 - 1" in lines[0]
    assert lines[1] == "error: 1 bad row(s) of 1 in huge.csv; nothing imported"


def test_submit_slurm_refuses_what_the_workers_could_not_use(here, monkeypatch):
    """Nothing is submitted, no log folder made: a SQLite path each compute node would resolve on its own,
    then (with an absolute one) no sbatch to submit with."""
    refused(unchanged(here, lambda: invoke("submit", "--slurm", *DB, cwd=here)), 2, "relative path",
            "nothing submitted")
    monkeypatch.setenv("PATH", str(here / "nowhere"))
    absolute = ("--db", f"sqlite:///{here / 'results.db'}")
    refused(unchanged(here, lambda: invoke("submit", "--slurm", *absolute, cwd=here)), 2, "no sbatch on PATH",
            "nothing submitted")
    refused(unchanged(here, lambda: invoke("submit", "--slurm", "--sbatch=--signal=USR1@9", *absolute, cwd=here)), 2,
            "--signal-delay")
