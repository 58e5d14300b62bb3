"""Grid files: TOML parsed (grid_text) into frozen dataclasses, every key and type checked.

Any problem is a GridError naming the file, the line where tomllib or a search for the key
finds it, the key and (for a misspelling) the valid choices; nothing is planned from a bad grid.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .data import CATALOGUE, DatasetInfo
from .store import read_meta
from .checks import name_problem
from .errors import GridError
from .grid_text import grid_tables
from . import families
from .models import ModelSpec, parse_model

OPTIMIZERS = ("lion", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "wsd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PROTOCOLS = ("linear", "finetune")
PROBES = ("paper", "fast", "reference")
MAX_LR = 1e6  # larger rates overflow float32 updates at once (1e6 with SGD already diverges: a test uses it)
MAX_INT = 2**63 - 1  # the database's BIGINT and torch's seeds hold no more
MAX_RESAMPLES = 10_000  # each resample is a refit; more only costs memory and time


@dataclass(frozen=True)
class StudySection:
    """[study]: the study's name and the seed that draws its data subsets."""

    name: str
    seed: int = 0


@dataclass(frozen=True)
class PretrainData:
    """[data.pretrain]: the dataset the models are trained on."""

    dataset: str
    path: str = ""
    resolution: int = 0  # 0: the dataset's native resolution
    # Needed only for a dataset outside the built-in catalogue (read from a prepared store otherwise).
    size: int = 0
    classes: int = 0
    channels: int = 0


@dataclass(frozen=True)
class DownstreamData:
    """[[data.downstream]]: a dataset the pre-trained features are evaluated on."""

    dataset: str
    path: str = ""
    protocol: str = "linear"


@dataclass(frozen=True)
class Augmentation:
    """[train.augmentation]: random resized crop, flip and MixUp, as in the paper's loader."""

    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    flip: bool = True
    mixup: float = 0.8
    mixup_per_image: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """[train]: the pre-training recipe; defaults are the paper's (Sec. 4.2, App. A.4)."""

    optimizer: str = "lion"
    lr: float = 1e-5
    weight_decay: float = 1e-3
    momentum: float = 0.9
    label_smoothing: float = 0.3
    batch_size: int = 16384
    micro_batch_size: int = 0  # 0: the whole batch at once (halved on CUDA out-of-memory)
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    decay_fraction: float = 0.2  # wsd: share of training spent decaying
    grad_clip: float = 0.0  # 0: no clipping
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool | None = None  # None: on CUDA (torch.compile pays there), off on the CPU
    divergence_loss: float = 100.0  # a loss above this (or NaN/inf) ends the run as diverged
    drop_last: bool = False  # drop each epoch's last partial batch, as the reference code's loader does
    augmentation: Augmentation = field(default_factory=Augmentation)


@dataclass(frozen=True)
class EvaluationConfig:
    """[evaluation]: how each evaluation epoch scores the model (App. A.3)."""

    upstream: bool = True
    probe: str = "paper"  # paper: LION head, 50 epochs; fast: L-BFGS logistic regression; reference: SGD on crops
    probe_epochs: int = 50
    probe_lr: float = 1e-5
    probe_batch_size: int = 4096
    probe_examples: int = 0  # fit the probe on a class-stratified subset of the downstream train split; 0: all
    finetune_epochs: int = 50
    finetune_lr_head: float = 0.01
    finetune_lr_body: float = 0.001
    finetune_crop_scale: tuple[float, float] = (0.4, 1.0)
    tta_crops: int = 0  # 100 in the paper's Table 2
    real_labels: str = ""  # ImageNet ReaL labels file, for ReaL accuracy


@dataclass(frozen=True)
class LoggingConfig:
    """[logging]: where training curves go besides each job's curve.csv (not part of any job's identity)."""

    tensorboard: bool | None = None  # None: TensorBoard events when the package is installed


