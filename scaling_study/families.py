"""Model families: the built-in B-/S-MLP, a small ResNet-style CNN and ViT, and any user callable.

A family is a callable `f(input_shape=(C, H, W), classes=K, **arguments) -> nn.Module`; a grid
names it (`cnn`, `vit`, `module:callable` importable from the grid's folder, or
`path/to/file.py:callable`) and gives each size as a table of arguments. The MLPs keep their own
exact formulas for parameters and FLOP(f); every other family is counted from its module:
parameters are the sum of numel, FLOP(f) is half of what torch's FlopCounterMode reports for one
example (the paper's convention: one multiply-accumulate is one FLOP).

The probe's features are what the module passes to its last nn.Linear (in registration order),
unless its class defines a `features(x)` method. torchvision is not used: its wheels are built
against one torch release each, and the pinned torch here is not theirs.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import models
from .errors import GridError

MLP_KINDS = tuple(models.KINDS.values())  # bottleneck, standard


def is_mlp(spec: models.ModelSpec) -> bool:
    return spec.kind in MLP_KINDS


# ---------------------------------------------------------------- built-in families


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input, then ReLU (ResNet's basic block, one width)."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def cnn(input_shape: tuple[int, int, int], classes: int, width: int = 32, depth: int = 2,
        stride: int = 1) -> nn.Module:
    """A small ResNet: a 3x3 stem of `width` channels (with `stride`), `depth` residual blocks at
    that width, global average pooling and a linear head."""
    channels, height, side = input_shape
    if min(width, depth, stride) < 1:
        raise ValueError("width, depth and stride must be positive")
    if stride > min(height, side):
        raise ValueError(f"stride {stride} is larger than the {height}x{side} input")
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        *[ResidualBlock(width) for _ in range(depth)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes),
    )


class Attention(nn.Module):
    """Multi-head self-attention written with matmuls, so that every product is counted."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) / math.sqrt(width // self.heads)).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, width))


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: attention and a 4x GELU MLP, each with a residual."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(width), Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patches embedded by a strided conv, learned positions, pre-LN blocks, mean-pooled tokens, a head."""

    def __init__(self, input_shape: tuple[int, int, int], classes: int, patch: int, width: int, depth: int,
                 heads: int):
        super().__init__()
        channels, height, side = input_shape
        if min(patch, width, depth, heads) < 1:
            raise ValueError("patch, width, depth and heads must be positive")
        if height % patch or side % patch:
            raise ValueError(f"patch {patch} does not divide the {height}x{side} input")
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.embed = nn.Conv2d(channels, width, patch, stride=patch)
        self.position = nn.Parameter(torch.randn(1, (height // patch) * (side // patch), width) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.blocks(tokens)).mean(1))


def vit(input_shape: tuple[int, int, int], classes: int, patch: int = 4, width: int = 64, depth: int = 2,
        heads: int = 4) -> nn.Module:
    """A small ViT: `patch` x `patch` patches, `depth` blocks of `width` with `heads` heads."""
    return ViT(input_shape, classes, patch, width, depth, heads)


BUILTIN: dict[str, Callable[..., nn.Module]] = {"cnn": cnn, "vit": vit}


# ---------------------------------------------------------------- user families


def load(family: str, folder: str = "") -> Callable[..., nn.Module]:
    """The callable a family names: built in, `module:callable` (importable, or found in `folder`) or
    `file.py:callable` (relative to `folder`). Raises ValueError with the reason."""
    if family in BUILTIN:
        return BUILTIN[family]
    module_name, _, attribute = family.rpartition(":")
    if not module_name or not attribute:
        raise ValueError(f"unknown family {family!r}: built in are mlp, {', '.join(BUILTIN)}; "
                         "any other is 'module:callable' or 'file.py:callable'")
    try:
        if module_name.endswith(".py"):
            file = Path(folder or ".", module_name)
            if not file.is_file():
                raise ValueError(f"no file {file}")
            module_id = f"scaling_study_family_{abs(hash(str(file.resolve())))}"
            module = sys.modules.get(module_id)
            if module is None:
                spec = importlib.util.spec_from_file_location(module_id, file)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[module_id] = module
        else:
            if folder and folder not in sys.path:
                sys.path.insert(0, folder)
            module = importlib.import_module(module_name)
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of user code is reported, not raised
        raise ValueError(f"cannot import {module_name!r}: {type(error).__name__}: {error}") from None
    fn = getattr(module, attribute, None)
    if not callable(fn):
        raise TypeError(f"{module_name!r} has no callable {attribute!r}")
    return fn


def arguments(spec: models.ModelSpec) -> dict:
    return json.loads(spec.arguments or "{}")


def build(spec: models.ModelSpec, channels: int, resolution: int, classes: int, pad_classes_to: int = 1) -> nn.Module:
    """The module of `spec` for (channels, resolution, resolution) inputs and `classes` outputs;
    `pad_classes_to` concerns the MLP's head only."""
    if is_mlp(spec):
        return models.build(spec, channels * resolution**2, classes, pad_classes_to)
    module = load(spec.kind, spec.path)(input_shape=(channels, resolution, resolution), classes=classes,
                                        **arguments(spec))
    if not isinstance(module, nn.Module):
        raise TypeError(f"returned {type(module).__name__}, not a torch.nn.Module")
    return module


def module_counts(module: nn.Module, channels: int, resolution: int) -> tuple[int, int]:
    """(parameters, FLOP(f)) of a module: the sum of numel, and half of FlopCounterMode's count
    for one example in evaluation mode."""
    params = sum(p.numel() for p in module.parameters())
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, channels, resolution, resolution))
    finally:
        module.train(was_training)
    return params, counter.get_total_flops() // 2


@functools.lru_cache(maxsize=256)
def counts(spec: models.ModelSpec, channels: int, resolution: int, classes: int) -> tuple[int, int]:
    """(parameters, FLOP(f)): the MLPs' exact formulas, else counted from the module."""
    if is_mlp(spec):
        input_dim = channels * resolution**2
        return spec.parameters(input_dim, classes), spec.flops(input_dim, classes)
    with torch.random.fork_rng(devices=[]):
        return module_counts(build(spec, channels, resolution, classes), channels, resolution)


@functools.lru_cache(maxsize=256)
def train_flops(spec: models.ModelSpec, channels: int, resolution: int, classes: int) -> float:
    """FLOPs (2 per multiply-accumulate) of one training step on one example: FlopCounterMode over
    the forward and backward."""
    with torch.random.fork_rng(devices=[]):
        module = build(spec, channels, resolution, classes)
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros(2, channels, resolution, resolution)).sum().backward()
    return counter.get_total_flops() / 2


