"""Bytes a training step moves outside its matrix products, counted from the code's own ops, on a CPU.

A GPU step of the paper's setting is bound by two things: its GEMM FLOPs at the matmul rate,
and the bytes every other kernel reads and writes at the memory bandwidth. Both can be counted
without a GPU:

- eager code: every aten op of the product's Stepper (forward, loss, backward) and optimizer,
  recorded by a TorchDispatchMode on meta tensors at the full batch (nothing is allocated). Views
  cost nothing; every other op reads its inputs and writes its outputs once. CUDA's autocast
  does not run on a CPU build, so its policy for the ops these models call is applied by a
  TorchFunctionMode: `linear` in bf16, `layer_norm` in fp32, as torch's CUDA autocast lists them.
- compiled code (torch.compile, inductor): the bytes inductor's own scheduler gives each fused
  kernel it generates (its `count_bytes`, as `inductor_metrics` logs them), from compiling the
  step on the CPU under bf16 autocast at two small batches, extrapolated linearly to the full
  batch (activations scale with the batch, weight casts do not). Extern kernels (the GEMMs) are
  left out. Triton's fusion on a GPU may differ in details from the CPU backend's.
- the loader: TrainLoader's ops on a resident uint8 subset, counted at a small batch and scaled.

step time = GEMM FLOPs / peak + non-GEMM bytes / bandwidth; the fraction of peak is the paper's
FLOPs (unpadded head) over peak, over that time. Launch gaps and host time are not modelled.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from scaling_study.bench import synthetic_split, train_flops_per_example
from scaling_study.evaluate import mixed_loss, mixed_loss_formula
from scaling_study.grid import Augmentation
from scaling_study.loader import Batch, TrainLoader
from scaling_study.models import build, parse_model
from scaling_study.optim import Lion
from scaling_study.train import Stepper

aten = torch.ops.aten
GEMMS = {aten.mm.default, aten.addmm.default, aten.bmm.default}
SCATTERS = {"scatter_", "scatter_add_", "index_put_", "index_add_", "index_copy_"}
FUSED_LION_BYTES_PER_PARAMETER = 5 * 4  # the compiled update reads p, g, m and writes p, m, all fp32
# loader_batch of the loader as written before its MixUp blended out of place and its batches came in
# the model's dtype (commit 8c84279; 64x64x3, the paper's augmentation): 11.55 GB per 16384 images
AS_WRITTEN_LOADER_BYTES_PER_IMAGE = 11_552_294_400 / 16384


@dataclass
class Count:
    """Non-GEMM bytes by op name, and the GEMMs' FLOPs."""

    bytes: collections.Counter = field(default_factory=collections.Counter)
    gemm_flops: float = 0.0

    @property
    def total(self) -> float:
        return float(sum(self.bytes.values()))

    def scaled(self, factor: float) -> "Count":
        return Count(collections.Counter({k: v * factor for k, v in self.bytes.items()}), self.gemm_flops * factor)

    def __add__(self, other: "Count") -> "Count":
        return Count(self.bytes + other.bytes, self.gemm_flops + other.gemm_flops)


def _nbytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches for tensor t: its elements, or its storage when broadcast (stride 0)."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


