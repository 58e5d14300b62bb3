"""Expanding a grid into jobs: one job per training trajectory, identified by its spec's hash.

With a schedule that does not depend on the length of training (constant LR, the paper's
default) every epoch count of the grid is an evaluation point of one run to max(T); with
cosine or WSD each epoch count is its own run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass

from . import budget, families
from .grid import (
    Augmentation,
    DownstreamData,
    EvaluationConfig,
    Grid,
    PretrainData,
    TrainConfig,
    dataset_info,
)
from .errors import GridError
from .models import ModelSpec

SHARED_SCHEDULES = ("constant",)

# Fields that locate data on one machine but do not change what is computed.
_NOT_IDENTITY = {"path", "real_labels"}
# Fields added after jobs were first planned, left out of the identity at the value that does what
# the code did before they existed: a grid that does not use them keeps its jobs' ids.
_ADDED_LATER = {("model", "variant"): "paper", ("model", "size"): "", ("model", "arguments"): "",
                ("train", "drop_last"): False}
# Defaults that leave a choice to the device (as precision "auto" does), hashed as the value that
# computes the same on the CPU: a grid written before they existed keeps its jobs' ids.
_HASHED_AS = {("train", "compile"): (None, False)}


@dataclass(frozen=True)
class JobSpec:
    """One training trajectory and the evaluation points along it."""

    model: ModelSpec
    pretrain: PretrainData
    resolution: int
    channels: int
    classes: int
    examples: int
    subset_seed: int
    seed: int
    epochs: tuple[int, ...]  # evaluation epochs; the run trains to the last
    train: TrainConfig
    downstream: tuple[DownstreamData, ...]
    evaluation: EvaluationConfig

    @property
    def input_dim(self) -> int:
        """Values per input image, the embedding's fan-in."""
        return self.channels * self.resolution**2

    @property
    def total_epochs(self) -> int:
        """The length of the trajectory."""
        return self.epochs[-1]

    @property
    def params(self) -> int:
        return families.counts(self.model, self.channels, self.resolution, self.classes)[0]

    @property
    def flops(self) -> int:
        """FLOP(f): forward multiply-accumulates per example."""
        return families.counts(self.model, self.channels, self.resolution, self.classes)[1]

    @property
    def examples_per_epoch(self) -> int:
        """Examples trained on per epoch: N, or floor(N / B) * B when the last partial batch is dropped."""
        return budget.examples_per_epoch(self.examples, self.train.batch_size, self.train.drop_last)

    def compute_at(self, epoch: int) -> float:
        """Eq. 4 after `epoch` epochs, over the examples actually trained on."""
        return budget.compute(self.flops, self.examples_per_epoch, epoch)

    @property
    def compute(self) -> float:
        """What the trajectory spends: Eq. 4 at its last epoch."""
        return self.compute_at(self.total_epochs)

    def to_dict(self) -> dict:
        """A JSON-ready dict (the spec stored in the database and in checkpoints)."""
        return dataclasses.asdict(self)

    @property
    def id(self) -> str:
        """Hash of the canonical spec without machine-local paths: equal specs, equal ids."""
        return _hash(_strip(_without_later_defaults(self.to_dict())))

    @classmethod
    def from_dict(cls, raw: dict) -> "JobSpec":
        """Inverse of to_dict."""
        train = dict(raw["train"])
        aug = dict(train.pop("augmentation"))
        aug = Augmentation(**{k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()})
        evaluation = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["evaluation"].items()}
        return cls(
            model=ModelSpec(**raw["model"]),
            pretrain=PretrainData(**raw["pretrain"]),
            resolution=raw["resolution"],
            channels=raw["channels"],
            classes=raw["classes"],
            examples=raw["examples"],
            subset_seed=raw["subset_seed"],
            seed=raw["seed"],
            epochs=tuple(raw["epochs"]),
            train=TrainConfig(**train, augmentation=aug),
            downstream=tuple(DownstreamData(**d) for d in raw["downstream"]),
            evaluation=EvaluationConfig(**evaluation),
        )


