"""`study bench`: how fast this device trains each model of a grid, so `study plan` can give hours.

For one model at the grid's resolution, channels, [train].batch_size and precision, in one
process: training img/s end to end (the real TrainLoader and augmentation over synthetic uint8
images, feeding the model, optimizer and Stepper exactly as train() builds them), torch.mm
FLOP/s at the step's own GEMM shapes, MFU (training FLOP/s counted exactly over that GEMM
rate), loader-only img/s and peak memory. benchmarks/train_mfu.py uses the same counting and
GEMM timing from here.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import itertools
import json
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import families
from .data import Split
from .errors import StudyError
from .grid import EvaluationConfig, Grid, PretrainData, TrainConfig
from .loader import Batch, TrainLoader
from .models import ModelSpec, parse_model
from .plan import JobSpec, expand
from .evaluate import evaluate, precision_dtype, resolved_precision
from .train import (Stepper, _deterministic, build_stepper, compiles, default_loss_reads, init_model,
                    keep_freed_memory)

WARMUP_STEPS = 3
REPEAT_EVALUATION_S = 30.0  # a longer evaluation is timed once, its data loading included


# ---------------------------------------------------------------- FLOPs and the GEMM reference


def sync(device: torch.device) -> None:
    """Wait for the device, so that wall time covers the work queued on it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Least wall time of one call of fn over `repeats` calls (after one warm-up call)."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


FAMILY_GEMM = 1024  # another family's MFU is against torch.mm at (batch, 1024) x (1024, 1024): its step has no GEMM list


def train_flops_per_example(model: ModelSpec, input_dim: int, classes: int) -> float:
    """Exact FLOPs (2 per multiply-accumulate) of training on one example.

    The forward costs 2*MACs and the backward 4*MACs, less the embedding's input gradient,
    which is never computed: 2 * (3 * MACs - MACs_embedding).
    """
    return 2.0 * (3 * model.flops(input_dim, classes) - input_dim * model.width)


