"""The GPU checks of issues #4 and #8 in one command, for the first session that is lent a GPU.

    python benchmarks/gpu_validation.py          # CUDA: the six Table 3 models, 64 px, batch 16384, bf16
    python benchmarks/gpu_validation.py --device cpu --batch 256 --models B-6/Wi-256 --images 3000 --steps 2 \
        --e2e-batch 256 --streamed-images 20000  # the same code paths on a CPU, in 20 s

1. The device's bf16 GEMM peak: the best torch.mm FLOP/s over large square products.
2. Each model through `study bench`'s own measurement (bench.measure: the resident loader with
   the paper's augmentation on synthetic 64x64x3 uint8 images, the product's Stepper and LION,
   11,230 classes as in Table 3): img/s, MFU against the GEMMs at the step's shapes and
   against the peak, the time of one ImageNet-21k epoch (11,801,680 images) at that rate, peak
   memory. Goal (#4, #8): B-12/Wi-1024 at >= 50% of the peak, an epoch well under 60 s (the
   paper: ~450 s on an RTX A5000).
3. The streamed loader's img/s (the path for subsets too large for the device, as all of
   ImageNet-21k at 64 px is), from a memory-mapped file on local disk.
4. A short real study end to end through the CLI: generated images with a learnable class
   signal, written as downsampled-ImageNet .npz files, `study plan`, then `study run --resume`
   on the device (pre-training, upstream test error, linear probe), with the points it records.

Writes benchmarks/results/gpu_validation.json (gpu_validation_cpu.json on a CPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from results_file import write  # noqa: E402

from scaling_study import cli, db  # noqa: E402
from scaling_study.bench import endless, matmul_rate, measure, sync, synthetic_spec  # noqa: E402
from scaling_study.data import Split  # noqa: E402
from scaling_study.evaluate import precision_dtype, resolved_precision  # noqa: E402
from scaling_study.grid import Augmentation, TrainConfig  # noqa: E402
from scaling_study.loader import TrainLoader  # noqa: E402
from scaling_study.runner import resolve_device  # noqa: E402

TABLE_3 = ["B-6/Wi-256", "B-12/Wi-256", "B-6/Wi-512", "B-12/Wi-512", "B-6/Wi-1024", "B-12/Wi-1024"]
IMAGENET_21K_IMAGES = 11_801_680


def gemm_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """Best torch.mm FLOP/s over square products (and the side that gave it)."""
    sides = (4096, 8192, 16384) if device.type == "cuda" else (1024, 2048)
    rates = {n: matmul_rate([(n, n, n)], device, 5, dtype) for n in sides}
    best = max(rates, key=rates.get)
    return rates[best], best


def write_dataset(folder: Path, images: int, classes: int, side: int = 64, seed: int = 0) -> None:
    """Downsampled-ImageNet .npz files whose classes can be learnt: a fixed random pattern per
    class, blended into 80% noise (1-based labels, channel-major rows, as the format has them)."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, (classes, 3 * side * side)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)

    def batch(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, count)
        noise = rng.integers(0, 256, (count, 3 * side * side)).astype(np.float32)
        return (0.2 * patterns[labels] + 0.8 * noise).astype(np.uint8), labels + 1

    for i, part in enumerate(np.array_split(np.arange(images), 4), start=1):
        data, labels = batch(len(part))
        np.savez(folder / f"train_data_batch_{i}.npz", data=data, labels=labels)
    data, labels = batch(max(classes * 10, images // 10))
    np.savez(folder / "val_data.npz", data=data, labels=labels)


def streamed_loader_rate(device: torch.device, batch: int, count: int, steps: int) -> float:
    """img/s of the streamed TrainLoader (what a subset too large for the device uses, e.g. all of
    ImageNet-21k at 64 px, 145 GB): a memory-mapped .npy of `count` 64x64x3 images on local disk,
    gathered in shuffled batches, copied to the device and augmented there (paper's recipe)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "images.npy"
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, 3, 64, 64))
        rng = np.random.default_rng(0)
        for start in range(0, count, 65536):
            images[start : start + 65536] = rng.integers(0, 256, images[start : start + 65536].shape, dtype=np.uint8)
        images.flush()
        del images
        split = Split(np.load(path, mmap_mode="r"), np.arange(count) % 1000, tuple(map(str, range(1000))),
                      (0.5,) * 3, (0.29,) * 3, str(path))
        loader = TrainLoader(split, np.arange(count), batch, device, 0, Augmentation(), 64, resident=False)
        batches = endless(loader)
        next(batches)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            next(batches)
        sync(device)
        return steps * batch / (time.perf_counter() - start)


def study(*args: str) -> None:
    code = cli.app([str(a) for a in args], standalone_mode=False)
    if code:
        sys.exit(f"study {' '.join(map(str, args))} exited {code}")


def end_to_end(device: torch.device, model: str, images: int, classes: int, batch: int, epochs: int) -> dict:
    """Plan and run a one-model study on generated data through the CLI; its jobs and points."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_dataset(folder / "data", images, classes)
        grid = folder / "gpu.toml"
        grid.write_text(f"""
[study]
name = "gpu-validation"

[data.pretrain]
dataset = "generated"
path = "{folder / 'data'}"
resolution = 64
size = {images}
classes = {classes}
channels = 3

[[data.downstream]]
dataset = "generated"
path = "{folder / 'data'}"
protocol = "linear"

[grid]
models = ["{model}"]
examples = [{images // 2}, {images}]
epochs = [{max(1, epochs // 2)}, {epochs}]

[train]
lr = 1e-4
batch_size = {min(batch, images // 2)}

[evaluation]
probe = "paper"
probe_epochs = 10
probe_lr = 1e-3
""")
        url = f"sqlite:///{folder}/results.db"
        study("plan", grid, "--db", url)
        start = time.perf_counter()
        study("run", "--resume", "--device", str(device), "--db", url, "--runs-dir", folder / "runs")
        run_s = time.perf_counter() - start
        engine = db.connect(url)
        jobs = [{"id": r["id"], "model": r["model"], "examples": r["examples"], "state": r["state"]}
                for r in db.job_rows(engine)]
        points = db.evaluations_frame(engine).to_dict("records")
        engine.dispose()
    return {"model": model, "images": images, "classes": classes, "run_s": run_s, "jobs": jobs, "points": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default=",".join(TABLE_3))
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--precision", default="auto", help="auto: bf16 on CUDA, fp32 on a CPU")
    parser.add_argument("--classes", type=int, default=11230)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="train.compile: torch.compile and fused LION")
    parser.add_argument("--images", type=int, default=60000, help="images of the end-to-end study (0: skip it)")
    parser.add_argument("--e2e-model", default="B-6/Wi-512")
    parser.add_argument("--e2e-epochs", type=int, default=4)
    parser.add_argument("--e2e-batch", type=int, default=1024)
    parser.add_argument("--streamed-images", type=int, default=400_000, help="memory-mapped images for the streamed loader")
    args = parser.parse_args()
    device = torch.device(resolve_device(args.device))
    precision = resolved_precision(args.precision, device)
    peak, side = gemm_peak(device, precision_dtype(precision, device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}: {precision} GEMM peak {peak / 1e12:.1f} TFLOP/s (torch.mm {side}^3)")

    models = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        train = TrainConfig(batch_size=args.batch, precision=args.precision, compile=args.compile)
        m = measure(synthetic_spec(model, resolution=64, channels=3, classes=args.classes, train=train), device,
                    steps=args.steps, evaluation=False)
        row = {"model": model, "images_per_s": m.images_per_s, "loader_images_per_s": m.loader_images_per_s,
               "train_flops_per_s": m.train_flops_per_s, "mfu_step_shapes": m.mfu,
               "mfu_peak": m.train_flops_per_s / peak, "imagenet21k_epoch_s": IMAGENET_21K_IMAGES / m.images_per_s,
               "peak_memory_bytes": m.peak_memory_bytes, "step_s": m.details["step_s"]}
        models.append(row)
        print(f"  {model:13s} {row['images_per_s']:>10,.0f} img/s  {row['train_flops_per_s'] / 1e12:7.1f} TFLOP/s  "
              f"MFU {row['mfu_peak']:6.1%} of peak ({row['mfu_step_shapes']:6.1%} of its GEMM shapes)  "
              f"ImageNet-21k epoch {row['imagenet21k_epoch_s']:8.1f} s  {row['peak_memory_bytes'] / 2**30:6.2f} GiB")

    streamed = streamed_loader_rate(device, args.batch, args.streamed_images, args.steps)
    print(f"  streamed loader (memory-mapped {args.streamed_images:,} images, shuffled): {streamed:,.0f} img/s = "
          f"an ImageNet-21k epoch in {IMAGENET_21K_IMAGES / streamed:.1f} s if the model were free")

    e2e = None
    if args.images:
        e2e = end_to_end(device, args.e2e_model, args.images, 100, args.e2e_batch, args.e2e_epochs)
        states = sorted({j["state"] for j in e2e["jobs"]})
        print(f"end to end: {args.e2e_model} on {args.images:,} generated 64 px images, 100 classes: "
              f"{len(e2e['jobs'])} jobs {states} in {e2e['run_s']:.1f} s")
        for p in e2e["points"]:
            print(f"    N={p['examples']:>7,} epoch {p['epochs']:>2}: {p['metric']} = {p['error']:.3f}")
    figures = {"device_name": name, "precision": precision, "batch": args.batch, "classes": args.classes,
               "compile": args.compile, "gemm_peak_flops_per_s": peak, "gemm_peak_side": side, "models": models,
               "streamed_loader_images_per_s": streamed, "streamed_images": args.streamed_images,
               "end_to_end": e2e}
    print(f"wrote {write('gpu_validation' + ('' if device.type == 'cuda' else '_cpu'), figures)}")


if __name__ == "__main__":
    main()
