"""Adaptive studies: how much compute pruning saves, and what it does to the law.

    python benchmarks/adaptive.py simulate            # (a) no training: seconds to a minute
    python benchmarks/adaptive.py demo [--work DIR] [--arms default,unprotected]   # (b) trained, ~20-40 min
    python benchmarks/adaptive.py replay-arms --db sqlite:///DIR/full/results.db   # (b) arms replayed, ~2 min
    python benchmarks/adaptive.py replay --db URL [--simulation]   # (c) every policy rung by rung, ~10-30 min
    python benchmarks/adaptive.py live --db URL [--budget 0.5] [--live-db URL2]   # (d) trained anytime demo, ~15 min

(a) The shape of grids/cifar100.toml (6 models x 5 subset sizes, trajectories evaluated at
T = 50..800) on synthetic points from a known E(P, D) law (scaling_study.synthetic, with its
noise and outliers), run through the real decision function (`adaptive.decide`) the way one
worker runs a study: jobs in the adaptive claim order, each evaluation point landing in turn,
a refit and a pruning decision after each, a pruned trajectory stopping there. It reports the
compute spent (Eq. 4 of what was run) and the exponents fitted on what was recorded, adaptive vs
full, against the truth; once with the default guards and once with protect_spanning = false.

(b) Runs `study plan` + `study run` + `study fit` on grids/demo.toml twice from scratch in one
invocation, same seeds: once plain, then with `study run --adaptive` for each arm (the grid's
[adaptive] defaults; and protect_spanning = false). It records the compute actually
trained (Eq. 4 of each job's epochs_done), wall time, and every headline number of fit.json
(E(C) alpha, alpha_P, alpha_N, allocation a/b by each estimator), and checks each adaptive
value against the full run's 95% interval. The goal: at most 50% of the compute, every headline inside.
Results: benchmarks/results/adaptive_simulation.json and adaptive_demo*.json.

(c) Any finished study (every trajectory with all its rungs), or the simulation of (a), replayed
rung by rung (a rung: one evaluation epoch of a trajectory) in the order each policy picks: grid
order, coarse-to-fine, envelope pruning (no guards) and the uncertainty policy (scaling_study.anytime,
replay-only). After each rung the headlines are refitted on the points revealed; it records the
compute share from which each headline (and all together) is inside the full grid's 95% interval
and stays inside, and draws the anytime curves (docs/img/adaptive_anytime.png).
Results: benchmarks/results/adaptive_anytime.json.

(d) `study run` itself under the uncertainty policy (`[adaptive] policy = "uncertainty"`) on
grids/demo.toml with a compute budget, trained from scratch (or an anytime run already made, given
as --live-db), and each headline it ends with (measured points only) checked against the full
demo's 95% interval (--db: a finished plain demo). Results: benchmarks/results/adaptive_anytime_live.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write  # noqa: E402

from scaling_study import adaptive, budget, synthetic  # noqa: E402
from scaling_study import analysis as fits  # noqa: E402
from scaling_study.grid import AdaptiveConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# ---- (a) simulation on synthetic points with a known law ----

def synthetic_jobs(frame: pd.DataFrame) -> list[dict]:
    """Job rows (as db.job_rows gives them) for the trajectories of a synthetic frame, all pending."""
    rows = []
    for job_id, job in frame.groupby("job_id"):
        first = job.iloc[0]
        epochs = sorted(int(t) for t in job["epochs"])
        rows.append({"id": int(job_id), "model": first["model"], "params": int(first["params"]),
                     "flops_per_example": int(first["flops_per_example"]), "examples": int(first["examples"]),
                     "epochs": epochs[-1], "epochs_done": 0, "state": "pending",
                     "spec": json.dumps({"epochs": epochs, "train": {"drop_last": False}})})
    return rows


def simulate(frame: pd.DataFrame, config: AdaptiveConfig, rows: list[dict] | None = None
             ) -> tuple[pd.DataFrame, list[dict], int]:
    """One worker, adaptive claim order, a decision after every evaluation epoch (all its metrics land
    at once): (points recorded, final rows, decisions). `rows` default to the frame's trajectories."""
    rows = [dict(r, state="pending", epochs_done=0) for r in (rows or synthetic_jobs(frame))]
    by_id = {r["id"]: r for r in rows}
    order = adaptive.claim_order(rows)
    recorded: list[pd.DataFrame] = []
    decisions = 0
    for job_id in sorted(order, key=order.get):
        row = by_id[job_id]
        if row["state"] != "pending":
            continue
        row["state"] = "running"
        mine = frame[frame["job_id"] == job_id]
        for epoch in sorted(mine["epochs"].unique()):
            recorded.append(mine[mine["epochs"] == epoch])
            row["epochs_done"] = int(epoch)
            if row["epochs_done"] == row["epochs"]:
                row["state"] = "done"
            made, _ = adaptive.decide(pd.concat(recorded), rows, config)
            decisions += 1
            for d in made:
                if d.prune:
                    by_id[d.job_id]["state"] = "pruned"
            if row["state"] == "pruned":
                break
        if row["state"] == "running":
            row["state"] = "done"
    return pd.concat(recorded).reset_index(drop=True), rows, decisions


