"""The GPU validation in one command, within 8 minutes, on a machine's own Python and torch.

    python3 benchmarks/gpu/validate.py --out OUT            # CUDA: about 8 minutes (the parts' budgets below)
    python3 benchmarks/gpu/validate.py --device cpu --out OUT   # the same code paths, tiny sizes, under a minute

Needs no `pip install -e .`: the repository is put on PYTHONPATH, and wheels carried in `.whl/`
(SQLAlchemy; README.md beside this file says how to download them) are installed into a
temporary folder when a package is missing. Each part runs in its own process with a time
budget and writes its figures as soon as it has them, into OUT/validate.json and a short
OUT/summary.txt: a part that runs out of time leaves what it measured, and the next part runs.

Parts (seconds of budget on CUDA):
  peak     (30)  the device's GEMM rate: torch.mm over large square products, in the step's dtype
  step    (180)  B-12/Wi-1024, 64x64x3, batch 16384, 11,230 classes, bf16, resident uint8 data: the
                 product's own step (bench.measure), compiled as on CUDA by default, then eager;
                 img/s and the fraction of the GEMM rate (measured, and the H100's 798 TFLOP/s)
  profile  (50)  torch.profiler over 3 steps with CUDA's defaults: the kernels that take the time
  streamed (40)  the streamed loader (a memory-mapped subset too large for the device) in img/s,
                 over the step's img/s: an epoch after the first (pages already mapped), and the first
  study   (100)  a tiny real study on generated images: study plan, study run, study fit
  resume   (80)  one job run whole, and run again killed (SIGKILL) mid-training then resumed:
                 both finish, with the same points (equal on the CPU, close on a GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".whl"
NOMINAL_PEAK = {"H100": 798e12, "H200": 798e12}  # dense bf16 matmul FLOP/s that the estimates assume
PARTS = ("peak", "step", "profile", "streamed", "study", "resume")
SIZES = {  # per device type: what each part runs, and its budget in seconds
    "cuda": {"budget_s": {"peak": 30, "step": 180, "profile": 50, "streamed": 40, "study": 100, "resume": 80},
             "model": "B-12/Wi-1024", "batch": 16384, "resolution": 64, "classes": 11230, "steps": 10,
             "streamed_images": 120_000, "study_images": 20_000, "study_models": ["B-2/Wi-128", "B-4/Wi-256"],
             "study_batch": 1024, "study_epochs": [1, 2, 3, 4, 6, 8], "resume_model": "B-2/Wi-256"},
    "cpu": {"budget_s": {"peak": 40, "step": 80, "profile": 40, "streamed": 40, "study": 120, "resume": 120},  # guards
            "model": "B-1/Wi-32", "batch": 32, "resolution": 8, "classes": 100, "steps": 2,
            "streamed_images": 512, "study_images": 400, "study_models": ["B-1/Wi-8", "B-1/Wi-16"],
            "study_batch": 50, "study_epochs": [1, 2, 3, 4, 6, 8], "resume_model": "B-1/Wi-16"},
}


# ---------------------------------------------------------------- set-up: the package without installing it


def python_path() -> str:
    """PYTHONPATH with the repository and, when a needed package is missing, the carried wheels
    installed into a temporary folder (pip --no-index: the machine needs no network)."""
    paths = [str(ROOT)]
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        site = Path(tempfile.gettempdir()) / "scaling-study-site"
        wheels = sorted(str(w) for w in WHEELS.glob("*.whl"))
        if not wheels:
            sys.exit(f"SQLAlchemy is missing and {WHEELS} holds no wheels: see benchmarks/gpu/README.md")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *wheels], check=True)
        paths.append(str(site))
    return os.pathsep.join(paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


# ---------------------------------------------------------------- the parts (each in its own process)


class Part:
    """One part's figures, written to its file whole after every addition."""

    def __init__(self, path: Path, sizes: dict, device: str):
        self.path, self.sizes, self.device = path, sizes, device
        self.figures: dict = {}

    def add(self, **figures: object) -> None:
        self.figures.update(figures)
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.figures, indent=2, default=str))
        os.replace(temp, self.path)