def check(spec: models.ModelSpec, where: str, channels: int, resolution: int, classes: int) -> None:
    """Build the family's size and run one example through it: a GridError naming `where` when it
    cannot be imported, raises, returns no Module, does not fit the input or gives the wrong outputs."""
    if is_mlp(spec):
        return
    try:
        with torch.random.fork_rng(devices=[]):
            module = build(spec, channels, resolution, classes)
    except Exception as error:  # noqa: BLE001 - user code: any failure is the grid's problem
        raise GridError(f"{where}: family {spec.kind!r} size {spec.size!r} cannot be built: "
                        f"{type(error).__name__}: {error}") from None
    shape = (channels, resolution, resolution)
    if last_linear(module) is None and not has_features(module):
        raise GridError(f"{where}: family {spec.kind!r} size {spec.size!r} has no nn.Linear and no features() "
                        "method: the probe has no features to read")
    try:
        module.eval()
        with torch.no_grad():
            out = module(torch.zeros(2, *shape))
    except Exception as error:  # noqa: BLE001
        raise GridError(f"{where}: family {spec.kind!r} size {spec.size!r} does not take a {channels}x{resolution}x"
                        f"{resolution} input: {type(error).__name__}: {error}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise GridError(f"{where}: family {spec.kind!r} size {spec.size!r} gives outputs of shape {got} for 2 "
                        f"examples; expected (2, {classes}), one logit per class")


# ---------------------------------------------------------------- features and heads of any family


def has_features(model: nn.Module) -> bool:
    """The model's class defines a features(x) method (a submodule named `features` does not count)."""
    return inspect.isfunction(getattr(type(model), "features", None))


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The last nn.Linear in registration order: the head whose input is the probe's features."""
    return next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)


def feature_width(model: nn.Module) -> int:
    """Width of the features (the last linear layer's fan-in)."""
    return last_linear(model).in_features


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The frozen representation a probe reads: model.features(x), else the input of its last linear layer."""
    if has_features(model):
        return model.features(x)
    return features_and_logits(model, x)[0]


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (see `features`) and logits of one batch in one forward where the model allows it."""
    if has_features(model) and isinstance(getattr(model, "head", None), nn.Linear):
        body = model.features(x)
        return body, model.head(body)
    if has_features(model):
        return model.features(x), model(x)
    seen: list[torch.Tensor] = []
    hook = last_linear(model).register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return seen[-1], logits


def replace_head(model: nn.Module, head: nn.Linear) -> None:
    """Put `head` where the model's last linear layer is (for fine-tuning on other classes)."""
    old = last_linear(model)
    for owner in model.modules():
        for name, child in owner.named_children():
            if child is old:
                setattr(owner, name, head)
                return