def headline(frame: pd.DataFrame, resamples: int = 400) -> dict:
    """The exponents `study fit` reports, fitted on `frame`: value and 95% interval."""
    selected, filters = fits.select(frame)
    result = fits.analyse(selected, filters, bootstrap=resamples, seed=0)
    return headline_of(result)


def headline_of(result) -> dict:  # noqa: ANN001 - an analysis.Analysis
    out = {}

    def put(name: str, e: fits.Estimate) -> None:
        out[name] = {"value": e.value, "low": e.low, "high": e.high}

    put("E(C) alpha", result.compute.params["alpha"])
    for law, name in ((result.bottleneck_params, "alpha_P"), (result.bottleneck_examples, "alpha_N")):
        if isinstance(law, fits.LawFit):
            put(name, law.params["alpha"])
    if isinstance(result.parametric, fits.LawFit):
        put("E(P,D) alpha", result.parametric.params["alpha"])
        put("E(P,D) beta", result.parametric.params["beta"])
    for allocation in result.allocations:
        if isinstance(allocation, fits.Allocation):
            put(f"a ({allocation.estimator})", allocation.a)
            put(f"b ({allocation.estimator})", allocation.b)
    return out


def run_simulation() -> dict:
    law = synthetic.ParametricLaw()
    frame = synthetic.parametric_study(law=law, models=6, examples=5, params_range=(9.2e6, 1.25e8),
                                       examples_range=(1.18e5, 1.18e7))
    rows = synthetic_jobs(frame)
    full_compute = sum(adaptive.planned_compute(r) for r in rows)
    truth = {"E(P,D) alpha": law.alpha, "E(P,D) beta": law.beta, "a (parametric)": law.a, "b (parametric)": law.b}
    full = headline(frame)
    report = {"shape": "grids/cifar100.toml: 6 models (9.2M-125M parameters) x 5 subsets (1%-100% of 11.8M) x "
                       "T = 50..800; FLOP(f) = P", "truth": truth, "trajectories": len(rows),
              "points": len(frame), "full": {"compute_pflops": full_compute / budget.PFLOP, "headline": full}}
    for label, config in (("adaptive", AdaptiveConfig(enabled=True)),
                          ("adaptive_unprotected", AdaptiveConfig(enabled=True, protect_spanning=False))):
        started = time.perf_counter()
        recorded, final, decisions = simulate(frame, config)
        spent = sum(adaptive.spent_compute(r) for r in final)
        values = headline(recorded)
        inside = {k: bool(full[k]["low"] <= v["value"] <= full[k]["high"]) for k, v in values.items() if k in full}
        report[label] = {
            "config": dataclasses.asdict(config), "seconds": time.perf_counter() - started, "decisions": decisions,
            "compute_pflops": spent / budget.PFLOP, "compute_fraction": spent / full_compute,
            "pruned": sum(r["state"] == "pruned" for r in final), "points": len(recorded), "headline": values,
            "inside_full_95": inside,
        }
    for label in ("full", "adaptive", "adaptive_unprotected"):
        values = report[label]["headline"]
        report[label]["error_vs_truth"] = {k: values[k]["value"] - t for k, t in truth.items() if k in values}
    return report


