"""The prepared store: a raw dataset converted once into memory-mappable uint8 NCHW arrays.

Layout of a store directory:

    meta.json            written last, atomically; a store without it is not a store
    train_images.npy     uint8 (N, C, R, R)
    train_labels.npy     int64 (N,)
    test_images.npy, test_labels.npy
    train_sizes.npy      keep-aspect stores only: int16 (N, 2), each image's height and width

A store is `squash` (every image resized whole to R x R, as Chrabaszcz et al.'s downsampled
ImageNet) or `keep-aspect` (longest side R, as the reference code's FFCV store: the image sits in
the top-left of its R x R canvas, the rest repeating its edge). Keep-aspect stores are format
version 2, which older versions of this package refuse rather than misread.

While it is written the arrays are `*.npy.partial` and `.prepare-progress.json` records how
far each split got (and the pixel histograms for the mean/std), so an interrupted `prepare`
resumes at the last finished chunk. Unreadable images are skipped and listed in meta.json.
"""

from __future__ import annotations

import datetime
import json
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StudyError
from .files import write_atomic
from .readers import RESIZE_MODES, Source, common_side, open_source

FORMAT_VERSION = 1
KEEP_ASPECT_VERSION = 2  # a keep-aspect store: its canvases must not be read as whole images
META = "meta.json"
PROGRESS = ".prepare-progress.json"
SPLITS = ("train", "test")
ProgressCallback = Callable[[str, int, int], None]  # (split, items done, items in split)


def images_file(split: str) -> str:
    return f"{split}_images.npy"


def labels_file(split: str) -> str:
    return f"{split}_labels.npy"


def sizes_file(split: str) -> str:
    return f"{split}_sizes.npy"


def resize_mode(meta: dict) -> str:
    """How a store's images were resized: squash (all stores before keep-aspect existed) or keep-aspect."""
    return meta.get("resize", "squash")


def write_json_atomic(path: Path, value: object) -> None:
    """JSON written whole and fsynced (files.write_atomic): never half a file, even after a power cut."""
    write_atomic(path, lambda temp: temp.write_text(json.dumps(value, indent=1)), durable=True)


def read_meta(path: Path) -> dict | None:
    """A complete store's meta.json, or None when `path` holds no complete store."""
    file = path / META
    if not file.exists():
        return None
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise StudyError(f"{file}: unreadable store metadata: {error}") from None
    if not isinstance(meta, dict) or meta.get("format_version") not in (FORMAT_VERSION, KEEP_ASPECT_VERSION):
        raise StudyError(f"{file}: not a version-{FORMAT_VERSION} or -{KEEP_ASPECT_VERSION} store "
                         f"(re-run `study data prepare`)")
    return meta


def open_split(path: Path, meta: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map one split of a complete store, checking it against meta.json."""
    try:
        images = np.load(path / images_file(split), mmap_mode="r")
        labels = np.load(path / labels_file(split), mmap_mode="r")
    except (OSError, ValueError) as error:
        raise StudyError(f"{path}: store split {split!r} is unreadable: {error}") from None
    count = meta["splits"][split]["count"]
    shape = (count, meta["channels"], meta["resolution"], meta["resolution"])
    if images.shape != shape or images.dtype != np.uint8 or labels.shape != (count,) or labels.dtype != np.int64:
        raise StudyError(f"{path}: {split} arrays {images.shape}/{labels.shape} do not match meta.json {shape}")
    return images, labels


def open_sizes(path: Path, meta: dict, split: str) -> np.ndarray | None:
    """A keep-aspect store's (height, width) per image of one split; None for a squash store."""
    if resize_mode(meta) != "keep-aspect":
        return None
    try:
        sizes = np.load(path / sizes_file(split), mmap_mode="r")
    except (OSError, ValueError) as error:
        raise StudyError(f"{path}: store split {split!r} has no readable image sizes: {error}") from None
    if sizes.shape != (meta["splits"][split]["count"], 2):
        raise StudyError(f"{path}: {split} sizes {sizes.shape} do not match meta.json's count")
    return np.asarray(sizes)


# ---------------------------------------------------------------- .npy files written in place


def _npy_header(shape: tuple[int, ...], dtype: np.dtype, length: int = 0) -> bytes:
    """A version-1.0 .npy header, padded to `length` bytes (or to a multiple of 64)."""
    text = f"{{'descr': {np.dtype(dtype).str!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    length = length or -(-(10 + len(text) + 1) // 64) * 64
    padding = length - 10 - len(text) - 1
    if padding < 0:
        raise ValueError("header does not fit")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length - 10) + text.encode("latin1") + b" " * padding + b"\n"


def _create_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """A sparse .npy of `shape`, to be filled through a memmap."""
    header = _npy_header(shape, dtype)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + int(np.prod(shape)) * np.dtype(dtype).itemsize)


def _map_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
    return np.memmap(path, dtype, mode="r+", offset=len(_npy_header(shape, dtype)), shape=shape)


