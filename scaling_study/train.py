"""One training trajectory: the paper's recipe, evaluations along the way, exact resume.

`train(spec)` trains to spec.total_epochs and evaluates at every epoch of spec.epochs. Its
checkpoint (model, optimizer, position, RNG states, evaluations so far, the spec) is written
atomically at the end of every evaluation epoch and of the last, at the end of any epoch a
minute or more after the previous checkpoint, every `checkpoint_every_s` and when asked to
stop; resuming from any of them on the CPU gives bit-identical weights and metrics.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import budget, data, evaluate, families, loader
from .errors import StudyError
from .evaluate import autocast, compiled_mixed_loss, derive_seed, mixed_loss, precision_dtype
from .files import write_atomic
from .optim import make_optimizer
from .plan import JobSpec
from .timing import EpochClock

CHECKPOINT_FORMAT = 1
LOSS_READS_EVERY_CUDA = 16  # steps between host reads of the loss on a GPU (see train())
EPOCH_CHECKPOINT_S = 60.0  # an epoch's end is checkpointed when the last checkpoint is older than this (see train())


def default_loss_reads(device: torch.device) -> int:
    """Steps between host reads of the loss: a read stalls a GPU's queue, and costs nothing on a CPU."""
    return LOSS_READS_EVERY_CUDA if device.type == "cuda" else 1
_NOT_COMPARED = {"path", "real_labels"}  # machine-local: a checkpoint may move between machines


@dataclass(frozen=True)
class EvalPoint:
    """One metric at one epoch; value is an error rate in [0, 1] (train/loss: the mean loss)."""

    epoch: int
    metric: str
    value: float


@dataclass
class Progress:
    """Where a running trajectory is, after an optimizer step."""

    epoch: int  # 1-based epoch in progress
    step: int  # optimizer steps done in the whole trajectory
    steps_per_epoch: int
    total_epochs: int
    loss: float  # the latest loss read back (see train(): on CUDA up to 15 steps old, NaN before the first read)
    images_per_s: float


@dataclass
class Result:
    """How a trajectory ended and every evaluation point it produced (also before a resume)."""

    status: str  # "done" | "diverged" | "interrupted"
    epochs_done: int
    evaluations: list[EvalPoint]
    message: str = ""
    step: int = 0
    loss: float = float("nan")
    notes: list[str] = field(default_factory=list)


def lr_at(step: int, total_steps: int, *, lr: float, schedule: str = "constant", warmup_steps: int = 0,
          decay_fraction: float = 0.2) -> float:
    """Learning rate of 0-based optimizer step `step` out of `total_steps`.

    Linear warmup over the first `warmup_steps` steps (from lr/warmup_steps up to lr), then
    constant; cosine from lr to 0 at step total_steps; or WSD: constant, then linear to 0 over
    the last `decay_fraction` of the steps.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay = round(decay_fraction * total_steps)
        if decay <= 0 or step < total_steps - decay:
            return lr
        return lr * max(0.0, (total_steps - step) / decay)
    raise ValueError(f"unknown schedule {schedule!r}")


def init_model(spec: JobSpec, pad_classes_to: int = 1) -> nn.Module:
    """The spec's model, initialised from a seed derived from spec.seed (global RNG untouched);
    `pad_classes_to` pads the head's product only (models.MLP), not what is initialised."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(spec.seed, "init"))
        return families.build(spec.model, spec.channels, spec.resolution, spec.classes, pad_classes_to)


CUDA_HEAD_PADDING = 64  # classes of the head's product rounded up to this on CUDA (models.MLP)


def compiles(compile: bool | None, device: torch.device) -> bool:
    """Whether a run compiles: [train].compile, or by default on CUDA only (on the CPU the first
    step's compilation costs more than the small jobs run there gain)."""
    return device.type == "cuda" if compile is None else compile


