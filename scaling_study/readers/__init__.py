"""Readers for the image-dataset formats researchers have on disk, as uniform `Source`s.

Each reader checks the files it needs and returns a `Source`: class names, channel count and,
per split, every item's label and a function that decodes items [start, stop) resized to a
side length. An unreadable image is reported in the chunk's `skipped` list, never raised;
missing files, mismatched counts and bad labels are a StudyError naming the path.

`source` holds what every reader returns, `arrays` the formats that store images as arrays
(IDX, CIFAR, npz, STL-10), `images` those that store image files (Tiny-ImageNet, class folders).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import StudyError
from .arrays import CIFAR10_CLASSES, FASHION_MNIST_CLASSES, STL10_CLASSES, read_cifar, read_idx, read_npz, read_stl10
from .images import IMAGE_SUFFIXES, common_side, read_folders, read_tiny_imagenet
from .source import FORMATS, MAX_CLASSES, RESIZE_MODES, Chunk, Source, SplitSource, class_count, resize_uint8

__all__ = [
    "CIFAR10_CLASSES", "DATASET_FORMATS", "FASHION_MNIST_CLASSES", "FORMATS", "IMAGE_SUFFIXES", "MAX_CLASSES",
    "RESIZE_MODES", "STL10_CLASSES", "Chunk", "Source", "SplitSource", "class_count", "common_side", "detect_format",
    "open_source", "read_cifar", "read_folders", "read_idx", "read_npz", "read_stl10", "read_tiny_imagenet",
    "resize_uint8",
]

DATASET_FORMATS = {
    "mnist": "idx", "fashion-mnist": "idx", "cifar10": "cifar", "cifar100": "cifar",
    "stl10": "stl10", "tiny-imagenet": "tiny-imagenet",
}


def detect_format(path: Path) -> str:
    """The format of the files under `path`, from the names they must have."""
    checks = (
        ("idx", ["train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "train-images.idx3-ubyte"]),
        ("cifar", ["data_batch_1", "cifar-10-batches-py", "cifar-100-python", "meta"]),
        ("npz", ["train_data_batch_1.npz"]),
        ("stl10", ["train_X.bin", "stl10_binary"]),
        ("tiny-imagenet", ["wnids.txt"]),
        ("folders", ["train"]),
    )
    for fmt, names in checks:
        if any((path / name).exists() for name in names):
            return fmt
    raise StudyError(f"{path}: cannot tell the dataset format (none of the files of {', '.join(FORMATS)})")


def open_source(path: str | Path, fmt: str = "auto", dataset: str = "", channels: int = 0) -> Source:
    """Open a raw dataset: `fmt` one of FORMATS, or "auto" (from `dataset`, else from the files)."""
    path = Path(path)
    if not path.exists():
        raise StudyError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise StudyError(f"{path}: expected a dataset directory")
    if fmt == "auto":
        fmt = DATASET_FORMATS.get(dataset, "")
        if not fmt and dataset in ("imagenet1k", "imagenet21k"):
            fmt = "npz" if (path / "train_data_batch_1.npz").exists() else "folders"
        fmt = fmt or detect_format(path)
    readers = {
        "idx": read_idx, "cifar": read_cifar, "npz": read_npz, "stl10": read_stl10,
        "tiny-imagenet": lambda p, d: read_tiny_imagenet(p, d, channels or 3),
        "folders": lambda p, d: read_folders(p, d, channels),
    }
    if fmt not in readers:
        raise StudyError(f"{path}: unknown format {fmt!r}; valid formats: auto, {', '.join(FORMATS)}")
    return readers[fmt](path, dataset)