@dataclass(frozen=True)
class AdaptiveConfig:
    """[adaptive]: coarse-to-fine claim order and pruning against the law, or (policy = "uncertainty") rungs
    chosen where the headlines are most uncertain, with stop rules; off by default."""

    enabled: bool = False
    confidence: float = 0.95  # a trajectory is pruned when its predicted lower bound at this confidence is above the envelope
    min_points: int = 20  # evaluation points of the fitted metric before anything is pruned
    protect_spanning: bool = True  # never prune the runs that span the fits (see adaptive.spanning_jobs)
    resamples: int = 100  # bootstrap resamples of each refit (few: a refit takes well under a second)
    seed: int = 0  # seed of those resamples: the same points give the same decision
    policy: str = "prune"  # prune: pruning against the envelope; uncertainty: rung by rung where the headlines are uncertain
    score_resamples: int = 16  # uncertainty: bootstrap draws behind each score (each is a fit of every headline)
    budget: float | None = None  # uncertainty: stop at this share of the grid's compute (0, 1]
    budget_pflops: float | None = None  # uncertainty: stop at this much compute
    targets: str = ""  # uncertainty: stop once these 95% half-widths are reached, e.g. "alpha=0.02,a=0.05"


POLICIES = ("prune", "uncertainty")
# The headline quantities a stop rule can name (scaling_study.anytime.headline), by short name.
HEADLINES = {"alpha": "E(C) alpha", "alpha_P": "alpha_P", "alpha_N": "alpha_N", "alpha_PD": "E(P,D) alpha",
             "beta_PD": "E(P,D) beta", "a": "a (parametric)", "b": "b (parametric)", "a_envelope": "a (envelope)",
             "b_envelope": "b (envelope)", "a_isoflop": "a (isoflop)", "b_isoflop": "b (isoflop)"}


def parse_targets(text: str, where: str = "--target") -> dict[str, float]:
    """"alpha=0.02,a=0.05" as {headline name: 95% half-width}; a short name or a full one; GridError otherwise."""
    targets: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, raw = item.partition("=")
        name = name.strip()
        full = HEADLINES.get(name, name if name in HEADLINES.values() else None)
        if full is None:
            raise GridError(f"{where}: unknown headline {name!r}; one of {', '.join(HEADLINES)} "
                            "(or its full name, as `study status` shows it)")
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise GridError(f"{where}: {name}={raw.strip()!r}: a half-width must be a positive number, as in alpha=0.02")
        targets[full] = value
    return targets


@dataclass(frozen=True)
class GridAxes:
    """[grid]: the axes whose product is the study."""

    models: tuple[ModelSpec, ...]
    examples: tuple[int | float, ...]
    epochs: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    batch_sizes: tuple[int, ...] = ()  # an optional axis (the paper's Fig. 4); empty: [train].batch_size


@dataclass(frozen=True)
class Grid:
    """A whole grid file, validated."""

    path: str
    text: str
    study: StudySection
    pretrain: PretrainData
    downstream: tuple[DownstreamData, ...]
    grid: GridAxes
    train: TrainConfig
    evaluation: EvaluationConfig
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    adaptive: AdaptiveConfig = AdaptiveConfig()

    @property
    def dataset(self) -> DatasetInfo:
        """The pre-training dataset's facts, at the grid's resolution."""
        return dataset_info(self)


def dataset_info(grid: Grid) -> DatasetInfo:
    """Facts of the pre-training set: a prepared store's own (meta.json), else the grid's explicit
    fields, else the catalogue. A grid that contradicts its store is refused here, not job by job."""
    p = grid.pretrain
    known = CATALOGUE.get(p.dataset)
    stored = read_meta(Path(p.path)) if p.path and Path(p.path).is_dir() else None
    if stored is not None:
        facts = {"size": stored["splits"]["train"]["count"], "classes": len(stored["classes"]),
                 "channels": stored["channels"]}
        for key, value in facts.items():
            if getattr(p, key) and getattr(p, key) != value:
                raise GridError(f"{grid.path}: [data.pretrain] {key} = {getattr(p, key)}, but the store at "
                                f"{p.path} holds {value}; remove the key or correct it")
        return DatasetInfo(facts["size"], facts["classes"], facts["channels"], p.resolution or stored["resolution"])
    size = p.size or (known.train_size if known else 0)
    classes = p.classes or (known.classes if known else 0)
    channels = p.channels or (known.channels if known else 0)
    native = known.resolution if known else 0
    if not (size and classes and channels):
        raise GridError(
            f"{grid.path}: [data.pretrain] dataset {p.dataset!r} is not built in "
            f"({', '.join(sorted(CATALOGUE))}); give its size, classes and channels"
        )
    return DatasetInfo(size, classes, channels, p.resolution or native or 0)


