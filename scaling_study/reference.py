"""Checkpoints of the paper's own code (gregorbachmann/scaling_mlps) and of ours, evaluated with our protocols.

The reference code names a B-MLP's parameters `linear_in`, `blocks.i.block.0` (expansion),
`blocks.i.block.2` (collapse), `layernorms.i` and `linear_out`, and its StandardMLP's
`linear_in`, `layers.i`, `layernorms.i` and `linear_out`; the modules compute what ours do.
`load_state_dict` maps such a state dict onto our module (or takes one in our own layout, or
our training checkpoint) and refuses any mismatch, naming the first differing key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from torch import nn

from . import data, evaluate
from .errors import BadInput, StudyError
from .files import write_atomic
from .grid import PRECISIONS, PROBES, PROTOCOLS, DownstreamData, EvaluationConfig, PretrainData, TrainConfig
from .models import ModelSpec, build
from .plan import JobSpec


class CheckpointMismatch(StudyError):
    """A checkpoint that does not fit the architecture it was given."""


def reference_names(spec: ModelSpec) -> dict[str, str]:
    """Our parameter name -> the reference code's, in the reference module's own order."""
    names = {"embed.weight": "linear_in.weight", "embed.bias": "linear_in.bias",
             "head.weight": "linear_out.weight", "head.bias": "linear_out.bias"}
    if spec.kind == "bottleneck":
        parts = [("expand", "blocks.{i}.block.0"), ("collapse", "blocks.{i}.block.2"), ("norm", "layernorms.{i}")]
    elif spec.variant == "reference":
        parts = [("linear", "layers.{i}"), ("norm", "layernorms.{i}")]
    else:
        raise CheckpointMismatch(f"{spec.name} is the paper's S-MLP, which the reference code does not have; "
                         f"its StandardMLP is {spec.name}/ref")
    # The reference registers each kind of layer as one list (all blocks, then all norms).
    for ours, theirs in parts:
        for i in range(spec.hidden_layers):
            for p in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{p}"] = f"{theirs.format(i=i)}.{p}"
    return names


def to_reference_layout(state: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Our state dict renamed to the reference code's layout (its order), e.g. to hand a model back."""
    return {theirs: state[ours] for ours, theirs in reference_names(spec).items()}


def _read(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file, or of our training checkpoint's model."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StudyError(f"{path}: no such checkpoint") from None
    except Exception as error:  # a truncated or foreign file: say which, in one line
        raise StudyError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}".splitlines()[0]) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "spec" in state:
        state = state["model"]  # a scaling-study training checkpoint
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StudyError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def load_state_dict(path: Path, spec: ModelSpec, channels: int) -> tuple[nn.Module, str]:
    """Our module for `spec` with the checkpoint's weights, and the layout it was in ('reference' or 'ours').

    The input size and class count come from the checkpoint's embedding and head; every key and
    shape must match the model, else a StudyError names the first key that differs.
    """
    state = _read(path)
    if "linear_in.weight" in state:
        layout, names = "reference", reference_names(spec)
    elif "embed.weight" in state:
        layout, names = "ours", {key: key for key in build(spec, 1, 1).state_dict()}
    else:
        raise CheckpointMismatch(f"{path}: neither the reference code's layout (linear_in, blocks, layernorms, linear_out) "
                         f"nor ours (embed, blocks, head); first key {next(iter(state))!r}")
    head = names["head.weight"]
    if head not in state:
        raise CheckpointMismatch(f"{path}: key {head!r} missing, the model {spec.name} has it")
    classes = state[head].shape[0]
    input_dim = state[names["embed.weight"]].shape[1]
    resolution = math.isqrt(input_dim // channels)
    if channels * resolution**2 != input_dim:
        raise CheckpointMismatch(f"{path}: the embedding reads {input_dim} values, not {channels} channel(s) of a square image")
    model = build(spec, input_dim, classes)
    wanted = {theirs: model.state_dict()[ours] for ours, theirs in names.items()}
    for key in [*state, *(k for k in wanted if k not in state)]:  # the checkpoint's order, then what it lacks
        if key not in wanted:
            raise CheckpointMismatch(f"{path}: key {key!r} is not in the model {spec.name} ({layout} layout); "
                             f"check --model")
        if key not in state:
            raise CheckpointMismatch(f"{path}: key {key!r} missing, the model {spec.name} has it; check --model")
        if tuple(state[key].shape) != tuple(wanted[key].shape):
            raise CheckpointMismatch(f"{path}: key {key!r} has shape {tuple(state[key].shape)}, the model {spec.name} "
                             f"{tuple(wanted[key].shape)}; check --model")
    model.load_state_dict({ours: state[theirs] for ours, theirs in names.items()})
    return model.eval(), layout


def input_channels(downstream: list[DownstreamData]) -> int:
    """The channel count of the downstream sets' images (the checkpoint's input is read with it)."""
    counts = {}
    for ds in downstream:
        split = data.load_split(ds.dataset, ds.path, "test", evaluate._native_resolution(ds.dataset))
        counts[ds.dataset] = len(split.mean)
    if len(set(counts.values())) != 1:
        raise StudyError(f"downstream datasets differ in channels: {counts}")
    return next(iter(counts.values()))


def evaluate_checkpoint(model: nn.Module, spec: ModelSpec, downstream: list[DownstreamData],
                        evaluation: EvaluationConfig, *, device: str, precision: str = "auto",
                        label_smoothing: float = 0.3, seed: int = 0) -> dict[str, float]:
    """Every metric of `evaluation` on `downstream` for a loaded model, as a training job would score it
    (metric name -> error; no upstream metric: the checkpoint's pre-training data is not known here)."""
    input_dim, classes = model.embed.in_features, model.head.out_features
    channels = input_channels(downstream)
    job = JobSpec(
        model=spec, pretrain=PretrainData(dataset="checkpoint"), resolution=math.isqrt(input_dim // channels),
        channels=channels, classes=classes, examples=0, subset_seed=0, seed=seed, epochs=(0,),
        train=TrainConfig(precision=precision, label_smoothing=label_smoothing), downstream=tuple(downstream),
        evaluation=dataclasses.replace(evaluation, upstream=False),
    )
    dev = torch.device(device)
    return evaluate.evaluate(model.to(dev), job, dev, 0)


def check_choices(protocol: str, probe: str, precision: str) -> None:
    """--protocol, --probe and --precision name ones the evaluation knows; found before any work."""
    for value, valid, name in ((protocol, PROTOCOLS, "--protocol"), (probe, PROBES, "--probe"),
                               (precision, PRECISIONS, "--precision")):
        if value not in valid:
            raise BadInput(f"unknown {name} {value!r}; valid choices: {', '.join(valid)}")


def parameter_count(model: nn.Module) -> int:
    """How many numbers the model holds."""
    return sum(p.numel() for p in model.parameters())


def write_metrics(path: Path, checkpoint: Path, spec: ModelSpec, layout: str, evaluation: EvaluationConfig,
                  metrics: dict[str, float]) -> Path:
    """A scored checkpoint's metrics as JSON, with what was scored and how."""
    text = json.dumps({"checkpoint": str(checkpoint), "model": spec.name, "layout": layout,
                       "evaluation": dataclasses.asdict(evaluation), "metrics": metrics}, indent=1)
    return write_atomic(Path(path), lambda temp: temp.write_text(text))
