"""Is the loader fast enough? Loader + augmentation throughput vs one B-6/Wi-256 training step.

    python benchmarks/loader_throughput.py            # CPU, 64 px, batch 1024: a few minutes
    python benchmarks/loader_throughput.py --device cuda

Measures, in one run (interleaved rounds, medians), images per second of (a) TrainLoader with the paper's augmentation
(random resized crop + flip + MixUp + normalisation) on synthetic uint8 3x64x64 images, three
ways: device-resident, streamed from a memory-map, and read through FFCV from a .beton written
by ffcv_backend.write_beton (skipped, with a note, where FFCV is missing); and (b) the product's
own fp32 training step of B-6/Wi-256 (1000 classes): train.Stepper with the model and
optimizer built as train() builds them (LION from scaling_study.optim, and AdamW), at the same
batch size, on a batch already on the device. The goal is loader/step >= 3, so data never
starves the model. Writes benchmarks/results/loader_throughput.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from scaling_study import ffcv_backend
from scaling_study.bench import make_stepper, sync, synthetic_spec
from scaling_study.data import Split
from scaling_study.grid import Augmentation, TrainConfig
from scaling_study.loader import Batch, TrainLoader
from scaling_study.train import keep_freed_memory

RESULTS = Path(__file__).resolve().parent / "results" / "loader_throughput.json"


def loader_timer(split: Split, batch_size: int, device: torch.device, resident: bool, beton: Path | None = None):
    """A function timing one epoch of TrainLoader with the default (paper's) augmentation: img/s."""
    loader = TrainLoader(split, np.arange(len(split.labels)), batch_size, device, 0, Augmentation(), 64,
                         resident=resident, beton=beton)
    epochs = iter(range(10**9))

    def run() -> float:
        sync(device)
        start, count = time.perf_counter(), 0
        for batch in loader.epoch(next(epochs)):
            count += len(batch.y)
        sync(device)
        return count / (time.perf_counter() - start)

    return run


def step_timer(optimizer_name: str, batch_size: int, device: torch.device, steps: int):
    """A function timing `steps` of the product's fp32 training step of B-6/Wi-256 (3x64x64 in, 1000 classes): img/s."""
    lr = 1e-5 if optimizer_name == "lion" else 1e-4
    spec = synthetic_spec("B-6/Wi-256", resolution=64, channels=3, classes=1000,
                          train=TrainConfig(optimizer=optimizer_name, lr=lr, batch_size=batch_size, precision="fp32"))
    stepper = make_stepper(spec, device)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 1000, (batch_size,), generator=g)
    batch = Batch(x=torch.randn(batch_size, 3, 64, 64, generator=g).to(device), y=y.to(device),
                  y_mix=y.roll(1, 0).to(device), lam=torch.full((batch_size,), 0.7, device=device))

    def run() -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            stepper.backward(batch)
            stepper.step(lr)
        sync(device)
        return steps * batch_size / (time.perf_counter() - start)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=16384, help="synthetic images in the dataset")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (medians are reported)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per optimizer and round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    keep_freed_memory(device)  # as train() does

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        # A real memory-mapped .npy, as a prepared store holds, for the streamed path.
        path = Path(folder) / "train_images.npy"
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(args.images, 3, 64, 64))
        for start in range(0, args.images, 4096):
            images[start : start + 4096] = rng.integers(0, 256, images[start : start + 4096].shape, dtype=np.uint8)
        images.flush()
        del images
        mapped = np.load(path, mmap_mode="r")
        labels = np.arange(args.images) % 1000
        split = Split(mapped, labels, tuple(map(str, range(1000))), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        timers = {
            "loader_resident": loader_timer(split, args.batch_size, device, True),
            "loader_streamed": loader_timer(split, args.batch_size, device, False),
        }
        if ffcv_backend.available():
            beton = Path(folder) / "train.beton"
            ffcv_backend.write_beton(beton, mapped, labels)
            timers["loader_ffcv"] = loader_timer(split, args.batch_size, device, False, beton)
        else:
            print(f"FFCV is not installed: its column is skipped ({ffcv_backend.INSTALL})")
        # Interleaved rounds, medians: a busy machine slows every measurement alike.
        timers |= {
            "train_step_lion": step_timer("lion", args.batch_size, device, args.steps),
            "train_step_adamw": step_timer("adamw", args.batch_size, device, args.steps),
        }
        for timer in timers.values():  # warm-up
            timer()
        samples = {name: [] for name in timers}
        for _ in range(args.rounds):
            for name, timer in timers.items():
                samples[name].append(timer())
        del timers, split, mapped
    rates = {name: float(np.median(values)) for name, values in samples.items()}
    lion, adamw = rates["train_step_lion"], rates["train_step_adamw"]
    paths = {"resident": "device-resident", "streamed": "streamed (memmap)", "ffcv": "FFCV (.beton)"}
    paths = {path: label for path, label in paths.items() if f"loader_{path}" in rates}
    ratios = {f"{path}_vs_{step}": rates[f"loader_{path}"] / rate
              for path in paths for step, rate in (("lion", lion), ("adamw", adamw))}
    print(f"loader + augmentation (64 px, batch {args.batch_size}, {device}):")
    for path, label in paths.items():
        print(f"  {label:20s} {rates[f'loader_{path}']:12,.0f} img/s")
    print(f"B-6/Wi-256 fp32 training step, train.Stepper (batch {args.batch_size}):")
    print(f"  LION                 {lion:12,.0f} img/s")
    print(f"  AdamW                {adamw:12,.0f} img/s")
    for name, value in ratios.items():
        print(f"ratio {name:20s} {value:6.2f}  ({'ok' if value >= 3 else 'below'} the goal of 3)")

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "load_average": os.getloadavg(),
        "settings": {"rounds": args.rounds, "images": args.images, "resolution": 64, "channels": 3, "batch_size": args.batch_size,
                     "augmentation": "random resized crop (0.35-1, 3/4-4/3) + flip + MixUp 0.8 (per batch)",
                     "model": "B-6/Wi-256, 1000 classes, fp32",
                     "step": "scaling_study.train.Stepper as train() builds it; LION from scaling_study.optim, AdamW",
                     "ffcv": f"ffcv {metadata.version('ffcv')}" if ffcv_backend.available() else "not installed"},
        "images_per_s": rates,
        "samples": samples,
        "ratios": ratios,
        "goal": 3.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
