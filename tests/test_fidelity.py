"""Fidelity to the paper's own code: drop_last and the compute it records, keep-aspect
stores, the reference linear probe, and `study evaluate` of reference-layout checkpoints.

All on tiny real data written to disk, real SQLite files and real (tiny) training through the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from scaling_study import budget, data, db, loader, store
from scaling_study.grid import Augmentation, parse_grid
from scaling_study.plan import expand, summarize
from scaling_study.train import train
from tiny_datasets import write_idx

ROOT = Path(__file__).resolve().parent.parent


def study(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """The real `study` command in a subprocess."""
    result = subprocess.run([sys.executable, "-m", "scaling_study", *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"study {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def idx(tmp_path_factory) -> str:
    """300 training and 60 test images of 28x28, 10 balanced classes, as IDX files."""
    folder = tmp_path_factory.mktemp("idx")
    write_idx(folder, n_train=300, n_test=60, side=28)
    return str(folder)


def grid_text(path: str, examples: str = "[300]", batch: int = 128, extra_train: str = "", evaluation: str = "") -> str:
    return f"""
[study]
name = "fidelity"

[data.pretrain]
dataset = "fashion-mnist"
path = "{path}"

[[data.downstream]]
dataset = "fashion-mnist"
path = "{path}"
protocol = "linear"

[grid]
models = ["B-1/Wi-16"]
examples = {examples}
epochs = [1, 2]

[train]
lr = 1e-3
batch_size = {batch}
precision = "fp32"
{extra_train}

[evaluation]
probe = "fast"
{evaluation}
"""


# ---------------------------------------------------------------- drop_last and Eq. 4


def test_steps_per_epoch_with_and_without_the_last_partial_batch():
    # The paper grids' 1% subset of ImageNet-21k at batch 16384: 8 steps kept, 7 dropped.
    assert budget.steps_per_epoch(118_017, 16_384) == 8
    assert budget.steps_per_epoch(118_017, 16_384, drop_last=True) == 7
    assert budget.examples_per_epoch(118_017, 16_384, drop_last=True) == 7 * 16_384 == 114_688
    assert budget.examples_per_epoch(118_017, 16_384) == 118_017
    assert budget.total_steps(300, 128, 2, drop_last=True) == 4
    assert budget.steps_per_epoch(256, 128, drop_last=True) == 2  # nothing to drop


def test_the_paper_grid_plans_the_compute_of_the_steps_taken():
    jobs = expand(parse_grid((ROOT / "grids" / "cifar100.toml").read_text()))
    assert all(job.train.drop_last and job.train.augmentation.crop_scale == (0.08, 1.0) for job in jobs)
    small = next(job for job in jobs if job.examples == 118_017)
    assert small.examples_per_epoch == 114_688
    assert small.compute == small.flops * 3 * 114_688 * 800
    full = next(job for job in jobs if job.examples == 11_801_680 and job.model == small.model)
    assert full.examples_per_epoch == 720 * 16_384  # 11,801,680 = 720 * 16,384 + 5,200
    summary = summarize(jobs)
    assert summary.compute == sum(j.flops * 3 * j.examples_per_epoch * 800 for j in jobs)


def test_demo_jobs_keep_their_ids_and_compute():
    """drop_last (off) and the S-MLP variant (paper) are left out of a job's identity at their
    old behaviour's value: the committed demo plans exactly the jobs it planned before."""
    jobs = expand(parse_grid((ROOT / "grids" / "demo.toml").read_text()))
    assert not any(job.train.drop_last for job in jobs)
    assert [job.id for job in jobs][:2] == ["0e186d490211eb90", "e925c60fd167a722"]  # as at 308b823
    assert summarize(jobs).compute == 12_983_483_520_000.0
    with_it = parse_grid((ROOT / "grids" / "demo.toml").read_text().replace("batch_size = 256", "batch_size = 256\ndrop_last = true"))
    assert expand(with_it)[0].id != jobs[0].id


def test_a_grid_whose_drop_last_leaves_no_step_is_refused_at_plan_time(tmp_path, idx, cli):
    grid = tmp_path / "g.toml"
    grid.write_text(grid_text(idx, examples="[100, 300]", batch=128, extra_train="drop_last = true"))
    result = cli("plan", grid, "--db", f"sqlite:///{tmp_path / 'r.db'}")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {grid}: [train] drop_last = true leaves no training step for examples = 100 below batch_size 128; "
        "lower batch_size or set drop_last = false"]
    assert not (tmp_path / "r.db").exists()


