"""Total throughput of 1, 2 and 3 `study run` workers on one machine (goal: 2 and 3 workers within 10% of one).

    python benchmarks/workers.py [--jobs 20] [--rounds 2]     # 2-5 minutes on a quiet 2-core CPU

Writes tiny IDX data (28x28 images, 2,000 training examples) and a grid of `--jobs` small jobs
(B-2/Wi-64, N = 2,000, one epoch, batch 50, fast probe) into a temp folder. For each worker count
W in 1, 2, 3 it plans the grid into a fresh SQLite database, starts W `study run` processes at
once and times them from the start to the last exit: throughput = jobs / wall time. Each W runs
twice per round: with the workers sharing the cores (the default: threads = cores // live
workers on this host) and with every worker on all the cores ($STUDY_THREADS = cores, the way
workers ran before they shared). Rounds interleave the settings, so a machine whose load
changes meanwhile weighs on all of them alike; the median over rounds is reported. Writes
benchmarks/results/workers.json, with each worker's first line (the threads it chose).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from results_file import write  # noqa: E402
from tiny_datasets import write_idx  # noqa: E402

from scaling_study.cores import usable_cores  # noqa: E402

WORKERS = (1, 2, 3)
GRID = """
[study]
name = "workers"

[data.pretrain]
dataset = "fashion-mnist"
path = "{data}"

[grid]
models = ["B-2/Wi-64"]
examples = [2000]
epochs = [1]
seeds = {seeds}

[train]
lr = 1e-3
batch_size = 50
precision = "fp32"

[evaluation]
probe = "fast"
"""


def study_command() -> list[str]:
    """`study` of the interpreter running this benchmark."""
    return [sys.executable, "-m", "scaling_study"]


def one_run(folder: Path, workers: int, shared: bool, jobs: int) -> dict:
    """Plan the grid afresh, run `workers` workers at once; their wall time and first lines."""
    url = f"sqlite:///{folder / f'w{workers}-{shared}.db'}"
    Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    subprocess.run([*study_command(), "plan", str(folder / "grid.toml"), "--db", url], check=True, capture_output=True)
    env = dict(os.environ, STUDY_WORKERS_DIR=str(folder / f"registry-{workers}-{shared}"))
    env.pop("STUDY_THREADS", None)
    if not shared:
        env["STUDY_THREADS"] = str(usable_cores())
    start = time.perf_counter()
    procs = [subprocess.Popen([*study_command(), "run", "--db", url, "--device", "cpu", "--runs-dir",
                               str(folder / f"runs-{workers}-{shared}")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(workers)]
    outputs = [proc.communicate()[0] for proc in procs]
    seconds = time.perf_counter() - start
    if any(proc.returncode for proc in procs):
        raise SystemExit("a worker failed:\n" + "\n".join(outputs))
    first = [out.splitlines()[0] if out else "" for out in outputs]
    return {"seconds": seconds, "jobs_per_s": jobs / seconds, "first_lines": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="workers-bench-") as temp:
        folder = Path(temp)
        write_idx(folder / "data", n_train=2000, n_test=200, side=28, signal=True)
        (folder / "grid.toml").write_text(GRID.format(data=folder / "data", seeds=list(range(args.jobs))))
        runs: dict[str, list[dict]] = {}
        for round_ in range(args.rounds):
            for shared in (True, False):
                for workers in WORKERS:
                    key = f"{workers} worker(s), {'shared cores' if shared else 'all cores each'}"
                    result = one_run(folder, workers, shared, args.jobs)
                    runs.setdefault(key, []).append(result)
                    print(f"round {round_ + 1}: {key}: {result['seconds']:.1f} s, {result['jobs_per_s']:.3f} jobs/s",
                          flush=True)
                    record(runs, args, complete=False)  # a run cut short keeps what it measured
    path = record(runs, args, complete=True)
    print(f"wrote {path}")


def record(runs: dict[str, list[dict]], args: argparse.Namespace, complete: bool) -> Path:
    """Medians over rounds, their ratios to one worker, and every run, into benchmarks/results/workers.json."""
    median = {key: statistics.median(r["jobs_per_s"] for r in results) for key, results in runs.items()}
    ratios = {}
    for shared in ("shared cores", "all cores each"):
        one = median.get(f"1 worker(s), {shared}")
        ratios[shared] = {f"{w} workers / 1": median[f"{w} worker(s), {shared}"] / one for w in WORKERS[1:]
                          if one and f"{w} worker(s), {shared}" in median}
    goal = len(ratios["shared cores"]) == len(WORKERS) - 1 and all(r >= 0.9 for r in ratios["shared cores"].values())
    if complete:
        for shared, values in ratios.items():
            print(f"{shared}: " + ", ".join(f"{k} = {v:.2f}" for k, v in values.items()))
        print(f"goal (2 and 3 sharing workers within 10% of one worker): {'met' if goal else 'NOT met'}")
    return write("workers", {
        "complete": complete, "cores": usable_cores(), "load_average": list(os.getloadavg()),
        "settings": {"jobs": args.jobs, "rounds": args.rounds, "grid": "B-2/Wi-64, N = 2,000, T = 1, batch 50, "
                     "fast probe, tiny 28x28 IDX data", "workers": list(WORKERS)},
        "median_jobs_per_s": median, "ratios_to_one_worker": ratios, "goal_met": goal, "runs": runs,
    })


if __name__ == "__main__":
    main()
