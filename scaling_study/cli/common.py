"""What every command shares: the app, the consoles, the --db option, the study a command is about,
and the wrapper that turns an error into one line and its exit code (errors.py says which)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Optional

import typer
from rich.console import Console, ConsoleDimensions
from rich.table import Table
from sqlalchemy import exc as sa_errors

from .. import db
from ..checks import printable
from ..errors import BadInput, StudyError

app = typer.Typer(
    help="Plan, run, resume and fit compute-scaling studies of MLPs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
PIPE_WIDTH = 400  # columns of output that is not a terminal: a table keeps its natural width, up to this


class StudyConsole(Console):
    """A console that, writing to a pipe or a file, is as wide as its tables need (up to PIPE_WIDTH)
    instead of the 80 columns (or the terminal's width) Rich would assume; COLUMNS still decides."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal and "COLUMNS" not in self._environ:
            return ConsoleDimensions(PIPE_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = StudyConsole(emoji=False, markup=False)  # user text (names, paths, cuda:O) is printed as it is
errors = StudyConsole(stderr=True, emoji=False, markup=False)


def wrapping_table(title: str, columns: list[str], left: set[str] = frozenset()) -> Table:
    """A table whose cells wrap (words broken when they must) rather than being cut with an ellipsis,
    however narrow the terminal: a reason is read whole. Columns in `left` are left-aligned, others right."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right", overflow="fold")
    return table

DbOption = Annotated[
    Optional[str],
    typer.Option("--db", help=f"SQLAlchemy URL of the results database [default: ${db.URL_VARIABLE} or {db.DEFAULT_URL}]"),
]


def user_errors(command: Callable) -> Callable:
    """Turn a StudyError into one line on stderr and its exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except StudyError as error:
            errors.print(f"error: {printable(error)}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except (OSError, sa_errors.SQLAlchemyError) as error:  # a fault no check foresaw: still one line, exit 1
            words = printable(getattr(error, "orig", None) or error).strip().splitlines()
            errors.print(f"error: {type(error).__name__}: {words[0] if words else ''}", markup=False,
                         highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def one_study(engine, study: str | None) -> str:  # noqa: ANN001 - an Engine
    """The study named, or the only one in the database."""
    names = db.study_names(engine)
    if study:
        if study not in names:
            raise BadInput(f"no study {study!r}; studies in the database: {', '.join(map(repr, names)) or 'none'}")
        return study
    if not names:
        raise BadInput("the database has no studies yet: `study plan GRID` or `study import FILE.csv` first")
    if len(names) > 1:
        raise BadInput(f"{len(names)} studies in the database; choose one with --study: {', '.join(names)}")
    return names[0]