def part_peak(part: Part) -> None:
    import torch

    from scaling_study.bench import matmul_rate
    from scaling_study.evaluate import precision_dtype

    device = torch.device(part.device)
    dtype = precision_dtype("auto", device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    part.add(device_name=name, dtype=str(dtype), torch=torch.__version__)
    for side in ((4096, 8192) if device.type == "cuda" else (256, 512)):
        rate = matmul_rate([(side, side, side)], device, 5, dtype)
        if rate > part.figures.get("gemm_peak_flops_per_s", 0):
            part.add(gemm_peak_flops_per_s=rate, gemm_peak_side=side)
    nominal = next((v for k, v in NOMINAL_PEAK.items() if k in name), None)
    part.add(nominal_peak_flops_per_s=nominal)


def part_step(part: Part) -> None:
    import torch

    from scaling_study.bench import measure, synthetic_spec
    from scaling_study.grid import TrainConfig

    s, device = part.sizes, torch.device(part.device)
    for label, compile in (("default", None), ("eager", False)):
        train = TrainConfig(batch_size=s["batch"], compile=compile)
        spec = synthetic_spec(s["model"], resolution=s["resolution"], channels=3, classes=s["classes"], train=train)
        started = time.perf_counter()
        m = measure(spec, device, steps=s["steps"], evaluation=False)
        part.add(**{label: {
            "model": s["model"], "batch": s["batch"], "precision": m.precision, "compile": m.details["compile"],
            "resident": "device-resident" in m.details["loader"], "images_per_s": m.images_per_s,
            "step_s": m.details["step_s"], "train_flops_per_s": m.train_flops_per_s,
            "gemm_step_shapes_flops_per_s": m.gemm_flops_per_s, "fraction_of_step_shapes_gemm": m.mfu,
            "loader_images_per_s": m.loader_images_per_s, "peak_memory_bytes": m.peak_memory_bytes,
            "measured_in_s": time.perf_counter() - started}})


def part_profile(part: Part) -> None:
    import numpy as np
    import torch

    from scaling_study.bench import endless, make_stepper, synthetic_spec, synthetic_split, sync
    from scaling_study.evaluate import precision_dtype
    from scaling_study.grid import TrainConfig
    from scaling_study.loader import TrainLoader

    s, device = part.sizes, torch.device(part.device)
    spec = synthetic_spec(s["model"], resolution=s["resolution"], channels=3, classes=s["classes"],
                          train=TrainConfig(batch_size=s["batch"]))
    split = synthetic_split(2 * s["batch"], 3, s["resolution"], s["classes"])
    batches = endless(TrainLoader(split, np.arange(len(split)), s["batch"], device, 0, spec.train.augmentation,
                                  s["resolution"], dtype=precision_dtype("auto", device)))
    stepper = make_stepper(spec, device)

    def step() -> None:
        stepper.backward(next(batches))
        stepper.step(spec.train.lr)

    for _ in range(3):  # compiled and warm
        step()
    sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(3):
            step()
        sync(device)
    events = profile.key_averages()
    timed = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    top = sorted(events, key=lambda e: getattr(e, timed, 0), reverse=True)[:25]
    part.add(steps=3, total_us=sum(getattr(e, "self_" + timed, 0) for e in events),
             top=[{"name": e.key[:120], "count": e.count, "us": getattr(e, timed, 0),
                   "self_us": getattr(e, "self_" + timed, 0)} for e in top])


def part_streamed(part: Part) -> None:
    import numpy as np
    import torch

    from scaling_study.bench import sync
    from scaling_study.data import Split
    from scaling_study.evaluate import precision_dtype
    from scaling_study.grid import Augmentation
    from scaling_study.loader import TrainLoader

    s, device = part.sizes, torch.device(part.device)
    count, side = s["streamed_images"], s["resolution"]
    rng = np.random.default_rng(0)

    def loader_of(path: Path, count: int) -> TrainLoader:
        """A streamed loader over `count` random images written to `path`, shuffled batches, drop_last."""
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, 3, side, side))
        for start in range(0, count, 16384):
            images[start : start + 16384] = rng.integers(0, 256, images[start : start + 16384].shape, dtype=np.uint8)
        images.flush()
        del images
        split = Split(np.load(path, mmap_mode="r"), np.arange(count) % 1000, tuple(map(str, range(1000))),
                      (0.5,) * 3, (0.29,) * 3, str(path))
        return TrainLoader(split, np.arange(count), s["batch"], device, 0, Augmentation(), side, resident=False,
                           dtype=precision_dtype("auto", device), drop_last=True)

    with tempfile.TemporaryDirectory() as tmp:
        for _ in loader_of(Path(tmp) / "warm-up.npy", s["batch"]).epoch(0):  # kernels, streams, allocator
            pass
        loader = loader_of(Path(tmp) / "images.npy", count)
        images_per_epoch = len(loader) * s["batch"]
        part.add(images=count, batch=s["batch"], batches_per_epoch=len(loader))
        # The first epoch also maps the file's pages into the process; later epochs, which pace a
        # long run, read pages already mapped.
        for epoch, key in ((0, "first_epoch_images_per_s"), (1, "images_per_s")):
            sync(device)
            start = time.perf_counter()
            for _ in loader.epoch(epoch):
                pass
            sync(device)
            part.add(**{key: images_per_epoch / (time.perf_counter() - start)})


