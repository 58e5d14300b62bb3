"""What `study run` costs beyond training and evaluation, for jobs of the demo grid (goal: < 2%).

    python benchmarks/runner_overhead.py [grids/demo.toml] [--epochs 4]     # 1-2 minutes on a quiet 2-core CPU

Plans, into a temp SQLite database, the grid's smallest and largest model at its smallest,
middle (the lower of two) and largest subset sizes, each trained to `--epochs` (4:
evaluated once in 4 epochs, as the demo's 4 in 16, with the per-job costs spread over 4 epochs
instead of 16, so the shares are upper bounds). One `study run --resume` in this process (the
CLI, its progress bars and the real runner) runs them all, as scripts/demo.sh does. The
runner's parts are timed by wrapping the real functions at runtime: reclaim_lost, claim_job,
provenance, renew_lease (the heartbeat, here every 2 s instead of every 40 s, in its own
thread), record_epoch, finish_job, save_checkpoint, the job log, and the callbacks train()
gets (progress, should_stop, on_epoch). A job's window runs from the reclaim before its claim
to the end of its finish_job; training and evaluation proper is train() less its checkpoints
and callbacks; the job's overhead is the rest of its window. What lies outside every window
(opening the database, the progress display, the last claim that finds nothing) is paid once
per `study run` and reported as such. Writes benchmarks/results/runner_overhead.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write  # noqa: E402

from scaling_study import cli, data, db, runner  # noqa: E402
from scaling_study import train as training  # noqa: E402
from scaling_study.grid import load_grid  # noqa: E402
from scaling_study.plan import expand  # noqa: E402

LEASE_S = 6.0  # a heartbeat every 2 s: 20 times `study run`'s default rate, to time it at all
RUNNER_PARTS = ("reclaim_lost", "provenance", "claim_job", "job_log", "on_progress", "should_stop",
                "save_checkpoint", "on_epoch", "finish_job")  # on_epoch holds record_epoch and a log line


class Timers:
    """(label, start, end) of every call of the wrapped functions."""

    def __init__(self):
        self.calls: list[tuple[str, float, float]] = []

    def timed(self, label: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls.append((label, start, time.perf_counter()))

        return wrapper

    def wrap(self, owner, name: str, label: str | None = None) -> None:
        setattr(owner, name, self.timed(label or name, getattr(owner, name)))

    def seconds(self, label: str, low: float = float("-inf"), high: float = float("inf")) -> float:
        """Time spent in `label` by calls that started in [low, high]."""
        return sum(end - start for name, start, end in self.calls if name == label and low <= start <= high)

    def times(self, label: str, at: int) -> list[float]:
        """Start (at=1) or end (at=2) times of the calls of `label`, in order."""
        return [call[at] for call in self.calls if call[0] == label]


def instrument(timers: Timers) -> None:
    """Time the runner's parts where the runner and train() look them up (module attributes)."""
    for name in ("reclaim_lost", "claim_job", "renew_lease", "record_epoch", "finish_job"):
        timers.wrap(db, name)
    timers.wrap(runner, "provenance")
    timers.wrap(runner.JobLog, "__call__", "job_log")
    timers.wrap(training, "save_checkpoint")
    real_train = training.train

    def train(spec, **kwargs):
        for callback in ("on_progress", "on_epoch", "should_stop"):
            kwargs[callback] = timers.timed(callback, kwargs[callback])
        return timers.timed("train", real_train)(spec, **kwargs)

    training.train = train  # runner.run imports it from the module when it starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", default="grids/demo.toml")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each timed job")
    args = parser.parse_args()

    grid = load_grid(args.grid)
    specs = expand(grid)
    by_flops = sorted({s.model.name: s.flops for s in specs}.items(), key=lambda item: item[1])
    models = {by_flops[0][0], by_flops[-1][0]}
    sizes = sorted({s.examples for s in specs})
    chosen_sizes = {sizes[0], sizes[(len(sizes) - 1) // 2], sizes[-1]}
    chosen = [dataclasses.replace(s, epochs=(args.epochs,)) for s in specs
              if s.model.name in models and s.examples in chosen_sizes and s.seed == grid.grid.seeds[0]]
    for split in ("train", "test"):  # read once per process in real use too; not a per-job cost
        data.load_split(grid.pretrain.dataset, grid.pretrain.path, split, chosen[0].resolution)

    timers = Timers()
    instrument(timers)
    with tempfile.TemporaryDirectory() as folder:  # on a real disk here: checkpoints are fsynced
        url = f"sqlite:///{folder}/results.db"
        db.add_jobs(db.connect(url), grid.study.name, args.grid, grid.text, chosen)
        start = time.perf_counter()
        code = cli.app(["run", "--resume", "--device", "cpu", "--db", url, "--runs-dir", f"{folder}/runs",
                        "--lease", str(LEASE_S)], standalone_mode=False)
        run_s = time.perf_counter() - start
        rows = db.job_rows(db.connect(url))
    if code or {row["state"] for row in rows} != {"done"}:
        sys.exit(f"study run exited {code}; jobs ended {sorted({row['state'] for row in rows})}")

    jobs = []
    windows = zip(timers.times("reclaim_lost", 1), timers.times("finish_job", 2))
    for row, (low, high) in zip(sorted(rows, key=lambda r: r["id"]), windows):
        parts = {label: timers.seconds(label, low, high) for label in (*RUNNER_PARTS, "record_epoch", "renew_lease")}
        callbacks = parts["on_progress"] + parts["should_stop"] + parts["on_epoch"]
        proper = timers.seconds("train", low, high) - parts["save_checkpoint"] - callbacks
        wall = high - low
        jobs.append({"model": row["model"], "examples": row["examples"], "epochs": args.epochs, "wall_s": wall,
                     "train_and_evaluation_s": proper, "overhead_s": wall - proper, "share": (wall - proper) / wall,
                     "parts_s": parts})
    in_jobs = sum(j["wall_s"] for j in jobs)
    per_run = run_s - in_jobs
    overhead = sum(j["overhead_s"] for j in jobs)
    total = (overhead + per_run) / run_s

    print(f"\n{args.grid}: {len(jobs)} jobs to {args.epochs} epochs in one `study run` (lease {LEASE_S:g} s):")
    for j in jobs:
        p = j["parts_s"]
        print(f"  {j['model']:11s} N={j['examples']:>6,}: job {j['wall_s']:6.2f} s, training+evaluation "
              f"{j['train_and_evaluation_s']:6.2f} s, overhead {j['overhead_s'] * 1e3:4.0f} ms = {j['share']:5.2%} "
              f"(checkpoints {p['save_checkpoint'] * 1e3:.0f} ms, record_epoch {p['record_epoch'] * 1e3:.0f} ms, "
              f"claim+finish {(p['claim_job'] + p['finish_job']) * 1e3:.0f} ms, "
              f"progress {p['on_progress'] * 1e3:.0f} ms; heartbeat {p['renew_lease'] * 1e3:.0f} ms in its thread)")
    print(f"jobs: {overhead * 1e3:.0f} ms of {in_jobs:.2f} s = {overhead / in_jobs:.2%} overhead "
          f"(worst job {max(j['share'] for j in jobs):.2%}); once per `study run`: {per_run * 1e3:.0f} ms; "
          f"all together {total:.2%} of {run_s:.2f} s (goal < 2%)")
    figures = {
        "grid": args.grid, "epochs": args.epochs, "lease_s": LEASE_S, "jobs": jobs,
        "job_overhead_share": overhead / in_jobs, "worst_job_share": max(j["share"] for j in jobs),
        "per_run_s": per_run, "run_s": run_s, "total_overhead_share": total, "goal": 0.02,
    }
    print(f"wrote {write('runner_overhead', figures)}")


if __name__ == "__main__":
    main()