class _Parser:
    """Checks TOML tables against dataclasses, with line numbers for the messages."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, key: str, section: str = "") -> int | None:
        """Best-effort line of `key = ...` (after `[section]` when given); tomllib keeps no positions."""
        start = 0
        if section:
            header = re.compile(r"^\s*\[\[?\s*" + re.escape(section) + r"\s*\]\]?\s*(#.*)?$")
            for number, line in enumerate(self.lines):
                if header.match(line):
                    start = number
                    break
        pattern = re.compile(r"^\s*(\"?)" + re.escape(key) + r"\1\s*=")
        for number in range(start, len(self.lines)):
            if pattern.match(self.lines[number]):
                return number + 1
        return None

    def fail(self, where: str, message: str, key: str = "", section: str = "") -> typing.NoReturn:
        line = self.line_of(key, section) if key else None
        location = f"{self.path}:{line}" if line else self.path
        raise GridError(f"{location}: {where}: {message}")

    def table(self, cls: type, value: object, where: str, section: str, **extra: object):
        """Build dataclass `cls` from a TOML table, rejecting unknown keys and wrong types."""
        if not isinstance(value, dict):
            self.fail(where, f"expected a table, got {value!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        known = [name for name in fields if name not in extra]
        for key in value:
            if key not in known:
                self.fail(where, f"unknown key {key!r}; valid keys: {', '.join(known)}", key, section)
        kwargs: dict[str, object] = dict(extra)
        for key, raw in value.items():
            kwargs[key] = self.value(hints[key], raw, f"{where}.{key}", key, section)
        for name, f in fields.items():
            if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(where, f"missing required key {name!r}")
        return cls(**kwargs)

    def value(self, hint: object, raw: object, where: str, key: str, section: str) -> object:
        """Check one value against its annotation (and positivity for sizes and rates)."""
        origin = typing.get_origin(hint)
        if dataclasses.is_dataclass(hint):
            return self.table(hint, raw, where, f"{section}.{key}")
        if origin is tuple and len(typing.get_args(hint)) == 2 and typing.get_args(hint)[1] is not Ellipsis:
            if not isinstance(raw, list) or len(raw) != 2:
                self.fail(where, f"expected a pair [low, high], got {raw!r}", key, section)
            items = tuple(self.value(typing.get_args(hint)[0], item, where, key, section) for item in raw)
            if items[0] > items[1]:
                self.fail(where, f"low must not exceed high, got {list(raw)}", key, section)
            return items
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            return self.value(inner[0], raw, where, key, section)  # TOML has no null: the value is set
        if hint is bool:
            if not isinstance(raw, bool):
                self.fail(where, f"expected true or false, got {raw!r}", key, section)
            return raw
        if hint is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.fail(where, f"expected an integer, got {raw!r}", key, section)
            if raw < 0:
                self.fail(where, f"must not be negative, got {raw}", key, section)
            if raw > MAX_INT:
                self.fail(where, f"{raw} is above the largest integer stored, 2**63 - 1", key, section)
            return raw
        if hint is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                self.fail(where, f"expected a number, got {raw!r}", key, section)
            if raw < 0 or raw != raw or raw == float("inf"):
                self.fail(where, f"must be a finite non-negative number, got {raw}", key, section)
            return float(raw)
        if hint is str:
            if not isinstance(raw, str):
                self.fail(where, f"expected a string, got {raw!r}", key, section)
            return raw
        raise AssertionError(f"no parser for {hint}")  # a dataclass field type we forgot

    def choice(self, value: str, choices: tuple[str, ...], where: str, key: str, section: str) -> None:
        if value not in choices:
            self.fail(where, f"unknown value {value!r}; valid choices: {', '.join(choices)}", key, section)

    def positive_list(
        self, raw: object, where: str, key: str, section: str, fractions: bool = False, zero: bool = False
    ) -> tuple:
        """A non-empty list of positive integers (or fractions in (0, 1] where allowed), no duplicates."""
        if not isinstance(raw, list) or not raw:
            self.fail(where, f"expected a non-empty list, got {raw!r}", key, section)
        for item in raw:
            is_int = isinstance(item, int) and not isinstance(item, bool)
            is_fraction = fractions and isinstance(item, float) and 0 < item <= 1
            if not (is_int or is_fraction):
                wanted = ("positive integers or fractions in (0, 1]" if fractions
                          else "integers of 0 or more" if zero else "positive integers")
                self.fail(where, f"expected {wanted}, got {item!r}", key, section)
            if is_int and (item < 0 if zero else item <= 0):
                self.fail(where, f"must be {'0 or more' if zero else 'positive'}, got {item}", key, section)
            if is_int and item > MAX_INT:
                self.fail(where, f"{item} is above the largest integer stored, 2**63 - 1", key, section)
        if len(set(raw)) != len(raw):
            self.fail(where, f"duplicate values in {raw}", key, section)
        return tuple(raw)


SECTIONS = ("study", "data", "grid", "train", "evaluation", "logging", "adaptive")


def parse_grid(text: str, path: str = "<grid>") -> Grid:
    """Validate a grid's TOML text into a Grid, or raise GridError."""
    doc = grid_tables(text, path)
    parser = _Parser(path, text)
    for key in doc:
        if key not in SECTIONS:
            parser.fail("top level", f"unknown section [{key}]; valid sections: {', '.join(SECTIONS)}")
    for required in ("study", "data", "grid"):
        if required not in doc:
            parser.fail("top level", f"missing section [{required}]")
    study = parser.table(StudySection, doc["study"], "[study]", "study")
    if not study.name.strip():
        parser.fail("[study].name", "must not be empty", "name", "study")
    if problem := name_problem(study.name):
        parser.fail("[study].name", problem, "name", "study")

    data = doc["data"]
    if not isinstance(data, dict):
        parser.fail("[data]", "expected a table")
    for key in data:
        if key not in ("pretrain", "downstream"):
            parser.fail("[data]", f"unknown key {key!r}; valid keys: pretrain, downstream", key, "data")
    if "pretrain" not in data:
        parser.fail("[data]", "missing table [data.pretrain]")
    pretrain = parser.table(PretrainData, data["pretrain"], "[data.pretrain]", "data.pretrain")
    downstream_raw = data.get("downstream", [])
    if not isinstance(downstream_raw, list):
        parser.fail("[data.downstream]", "expected an array of tables [[data.downstream]]")
    downstream = tuple(
        parser.table(DownstreamData, item, f"[[data.downstream]] #{i + 1}", "data.downstream")
        for i, item in enumerate(downstream_raw)
    )
    for i, item in enumerate(downstream):
        parser.choice(item.protocol, PROTOCOLS, f"[[data.downstream]] #{i + 1}.protocol", "protocol", "data.downstream")

    train = parser.table(TrainConfig, doc.get("train", {}), "[train]", "train")
    parser.choice(train.optimizer, OPTIMIZERS, "[train].optimizer", "optimizer", "train")
    parser.choice(train.schedule, SCHEDULES, "[train].schedule", "schedule", "train")
    parser.choice(train.precision, PRECISIONS, "[train].precision", "precision", "train")
    for name in ("lr", "batch_size"):
        if not getattr(train, name) > 0:
            parser.fail(f"[train].{name}", f"must be positive, got {getattr(train, name)}", name, "train")
    if train.lr > MAX_LR:
        parser.fail("[train].lr", f"{train.lr:g} is above {MAX_LR:g}, beyond what an optimizer's float32 "
                    "update can use; lower it", "lr", "train")
    aug = train.augmentation
    if not (0 < aug.crop_scale[0] and aug.crop_scale[1] <= 1):
        parser.fail("[train.augmentation].crop_scale", "must lie in (0, 1]", "crop_scale", "train.augmentation")
    if not aug.crop_ratio[0] > 0:
        parser.fail("[train.augmentation].crop_ratio", "must be positive", "crop_ratio", "train.augmentation")
    evaluation = parser.table(EvaluationConfig, doc.get("evaluation", {}), "[evaluation]", "evaluation")
    parser.choice(evaluation.probe, PROBES, "[evaluation].probe", "probe", "evaluation")

    axes = doc["grid"]
    if not isinstance(axes, dict):
        parser.fail("[grid]", "expected a table")
    valid = ("models", "examples", "epochs", "seeds", "batch_sizes")
    for key in axes:
        if key not in valid:
            parser.fail("[grid]", f"unknown key {key!r}; valid keys: {', '.join(valid)}", key, "grid")
    for key in ("models", "examples", "epochs"):
        if key not in axes:
            parser.fail("[grid]", f"missing required key {key!r}")
    models_raw = axes["models"]
    if not isinstance(models_raw, list) or not models_raw:
        parser.fail("[grid].models", f"expected a non-empty list, got {models_raw!r}", "models", "grid")
    models = []
    folder = str(Path(path).resolve().parent) if path != "<grid>" else str(Path.cwd())
    for i, item in enumerate(models_raw):
        try:
            models.append(parse_model(item, f"[grid].models[{i}]", folder))
        except GridError as error:
            parser.fail(str(error).split(":", 1)[0], str(error).split(": ", 1)[1], "models", "grid")
    if len(set(models)) != len(models):
        parser.fail("[grid].models", "duplicate models", "models", "grid")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        parser.fail("[grid].models", f"two models are named {next(n for n in names if names.count(n) > 1)!r}; "
                    "give each size its own name", "models", "grid")
    grid_axes = GridAxes(
        models=tuple(models),
        examples=parser.positive_list(axes["examples"], "[grid].examples", "examples", "grid", fractions=True),
        epochs=tuple(sorted(parser.positive_list(axes["epochs"], "[grid].epochs", "epochs", "grid"))),
        seeds=parser.positive_list(axes.get("seeds", [study.seed]), "[grid].seeds", "seeds", "grid", zero=True),
        batch_sizes=parser.positive_list(axes["batch_sizes"], "[grid].batch_sizes", "batch_sizes", "grid")
        if "batch_sizes" in axes else (),
    )
    logging = parser.table(LoggingConfig, doc.get("logging", {}), "[logging]", "logging")
    adaptive = _adaptive(parser, doc.get("adaptive", {}))
    grid = Grid(path, text, study, pretrain, downstream, grid_axes, train, evaluation, logging, adaptive)
    info = dataset_info(grid)
    if not info.resolution:
        parser.fail("[data.pretrain].resolution", "required for a dataset outside the catalogue")
    for i, model in enumerate(models):
        try:
            families.check(model, f"[grid].models[{i}]", info.channels, info.resolution, info.classes)
        except GridError as error:
            parser.fail(str(error).split(":", 1)[0], str(error).split(": ", 1)[1], "models", "grid")
    for value in grid_axes.examples:
        if isinstance(value, int) and value > info.train_size:
            parser.fail(
                "[grid].examples",
                f"{value} is larger than {pretrain.dataset}'s {info.train_size} training examples",
                "examples", "grid",
            )
    return grid


