"""Batches for training and evaluation, augmented on the device, reproducible from counters alone.

The training subset lives on the device as uint8 when it fits (a `randperm` per epoch indexes
it, as in cifar10-airbench); otherwise batches are streamed from the memory-map: STREAM_DEPTH
batches ahead, each gathered by its own thread straight into a reused pinned buffer and copied
to the device on a copy stream of its own, overlapping the step (`_Streamed`). On the CPU both
reduce to indexing an array. Augmentation runs batched on the device: a random resized crop and flip
per image through one `affine_grid` + `grid_sample` over the batch (which also resizes to
the target resolution), MixUp, and normalisation by the dataset's mean/std.

Every random draw comes from a CPU generator seeded by a hash of counters: the order of
epoch e from (seed, e), the augmentation of batch b of epoch e from (seed, e, b). A trainer
resumed mid-epoch with `epoch(e, start_batch=b)` therefore sees exactly the batches it would
have seen, without saving any RNG state, and the CPU and a GPU draw the same numbers.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .data import Split
from .errors import StudyError

if TYPE_CHECKING:
    from .grid import Augmentation

_ORDER, _AUGMENT, _TTA = 1, 2, 3  # streams of random draws
# Batches the streamed loader reads ahead, one thread each: the gathers release the GIL and scale
# with cores (measured on 2 cores: 2.3 GB/s from one thread, 7.5 from two), half of them here.
STREAM_DEPTH = max(2, min(8, (os.cpu_count() or 4) // 2))
DEFAULT_RATIO = (3 / 4, 4 / 3)


def counter_seed(*counters: int) -> int:
    """A 63-bit seed that is a fixed hash of integer counters (seed, stream, epoch, batch...)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(counters)}q", *counters), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def torch_generator(*counters: int) -> torch.Generator:
    """A CPU torch.Generator seeded from counters."""
    return torch.Generator().manual_seed(counter_seed(*counters))


def numpy_generator(*counters: int) -> np.random.Generator:
    """A numpy Generator seeded from counters (for the few values of a batch's augmentation)."""
    return np.random.Generator(np.random.PCG64(counter_seed(*counters)))


@dataclass
class Batch:
    """A training batch on the device; the loss is lam * CE(y) + (1 - lam) * CE(y_mix)."""

    x: torch.Tensor  # (B, C, R, R), normalized: float32, or the dtype the model computes in (bf16 on CUDA)
    y: torch.Tensor  # int64 (B,)
    y_mix: torch.Tensor  # int64 (B,), the MixUp partner's labels (== y without MixUp)
    lam: torch.Tensor  # float32 (B,), weight of y (1.0 without MixUp)


# ---------------------------------------------------------------- batched transforms


def random_crops(
    count: int, height: int | np.ndarray, width: int | np.ndarray, scale: tuple[float, float],
    ratio: tuple[float, float], rng: np.random.Generator, attempts: int = 10,
) -> np.ndarray:
    """Random resized crop boxes as (count, 4) float64 [center x, center y, width, height] in pixels.

    torchvision's rule, vectorised: up to `attempts` (area fraction, aspect ratio) draws per
    image, area uniform in `scale` and log-ratio uniform in `ratio`; the first that fits is
    used, else a center crop of the whole image with the ratio clamped to `ratio`. `height`
    and `width` are the images' size: one for all, or one per image (a keep-aspect store's
    images, each in the top-left of its canvas).
    """
    height = np.broadcast_to(np.asarray(height, np.float64), (count,))
    width = np.broadcast_to(np.asarray(width, np.float64), (count,))
    area = height * width
    fraction = rng.uniform(scale[0], scale[1], (count, attempts))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (count, attempts)))
    w = np.sqrt(fraction * area[:, None] * aspect)
    h = np.sqrt(fraction * area[:, None] / aspect)
    fits = (w <= width[:, None]) & (h <= height[:, None])
    first = fits.argmax(axis=1)
    rows = np.arange(count)
    w, h = w[rows, first], h[rows, first]
    found = fits[rows, first]
    if not found.all():
        in_ratio = width / height
        wide, tall = in_ratio > ratio[1], in_ratio < ratio[0]
        fw = np.where(tall, width, np.where(wide, height * ratio[1], width))
        fh = np.where(tall, width / ratio[0], height)
        w, h = np.where(found, w, fw), np.where(found, h, fh)
    cx = np.where(found, rng.uniform(0.0, 1.0, count) * (width - w) + w / 2, width / 2)
    cy = np.where(found, rng.uniform(0.0, 1.0, count) * (height - h) + h / 2, height / 2)
    return np.stack([cx, cy, w, h], axis=1)


