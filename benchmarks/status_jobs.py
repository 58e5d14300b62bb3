"""`study status --jobs` on a 20,000-job study costs about what plain `study status` does.

    python benchmarks/status_jobs.py [--jobs 20000] [--repeats 3]     # 2-5 minutes on 2 busy cores

Plans a grid of 4 models x 5 subset sizes x 1,000 seeds (20,000 pending jobs) into a temp SQLite
database, then times real `study status`, `study status --jobs` (its default --limit of 100:
one query of the rows it prints) and `study status --jobs --limit 0` (every job, the old
behaviour's amount of output, timed once: it takes a minute) as subprocesses, the median of
--repeats each, in one run.
Writes benchmarks/results/status_jobs.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write  # noqa: E402

GRID = """
[study]
name = "status-bench"

[data.pretrain]
dataset = "fashion-mnist"
path = "/nowhere"

[grid]
models = ["B-1/Wi-8", "B-1/Wi-16", "B-2/Wi-8", "B-2/Wi-16"]
examples = [1000, 2000, 4000, 8000, 16000]
epochs = [1, 2]
seeds = {seeds}

[train]
batch_size = 256
"""


def timed(args: list[str], cwd: Path, repeats: int) -> tuple[float, int]:
    """Median seconds of `study ARGS` and the lines it printed."""
    seconds, lines = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "scaling_study", *args], cwd=cwd, capture_output=True, text=True,
                             check=True)
        seconds.append(time.perf_counter() - start)
        lines = len(out.stdout.splitlines())
    return statistics.median(seconds), lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000, help="jobs planned (a multiple of 20)")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        (cwd / "grid.toml").write_text(GRID.format(seeds=list(range(options.jobs // 20))))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scaling_study", "plan", "grid.toml", "--db", "sqlite:///results.db"],
                       cwd=cwd, capture_output=True, check=True)
        plan_s = time.perf_counter() - start
        url = ["--db", "sqlite:///results.db"]
        plain, plain_lines = timed(["status", *url], cwd, options.repeats)
        paged, paged_lines = timed(["status", "--jobs", *url], cwd, options.repeats)
        every, every_lines = timed(["status", "--jobs", "--limit", "0", *url], cwd, 1)
    figures = {
        "jobs": options.jobs, "plan_s": round(plan_s, 2),
        "status_s": round(plain, 3), "status_jobs_s": round(paged, 3), "status_jobs_all_s": round(every, 3),
        "status_jobs_over_status": round(paged / plain, 2), "status_jobs_all_over_status": round(every / plain, 2),
        "lines": {"status": plain_lines, "status --jobs": paged_lines, "status --jobs --limit 0": every_lines},
    }
    print(f"{options.jobs:,} jobs: study status {plain:.2f} s; study status --jobs {paged:.2f} s "
          f"(ratio {paged / plain:.2f}, {paged_lines} lines); --jobs --limit 0 {every:.2f} s "
          f"(ratio {every / plain:.2f}, {every_lines} lines)")
    print(f"wrote {write('status_jobs', figures)}")


if __name__ == "__main__":
    main()
