"""How long `study fit` takes: 1000 bootstrap resamples on 1000 evaluation points. Budget: 10 s.

    python benchmarks/fit_time.py [--repeat 3]

The study is synthetic (10 models x 20 subset sizes x 5 epoch counts, errors from a known
E(P, D) law with noise and outliers), imported into a SQLite file. The fit includes every
diagnostic (the data-constrained law, the held-out choice between the forms, seed cells, the rolling-origin
back-test and the agreement checks). A second study of 1000 points from the data-constrained law
(T in 1..16, so that form is chosen and its 6-parameter bootstrap runs too) is timed the same way. The timed part is what
`study fit` does after parsing its options: read the points from the database, fit every law
with its bootstrap, draw the figures (PNG, PDF and SVG; in forked processes where there are cores, and once more one after another for the ratio) and write report.md and fit.json. The median
of --repeat runs is compared with the budget; one end-to-end `study fit` in a fresh process
(interpreter and imports included) is timed too, for information.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write  # noqa: E402

from scaling_study import db, synthetic  # noqa: E402
from scaling_study import analysis as fits  # noqa: E402
from scaling_study.analysis.optimize import usable_cores  # noqa: E402
from scaling_study.exchange import read_results_csv  # noqa: E402
from scaling_study.plots import write_figures  # noqa: E402
from scaling_study.report import write_report  # noqa: E402

BUDGET_S = 10.0
RESAMPLES = 1000


def build_database(folder: Path, constrained: bool = False) -> tuple[str, int]:
    """A SQLite file with 1000 synthetic evaluation points; returns its URL and the point count."""
    frame = synthetic.parametric_study(models=10, examples=20)
    if constrained:
        frame = synthetic.parametric_study(law=synthetic.DataConstrainedLaw(e_inf=0.1, r_star=5.0), models=10,
                                           examples=20, epochs=(1, 2, 4, 8, 16), examples_range=(1e4, 1e7))
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "bench.csv"
    frame.drop(columns=["study", "job_id", "kind", "state", "compute"]).to_csv(csv, index=False)
    url = f"sqlite:///{folder / 'bench.db'}"
    db.import_trajectories(db.connect(url), str(csv), read_results_csv(csv, "bench"))
    return url, len(frame)


def fit_once(url: str, out: Path) -> dict[str, float]:
    """What `study fit --bootstrap 1000` runs, stage by stage: seconds per stage."""
    times = {}
    start = time.perf_counter()
    frame = db.evaluations_frame(db.connect(url), "bench")
    selected, filters = fits.select(frame)
    times["read"] = time.perf_counter() - start
    mark = time.perf_counter()
    analysis = fits.analyse(selected, filters, bootstrap=RESAMPLES, seed=0)
    times["fit"] = time.perf_counter() - mark
    mark = time.perf_counter()
    figures = write_figures(analysis, out)
    times["figures"] = time.perf_counter() - mark
    mark = time.perf_counter()
    write_figures(analysis, out / "one-process", workers=1)  # for the ratio: the figures drawn one after another
    times["figures_one_process"] = time.perf_counter() - mark
    mark = time.perf_counter()
    write_report(analysis, "bench", figures, out)
    times["report"] = time.perf_counter() - mark
    times["total"] = time.perf_counter() - start - times["figures_one_process"]
    times["form"] = analysis.form.chosen if analysis.form else None
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url, points = build_database(folder)
        runs = [fit_once(url, folder / "reports") for _ in range(args.repeat)]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scaling_study", "fit", "--db", url, "--bootstrap", str(RESAMPLES),
                        "--out", str(folder / "cli")], check=True, capture_output=True)
        end_to_end = time.perf_counter() - start
        constrained_url, _ = build_database(folder / "constrained", constrained=True)
        constrained_runs = [fit_once(constrained_url, folder / "constrained" / "reports") for _ in range(args.repeat)]
    median = {stage: statistics.median(run[stage] for run in runs) for stage in runs[0] if stage != "form"}
    constrained_median = {stage: statistics.median(run[stage] for run in constrained_runs)
                          for stage in constrained_runs[0] if stage != "form"}
    seconds = median["total"]
    print(f"study fit, {points} points, {RESAMPLES} bootstrap resamples: {seconds:.2f} s "
          f"(median of {args.repeat}; read {median['read']:.2f}, fit {median['fit']:.2f}, "
          f"figures {median['figures']:.2f}, report {median['report']:.2f})")
    print(f"figures drawn in forked processes over one after another: {median['figures'] / median['figures_one_process']:.2f} "
          f"({median['figures']:.2f} s vs {median['figures_one_process']:.2f} s, {usable_cores()} cores)")
    print(f"ratio to the {BUDGET_S:.0f} s budget: {seconds / BUDGET_S:.2f}")
    print(f"end to end in a fresh process (interpreter and imports included): {end_to_end:.2f} s")
    chosen = constrained_runs[0]["form"]
    print(f"data-constrained study (form chosen: {chosen}), {points} points: {constrained_median['total']:.2f} s "
          f"(fit {constrained_median['fit']:.2f}); ratio to the budget: {constrained_median['total'] / BUDGET_S:.2f}")
    versions = {p: metadata.version(p) for p in ("scipy", "pandas", "matplotlib")}
    path = write("fit_time", {
        "points": points, "bootstrap_resamples": RESAMPLES, "repeat": args.repeat, "seconds": seconds,
        "budget_seconds": BUDGET_S, "ratio_to_budget": seconds / BUDGET_S, "stages_seconds": median,
        "runs": runs, "end_to_end_seconds": end_to_end, **versions,
        "data_constrained_study": {"form_chosen": chosen, "seconds": constrained_median["total"],
                                   "ratio_to_budget": constrained_median["total"] / BUDGET_S,
                                   "stages_seconds": constrained_median, "runs": constrained_runs},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
