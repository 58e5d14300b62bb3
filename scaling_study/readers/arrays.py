"""Readers for the formats that hold images as arrays: IDX (MNIST, Fashion-MNIST), CIFAR-10/100
python batches, downsampled ImageNet (.npz) and STL-10 binary. Each decodes by slicing its arrays."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from ..errors import StudyError
from .source import Chunk, Source, SplitSource, class_count, required_file, resize_uint8

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def _array_split(
    labels: np.ndarray, rows: Callable[[int, int], np.ndarray], where: str
) -> SplitSource:
    """A split whose images come as uniform (n, C, H, W) uint8 rows."""

    def read(start: int, stop: int, resolution: int, pool: Executor | None, resize: str = "squash") -> Chunk:
        images = resize_uint8(rows(start, stop), resolution)
        # Square sources: keep-aspect is squash, each image filling its whole canvas.
        sizes = np.full((len(images), 2), resolution, np.int16) if resize == "keep-aspect" else None
        return Chunk(images, np.ones(stop - start, bool), sizes=sizes)

    return SplitSource(np.asarray(labels, np.int64), read, where)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise StudyError(f"{path}: cannot read IDX file: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise StudyError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise StudyError(f"{path}: IDX header promises shape {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def read_idx(path: Path, dataset: str = "") -> Source:
    """MNIST-style IDX files, gzipped or not: train-/t10k-{images-idx3,labels-idx1}-ubyte[.gz]."""
    splits, side = {}, 0
    for split, prefix in (("train", "train"), ("test", "t10k")):
        names = {
            kind: [f"{prefix}-{kind}-idx{n}-ubyte{gz}" for gz in (".gz", "")]
            + [f"{prefix}-{kind}.idx{n}-ubyte{gz}" for gz in (".gz", "")]
            for kind, n in (("images", 3), ("labels", 1))
        }
        image_file = required_file(path, names["images"], f"{split} images")
        label_file = required_file(path, names["labels"], f"{split} labels")
        images, labels = _read_idx(image_file), _read_idx(label_file)
        if images.ndim != 3 or labels.ndim != 1:
            raise StudyError(f"{image_file}: expected (N, H, W) images and (N,) labels, got {images.shape}, {labels.shape}")
        if len(images) != len(labels):
            raise StudyError(f"{path}: {len(images)} images in {image_file.name} but {len(labels)} labels in {label_file.name}")
        side = images.shape[1]
        images = images[:, None]
        splits[split] = _array_split(labels, lambda a, b, images=images: images[a:b], str(image_file))
    count = class_count(path, splits)
    if not dataset:
        dataset = "fashion-mnist" if "fashion" in str(path.resolve()).lower() else "mnist"
    classes = FASHION_MNIST_CLASSES if dataset == "fashion-mnist" and count <= 10 else tuple(str(i) for i in range(count))
    return Source("idx", str(path), dataset, classes, 1, side, splits)


# ---------------------------------------------------------------- CIFAR-10/100 python batches


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: a batch file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"  # the old name of the same module, without its warning
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise StudyError(f"{path}: no such file") from None
    except Exception as error:
        raise StudyError(f"{path}: not a python pickle batch: {error}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: expected a pickled dict, got {type(raw).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _names(values: Sequence) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def read_cifar(path: Path, dataset: str = "") -> Source:
    """CIFAR-10 (data_batch_1..5, test_batch, batches.meta) or CIFAR-100 (train, test, meta)."""
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (path / sub).is_dir():
            path = path / sub
    if (path / "data_batch_1").exists():
        dataset = dataset or "cifar10"
        files = {"train": [path / f"data_batch_{i}" for i in range(1, 6)], "test": [path / "test_batch"]}
        key, meta_file, meta_key = "labels", path / "batches.meta", "label_names"
    elif (path / "train").is_file():
        dataset = dataset or "cifar100"
        files = {"train": [path / "train"], "test": [path / "test"]}
        key, meta_file, meta_key = "fine_labels", path / "meta", "fine_label_names"
    else:
        raise StudyError(f"{path}: no CIFAR python batches here (expected data_batch_1..5 and test_batch, "
                         f"or train and test of CIFAR-100)")
    splits = {}
    for split, batch_files in files.items():
        images, labels = [], []
        for file in batch_files:
            batch = _unpickle(file)
            if "data" not in batch or key not in batch:
                raise StudyError(f"{file}: a CIFAR batch needs 'data' and {key!r}, found {sorted(batch)}")
            data = np.asarray(batch["data"], np.uint8)
            label = np.asarray(batch[key], np.int64)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise StudyError(f"{file}: expected data of shape (N, 3072), got {data.shape}")
            if len(data) != len(label):
                raise StudyError(f"{file}: {len(data)} images but {len(label)} labels")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(label)
        stacked = np.concatenate(images)
        splits[split] = _array_split(np.concatenate(labels), lambda a, b, s=stacked: s[a:b], str(batch_files[0]))
    count = class_count(path, splits, ("train",))
    if meta_file.exists():
        classes = _names(_unpickle(meta_file).get(meta_key, []))
    else:
        classes = CIFAR10_CLASSES if key == "labels" and count <= 10 else ()
    if len(classes) < count:
        classes = tuple(str(i) for i in range(count))
    return Source("cifar", str(path), dataset, classes, 3, 32, splits)


# ---------------------------------------------------------------- downsampled ImageNet (npz)


def read_npz(path: Path, dataset: str = "") -> Source:
    """Chrabaszcz et al. (2017) downsampled ImageNet: train_data_batch_1..10 and val_data (.npz)."""
    train = sorted(path.glob("train_data_batch_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not train:
        raise StudyError(f"{path}: no downsampled-ImageNet batches here (expected train_data_batch_1.npz ...)")
    test = [required_file(path, ["val_data.npz"], "validation batch")]
    splits, side = {}, 0
    for split, files in (("train", train), ("test", test)):
        counts, labels = [], []
        for file in files:
            with _open_npz(file) as batch:
                if "data" not in batch or "labels" not in batch:
                    raise StudyError(f"{file}: needs keys 'data' and 'labels', found {sorted(batch.files)}")
                label = np.asarray(batch["labels"], np.int64).reshape(-1)
                width = _npz_width(file)
            if len(label) != width[0]:
                raise StudyError(f"{file}: {width[0]} images but {len(label)} labels")
            this_side = math.isqrt(width[1] // 3)
            if 3 * this_side**2 != width[1] or (side and this_side != side):
                raise StudyError(f"{file}: rows of {width[1]} values are not 3x{side or 'S'}x{side or 'S'} images")
            side = this_side
            if label.size and label.min() < 1:
                raise StudyError(f"{file}: labels must be 1-based, found {label.min()}")
            counts.append(len(label))
            labels.append(label - 1)
        splits[split] = _array_split(np.concatenate(labels), _NpzRows(files, counts, side), str(files[0]))
    count = class_count(path, splits, tuple(splits))
    classes = tuple(str(i) for i in range(1, count + 1))
    if (path / "map_clsloc.txt").exists():  # the ImageNet devkit's "wnid index name" lines
        names = [line.split()[0] for line in (path / "map_clsloc.txt").read_text().splitlines() if line.strip()]
        if len(names) >= count:
            classes = tuple(names[:count])
    dataset = dataset or ("imagenet1k" if count <= 1000 else "imagenet21k")
    return Source("npz", str(path), dataset, classes, 3, side, splits)


def _open_npz(file: Path):
    try:
        return np.load(file, allow_pickle=False)
    except Exception as error:
        raise StudyError(f"{file}: not a readable .npz: {error}") from None


def _npz_width(file: Path) -> tuple[int, int]:
    """Shape of 'data' from its .npy header, without decompressing the array."""
    import zipfile

    with zipfile.ZipFile(file) as archive, archive.open("data.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(member)
    if len(shape) != 2:
        raise StudyError(f"{file}: expected 'data' of shape (N, 3*S*S), got {shape}")
    return shape


class _NpzRows:
    """Rows [a, b) across a list of .npz batches, keeping the last decompressed batch."""

    def __init__(self, files: list[Path], counts: list[int], side: int):
        self.files, self.side = files, side
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.cached: tuple[int, np.ndarray] | None = None

    def batch(self, i: int) -> np.ndarray:
        if self.cached is None or self.cached[0] != i:
            self.cached = None  # free the previous batch first
            with _open_npz(self.files[i]) as batch:
                self.cached = (i, np.asarray(batch["data"], np.uint8).reshape(-1, 3, self.side, self.side))
        return self.cached[1]

    def __call__(self, a: int, b: int) -> np.ndarray:
        parts = []
        for i in range(len(self.files)):
            lo, hi = max(a, self.offsets[i]), min(b, self.offsets[i + 1])
            if lo < hi:
                parts.append(self.batch(i)[lo - self.offsets[i] : hi - self.offsets[i]])
        if not parts:
            return np.empty((0, 3, self.side, self.side), np.uint8)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


# ---------------------------------------------------------------- STL-10 binary


def read_stl10(path: Path, dataset: str = "") -> Source:
    """STL-10 binary: {train,test}_{X,y}.bin, uint8 column-major 3x96x96 images, 1-based labels."""
    if (path / "stl10_binary").is_dir():
        path = path / "stl10_binary"
    splits = {}
    for split in ("train", "test"):
        x_file = required_file(path, [f"{split}_X.bin"], f"{split} images")
        y_file = required_file(path, [f"{split}_y.bin"], f"{split} labels")
        labels = np.fromfile(y_file, np.uint8).astype(np.int64)
        size = os.path.getsize(x_file)
        if size % (3 * 96 * 96) or size // (3 * 96 * 96) != len(labels):
            raise StudyError(f"{path}: {x_file.name} holds {size / (3 * 96 * 96):g} images of 3x96x96 "
                             f"but {y_file.name} {len(labels)} labels")
        if labels.size and labels.min() < 1:
            raise StudyError(f"{y_file}: labels must be 1-based, found {labels.min()}")
        images = np.memmap(x_file, np.uint8, mode="r", shape=(len(labels), 3, 96, 96))
        # Column-major: each channel is stored transposed, so swap H and W back.
        splits[split] = _array_split(labels - 1, lambda a, b, m=images: m[a:b].transpose(0, 1, 3, 2), str(x_file))
    count = class_count(path, splits, ("train",))
    names_file = path / "class_names.txt"
    classes = tuple(n for n in names_file.read_text().splitlines() if n.strip()) if names_file.exists() else STL10_CLASSES
    if len(classes) < count:
        classes = tuple(str(i) for i in range(count))
    return Source("stl10", str(path), dataset or "stl10", classes, 3, 96, splits)