def write_dataset(folder: Path, images: int, classes: int, side: int, seed: int = 0) -> None:
    """Downsampled-ImageNet .npz files whose classes can be learnt: a fixed random pattern per
    class, blended into 65% noise (1-based labels, channel-major rows, as the format has them)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, (classes, 3 * side * side)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)

    def batch(count: int):
        labels = rng.integers(0, classes, count)
        noise = rng.integers(0, 256, (count, 3 * side * side)).astype(np.float32)
        return (0.35 * patterns[labels] + 0.65 * noise).astype(np.uint8), labels + 1

    for i, part in enumerate(np.array_split(np.arange(images), 2), start=1):
        data, labels = batch(len(part))
        np.savez(folder / f"train_data_batch_{i}.npz", data=data, labels=labels)
    data, labels = batch(max(classes * 20, images // 10))
    np.savez(folder / "val_data.npz", data=data, labels=labels)


def grid_text(data: Path, s: dict, models: list[str], examples: list[int], epochs: list[int], classes: int) -> str:
    quoted = ", ".join(f'"{m}"' for m in models)
    return f"""
[study]
name = "gpu-validation"

[data.pretrain]
dataset = "generated"
path = "{data}"
resolution = {s['resolution']}
size = {s['study_images']}
classes = {classes}
channels = 3

[[data.downstream]]
dataset = "generated"
path = "{data}"
protocol = "linear"

[grid]
models = [{quoted}]
examples = {examples}
epochs = {epochs}

[train]
lr = 1e-3
batch_size = {s['study_batch']}

