"""Optional FFCV backend: a prepared split as a `.beton`, and uint8 batches read back from one.

Install with `pip install '.[ffcv]'` (it compiles against Debian's libopencv-dev,
libturbojpeg0-dev and pkg-config). The .beton holds the store's uint8 arrays as raw
NDArray fields in the store's row order, so a `TrainLoader(..., beton=path)` reads the same
rows in the same counter-derived order and yields the same batches as the array path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import StudyError
from .files import write_atomic

INSTALL = ("apt-get install -y libopencv-dev libturbojpeg0-dev pkg-config && pip install '.[ffcv]'")

try:  # FFCV is an optional extra; everything else works without it.
    from ffcv.fields import IntField, NDArrayField
    from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToTensor
    from ffcv.writer import DatasetWriter
except ImportError:  # pragma: no cover - exercised where ffcv is missing
    DatasetWriter = None


def available() -> bool:
    """Whether FFCV can be imported here."""
    return DatasetWriter is not None


def require_ffcv() -> None:
    """A StudyError with the install line when FFCV is missing."""
    if not available():
        raise StudyError(f"FFCV is not installed; install it with: {INSTALL}")


class _Rows:
    """The indexed-dataset protocol DatasetWriter reads: (image, label) per row."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return np.ascontiguousarray(self.images[i]), int(self.labels[i])


def write_beton(path: str | Path, images: np.ndarray, labels: np.ndarray, workers: int = 0) -> None:
    """Write uint8 (N, C, H, W) images and int labels as a .beton (temp name, then os.replace)."""
    require_ffcv()
    fields = {"image": NDArrayField(np.dtype("uint8"), tuple(images.shape[1:])), "label": IntField()}

    def write(temp: Path) -> None:
        DatasetWriter(str(temp), fields, num_workers=workers or os.cpu_count() or 1).from_indexed_dataset(
            _Rows(images, labels))

    write_atomic(path, write)


def read_batches(path: str | Path, indices: np.ndarray, batch_size: int, workers: int = 0) -> Iterator[np.ndarray]:
    """uint8 (B, C, H, W) batches of the .beton's rows `indices`, in that order (fresh arrays)."""
    require_ffcv()
    if not Path(path).exists():
        raise StudyError(f"{path}: no such .beton (prepare the store with --beton)")
    if not len(indices):
        return
    loader = Loader(
        str(path), batch_size=batch_size, num_workers=workers or os.cpu_count() or 1,
        order=OrderOption.SEQUENTIAL, indices=np.asarray(indices), drop_last=False, os_cache=True,
        pipelines={"image": [NDArrayDecoder(), ToTensor()], "label": [IntDecoder(), ToTensor(), Squeeze()]},
    )
    for images, _ in loader:
        yield images.numpy().copy()  # FFCV reuses its buffers for later batches
