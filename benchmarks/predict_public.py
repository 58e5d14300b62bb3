"""Predictions on public scaling data: hold out each set's largest-compute points, fit the rest, predict
each held-out run by its parameter count, and count how many fall inside their 95% interval.

    python benchmarks/predict_public.py [--chinchilla DIR] [--open-athena DIR] [--bootstrap 300]

The data are read from git clones (or bare mirrors) of two public repositories, neither of which
carries a licence, so nothing of them is committed here: the script converts them in memory.

- epoch-research/analyzing-chinchilla, data/svg_extracted_data.csv: the Chinchilla runs as Epoch AI
  digitised them; tokens = training FLOP / (6 N), the 5 highest losses dropped (as Epoch AI did).
- Open-Athena/scaling-law-analysis, data/isoflops/extract/llama_3/isoflops.csv (raw_loss) and
  .../epochai_chinchilla/isoflops.csv: iso-FLOP sweeps of Llama 3 and Chinchilla.

Each run becomes one point: params P, FLOP(f) = 2 P (so Eq. 4's C = 6 P D), N = tokens, T = 1, its loss.
Held out: the highest compute budgets (runs within 10% in log compute) until at least 15% of the points.
Also: the published allocation exponents against our 95% intervals, fitted on all points (as
published) and on the points kept.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write

from scaling_study import analysis as fits
from scaling_study import budget
from scaling_study.analysis.predict import predict_run
from scaling_study.analysis.sweeps import cluster_compute

MIRRORS = Path("/work/.mirror")
CHINCHILLA = MIRRORS / "epoch-research+analyzing-chinchilla" / "repo"
OPEN_ATHENA = MIRRORS / "Open-Athena+scaling-law-analysis" / "repo"
HELD_SHARE = 0.15
DISTANCES = ((1, 3), (3, 100))  # held-out points by how far beyond the largest compute fitted
# published allocation exponents a (P* ~ C^a) and the estimator that gives each
PUBLISHED = {"chinchilla_svg": ("parametric", 0.513, 0.020, "Epoch AI's refit of Chinchilla approach 3"),
             "llama_3": ("isoflop", 0.4632, None, "Llama 3 report, iso-FLOP")}


def read(repo: Path, path: str) -> pd.DataFrame:
    """A file of a git repository (a bare mirror or a clone), or of a plain folder."""
    if (repo / path).is_file():
        return pd.read_csv(repo / path)
    text = subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True, capture_output=True, text=True).stdout
    return pd.read_csv(io.StringIO(text))


def as_frame(params: np.ndarray, tokens: np.ndarray, loss: np.ndarray, study: str) -> pd.DataFrame:
    """One point per run in the columns `study fit` reads: FLOP(f) = 2 P, N = tokens, T = 1."""
    params = np.round(np.asarray(params, float)).astype(np.int64)
    examples = np.round(np.asarray(tokens, float)).astype(np.int64)
    flops = 2 * params
    return pd.DataFrame({
        "study": study, "job_id": np.arange(1, params.size + 1), "model": [f"P-{p / 1e6:.6g}M" for p in params],
        "kind": "transformer", "params": params, "flops_per_example": flops, "examples": examples,
        "epochs": 1, "seed": 0, "metric": "loss", "error": np.asarray(loss, float),
        "compute": budget.compute(flops, examples, 1), "state": "done", "metric_kind": "loss"})


def datasets(chinchilla: Path, open_athena: Path) -> dict[str, pd.DataFrame]:
    svg = read(chinchilla, "data/svg_extracted_data.csv")
    svg = svg.drop(svg["loss"].nlargest(5).index)
    sets = {"chinchilla_svg": as_frame(svg["Model Size"], svg["Training FLOP"] / (6 * svg["Model Size"]), svg["loss"],
                                       "chinchilla_svg")}
    llama = read(open_athena, "data/isoflops/extract/llama_3/isoflops.csv")
    llama = llama[llama["condition"] == "raw_loss"]
    sets["llama_3"] = as_frame(llama["params"], llama["tokens"], llama["loss"], "llama_3")
    epoch = read(open_athena, "data/isoflops/extract/epochai_chinchilla/isoflops.csv")
    sets["chinchilla_isoflops"] = as_frame(epoch["params"], epoch["tokens"], epoch["loss"], "chinchilla_isoflops")
    return sets


def held_out(frame: pd.DataFrame) -> np.ndarray:
    """The points of the highest compute budgets, whole budgets, until at least HELD_SHARE of the points."""
    labels = cluster_compute(frame["compute"].to_numpy(float), 0.1)
    held = np.zeros(len(frame), bool)
    for label in sorted(set(labels), reverse=True):
        if held.mean() >= HELD_SHARE:
            break
        held |= labels == label
    return held


def exponent(analysis: fits.Analysis, estimator: str) -> dict:
    for a in analysis.allocations:
        if getattr(a, "estimator", None) == estimator:
            return {"value": a.a.value, "low": a.a.low, "high": a.a.high}
    return {}


def run_set(name: str, frame: pd.DataFrame, bootstrap: int) -> dict:
    held = held_out(frame)
    started = time.perf_counter()
    train, _ = fits.select(frame[~held].reset_index(drop=True))
    analysis = fits.analyse(train, {"metric": "loss", "metric_kind": "loss"}, bootstrap=bootstrap)
    rows = []
    for point in frame[held].itertuples():
        run = predict_run(analysis, None, int(point.examples), 1, params=float(point.params),
                          flops_per_example=float(point.flops_per_example))
        p = run["prediction"]
        rows.append({"params": int(point.params), "tokens": int(point.examples), "pflops": float(point.compute / budget.PFLOP),
                     "beyond": float(point.compute / frame.loc[~held, "compute"].max()),
                     "loss": float(point.error), "predicted": p["value"], "low": p["low"], "high": p["high"],
                     "bootstrap_low": p.get("bootstrap_low", p["low"]), "bootstrap_high": p.get("bootstrap_high", p["high"])})
    table = pd.DataFrame(rows)
    inside = ((table["low"] <= table["loss"]) & (table["loss"] <= table["high"])).to_numpy()
    before = ((table["bootstrap_low"] <= table["loss"]) & (table["loss"] <= table["bootstrap_high"])).to_numpy()
    full, _ = fits.select(frame)
    everything = fits.analyse(full, {"metric": "loss", "metric_kind": "loss"}, bootstrap=bootstrap)
    result = {
        "points": len(frame), "held_out": int(held.sum()), "held_out_from_pflops": float(table["pflops"].min()),
        "held_out_to_pflops": float(table["pflops"].max()),
        "trained_up_to_pflops": float(frame.loc[~held, "compute"].max() / budget.PFLOP),
        "predicted": len(table), "inside_calibrated": int(inside.sum()), "inside_bootstrap": int(before.sum()),
        "by_distance": {f"{low:g}-{high:g}x": {"points": int(m.sum()), "inside_calibrated": int(inside[m].sum())}
                        for low, high in DISTANCES
                        if (m := ((table["beyond"] >= low) & (table["beyond"] < high)).to_numpy()).any()},
        "mean_signed_log_error": float(np.mean(np.log(table["predicted"] / table["loss"]))),
        "mean_abs_relative_error": float(np.mean(np.abs(table["predicted"] / table["loss"] - 1))),
        "median_interval_width": float(np.median(table["high"] / table["low"])),
        "chosen_form": analysis.form.chosen if analysis.form else "parametric",
        "calibration": analysis.calibration,
        "a": {est: {"all_points": exponent(everything, est), "kept_points": exponent(analysis, est)}
              for est in ("envelope", "isoflop", "parametric")},
        "seconds": time.perf_counter() - started,
    }
    if name in PUBLISHED:
        estimator, value, error, source = PUBLISHED[name]
        ours = result["a"][estimator]["all_points"]
        result["published"] = {"estimator": estimator, "a": value, "plus_minus": error, "source": source,
                               "inside_ours_all_points": bool(ours and ours["low"] <= value <= ours["high"]),
                               "inside_ours_kept_points": bool(result["a"][estimator]["kept_points"]
                                                               and result["a"][estimator]["kept_points"]["low"] <= value
                                                               <= result["a"][estimator]["kept_points"]["high"])}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chinchilla", type=Path, default=CHINCHILLA, help="epoch-research/analyzing-chinchilla")
    parser.add_argument("--open-athena", type=Path, default=OPEN_ATHENA, help="Open-Athena/scaling-law-analysis")
    parser.add_argument("--bootstrap", type=int, default=300)
    args = parser.parse_args()
    results = {name: run_set(name, frame, args.bootstrap) for name, frame in datasets(args.chinchilla, args.open_athena).items()}
    total = sum(r["held_out"] for r in results.values())
    predicted = sum(r["predicted"] for r in results.values())
    inside = sum(r["inside_calibrated"] for r in results.values())
    before = sum(r["inside_bootstrap"] for r in results.values())
    for name, r in results.items():
        line = (f"{name}: {r['predicted']}/{r['held_out']} held-out points predicted (from {r['held_out_from_pflops']:.3g} "
                f"PFLOPs; trained up to {r['trained_up_to_pflops']:.3g}); inside the calibrated 95% interval "
                f"{r['inside_calibrated']}, the bootstrap one {r['inside_bootstrap']}; mean |rel. error| "
                f"{r['mean_abs_relative_error']:.2%}, mean signed log error {r['mean_signed_log_error']:+.3f}")
        print(line)
        if "published" in r:
            p = r["published"]
            ours = r["a"][p["estimator"]]["all_points"]
            print(f"  published a = {p['a']} ({p['source']}); ours ({p['estimator']}, all points) "
                  f"{ours['value']:.4f} [{ours['low']:.4f}, {ours['high']:.4f}]: inside {p['inside_ours_all_points']}")
    distance = {}
    for r in results.values():
        for key, d in r["by_distance"].items():
            both = distance.setdefault(key, {"points": 0, "inside_calibrated": 0})
            both["points"] += d["points"]
            both["inside_calibrated"] += d["inside_calibrated"]
    summary = {"by_distance": distance, "held_out": total, "predicted": predicted, "inside_calibrated": inside, "inside_bootstrap": before,
               "coverage_calibrated": inside / max(predicted, 1), "coverage_bootstrap": before / max(predicted, 1),
               "published_inside": all(r["published"]["inside_ours_all_points"] for r in results.values() if "published" in r)}
    print(f"all: {predicted}/{total} predicted; {inside} ({summary['coverage_calibrated']:.1%}) inside the calibrated "
          f"interval, {before} ({summary['coverage_bootstrap']:.1%}) inside the bootstrap one; published exponents "
          f"inside ours: {summary['published_inside']}")
    print("by distance beyond the largest compute fitted: " + "; ".join(
        f"{key}: {d['inside_calibrated']}/{d['points']} inside" for key, d in distance.items()))
    path = write("predict_public", {"bootstrap": args.bootstrap, "held_out_rule": f"whole top compute budgets until >= {HELD_SHARE:.0%} of the points",
                                    "summary": summary, "sets": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