def test_drop_last_trains_floor_n_over_b_steps_and_records_their_compute(tmp_path, idx, cli):
    (spec,) = expand(parse_grid(grid_text(idx, extra_train="drop_last = true")))
    (kept,) = expand(parse_grid(grid_text(idx)))
    steps = []
    result = train(spec, on_progress=lambda p: steps.append((p.step, p.steps_per_epoch)))
    assert result.status == "done"
    assert steps == [(1, 2), (2, 2), (3, 2), (4, 2)]  # 300 examples at batch 128: 2 steps, not 3

    grid = tmp_path / "g.toml"
    grid.write_text(grid_text(idx, extra_train="drop_last = true"))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    planned = cli("plan", grid, "--db", url).output
    assert f"{spec.compute / 1e15:,.3g}" in planned and f"{kept.compute / 1e15:,.3g}" not in planned
    ran = cli("run", "--db", url, "--device", "cpu", "--runs-dir", tmp_path / "runs")
    assert ran.exit_code == 0, ran.output
    engine = db.connect(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.evaluations.c.epoch, db.evaluations.c.compute)
                            .where(db.evaluations.c.metric == "fashion-mnist/linear")).all()
    engine.dispose()
    assert sorted(rows) == [(1, spec.flops * 3.0 * 256 * 1), (2, spec.flops * 3.0 * 256 * 2)]
    assert spec.compute == spec.flops * 3 * 256 * 2


# ---------------------------------------------------------------- keep-aspect stores


def write_non_square_folders(root: Path) -> dict[str, np.ndarray]:
    """Class folders of RGB PNGs, wide (8x16) in class a and tall (16x8) in class b; returns them by file."""
    rng = np.random.default_rng(0)
    written = {}
    for split in ("train", "val"):
        for name, (h, w) in (("a", (8, 16)), ("b", (16, 8))):
            for i in range(3):
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
                written[f"{split}/{name}/{i}"] = pixels
    return written


