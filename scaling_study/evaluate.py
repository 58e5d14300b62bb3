"""Scoring a model at an evaluation epoch: upstream error, linear probes, fine-tuning, TTA, ReaL.

Every score is an ERROR rate in [0, 1]. The pure functions take a model, splits or cached
features and return numbers or trained heads; `evaluate` is the one place that loads splits.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data, families, loader
from .errors import StudyError
from .grid import Augmentation, EvaluationConfig
from .optim import Lion
from .plan import JobSpec

FAST_PROBE_L2 = 1e-4  # L2 on standardized features, per example (the mean loss is penalized)
FAST_PROBE_MAX_ITER = 100

# The reference code's linear probe (finetune.py --mode linear, as its README runs it): SGD with
# momentum 0.9 at lr 0.01, no weight decay (the script never passes it to the optimizer), a
# constant rate, gradient norm clipped at 1, label smoothing 0.3, a new head with PyTorch's
# default init, on random-resized crops of scale 0.4-1 and ratio 1 with flips, no MixUp, the
# last partial batch dropped. Epochs and batch size come from [evaluation] (its README: 100
# and 2048; its script's defaults: 500 and 4096).
REFERENCE_PROBE_LR = 0.01
REFERENCE_PROBE_MOMENTUM = 0.9
REFERENCE_PROBE_CLIP = 1.0
REFERENCE_PROBE_SMOOTHING = 0.3
REFERENCE_PROBE_CROPS = Augmentation(crop_scale=(0.4, 1.0), crop_ratio=(1.0, 1.0), flip=True, mixup=0.0)

Classifier = Callable[[torch.Tensor], torch.Tensor]


class NonFiniteModel(StudyError):
    """A model whose outputs hold NaN or inf: it has no score (a probe on them would fail or report chance)."""

    exit_code = 2


def finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """`values` when every entry is finite; else NonFiniteModel naming `what`."""
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise NonFiniteModel(f"{what} hold {bad:,} non-finite value(s) (NaN or inf) of {values.numel():,}: "
                             "the model has diverged, so it has no score")
    return values


def derive_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed for one purpose ('init', 'probe/cifar100/50', ...) of a run."""
    digest = hashlib.sha256(f"{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolved_precision(precision: str, device: str | torch.device) -> str:
    """What `auto` means on this device (bf16 on CUDA, fp32 elsewhere)."""
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def precision_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """The torch dtype a precision computes in on this device (auto: bf16 on CUDA, fp32 elsewhere)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolved_precision(precision, device), torch.float32)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a precision: auto is bf16 on CUDA and fp32 elsewhere."""
    dtype = precision_dtype(precision, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def mixed_loss(logits: torch.Tensor, y: torch.Tensor, y_mix: torch.Tensor, lam: torch.Tensor,
               label_smoothing: float) -> torch.Tensor:
    """Per-example lam*CE(y) + (1-lam)*CE(y_mix), both with label smoothing (one log-softmax).

    bf16 or fp16 logits (autocast's) are never copied whole to fp32: `_LowPrecisionMixedLoss`
    computes the same loss and gradient in fp32 over blocks of rows. fp32 logits take the
    plain path (that of every CPU run).
    """
    if logits.dtype in (torch.bfloat16, torch.float16):
        return _LowPrecisionMixedLoss.apply(logits, y, y_mix, lam, label_smoothing)
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = lam * logp.gather(1, y[:, None])[:, 0] + (1 - lam) * logp.gather(1, y_mix[:, None])[:, 0]
    if label_smoothing == 0:
        return -picked
    # PyTorch's definition: (1 - eps) * NLL + eps * mean over classes of -log p.
    return -(1 - label_smoothing) * picked - label_smoothing * logp.mean(dim=-1)


def mixed_loss_formula(logits: torch.Tensor, y: torch.Tensor, y_mix: torch.Tensor, lam: torch.Tensor,
                       label_smoothing: float) -> torch.Tensor:
    """mixed_loss written as logsumexp - (1-eps)*(mixed target logit) - eps*(mean logit), in fp32:
    for torch.compile, which fuses the upcast into its reductions (no fp32 copy of the logits)."""
    x = logits.float()
    picked = lam * x.gather(1, y[:, None])[:, 0] + (1 - lam) * x.gather(1, y_mix[:, None])[:, 0]
    return torch.logsumexp(x, dim=-1) - (1 - label_smoothing) * picked - label_smoothing * x.mean(dim=-1)


@functools.cache
def compiled_mixed_loss() -> Callable[..., torch.Tensor]:
    """mixed_loss_formula compiled once for every batch size and class count."""
    return torch.compile(mixed_loss_formula, dynamic=True)


LOSS_BLOCK_ELEMENTS = 1 << 22  # fp32 values per block of rows: 16 MB of scratch, whatever the batch


class _LowPrecisionMixedLoss(torch.autograd.Function):
    """mixed_loss of bf16/fp16 logits, computed in fp32 a block of rows at a time.

    loss = logsumexp(x) - (1-eps) * (lam x[y] + (1-lam) x[y_mix]) - eps * mean(x), and its
    gradient softmax(x) - eps/C - (1-eps) * (lam onehot(y) + (1-lam) onehot(y_mix)), rounded to
    the logits' dtype once. Only the logits (already held) and one fp32 value per row are saved.
    """

    @staticmethod
    def forward(ctx, logits, y, y_mix, lam, label_smoothing):  # noqa: ANN001, ANN205
        rows, classes = logits.shape
        lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
        mean = torch.empty_like(lse)
        for part in _row_blocks(rows, classes):
            x = logits[part].float()
            torch.logsumexp(x, dim=-1, out=lse[part])
            torch.mean(x, dim=-1, out=mean[part])
        picked = (lam * logits.gather(1, y[:, None])[:, 0].float()
                  + (1 - lam) * logits.gather(1, y_mix[:, None])[:, 0].float())
        ctx.save_for_backward(logits, y, y_mix, lam, lse)
        ctx.label_smoothing = label_smoothing
        return lse - (1 - label_smoothing) * picked - label_smoothing * mean

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        logits, y, y_mix, lam, lse = ctx.saved_tensors
        eps = ctx.label_smoothing
        rows, classes = logits.shape
        out = torch.empty(rows, classes, dtype=logits.dtype, device=logits.device)
        grad = grad.float()
        for part in _row_blocks(rows, classes):
            g = grad[part, None]
            x = logits[part].float().sub_(lse[part, None]).exp_().sub_(eps / classes).mul_(g)
            x.scatter_add_(1, y[part, None], -(1 - eps) * lam[part, None] * g)
            x.scatter_add_(1, y_mix[part, None], -(1 - eps) * (1 - lam[part, None]) * g)
            out[part] = x
        return out, None, None, None, None


def _row_blocks(rows: int, classes: int) -> list[slice]:
    step = max(1, LOSS_BLOCK_ELEMENTS // max(1, classes))
    return [slice(start, start + step) for start in range(0, rows, step)]


def seeded_linear(width: int, classes: int, seed: int, zero: bool = False) -> nn.Linear:
    """A linear head initialised from `seed` (PyTorch's default init) or at zero."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(width, classes)
    if zero:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return head


@torch.no_grad()
def predict(classifier: Classifier, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            precision: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32) and labels of a classifier over eval batches."""
    logits, labels = [], []
    for x, y in batches:
        with autocast(precision, device):
            out = classifier(x)
        logits.append(out.float())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


@torch.no_grad()
def predict_tta(classifier: Classifier, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                precision: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits averaged over the crops of each test image (batches of shape (crops, B, C, R, R))."""
    logits, labels = [], []
    for x, y in batches:
        crops, b = x.shape[0], x.shape[1]
        with autocast(precision, device):
            out = classifier(x.reshape(crops * b, *x.shape[2:]))
        logits.append(out.float().reshape(crops, b, -1).mean(dim=0))
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def topk_errors(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> tuple[float, ...]:
    """Top-k error rates; k is capped at the number of classes."""
    labels = labels.to(logits.device)
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return tuple(1.0 - hits[:, : min(k, logits.shape[1])].any(dim=1).double().mean().item() for k in ks)


def real_error(predictions: torch.Tensor, real_labels: list[list[int]]) -> float:
    """ImageNet ReaL error: a prediction is right if it is in the image's label set; empty sets skipped."""
    if len(real_labels) != len(predictions):
        raise StudyError(f"ReaL labels list {len(real_labels)} images, the test split has {len(predictions)}")
    scored = [(int(p), set(s)) for p, s in zip(predictions.tolist(), real_labels) if s]
    if not scored:
        raise StudyError("ReaL labels file has no image with a label set")
    return 1.0 - sum(p in s for p, s in scored) / len(scored)


def load_real_labels(path: str) -> list[list[int]]:
    """The ReaL labels JSON file: one list of correct class indices per test image."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise StudyError(f"cannot read ReaL labels file {path}: {error}") from None
    if not isinstance(raw, list) or not all(isinstance(s, list) for s in raw):
        raise StudyError(f"ReaL labels file {path}: expected a JSON list of lists of class indices")
    return raw


@torch.no_grad()
def predict_with_features(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], precision: str,
                          device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frozen body's features (float32), the model's logits (its head on them, batch by batch, as
    its forward computes them) and the labels, in one pass: the test split's upstream error and its
    linear-probe features from the same forward."""
    features, logits, labels = [], [], []
    for x, y in batches:
        with autocast(precision, device):
            body, out = families.features_and_logits(model, x)
        features.append(body.float())
        logits.append(out.float())
        labels.append(y)
    return torch.cat(features), torch.cat(logits), torch.cat(labels)


@torch.no_grad()
def extract_features(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     precision: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen body's features (float32, on device) and labels, computed once."""
    return predict(functools.partial(families.features, model), batches, precision, device)


def probe_paper(features: torch.Tensor, labels: torch.Tensor, classes: int, *, epochs: int, lr: float,
                batch_size: int, label_smoothing: float, seed: int) -> nn.Linear:
    """App. A.3's probe: a linear head on frozen features, LION at `lr` for `epochs` epochs.

    The head starts at zero (the problem is convex; this removes the init's noise) and sees
    the cached features in a seeded random order each epoch.
    """
    device = features.device
    head = seeded_linear(features.shape[1], classes, seed, zero=True).to(device)
    optimizer = Lion(head.parameters(), lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    labels = labels.to(device)
    n = features.shape[0]
    ones = torch.ones(min(batch_size, n), device=device)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order).to(device)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            y = labels[idx]
            loss = mixed_loss(head(features[idx]), y, y, ones[: len(idx)], label_smoothing).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.requires_grad_(False)


def probe_fast(features: torch.Tensor, labels: torch.Tensor, classes: int, *, l2: float = FAST_PROBE_L2,
               max_iter: int = FAST_PROBE_MAX_ITER) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS on standardized features, small L2.

    The standardization is folded into the returned head, which reads raw features.
    """
    device = features.device
    mean = features.mean(dim=0)
    std = features.std(dim=0).clamp_min(1e-6)
    z = (features - mean) / std
    labels = labels.to(device)
    weight = torch.zeros(classes, features.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(classes, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(torch.addmm(bias, z, weight.t()), labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    head = nn.Linear(features.shape[1], classes).to(device)
    with torch.no_grad():
        head.weight.copy_(weight / std)
        head.bias.copy_(bias - (weight / std) @ mean)
    return head.requires_grad_(False)


def probe_reference(model: nn.Module, split: data.Split, indices: np.ndarray | None, *, epochs: int,
                    batch_size: int, precision: str, device: torch.device, resolution: int, seed: int) -> nn.Linear:
    """The reference code's probe: a linear head trained by SGD on the frozen body's features of
    freshly augmented images every epoch (REFERENCE_PROBE_*), so features are not cached.

    The last partial batch is dropped as the reference's loader does, unless there is no full batch.
    """
    classes = len(split.classes)
    head = seeded_linear(families.feature_width(model), classes, derive_seed(seed, "head")).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=REFERENCE_PROBE_LR, momentum=REFERENCE_PROBE_MOMENTUM)
    rows = np.arange(len(split.labels)) if indices is None else np.asarray(indices, np.int64)
    batches = loader.TrainLoader(split, rows, batch_size, device, derive_seed(seed, "order"), REFERENCE_PROBE_CROPS,
                                 resolution, drop_last=len(rows) >= batch_size)
    if precision == "fp16":
        precision = "fp32"  # no loss scaler here
    for epoch in range(epochs):
        for batch in batches.epoch(epoch):
            with torch.no_grad(), autocast(precision, device):
                features = families.features(model, batch.x)
            loss = F.cross_entropy(head(features.float()), batch.y, label_smoothing=REFERENCE_PROBE_SMOOTHING)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), REFERENCE_PROBE_CLIP)
            optimizer.step()
    return head.requires_grad_(False)


def finetune(model: nn.Module, split: data.Split, evaluation: EvaluationConfig, *, label_smoothing: float,
             precision: str, device: torch.device, resolution: int, seed: int) -> nn.Module:
    """Sec. 4.2's fine-tuning: a copy of the model with a new head, SGD momentum 0.9, lr head/body."""
    tuned = copy.deepcopy(model)
    head = seeded_linear(families.feature_width(tuned), len(split.classes), derive_seed(seed, "head")).to(device)
    families.replace_head(tuned, head)
    body = [p for p in tuned.parameters() if all(p is not q for q in head.parameters())]
    optimizer = torch.optim.SGD(
        [{"params": head.parameters(), "lr": evaluation.finetune_lr_head},
         {"params": body, "lr": evaluation.finetune_lr_body}],
        lr=evaluation.finetune_lr_head, momentum=0.9,
    )
    augmentation = Augmentation(crop_scale=evaluation.finetune_crop_scale, flip=True, mixup=0.0)
    batches = loader.TrainLoader(split, np.arange(len(split.labels)), evaluation.probe_batch_size, device,
                                 derive_seed(seed, "order"), augmentation, resolution)
    if precision == "fp16":
        precision = "fp32"  # fine-tuning has no loss scaler; fp16 gradients could underflow
    tuned.train()
    for epoch in range(evaluation.finetune_epochs):
        for batch in batches.epoch(epoch):
            with autocast(precision, device):
                logits = tuned(batch.x)
            loss = mixed_loss(logits, batch.y, batch.y_mix, batch.lam, label_smoothing).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    tuned.eval()
    return tuned.requires_grad_(False)


def _check_channels(spec: JobSpec, dataset: str, split: data.Split) -> None:
    channels = len(split.mean)
    if channels != spec.channels:
        raise StudyError(
            f"downstream dataset {dataset!r} has {channels} channel(s) but the model was pre-trained on "
            f"{spec.pretrain.dataset!r} with {spec.channels}; use a downstream dataset with {spec.channels}"
        )


def _native_resolution(dataset: str) -> int:
    """Downstream splits are read at their native size (0 for datasets outside the catalogue);
    eval_batches and the loader resize them to the model's resolution."""
    known = data.CATALOGUE.get(dataset)
    return known.resolution if known else 0


def check_downstream(spec: JobSpec) -> None:
    """Refuse, before any training, downstream datasets whose channels differ from pre-training's."""
    for ds in spec.downstream:
        split = data.load_split(ds.dataset, ds.path, "test", _native_resolution(ds.dataset))
        _check_channels(spec, ds.dataset, split)


def evaluate(model: nn.Module, spec: JobSpec, device: torch.device, epoch: int) -> dict[str, float]:
    """All metrics of `spec.evaluation` for `model` after `epoch` epochs, as metric name -> error."""
    ev = spec.evaluation
    precision = spec.train.precision
    batch = ev.probe_batch_size
    metrics: dict[str, float] = {}
    was_training = model.training
    model.eval()
    upstream_pass = None  # (test split, its features, labels): reused by a probe on the same split
    try:
        if ev.upstream:
            test = data.load_split(spec.pretrain.dataset, spec.pretrain.path, "test", spec.resolution)
            batches = loader.eval_batches(test, batch, device, spec.resolution)
            features, logits, labels = predict_with_features(model, batches, precision, device)
            finite(logits, f"the model's logits on {spec.pretrain.dataset}")
            metrics["upstream/top1"], metrics["upstream/top5"] = topk_errors(logits, labels)
            upstream_pass = (test, features, labels)
        real = load_real_labels(ev.real_labels) if ev.real_labels else None
        finetuned = {ds.dataset for ds in spec.downstream if ds.protocol == "finetune"}
        for ds in spec.downstream:
            native = _native_resolution(ds.dataset)
            train_split = data.load_split(ds.dataset, ds.path, "train", native)
            test_split = data.load_split(ds.dataset, ds.path, "test", native)
            _check_channels(spec, ds.dataset, test_split)
            seed = derive_seed(spec.seed, f"{ds.protocol}/{ds.dataset}/{epoch}")
            classes = len(train_split.classes)
            if ds.protocol == "linear":
                rows = None  # the probe's training examples: all, or a fixed class-stratified subset
                if 0 < ev.probe_examples < len(train_split):
                    rows = data.stratified_subset(train_split.labels, ev.probe_examples, spec.subset_seed)
                if ev.probe == "reference":
                    head = probe_reference(model, train_split, rows, epochs=ev.probe_epochs, batch_size=batch,
                                           precision=precision, device=device, resolution=spec.resolution, seed=seed)
                else:
                    feats, labels = extract_features(
                        model, loader.eval_batches(train_split, batch, device, spec.resolution, rows), precision, device)
                    finite(feats, f"the model's features on {ds.dataset}")
                    if ev.probe == "fast":
                        head = probe_fast(feats, labels, classes)
                    else:
                        head = probe_paper(feats, labels, classes, epochs=ev.probe_epochs, lr=ev.probe_lr,
                                           batch_size=batch, label_smoothing=spec.train.label_smoothing, seed=seed)
                    del feats
                if upstream_pass is not None and upstream_pass[0] is test_split:  # the same cached split
                    _, test_feats, test_labels = upstream_pass
                else:
                    test_feats, test_labels = extract_features(
                        model, loader.eval_batches(test_split, batch, device, spec.resolution), precision, device)
                logits = head(finite(test_feats, f"the model's features on {ds.dataset}'s test split"))

                def classifier(x: torch.Tensor, head: nn.Module = head) -> torch.Tensor:
                    return head(families.features(model, x))

                tta_scale = spec.train.augmentation.crop_scale
            else:
                tuned = finetune(model, train_split, ev, label_smoothing=spec.train.label_smoothing,
                                 precision=precision, device=device, resolution=spec.resolution, seed=seed)
                logits, test_labels = predict(
                    tuned, loader.eval_batches(test_split, batch, device, spec.resolution), precision, device)
                finite(logits, f"the fine-tuned model's logits on {ds.dataset}")
                classifier = tuned
                tta_scale = ev.finetune_crop_scale
            metrics[f"{ds.dataset}/{ds.protocol}"] = topk_errors(logits, test_labels, (1,))[0]
            if ds.protocol == "linear" and ds.dataset in finetuned:
                continue  # TTA and ReaL points of a dataset come from its fine-tuned model
            if ev.tta_crops > 0:
                tta_batch = max(1, batch // ev.tta_crops)
                logits, test_labels = predict_tta(
                    classifier,
                    loader.tta_batches(test_split, tta_batch, device, spec.resolution, ev.tta_crops,
                                       derive_seed(seed, "tta"), scale=tta_scale),
                    precision, device)
                metrics[f"{ds.dataset}/tta"] = topk_errors(logits, test_labels, (1,))[0]
            if real is not None and len(real) == len(test_split.labels):
                metrics[f"{ds.dataset}/real"] = real_error(logits.argmax(dim=1), real)
        if real is not None and not any(k.endswith("/real") for k in metrics):
            raise StudyError(
                f"ReaL labels file {ev.real_labels} lists {len(real)} images, which matches the test split of "
                f"no downstream dataset ({', '.join(ds.dataset for ds in spec.downstream) or 'none'})"
            )
    finally:
        model.train(was_training)
    return metrics

