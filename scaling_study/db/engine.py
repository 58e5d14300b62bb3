"""Opening a database: its URL, the SQLite settings, file checks, and the schema brought up to date."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import urllib.parse
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..errors import BadInput, DatabaseGone, Fault, StudyError
from .schema import apply_migrations, check_current

DEFAULT_URL = "sqlite:///results.db"
URL_VARIABLE = "STUDY_DB"
# A database server that is down, starting, stopping or full of clients: a fault, not a bad URL.
UNREACHABLE = ("Connection refused", "timeout expired", "server closed the connection", "is starting up",
               "is shutting down", "too many clients")
FULL_DISK_BYTES = 1 << 20  # below this much free space, a database that fails to open is on a full disk


def database_url(url: str | None = None) -> str:
    """The URL to use: --db, else $STUDY_DB, else sqlite:///results.db."""
    return url or os.environ.get(URL_VARIABLE) or DEFAULT_URL


def _sqlite_setup(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 60000")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _watch_file(engine: Engine, path: str) -> None:
    """Refuse every transaction once the file opened is gone or replaced (`rm results.db*` while a worker
    runs): SQLite would go on writing to the unlinked file, and every result would be lost unseen."""
    opened: list[tuple[int, int] | None] = []

    def check() -> None:
        if opened and _file_identity(path) != opened[0]:
            now = "was replaced by another file" if Path(path).exists() else "was deleted"
            raise DatabaseGone(f"the database {path} {now} while this command used it; stopped without writing "
                               "to it (what it recorded went with the file; checkpoints under the runs folder are "
                               "kept): restore the file, or plan again, then `study run --resume`")

    @sa.event.listens_for(engine, "do_connect")
    def _before_connect(_dialect, _record, _args, _kwargs):  # noqa: ANN001 - a new connection would recreate it
        check()

    @sa.event.listens_for(engine, "connect")
    def _remember(_dbapi_connection, _record):  # noqa: ANN001 - after the pragmas: the file exists
        if not opened:
            opened.append(_file_identity(path))

    @sa.event.listens_for(engine, "begin", insert=True)  # before BEGIN IMMEDIATE takes the lock
    def _still_there(_conn):  # noqa: ANN001
        check()


def _sqlite_file(engine: Engine) -> str | None:
    """The file of a SQLite engine, None for an in-memory one or another dialect."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    return None if not database or database == ":memory:" or database.startswith("file:") else database


def _check_sqlite_file(url: str, path: str, create: bool, write: bool) -> bool:
    """Refuse, before any work, a database file that is missing (for commands that only use existing
    jobs), not a file, or read-only (with its folder: SQLite writes its log beside it) for a command
    that writes; True when it is read-only and the command only reads."""
    file = Path(path)
    if not file.exists():
        if not create:
            raise BadInput(f"database {url} does not exist (no file {file}); check --db or ${URL_VARIABLE}, "
                           "or `study plan GRID` to create it")
        if not file.parent.is_dir():
            raise BadInput(f"cannot create database {url}: folder {file.parent} does not exist")
    elif not file.is_file():
        raise BadInput(f"database {url}: {file} is not a file")
    folder = file.parent if str(file.parent) else Path(".")
    writable = file.exists() and _writable(file)
    if write or not file.exists():
        if file.exists() and not writable:
            raise BadInput(f"database {url} is read-only ({file}); make it writable or copy it somewhere writable")
        if not os.access(folder, os.W_OK):
            raise BadInput(f"database {url} is in a read-only folder ({folder}; SQLite writes its log beside the "
                           "file); make the folder writable or copy the database somewhere writable")
    return file.exists() and not (writable and os.access(folder, os.W_OK))


def _writable(file: Path) -> bool:
    """Writable by this user and not marked read-only: root may write to any file, and a chmod 444 database
    is still one its owner said not to change."""
    return os.access(file, os.W_OK) and bool(file.stat().st_mode & 0o222)


def _read_only_engine(path: str) -> Engine:
    """SQLite opened read-only and immutable: a file on read-only media can be read, never changed."""
    uri = f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode=ro&immutable=1"
    engine = sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
                              future=True)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN")

    return engine


def connect(url: str | None = None, migrate: bool = True, create: bool = True, write: bool = True) -> Engine:
    """An engine for `url` with the schema migrated to the newest version.

    create=False: a SQLite file that does not exist is refused rather than made (commands that only
    read or change existing jobs); write=False: a read-only file is fine (commands that only read)."""
    url = database_url(url)
    try:
        engine = sa.create_engine(url, future=True)
    except (sa.exc.ArgumentError, ImportError, ModuleNotFoundError) as error:
        raise StudyError(f"cannot use database URL {_masked(url)!r}: {error}") from None
    read_only = False
    if engine.dialect.name == "sqlite":
        if path := _sqlite_file(engine):
            read_only = _check_sqlite_file(url, path, create, write)
            if not create:  # before the pragmas, which would already change another program's file
                _check_study_tables(_sqlite_tables(path, read_only), url)
        if read_only:
            engine = _read_only_engine(path)
        else:
            _sqlite_setup(engine)
            if path:
                _watch_file(engine, path)
    shown = _masked(url)
    path = _sqlite_file(engine)  # None for a read-only file: nothing is written to it
    new_file = path is not None and not Path(path).exists()
    try:
        if not create and engine.dialect.name != "sqlite":
            _check_study_tables(sa.inspect(engine).get_table_names(), shown)
        if read_only:
            check_current(engine, shown)
        elif migrate:
            apply_migrations(engine)
    except sa.exc.DatabaseError as error:
        if path and (line := _full_disk(path, error.orig)):
            if new_file:  # a database that never got its tables holds nothing: leave no half-made file
                engine.dispose()
                for leftover in ("", "-wal", "-shm", "-journal"):
                    Path(path + leftover).unlink(missing_ok=True)
            raise Fault(line) from None
        if isinstance(error, sa.exc.OperationalError):
            if any(words in str(error.orig) for words in UNREACHABLE):  # the server's state, not the URL: exit 1
                raise Fault(f"cannot reach database {shown!r}: {_first_line(error.orig)}; nothing was changed: "
                            "start the server (or wait for it), then run the command again") from None
            raise StudyError(f"cannot open database {shown!r}: {_first_line(error.orig)}") from None
        # e.g. random bytes, a text file, a truncated database
        if engine.dialect.name == "sqlite":
            raise BadInput(f"{_sqlite_file(engine) or url} is not a readable SQLite database ({error.orig}); "
                           "check --db") from None
        raise StudyError(f"cannot open database {shown!r}: {_first_line(error.orig)}") from None
    return engine


def _full_disk(path: str, error: BaseException) -> str:
    """A line for a SQLite file that cannot be opened because its disk is full, '' otherwise. SQLite
    says so only sometimes: opening a database in WAL mode on a full disk is a "disk I/O error"."""
    folder = Path(path).resolve().parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    if "disk is full" not in str(error) and free >= FULL_DISK_BYTES:
        return ""
    return (f"cannot open database {path}: the disk holding it ({folder}) is full, {free:,} bytes free ({error}); "
            "nothing recorded was changed: free space on that disk and run the command again")


def _first_line(error: BaseException) -> str:
    """A driver's message without its hints on further lines (the CLI prints one line)."""
    words = str(error).strip().splitlines()
    return words[0] if words else type(error).__name__


def _masked(url: str) -> str:
    """The URL as it may be printed: its password as ***."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _sqlite_tables(path: str, read_only: bool) -> list[str]:
    """The tables of a SQLite file, read without writing to it (on read-only media, as it is: immutable)."""
    uri = f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode=ro" + ("&immutable=1" if read_only else "")
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            return [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    except sqlite3.DatabaseError as error:
        if line := _full_disk(path, error):
            raise Fault(line) from None
        raise BadInput(f"{path} is not a readable SQLite database ({error}); check --db") from None


def _check_study_tables(tables: list[str], url: str) -> None:
    """A command that uses existing jobs needs a study database: it never adds its tables to another."""
    if "schema_migrations" not in tables:
        held = f"it holds {len(tables)} other table(s): {', '.join(tables[:5])}" if tables else "it is empty"
        raise BadInput(f"{url} is not a study database ({held}); check --db or ${URL_VARIABLE}, or "
                       "`study plan GRID` to create one")