[evaluation]
probe = "fast"
"""


def study(folder: Path, *args: object) -> None:
    """`study ARGS` in this process, in `folder` (its database and job folders)."""
    from scaling_study import cli

    here = os.getcwd()
    os.chdir(folder)
    try:
        code = cli.app([str(a) for a in args], standalone_mode=False)
    finally:
        os.chdir(here)
    if code:
        raise SystemExit(f"study {' '.join(map(str, args))} exited {code}")


def study_points(folder: Path) -> tuple[list[dict], dict[str, float]]:
    """The jobs of the study in folder/results.db, and its points by epoch and metric."""
    from scaling_study import db

    engine = db.connect(f"sqlite:///{folder / 'results.db'}", create=False, write=False)
    jobs = [{"id": r["id"], "model": r["model"], "examples": r["examples"], "state": r["state"], "error": r["error"]}
            for r in db.job_rows(engine)]
    points = {f"{p['job_id']}/{p['epochs']}/{p['metric']}": p["error"] for p in db.evaluations_frame(engine).to_dict("records")}
    engine.dispose()
    return jobs, points


DB = "sqlite:///results.db"


def part_study(part: Part) -> None:
    s = part.sizes
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_dataset(folder / "data", s["study_images"], 10, s["resolution"])
        images = s["study_images"]
        (folder / "grid.toml").write_text(grid_text(folder / "data", s, s["study_models"], [images // 4, images],
                                                    s["study_epochs"], 10))
        for step, args in (("plan", ("plan", "grid.toml", "--db", DB)),
                           ("run", ("run", "--device", part.device, "--db", DB)),
                           ("fit", ("fit", "--db", DB, "--bootstrap", 20, "--no-page", "--out", "reports"))):
            started = time.perf_counter()
            study(folder, *args)
            part.add(**{f"{step}_s": time.perf_counter() - started})
            if step == "run":
                jobs, points = study_points(folder)
                part.add(jobs=jobs, points=len(points))
        part.add(fit_files=sorted(p.name for p in (folder / "reports").iterdir()))


def part_resume(part: Part) -> None:
    s = part.sizes
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, s["study_images"], 10, s["resolution"])
        text = grid_text(data, s, [s["resume_model"]], [s["study_images"]], [2, 4], 10)
        run = ("run", "--resume", "--device", part.device, "--db", DB, "--checkpoint-every", 1)
        results = {}
        for label in ("whole", "killed"):
            folder = Path(tmp) / label
            folder.mkdir()
            (folder / "grid.toml").write_text(text)
            study(folder, "plan", "grid.toml", "--db", DB)
            started = time.perf_counter()
            if label == "killed":  # a worker process, killed once its first checkpoint is written and some steps on
                worker = subprocess.Popen([sys.executable, "-m", "scaling_study", *map(str, run)], cwd=folder,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                while worker.poll() is None and not list(folder.glob("runs/*/job-*/checkpoint.pt")):
                    time.sleep(0.02)
                time.sleep(min(2.0, 0.1 * results["whole"]["run_s"]))
                killed = worker.poll() is None
                if killed:
                    worker.send_signal(signal.SIGKILL)
                worker.wait()
                part.add(was_killed=killed, killed_after_s=time.perf_counter() - started)
            study(folder, *run)
            jobs, points = study_points(folder)
            results[label] = {"run_s": time.perf_counter() - started, "jobs": jobs, "points": points}
            part.add(**{label: results[label]})
        whole, resumed = results["whole"]["points"], results["killed"]["points"]
        differences = [abs(whole[k] - resumed[k]) for k in whole if k in resumed]
        part.add(same_points=whole.keys() == resumed.keys(), identical=whole == resumed,
                 max_abs_difference=max(differences, default=None))


# ---------------------------------------------------------------- orchestration


def summary(result: dict) -> str:
    """The figures that answer the validation's questions, one line each."""
    lines = [f"{result.get('device')}: parts {', '.join(f'{k} {v}' for k, v in result['status'].items())}"]
    peak = result.get("peak", {})
    if "gemm_peak_flops_per_s" in peak:
        lines.append(f"GEMM peak {peak['gemm_peak_flops_per_s'] / 1e12:.1f} TFLOP/s ({peak['dtype']}, "
                     f"{peak['gemm_peak_side']}^3); nominal {peak.get('nominal_peak_flops_per_s')}")
    step = result.get("step", {})
    for label in ("default", "eager"):
        if label in step:
            m = step[label]
            fractions = ", ".join(f"{m[k]:.3f} of {k.removeprefix('fraction_of_')}" for k in m if k.startswith("fraction_of"))
            lines.append(f"step ({label}: compile {m['compile']}) {m['model']} batch {m['batch']} {m['precision']}: "
                         f"{m['images_per_s']:,.0f} img/s, {m['step_s'] * 1e3:.1f} ms, "
                         f"{m['train_flops_per_s'] / 1e12:.1f} TFLOP/s = {fractions}")
    profile = result.get("profile", {})
    if "top" in profile:
        per_step = profile["total_us"] / profile["steps"] / 1e3
        top = "; ".join(f"{e['name'][:40]} {e['self_us'] / profile['steps'] / 1e3:.2f}" for e in
                        sorted(profile["top"], key=lambda e: -e["self_us"])[:5])
        lines.append(f"profile: {per_step:.1f} ms of kernels per step; most (self ms per step): {top}")
    streamed = result.get("streamed", {})
    for key, label in (("images_per_s", "epoch after the first"), ("first_epoch_images_per_s", "first epoch")):
        if key in streamed:
            line = f"streamed loader, {label}: {streamed[key]:,.0f} img/s"
            if "step_images_per_s" in streamed:
                line += f" = {streamed[key] / streamed['step_images_per_s']:.2f}x the step's img/s"
            lines.append(line)
    study = result.get("study", {})
    if "jobs" in study:
        states = sorted({j["state"] for j in study["jobs"]})
        lines.append(f"study: {len(study['jobs'])} jobs {states}, {study.get('points')} points, run "
                     f"{study['run_s']:.1f} s" + (f", fit {study['fit_s']:.1f} s" if "fit_s" in study else ""))
    resume = result.get("resume", {})
    if "identical" in resume:
        lines.append(f"resume after kill -9 (killed: {resume.get('was_killed')}): same points {resume['same_points']}, "
                     f"identical {resume['identical']}, max |difference| {resume['max_abs_difference']}")
    return "\n".join(lines) + "\n"


