"""A starter grid for a prepared store: models, subsets, epochs and a recipe sized to its data.

The built-in grids carry the paper's recipe (batch 16384, lr 1e-5), made for 11.8M images; on a
dataset of thousands it would take one optimizer step per epoch. `starter_grid` reads a store's
meta.json and writes what the demo does for Fashion-MNIST, scaled to the store: B-MLPs up to about
30 parameters per training image, six nested subsets halving down from all of it, epochs doubling
until the largest run has seen half a million images, and the demo's small-batch recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .budget import PFLOP
from .checks import name_problem, output_problem
from .errors import BadInput, StudyError
from .files import write_atomic
from .models import parse_model
from .store import PROGRESS, read_meta, resize_mode

# B-MLPs of growing size, each about 2-4x the parameters of the one before (the demo's four, then the paper's).
LADDER = ("B-1/Wi-32", "B-2/Wi-64", "B-2/Wi-128", "B-3/Wi-256", "B-6/Wi-256", "B-6/Wi-512", "B-12/Wi-512",
          "B-12/Wi-1024")
MODELS = 4
PARAMS_PER_IMAGE = 30  # the demo's largest model: 1.78M parameters for 60,000 images
SUBSETS = 6  # all the training images, then halved five times: 1/32 of them at the smallest
MIN_IMAGES_SEEN = 500_000  # epochs double until the full-data run has seen this many (the demo: 60,000 x 16)
MAX_EPOCHS = 128
MAX_RESOLUTION = 64  # the paper's; an MLP's first layer grows with the square of the side


@dataclass(frozen=True)
class Starter:
    """The choices a starter grid is made of, each derived from the store's meta.json."""

    name: str
    dataset: str
    path: str
    resolution: int
    native_resolution: int
    channels: int
    classes: int
    train_size: int
    models: tuple[str, ...]
    examples: tuple[int, ...]
    epochs: tuple[int, ...]
    batch_size: int


def read_store(store: Path) -> dict:
    """A complete store's meta.json, or BadInput saying what the folder is instead."""
    if not store.is_dir():
        raise BadInput(f"{store}: no such folder; make a store with `study data prepare SOURCE --out {store}`")
    try:
        meta = read_meta(store)
    except StudyError as error:
        raise BadInput(str(error)) from None
    if meta is None:
        why = ("an unfinished `study data prepare` (run it again with the same options to finish)"
               if (store / PROGRESS).exists() else "no meta.json, so not a prepared store")
        raise BadInput(f"{store}: {why}; make one with `study data prepare SOURCE --out {store}`")
    return meta


def _power_of_two_at_most(value: float) -> int:
    return 2 ** max(0, math.floor(math.log2(max(1.0, value))))


