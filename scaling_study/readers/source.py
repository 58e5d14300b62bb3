"""What every reader returns: a `Source` of splits that decode ranges of items to uint8 arrays, and
the checks all formats share (labels that are class indices, files that must be there)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadInput, StudyError

FORMATS = ("idx", "cifar", "npz", "stl10", "tiny-imagenet", "folders")
RESIZE_MODES = ("squash", "keep-aspect")  # the whole image to R x R, or its longest side to R


@dataclass
class Chunk:
    """Decoded items of one range: the readable ones, which were readable, and why others were not."""

    images: np.ndarray  # uint8 (m, C, R, R), the readable items in order
    keep: np.ndarray  # bool (stop - start,)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    sizes: np.ndarray | None = None  # keep-aspect: int16 (m, 2) height, width of each image in its canvas


@dataclass
class SplitSource:
    """One split of a source: every item's label and a decoder for ranges of items."""

    labels: np.ndarray  # int64 (N,)
    read: Callable[..., Chunk]  # (start, stop, resolution, pool, resize="squash")
    where: str  # the file or folder named in messages
    files: Sequence[str] = ()  # image files, for a source decoded file by file

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Source:
    """A dataset on disk in one of FORMATS."""

    format: str
    path: str
    dataset: str  # the name it most likely has (a catalogue name where the files tell)
    classes: tuple[str, ...]
    channels: int
    native: int  # side length of its images; 0 when they vary
    splits: dict[str, SplitSource]
    file_based: bool = False  # decoded image by image (chunks are then smaller)


def resize_uint8(images: np.ndarray, resolution: int) -> np.ndarray:
    """Resize a uint8 (N, C, H, W) batch to (N, C, R, R), bilinear with antialiasing."""
    if images.shape[2] == resolution and images.shape[3] == resolution:
        return np.ascontiguousarray(images)
    out = np.empty((len(images), images.shape[1], resolution, resolution), np.uint8)
    step = max(1, 2**26 // max(1, images[0].size * 4))  # ~64 MB of float32 at a time
    for start in range(0, len(images), step):
        x = torch.from_numpy(np.array(images[start : start + step], dtype=np.float32))
        y = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + step] = y.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


MAX_CLASSES = 100_000  # far above ImageNet-21k's 21,841: a larger label is a broken file, not a class


def class_count(path: Path, splits: dict[str, "SplitSource"], names: Sequence[str] = ("train", "test")) -> int:
    """1 + the largest 0-based label of the named splits, checked against the labels present: a
    label of 10^9 in a 50-image file must not make a billion class names."""
    labels = [splits[name].labels for name in names if name in splits]
    low = min((int(label.min()) for label in labels if label.size), default=0)
    top = max((int(label.max()) for label in labels if label.size), default=-1)
    if low < 0:
        raise BadInput(f"{path}: negative label {low}; labels must be class indices from 0")
    if top >= MAX_CLASSES:
        present = len(np.unique(np.concatenate(labels)))
        raise BadInput(f"{path}: label {top:,} would make {top + 1:,} classes, but {present:,} distinct labels are "
                         f"present (at most {MAX_CLASSES:,} classes); fix the labels file")
    return top + 1


def required_file(path: Path, names: Sequence[str], what: str) -> Path:
    """The first of `names` that exists under `path`, else a StudyError listing what was expected."""
    for name in names:
        if (path / name).exists():
            return path / name
    raise StudyError(f"{path}: no {what} here (expected {' or '.join(names)})")