def centre_boxes(sizes: np.ndarray) -> np.ndarray:
    """The largest centred square of each image (height, width) as crop boxes: the test-time view
    of a keep-aspect store, as the reference code's centre crop (ratio 1)."""
    h, w = (np.asarray(sizes, np.float64)[:, i] for i in range(2))
    side = np.minimum(h, w)
    return np.stack([w / 2, h / 2, side, side], axis=1)


def crop_resize(
    x: torch.Tensor, boxes: np.ndarray, flips: np.ndarray | None, resolution: int, grid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop each image of a float batch to its box, flip it, and resize it to resolution: one grid_sample.

    The sampling grid is built from per-image scale and offset (what `affine_grid` would give
    for a diagonal theta, without its batched matrix product) in float64 on the CPU, so the
    CPU and a GPU sample the same points; `grid` is an optional reusable (B, R, R, 2) buffer.
    """
    count, _, height, width = x.shape
    cx, cy, w, h = (boxes[:, i].astype(np.float64) for i in range(4))
    sx = w / width * (np.where(flips, -1.0, 1.0) if flips is not None else 1.0)
    base = (2 * np.arange(resolution) + 1) / resolution - 1  # pixel centres, align_corners=False
    gx = _to_device((sx[:, None] * base + (2 * cx / width - 1)[:, None]).astype(np.float32), x.device)
    gy = _to_device((h[:, None] / height * base + (2 * cy / height - 1)[:, None]).astype(np.float32), x.device)
    if grid is None:
        grid = torch.empty((count, resolution, resolution, 2), device=x.device)
    grid[..., 0].copy_(gx[:, None, :].expand(count, resolution, resolution))
    grid[..., 1].copy_(gy[:, :, None].expand(count, resolution, resolution))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a float batch to resolution x resolution, bilinear with antialiasing (no-op if it is)."""
    if x.shape[-2:] == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)