def _shrink_npy(path: Path, shape: tuple[int, ...], rows: int, dtype: np.dtype) -> None:
    """Cut a partial .npy to its first `rows` rows, rewriting the header in place (same length)."""
    old = _npy_header(shape, dtype)
    new_shape = (rows, *shape[1:])
    with open(path, "r+b") as f:
        f.write(_npy_header(new_shape, dtype, len(old)))
        f.truncate(len(old) + int(np.prod(new_shape)) * np.dtype(dtype).itemsize)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- prepare


@dataclass(frozen=True)
class Prepared:
    """What `prepare` did: the store's metadata, and whether it resumed or found it done."""

    meta: dict
    resumed: bool = False
    already: bool = False


def _stats(histograms: list[list[int]]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units from 256-bin pixel histograms (exact)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for hist in histograms:
        h = np.asarray(hist, np.float64)
        total = h.sum()
        mean = float((h * values).sum() / total) if total else 0.0
        var = float((h * values**2).sum() / total - mean**2) if total else 0.0
        means.append(mean)
        stds.append(max(var, 0.0) ** 0.5)
    return means, stds


def prepare(
    source_path: str | Path,
    out: str | Path,
    fmt: str = "auto",
    resolution: int = 0,
    dataset: str = "",
    workers: int = 0,
    chunk_size: int = 0,
    channels: int = 0,
    progress: ProgressCallback | None = None,
    beton: bool = False,
    resize: str = "squash",
) -> Prepared:
    """Convert a raw dataset into a store at `out`, resuming an interrupted run of the same options.

    `resize`: "squash" (each image whole to R x R) or "keep-aspect" (longest side R, see the
    module docstring). With `beton`, also write FFCV `{split}.beton` files beside the arrays
    (needs the ffcv extra; squash stores only).
    """
    if resize not in RESIZE_MODES:
        raise StudyError(f"unknown --resize {resize!r}; valid choices: {', '.join(RESIZE_MODES)}")
    if beton and resize != "squash":
        raise StudyError("--beton writes whole square images; a keep-aspect store has no .beton")
    if beton:
        from .ffcv_backend import require_ffcv

        require_ffcv()
    out = Path(out)
    source = open_source(source_path, fmt, dataset, channels)
    resolution = resolution or source.native or (common_side(source) if source.file_based else 0)
    if resolution <= 0:
        raise StudyError(f"{source_path}: images of varying size; give --resolution")
    params = {
        "source": str(Path(source_path).resolve()), "format": source.format, "dataset": source.dataset,
        "resolution": resolution, "channels": source.channels, "classes": list(source.classes),
        "counts": {s: len(source.splits[s]) for s in SPLITS},
    }
    if resize != "squash":  # only then: an interrupted squash preparation keeps its params
        params["resize"] = resize
    meta = read_meta(out) if out.is_dir() else None
    if meta is not None:
        same = all(meta.get(k) == params[k] for k in ("dataset", "resolution", "channels"))
        if not same or meta.get("source_format") != source.format or resize_mode(meta) != resize:
            raise StudyError(f"{out}: already holds {meta.get('dataset')} at {meta.get('resolution')}px "
                             f"({resize_mode(meta)}); choose another --out or delete it")
        if beton:
            _write_betons(out, meta)
        return Prepared(meta, already=True)
    state = _start(out, params)
    resumed = any(state["splits"][s]["rows_in"] for s in SPLITS)
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        for split in SPLITS:
            _convert(out, source, split, state, chunk_size, pool, progress)
    meta = _finish(out, source, state)
    if beton:
        _write_betons(out, meta)
    return Prepared(meta, resumed=resumed)


def _write_betons(out: Path, meta: dict) -> None:
    from .ffcv_backend import write_beton

    for split in SPLITS:
        if not (out / f"{split}.beton").exists():
            images, labels = open_split(out, meta, split)
            write_beton(out / f"{split}.beton", images, labels)


def _start(out: Path, params: dict) -> dict:
    """The progress state: resumed from `out` when it matches `params`, else a fresh store."""
    progress_file = out / PROGRESS
    if progress_file.exists():
        try:
            state = json.loads(progress_file.read_text())
        except ValueError:
            state = None
        if state and state.get("params") == params:
            return state
        raise StudyError(f"{out}: holds an interrupted preparation with other options; "
                         f"re-run it with the same options or delete {out}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StudyError(f"{out}: exists and is not an empty directory or a store")
    out.mkdir(parents=True, exist_ok=True)
    c, r = params["channels"], params["resolution"]
    for split in SPLITS:
        count = params["counts"][split]
        _create_npy(out / (images_file(split) + ".partial"), (count, c, r, r), np.uint8)
        _create_npy(out / (labels_file(split) + ".partial"), (count,), np.int64)
        if params.get("resize") == "keep-aspect":
            _create_npy(out / (sizes_file(split) + ".partial"), (count, 2), np.int16)
    state = {
        "format_version": FORMAT_VERSION, "params": params,
        "splits": {s: {"rows_in": 0, "rows_out": 0, "histogram": [[0] * 256 for _ in range(c)], "skipped": []}
                   for s in SPLITS},
    }
    write_json_atomic(progress_file, state)
    return state


def _convert(out, source: Source, split: str, state: dict, chunk_size: int, pool, progress) -> None:
    """Decode, resize and write one split chunk by chunk, recording progress after each."""
    params, record = state["params"], state["splits"][split]
    part = source.splits[split]
    count, c, r = len(part), params["channels"], params["resolution"]
    if not chunk_size:
        # Small chunks for image files (progress shows often); ~256 MB of output for arrays.
        chunk_size = 4096 if source.file_based else max(1, 2**28 // (c * r * r))
    images_path, labels_path = out / (images_file(split) + ".partial"), out / (labels_file(split) + ".partial")
    if not images_path.exists():  # already finished and renamed by an earlier run
        return
    images = _map_npy(images_path, (count, c, r, r), np.uint8)
    labels = _map_npy(labels_path, (count,), np.int64)
    resize = params.get("resize", "squash")
    sizes = _map_npy(out / (sizes_file(split) + ".partial"), (count, 2), np.int16) if resize != "squash" else None
    if progress:
        progress(split, record["rows_in"], count)
    while record["rows_in"] < count:
        start = record["rows_in"]
        stop = min(count, start + chunk_size)
        chunk = part.read(start, stop, r, pool, resize)
        at, m = record["rows_out"], len(chunk.images)
        images[at : at + m] = chunk.images
        labels[at : at + m] = part.labels[start:stop][chunk.keep]
        images.flush()
        labels.flush()
        if sizes is not None:
            sizes[at : at + m] = chunk.sizes
            sizes.flush()
        # The mean/std count image pixels only, not a keep-aspect canvas's repeated edge.
        inside = None if sizes is None else _inside(chunk.sizes, r)
        for channel in range(c):
            pixels = chunk.images[:, channel]
            hist = np.bincount(pixels.reshape(-1) if inside is None else pixels[inside], minlength=256)
            record["histogram"][channel] = [int(a + b) for a, b in zip(record["histogram"][channel], hist)]
        record["skipped"] += [{"path": p, "reason": why} for p, why in chunk.skipped]
        record["rows_in"], record["rows_out"] = stop, at + m
        write_json_atomic(out / PROGRESS, state)
        if progress:
            progress(split, stop, count)
    del images, labels, sizes


def _inside(sizes: np.ndarray, resolution: int) -> np.ndarray:
    """(m, R, R) mask of the pixels of each canvas that belong to its image (top-left height x width)."""
    side = np.arange(resolution)
    sizes = np.asarray(sizes, np.int64)
    return (side[None, :, None] < sizes[:, 0, None, None]) & (side[None, None, :] < sizes[:, 1, None, None])


def _finish(out: Path, source: Source, state: dict) -> dict:
    """Cut the arrays to the readable rows, rename them into place, and write meta.json last."""
    params = state["params"]
    c, r = params["channels"], params["resolution"]
    splits = {}
    for split in SPLITS:  # checked for every split before any is renamed: a failure leaves no store
        record = state["splits"][split]
        if record["rows_out"] == 0:
            for leftover in [*out.glob("*.partial"), out / PROGRESS]:  # a resume would read the same files
                leftover.unlink(missing_ok=True)
            if not any(out.iterdir()):
                out.rmdir()
            first = record["skipped"][0] if record["skipped"] else None
            raise StudyError(f"{source.splits[split].where}: no readable images in the {split} split "
                             f"({len(record['skipped'])} unreadable" + (f", e.g. {first['path']}: {first['reason']}"
                             if first else "") + f"); nothing kept in {out}")
    for split in SPLITS:
        record, count = state["splits"][split], params["counts"][split]
        rows = record["rows_out"]
        arrays = [(images_file(split), (count, c, r, r), np.uint8), (labels_file(split), (count,), np.int64)]
        if params.get("resize") == "keep-aspect":
            arrays.append((sizes_file(split), (count, 2), np.int16))
        for name, shape, dtype in arrays:
            partial = out / (name + ".partial")
            if partial.exists():
                _shrink_npy(partial, shape, rows, dtype)
                os.replace(partial, out / name)
        labels = np.load(out / labels_file(split), mmap_mode="r")
        class_counts = np.bincount(labels, minlength=len(params["classes"]))
        splits[split] = {"count": rows, "class_counts": [int(n) for n in class_counts]}
    mean, std = _stats(state["splits"]["train"]["histogram"])
    skipped = [{"split": s, **item} for s in SPLITS for item in state["splits"][s]["skipped"]]
    resize = params.get("resize", "squash")
    meta = {
        "format_version": FORMAT_VERSION if resize == "squash" else KEEP_ASPECT_VERSION,
        "dataset": params["dataset"],
        "source": params["source"],
        "source_format": params["format"],
        "resolution": r,
        "resize": resize,
        "channels": c,
        "classes": params["classes"],
        "splits": splits,
        "mean": mean,
        "std": std,
        "skipped_count": len(skipped),
        "skipped": skipped,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(out / META, meta)
    (out / PROGRESS).unlink()
    return meta
