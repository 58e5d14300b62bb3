"""The `study` command line: the only module that knows the CLI. It parses, calls and prints."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import budget, db
from .errors import StudyError
from .grid import load_grid
from .plan import expand, summarize

app = typer.Typer(
    help="Plan, run, resume and fit compute-scaling studies of MLPs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

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
            errors.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None

    return wrapper


def _pflops(value: float) -> str:
    return f"{value / budget.PFLOP:,.3g}"


@app.command()
@user_errors
def plan(
    grid_file: Annotated[Path, typer.Argument(help="Grid TOML file, e.g. grids/cifar100.toml")],
    db_url: DbOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan without writing to the database")] = False,
) -> None:
    """Expand a grid into jobs in the database and print what it will cost."""
    grid = load_grid(grid_file)
    specs = expand(grid)
    summary = summarize(specs)
    table = Table(title=f"study {grid.study.name!r}: {grid.pretrain.dataset} at {specs[0].resolution}px")
    for column in ("model", "params", "FLOP(f)", "jobs", "eval points", "PFLOPs (naive)", "PFLOPs (run)"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
    for row in summary.rows:
        table.add_row(
            row.name, f"{row.params / 1e6:,.2f}M", f"{row.flops / 1e6:,.2f}M", str(row.jobs), str(row.points),
            _pflops(row.naive_compute), _pflops(row.compute),
        )
    table.add_row(
        "total", "", "", str(summary.jobs), str(summary.points),
        _pflops(summary.naive_compute), _pflops(summary.compute), style="bold",
    )
    console.print(table)
    saved = 1 - summary.compute / summary.naive_compute
    console.print(
        f"{summary.jobs} trajectories, {summary.points} evaluation points, "
        f"{_pflops(summary.compute)} PFLOPs to run ({_pflops(summary.naive_compute)} PFLOPs if every "
        f"epoch count were its own run; shared trajectories save {saved:.0%}). "
        "Compute per Eq. 4, C = FLOP(f)*3*N*T, one multiply-accumulate = one FLOP."
    )
    if dry_run:
        return
    engine = db.connect(db_url)
    added, existing = db.add_jobs(engine, grid.study.name, str(grid_file), grid.text, specs)
    console.print(f"added {added} jobs ({existing} already planned) to {engine.url.render_as_string(hide_password=True)}")


@app.command()
@user_errors
def status(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Only this study")] = None,
) -> None:
    """Jobs by state, per study."""
    engine = db.connect(db_url)
    counts = db.job_counts(engine, study)
    if not counts:
        console.print("no jobs planned yet: run `study plan GRID` first")
        return
    table = Table(title="jobs by state")
    table.add_column("study")
    for state in db.JOB_STATES:
        table.add_column(state, justify="right")
    for name, by_state in counts.items():
        table.add_row(name, *(str(by_state.get(state, 0)) for state in db.JOB_STATES))
    console.print(table)


def main() -> None:  # pragma: no cover - console entry for `python -m scaling_study`
    app(prog_name="study")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