class _Normalizer:
    """(x / 255 - mean) / std per channel, as one multiply-add on the device."""

    def __init__(self, split: Split, device: torch.device):
        std = torch.tensor(split.std, dtype=torch.float32).clamp_min(1e-6)
        mean = torch.tensor(split.mean, dtype=torch.float32)
        self.scale = (1 / (255 * std)).view(1, -1, 1, 1).to(device)
        self.shift = (-mean / std).view(1, -1, 1, 1).to(device)

    def __call__(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Normalised in place; in `dtype` when lower (the one rounding autocast would make at the model's input)."""
        x.mul_(self.scale)
        if dtype == x.dtype:
            return x.add_(self.shift)
        return torch.add(x, self.shift, out=torch.empty(x.shape, dtype=dtype, device=x.device))


# ---------------------------------------------------------------- reading rows


def _rows(images: np.ndarray, index: np.ndarray) -> np.ndarray:
    """images[index] as a fresh array, read in ascending order (kind to a memory-map)."""
    order = np.argsort(index, kind="stable")
    out = np.empty((len(index), *images.shape[1:]), np.uint8)
    out[order] = images[index[order]]
    return out


def _to_device(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on the device; on CUDA through pinned memory and without waiting for the
    stream (a copy from pageable memory may synchronise with it, stalling the step)."""
    tensor = torch.from_numpy(rows)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` of uint8 images can live on the device, leaving room for the model."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= free // 2
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        available = 0
    return nbytes <= available // 2


class _Streamed:
    """Rows of a memory-mapped array, read ahead of their use for the streamed TrainLoader.

    Each read gathers one batch's rows in ascending index order (kind to a memory-map) straight
    into the host buffer of its slot, the one copy on the host: pinned on CUDA, where it goes to
    the device asynchronously on the loader's own copy stream, overlapping the step on the
    compute stream. The device then puts the rows back in batch order. A slot's buffer is
    written again only once its previous copy has left it. On the CPU the same, minus pinning,
    streams and events.
    """

    def __init__(self, images: np.ndarray, device: torch.device):
        self.images, self.device = images, device
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.host: dict[int, torch.Tensor] = {}
        self.copied: dict[int, torch.cuda.Event] = {}

    def read(self, slot: int, index: np.ndarray) -> tuple[torch.Tensor, np.ndarray, torch.cuda.Event | None]:
        """(rows in ascending index order on the device, that order, the copy's event); in a reader thread."""
        order = np.argsort(index, kind="stable")
        shape = (len(index), *self.images.shape[1:])
        host = self.host.get(slot)
        if host is None or host.shape[1:] != shape[1:] or len(host) < len(index):
            host = self.host[slot] = torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda)
        host = host[: len(index)]
        if slot in self.copied:
            self.copied[slot].synchronize()
        np.take(self.images, index[order], axis=0, out=host.numpy(), mode="clip")  # "clip": no buffered copy
        if not self.cuda:
            return host, order, None
        with torch.cuda.stream(self.copy_stream):
            rows = host.to(self.device, non_blocking=True)
            event = self.copied[slot] = torch.cuda.Event()
            event.record(self.copy_stream)
        return rows, order, event

    def in_batch_order(self, rows: torch.Tensor, order: np.ndarray, event: torch.cuda.Event | None) -> torch.Tensor:
        """The batch's rows in its own order, on the compute stream (after the copy)."""
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            rows.record_stream(stream)  # allocated on the copy stream, used on this one
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return torch.index_select(rows, 0, _to_device(inverse, self.device))


# ---------------------------------------------------------------- training


class TrainLoader:
    """Shuffled, augmented training batches of `split[indices]`, reproducible from counters."""

    def __init__(
        self,
        split: Split,
        indices: np.ndarray,
        batch_size: int,
        device: str | torch.device,
        seed: int,
        augmentation: Augmentation | None,
        resolution: int,
        *,
        resident: bool | None = None,
        beton: str | os.PathLike | None = None,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        self.indices = np.asarray(indices, np.int64)
        if not len(self.indices):
            raise StudyError(f"{split.path or 'dataset'}: no examples to train on")
        if batch_size <= 0:
            raise StudyError(f"batch size must be positive, got {batch_size}")
        self.split, self.batch_size, self.seed, self.drop_last = split, batch_size, seed, drop_last
        self.augmentation, self.resolution, self.dtype = augmentation, resolution, dtype
        self.device = torch.device(device)
        self.normalize = _Normalizer(split, self.device)
        nbytes = len(self.indices) * int(np.prod(split.images.shape[1:]))
        # With a .beton (the optional FFCV backend), batches are read through FFCV instead.
        self.beton = beton
        if beton is not None:
            from .ffcv_backend import require_ffcv

            require_ffcv()
            resident = False
        self.resident = _fits_on(self.device, nbytes) if resident is None else resident
        self.labels = torch.from_numpy(np.asarray(split.labels)[self.indices].astype(np.int64)).to(self.device)
        self.sizes = None if split.sizes is None else np.asarray(split.sizes)[self.indices]
        self.images: torch.Tensor | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        if self.resident:
            self.images = torch.empty((len(self.indices), *split.images.shape[1:]), dtype=torch.uint8, device=self.device)
            step = max(1, 2**28 // max(1, int(np.prod(split.images.shape[1:]))))
            for start in range(0, len(self.indices), step):
                self.images[start : start + step] = _to_device(_rows(split.images, self.indices[start : start + step]), self.device)

    def __len__(self) -> int:
        """Batches per epoch: the last partial one included, or dropped with drop_last."""
        if self.drop_last:
            return len(self.indices) // self.batch_size
        return math.ceil(len(self.indices) / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of positions into `indices` for epoch `epoch` (CPU, int64)."""
        return torch.randperm(len(self.indices), generator=torch_generator(self.seed, _ORDER, epoch))

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Batches of epoch `epoch` from batch `start_batch` on, the same whether or not earlier ones were drawn."""
        order = self.order(epoch)
        steps = range(start_batch, len(self))
        if self.resident:
            for b in steps:
                positions = order[b * self.batch_size : (b + 1) * self.batch_size]
                device_positions = _to_device(positions.numpy(), self.device)
                shape = (len(positions), *self.images.shape[1:])
                rows = torch.index_select(self.images, 0, device_positions, out=self._buffer("rows", shape, torch.uint8))
                yield self._augment(rows, self.labels[device_positions], epoch, b, self._sizes(positions))
            return
        if self.beton is not None:
            from .ffcv_backend import read_batches

            chosen = self.indices[order[start_batch * self.batch_size : len(self) * self.batch_size].numpy()]
            for b, rows in zip(steps, read_batches(self.beton, chosen, self.batch_size)):
                batch = order[b * self.batch_size : (b + 1) * self.batch_size]
                positions = _to_device(batch.numpy(), self.device)
                yield self._augment(_to_device(rows, self.device), self.labels[positions], epoch, b, self._sizes(batch))
            return
        streamed = _Streamed(self.split.images, self.device)
        with ThreadPoolExecutor(STREAM_DEPTH) as readers:
            def read(b: int):
                positions = order[b * self.batch_size : (b + 1) * self.batch_size].numpy()
                return readers.submit(streamed.read, b % STREAM_DEPTH, self.indices[positions])

            pending = {b: read(b) for b in steps[:STREAM_DEPTH]}
            for b in steps:
                x = streamed.in_batch_order(*pending.pop(b).result())
                if b + STREAM_DEPTH < len(self):
                    pending[b + STREAM_DEPTH] = read(b + STREAM_DEPTH)  # into the slot batch b has left
                batch = order[b * self.batch_size : (b + 1) * self.batch_size]
                positions = _to_device(batch.numpy(), self.device)
                yield self._augment(x, self.labels[positions], epoch, b, self._sizes(batch))

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A work buffer reused across batches: fresh large CPU allocations cost page faults."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[1:] != shape[1:] or len(buffer) < shape[0]:
            buffer = self._buffers[name] = torch.empty((max(shape[0], self.batch_size), *shape[1:]),
                                                       dtype=dtype, device=self.device)
        return buffer[: shape[0]]

    def _sizes(self, positions: torch.Tensor) -> np.ndarray | None:
        """(height, width) of the batch's images in a keep-aspect store, else None."""
        return None if self.sizes is None else self.sizes[positions.numpy()]

    def _augment(self, images: torch.Tensor, y: torch.Tensor, epoch: int, b: int,
                 sizes: np.ndarray | None = None) -> Batch:
        aug, count = self.augmentation, len(images)
        ones = torch.ones(count, device=self.device)
        if aug is None:
            if sizes is not None:
                return Batch(self.normalize(crop_resize(images.float(), centre_boxes(sizes), None, self.resolution),
                                            self.dtype), y, y, ones)
            return Batch(self.normalize(resize(images.float(), self.resolution), self.dtype), y, y, ones)
        x = self._buffer("float", tuple(images.shape)).copy_(images)
        rng = numpy_generator(self.seed, _AUGMENT, epoch, b)
        height, width = (x.shape[2], x.shape[3]) if sizes is None else (sizes[:, 0], sizes[:, 1])
        boxes = random_crops(count, height, width, aug.crop_scale, aug.crop_ratio, rng)
        flips = rng.random(count) < 0.5 if aug.flip else None
        r = self.resolution
        x = crop_resize(x, boxes, flips, r, self._buffer("grid", (count, r, r, 2)))
        lam, y_mix = ones, y
        if aug.mixup > 0:
            # One lambda per batch (the paper's loader) or one per image; the partner is the previous image.
            draws = rng.beta(aug.mixup, aug.mixup, count if aug.mixup_per_image else 1)
            lam = _to_device(np.broadcast_to(draws, (count,)).astype(np.float32), self.device)
            weight = (1 - lam).view(-1, 1, 1, 1)
            mixed = torch.empty_like(x)  # out of place: no copy of the batch to blend from
            torch.lerp(x[1:], x[:-1], weight[1:], out=mixed[1:])
            torch.lerp(x[:1], x[count - 1 :], weight[:1], out=mixed[:1])
            x, y_mix = mixed, y.roll(1, 0)
        return Batch(self.normalize(x, self.dtype), y, y_mix, lam)


# ---------------------------------------------------------------- evaluation


def _ordered_rows(split: Split, batch_size: int, device: torch.device, indices: np.ndarray | None):
    """(uint8 images, labels) of split[indices] (all, in order, when None), batch by batch, one batch ahead."""
    total = len(split.labels) if indices is None else len(indices)
    labels = np.asarray(split.labels)

    def fetch(start: int):
        if indices is None:
            rows = np.array(split.images[start : start + batch_size])
            y = np.array(labels[start : start + batch_size], np.int64)
        else:
            chosen = np.asarray(indices[start : start + batch_size], np.int64)
            rows, y = _rows(split.images, chosen), labels[chosen].astype(np.int64)
        return _to_device(rows, device), _to_device(y, device)

    with ThreadPoolExecutor(1) as reader:
        starts = list(range(0, total, batch_size))
        pending = reader.submit(fetch, starts[0]) if starts else None
        for i in range(len(starts)):
            result = pending.result()
            pending = reader.submit(fetch, starts[i + 1]) if i + 1 < len(starts) else None
            yield result


def eval_batches(
    split: Split, batch_size: int, device: str | torch.device, resolution: int, indices: np.ndarray | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic (x, y) in order: x resized to `resolution` (antialiased) and normalized by split.mean/std;
    from a keep-aspect store, the centred square of each image."""
    device = torch.device(device)
    normalize = _Normalizer(split, device)
    rows = np.arange(len(split.labels)) if indices is None else np.asarray(indices, np.int64)
    for i, (images, y) in enumerate(_ordered_rows(split, batch_size, device, indices)):
        if split.sizes is None:
            yield normalize(resize(images.float(), resolution)), y
        else:
            sizes = np.asarray(split.sizes)[rows[i * batch_size : (i + 1) * batch_size]]
            yield normalize(crop_resize(images.float(), centre_boxes(sizes), None, resolution)), y


def tta_batches(
    split: Split, batch_size: int, device: str | torch.device, resolution: int, crops: int, seed: int,
    scale: tuple[float, float] = (0.35, 1.0), *, ratio: tuple[float, float] = DEFAULT_RATIO, flip: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """x of shape (crops, B, C, R, R): `crops` random resized crops (and flips) of each image, for averaging logits."""
    device = torch.device(device)
    normalize = _Normalizer(split, device)
    for b, (images, y) in enumerate(_ordered_rows(split, batch_size, device, None)):
        rng = numpy_generator(seed, _TTA, b)
        x = images.float()
        count, channels, height, width = x.shape
        out = torch.empty((crops, count, channels, resolution, resolution), device=device)
        if split.sizes is not None:  # keep-aspect: crops inside each image, not its canvas
            height, width = (np.asarray(split.sizes)[b * batch_size : b * batch_size + count, i] for i in range(2))
        for c in range(crops):
            boxes = random_crops(count, height, width, scale, ratio, rng)
            flips = rng.random(count) < 0.5 if flip else None
            out[c] = normalize(crop_resize(x, boxes, flips, resolution))
        yield out, y
