"""`study plan`, `study bench` and `study init`: what a grid's jobs cost, and how fast this machine runs them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import db
from ..formatting import hours as hours_text
from ..formatting import pflops
from .common import DbOption, app, console, errors, user_errors


def count_text(count: int) -> str:
    """A count in millions to two decimals; below 10,000 (0.00M would say nothing) the number itself."""
    return f"{count:,}" if count < 10_000 else f"{count / 1e6:,.2f}M"


@app.command()
@user_errors
def plan(
    grid_file: Annotated[Path, typer.Argument(help="Grid TOML file, e.g. grids/cifar100.toml")],
    db_url: DbOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan without writing to the database")] = False,
    on: Annotated[Optional[str], typer.Option("--on", help="Hours from `study bench` figures of the device whose name contains this, e.g. H200 [default: the device measured last]")] = None,
) -> None:
    """Expand a grid into jobs in the database and print what it will cost."""
    from ..grid import load_grid  # here, not at the top: grids import torch (models), which the
    from ..plan import estimated_hours, expand, summarize  # commands that only read the database do not need

    grid = load_grid(grid_file)
    specs = expand(grid)
    summary = summarize(specs)
    engine = None if dry_run else db.connect(db_url)
    first = specs[0]
    measured, devices = (db.latest_calibrations(engine, first.resolution, first.channels, grid.train.batch_size, on)
                         if engine else ({}, []))
    needed = estimated_hours(specs, measured)  # one device: see latest_calibrations
    device, estimate = needed.device, needed.complete
    table = Table(title=f"study {grid.study.name!r}: {grid.pretrain.dataset} at {first.resolution}px")
    columns = ["model", "params", "FLOP(f)", "jobs", "eval points", "PFLOPs (naive)", "PFLOPs (run)"]
    for column in columns + (["hours"] if estimate else []):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
    for row in summary.rows:
        table.add_row(
            row.name, count_text(row.params), count_text(row.flops), str(row.jobs), str(row.points),
            pflops(row.naive_compute), pflops(row.compute), *([hours_text(needed.per_model[row.name])] if estimate else []),
        )
    table.add_row(
        "total", "", "", str(summary.jobs), str(summary.points),
        pflops(summary.naive_compute), pflops(summary.compute),
        *([hours_text(needed.total)] if estimate else []), style="bold",
    )
    console.print(table)
    saved = 1 - summary.compute / summary.naive_compute
    console.print(
        f"{summary.jobs} trajectories, {summary.points} evaluation points, "
        f"{pflops(summary.compute)} PFLOPs to run ({pflops(summary.naive_compute)} PFLOPs if every "
        f"epoch count were its own run; shared trajectories save {saved:.0%}). "
        "Compute per Eq. 4, C = FLOP(f)*3*N*T, one multiply-accumulate = one FLOP."
    )
    if estimate:
        if others := [name for name in devices if name != device]:
            console.print(f"also measured on {'; '.join(others)} (`--on` picks one)", markup=False, highlight=False)
        if not needed.evaluation_unmeasured:
            console.print(f"estimated {hours_text(needed.total)} hours on {device} (study bench): "
                          f"{hours_text(needed.training_total)} of training and {hours_text(needed.evaluation_total)} of "
                          f"evaluation at {summary.points} points")
        else:
            missing = ", ".join(needed.evaluation_unmeasured)
            what = "of training" if not needed.evaluation else "of training and some evaluation"
            console.print(f"estimated {hours_text(needed.total)} hours {what} on {device} (study bench); "
                          f"evaluation not measured for {missing} (`study bench` on a machine with the grid's data)")
    elif engine is not None:
        missing = ", ".join(needed.unmeasured)
        if on is not None and not measured and devices:
            why = f"no device measured at this resolution and batch size matches --on {on!r} ({'; '.join(devices)})"
        elif not needed.train:
            why = f"`study bench {grid_file}` measures this machine's speed first"
        else:
            where = f" on {device}" if len(devices) > 1 else ""
            why = f"{missing} not measured at this resolution and batch size{where} (`study bench {grid_file}`)"
        console.print(f"no hours yet: {why}", markup=False, highlight=False)
    from ..checks import missing_data

    for where, path in missing_data(specs[:1] or ()):
        errors.print(f"warning: no data at {path} ({where}) on this machine; planned anyway, for a machine that "
                     "has it: `study run` there (here it refuses to start until the path exists)", soft_wrap=True)
    if engine is None:
        return
    added, existing = db.add_jobs(engine, grid.study.name, str(grid_file), grid.text, specs)
    console.print(f"added {added} jobs ({existing} already planned) to {engine.url.render_as_string(hide_password=True)}")
    engine.dispose()  # close now: SQLite folds its write-ahead log into the file before we return


@app.command()
@user_errors
def bench(
    grid_file: Annotated[Path, typer.Argument(help="Grid TOML file whose models are measured")],
    models: Annotated[Optional[list[str]], typer.Option("--models", help="Only this model of the grid (repeat, or comma-separate, for more)")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda, cuda:1, ...")] = "auto",
    steps: Annotated[int, typer.Option(min=1, help="Training steps timed per model, after 3 warm-up steps")] = 10,
    evaluation: Annotated[bool, typer.Option(help="Also time one evaluation point on the grid's data")] = True,
    db_url: DbOption = None,
) -> None:
    """Measure each model's training img/s, MFU, loader img/s, peak memory and evaluation time here;
    `study plan` then gives hours."""
    from .. import bench as benchmark
    from ..grid import load_grid
    from ..runner import resolve_device

    grid = load_grid(grid_file)
    names = [name.strip() for value in models or () for name in value.split(",") if name.strip()]
    specs = benchmark.model_specs(grid, names or None)
    dev = resolve_device(device)
    engine = db.connect(db_url)
    first = specs[0]
    table = Table(title=f"{grid.pretrain.dataset} at {first.resolution}px x {first.channels}, "
                        f"batch {grid.train.batch_size}, {benchmark.resolved_precision(grid.train.precision, dev)}")
    for column in ("model", "train img/s", "loader img/s", "train TFLOP/s", "GEMM TFLOP/s", "MFU", "peak memory",
                   "eval s/point"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
    unmeasured = ""
    for spec in specs:  # stored one by one: an interrupted bench keeps what it measured
        m = benchmark.measure(spec, dev, steps, evaluation=evaluation)
        db.add_calibration(engine, **m.row())
        table.add_row(m.model, f"{m.images_per_s:,.0f}", f"{m.loader_images_per_s:,.0f}",
                      f"{m.train_flops_per_s / 1e12:.3g}", f"{m.gemm_flops_per_s / 1e12:.3g}", f"{m.mfu:.0%}",
                      f"{m.peak_memory_bytes / 2**20:,.0f} MiB", "-" if m.evaluation_s is None else f"{m.evaluation_s:.3g}")
        if m.evaluation_s is None:
            unmeasured = m.details["evaluation"]
    console.print(table)
    if unmeasured:
        console.print(f"evaluation {unmeasured}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"stored {len(specs)} calibrations for {m.device} in "
                  f"{engine.url.render_as_string(hide_password=True)}; `study plan {grid_file}` now prints hours",
                  markup=False, highlight=False, soft_wrap=True)
    engine.dispose()


@app.command("init")
@user_errors
def init_grid(
    store: Annotated[Path, typer.Argument(help="A prepared store (`study data prepare SOURCE --out STORE`)")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Grid file to write [default: <dataset>.toml]")] = None,
    name: Annotated[str, typer.Option("--name", help="The study's name [default: the store's dataset]")] = "",
) -> None:
    """Write a commented starter grid for your own prepared dataset, sized to it."""
    from ..starter import read_store, starter_grid

    out = out or Path(f"{name or read_store(store)['dataset']}.toml")
    s = starter_grid(store, out, name)
    console.print(f"wrote {out}: {len(s.models)} models ({s.models[0]} to {s.models[-1]}) x {len(s.examples)} subsets "
                  f"({s.examples[0]:,} to {s.examples[-1]:,} images) x epochs {list(s.epochs)}, batch {s.batch_size}; "
                  f"next: `study plan {out} --dry-run`", markup=False, highlight=False, soft_wrap=True)