def gemm_shapes(model: ModelSpec, input_dim: int, classes: int, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product of one training step, the embedding's input gradient excluded."""
    width, hidden = model.width, model.width * model.expansion
    layers = [(input_dim, width)]
    for _ in range(model.depth):
        layers += [(width, hidden), (hidden, width)] if model.kind == "bottleneck" else [(width, width)]
    layers.append((width, classes))
    shapes = []
    for i, (fan_in, fan_out) in enumerate(layers):
        shapes.append((batch, fan_in, fan_out))  # forward
        shapes.append((fan_out, batch, fan_in))  # weight gradient
        if i > 0:
            shapes.append((batch, fan_out, fan_in))  # input gradient
    return shapes


def matmul_rate(shapes: list[tuple[int, int, int]], device: torch.device, repeats: int,
                dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of torch.mm over the given shapes (total FLOPs over total best times)."""
    flops = seconds = 0.0
    for m, k, n in sorted(set(shapes)):
        count = shapes.count((m, k, n))
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        seconds += count * best_time(lambda: torch.mm(a, b), device, repeats)
        flops += count * 2.0 * m * k * n
    return flops / seconds


# ---------------------------------------------------------------- the product's own training step


def synthetic_spec(model: str, *, resolution: int, channels: int, classes: int, train: TrainConfig) -> JobSpec:
    """A job on synthetic data of the given shape, for benchmarks outside any grid."""
    return JobSpec(
        model=parse_model(model, "benchmark"), pretrain=PretrainData("synthetic", classes=classes, channels=channels),
        resolution=resolution, channels=channels, classes=classes, examples=train.batch_size, subset_seed=0, seed=0,
        epochs=(1,), train=train, downstream=(), evaluation=EvaluationConfig(),
    )


def make_stepper(spec: JobSpec, device: torch.device) -> Stepper:
    """The model, optimizer and Stepper exactly as train() builds them for `spec`, in training mode."""
    stepper = build_stepper(spec, device, [])
    stepper.model.train()
    return stepper


def synthetic_split(count: int, channels: int, resolution: int, classes: int, seed: int = 0) -> Split:
    """Random uint8 images of the given shape with balanced labels, as a prepared store would give them."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, channels, resolution, resolution), dtype=np.uint8)
    labels = np.arange(count, dtype=np.int64) % classes
    return Split(images, labels, tuple(map(str, range(classes))), (0.5,) * channels, (0.29,) * channels, "synthetic")


def endless(loader: TrainLoader) -> Iterator[Batch]:
    """The loader's batches epoch after epoch, as a long training run draws them."""
    for epoch in itertools.count():
        yield from loader.epoch(epoch)


def cpu_name() -> str:
    """The CPU's model, family and architecture (Linux's /proc/cpuinfo), else its architecture:
    ratios such as MFU differ between CPUs of one architecture, so a figure names its CPU."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    family = f" (family {fields['cpu family']}, model {fields['model']})" if "cpu family" in fields else ""
    return f"{fields['model name']}{family}, {platform.machine()}"


def device_name(device: torch.device) -> str:
    """The device as a person would name it: the GPU's model, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------- peak memory


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


class PeakMemory:
    """Peak memory of one measurement: the CUDA allocator's peak, or on the CPU the process's
    peak RSS growth (Linux VmHWM, reset per model through /proc/self/clear_refs; elsewhere
    ru_maxrss, a lifetime peak that an earlier, larger model hides)."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.method = "torch.cuda.max_memory_allocated"
            return
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):  # give the heap kept by keep_freed_memory back
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.start, self._high = _proc_status_bytes("VmRSS"), lambda: _proc_status_bytes("VmHWM")
            self.method = "cpu: peak RSS (VmHWM) minus RSS at the start of the model's measurement"
        except OSError:
            self.start, self._high = _maxrss(), _maxrss
            self.method = "cpu: growth of ru_maxrss (a lifetime peak: 0 when an earlier model peaked higher)"

    def peak(self) -> int:
        """Bytes at the peak since construction."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return max(0, self._high() - self.start)


# ---------------------------------------------------------------- measuring one model


@dataclass(frozen=True)
class Measurement:
    """One model's calibration on one device; `row()` is what db.add_calibration stores."""

    device: str
    model: str
    resolution: int
    channels: int
    batch_size: int
    precision: str
    images_per_s: float  # training, end to end: loader + augmentation + step
    loader_images_per_s: float
    train_flops_per_example: float
    gemm_flops_per_s: float
    peak_memory_bytes: int
    details: dict
    evaluation_s: float | None = None  # one evaluation point; None: not measured (details["evaluation"] says why)

    @property
    def train_flops_per_s(self) -> float:
        return self.images_per_s * self.train_flops_per_example

    @property
    def mfu(self) -> float:
        """Training FLOP/s over torch.mm's FLOP/s at the step's own shapes, in the same process."""
        return self.train_flops_per_s / self.gemm_flops_per_s

    def row(self) -> dict:
        """Keyword arguments of db.add_calibration."""
        details = {**self.details, "loader_images_per_s": self.loader_images_per_s, "evaluation_s": self.evaluation_s,
                   "train_flops_per_example": self.train_flops_per_example,
                   "train_flops_per_s": self.train_flops_per_s, "gemm_flops_per_s": self.gemm_flops_per_s}
        return dict(device=self.device, model=self.model, resolution=self.resolution, channels=self.channels,
                    batch_size=self.batch_size, precision=self.precision, images_per_s=self.images_per_s,
                    mfu=self.mfu, peak_memory_bytes=self.peak_memory_bytes, details=json.dumps(details, sort_keys=True))


def model_specs(grid: Grid, models: list[str] | None = None) -> list[JobSpec]:
    """One job per model of the grid (or of `models`, names from the grid) at [train].batch_size."""
    first: dict[str, JobSpec] = {}
    for spec in expand(grid):
        first.setdefault(spec.model.name, dataclasses.replace(spec, train=grid.train))
    unknown = [name for name in models or () if name not in first]
    if unknown:
        raise StudyError(f"model {unknown[0]!r} is not in {grid.path}; its models: {', '.join(first)}")
    return [first[name] for name in dict.fromkeys(models)] if models else list(first.values())


def _timed(count: int, fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for `count` calls of fn, the device's queue included."""
    sync(device)
    start = time.perf_counter()
    for _ in range(count):
        fn()
    sync(device)
    return time.perf_counter() - start


def evaluation_seconds(spec: JobSpec, device: torch.device) -> tuple[float | None, str]:
    """Seconds of one evaluation point of `spec` on its real data, and how it was measured.

    The second of two evaluations of a freshly initialised model: the first also reads the
    datasets into the process's cache, which a worker does once, not at every point. A first
    call longer than REPEAT_EVALUATION_S (fine-tuning, say) is not repeated: loading is then a
    small part of it. (None, why) when the grid's data cannot be read here.
    """
    if not spec.evaluation.upstream and not spec.downstream:
        return 0.0, "nothing to evaluate"
    model = init_model(spec).to(device)
    seconds, how = 0.0, "evaluate() on the grid's data, untrained model"
    for call in ("first", "second"):
        sync(device)
        start = time.perf_counter()
        try:
            evaluate(model, spec, device, spec.epochs[-1])
        except StudyError as error:
            return None, f"not measured: {error}"
        sync(device)
        seconds = time.perf_counter() - start
        if seconds > REPEAT_EVALUATION_S:
            break
    return seconds, f"{how}, {call} call"


def measure(spec: JobSpec, device: str | torch.device, steps: int = 10, warmup: int = WARMUP_STEPS,
            gemm_repeats: int = 3, evaluation: bool = True) -> Measurement:
    """Measure one model: training and loader img/s, the GEMM reference, MFU, peak memory and
    (when `evaluation`) the seconds of one evaluation point."""
    dev = torch.device(device)
    tc = spec.train
    keep_freed_memory(dev)  # as train() does
    # Two batches of images: the loader goes through epochs of them as it would through a subset.
    split = synthetic_split(2 * tc.batch_size, spec.channels, spec.resolution, spec.classes, spec.seed)

    def build() -> tuple[TrainLoader, Callable[[], None]]:
        loader = TrainLoader(split, np.arange(len(split)), tc.batch_size, dev, spec.seed, tc.augmentation,
                             spec.resolution, dtype=precision_dtype(tc.precision, dev))
        stepper, batches = make_stepper(spec, dev), endless(loader)
        taken = itertools.count(1)
        reads_every = default_loss_reads(dev)

        def train_step() -> None:
            loss = stepper.backward(next(batches))
            stepper.step(tc.lr)
            if next(taken) % reads_every == 0:
                loss.item()  # the host sync train() makes this often (after the step), to read the losses

        return loader, train_step

    with _deterministic(dev):
        # One step before the memory mark, not counted: torch's one-time set-up (thread pools,
        # code pages; ~100 MB on a CPU) is no model's memory.
        build()[1]()
        memory = PeakMemory(dev)
        loader, train_step = build()
        _timed(warmup, train_step, dev)
        train_s = _timed(steps, train_step, dev)
        peak = memory.peak()
        del train_step
        batches = endless(loader)
        _timed(warmup, lambda: next(batches), dev)
        loader_s = _timed(steps, lambda: next(batches), dev)
        evaluation_s, how = evaluation_seconds(spec, dev) if evaluation else (None, "not measured: --no-evaluation")
    precision = resolved_precision(tc.precision, dev)
    dtype = precision_dtype(precision, dev)
    shapes = (gemm_shapes(spec.model, spec.input_dim, spec.classes, tc.batch_size) if families.is_mlp(spec.model)
              else [(tc.batch_size, FAMILY_GEMM, FAMILY_GEMM)])
    gemm = matmul_rate(shapes, dev, gemm_repeats, dtype)
    images = steps * tc.batch_size
    details = {
        "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "optimizer": tc.optimizer, "compile": compiles(tc.compile, dev), "micro_batch_size": tc.micro_batch_size,
        "steps": steps, "warmup_steps": warmup, "step_s": train_s / steps,
        "loader": f"TrainLoader, {'device-resident' if loader.resident else 'streamed'}, synthetic uint8 images, "
                  "the grid's augmentation",
        "gemm": (f"torch.mm at the step's GEMM shapes in {dtype}, best of {gemm_repeats}" if families.is_mlp(spec.model)
                 else f"torch.mm at ({tc.batch_size}, {FAMILY_GEMM}, {FAMILY_GEMM}) in {dtype}, best of {gemm_repeats}"),
        "peak_memory": memory.method, "evaluation": how,
    }
    return Measurement(
        device=device_name(dev), model=spec.model.name, resolution=spec.resolution, channels=spec.channels,
        batch_size=tc.batch_size, precision=precision, images_per_s=images / train_s,
        loader_images_per_s=images / loader_s,
        train_flops_per_example=(train_flops_per_example(spec.model, spec.input_dim, spec.classes)
                                 if families.is_mlp(spec.model)
                                 else families.train_flops(spec.model, spec.channels, spec.resolution, spec.classes)),
        gemm_flops_per_s=gemm, peak_memory_bytes=peak, details=details, evaluation_s=evaluation_s,
    )