def add_fractions(result: dict) -> None:
    """Fractions of the measured and nominal GEMM peaks, and the streamed loader over the step."""
    peak = result.get("peak", {})
    for m in result.get("step", {}).values():
        if isinstance(m, dict) and "train_flops_per_s" in m:
            if peak.get("gemm_peak_flops_per_s"):
                m["fraction_of_measured_peak"] = m["train_flops_per_s"] / peak["gemm_peak_flops_per_s"]
            if peak.get("nominal_peak_flops_per_s"):
                m["fraction_of_nominal_peak"] = m["train_flops_per_s"] / peak["nominal_peak_flops_per_s"]
    step = result.get("step", {}).get("default")
    streamed = result.get("streamed", {})
    if step and "images_per_s" in streamed:
        streamed["step_images_per_s"] = step["images_per_s"]
        streamed["over_step_images_per_s"] = streamed["images_per_s"] / step["images_per_s"]
        if "first_epoch_images_per_s" in streamed:
            streamed["first_epoch_over_step"] = streamed["first_epoch_images_per_s"] / step["images_per_s"]


def orchestrate(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": python_path(), "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # the killed worker's too (see main)
    sys.path[:0] = [p for p in env["PYTHONPATH"].split(os.pathsep) if p not in sys.path]
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = SIZES["cuda" if device.startswith("cuda") else "cpu"]
    budgets = dict(sizes["budget_s"])
    result = {"device": device, "sizes": sizes, "status": {}, "seconds": {}}

    def save() -> None:
        add_fractions(result)
        for name, text in (("validate.json", json.dumps(result, indent=2, default=str)), ("summary.txt", summary(result))):
            (out / (name + ".tmp")).write_text(text)
            os.replace(out / (name + ".tmp"), out / name)

    save()
    with tempfile.TemporaryDirectory() as work:
        for name in args.parts.split(","):
            left = args.budget_s - (time.monotonic() - started)
            budget = min(budgets[name], left)
            if budget < 5:
                result["status"][name] = "skipped: no time left"
                save()
                continue
            path = Path(work) / f"{name}.json"
            command = [sys.executable, __file__, "--part", name, "--device", device, "--out", str(path)]
            print(f"== {name} (budget {budget:.0f} s)", flush=True)
            part_started = time.monotonic()
            log = Path(work) / f"{name}.log"
            with open(log, "w") as sink:  # its own process group: a timeout ends the part's workers too
                process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                           start_new_session=True)
                try:
                    code = process.wait(timeout=budget)
                    status = "ok" if code == 0 else f"failed (exit {code})"
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    status = f"timed out after {budget:.0f} s"
            output = log.read_text(errors="replace")
            print(output[-3000:], end="", flush=True)
            result["status"][name] = status
            result["seconds"][name] = round(time.monotonic() - part_started, 1)
            if path.exists():
                result[name] = json.loads(path.read_text())
            if status != "ok":
                result.setdefault("errors", {})[name] = output[-3000:]
            save()
            print(summary(result), flush=True)
    result["total_s"] = round(time.monotonic() - started, 1)
    save()
    print(f"wrote {out / 'validate.json'} and {out / 'summary.txt'} in {result['total_s']} s")
    return 0 if all(s == "ok" for s in result["status"].values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto: cuda when torch sees a GPU, else cpu (tiny sizes)")
    parser.add_argument("--out", required=True, help="folder for validate.json and summary.txt")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--budget-s", type=float, default=480.0, help="all parts together")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part in this process
    args = parser.parse_args()
    if args.part is None:
        return orchestrate(args)
    import torch

    sizes = SIZES["cuda" if torch.device(args.device).type == "cuda" else "cpu"]
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(1)  # tiny sizes: more threads only wait on each other on a busy machine
    globals()[f"part_{args.part}"](Part(Path(args.out), sizes, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
