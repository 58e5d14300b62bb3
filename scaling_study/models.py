"""B-MLP and S-MLP from "Scaling MLPs" (Sec. 3, App. D), with exact parameter and FLOP counts.

FLOP(f) follows the paper's convention: one multiply-accumulate of a linear layer is one FLOP;
norms, activations and biases are not counted. fvcore 0.1.5, which the reference code counts
with, adds 5 FLOPs per LayerNorm element (`norm_flops`): 0.04-0.13% more for Table 3's models.

The S-MLP comes in two variants: `paper` (the paper's equation, L blocks ReLU(W LN(z))) and
`reference` (the reference code's StandardMLP: L-1 hidden layers Linear(GELU(LN(z)))).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GridError

NAME_PATTERN = re.compile(r"^(?P<kind>[BS])-(?P<depth>\d+)/Wi-(?P<width>\d+)(?P<ref>/ref)?$")
KINDS = {"B": "bottleneck", "S": "standard"}
VARIANTS = ("paper", "reference")  # of the S-MLP; a B-MLP is the same in the paper and its code
LAYER_NORM_FLOPS = 5  # fvcore's count per LayerNorm element with an affine transform


@dataclass(frozen=True)
class ModelSpec:
    """An architecture, independent of the data it is trained on."""

    kind: str  # "bottleneck" (B-MLP), "standard" (S-MLP), or another family (families.py): cnn, vit, module:callable
    depth: int = 0
    width: int = 0
    expansion: int = 4
    variant: str = "paper"  # S-MLP only: "paper" (the paper's blocks) or "reference" (its code's StandardMLP)
    size: str = ""  # another family: the size's short name
    arguments: str = ""  # another family: its keyword arguments, as canonical JSON
    path: str = ""  # a user family: the grid's folder, where its module is looked for (machine-local)

    @property
    def name(self) -> str:
        """The paper's short name, e.g. B-12/Wi-1024 (expansion suffixed when not 4, /ref for the
        reference code's S-MLP); another family's size name."""
        if self.size:
            return self.size
        base = f"{'B' if self.kind == 'bottleneck' else 'S'}-{self.depth}/Wi-{self.width}"
        if self.kind == "bottleneck" and self.expansion != 4:
            base += f"/x{self.expansion}"
        if self.variant == "reference":
            base += "/ref"
        return base

    @property
    def hidden_layers(self) -> int:
        """Blocks between the embedding and the head: depth, or depth - 1 for the reference S-MLP."""
        return self.depth - 1 if self.variant == "reference" else self.depth

    def parameters(self, input_dim: int, classes: int) -> int:
        """Exact trainable parameter count, biases and LayerNorm included."""
        m, k = self.width, self.expansion
        embed = input_dim * m + m
        if self.kind == "bottleneck":
            block = 2 * m + (m * k * m + k * m) + (k * m * m + m)
        else:
            block = 2 * m + m * m + m
        head = m * classes + classes
        return embed + self.hidden_layers * block + head

    def flops(self, input_dim: int, classes: int) -> int:
        """Forward multiply-accumulates for one example (the paper's FLOP(f))."""
        m, k = self.width, self.expansion
        block = 2 * k * m * m if self.kind == "bottleneck" else m * m
        return input_dim * m + self.hidden_layers * block + m * classes

    def norm_flops(self) -> int:
        """What fvcore 0.1.5 adds to `flops` per example: 5 FLOPs per LayerNorm element (one LN of
        width m per block); not part of the paper's FLOP(f)."""
        return LAYER_NORM_FLOPS * self.hidden_layers * self.width


def parse_family(value: dict, where: str, folder: str) -> ModelSpec:
    """A size of another family: {family = "cnn" | "module:callable" | "file.py:callable", name = ..., its
    keyword arguments}; checked against the input by families.check once the data's shape is known."""
    family = value["family"]
    if not isinstance(family, str) or not family.strip():
        raise GridError(f"{where}.family: expected a family name, got {family!r}")
    arguments = {k: v for k, v in value.items() if k not in ("family", "name")}
    for key in ("input_shape", "classes"):
        if key in arguments:
            raise GridError(f"{where}.{key}: set from the data, not by the grid")
    name = value.get("name") or f"{family}(" + ", ".join(f"{k}={v}" for k, v in sorted(arguments.items())) + ")"
    if not isinstance(name, str) or NAME_PATTERN.match(name):
        raise GridError(f"{where}.name: {name!r} must be a string other than an MLP's name")
    builtin = family in ("cnn", "vit")
    return ModelSpec(family, size=name, arguments=json.dumps(arguments, sort_keys=True, separators=(",", ":")),
                     path="" if builtin else folder)


def parse_model(value: object, where: str, folder: str = "") -> ModelSpec:
    """A model from a grid entry: a name like 'B-6/Wi-256', a table {kind, depth, width, expansion}, or a
    size of another family {family, name, arguments...} (a user family is looked for in `folder`)."""
    if isinstance(value, dict) and "family" in value and value["family"] != "mlp":
        return parse_family(value, where, folder)
    if isinstance(value, dict) and "family" in value:
        value = {k: v for k, v in value.items() if k != "family"}
    if isinstance(value, str):
        match = NAME_PATTERN.match(value.strip())
        if not match:
            raise GridError(
                f"{where}: unknown model name {value!r}; valid names look like 'B-<depth>/Wi-<width>' "
                f"(inverted-bottleneck B-MLP) or 'S-<depth>/Wi-<width>' (standard S-MLP), e.g. B-6/Wi-256"
            )
        if match["ref"] and match["kind"] != "S":
            raise GridError(f"{where}: {value!r}: /ref names the reference code's S-MLP; a B-MLP has no variant")
        spec = ModelSpec(KINDS[match["kind"]], int(match["depth"]), int(match["width"]),
                         variant="reference" if match["ref"] else "paper")
    elif isinstance(value, dict):
        allowed = {"kind", "depth", "width", "expansion", "variant"}
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
        variant = value.get("variant", "paper")
        if variant not in VARIANTS:
            raise GridError(f"{where}.variant: unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
        if variant != "paper" and aliases[kind] != "standard":
            raise GridError(f"{where}.variant: only the S-MLP (kind standard) has a reference variant")
        spec = ModelSpec(aliases[kind], **fields, variant=variant)
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


class ReferenceStandardBlock(nn.Module):
    """The reference code's StandardMLP layer: Linear(GELU(LN(z))), no residual."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.act = nn.GELU()
        self.linear = nn.Linear(width, width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(self.act(self.norm(z)))


class MLP(nn.Module):
    """Flatten -> linear embedding -> blocks -> linear head; `features` is the probe's input.

    `pad_classes_to` > 1 computes the head's product over a class count rounded up to its
    multiple (zero rows, sliced off the logits), as nanoGPT pads its vocabulary: a bf16 row of
    11,230 logits is 22,460 bytes, not a multiple of 16, which GPU matrix kernels run slower on.
    The parameters, their gradients and the logits are those of the unpadded head.
    """

    def __init__(self, spec: ModelSpec, input_dim: int, classes: int, pad_classes_to: int = 1):
        super().__init__()
        self.spec = spec
        self.padded_classes = -(-classes // pad_classes_to) * pad_classes_to
        self.embed = nn.Linear(input_dim, spec.width)
        if spec.kind == "bottleneck":
            blocks = [Block(spec.width, spec.expansion) for _ in range(spec.depth)]
        elif spec.variant == "reference":
            blocks = [ReferenceStandardBlock(spec.width) for _ in range(spec.hidden_layers)]
        else:
            blocks = [StandardBlock(spec.width) for _ in range(spec.depth)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(spec.width, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen representation a linear probe reads (the body's output, before the head)."""
        return self.blocks(self.embed(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        extra = self.padded_classes - self.head.out_features
        if not extra:
            return self.head(features)
        weight, bias = F.pad(self.head.weight, (0, 0, 0, extra)), F.pad(self.head.bias, (0, extra))
        return F.linear(features, weight, bias)[:, : self.head.out_features]


def build(spec: ModelSpec, input_dim: int, classes: int, pad_classes_to: int = 1) -> MLP:
    """The torch module for `spec` on inputs of `input_dim` values and `classes` outputs."""
    return MLP(spec, input_dim, classes, pad_classes_to)
