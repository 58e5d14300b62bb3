"""What the planner must know about a dataset before any of it is read: size, classes, shape."""

from __future__ import annotations

from dataclasses import dataclass


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
