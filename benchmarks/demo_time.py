"""Where the demo's time goes, part by part, and this code's time against an older revision's in one run.

    python benchmarks/demo_time.py                    # every model at N = 7,500, T up to 16: ~1/7 of the demo
    python benchmarks/demo_time.py --full             # the whole grids/demo.toml (plan, run and fit)
    python benchmarks/demo_time.py --base 8c84279     # the code at that revision as the old arm (default: main)
    python benchmarks/demo_time.py --arms new,new-default-spin,old-low-spin   # see ARMS

Each arm runs the grid (or the subset) from scratch as scripts/demo.sh does, through the real
`study plan` and `study run` in a subprocess, in its own temp folder and SQLite database; the
arms take turns (`--repeats` rounds), so each ratio is measured under the same machine load.
The old arm is `git archive` of --base, run with its own code on PYTHONPATH and libgomp's
default spinning. For the arms of this code, each epoch's seconds by part (set-up, training
steps, evaluation, checkpoint, database, curves, other) are read back from the jobs'
TensorBoard `time/*_s` scalars, as a user would read them. Prints and writes
benchmarks/results/demo_time.json: the wall time of `study run` per arm, the ratios to the
first arm, and the per-part sums and shares.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write  # noqa: E402

from scaling_study import curves  # noqa: E402
from scaling_study.timing import PARTS  # noqa: E402

SPIN = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
# name: (which code, environment changes). "default" spin is libgomp's own 300,000 (its value when unset).
ARMS = {
    "new": ("new", {}),
    "old": ("old", {"GOMP_SPINCOUNT": None}),
    "new-default-spin": ("new", {"GOMP_SPINCOUNT": "300000"}),
    "old-low-spin": ("old", {"GOMP_SPINCOUNT": "1000"}),
    "new-1-thread": ("new", {"OMP_NUM_THREADS": "1"}),  # not bit-identical to 2 threads: a proposal, not a setting
}


def subset_grid(text: str, examples: list[int] | None) -> str:
    """The demo grid's text with `examples` replaced (None: as it is)."""
    if examples is None:
        return text
    return re.sub(r"(?m)^examples\s*=.*$", f"examples = {examples}", text, count=1)


def run_arm(name: str, code: Path, grid: Path, folder: Path, fit: bool) -> dict:
    """plan + run (+ fit) of one arm, each a `python -m scaling_study` subprocess; wall times and load."""
    tree, changes = ARMS[name]
    env = {k: v for k, v in os.environ.items() if k not in SPIN}  # this process set its own (scaling_study/__init__)
    env.update({k: v for k, v in changes.items() if v is not None})
    env["PYTHONPATH"] = str(code)
    env.pop("STUDY_DB", None)
    url = f"sqlite:///{folder}/results.db"
    stages = [("plan", ["plan", str(grid), "--db", url]),
              ("run", ["run", "--resume", "--device", "cpu", "--db", url, "--runs-dir", str(folder / "runs")])]
    if fit:
        stages.append(("fit", ["fit", "--study", "demo", "--db", url, "--out", str(folder / "reports")]))
    out = {"arm": name, "code": tree, "env": {k: v for k, v in changes.items()}, "load_before": os.getloadavg()[0]}
    for stage, args in stages:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "scaling_study", *args], cwd=code, env=env,
                              capture_output=True, text=True)
        out[f"{stage}_s"] = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"{name}: study {stage} exited {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    out["load_after"] = os.getloadavg()[0]
    out["parts_s"] = parts(folder / "runs")
    return out


def parts(runs: Path) -> dict[str, float] | None:
    """Seconds by part summed over every epoch of every job, from the TensorBoard time/*_s scalars;
    None when the code recorded none."""
    total: dict[str, float] = {}
    for events in runs.glob("*/job-*/tensorboard/*"):
        for tag, points in curves.read_events(events).items():
            if tag.startswith("time/") and tag.endswith("_s"):
                total[tag[5:-2]] = total.get(tag[5:-2], 0.0) + sum(value for _, value in points)
    return total or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=str(ROOT / "grids/demo.toml"))
    parser.add_argument("--full", action="store_true", help="the whole grid, and study fit after it")
    parser.add_argument("--examples", default="7500", help="subset sizes of the grid to run, comma-separated")
    parser.add_argument("--base", default="main", help="git revision of the old arm")
    parser.add_argument("--arms", default="new,old", help=f"comma-separated, the first is the reference: {', '.join(ARMS)}")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all the arms")
    parser.add_argument("--name", default="demo_time", help="results file name")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        sys.exit(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    examples = None if args.full else [int(n) for n in args.examples.split(",")]

    with tempfile.TemporaryDirectory(prefix="demo-time-") as tmp:
        tmp = Path(tmp)
        grid = tmp / "grid.toml"
        grid.write_text(subset_grid(Path(args.grid).read_text(), examples))
        code = {"new": ROOT}
        base = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], capture_output=True,
                              text=True, check=True).stdout.strip()
        if any(ARMS[a][0] == "old" for a in arms):
            code["old"] = tmp / "old"
            code["old"].mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", base], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(code["old"])], input=archive, check=True)
        results = []
        for round_ in range(args.repeats):
            for arm in arms:
                folder = tmp / f"{arm}-{round_}"
                folder.mkdir()
                result = run_arm(arm, code[ARMS[arm][0]], grid, folder, args.full)
                result["round"] = round_
                results.append(result)
                print(f"round {round_} {arm:18s} run {result['run_s']:7.1f} s  (load {result['load_before']:.1f} -> "
                      f"{result['load_after']:.1f})", flush=True)

    def median_run(arm: str) -> float:
        values = sorted(r["run_s"] for r in results if r["arm"] == arm)
        return values[len(values) // 2]

    reference = arms[0]
    print(f"\n`study run` of {'the whole demo' if args.full else f'the demo at N = {examples}'}, "
          f"{args.repeats} round(s), old = {base}; median seconds and ratio to {reference}:")
    ratios = {}
    for arm in arms:
        ratios[arm] = median_run(arm) / median_run(reference)
        print(f"  {arm:18s} {median_run(arm):7.1f} s  x{ratios[arm]:.2f}")
    shares = {}
    for arm in arms:
        recorded = [r["parts_s"] for r in results if r["arm"] == arm and r["parts_s"]]
        if not recorded:
            continue
        summed = {p: sum(r.get(p, 0.0) for r in recorded) for p in (*PARTS, "wall")}
        shares[arm] = {p: summed[p] / summed["wall"] for p in PARTS}
        print(f"  {arm}: by part over {len(recorded)} run(s), {summed['wall']:.1f} s of epochs: "
              + ", ".join(f"{p} {shares[arm][p]:.1%}" for p in PARTS if summed[p] > 0))
    figures = {"grid": args.grid, "examples": examples or "all", "base": base, "arms": arms, "repeats": args.repeats,
               "runs": results, "median_run_s": {a: median_run(a) for a in arms}, "ratio_to_first": ratios,
               "part_shares": shares}
    print(f"wrote {write(args.name, figures)}")


if __name__ == "__main__":
    main()