def _without_later_defaults(spec: dict) -> dict:
    """The spec without the fields of _ADDED_LATER that hold their old behaviour's value, and with
    _HASHED_AS's device choices as the value they stand for on the CPU."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in spec.items()}
    for (section, key), default in _ADDED_LATER.items():
        if out.get(section, {}).get(key, default) == default:
            out[section].pop(key, None)
    for (section, key), (value, hashed) in _HASHED_AS.items():
        if key in out.get(section, {}) and out[section][key] is value:
            out[section][key] = hashed
    return out


def _strip(value: object) -> object:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _NOT_IDENTITY}
    if isinstance(value, (list, tuple)):
        return [_strip(v) for v in value]
    return value


def _hash(value: object) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def expand(grid: Grid) -> list[JobSpec]:
    """Every job of the grid, in a stable order (model, examples, seed, batch size, epochs)."""
    info = dataset_info(grid)
    shared = grid.train.schedule in SHARED_SCHEDULES
    epoch_groups = [grid.grid.epochs] if shared else [(t,) for t in grid.grid.epochs]
    recipes = [dataclasses.replace(grid.train, batch_size=b) for b in grid.grid.batch_sizes] or [grid.train]
    resolved: dict[int, int | float] = {}
    for value in grid.grid.examples:  # 1.0 and the set's size are one subset: refused like [256, 256]
        examples = budget.resolve_examples(value, info.train_size)
        if examples in resolved:
            raise GridError(f"{grid.path}: [grid].examples: {resolved[examples]!r} and {value!r} are both "
                            f"{examples} examples of {grid.pretrain.dataset}; keep one")
        resolved[examples] = value
    for recipe in recipes:  # a batch above a subset trains on all of it; one above the whole set is a typo
        if recipe.batch_size > max(info.train_size, TrainConfig.batch_size):  # the paper's 16384 always passes
            raise GridError(f"{grid.path}: batch size {recipe.batch_size} is larger than {grid.pretrain.dataset}'s "
                            f"{info.train_size} training examples; a batch holds at most the data: lower it to "
                            f"{info.train_size} or less")
    jobs = []
    for model, value, seed, recipe, epochs in itertools.product(
        grid.grid.models, grid.grid.examples, grid.grid.seeds, recipes, epoch_groups
    ):
        examples = budget.resolve_examples(value, info.train_size)
        if recipe.drop_last and examples < recipe.batch_size:
            raise GridError(f"{grid.path}: [train] drop_last = true leaves no training step for examples = "
                            f"{examples} below batch_size {recipe.batch_size}; lower batch_size or set drop_last = false")
        jobs.append(
            JobSpec(
                model=model,
                pretrain=grid.pretrain,
                resolution=info.resolution,
                channels=info.channels,
                classes=info.classes,
                examples=examples,
                subset_seed=grid.study.seed,
                seed=seed,
                epochs=tuple(epochs),
                train=recipe,
                downstream=grid.downstream,
                evaluation=grid.evaluation,
            )
        )
    return jobs


@dataclass(frozen=True)
class ModelRow:
    """One line of the plan's table."""

    name: str
    params: int
    flops: int
    jobs: int
    points: int
    naive_compute: float
    compute: float


@dataclass(frozen=True)
class PlanSummary:
    """What a plan costs: per model and in total, naive (one run per T) and as run."""

    rows: tuple[ModelRow, ...]
    jobs: int = 0
    points: int = 0
    naive_compute: float = 0.0
    compute: float = 0.0

    @classmethod
    def of(cls, rows: tuple[ModelRow, ...]) -> PlanSummary:
        """The rows with their totals."""
        totals = {key: sum(getattr(r, key) for r in rows) for key in ("jobs", "points", "naive_compute", "compute")}
        return cls(rows, **totals)


def summarize(jobs: list[JobSpec]) -> PlanSummary:
    """Per-model totals; naive compute counts every evaluation point as its own run (Eq. 4)."""
    rows: dict[str, ModelRow] = {}
    for job in jobs:
        naive = sum(job.compute_at(t) for t in job.epochs)
        old = rows.get(job.model.name)
        rows[job.model.name] = ModelRow(
            name=job.model.name,
            params=job.params,
            flops=job.flops,
            jobs=(old.jobs if old else 0) + 1,
            points=(old.points if old else 0) + len(job.epochs),
            naive_compute=(old.naive_compute if old else 0.0) + naive,
            compute=(old.compute if old else 0.0) + job.compute,
        )
    return PlanSummary.of(tuple(rows.values()))


def estimated_seconds(jobs: list[JobSpec], calibrations: dict[str, dict]) -> dict[str, tuple[float, float | None]]:
    """Per calibrated model (`study bench` rows by model name): (training seconds, evaluation seconds).

    Training: its images (N * T per job) over the measured img/s. Evaluation: its evaluation
    points times the measured seconds of one, None when that was not measured.
    """
    out: dict[str, tuple[float, float | None]] = {}
    for row in summarize(jobs).rows:
        if row.name not in calibrations:
            continue
        measured = calibrations[row.name]
        images = sum(job.examples_per_epoch * job.total_epochs for job in jobs if job.model.name == row.name)
        per_point = json.loads(measured["details"] or "{}").get("evaluation_s")
        out[row.name] = (images / measured["images_per_s"], None if per_point is None else row.points * per_point)
    return out



@dataclass(frozen=True)
class HourEstimate:
    """A plan's hours from `study bench` figures of one device: per model, training and (where its
    figure exists) evaluation."""

    models: tuple[str, ...]  # every model of the plan, measured or not
    train: dict[str, float]  # per model measured
    evaluation: dict[str, float]  # per model whose evaluation was measured
    device: str | None  # the device the figures come from; None when nothing was measured

    @property
    def complete(self) -> bool:
        """Every model of the plan has a training figure."""
        return len(self.train) == len(self.models)

    @property
    def per_model(self) -> dict[str, float]:
        return {name: train + self.evaluation.get(name, 0.0) for name, train in self.train.items()}

    @property
    def total(self) -> float:
        return sum(self.per_model.values())

    @property
    def training_total(self) -> float:
        return sum(self.train.values())

    @property
    def evaluation_total(self) -> float:
        return sum(self.evaluation.values())

    @property
    def unmeasured(self) -> list[str]:
        """Models without a training figure."""
        return [name for name in self.models if name not in self.train]

    @property
    def evaluation_unmeasured(self) -> list[str]:
        """Measured models without an evaluation figure."""
        return [name for name in self.train if name not in self.evaluation]


def estimated_hours(jobs: list[JobSpec], calibrations: dict[str, dict]) -> HourEstimate:
    """estimated_seconds in hours, for `study plan` to print; `calibrations` come from one device."""
    seconds = estimated_seconds(jobs, calibrations)
    device = next(iter(calibrations.values()))["device"] if calibrations else None
    return HourEstimate(
        models=tuple(row.name for row in summarize(jobs).rows),
        train={name: train / 3600 for name, (train, _) in seconds.items()},
        evaluation={name: evaluation / 3600 for name, (_, evaluation) in seconds.items() if evaluation is not None},
        device=device,
    )