class Stepper:
    """Forward and backward of one batch, accumulated over micro-batches, then the optimizer step.

    The loss of each micro-batch is summed over its examples and divided by the whole batch's
    size, so the accumulated gradient equals the full batch's. A CUDA out-of-memory error
    halves the micro-batch and redoes the batch.
    """

    def __init__(self, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer, *, label_smoothing: float, grad_clip: float,
                 precision: str, device: torch.device, micro_batch_size: int, notes: list[str],
                 loss: Callable[..., torch.Tensor] = mixed_loss):
        self.model = model
        self.forward = forward
        self.loss = loss
        self.optimizer = optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.label_smoothing = label_smoothing
        self.grad_clip = grad_clip
        self.precision = precision
        self.device = device
        self.micro_batch_size = micro_batch_size
        self.notes = notes
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def backward(self, batch: loader.Batch) -> torch.Tensor:
        """Accumulate the batch's gradient; returns its mean loss (not yet stepped), a 0-dim
        tensor on the device: reading it is a host sync, which the caller does when it chooses."""
        while True:
            size = len(batch.y)
            micro = min(self.micro_batch_size or size, size)
            try:
                return self._accumulate(batch, micro)
            except torch.cuda.OutOfMemoryError:
                if micro <= 1:
                    raise
            # Outside the except block, so the failed attempt's tensors are freed first.
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            self.micro_batch_size = micro // 2
            self.notes.append(f"CUDA OOM at micro-batch {micro}: halved to {self.micro_batch_size}")

    def _accumulate(self, batch: loader.Batch, micro: int) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        size = len(batch.y)
        total = torch.zeros((), device=self.device)
        for start in range(0, size, micro):
            rows = min(micro, size - start)
            x, y, y_mix, lam = (t.narrow(0, start, rows) for t in (batch.x, batch.y, batch.y_mix, batch.lam))
            with autocast(self.precision, self.device):
                logits = self.forward(x)
            loss = self.loss(logits, y, y_mix, lam, self.label_smoothing)
            loss = loss.sum() / size
            self.scaler.scale(loss).backward()
            total += loss.detach()
        return total

    def step(self, lr: float) -> None:
        """Apply the accumulated gradient at learning rate `lr`."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()


def build_stepper(spec: JobSpec, device: torch.device, notes: list[str]) -> Stepper:
    """The spec's model (seeded init), optimizer and Stepper on `device`, as every training run uses them."""
    tc = spec.train
    if device.type == "cuda" and tc.precision in ("auto", "bf16"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    compile = compiles(tc.compile, device)
    if compile:
        # A worker trains one model after another in one process: each architecture is another
        # graph of MLP.forward, and the 9th would hit dynamo's recompile limit and run eager.
        # The previous jobs' graphs are of no further use.
        torch._dynamo.reset()
    model = init_model(spec, CUDA_HEAD_PADDING if device.type == "cuda" else 1).to(device)
    optimizer = make_optimizer(tc.optimizer, model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                               momentum=tc.momentum, compile=compile)
    forward = torch.compile(model) if compile else model
    return Stepper(model, forward, optimizer, label_smoothing=tc.label_smoothing, grad_clip=tc.grad_clip,
                   precision=tc.precision, device=device, micro_batch_size=tc.micro_batch_size, notes=notes,
                   loss=compiled_mixed_loss() if compile else mixed_loss)


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            if key not in _NOT_COMPARED:
                out.update(_flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, (list, tuple)):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}{i}."))
        return out or {prefix[:-1]: "[]"}
    return {prefix[:-1]: value}


def spec_difference(stored: dict, spec: JobSpec) -> str:
    """'' if `stored` describes the same job as `spec` (paths aside), else the first differences."""
    old, new = _flatten(stored), _flatten(spec.to_dict())
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>"))
    return ", ".join(f"{k}: {old.get(k, '<absent>')!r} != {new.get(k, '<absent>')!r}" for k in keys[:3])


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save, written whole and fsynced (files.write_atomic): the previous checkpoint stays
    intact until the new one is complete. Saved through a Python file object, so that a full disk
    surfaces as the OSError behind torch's RuntimeError (runner._disk_full looks for it)."""

    def write(temp: Path) -> None:
        with open(temp, "wb") as f:
            torch.save(state, f)

    write_atomic(path, write, durable=True)


