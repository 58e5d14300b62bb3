"""`study data prepare` and `study evaluate`: datasets converted once, checkpoints scored on them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..checks import output_problem
from ..errors import BadInput
from .common import app, console, user_errors


@app.command("evaluate")
@user_errors
def evaluate_checkpoint(
    checkpoint: Annotated[Path, typer.Argument(help="A state dict in the reference code's layout (the paper's "
                                               "released weights) or ours, or a job's checkpoint.pt")],
    model: Annotated[str, typer.Option(help="Its architecture, e.g. B-12/Wi-1024 (S-L/Wi-m/ref: the reference S-MLP)")],
    downstream: Annotated[list[str], typer.Option(help="DATASET=PATH to evaluate on, e.g. cifar100=data/cifar100-64 (repeat for more)")],
    protocol: Annotated[str, typer.Option(help="linear (probe) or finetune")] = "linear",
    probe: Annotated[str, typer.Option(help="paper (LION), fast (L-BFGS) or reference (its code's SGD on crops)")] = "paper",
    probe_epochs: Annotated[int, typer.Option(min=1)] = 50,
    probe_lr: Annotated[float, typer.Option(min=0.0, help="LION lr of the paper probe")] = 1e-5,
    probe_batch_size: Annotated[int, typer.Option(min=1)] = 4096,
    probe_examples: Annotated[int, typer.Option(min=0, help="Probe on a class-stratified subset of this many (0: all)")] = 0,
    finetune_epochs: Annotated[int, typer.Option(min=1)] = 50,
    tta_crops: Annotated[int, typer.Option(min=0, help="Test-time crops averaged (the paper: 100)")] = 0,
    label_smoothing: Annotated[float, typer.Option(min=0.0)] = 0.3,
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA), fp32, bf16, fp16")] = "auto",
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda, cuda:1, ...")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the probe's or fine-tuning's order and head")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the metrics to this JSON file")] = None,
) -> None:
    """Score a checkpoint (e.g. the paper's released weights) with any of our evaluation protocols."""
    from .. import reference
    from ..grid import DownstreamData, EvaluationConfig
    from ..models import parse_model
    from ..runner import resolve_device

    reference.check_choices(protocol, probe, precision)
    if json_out is not None and (problem := output_problem(json_out)):  # before the evaluation, not after it
        raise BadInput(f"cannot write --json {json_out}: {problem}")
    sets = []
    for item in downstream:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise BadInput(f"--downstream {item!r}: expected DATASET=PATH, e.g. cifar100=data/cifar100-64")
        sets.append(DownstreamData(name, path, protocol))
    spec = parse_model(model, "--model")
    evaluation = EvaluationConfig(probe=probe, probe_epochs=probe_epochs, probe_lr=probe_lr,
                                  probe_batch_size=probe_batch_size, probe_examples=probe_examples,
                                  finetune_epochs=finetune_epochs, tta_crops=tta_crops)
    channels = reference.input_channels(sets)
    module, layout = reference.load_state_dict(checkpoint, spec, channels)
    console.print(f"loaded {spec.name} from {checkpoint} ({layout} layout): "
                  f"{reference.parameter_count(module) / 1e6:,.2f}M parameters, "
                  f"{module.head.out_features} classes, {module.embed.in_features} inputs", markup=False,
                  highlight=False, soft_wrap=True)
    metrics = reference.evaluate_checkpoint(module, spec, sets, evaluation, device=str(resolve_device(device)),
                                            precision=precision, label_smoothing=label_smoothing, seed=seed)
    table = Table(title=f"{spec.name}: {protocol}" + (f" ({probe} probe)" if protocol == "linear" else ""))
    table.add_column("metric")
    table.add_column("error", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    if json_out is not None:
        reference.write_metrics(json_out, checkpoint, spec, layout, evaluation, metrics)
        console.print(f"wrote {json_out}", markup=False, highlight=False)


data_app = typer.Typer(help="Convert raw datasets into prepared stores.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
@user_errors
def data_prepare(
    source: Annotated[Path, typer.Argument(help="Raw dataset directory (IDX, CIFAR batches, .npz, STL-10, folders)")],
    out: Annotated[Path, typer.Option("--out", help="Store directory to write")],
    fmt: Annotated[str, typer.Option("--format", help="auto, idx, cifar, npz, stl10, tiny-imagenet, folders")] = "auto",
    resolution: Annotated[int, typer.Option(min=0, help="Side length to resize to [default: native]")] = 0,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset name for the store [default: from the files]")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Decoding threads [default: CPU count]")] = 0,
    chunk_size: Annotated[int, typer.Option(min=0, help="Images per chunk between progress saves [default: auto]")] = 0,
    beton: Annotated[bool, typer.Option("--beton", help="Also write FFCV .beton files (needs the ffcv extra)")] = False,
    resize: Annotated[str, typer.Option("--resize", help="squash: each image whole to R x R (Chrabaszcz et al.); "
                                        "keep-aspect: longest side R, as the paper's code")] = "squash",
) -> None:
    """Convert a dataset once into a memory-mappable uint8 store; an interrupted run resumes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..store import prepare

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def report(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = progress.add_task(f"{split} images", total=total)
            progress.update(tasks[split], completed=done)

        result = prepare(source, out, fmt, resolution, dataset or "", workers, chunk_size, progress=report, beton=beton,
                         resize=resize)
    meta = result.meta
    counts = ", ".join(f"{meta['splits'][s]['count']:,} {s}" for s in meta["splits"])
    state = "already prepared" if result.already else "resumed and prepared" if result.resumed else "prepared"
    console.print(
        f"{state} {meta['dataset']} ({counts} images, {len(meta['classes'])} classes, {meta['channels']} channel(s), "
        f"{meta['resolution']}px{', keep-aspect' if meta.get('resize') == 'keep-aspect' else ''}) in {out}; "
        f"{meta['skipped_count']} unreadable file(s) skipped",
        markup=False, highlight=False, soft_wrap=True,
    )