def sample(image: np.ndarray, top: float, left: float, side: float, out: int = 8) -> torch.Tensor:
    """Bilinear samples of an (C, H, W) image at the pixel centres of an out x out view of its square
    [top, top + side) x [left, left + side), clamped to the image: what a crop of it should hold."""
    centres = (np.arange(out) + 0.5) * side / out - 0.5
    ys = np.clip(top + centres, 0, image.shape[1] - 1)
    xs = np.clip(left + centres, 0, image.shape[2] - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, image.shape[1] - 1), np.minimum(x0 + 1, image.shape[2] - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    img = image.astype(np.float64)
    value = ((1 - wy) * (1 - wx) * img[:, y0][:, :, x0] + (1 - wy) * wx * img[:, y0][:, :, x1]
             + wy * (1 - wx) * img[:, y1][:, :, x0] + wy * wx * img[:, y1][:, :, x1])
    return torch.from_numpy(value.astype(np.float32))


def test_keep_aspect_store_keeps_the_longest_side_and_crops_inside_each_image(tmp_path, cli):
    written = write_non_square_folders(tmp_path / "raw")
    result = cli("data", "prepare", tmp_path / "raw", "--out", tmp_path / "kept", "--format", "folders",
                 "--resolution", "8", "--resize", "keep-aspect")
    assert result.exit_code == 0, result.output
    assert "8px, keep-aspect)" in result.output
    meta = store.read_meta(tmp_path / "kept")
    assert (meta["format_version"], meta["resize"]) == (2, "keep-aspect")
    train_split = data.load_split("pets", str(tmp_path / "kept"), "train", 8)
    assert train_split.sizes.tolist() == [[4, 8]] * 3 + [[8, 4]] * 3  # (height, width), longest side 8
    # Each image is Pillow's resize of the file with its aspect kept, in the top-left of its canvas,
    # the rest repeating its last row (wide images) or column (tall ones).
    wide = np.asarray(Image.fromarray(written["train/a/0"]).resize((8, 4), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    canvas = np.asarray(train_split.images[0])
    np.testing.assert_array_equal(canvas[:, :4], wide)
    np.testing.assert_array_equal(canvas[:, 4:], np.repeat(wide[:, 3:4], 4, axis=1))
    # The mean and std are the images' pixels', not the canvases'.
    pixels = np.concatenate([np.asarray(train_split.images[i])[:, :h, :w].reshape(3, -1)
                             for i, (h, w) in enumerate(train_split.sizes)], axis=1) / 255.0
    np.testing.assert_allclose(train_split.mean, pixels.mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(train_split.std, pixels.std(axis=1), atol=1e-12)

    # Test time: the centred square of each image (the reference code's centre crop), resized.
    x, _ = next(loader.eval_batches(train_split, 6, "cpu", 8))
    scale = torch.tensor(train_split.std).view(1, 3, 1, 1) * 255
    shift = torch.tensor(train_split.mean).view(1, 3, 1, 1) * 255
    images = torch.from_numpy(np.asarray(train_split.images, np.float32))
    wide_image, tall_image = np.asarray(train_split.images[0])[:, :4, :], np.asarray(train_split.images[3])[:, :, :4]
    torch.testing.assert_close(x[0] * scale[0] + shift[0], sample(wide_image, 0, 2, 4), atol=1e-3, rtol=0)
    torch.testing.assert_close(x[3] * scale[0] + shift[0], sample(tall_image, 2, 0, 4), atol=1e-3, rtol=0)
    # Training: a crop of all of the area at the image's own ratio is the whole image, not its canvas.
    whole = Augmentation(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 2.0), flip=False, mixup=0.0)
    (batch,) = loader.TrainLoader(train_split, np.array([0]), 1, "cpu", 0, whole, 8).epoch(0)
    expected = F.interpolate(images[:1, :, :4, :], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(batch.x * scale + shift, expected, atol=1e-3, rtol=0)
    boxes = loader.random_crops(6, train_split.sizes[:, 0], train_split.sizes[:, 1], (0.08, 1.0), (0.75, 4 / 3),
                                np.random.default_rng(1))
    cx, cy, w, h = boxes.T
    assert np.all(cx - w / 2 >= -1e-9) and np.all(cx + w / 2 <= train_split.sizes[:, 1] + 1e-9)
    assert np.all(cy - h / 2 >= -1e-9) and np.all(cy + h / 2 <= train_split.sizes[:, 0] + 1e-9)

    with pytest.raises(store.StudyError, match="keep-aspect store of 8px is read at its own resolution"):
        data.load_split("pets", str(tmp_path / "kept"), "test", 16)
    # The default squashes, as before: a version-1 store without sizes.
    assert cli("data", "prepare", tmp_path / "raw", "--out", tmp_path / "squashed", "--format", "folders",
               "--resolution", "8").exit_code == 0
    squashed = store.read_meta(tmp_path / "squashed")
    assert (squashed["format_version"], squashed["resize"]) == (1, "squash")
    assert data.load_split("pets", str(tmp_path / "squashed"), "train", 8).sizes is None
    again = cli("data", "prepare", tmp_path / "raw", "--out", tmp_path / "squashed", "--format", "folders",
                "--resolution", "8", "--resize", "keep-aspect")
    assert again.exit_code == 2 and "already holds" in again.stderr and "(squash)" in again.stderr


# ---------------------------------------------------------------- the reference probe


def brightness_split(n: int, seed: int) -> data.Split:
    """Two classes of 8x8 gray images, dark and bright, with noise: linearly separable."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = (rng.integers(0, 120, (n, 1, 8, 8)) + 100 * labels[:, None, None, None]).astype(np.uint8)
    return data.Split(images, labels.astype(np.int64), ("dark", "bright"), (0.45,), (0.25,))


def test_reference_probe_learns_on_augmented_images_and_drops_the_last_batch():
    from scaling_study.evaluate import probe_reference, topk_errors
    from scaling_study.models import build, parse_model

    torch.manual_seed(0)
    model = build(parse_model("B-1/Wi-16", "x"), 64, 2).eval()
    train_split, test_split = brightness_split(500, 0), brightness_split(200, 1)
    head = probe_reference(model, train_split, None, epochs=5, batch_size=64, precision="fp32",
                           device=torch.device("cpu"), resolution=8, seed=0)
    x, y = next(loader.eval_batches(test_split, 200, "cpu", 8))
    error = topk_errors(head(model.features(x)), y, (1,))[0]
    assert error < 0.1  # chance: 0.5
    assert not head.weight.requires_grad and torch.equal(model.head.weight, model.head.weight.detach())
    # 500 images at batch 64: 7 full batches per epoch, the 52 left over are dropped as the reference's loader does.
    assert len(loader.TrainLoader(train_split, np.arange(500), 64, "cpu", 0, None, 8, drop_last=True)) == 7


# ---------------------------------------------------------------- reference-layout checkpoints


class ReferenceBlock(nn.Module):
    """The reference code's bottleneck block layout: `block` = Linear, GELU, Linear."""

    def __init__(self, width: int, wide: int):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(width, wide), nn.GELU(), nn.Linear(wide, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ReferenceBottleneckMLP(nn.Module):
    """A module with the reference code's BottleneckMLP parameter names, written here for the test."""

    def __init__(self, dim_in: int, dim_out: int, depth: int, width: int):
        super().__init__()
        self.linear_in = nn.Linear(dim_in, width)
        self.linear_out = nn.Linear(width, dim_out)
        self.blocks = nn.ModuleList(ReferenceBlock(width, 4 * width) for _ in range(depth))
        self.layernorms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear_in(x.flatten(1))
        for block, norm in zip(self.blocks, self.layernorms):
            x = x + block(norm(x))
        return self.linear_out(x)


class ReferenceStandardMLP(nn.Module):
    """The reference code's StandardMLP names: L - 1 `layers` with `layernorms`, GELU between."""

    def __init__(self, dim_in: int, dim_out: int, depth: int, width: int):
        super().__init__()
        self.linear_in = nn.Linear(dim_in, width)
        self.linear_out = nn.Linear(width, dim_out)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.layernorms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear_in(x.flatten(1))
        for layer, norm in zip(self.layers, self.layernorms):
            z = layer(F.gelu(norm(z)))
        return self.linear_out(z)


def randomized(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter drawn at random (LayerNorm's too, so a swapped weight and bias would show)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module.eval()


@pytest.mark.parametrize("reference_cls,name", [(ReferenceBottleneckMLP, "B-2/Wi-16"),
                                                (ReferenceStandardMLP, "S-3/Wi-16/ref")])
def test_a_reference_layout_state_dict_computes_the_same_function_as_ours(tmp_path, reference_cls, name):
    from scaling_study.models import parse_model
    from scaling_study.reference import load_state_dict, to_reference_layout

    depth = 2 if name.startswith("B") else 3
    ref = randomized(reference_cls(784, 10, depth, 16), 1)
    torch.save(ref.state_dict(), tmp_path / "weights")
    model, layout = load_state_dict(tmp_path / "weights", parse_model(name, "x"), channels=1)
    assert layout == "reference"
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    back = to_reference_layout(model.state_dict(), parse_model(name, "x"))
    assert list(back) == list(ref.state_dict()) or sorted(back) == sorted(ref.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())


def test_study_evaluate_scores_a_reference_checkpoint_with_every_protocol(tmp_path, idx, cli):
    torch.save(randomized(ReferenceBottleneckMLP(784, 10, 2, 16), 2).state_dict(), tmp_path / "B-2_Wi-16_weights")
    checkpoint = tmp_path / "B-2_Wi-16_weights"
    base = ("evaluate", checkpoint, "--model", "B-2/Wi-16", "--downstream", f"fashion-mnist={idx}", "--device", "cpu")
    runs = {
        "fast": ("--probe", "fast"),
        "paper": ("--probe", "paper", "--probe-epochs", "2"),
        "reference": ("--probe", "reference", "--probe-epochs", "2", "--probe-batch-size", "64"),
        "finetune": ("--protocol", "finetune", "--finetune-epochs", "1", "--probe-batch-size", "64", "--tta-crops", "2"),
    }
    for name, options in runs.items():
        out = tmp_path / f"{name}.json"
        result = cli(*base, *options, "--json", out)
        assert result.exit_code == 0, result.output
        assert "loaded B-2/Wi-16" in result.output and "(reference layout)" in result.output
        metrics = json.loads(out.read_text())["metrics"]
        expected = {"fashion-mnist/finetune", "fashion-mnist/tta"} if name == "finetune" else {"fashion-mnist/linear"}
        assert set(metrics) == expected and all(0 <= v <= 1 for v in metrics.values())

    wrong_depth = cli("evaluate", checkpoint, "--model", "B-1/Wi-16", "--downstream", f"fashion-mnist={idx}")
    assert wrong_depth.exit_code == 2
    assert wrong_depth.stderr.strip().splitlines() == [
        f"error: {checkpoint}: key 'blocks.1.block.0.weight' is not in the model B-1/Wi-16 (reference layout); "
        "check --model"]
    wrong_width = cli("evaluate", checkpoint, "--model", "B-2/Wi-32", "--downstream", f"fashion-mnist={idx}")
    assert wrong_width.exit_code == 2 and len(wrong_width.stderr.strip().splitlines()) == 1
    assert "key 'linear_in.weight' has shape (16, 784), the model B-2/Wi-32 (32, 784)" in wrong_width.stderr
    paper_s = cli("evaluate", checkpoint, "--model", "S-2/Wi-16", "--downstream", f"fashion-mnist={idx}")
    assert paper_s.exit_code == 2 and "S-2/Wi-16/ref" in paper_s.stderr
