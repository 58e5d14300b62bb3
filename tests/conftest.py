"""Shared fixtures: a real SQLite file per test and the CLI driven through Typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaling_study.cli import app

ROOT = Path(__file__).resolve().parent.parent
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session", autouse=True)
def own_worker_registry(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Workers of this test session count only each other when they share the cores, so a second
    test session on the same machine does not change their thread counts (and their numbers)."""
    import os

    os.environ["STUDY_WORKERS_DIR"] = str(tmp_path_factory.mktemp("workers"))


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite database file in the test's temp dir."""
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def cli():
    """Invoke `study ...` in-process; returns the click Result."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on a Unix socket of its own, started for the test session.

    Debian's `postgresql` package provides the binaries (scripts/setup.sh installs it); the server
    refuses to run as root, so as root it runs as the `postgres` user.
    """
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    bin_dir = _postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries missing: scripts/setup.sh installs Debian's postgresql")
        pytest.skip("PostgreSQL binaries missing: apt-get install postgresql")
    folder = Path(tempfile.mkdtemp(prefix="study-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    run = lambda *cmd: subprocess.run(as_user + list(cmd), check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
        f"-k {folder} -p {port} -c listen_addresses='' -c fsync=off", "start")
    databases = iter(range(10**6))

    def new_database() -> str:
        name = f"study{next(databases)}"
        run(str(bin_dir / "createdb"), "-h", str(folder), "-p", str(port), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@/{name}?host={folder}&port={port}"

    try:
        yield new_database
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's PostgreSQL server: no test sees another's jobs."""
    return postgres_server()
