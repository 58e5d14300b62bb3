"""Datasets: what the planner must know before reading any (the catalogue), and reading them.

`load_split` gives a split of a prepared store or of a raw source as a `Split`;
`stratified_subset` draws the class-stratified, nested subsets the study trains on.
"""

from __future__ import annotations

import functools
import heapq
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StudyError
from .readers import open_source, resize_uint8
from .store import PROGRESS, SPLITS, open_sizes, open_split, read_meta


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a dataset's training split that fix model shapes and compute."""

    train_size: int
    classes: int
    channels: int
    resolution: int  # native side length of its images


# The datasets of the paper and of the built-in demo, as their standard releases ship them.
# ImageNet-21k is the Ridnik et al. (2021) "winter 21" processed release the paper used.
CATALOGUE: dict[str, DatasetInfo] = {
    "imagenet21k": DatasetInfo(11_801_680, 11_230, 3, 64),
    "imagenet1k": DatasetInfo(1_281_167, 1_000, 3, 64),
    "cifar10": DatasetInfo(50_000, 10, 3, 32),
    "cifar100": DatasetInfo(50_000, 100, 3, 32),
    "stl10": DatasetInfo(5_000, 10, 3, 96),
    "tiny-imagenet": DatasetInfo(100_000, 200, 3, 64),
    "mnist": DatasetInfo(60_000, 10, 1, 28),
    "fashion-mnist": DatasetInfo(60_000, 10, 1, 28),
}


