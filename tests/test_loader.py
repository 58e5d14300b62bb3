"""The loader: shapes, determinism from counters, mid-epoch resume, MixUp, crops, evaluation and TTA."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from scaling_study.data import Split, load_split
from scaling_study.grid import Augmentation
from scaling_study.loader import STREAM_DEPTH, Batch, TrainLoader, eval_batches, random_crops, tta_batches

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def synthetic(n: int = 50, channels: int = 3, side: int = 16, classes: int = 5) -> Split:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, channels, side, side), dtype=np.uint8)
    labels = (np.arange(n) % classes).astype(np.int64)
    mean = tuple(float(m) for m in images.mean(axis=(0, 2, 3)) / 255)
    std = tuple(float(s) for s in images.std(axis=(0, 2, 3)) / 255)
    return Split(images, labels, tuple(map(str, range(classes))), mean, std)


def batches(loader: TrainLoader, epoch: int, start: int = 0) -> list[Batch]:
    return list(loader.epoch(epoch, start))


def same(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.x, y.x) and torch.equal(x.y, y.y) and torch.equal(x.y_mix, y.y_mix) and torch.equal(x.lam, y.lam)
        for x, y in zip(a, b)
    )


def test_shapes_dtypes_and_length():
    split = synthetic()
    indices = np.arange(0, 50, 2)  # 25 examples
    loader = TrainLoader(split, indices, 8, "cpu", 0, Augmentation(), 24)
    assert len(loader) == math.ceil(25 / 8) == 4
    out = batches(loader, 0)
    assert [len(b.y) for b in out] == [8, 8, 8, 1]  # the last batch is smaller
    for b in out:
        assert b.x.dtype == torch.float32 and b.x.shape == (len(b.y), 3, 24, 24)
        assert b.y.dtype == torch.int64 and b.y_mix.dtype == torch.int64 and b.lam.dtype == torch.float32
        assert b.lam.shape == b.y.shape
    # Every example of the subset exactly once per epoch.
    assert sorted(torch.cat([b.y for b in out]).tolist()) == sorted(split.labels[indices].tolist())


def test_without_augmentation_batches_are_the_normalized_images_of_a_permutation():
    split = synthetic(n=20)
    loader = TrainLoader(split, np.arange(20), 6, "cpu", 3, None, 16)
    order = loader.order(0).numpy()
    x = torch.cat([b.x for b in loader.epoch(0)])
    expected = (torch.from_numpy(split.images[order]).float() / 255 - torch.tensor(split.mean).view(1, -1, 1, 1)) / \
        torch.tensor(split.std).view(1, -1, 1, 1)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(order, loader.order(1).numpy())  # a new order each epoch


def test_same_seed_same_batches_other_seed_other_batches():
    split = synthetic()
    make = lambda seed: TrainLoader(split, np.arange(50), 16, "cpu", seed, Augmentation(), 16)  # noqa: E731
    assert same(batches(make(1), 2), batches(make(1), 2))
    assert not same(batches(make(1), 2), batches(make(2), 2))
    assert not same(batches(make(1), 2), batches(make(1), 3))


def test_a_resumed_epoch_is_the_tail_of_the_full_epoch():
    split = synthetic()
    loader = TrainLoader(split, np.arange(50), 7, "cpu", 5, Augmentation(mixup_per_image=True), 16)
    full = batches(loader, 4)
    for start in (1, 3, len(loader) - 1):
        fresh = TrainLoader(split, np.arange(50), 7, "cpu", 5, Augmentation(mixup_per_image=True), 16)
        assert same(batches(fresh, 4, start), full[start:])
    assert batches(loader, 4, len(loader)) == []


def test_resident_and_streamed_batches_are_identical():
    split = synthetic()
    indices = np.array([49, 3, 17, 8, 30, 31, 2, 40, 41, 0, 22])
    resident = TrainLoader(split, indices, 4, "cpu", 0, Augmentation(), 16, resident=True)
    streamed = TrainLoader(split, indices, 4, "cpu", 0, Augmentation(), 16, resident=False)
    assert resident.resident and not streamed.resident
    assert same(batches(resident, 0), batches(streamed, 0))
    assert same(batches(resident, 1, 2), batches(streamed, 1, 2))


def test_streamed_batches_read_ahead_are_the_resident_ones_in_every_epoch_and_resume():
    """More batches than the streamed loader reads ahead (each read slot is reused), a last partial
    batch, MixUp per image, a resumed epoch: bit for bit the resident loader's batches."""
    split = synthetic(n=200)
    indices = np.random.default_rng(1).permutation(200)[:150]
    aug = Augmentation(mixup=0.5, mixup_per_image=True)
    resident = TrainLoader(split, indices, 4, "cpu", 5, aug, 12, resident=True)
    streamed = TrainLoader(split, indices, 4, "cpu", 5, aug, 12, resident=False)
    assert len(streamed) == 38 > 2 * STREAM_DEPTH
    for epoch, start in ((0, 0), (1, 0), (1, 7), (2, 21)):
        assert same(batches(resident, epoch, start), batches(streamed, epoch, start))


