"""Readers for the image-dataset formats researchers have on disk, as uniform `Source`s.

Each reader checks the files it needs and returns a `Source`: class names, channel count and,
per split, every item's label and a function that decodes items [start, stop) resized to a
side length. An unreadable image is reported in the chunk's `skipped` list, never raised;
missing files, mismatched counts and bad labels are a StudyError naming the path.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import BadInput, StudyError

FORMATS = ("idx", "cifar", "npz", "stl10", "tiny-imagenet", "folders")
RESIZE_MODES = ("squash", "keep-aspect")  # the whole image to R x R, or its longest side to R
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


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


def _file_split(labels: np.ndarray, files: Sequence[str], channels: int, where: str) -> SplitSource:
    """A split of image files decoded with Pillow, in parallel over the pool."""
    mode = "L" if channels == 1 else "RGB"

    def read(start: int, stop: int, resolution: int, pool: Executor | None, resize: str = "squash") -> Chunk:
        paths = files[start:stop]
        decode = _decode if resize == "squash" else _decode_keep_aspect
        decoded = list(pool.map(lambda p: decode(p, mode, resolution), paths) if pool else map(
            lambda p: decode(p, mode, resolution), paths))
        keep = np.array([not isinstance(d, str) for d in decoded], bool)
        good = [d for d in decoded if not isinstance(d, str)]
        sizes = None
        if resize == "keep-aspect":
            sizes = np.array([size for _, size in good], np.int16).reshape(-1, 2)
            good = [canvas for canvas, _ in good]
        images = np.stack(good) if good else np.empty((0, channels, resolution, resolution), np.uint8)
        skipped = [(p, d) for p, d in zip(paths, decoded) if isinstance(d, str)]
        return Chunk(images, keep, skipped, sizes)

    return SplitSource(np.asarray(labels, np.int64), read, where, tuple(files))


def _decode(path: str, mode: str, resolution: int) -> np.ndarray | str:
    """One image as uint8 (C, R, R), or the reason it cannot be read."""
    try:
        with Image.open(path) as image:
            if image.mode == "P":  # palette with transparency: via RGBA, as Pillow asks
                image = image.convert("RGBA")
            image = image.convert(mode)
            if image.size != (resolution, resolution):
                # The whole image squashed to a square, like Chrabaszcz et al.'s downsampled ImageNet.
                image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except Exception as error:  # any decoder failure means "unreadable", never a crash
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _decode_keep_aspect(path: str, mode: str, resolution: int) -> tuple[np.ndarray, tuple[int, int]] | str:
    """One image with its longest side resized to R, aspect kept (the reference code's store), in the
    top-left of an R x R canvas whose rest repeats the last row and column; with its (height, width).

    The repeated edge makes a crop that reaches the image's border sample it as the square
    store's `border` padding does, instead of blending in black.
    """
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                image = image.convert("RGBA")
            image = image.convert(mode)
            width, height = image.size
            scale = resolution / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            if image.size != size:
                image = image.resize(size, Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except Exception as error:  # any decoder failure means "unreadable", never a crash
        return f"{type(error).__name__}: {error}".splitlines()[0]
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    h, w = array.shape[1:]
    canvas = np.pad(array, ((0, 0), (0, resolution - h), (0, resolution - w)), mode="edge")
    return np.ascontiguousarray(canvas), (h, w)


def common_side(source: "Source") -> int:
    """The side of a file-based source's images when all are readable squares of one size, else a
    StudyError that names the unreadable files, or two that differ in size."""
    sizes: dict[tuple[int, int], str] = {}
    unreadable: list[tuple[str, str]] = []
    for split in source.splits.values():
        for path in split.files:
            try:
                with Image.open(path) as image:
                    sizes.setdefault(image.size, path)
            except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
                unreadable.append((path, f"{type(error).__name__}: {error}".splitlines()[0]))
    if unreadable:
        shown = "; ".join(f"{p} ({why})" for p, why in unreadable[:3]) + ("; ..." if len(unreadable) > 3 else "")
        sides = " or ".join(f"{w}x{h}" for w, h in list(sizes)[:2])
        raise BadInput(f"{source.path}: {len(unreadable)} unreadable file(s): {shown}; the readable ones are "
                         f"{sides}: give --resolution (unreadable files are then skipped and listed) or remove them")
    if len(sizes) > 1:
        (a, first), (b, second) = list(sizes.items())[:2]
        raise BadInput(f"{source.path}: images of varying size ({a[0]}x{a[1]} in {first}, {b[0]}x{b[1]} in "
                         f"{second}); give --resolution")
    (width, height), path = next(iter(sizes.items()))
    if width != height:
        raise BadInput(f"{source.path}: images are {width}x{height}, not square; give --resolution")
    return width


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


def _image_channels(paths: Sequence[str]) -> int:
    """1 if the first readable images are all grayscale, else 3 (an RGB set may hold some gray)."""
    for path in paths[:16]:
        try:
            with Image.open(path) as image:
                if image.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    return 3
        except Exception:
            continue
    return 1


def _need(path: Path, names: Sequence[str], what: str) -> Path:
    """The first of `names` that exists under `path`, else a StudyError listing what was expected."""
    for name in names:
        if (path / name).exists():
            return path / name
    raise StudyError(f"{path}: no {what} here (expected {' or '.join(names)})")


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


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
        image_file = _need(path, names["images"], f"{split} images")
        label_file = _need(path, names["labels"], f"{split} labels")
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
    test = [_need(path, ["val_data.npz"], "validation batch")]
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
        x_file = _need(path, [f"{split}_X.bin"], f"{split} images")
        y_file = _need(path, [f"{split}_y.bin"], f"{split} labels")
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


# ---------------------------------------------------------------- image folders


def _images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_tiny_imagenet(path: Path, dataset: str = "", channels: int = 3) -> Source:
    """Tiny-ImageNet-200: wnids.txt, train/<wnid>/images/*.JPEG, val/images + val/val_annotations.txt."""
    wnids_file = _need(path, ["wnids.txt"], "wnids.txt")
    wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for wnid in wnids:
        found = _images_in(path / "train" / wnid / "images")
        if not found:
            raise StudyError(f"{path / 'train' / wnid / 'images'}: a class folder with no images")
        files += found
        labels += [index[wnid]] * len(found)
    annotations = _need(path / "val", ["val_annotations.txt"], "validation annotations")
    val_files, val_labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2 or parts[1] not in index:
            raise StudyError(f"{annotations}:{number}: unknown class {parts[1] if len(parts) > 1 else line!r}")
        val_files.append(str(path / "val" / "images" / parts[0]))
        val_labels.append(index[parts[1]])
    splits = {
        "train": _file_split(np.array(labels), files, channels, str(path / "train")),
        "test": _file_split(np.array(val_labels), val_files, channels, str(annotations)),
    }
    return Source("tiny-imagenet", str(path), dataset or "tiny-imagenet", tuple(wnids), channels, 64, splits, True)


def read_folders(path: Path, dataset: str = "", channels: int = 0) -> Source:
    """ImageNet-style class folders: train/<class>/*.{jpg,png,...} and val/ (or test/) alike."""
    train = _need(path, ["train"], "train/ folder of class folders")
    test = _need(path, ["val", "test"], "val/ or test/ folder of class folders")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise StudyError(f"{train}: no class folders")
    index = {c: i for i, c in enumerate(classes)}
    lists: dict[str, tuple[list[str], list[int]]] = {}
    for split, root in (("train", train), ("test", test)):
        files, labels = [], []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if folder.name not in index:
                raise StudyError(f"{folder}: class {folder.name!r} is not among the {len(classes)} classes of {train}")
            found = _images_in(folder)
            if not found:
                raise StudyError(f"{folder}: a class folder with no images")
            files += found
            labels += [index[folder.name]] * len(found)
        if not files:
            raise StudyError(f"{root}: no class folders with images")
        lists[split] = (files, labels)
    channels = channels or _image_channels(lists["train"][0])
    splits = {s: _file_split(np.array(l), f, channels, str(root)) for (s, (f, l)), root in zip(lists.items(), (train, test))}
    return Source("folders", str(path), dataset or path.resolve().name, tuple(classes), channels, 0, splits, True)


# ---------------------------------------------------------------- format detection

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