def load_checkpoint(path: Path, spec: JobSpec) -> dict:
    """A checkpoint's state, refused (StudyError) when it was written for another job."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise StudyError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    except Exception:  # noqa: BLE001 - torch's own words advise weights_only=False, which would run the file's code
        raise StudyError(f"checkpoint {path} is corrupt or truncated (not a torch.save file of tensors); "
                         "delete it to start the job over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise StudyError(f"checkpoint {path} is not a scaling-study checkpoint (format {CHECKPOINT_FORMAT})")
    difference = spec_difference(state["spec"], spec)
    if difference:
        raise StudyError(f"checkpoint {path} belongs to a different job ({difference}); "
                         "delete it or run the job it was written for")
    return state


def restore_rng(states: dict) -> None:
    """The global RNG states of a checkpoint. Training draws from no CUDA generator, so a checkpoint
    written where more (or other) GPUs were visible restores those that exist here, and no more."""
    torch.set_rng_state(states["torch"])
    for index, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(state, index)


def keep_freed_memory(device: torch.device) -> None:
    """On the CPU (glibc), keep freed memory in the heap for reuse instead of returning it to the OS.

    Each step allocates megabytes of activations and gradients; by default glibc serves them
    with fresh mmaps and unmaps them on free, so every step page-faults its working set in
    again (measured on B-6/Wi-256, batch 1024: 17,000 faults and 11% of the step). This sets
    the process-wide MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ tunables through mallopt.
    """
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(32 << 20))  # M_MMAP_THRESHOLD: glibc's maximum, 32 MiB
        libc.mallopt(ctypes.c_int(-1), ctypes.c_int(2**31 - 1))  # M_TRIM_THRESHOLD: (almost) never trim


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on the CPU for the duration of training (restored afterwards)."""
    if device.type != "cpu":
        yield
        return
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def train(spec: JobSpec, *, device: str = "cpu", checkpoint: Path | None = None,
          checkpoint_every_s: float = 600.0,
          on_progress: Callable[[Progress], None] | None = None,
          on_epoch: Callable[[int, list[EvalPoint]], None] | None = None,
          should_stop: Callable[[], bool] = lambda: False, loss_reads_every: int | None = None,
          curves=None, stop_after_epoch: Callable[[], bool] | None = None, clock: EpochClock | None = None) -> Result:
    """Train one trajectory to spec.total_epochs, evaluating at every epoch in spec.epochs.

    stop_after_epoch() is asked after each epoch's on_epoch: True ends the run there, "interrupted",
    with that epoch's checkpoint (a pruned job stops at its epoch boundary this way).

    Resumes from `checkpoint` when it exists (refused if written for another spec). At the end
    of every epoch: evaluate (at evaluation epochs), write the checkpoint atomically (at
    evaluation epochs, the last, and epochs that end min(checkpoint_every_s, EPOCH_CHECKPOINT_S)
    or more after the previous checkpoint: a demo epoch takes seconds, and a durable checkpoint
    of each was a few percent of the run for nothing a resume needs), then call
    on_epoch(epochs_done, new_points). A kill -9 between checkpoints costs the epochs since the
    last one, which the resumed run redoes bit for bit. should_stop() is polled after every
    optimizer step.

    Step losses are read back to the host (for the divergence check, the mean train loss and
    the progress bar) every `loss_reads_every` steps, and always before a checkpoint, an
    evaluation or a return. A read is a host sync that stalls a GPU's queue, so CUDA reads
    every LOSS_READS_EVERY_CUDA steps by default and the CPU, where it costs nothing, every
    step. A divergence is reported at its own step either way; the steps after it are wasted,
    not saved. Results do not depend on the setting.

    curves (a curves.Curves, optional) gets every step's loss, lr and img/s and every evaluation
    point, and is flushed before each checkpoint is written.

    clock (a timing.EpochClock, optional; the caller may time its own parts on it, as the runner
    does its database writes in on_epoch) gets this run's set-up, training steps, evaluation,
    checkpoints and curves, and a lap after each epoch's on_epoch; each lap also goes to curves
    as time/<part>_s scalars at the epoch's last step.
    """
    dev = torch.device(device)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    clock = clock or EpochClock()
    reads_every = loss_reads_every or default_loss_reads(dev)
    with contextlib.ExitStack() as restore:
        with clock.part("setup"):  # the first switch to deterministic kernels imports much of torch
            keep_freed_memory(dev)
            restore.enter_context(_deterministic(dev))
        return _train(spec, dev, checkpoint, checkpoint_every_s, on_progress, on_epoch, should_stop, reads_every,
                      curves, stop_after_epoch, clock)


