"""B-MLP and S-MLP from "Scaling MLPs" (Sec. 3, App. D), with exact parameter and FLOP counts.

FLOP(f) follows the paper's (and fvcore's) convention: one multiply-accumulate of a linear
layer is one FLOP; norms, activations and biases are not counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .errors import GridError

NAME_PATTERN = re.compile(r"^(?P<kind>[BS])-(?P<depth>\d+)/Wi-(?P<width>\d+)$")
KINDS = {"B": "bottleneck", "S": "standard"}


@dataclass(frozen=True)
class ModelSpec:
    """An architecture, independent of the data it is trained on."""

    kind: str  # "bottleneck" (B-MLP) or "standard" (S-MLP)
    depth: int
    width: int
    expansion: int = 4

    @property
    def name(self) -> str:
        """The paper's short name, e.g. B-12/Wi-1024 (expansion suffixed when not 4)."""
        base = f"{'B' if self.kind == 'bottleneck' else 'S'}-{self.depth}/Wi-{self.width}"
        if self.kind == "bottleneck" and self.expansion != 4:
            base += f"/x{self.expansion}"
        return base

    def parameters(self, input_dim: int, classes: int) -> int:
        """Exact trainable parameter count, biases and LayerNorm included."""
        m, k = self.width, self.expansion
        embed = input_dim * m + m
        if self.kind == "bottleneck":
            block = 2 * m + (m * k * m + k * m) + (k * m * m + m)
        else:
            block = 2 * m + m * m + m
        head = m * classes + classes
        return embed + self.depth * block + head

    def flops(self, input_dim: int, classes: int) -> int:
        """Forward multiply-accumulates for one example (the paper's FLOP(f))."""
        m, k = self.width, self.expansion
        block = 2 * k * m * m if self.kind == "bottleneck" else m * m
        return input_dim * m + self.depth * block + m * classes


def parse_model(value: object, where: str) -> ModelSpec:
    """A model from a grid entry: a name like 'B-6/Wi-256' or a table {kind, depth, width, expansion}."""
    if isinstance(value, str):
        match = NAME_PATTERN.match(value.strip())
        if not match:
            raise GridError(
                f"{where}: unknown model name {value!r}; valid names look like 'B-<depth>/Wi-<width>' "
                f"(inverted-bottleneck B-MLP) or 'S-<depth>/Wi-<width>' (standard S-MLP), e.g. B-6/Wi-256"
            )
        spec = ModelSpec(KINDS[match["kind"]], int(match["depth"]), int(match["width"]))
    elif isinstance(value, dict):
        allowed = {"kind", "depth", "width", "expansion"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise GridError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(allowed))}")
        kind = value.get("kind")
        aliases = {"bottleneck": "bottleneck", "B": "bottleneck", "B-MLP": "bottleneck",
                   "standard": "standard", "S": "standard", "S-MLP": "standard"}
        if kind not in aliases:
            raise GridError(f"{where}.kind: unknown kind {kind!r}; valid kinds: bottleneck, standard")
        fields = {}
        for key in ("depth", "width", "expansion"):
            if key not in value:
                if key == "expansion":
                    continue
                raise GridError(f"{where}.{key}: missing")
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, int):
                raise GridError(f"{where}.{key}: expected an integer, got {number!r}")
            fields[key] = number
        spec = ModelSpec(aliases[kind], **fields)
    else:
        raise GridError(f"{where}: expected a model name or a table, got {value!r}")
    for key in ("depth", "width", "expansion"):
        if getattr(spec, key) <= 0:
            raise GridError(f"{where}.{key}: must be positive, got {getattr(spec, key)}")
    return spec


class Block(nn.Module):
    """Pre-LN inverted bottleneck: z + W_c GELU(W_e LN(z))."""

    def __init__(self, width: int, expansion: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.expand = nn.Linear(width, expansion * width)
        self.act = nn.GELU()
        self.collapse = nn.Linear(expansion * width, width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.collapse(self.act(self.expand(self.norm(z))))


class StandardBlock(nn.Module):
    """Isotropic S-MLP block: ReLU(W LN(z))."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)
        self.act = nn.ReLU()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(self.norm(z)))


class MLP(nn.Module):
    """Flatten -> linear embedding -> blocks -> linear head; `features` is the probe's input."""

    def __init__(self, spec: ModelSpec, input_dim: int, classes: int):
        super().__init__()
        self.spec = spec
        self.embed = nn.Linear(input_dim, spec.width)
        if spec.kind == "bottleneck":
            blocks = [Block(spec.width, spec.expansion) for _ in range(spec.depth)]
        else:
            blocks = [StandardBlock(spec.width) for _ in range(spec.depth)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(spec.width, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen representation a linear probe reads (the body's output, before the head)."""
        return self.blocks(self.embed(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(spec: ModelSpec, input_dim: int, classes: int) -> MLP:
    """The torch module for `spec` on inputs of `input_dim` values and `classes` outputs."""
    return MLP(spec, input_dim, classes)
