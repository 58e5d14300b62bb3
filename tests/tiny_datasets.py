"""Tiny real datasets written to disk in every format the readers know, with the arrays they hold.

Each writer returns (train images, train labels, test images, test labels) as the reader must
give them back: uint8 (N, C, H, W) and 0-based int64 labels.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def images(rng: np.random.Generator, n: int, channels: int, side: int) -> np.ndarray:
    """Random uint8 images with a gradient, so a transposed or flipped reader is caught."""
    noise = rng.integers(0, 200, (n, channels, side, side), dtype=np.uint8)
    ramp = np.arange(side, dtype=np.uint8)[None, None, :, None] * (50 // max(1, side - 1) + 1)
    return (noise + np.minimum(ramp, 55)).astype(np.uint8)


def balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def learnable(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images whose class mostly shows: a faint band at a row that depends on the label, in 60% of the
    images (the others show a random label's band), so errors stay well above zero."""
    x = x // 2
    side = x.shape[-1]
    shown = np.where(rng.random(y.size) < 0.6, y, rng.integers(0, 10, y.size))
    for label in range(10):
        row = (label * side) // 10
        x[shown == label, :, row: row + max(1, side // 10), :] += 60
    return x


def write_idx(root: Path, gz: bool = True, n_train: int = 30, n_test: int = 10, side: int = 8,
              signal: bool = False) -> Arrays:
    """MNIST-style IDX files (gzipped or not); with `signal`, the labels can be learned from the images."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = images(rng, n, 1, side), balanced_labels(n, 10, rng)
        if signal:
            x = learnable(x, y, rng)
        for kind, array, dims in (("images", x[:, 0], 3), ("labels", y.astype(np.uint8), 1)):
            raw = struct.pack(">BBBB", 0, 0, 8, dims) + struct.pack(f">{dims}I", *array.shape) + array.tobytes()
            name = f"{prefix}-{kind}-idx{dims}-ubyte"
            if gz:
                with gzip.open(root / f"{name}.gz", "wb") as f:
                    f.write(raw)
            else:
                (root / name).write_bytes(raw)
        out += [x, y]
    return tuple(out)


def _pickle(path: Path, value: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 8) -> Arrays:
    """CIFAR-10 python batches: data_batch_1..5, test_batch, batches.meta (bytes keys, as shipped)."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = images(rng, per_batch, 3, 32), rng.integers(0, 10, per_batch)
        _pickle(root / f"data_batch_{i}", {b"data": x.reshape(per_batch, -1), b"labels": [int(v) for v in y]})
        xs.append(x)
        ys.append(y)
    tx, ty = images(rng, n_test, 3, 32), rng.integers(0, 10, n_test)
    _pickle(root / "test_batch", {b"data": tx.reshape(n_test, -1), b"labels": [int(v) for v in ty]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _pickle(root / "batches.meta", {b"label_names": names})
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), tx, ty.astype(np.int64)


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100) -> Arrays:
    """CIFAR-100 python files: train, test, meta with fine labels."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name, n in (("train", n_train), ("test", n_test)):
        x, y = images(rng, n, 3, 32), balanced_labels(n, 100, rng)
        _pickle(root / name, {b"data": x.reshape(n, -1), b"fine_labels": [int(v) for v in y],
                              b"coarse_labels": [int(v) // 5 for v in y]})
        out += [x, y]
    _pickle(root / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)]})
    return tuple(out)


def write_npz(root: Path, batches: int = 2, per_batch: int = 6, n_test: int = 5, side: int = 8) -> Arrays:
    """Downsampled-ImageNet .npz batches: rows of 3*S*S channel-major values, 1-based labels."""
    rng = np.random.default_rng(4)
    root.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, batches + 1):
        x, y = images(rng, per_batch, 3, side), rng.integers(0, 4, per_batch)
        np.savez(root / f"train_data_batch_{i}.npz", data=x.reshape(per_batch, -1), labels=list(y + 1),
                 mean=x.reshape(per_batch, -1).mean(0))
        xs.append(x)
        ys.append(y)
    tx, ty = images(rng, n_test, 3, side), rng.integers(0, 4, n_test)
    np.savez(root / "val_data.npz", data=tx.reshape(n_test, -1), labels=list(ty + 1))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), tx, ty.astype(np.int64)


def write_stl10(root: Path, n_train: int = 10, n_test: int = 4) -> Arrays:
    """STL-10 binary: uint8 column-major 3x96x96 images and 1-based uint8 labels."""
    rng = np.random.default_rng(5)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = images(rng, n, 3, 96), balanced_labels(n, 10, rng)
        x.transpose(0, 1, 3, 2).tofile(root / f"{split}_X.bin")  # column-major per channel
        (y + 1).astype(np.uint8).tofile(root / f"{split}_y.bin")
        out += [x, y]
    return tuple(out)


def _save(array: np.ndarray, path: Path, format: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    Image.fromarray(image).save(path, format=format)


def write_folders(root: Path, classes=("cat", "dog", "fox"), per_class: int = 4, n_test: int = 2,
                  side: int = 8, channels: int = 3) -> Arrays:
    """ImageNet-style class folders of PNGs: train/<class>/*.png and val/<class>/*.png."""
    rng = np.random.default_rng(6)
    out = []
    for split, n in (("train", per_class), ("val", n_test)):
        xs, ys = [], []
        for k, name in enumerate(classes):  # files sort by name within a class folder
            for i in range(n):
                x = images(rng, 1, channels, side)[0]
                _save(x, root / split / name / f"img{i:03d}.png")
                xs.append(x)
                ys.append(k)
        out += [np.stack(xs), np.array(ys, np.int64)]
    return tuple(out)


def write_tiny_imagenet(root: Path, wnids=("n01443537", "n01629819"), per_class: int = 3, n_val: int = 4) -> Arrays:
    """Tiny-ImageNet layout (PNG-encoded content, so the arrays are exact)."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # not sorted on disk
    xs, ys = [], []
    for k, wnid in enumerate(sorted(wnids)):
        for i in range(per_class):
            x = images(rng, 1, 3, 64)[0]
            _save(x, root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", "PNG")
            xs.append(x)
            ys.append(k)
    lines, vx, vy = [], [], []
    for i in range(n_val):
        k = i % len(wnids)
        x = images(rng, 1, 3, 64)[0]
        _save(x, root / "val" / "images" / f"val_{i}.JPEG", "PNG")
        lines.append(f"val_{i}.JPEG\t{sorted(wnids)[k]}\t0\t0\t63\t63")
        vx.append(x)
        vy.append(k)
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return np.stack(xs), np.array(ys, np.int64), np.stack(vx), np.array(vy, np.int64)


WRITERS = {
    "idx-gz": ("fashion-mnist", "idx", lambda root: write_idx(root, gz=True)),
    "idx-raw": ("mnist", "idx", lambda root: write_idx(root, gz=False)),
    "cifar10": ("cifar10", "cifar", write_cifar10),
    "cifar100": ("cifar100", "cifar", write_cifar100),
    "npz": ("imagenet1k", "npz", write_npz),
    "stl10": ("stl10", "stl10", write_stl10),
    "folders": ("pets", "folders", write_folders),
    "tiny-imagenet": ("tiny-imagenet", "tiny-imagenet", write_tiny_imagenet),
}


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def fashion_subset(folder: Path, train: int, test: int) -> Path:
    """The first `train` training and `test` test images of the real Fashion-MNIST, as IDX files:
    the code paths of the full set, with jobs and evaluations much cheaper."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        for kind, header in (("images-idx3-ubyte", 16), ("labels-idx1-ubyte", 8)):
            raw = gzip.decompress((FASHION / f"{split}-{kind}.gz").read_bytes())
            row = 28 * 28 if "images" in kind else 1
            head = bytearray(raw[:header])
            head[4:8] = count.to_bytes(4, "big")
            (folder / f"{split}-{kind}.gz").write_bytes(gzip.compress(bytes(head) + raw[header:header + count * row]))
    return folder