def _adaptive(parser: _Parser, raw: object) -> AdaptiveConfig:
    config = parser.table(AdaptiveConfig, raw, "[adaptive]", "adaptive")
    if not 0.5 <= config.confidence < 1:
        parser.fail("[adaptive].confidence", f"must lie in [0.5, 1), got {config.confidence}", "confidence", "adaptive")
    if not 10 <= config.resamples <= MAX_RESAMPLES:
        parser.fail("[adaptive].resamples", f"must lie in [10, {MAX_RESAMPLES:,}] (an interval needs resamples, and each "
                    f"is a refit), got {config.resamples:,}", "resamples", "adaptive")
    parser.choice(config.policy, POLICIES, "[adaptive].policy", "policy", "adaptive")
    if not 4 <= config.score_resamples <= 1000:
        parser.fail("[adaptive].score_resamples", f"must lie in [4, 1000], got {config.score_resamples:,}",
                    "score_resamples", "adaptive")
    if config.budget is not None and not 0 < config.budget <= 1:
        parser.fail("[adaptive].budget", f"is a share of the grid's compute in (0, 1], got {config.budget}", "budget", "adaptive")
    if config.budget_pflops is not None and not config.budget_pflops > 0:
        parser.fail("[adaptive].budget_pflops", f"must be positive, got {config.budget_pflops}", "budget_pflops", "adaptive")
    try:
        parse_targets(config.targets, "[adaptive].targets")
    except GridError as error:
        parser.fail("[adaptive].targets", str(error).removeprefix("[adaptive].targets: "), "targets", "adaptive")
    rules = config.budget is not None or config.budget_pflops is not None or config.targets
    if rules and config.policy != "uncertainty":
        parser.fail("[adaptive]", "budget, budget_pflops and targets are stop rules of policy = \"uncertainty\"", "policy", "adaptive")
    return config


def adaptive_settings(text: str, path: str = "<grid>") -> AdaptiveConfig:
    """The [adaptive] table of a grid's text as recorded in the database (the runner reads it there,
    without the grid's data paths having to exist on this machine); the defaults when absent."""
    return _adaptive(_Parser(path, text or ""), grid_tables(text, path).get("adaptive", {}))


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GridError(f"{path}: no such grid file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise GridError(f"{path}: cannot read grid file: {error}") from None
    return parse_grid(text, str(path))