def test_batches_in_the_models_dtype_are_the_fp32_batches_rounded_once():
    """dtype=bf16 (CUDA's precision): the normalised images as autocast would round them at the
    model's input, bit for bit; resident and streamed alike."""
    split = synthetic()
    for resident in (True, False):
        for aug in (Augmentation(), None):
            plain = batches(TrainLoader(split, np.arange(50), 16, "cpu", 2, aug, 12, resident=resident), 0)
            low = batches(TrainLoader(split, np.arange(50), 16, "cpu", 2, aug, 12, resident=resident,
                                      dtype=torch.bfloat16), 0)
            for p, q in zip(plain, low):
                assert q.x.dtype == torch.bfloat16 and torch.equal(q.x, p.x.to(torch.bfloat16))
                assert torch.equal(q.y, p.y) and torch.equal(q.lam, p.lam)


def test_mixup_blends_each_image_with_its_neighbour():
    split = synthetic()
    plain = Augmentation(mixup=0.0)
    mixed = Augmentation(mixup=0.8)
    a = batches(TrainLoader(split, np.arange(50), 16, "cpu", 9, plain, 16), 0)
    b = batches(TrainLoader(split, np.arange(50), 16, "cpu", 9, mixed, 16), 0)
    for p, m in zip(a, b):
        assert torch.all(p.lam == 1) and torch.equal(p.y_mix, p.y)
        lam = m.lam[0]
        assert torch.all(m.lam == lam) and 0 < lam < 1  # one lambda per batch, the paper's loader
        assert torch.equal(m.y, p.y) and torch.equal(m.y_mix, p.y.roll(1, 0))
        # Normalisation is affine with weights summing to one, so it commutes with the blend.
        torch.testing.assert_close(m.x, lam * p.x + (1 - lam) * p.x.roll(1, 0), rtol=1e-4, atol=1e-4)


def test_per_image_mixup_draws_a_lambda_per_image():
    split = synthetic()
    out = batches(TrainLoader(split, np.arange(50), 16, "cpu", 9, Augmentation(mixup_per_image=True), 16), 0)
    lam = torch.cat([b.lam for b in out])
    assert len(set(lam.tolist())) == 50 and torch.all((lam > 0) & (lam < 1))
    # Beta(0.8, 0.8) is symmetric about 1/2 with variance 1/(4 (2 alpha + 1)) = 0.0962.
    many = torch.cat([b.lam for e in range(20) for b in TrainLoader(
        split, np.arange(50), 50, "cpu", e, Augmentation(mixup_per_image=True), 16).epoch(0)])
    assert abs(many.mean().item() - 0.5) < 0.04 and abs(many.var().item() - 1 / 10.4) < 0.02


def test_crops_stay_within_the_scale_and_ratio_bounds_and_the_image():
    rng = np.random.default_rng(0)
    for height, width, scale, ratio in ((64, 64, (0.35, 1.0), (3 / 4, 4 / 3)), (32, 48, (0.08, 1.0), (3 / 4, 4 / 3)),
                                        (64, 64, (0.9, 1.0), (0.5, 2.0))):
        boxes = random_crops(5000, height, width, scale, ratio, rng)
        cx, cy, w, h = boxes.T
        area = w * h / (height * width)
        assert area.min() >= scale[0] - 1e-9 and area.max() <= scale[1] + 1e-9
        assert (w / h).min() >= ratio[0] - 1e-9 and (w / h).max() <= ratio[1] + 1e-9
        assert (cx - w / 2).min() >= -1e-9 and (cx + w / 2).max() <= width + 1e-9
        assert (cy - h / 2).min() >= -1e-9 and (cy + h / 2).max() <= height + 1e-9
        assert area.std() > 0.02  # per-image parameters, not one per batch
    # When no draw fits, the fallback is torchvision's: a centred crop with the ratio clamped.
    boxes = random_crops(10, 16, 16, (1.0, 1.0), (3.0, 4.0), rng)
    np.testing.assert_allclose(boxes, [[8, 8, 16, 16 / 3]] * 10)