def _train(spec: JobSpec, device: torch.device, checkpoint: Path | None, checkpoint_every_s: float,
           on_progress: Callable[[Progress], None] | None,
           on_epoch: Callable[[int, list[EvalPoint]], None] | None,
           should_stop: Callable[[], bool], reads_every: int, curves, stop_after_epoch: Callable[[], bool] | None,
           clock: EpochClock) -> Result:
    tc = spec.train
    with clock.part("setup"):  # reading the data, building the loader and model, loading a checkpoint
        state = load_checkpoint(checkpoint, spec) if checkpoint is not None and checkpoint.exists() else None

        split = data.load_split(spec.pretrain.dataset, spec.pretrain.path, "train", spec.resolution)
        if len(split.mean) != spec.channels or len(split.classes) != spec.classes:
            raise StudyError(
                f"{spec.pretrain.dataset} at {spec.pretrain.path!r} has {len(split.mean)} channels and "
                f"{len(split.classes)} classes; the job was planned for {spec.channels} and {spec.classes} "
                f"(set classes and channels in [data.pretrain], or prepare it with `study data prepare`, and plan again)"
            )
        evaluate.check_downstream(spec)
        indices = data.stratified_subset(split.labels, spec.examples, spec.subset_seed)
        batches = loader.TrainLoader(split, indices, tc.batch_size, device, spec.seed, tc.augmentation, spec.resolution,
                                     drop_last=tc.drop_last, dtype=precision_dtype(tc.precision, device))
        steps_per_epoch = budget.steps_per_epoch(spec.examples, tc.batch_size, tc.drop_last)
        total_steps = budget.total_steps(spec.examples, tc.batch_size, spec.total_epochs, tc.drop_last)
        if steps_per_epoch == 0:
            raise StudyError(f"drop_last with batch size {tc.batch_size} leaves no step for {spec.examples} examples")
        if len(batches) != steps_per_epoch:
            raise StudyError(f"the loader gives {len(batches)} batches per epoch, the budget {steps_per_epoch}")
        warmup_steps = round(tc.warmup_epochs * steps_per_epoch)

        notes: list[str] = []
        stepper = build_stepper(spec, device, notes)
        model, optimizer = stepper.model, stepper.optimizer

        epoch, batch_index, step = 0, 0, 0  # epochs done, batches done in the current epoch, steps done
        loss_sum, loss_count, last_loss = 0.0, 0, float("nan")
        evaluations: list[EvalPoint] = []
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            stepper.scaler.load_state_dict(state["scaler"])
            stepper.micro_batch_size = state["micro_batch_size"]
            epoch, batch_index, step = state["epoch"], state["batch"], state["step"]
            loss_sum, loss_count, last_loss = state["loss_sum"], state["loss_count"], state["last_loss"]
            evaluations = [EvalPoint(int(e), str(m), float(v)) for e, m, v in state["evaluations"]]
            notes.extend(state["notes"])
            restore_rng(state["rng"])
            if device.type == "cpu" and state.get("threads", torch.get_num_threads()) != torch.get_num_threads():
                # the job keeps the thread count it started with, whatever else now runs on this host:
                # another count sums in another order, and the resume would not be bit-identical
                torch.set_num_threads(state["threads"])

    def save() -> None:
        if curves is not None:
            with clock.part("curves"):
                curves.flush()  # before the checkpoint: every step up to it is on disk (curves.py)
        if checkpoint is None:
            return
        with clock.part("checkpoint"):
            save_checkpoint(checkpoint, position())

    def position() -> dict:
        """Everything a resume needs, as the checkpoint holds it."""
        return {
            "format": CHECKPOINT_FORMAT,
            "spec": spec.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": stepper.scaler.state_dict(),
            "micro_batch_size": stepper.micro_batch_size,
            "epoch": epoch, "batch": batch_index, "step": step,
            "loss_sum": loss_sum, "loss_count": loss_count, "last_loss": last_loss,
            "evaluations": [(p.epoch, p.metric, p.value) for p in evaluations],
            "notes": list(notes),
            "threads": torch.get_num_threads(),  # CPU ops reduce in an order that depends on it
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
        }

    def result(status: str, message: str = "", at_step: int | None = None) -> Result:
        return Result(status, epoch, list(evaluations), message, step if at_step is None else at_step, last_loss,
                      list(notes))

    unread: list[tuple[torch.Tensor, int, int]] = []  # (loss on the device, batch size, 1-based step)

    def read_losses() -> Result | None:
        """Bring the unread step losses to the host in one sync, in step order: the first that
        diverged ends the trajectory; the others add to the epoch's mean loss."""
        nonlocal loss_sum, loss_count, last_loss
        values = torch.stack([loss for loss, _, _ in unread]).tolist() if unread else []
        for value, (_, size, at_step) in zip(values, unread):
            last_loss = value
            if curves is not None:
                with clock.part("curves"):
                    curves.scalar("step/loss", at_step, value)
            if not math.isfinite(value) or value > tc.divergence_loss:
                limit = "" if not math.isfinite(value) else f" (above divergence_loss {tc.divergence_loss:g})"
                return result("diverged", f"loss {value:.6g}{limit} at step {at_step} (epoch {epoch + 1})", at_step)
            loss_sum += value * size
            loss_count += size
        unread.clear()
        return None

    last_save = time.monotonic()
    model.train()
    while epoch < spec.total_epochs:
        started, images = time.perf_counter(), 0
        with clock.part("train"):  # the steps, with the loader's batches; curves and checkpoints are their own parts
            for batch in batches.epoch(epoch, start_batch=batch_index):
                size = len(batch.y)
                loss = stepper.backward(batch)
                lr = lr_at(step, total_steps, lr=tc.lr, schedule=tc.schedule, warmup_steps=warmup_steps,
                           decay_fraction=tc.decay_fraction)
                stepper.step(lr)
                step += 1
                unread.append((loss, size, step))
                # After the step, which is then queued already: a read between backward and step would
                # leave a GPU idle while the host reads. A diverged step is applied, never saved.
                if len(unread) >= reads_every and (diverged := read_losses()):
                    return diverged
                batch_index += 1
                images += size
                if curves is not None:
                    elapsed = time.perf_counter() - started
                    with clock.part("curves"):
                        curves.scalar("step/lr", step, lr)
                        curves.scalar("step/images_per_s", step, images / elapsed if elapsed > 0 else 0.0)
                if on_progress is not None:
                    elapsed = time.perf_counter() - started
                    with clock.part("other"):  # the caller's display, not training
                        on_progress(Progress(epoch + 1, step, steps_per_epoch, spec.total_epochs, last_loss,
                                             images / elapsed if elapsed > 0 else 0.0))
                if should_stop():
                    if diverged := read_losses():
                        return diverged
                    save()
                    return result("interrupted", f"stopped at step {step} (epoch {epoch + 1})")
                if checkpoint is not None and time.monotonic() - last_save >= checkpoint_every_s:
                    if diverged := read_losses():
                        return diverged
                    save()
                    last_save = time.monotonic()
            if diverged := read_losses():
                return diverged
        if batch_index != steps_per_epoch:
            raise StudyError(f"epoch {epoch + 1} ended after {batch_index} of {steps_per_epoch} batches")
        epoch += 1
        batch_index = 0
        new: list[EvalPoint] = []
        if epoch in spec.epochs:
            try:
                with clock.part("eval"):
                    metrics = evaluate.evaluate(model, spec, device, epoch)
            except evaluate.NonFiniteModel as error:  # finite losses, but features that overflow: no score
                return result("diverged", f"{error} (epoch {epoch})")
            new = [EvalPoint(epoch, name, value) for name, value in metrics.items()]
            new.append(EvalPoint(epoch, "train/loss", loss_sum / loss_count))
            evaluations.extend(new)
            if curves is not None:
                with clock.part("curves"):
                    for point in new:
                        curves.scalar(f"eval/{point.metric}", step, point.value)
        loss_sum, loss_count = 0.0, 0
        saved = (epoch in spec.epochs or epoch == spec.total_epochs
                 or time.monotonic() - last_save >= min(checkpoint_every_s, EPOCH_CHECKPOINT_S))
        if saved:
            save()
            last_save = time.monotonic()
        if on_epoch is not None:
            on_epoch(epoch, new)
        times = clock.lap(epoch)
        if curves is not None:
            with clock.part("curves"):  # on disk at the next flush: a kill -9 before it loses these, never a step
                for name, value in times.items():
                    curves.scalar(f"time/{name}_s", step, value)
        if stop_after_epoch is not None and epoch < spec.total_epochs and stop_after_epoch():
            if not saved:
                save()
            return result("interrupted", f"stopped at the end of epoch {epoch}")
    return result("done")