def choose(meta: dict, path: str, name: str = "") -> Starter:
    """Models, subset sizes, epochs and batch size for the store described by `meta`."""
    train_size = int(meta["splits"]["train"]["count"])
    classes, channels = len(meta["classes"]), int(meta["channels"])
    native = int(meta["resolution"])
    # A keep-aspect store is read at its own resolution only; a square one may be read smaller.
    resolution = native if resize_mode(meta) == "keep-aspect" else min(native, MAX_RESOLUTION)
    input_dim = channels * resolution * resolution
    sizes = [parse_model(m, "starter").parameters(input_dim, classes) for m in LADDER]
    fitting = [i for i, p in enumerate(sizes) if p <= PARAMS_PER_IMAGE * train_size]
    top = max(fitting[-1] if fitting else 0, 1)  # two models at least: one size is no law
    models = LADDER[max(0, top - MODELS + 1): top + 1]
    # Batches of about 1/200 of the data (the demo: 256 of 60,000), 64 to 4096, and four steps an epoch at least.
    batch = min(max(64, _power_of_two_at_most(train_size / 200)), 4096, _power_of_two_at_most(train_size / 4))
    smallest = max(batch, 10 * classes)
    examples = [train_size // 2 ** k for k in range(SUBSETS) if train_size // 2 ** k >= smallest]
    if len(examples) < 2:
        examples = [train_size] + ([train_size // 2] if train_size // 2 >= classes else [])
    top_epochs = 16
    while train_size * top_epochs < MIN_IMAGES_SEEN and top_epochs < MAX_EPOCHS:
        top_epochs *= 2
    epochs = tuple(top_epochs // 2 ** k for k in (3, 2, 1, 0))
    name = name or str(meta["dataset"])
    if problem := name_problem(name):
        raise BadInput(f"study name {name!r} {problem}; choose another with --name")
    return Starter(name, str(meta["dataset"]), path, resolution, native, channels, classes, train_size,
                   tuple(models), tuple(sorted(examples)), epochs, batch)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(s: Starter, grid_file: str) -> str:
    """The grid's text: a header with the command that runs it and what it costs, then the commented tables."""
    from .grid import parse_grid  # torch, through the models: only when a grid is written
    from .plan import expand, summarize

    fraction = s.examples[-1] // s.examples[0] if s.examples[0] else 1
    resized = (f"   # the store holds {s.native_resolution}px; an MLP's first layer grows with the side squared"
               if s.resolution != s.native_resolution else "")
    body = f"""
[study]
name = {_toml_string(s.name)}
seed = 0   # draws the class-stratified, nested subsets

[data.pretrain]
dataset = {_toml_string(s.dataset)}
path = {_toml_string(s.path)}   # {s.train_size:,} training images, {s.classes} classes, {s.channels} channel(s) (its meta.json)
resolution = {s.resolution}{resized}

# The models are scored by their own head's error on the store's test split (`upstream/top1`,
# what `study fit` fits when there is no probe). To score the features on another dataset by a
# linear probe instead, as the paper does, add:
# [[data.downstream]]
# dataset = "cifar100"
# path = "data/cifar100-64"
# protocol = "linear"

[grid]
# B-MLPs up to about {PARAMS_PER_IMAGE} parameters per training image; `study plan --dry-run` prints each one's size.
models = [{", ".join(_toml_string(m) for m in s.models)}]
# Nested subsets, 1/{fraction} of the training images up to all of them (counts; fractions in (0, 1] work too).
examples = [{", ".join(str(n) for n in s.examples)}]
# With a constant learning rate each epoch count is an evaluation point of one run to the largest.
epochs = [{", ".join(str(t) for t in s.epochs)}]
seeds = [0]   # [0, 1, 2] averages three seeds per point and measures their spread

# A recipe for small data, the demo's (the built-in defaults are the paper's, for 11.8M images:
# batch 16384, lr 1e-5). If the largest model diverges, lower lr; if the smallest subsets overfit,
# raise weight_decay or mixup.
[train]
optimizer = "lion"
lr = 3e-4
weight_decay = 1e-2
label_smoothing = 0.1
batch_size = {s.batch_size}   # about 1/200 of the training images, at least 4 steps an epoch
precision = "auto"   # bf16 on a GPU, fp32 on the CPU; "fp32" makes a GPU run comparable to a CPU one

[train.augmentation]
crop_scale = [0.7, 1.0]
flip = true   # false where a mirrored image is another class (digits, text)
mixup = 0.2

[evaluation]
upstream = true
probe = "fast"   # used by a [[data.downstream]] probe: L-BFGS on the frozen features, seconds
"""
    grid = parse_grid(body, grid_file)
    summary = summarize(expand(grid))
    header = (
        f"# A starter study of {s.dataset} ({s.train_size:,} training images), written by `study init {s.path}`.\n"
        "# Review the choices below, then:\n"
        "#\n"
        f"#   study bench {grid_file}        # this machine's speed: `study plan` then prints hours\n"
        f"#   study plan {grid_file} && study run --resume --study {s.name} && study fit --study {s.name}\n"
        "#\n"
        f"# Plans {summary.jobs} trajectories with {summary.points} evaluation points: "
        f"{summary.compute / PFLOP:.3g} PFLOPs to run\n"
        f"# ({summary.naive_compute / PFLOP:.3g} if every epoch count were its own run).\n"
    )
    return header + body


def starter_grid(store: Path, out: Path, name: str = "") -> Starter:
    """Write a starter grid for `store` to `out`; BadInput, with nothing written, when either will not do."""
    if out.exists():
        raise BadInput(f"{out} already exists; choose another --out or delete it")
    if problem := output_problem(out):
        raise BadInput(problem)
    starter = choose(read_store(store), str(store), name)
    text = render(starter, str(out))
    write_atomic(out, lambda temp: temp.write_text(text))
    return starter
