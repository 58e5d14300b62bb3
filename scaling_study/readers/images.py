"""Readers for datasets of image files (Tiny-ImageNet, ImageNet-style class folders), decoded one
file at a time with Pillow; an unreadable file is skipped and reported, never raised."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadInput, StudyError
from .source import Chunk, Source, SplitSource, required_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


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


def _images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_tiny_imagenet(path: Path, dataset: str = "", channels: int = 3) -> Source:
    """Tiny-ImageNet-200: wnids.txt, train/<wnid>/images/*.JPEG, val/images + val/val_annotations.txt."""
    wnids_file = required_file(path, ["wnids.txt"], "wnids.txt")
    wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for wnid in wnids:
        found = _images_in(path / "train" / wnid / "images")
        if not found:
            raise StudyError(f"{path / 'train' / wnid / 'images'}: a class folder with no images")
        files += found
        labels += [index[wnid]] * len(found)
    annotations = required_file(path / "val", ["val_annotations.txt"], "validation annotations")
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
    train = required_file(path, ["train"], "train/ folder of class folders")
    test = required_file(path, ["val", "test"], "val/ or test/ folder of class folders")
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