def print_simulation(report: dict) -> None:
    print(f"simulation, {report['shape']}: {report['trajectories']} trajectories, {report['points']} points")
    keys = list(report["full"]["headline"])
    print(f"{'':28} {'full':>22} {'adaptive':>22} {'adaptive, unprotected':>24}  truth")
    for key in keys:
        cells = []
        for label in ("full", "adaptive", "adaptive_unprotected"):
            e = report[label]["headline"].get(key)
            cells.append("-" if e is None else f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]")
        truth = report["truth"].get(key)
        print(f"{key:28} {cells[0]:>22} {cells[1]:>22} {cells[2]:>24}  {'' if truth is None else f'{truth:.3f}'}")
    for label in ("adaptive", "adaptive_unprotected"):
        r = report[label]
        print(f"{label}: compute {r['compute_fraction']:.1%} of the full grid ({r['pruned']} of "
              f"{report['trajectories']} trajectories pruned, {r['points']} of {report['points']} points), "
              f"{sum(r['inside_full_95'].values())}/{len(r['inside_full_95'])} headline values inside the full run's "
              f"95% interval; {r['decisions']} decisions in {r['seconds']:.0f} s")


# ---- (b) the demo trained in full and adaptively ----

def study(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "scaling_study", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"study {' '.join(args)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def demo_arm(folder: Path, adaptive_run: bool, protect: bool) -> dict:
    """plan + run (+ --adaptive) + fit of grids/demo.toml in `folder`: compute trained, wall time, headline."""
    from scaling_study import db

    folder.mkdir(parents=True, exist_ok=True)
    grid = (ROOT / "grids" / "demo.toml").read_text()
    if adaptive_run and not protect:
        grid += "\n[adaptive]\nprotect_spanning = false\n"
    (folder / "demo.toml").write_text(grid)
    url = f"sqlite:///{folder / 'results.db'}"
    study("plan", "demo.toml", "--db", url, cwd=folder)
    started = time.perf_counter()
    study("run", "--db", url, *(["--adaptive"] if adaptive_run else []), cwd=folder)
    wall = time.perf_counter() - started
    study("fit", "--db", url, "--out", str(folder / "reports"), cwd=folder)
    fit = json.loads((folder / "reports" / "fit.json").read_text())
    engine = db.connect(url)
    rows = db.job_rows(engine)
    spent = sum(adaptive.spent_compute(r) for r in rows)
    planned = sum(adaptive.planned_compute(r) for r in rows)
    engine.dispose()
    return {"wall_s": wall, "compute_pflops": spent / budget.PFLOP, "planned_pflops": planned / budget.PFLOP,
            "pruned": sum(r["state"] == "pruned" for r in rows), "states": {s: sum(r["state"] == s for r in rows)
                                                                          for s in db.JOB_STATES},
            "headline": fit_headline(fit), "pruned_jobs": fit.get("pruned", [])}


def fit_headline(fit: dict) -> dict:
    out = {"E(C) alpha": fit["laws"]["compute"]["params"]["alpha"]}
    for key, name in (("bottleneck_params", "alpha_P"), ("bottleneck_examples", "alpha_N")):
        if "params" in fit["laws"][key]:
            out[name] = fit["laws"][key]["params"]["alpha"]
    for estimator, allocation in fit["allocation"].items():
        if "a" in allocation:
            out[f"a ({estimator})"] = allocation["a"]
            out[f"b ({estimator})"] = allocation["b"]
    return out


def compare(full: dict, adapt: dict) -> dict:
    inside = {}
    for key, e in adapt["headline"].items():
        reference = full["headline"].get(key)
        if reference and reference["low"] is not None and e["value"] is not None:
            inside[key] = bool(reference["low"] <= e["value"] <= reference["high"])
    missing = [key for key in full["headline"] if key not in adapt["headline"]]
    return {"compute_ratio": adapt["compute_pflops"] / full["compute_pflops"], "wall_ratio": adapt["wall_s"] / full["wall_s"],
            "inside_full_95": inside, "not_fitted": missing,
            "goal_met": bool(adapt["compute_pflops"] <= 0.5 * full["compute_pflops"] and all(inside.values()) and not missing)}


def run_demo(work: Path, arms: list[str]) -> dict:
    """The full demo, then each adaptive arm (default: the grid's guards; unprotected: protect_spanning = false)."""
    report = {"grid": "grids/demo.toml", "full": demo_arm(work / "full", False, True)}
    for arm in arms:
        result = demo_arm(work / f"adaptive-{arm}", True, arm == "default")
        report[f"adaptive_{arm}"] = {**result, **compare(report["full"], result)}
        write("adaptive_demo", report)  # an arm that finishes is kept even if the next one is cut short
    return report


def print_demo(report: dict) -> None:
    full = report["full"]
    for label in [k for k in report if k.startswith("adaptive_")]:
        adapt = report[label]
        print(f"demo, {label}: compute {adapt['compute_pflops']:.4g} vs {full['compute_pflops']:.4g} PFLOPs "
              f"({adapt['compute_ratio']:.1%}), wall {adapt['wall_s']:.0f} vs {full['wall_s']:.0f} s "
              f"({adapt['wall_ratio']:.1%}), {adapt['pruned']} of 24 trajectories pruned")
        for key, e in full["headline"].items():
            a = adapt["headline"].get(key)

            def cell(x) -> str:  # noqa: ANN001
                if x is None or x["value"] is None:
                    return "-"
                return f"{x['value']:.3f}" + ("" if x["low"] is None else f" [{x['low']:.3f}, {x['high']:.3f}]")

            print(f"  {key:18} full {cell(e):>24}  adaptive {cell(a):>24}  inside: {adapt['inside_full_95'].get(key)}")
        print(f"  goal (<= 50% compute, every headline inside the full 95% interval): "
              f"{'met' if adapt['goal_met'] else 'not met'}")


def run_replay(url: str) -> dict:
    """(b) without training it again: the adaptive arms replayed on a finished full run's points.

    Training is seeded and resumes bit-identically, so a trajectory's points are the same whether it
    runs to its end or stops early: one adaptive worker would record exactly a prefix of each
    trajectory of the full run. The replay lands those points in the adaptive claim order, decides
    after each evaluation epoch with the real decision function, and stops what it prunes."""
    from scaling_study import db

    engine = db.connect(url)
    frame = db.evaluations_frame(engine)
    rows = db.job_rows(engine)
    engine.dispose()
    unfinished = sorted({f"{r['model']} N={r['examples']}" for r in rows if r["state"] != "done"})
    rows = [r for r in rows if r["state"] == "done"]  # a full run cut short: its finished trajectories
    frame = frame[frame["job_id"].isin({r["id"] for r in rows})]
    full_compute = sum(adaptive.planned_compute(r) for r in rows)
    selected, filters = fits.select(frame)
    full = headline_of(fits.analyse(selected, filters, bootstrap=1000, seed=0))
    report = {"source": url, "trajectories": len(rows), "points": len(selected), "left_out_unfinished": unfinished,
              "full": {"compute_pflops": full_compute / budget.PFLOP, "headline": full}}
    for label, config in (("adaptive_default", AdaptiveConfig(enabled=True)),
                          ("adaptive_unprotected", AdaptiveConfig(enabled=True, protect_spanning=False))):
        started = time.perf_counter()
        recorded, final, decisions = simulate(frame, config, rows)
        spent = sum(adaptive.spent_compute(r) for r in final)
        chosen, chosen_filters = fits.select(recorded)
        values = headline_of(fits.analyse(chosen, chosen_filters, bootstrap=1000, seed=0))
        inside = {k: bool(full[k]["low"] <= v["value"] <= full[k]["high"]) for k, v in values.items() if k in full}
        report[label] = {"config": dataclasses.asdict(config), "seconds": time.perf_counter() - started,
                         "decisions": decisions, "compute_pflops": spent / budget.PFLOP,
                         "compute_fraction": spent / full_compute, "pruned": sum(r["state"] == "pruned" for r in final),
                         "pruned_jobs": [f"{r['model']} N={r['examples']} ({r['epochs_done']}/{r['epochs']} epochs)"
                                         for r in final if r["state"] == "pruned"],
                         "points": len(chosen), "headline": values, "inside_full_95": inside,
                         "not_fitted": [k for k in full if k not in values]}
    return report


def print_replay(report: dict) -> None:
    full = report["full"]["headline"]
    print(f"replay on {report['source']}: {report['trajectories']} finished trajectories, {report['points']} points"
          + (f" (left out, unfinished: {', '.join(report['left_out_unfinished'])})" if report["left_out_unfinished"] else ""))
    print(f"{'':18} {'full':>24} {'adaptive (default)':>24} {'adaptive (unprotected)':>24}")
    for key, e in full.items():
        cells = [e] + [report[label]["headline"].get(key) for label in ("adaptive_default", "adaptive_unprotected")]
        text = ["-" if c is None else f"{c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]" for c in cells]
        print(f"{key:18} {text[0]:>24} {text[1]:>24} {text[2]:>24}")
    for label in ("adaptive_default", "adaptive_unprotected"):
        r = report[label]
        print(f"{label}: compute {r['compute_fraction']:.1%} of the full run, {r['pruned']} pruned "
              f"({'; '.join(r['pruned_jobs'])}), {sum(r['inside_full_95'].values())}/{len(full)} headline values inside "
              f"the full run's 95% interval" + (f", not fitted: {', '.join(r['not_fitted'])}" if r["not_fitted"] else ""))


# ---- (c) anytime replay: every policy revealed rung by rung on a finished study's points ----

POLICIES = ("grid order", "coarse-to-fine", "envelope pruning", "uncertainty")


def rungs_of(points: pd.DataFrame) -> dict[int, list[int]]:
    """{job id: its evaluation epochs in order} of a selection."""
    return {int(j): sorted(int(t) for t in g["epochs"].unique()) for j, g in points.groupby("job_id")}


def rung_cost(row: dict, before: int, epoch: int) -> float:
    """Eq. 4 of training a trajectory from epoch `before` to `epoch`."""
    return budget.job_compute(row, epoch) - budget.job_compute(row, before)


def whole_trajectories(order: list[int], rungs: dict[int, list[int]]) -> list[tuple[int, int]]:
    """Rungs of each trajectory in turn, start to end (how a plain worker runs them)."""
    return [(j, t) for j in order for t in rungs[j]]


def pruning_sequence(points: pd.DataFrame, rows: list[dict]) -> list[tuple[int, int]]:
    """The rungs the envelope-pruning policy runs (no guards), in its order: `simulate`'s points."""
    recorded, _, _ = simulate(points, AdaptiveConfig(enabled=True, protect_spanning=False), rows)
    return [(int(j), int(t)) for j, t in recorded[["job_id", "epochs"]].drop_duplicates().itertuples(index=False)]


def uncertainty_sequence(points: pd.DataFrame, rows: list[dict], resamples: int, score_until: float,
                         warm_up: int) -> tuple[list[tuple[int, int]], list[dict]]:
    """The rungs the uncertainty policy runs, and its decisions. Until the law fits on `warm_up` points,
    pending trajectories start (first rung) in the coarse-to-fine order; then each step scores every
    next action (`anytime.score_actions`) and runs the best. Past `score_until` of the grid's compute
    the remaining rungs run in grid order unscored (their curve still counts)."""
    from scaling_study import anytime

    rungs = rungs_of(points)
    by_id = {r["id"]: r for r in rows}
    total = sum(adaptive.planned_compute(r) for r in rows)
    done = {j: 0 for j in rungs}  # epochs done per trajectory
    order = adaptive.claim_order(rows)
    sequence, decisions, spent = [], [], 0.0
    key = points.set_index(["job_id", "epochs"]).index
    while len(sequence) < sum(map(len, rungs.values())):
        actions = [(j, next(t for t in rungs[j] if t > done[j])) for j in rungs if done[j] < rungs[j][-1]]
        actions = [(j, t, rung_cost(by_id[j], done[j], t)) for j, t in actions]
        measured = points[key.isin(sequence)]
        chosen, note = None, "grid order past score_until"
        if spent / total < score_until:
            note = "warm-up: coarse-to-fine first rungs"
            if len(measured) >= warm_up:
                started = time.perf_counter()
                scored, fit = anytime.score_actions(measured, points[~key.isin(sequence)], actions, resamples,
                                                    seed=len(sequence))
                if scored:
                    chosen, note = (scored[0].job_id, scored[0].epoch), "best score"
                    decisions.append({"step": len(sequence), "share": spent / total, "seconds":
                                      time.perf_counter() - started, "chosen": list(chosen),
                                      "top": [[a.job_id, a.epoch, a.cost / budget.PFLOP, a.score] for a in scored[:5]],
                                      "spread": fit["spread"]})
            if chosen is None:
                pending = [a for a in actions if done[a[0]] == 0]
                chosen = min(pending or actions, key=lambda a: (order[a[0]], a[1]))[:2]
        else:
            chosen = min(actions)[:2]
        j, t = chosen
        spent += rung_cost(by_id[j], done[j], t)
        done[j] = t
        sequence.append((j, t))
        print(f"  uncertainty: step {len(sequence)}, {spent / total:.1%} of the grid, ran {j} to T = {t} ({note})",
              flush=True)
    return sequence, decisions


def anytime_curve(points: pd.DataFrame, rows: list[dict], sequence: list[tuple[int, int]], full: dict) -> list[dict]:
    """After each rung of `sequence`: compute spent (share of the grid) and each headline's value fitted on
    the points measured so far, and its distance to the full grid's value in units of the full 95%
    interval's half-width on that side (|d| <= 1: inside)."""
    from scaling_study import anytime

    by_id = {r["id"]: r for r in rows}
    total = sum(adaptive.planned_compute(r) for r in rows)
    key = points.set_index(["job_id", "epochs"]).index
    done, spent, curve = {}, 0.0, []
    for i, (j, t) in enumerate(sequence):
        spent += rung_cost(by_id[j], done.get(j, 0), t)
        done[j] = t
        values = anytime.headline(points[key.isin(sequence[: i + 1])]) if i + 1 >= 5 else {}
        distance = {}
        for name, (value, low, high) in full.items():
            if name in values:
                v = values[name][0]
                distance[name] = (v - value) / ((high - value) if v >= value else (value - low))
        curve.append({"share": spent / total, "values": {k: v[0] for k, v in values.items()}, "distance": distance})
    return curve


def enters_and_stays(curve: list[dict], names: list[str]) -> dict:
    """Per headline (and all together): the compute share from which it is inside the full 95% interval
    at every later rung; None when it is outside (or not fitted) at the end."""

    def inside(step: dict, name: str) -> bool:
        return name in step["distance"] and abs(step["distance"][name]) <= 1

    out = {}
    for label, group in [(n, [n]) for n in names] + [("all", names)]:
        ok = [all(inside(step, n) for n in group) for step in curve]
        if not ok or not ok[-1]:
            out[label] = None
            continue
        first = len(ok) - next(i for i, v in enumerate(reversed(ok)) if not v) if not all(ok) else 0
        out[label] = curve[first]["share"]
    return out


def run_anytime(points: pd.DataFrame, rows: list[dict], label: str, resamples: int, score_until: float,
                warm_up: int, policies: tuple[str, ...] = POLICIES, full_bootstrap: int = 1000) -> dict:
    """Every policy replayed on one finished grid's points (a `select` output) and its job rows."""
    from scaling_study import anytime

    started = time.perf_counter()
    full = {k: v for k, v in anytime.headline(points, bootstrap=full_bootstrap).items() if np.isfinite(v[1])}
    names = list(full)
    rungs = rungs_of(points)
    order = adaptive.claim_order(rows)
    report = {"source": label, "trajectories": len(rungs), "rungs": sum(map(len, rungs.values())),
              "points": len(points), "full": {k: {"value": v[0], "low": v[1], "high": v[2]} for k, v in full.items()},
              "uncertainty_settings": {"resamples": resamples, "score_until": score_until, "warm_up": warm_up},
              "full_bootstrap": full_bootstrap,
              "policies": {}}
    for policy in policies:
        t0 = time.perf_counter()
        decisions = []
        if policy == "grid order":
            sequence = whole_trajectories(sorted(rungs), rungs)
        elif policy == "coarse-to-fine":
            sequence = whole_trajectories(sorted(rungs, key=order.get), rungs)
        elif policy == "envelope pruning":
            sequence = pruning_sequence(points, rows)
        else:
            sequence, decisions = uncertainty_sequence(points, rows, resamples, score_until, warm_up)
        curve = anytime_curve(points, rows, sequence, full)
        shares = enters_and_stays(curve, names)
        report["policies"][policy] = {"enters_and_stays": shares, "final_share": curve[-1]["share"],
                                      "goal_met": shares["all"] is not None and shares["all"] <= 0.5,
                                      "seconds": time.perf_counter() - t0, "sequence": sequence, "curve": curve,
                                      "decisions": decisions}
        print(f"{label}, {policy}: all headlines inside from {fmt_share(shares['all'])} of the grid's compute "
              f"(ran {curve[-1]['share']:.1%}); {time.perf_counter() - t0:.0f} s", flush=True)
    report["seconds"] = time.perf_counter() - started
    return report


def fmt_share(share: float | None) -> str:
    return "never" if share is None else f"{share:.1%}"


def print_anytime(report: dict) -> None:
    names = list(report["full"]) + ["all"]
    print(f"{report['source']}: {report['trajectories']} trajectories, {report['rungs']} rungs")
    print(f"{'compute share from which inside':32}" + "".join(f"{p:>18}" for p in report["policies"]))
    for name in names:
        print(f"{name:32}" + "".join(f"{fmt_share(v['enters_and_stays'][name]):>18}"
                                      for v in report["policies"].values()))


def draw_anytime(reports: list[dict], path: Path) -> None:
    """The anytime curves: per source and policy, each headline's |distance| to the full value (in units
    of the full 95% half-width) against the share of the grid's compute spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(r["policies"]) for r in reports)
    fig, axes = plt.subplots(len(reports), columns, figsize=(4 * columns, 3.2 * len(reports)),
                             sharey=True, squeeze=False)
    for row, report in zip(axes, reports):
        for ax, policy in zip(row, report["policies"]):
            curve = report["policies"][policy]["curve"]
            for name in report["full"]:
                xs = [s["share"] for s in curve if name in s["distance"]]
                ys = [min(max(abs(s["distance"][name]), 1e-3), 10) for s in curve if name in s["distance"]]
                ax.plot(xs, ys, lw=1, label=name)
            ax.axhline(1, color="k", ls="--", lw=0.8)
            ax.axvline(0.5, color="grey", ls=":", lw=0.8)
            ax.set_yscale("log")
            ax.set_ylim(1e-3, 10)
            ax.set_xlim(0, 1)
            shares = report["policies"][policy]["enters_and_stays"]["all"]
            ax.set_title(f"{report['source']}: {policy}\nall inside from {fmt_share(shares)}", fontsize=9)
            ax.set_xlabel("share of the grid's compute")
        row[0].set_ylabel("|distance| to full value\n(units of full 95% half-width)")
    axes[0][-1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def anytime_sources(url: str | None, simulation: bool) -> list[tuple[str, pd.DataFrame, list[dict]]]:
    """(label, points, job rows) of the finished database at `url` and/or the cifar100-shaped simulation."""
    sources = []
    if url:
        from scaling_study import db

        engine = db.connect(url)
        frame, rows = db.evaluations_frame(engine), db.job_rows(engine)
        engine.dispose()
        rows = [r for r in rows if r["state"] == "done"]
        points, _ = fits.select(frame[frame["job_id"].isin({r["id"] for r in rows})])
        sources.append((url.rsplit("/", 1)[-1], points, rows))
    if simulation:
        frame = synthetic.parametric_study(law=synthetic.ParametricLaw(), models=6, examples=5,
                                           params_range=(9.2e6, 1.25e8), examples_range=(1.18e5, 1.18e7))
        points, _ = fits.select(frame)
        sources.append(("simulation (cifar100 shape)", points, synthetic_jobs(frame)))
    return sources


def run_live(full_url: str, share: float, live_url: str | None, work: Path, bootstrap: int) -> dict:
    """(d): the anytime demo under a budget, trained here unless `live_url` is given, vs the full demo."""
    from scaling_study import anytime, db

    seconds = None
    if live_url is None:
        work.mkdir(parents=True, exist_ok=True)
        text = (ROOT / "grids" / "demo.toml").read_text().replace('name = "demo"', 'name = "demo-anytime"')
        (work / "anytime.toml").write_text(text + f'\n[adaptive]\nenabled = true\npolicy = "uncertainty"\nbudget = {share}\n')
        live_url = f"sqlite:///{work / 'anytime.db'}"
        subprocess.run([sys.executable, "-m", "scaling_study", "plan", "anytime.toml", "--db", live_url], cwd=work, check=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scaling_study", "run", "--db", live_url], cwd=work, check=True)
        seconds = time.perf_counter() - started
    full_engine, live_engine = db.connect(full_url, write=False), db.connect(live_url, write=False)
    (full_study,), (live_study,) = db.study_names(full_engine), db.study_names(live_engine)
    full = anytime.headline(anytime.measured_points(full_engine, full_study), bootstrap=bootstrap, seed=0)
    live_points = anytime.measured_points(live_engine, live_study)
    live = anytime.headline(live_points)
    totals = budget.study_compute(db.job_rows(live_engine, live_study))
    decided = db.decision_rows(live_engine, live_study)
    rows = {name: {"full": value, "low": low, "high": high, "live": live.get(name, (None,))[0],
                   "inside": name in live and low <= live[name][0] <= high}
            for name, (value, low, high) in full.items()}
    return {"budget": share, "share_spent": totals.spent / totals.planned, "points": len(live_points),
            "decisions": {rule: sum(d["rule"] == rule for d in decided) for rule in ("warm-up", "uncertainty")},
            "run_seconds": seconds, "full_bootstrap": bootstrap, "headlines": rows,
            "inside": sum(r["inside"] for r in rows.values()), "of": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("simulate", "demo", "replay-arms", "replay", "live"))
    parser.add_argument("--budget", type=float, default=0.5, help="live: the anytime run's budget (share of the grid)")
    parser.add_argument("--live-db", default=None, help="live: an anytime demo already run (else one is trained)")
    parser.add_argument("--db", default=None, help="replay: the finished full demo's database URL")
    parser.add_argument("--work", type=Path, default=None, help="Folder for the demo's databases, runs and reports")
    parser.add_argument("--arms", default="default,unprotected",
                        help="demo: adaptive arms to run after the full one (default: the grid's guards; "
                             "unprotected: protect_spanning = false)")
    parser.add_argument("--simulation", action="store_true", help="anytime: also replay the cifar100-shaped simulation")
    parser.add_argument("--resamples", type=int, default=12, help="anytime: bootstrap refits per scoring step")
    parser.add_argument("--score-until", type=float, default=1.0,
                        help="anytime: share of the grid past which the uncertainty policy stops scoring")
    parser.add_argument("--warm-up", type=int, default=12, help="anytime: points before the first scoring step")
    parser.add_argument("--policies", default=",".join(POLICIES), help="replay: the policies, comma-separated")
    parser.add_argument("--full-bootstrap", type=int, default=1000, help="replay: resamples of the full grid's intervals")
    parser.add_argument("--name", default="adaptive_anytime",
                        help="replay: results file (benchmarks/results/NAME.json) and figure (docs/img/NAME.png)")
    args = parser.parse_args()
    if args.part == "replay":
        policies = tuple(p for p in args.policies.split(",") if p)
        if not policies or not set(policies) <= set(POLICIES):
            parser.error(f"--policies: choose among {', '.join(POLICIES)}")
        reports = [run_anytime(points, rows, label, args.resamples, args.score_until, args.warm_up, policies,
                               args.full_bootstrap)
                   for label, points, rows in anytime_sources(args.db, args.simulation)]
        for report in reports:
            print_anytime(report)
        draw_anytime(reports, ROOT / "docs" / "img" / f"{args.name}.png")
        print(f"wrote {write(args.name, {'sources': reports})} and docs/img/{args.name}.png")
        return
    if args.part == "live":
        with tempfile.TemporaryDirectory() as tmp:
            report = run_live(args.db, args.budget, args.live_db, args.work or Path(tmp), args.full_bootstrap)
        for name, row in report["headlines"].items():
            print(f"{name:16s} full {row['full']:.3f} [{row['low']:.3f}, {row['high']:.3f}]  anytime "
                  f"{'-' if row['live'] is None else format(row['live'], '.3f')}  {'inside' if row['inside'] else 'OUTSIDE'}")
        print(f"anytime: {report['share_spent']:.1%} of the grid's compute (budget {report['budget']:.0%}), "
              f"{report['inside']} of {report['of']} headlines inside the full 95% interval")
        print(f"wrote {write('adaptive_anytime_live', report)}")
        return
    if args.part == "simulate":
        report = run_simulation()
        print_simulation(report)
        print(f"wrote {write('adaptive_simulation', report)}")
        return
    if args.part == "replay-arms":
        report = run_replay(args.db)
        print_replay(report)
        print(f"wrote {write('adaptive_demo_replay', report)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        report = run_demo(args.work or Path(tmp), [a for a in args.arms.split(",") if a])
    print_demo(report)
    print(f"wrote {write('adaptive_demo', report)}")


if __name__ == "__main__":
    main()
