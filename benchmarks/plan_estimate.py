"""How close `study plan`'s hours (from `study bench`) come to the time the study then takes.

    python benchmarks/plan_estimate.py [grids/demo.toml]     # ~8 minutes for the demo on a 2-core CPU

In a temp folder: `study bench GRID` (training img/s and seconds per evaluation point, stored
as calibrations), `study plan GRID` (its estimate is plan.estimated_seconds over the same
calibrations, as below), then one `study run --resume` of the whole study, all
through the real CLI. For each model, the estimate (training images over the measured img/s,
plus evaluation points times the measured seconds per point) is compared with the jobs' own
recorded time (finished_at - started_at). The ratio is estimated over measured, per model and
in total; the run's wall time is reported beside it. Writes benchmarks/results/plan_estimate.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write  # noqa: E402

from scaling_study import cli, db  # noqa: E402
from scaling_study.grid import load_grid  # noqa: E402
from scaling_study.plan import estimated_seconds, expand, summarize  # noqa: E402


def study(*args: str) -> None:
    """One `study` command in this process; exits on a non-zero code."""
    code = cli.app(list(args), standalone_mode=False)
    if code:
        sys.exit(f"study {' '.join(args)} exited {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", default="grids/demo.toml")
    args = parser.parse_args()

    grid = load_grid(args.grid)
    specs = expand(grid)
    rows = summarize(specs).rows
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/results.db"
        study("bench", args.grid, "--device", "cpu", "--db", url)
        study("plan", args.grid, "--db", url)
        start = time.perf_counter()
        study("run", "--resume", "--device", "cpu", "--db", url, "--runs-dir", f"{folder}/runs")
        run_s = time.perf_counter() - start
        engine = db.connect(url)
        calibrations, _ = db.latest_calibrations(engine, specs[0].resolution, specs[0].channels, grid.train.batch_size)
        jobs = db.job_rows(engine)

    def seconds(row: dict) -> float:
        return (dt.datetime.fromisoformat(str(row["finished_at"])) - dt.datetime.fromisoformat(str(row["started_at"]))).total_seconds()

    estimates = estimated_seconds(specs, calibrations)
    models = []
    for row in rows:
        train_s, eval_s = estimates[row.name]
        took = sum(seconds(job) for job in jobs if job["model"] == row.name)
        models.append({"model": row.name, "estimated_train_s": train_s, "estimated_evaluation_s": eval_s,
                       "estimated_s": train_s + eval_s, "jobs_s": took, "ratio": (train_s + eval_s) / took})
        print(f"  {row.name:11s}: estimated {train_s:6.1f} s training + {eval_s:6.1f} s evaluation = "
              f"{train_s + eval_s:6.1f} s; its jobs took {took:6.1f} s (ratio {(train_s + eval_s) / took:.2f})")
    estimated, took = sum(m["estimated_s"] for m in models), sum(m["jobs_s"] for m in models)
    training_only = sum(m["estimated_train_s"] for m in models)
    print(f"total: estimated {estimated:.0f} s, jobs took {took:.0f} s (ratio {estimated / took:.2f}; training "
          f"alone would have said {training_only / took:.2f}); `study run` wall time {run_s:.0f} s")
    figures = {"grid": args.grid, "models": models, "estimated_s": estimated, "jobs_s": took, "run_s": run_s,
               "ratio": estimated / took, "ratio_training_only": training_only / took}
    print(f"wrote {write('plan_estimate', figures)}")


if __name__ == "__main__":
    main()