class CountOps(TorchDispatchMode):
    """Adds every aten op's bytes (inputs read, outputs written; views free) or GEMM FLOPs to a Count."""

    def __init__(self, count: Count):
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in GEMMS:
            a, b = (args[1], args[2]) if func is aten.addmm.default else (args[0], args[1])
            batches = a.shape[0] if a.dim() == 3 else 1
            self.count.gemm_flops += 2.0 * batches * a.shape[-2] * a.shape[-1] * b.shape[-1]
            return out
        name = func.overloadpacket.__name__
        if func.is_view or name.startswith("empty"):
            return out
        inputs = [t for t in tree_flatten((args, {k: v for k, v in kwargs.items() if k != "out"}))[0]
                  if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if name == "copy_":
            inputs = inputs[1:]  # the destination is written, not read
        elif name in SCATTERS:  # in place at a few positions: the indices and values read, as many written
            inputs = outputs = inputs[1:]
        self.count.bytes[name] += sum(map(_nbytes, inputs)) + sum(map(_nbytes, outputs))
        return out


class CudaAutocastPolicy(TorchFunctionMode):
    """torch.autocast('cuda', bf16) for the ops these models call, on any device: linear's tensors
    cast to bf16, layer_norm's to fp32 (autocast's lower-precision and fp32 lists)."""

    LOWER, FP32 = {F.linear}, {F.layer_norm}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        dtype = torch.bfloat16 if func in self.LOWER else torch.float32 if func in self.FP32 else None
        if dtype is not None:
            args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        return func(*args, **(kwargs or {}))


def meta_model(name: str, classes: int, resolution: int, pad_classes_to: int) -> torch.nn.Module:
    with torch.device("meta"):
        return build(parse_model(name, "benchmark"), 3 * resolution**2, classes, pad_classes_to)


def old_loss(logits: torch.Tensor, *rest) -> torch.Tensor:
    """The loss as it was written before the blockwise one: an fp32 copy of the logits, then log_softmax."""
    return mixed_loss(logits.float(), *rest)


def eager_step(name: str, classes: int, batch: int, resolution: int, *, loss: Callable, pad_classes_to: int,
               lion: str, x_dtype: torch.dtype) -> tuple[Count, Count]:
    """(forward + loss + backward, optimizer) counts of the eager Stepper at the full batch, on meta
    tensors under CUDA's autocast policy. lion: 'eager' (counted) or 'fused' (its one kernel's bytes)."""
    model = meta_model(name, classes, resolution, pad_classes_to)
    optimizer = Lion(model.parameters(), lr=1e-5, weight_decay=1e-3)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with CudaAutocastPolicy():
            return model(x)

    stepper = Stepper(model, forward, optimizer, label_smoothing=0.3, grad_clip=0.0, precision="fp32",
                      device=torch.device("meta"), micro_batch_size=0, notes=[], loss=loss)
    meta = torch.device("meta")
    data = Batch(torch.empty(batch, 3, resolution, resolution, device=meta, dtype=x_dtype),
                 torch.zeros(batch, dtype=torch.long, device=meta), torch.zeros(batch, dtype=torch.long, device=meta),
                 torch.empty(batch, device=meta))
    stepper.backward(data)
    stepper.step(1e-5)  # the optimizer's state exists from here on, as in every later step
    step, update = Count(), Count()
    with CountOps(step):
        stepper.backward(data)
    if lion == "fused":
        parameters = sum(p.numel() for p in model.parameters())
        update.bytes["lion (fused, compiled)"] = FUSED_LION_BYTES_PER_PARAMETER * parameters
    else:
        with CountOps(update):
            stepper.step(1e-5)
    return step, update


@contextlib.contextmanager
def _inductor_kernel_bytes(graphs: list[dict]):
    """Record, for every graph inductor compiles, the bytes of its generated kernels and of its extern ones."""
    import torch._inductor.config as inductor_config
    import torch._inductor.graph as inductor_graph

    original = inductor_graph.GraphLowering.count_bytes

    def count_bytes(self):  # noqa: ANN001, ANN202
        kernels = collections.Counter()
        for node in self.scheduler.nodes:
            kind = "extern" if type(node).__name__.startswith("Extern") else "generated"
            kernels[kind] += int(node.get_read_write_buffers_sizes())
        graphs.append(dict(kernels))
        return original(self)

    inductor_graph.GraphLowering.count_bytes = count_bytes
    torch._logging.set_logs(inductor_metrics=True)  # what makes inductor call count_bytes
    try:
        with inductor_config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
            yield
    finally:
        inductor_graph.GraphLowering.count_bytes = original
        torch._logging.set_logs()


def compiled_step(name: str, classes: int, batch: int, resolution: int, *, pad_classes_to: int,
                  small: tuple[int, int] = (32, 64)) -> Count:
    """Bytes of inductor's generated kernels for the compiled forward, loss and backward, at the two
    `small` batches on the CPU (bf16 autocast), extrapolated linearly to `batch`."""
    totals = []
    for rows in small:
        torch._dynamo.reset()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build(parse_model(name, "benchmark"), 3 * resolution**2, classes, pad_classes_to)
        forward, loss = torch.compile(model, dynamic=False), torch.compile(mixed_loss_formula, dynamic=False)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(rows, 3, resolution, resolution, generator=g).to(torch.bfloat16)  # the loader's batches
        y = torch.randint(0, classes, (rows,), generator=g)
        graphs: list[dict] = []
        with _inductor_kernel_bytes(graphs):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = forward(x)
            loss(logits, y, y.roll(1), torch.rand(rows, generator=g), 0.3).sum().backward()
        if len(graphs) != 4:  # forward, loss, loss backward, backward
            raise RuntimeError(f"expected 4 compiled graphs, got {len(graphs)}: a graph break or a cache hit")
        totals.append(sum(graph.get("generated", 0) for graph in graphs))
    slope = (totals[1] - totals[0]) / (small[1] - small[0])
    count = Count()
    count.bytes["compiled forward, loss, backward"] = totals[0] + slope * (batch - small[0])
    torch._dynamo.reset()
    return count


def loader_batch(batch: int, resolution: int, *, small: int = 256, dtype: torch.dtype = torch.bfloat16) -> Count:
    """TrainLoader's ops for one resident batch with the paper's augmentation, counted at `small`
    images and scaled to `batch` (each op's bytes are proportional to the batch)."""
    split = synthetic_split(2 * small, 3, resolution, 10)
    loader = TrainLoader(split, np.arange(len(split)), small, "cpu", 0, Augmentation(), resolution, resident=True,
                         dtype=dtype)
    batches = loader.epoch(0)
    next(batches)
    count = Count()
    with CountOps(count):
        next(batches)
    return count.scaled(batch / small)


def streamed_read_rate(resolution: int, batch: int = 16384, images: int = 131072, epochs: int = 6) -> dict:
    """Images per second the streamed loader's reads gather on this CPU: _Streamed.read of shuffled
    batches from a memory-mapped file in the page cache, STREAM_DEPTH threads at once as the loader
    runs them, epoch after epoch over the same mapping as a training run reads it.

    The first epoch also maps each page into the process (a page fault per few pages); every later
    epoch reads pages already mapped. A run of hundreds of epochs is paced by the later ones, so
    `images_per_s` is their median and the first epoch is reported beside it."""
    import os
    import statistics
    import tempfile
    import time
    from concurrent.futures import ThreadPoolExecutor

    from scaling_study.loader import STREAM_DEPTH, _Streamed

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "images.npy")
        stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(images, 3, resolution, resolution))
        stored[:] = np.random.default_rng(0).integers(0, 256, stored.shape[1:], dtype=np.uint8)
        stored.flush()
        del stored
        streamed = _Streamed(np.load(path, mmap_mode="r"), torch.device("cpu"))
        rng = np.random.default_rng(1)
        rates = []
        with ThreadPoolExecutor(STREAM_DEPTH) as readers:
            for _ in range(epochs):
                draws = np.array_split(rng.permutation(images), images // batch)
                started = time.perf_counter()
                list(readers.map(streamed.read, [b % STREAM_DEPTH for b in range(len(draws))], draws))
                rates.append(images / (time.perf_counter() - started))
    return {"threads": STREAM_DEPTH, "cores": os.cpu_count(), "batch": batch, "images": images,
            "first_epoch_images_per_s": rates[0], "later_epochs_images_per_s": rates[1:],
            "images_per_s": statistics.median(rates[1:])}


@dataclass(frozen=True)
class Modelled:
    """One configuration's counted step and the time and fraction of peak they imply."""

    label: str
    parts: dict[str, float]  # non-GEMM bytes by part of the step
    gemm_flops: float  # executed (a padded head executes more than the paper counts)
    useful_flops: float  # the paper's: 2 * (3 * MACs - MACs of the embedding's input gradient)
    peak: float
    bandwidth: float

    @property
    def bytes(self) -> float:
        return sum(self.parts.values())

    @property
    def step_s(self) -> float:
        return self.gemm_flops / self.peak + self.bytes / self.bandwidth

    @property
    def fraction_of_peak(self) -> float:
        return self.useful_flops / self.peak / self.step_s

    def row(self) -> dict:
        return {"label": self.label, "non_gemm_bytes": self.bytes, "parts": self.parts, "gemm_flops": self.gemm_flops,
                "useful_flops": self.useful_flops, "step_s": self.step_s, "fraction_of_peak": self.fraction_of_peak}


def model_step(name: str, classes: int, batch: int, resolution: int, peak: float, bandwidth: float,
               compiled: bool = True) -> list[Modelled]:
    """The step as it was written (eager, fp32 batches and loss copy, unfused LION, unpadded head), and
    as CUDA's defaults run it now (compiled model and loss, fused LION, padded head, bf16 batches),
    also with compile off."""
    useful = batch * train_flops_per_example(parse_model(name, "benchmark"), 3 * resolution**2, classes)
    loader = loader_batch(batch, resolution).total
    configurations = [
        ("as written: eager, fp32 batches and loss copy, unfused LION, unpadded head",
         dict(loss=old_loss, pad_classes_to=1, lion="eager", x_dtype=torch.float32), False,
         AS_WRITTEN_LOADER_BYTES_PER_IMAGE * batch * (resolution / 64) ** 2),
        ("now, compile off: eager, blockwise loss, unfused LION, padded head, bf16 batches",
         dict(loss=mixed_loss, pad_classes_to=64, lion="eager", x_dtype=torch.bfloat16), False, loader)]
    if compiled:
        configurations.append(("now, CUDA's defaults: compiled model and loss, fused LION, padded head, bf16 batches",
                               dict(loss=mixed_loss, pad_classes_to=64, lion="fused", x_dtype=torch.bfloat16), True,
                               loader))
    rows = []
    for label, options, compile, loader_bytes in configurations:
        step, update = eager_step(name, classes, batch, resolution, **options)
        model_bytes = compiled_step(name, classes, batch, resolution, pad_classes_to=64).total if compile else step.total
        parts = {"model, loss and backward": model_bytes, "optimizer": update.total, "loader": loader_bytes}
        rows.append(Modelled(label, parts, step.gemm_flops, useful, peak, bandwidth))
    return rows