def test_full_crops_with_flip_give_the_image_or_its_mirror():
    split = synthetic(n=32, side=8)
    aug = Augmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True, mixup=0.0)
    loader = TrainLoader(split, np.arange(32), 32, "cpu", 0, aug, 8)
    (batch,) = batches(loader, 0)
    reference = next(eval_batches(split, 32, "cpu", 8, indices=loader.order(0).numpy()))[0]
    flipped = [torch.allclose(x, r.flip(-1), atol=1e-4) for x, r in zip(batch.x, reference)]
    kept = [torch.allclose(x, r, atol=1e-4) for x, r in zip(batch.x, reference)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 5 < sum(flipped) < 27


def test_eval_batches_are_ordered_resized_and_normalized():
    split = synthetic(n=30, side=16)
    out = list(eval_batches(split, 8, "cpu", 16))
    assert [len(y) for _, y in out] == [8, 8, 8, 6]
    x = torch.cat([x for x, _ in out])
    assert torch.equal(torch.cat([y for _, y in out]), torch.from_numpy(split.labels))
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4, rtol=0)
    x64, _ = next(eval_batches(split, 4, "cpu", 32, indices=np.array([5, 1])))
    assert x64.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x64.mean(dim=(2, 3)), x[[5, 1]].mean(dim=(2, 3)), atol=2e-2, rtol=0)


def test_tta_gives_crops_per_image_deterministically():
    split = synthetic(n=10, side=16)
    a = list(tta_batches(split, 4, "cpu", 16, crops=5, seed=1))
    b = list(tta_batches(split, 4, "cpu", 16, crops=5, seed=1))
    assert [x.shape for x, _ in a] == [(5, 4, 3, 16, 16), (5, 4, 3, 16, 16), (5, 2, 3, 16, 16)]
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert not torch.equal(a[0][0][0], a[0][0][1])  # different crops of the same image
    assert not torch.equal(a[0][0], next(tta_batches(split, 4, "cpu", 16, crops=5, seed=2))[0])


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_trains_on_one_channel():
    split = load_split("fashion-mnist", str(FASHION_MNIST), "train", 28)
    loader = TrainLoader(split, np.arange(0, 60000, 100), 128, "cpu", 0, Augmentation(), 28)
    batch = next(loader.epoch(0))
    assert batch.x.shape == (128, 1, 28, 28)  # grayscale stays grayscale


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cpu_and_cuda_draw_the_same_batches():
    split = synthetic()
    cpu = batches(TrainLoader(split, np.arange(50), 16, "cpu", 0, Augmentation(), 16), 1)
    gpu = batches(TrainLoader(split, np.arange(50), 16, "cuda", 0, Augmentation(), 16), 1)
    gpu_streamed = batches(TrainLoader(split, np.arange(50), 16, "cuda", 0, Augmentation(), 16, resident=False), 1)
    for c, g, s in zip(cpu, gpu, gpu_streamed):
        assert torch.equal(c.y, g.y.cpu()) and torch.equal(c.lam, g.lam.cpu()) and torch.equal(g.x, s.x)
        torch.testing.assert_close(c.x, g.x.cpu(), atol=1e-4, rtol=1e-4)


def test_a_beton_gives_the_same_batches_as_the_arrays(tmp_path, cli):
    if not os.environ.get("CI"):  # CI installs the extra (scripts/test.sh): there a missing FFCV fails
        pytest.importorskip("ffcv", reason="the optional FFCV backend is not installed")
    from tiny_datasets import write_npz

    write_npz(tmp_path / "raw")
    result = cli("data", "prepare", tmp_path / "raw", "--out", tmp_path / "store", "--beton")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "store" / "train.beton").exists() and (tmp_path / "store" / "test.beton").exists()
    split = load_split("imagenet1k", str(tmp_path / "store"), "train", 8)
    indices = np.array([1, 4, 5, 7, 8, 9, 11])
    arrays = TrainLoader(split, indices, 3, "cpu", 0, Augmentation(), 8)
    beton = TrainLoader(split, indices, 3, "cpu", 0, Augmentation(), 8, beton=tmp_path / "store" / "train.beton")
    assert same(batches(arrays, 2), batches(beton, 2))
    assert same(batches(arrays, 2, 1), batches(beton, 2, 1))