@dataclass(frozen=True)
class Split:
    """One split of a dataset, ready for the loader: uint8 NCHW images and int64 labels.

    The arrays are read-only (a memory-map of a prepared store, or a cached in-memory array):
    index or copy them before handing them to `torch.from_numpy`.
    """

    images: np.ndarray  # uint8 (N, C, H, W), may be a np.memmap
    labels: np.ndarray  # int64 (N,)
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, in [0, 1] units, of the TRAIN split
    std: tuple[float, ...]
    path: str = ""  # where it was read from, for messages
    # A keep-aspect store's int (N, 2) height and width of each image in the top-left of its
    # canvas; None when every image fills it (squash). Crops are taken inside the image.
    sizes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def load_split(dataset: str, path: str, split: str, resolution: int) -> Split:
    """A split of a prepared store (a directory with meta.json) or of a raw source, at `resolution`.

    A raw source's format follows from `dataset` (fashion-mnist/mnist: IDX, cifar10/cifar100:
    python batches, imagenet1k/imagenet21k: downsampled .npz if present, else class folders,
    stl10, tiny-imagenet) or, for other names, from its files. Images are resized (antialiased)
    when their side is not `resolution` (0: native). Cached per process.
    """
    if split not in SPLITS:
        raise StudyError(f"{path}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if not path:
        raise StudyError(f"{dataset}: no data path given (set `path` in the grid's [data] section)")
    return _load_split(dataset, os.path.abspath(path), split, int(resolution or 0))


@functools.lru_cache(maxsize=16)
def _load_split(dataset: str, path: str, split: str, resolution: int) -> Split:
    root = Path(path)
    meta = read_meta(root) if root.is_dir() else None
    if meta is not None:
        _check_store(dataset, root, meta)
        images, labels = open_split(root, meta, split)
        sizes = open_sizes(root, meta, split)
        if resolution and resolution != meta["resolution"]:
            if sizes is not None:
                raise StudyError(f"{root}: a keep-aspect store of {meta['resolution']}px is read at its own "
                                 f"resolution, not {resolution}; prepare one at {resolution} (--resolution)")
            images = _read_only(resize_uint8(images, resolution))
        return Split(images, labels, tuple(meta["classes"]), tuple(meta["mean"]), tuple(meta["std"]), path,
                     None if sizes is None else _read_only(sizes.astype(np.int64)))
    if (root / PROGRESS).exists():
        raise StudyError(f"{root}: an incomplete store (its preparation was interrupted); "
                         f"re-run `study data prepare` with the same options to finish it")
    images, labels, classes = _raw_split(dataset, path, split, resolution)
    train_images = images if split == "train" else _raw_split(dataset, path, "train", resolution)[0]
    mean, std = _channel_stats(train_images)
    return Split(images, labels, classes, mean, std, path)


def _check_store(dataset: str, root: Path, meta: dict) -> None:
    stored = meta.get("dataset")
    if dataset in CATALOGUE and stored in CATALOGUE and stored != dataset:
        raise StudyError(f"{root}: a store of {stored}, not of {dataset}")
    _check_channels(dataset, root, meta["channels"])


def _check_channels(dataset: str, root: Path, channels: int) -> None:
    known = CATALOGUE.get(dataset)
    if known and known.channels != channels:
        raise StudyError(f"{root}: images have {channels} channel(s) but {dataset} has {known.channels}")


@functools.lru_cache(maxsize=8)
def _raw_split(dataset: str, path: str, split: str, resolution: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """All of one split of a raw source, decoded into memory (for small sets)."""
    source = open_source(path, "auto", dataset if dataset in CATALOGUE else "", CATALOGUE[dataset].channels
                         if dataset in CATALOGUE else 0)
    _check_channels(dataset, Path(path), source.channels)
    side = resolution or source.native
    if side <= 0:
        raise StudyError(f"{path}: images of varying size; give the grid a resolution")
    part = source.splits[split]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        chunk = part.read(0, len(part), side, pool)
    if not len(chunk.images):
        raise StudyError(f"{part.where}: no readable images in the {split} split")
    return _read_only(chunk.images), _read_only(part.labels[chunk.keep].copy()), source.classes


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, exact, from pixel histograms."""
    mean, std = [], []
    values = np.arange(256, dtype=np.float64) / 255.0
    for channel in range(images.shape[1]):
        h = np.bincount(np.asarray(images[:, channel]).reshape(-1), minlength=256).astype(np.float64)
        m = float((h * values).sum() / h.sum())
        mean.append(m)
        std.append(max(float((h * values**2).sum() / h.sum() - m * m), 0.0) ** 0.5)
    return tuple(mean), tuple(std)


# ---------------------------------------------------------------- class-stratified, nested subsets


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array: a fixed hash, the same on every machine and version."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64, copy=True)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _keys(count: int, seed: int, stream: int) -> np.ndarray:
    """`count` pseudo-random uint64 keys determined by (seed, stream) alone."""
    base = _mix(np.array([(seed * 0x9E3779B97F4A7C15 + stream) & 0xFFFFFFFFFFFFFFFF], np.uint64))
    with np.errstate(over="ignore"):
        return _mix(np.arange(count, dtype=np.uint64) + base)


def quota_counts(counts: np.ndarray, n: int, seed: int) -> np.ndarray:
    """How many of each class a subset of `n` takes: proportional, within quota, monotone in n.

    Each class k gets floor(q_k) or ceil(q_k) of its quota q_k = n * c_k / N, like the
    largest-remainder method; unlike it (which suffers the Alabama paradox: class sizes
    (6, 6, 2) give (4, 4, 2) at n = 10 but (5, 5, 1) at n = 11) the counts never shrink as n
    grows, so the subsets nest. They are the first n seats of one sequence in which seat h goes,
    among the classes whose next seat keeps them within their upper quota at h, to the one
    whose lower quota needs it soonest (earliest deadline first; Balinski & Young's quota
    method is of this family, and such a sequence always exists, Tijdeman 1980). Ties go to a
    seeded class order, so with equal class sizes this is largest remainder with seeded ties.
    """
    counts = [int(c) for c in counts]
    total = sum(counts)
    priority = np.argsort(np.argsort(_keys(len(counts), seed, 1), kind="stable"), kind="stable").tolist()
    taken = [0] * len(counts)
    # Seat j (0-based) of class k may be seat h of the sequence for release <= h <= deadline:
    # release = floor(j N / c) + 1 keeps the upper quota, deadline = ceil((j + 1) N / c) the lower.
    ready = [((total + c - 1) // c, priority[k], k) for k, c in enumerate(counts) if c]
    heapq.heapify(ready)
    waiting: list[tuple[int, int]] = []
    for h in range(1, n + 1):
        while waiting and waiting[0][0] <= h:
            _, k = heapq.heappop(waiting)
            c = counts[k]
            heapq.heappush(ready, (((taken[k] + 1) * total + c - 1) // c, priority[k], k))
        deadline, _, k = heapq.heappop(ready)
        if deadline < h:  # impossible by the theorem; a loud guard rather than a silent bias
            raise RuntimeError(f"quota sequence missed a deadline at seat {h}")
        taken[k] += 1
        j, c = taken[k], counts[k]
        if j < c:
            release = j * total // c + 1
            if release <= h + 1:
                heapq.heappush(ready, (((j + 1) * total + c - 1) // c, priority[k], k))
            else:
                heapq.heappush(waiting, (release, k))
    return np.array(taken, np.int64)


def stratified_subset(labels: np.ndarray, n: int, seed: int, *, where: str = "") -> np.ndarray:
    """Sorted indices of a class-stratified subset of `n` examples, deterministic and nested in n.

    Per class the examples are ordered once by a seeded hash of their index; the subset takes a
    prefix of each class's order, of the length `quota_counts` gives. So the subset of 10k
    contains the subset of 5k drawn with the same seed.
    """
    place = where or getattr(labels, "filename", None) or "the dataset"  # a store's memmap knows its file
    labels = np.asarray(labels)
    total = len(labels)
    if n < 0 or n > total:
        raise StudyError(f"{place}: cannot draw a subset of {n} examples from {total}")
    if n == total:
        return np.arange(total, dtype=np.int64)
    if labels.dtype.kind in "iu" and total and labels.min() >= 0:
        present = np.bincount(labels)
        inverse = (np.cumsum(present > 0) - 1)[labels]  # dense class numbers, in label order
        counts = present[present > 0]
    else:
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    take = quota_counts(counts, n, seed)
    # One sort by (class, seeded key): the class in the high bits, the key's top bits below it.
    shift = np.uint64(64 - max(1, int(len(counts) - 1).bit_length()))
    with np.errstate(over="ignore"):
        combined = (inverse.reshape(-1).astype(np.uint64) << shift) | (_keys(total, seed, 0) >> np.uint64(64 - shift))
    order = np.argsort(combined, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(total) - np.repeat(starts, counts)
    return np.sort(order[rank < np.repeat(take, counts)]).astype(np.int64)
