"""How long writing reports/index.html takes for the demo (goal < 2 s), and how big the page of a
1000-job study is (goal < 5 MB).

    python benchmarks/report_page.py [--db sqlite:///results.db] [--study demo] [--runs-dir runs] [--repeat 5]

Demo: the study in --db (scripts/demo.sh's results.db and runs/ by default) is fitted once as
`study fit` does (1000 resamples, not timed), then `page.write_page` is timed --repeat times: read
the state, fit.json, the SVG figures and every job's curve.csv, render, write atomically. A
missing demo database is skipped, with a line saying so.

1000 jobs: a synthetic study of 20 models x 50 subset sizes (E(P, D) with noise, 5 epoch counts:
5,000 points) imported into SQLite, each job given a 1,000-row curve.csv as a run writes it
(curves.CSV_ROWS), fitted with 100 resamples (the page's size does not depend on them); then
the page is written and weighed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write  # noqa: E402

from scaling_study import analysis as fits  # noqa: E402
from scaling_study import db, page, synthetic  # noqa: E402
from scaling_study.curves import CSV_HEADER, CSV_NAME, CSV_ROWS  # noqa: E402
from scaling_study.exchange import read_results_csv  # noqa: E402
from scaling_study.files import job_dir  # noqa: E402
from scaling_study.plots import write_figures  # noqa: E402
from scaling_study.report import write_report  # noqa: E402

TIME_GOAL_S = 2.0
SIZE_GOAL_MB = 5.0


def fit(engine, study: str, out: Path, bootstrap: int) -> None:  # noqa: ANN001
    """What `study fit` writes before the page: figures (with their SVGs), fit.json, report.md."""
    selected, filters = fits.select(db.evaluations_frame(engine, study))
    analysis = fits.analyse(selected, filters, bootstrap=bootstrap, seed=0)
    write_report(analysis, study, write_figures(analysis, out), out)


def time_page(engine, study: str, out: Path, runs: Path, repeat: int) -> list[float]:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        page.write_page(engine, study, out, runs)
        times.append(time.perf_counter() - start)
    return times


def demo(url: str, study: str, runs: Path, repeat: int) -> dict | None:
    engine = db.connect(url)
    if study not in db.study_names(engine):
        print(f"demo: no study {study!r} in {url}; run `bash scripts/demo.sh` first (skipped)")
        return None
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        fit(engine, study, out, 1000)
        times = time_page(engine, study, out, runs, repeat)
        size = (out / page.PAGE_NAME).stat().st_size
    jobs = len(db.job_rows(engine, study))
    median = statistics.median(times)
    print(f"demo ({jobs} jobs): page written in {median:.3f} s (median of {repeat}; min {min(times):.3f}, "
          f"max {max(times):.3f}), {size / 1e6:.2f} MB; goal < {TIME_GOAL_S:g} s: "
          f"{'met' if median < TIME_GOAL_S else 'MISSED'} ({median / TIME_GOAL_S:.2f} of the goal)")
    return {"jobs": jobs, "seconds": times, "median_s": median, "bytes": size, "goal_s": TIME_GOAL_S,
            "ratio_to_goal": median / TIME_GOAL_S}


def thousand_jobs(repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        frame = synthetic.parametric_study(models=20, examples=50)
        csv = folder / "big.csv"
        frame.drop(columns=["study", "job_id", "kind", "state", "compute"]).to_csv(csv, index=False)
        url = f"sqlite:///{folder / 'big.db'}"
        engine = db.connect(url)
        db.import_trajectories(engine, str(csv), read_results_csv(csv, "big"))
        runs, out = folder / "runs", folder / "reports"
        rows = db.job_rows(engine, "big")
        for row in rows:  # a run's curve.csv: CSV_ROWS block means of a decaying loss
            path = job_dir(runs, row) / CSV_NAME
            path.parent.mkdir(parents=True)
            lines = (f"{s * 10},{2.3 * (s * 10) ** -0.15 + 0.01 * math.sin(s):.6g},0.0003,12000\n"
                     for s in range(1, CSV_ROWS + 1))
            path.write_text(CSV_HEADER + "\n" + "".join(lines))
        fit(engine, "big", out, 100)
        times = time_page(engine, "big", out, runs, repeat)
        size = (out / page.PAGE_NAME).stat().st_size
    median = statistics.median(times)
    print(f"1000-job study ({len(rows)} jobs, {len(frame)} points, {CSV_ROWS}-row curves): page {size / 1e6:.2f} MB, "
          f"goal < {SIZE_GOAL_MB:g} MB: {'met' if size / 1e6 < SIZE_GOAL_MB else 'MISSED'} "
          f"({size / 1e6 / SIZE_GOAL_MB:.2f} of the goal); written in {median:.3f} s (median of {repeat})")
    return {"jobs": len(rows), "points": len(frame), "curve_rows": CSV_ROWS, "bytes": size, "goal_mb": SIZE_GOAL_MB,
            "ratio_to_goal": size / 1e6 / SIZE_GOAL_MB, "seconds": times, "median_s": median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="sqlite:///results.db", help="the demo's database")
    parser.add_argument("--study", default="demo")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    figures = {"demo": demo(args.db, args.study, args.runs_dir, args.repeat), "thousand_jobs": thousand_jobs(args.repeat)}
    print(f"wrote {write('report_page', figures)}")


if __name__ == "__main__":
    main()
