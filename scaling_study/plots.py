"""The figures of `study fit` (the one module that imports matplotlib): PNG at 200 dpi, PDF and SVG, Agg backend.

- fig1_error_vs_compute: every point (colour = model size, marker size = N, a line joins the
  epochs of one trajectory; an adaptive study's pruned trajectories hollow and dashed), the fitted
  E(C) dotted and E_inf as a labelled horizontal line; up to 8 models are named in a legend, beyond
  that a colour bar of log P;
- fig6_bottlenecks: error vs parameters at the largest N, error vs examples for the largest model;
- fig7_allocation: P*(C) and N*(C) by the envelope, iso-FLOP and parametric estimators;
- residuals_compute: log residuals of the E(C) fit on the envelope points;
- fig_isoflop_profiles (iso-FLOP sweeps only): each budget's points over P, its parabola, its minimum.
- fig_backtest: the rolling-origin back-test, each law's error above a compute level when fitted below it.
- fig1_compare (a comparison of families or studies): each group's points, trajectories and E(C).
"""

from __future__ import annotations

import math
import multiprocessing
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from . import analysis as fits  # noqa: E402
from .analysis import isoflop  # noqa: E402
from .analysis.optimize import usable_cores  # noqa: E402
from .budget import PFLOP  # noqa: E402
from .files import write_atomic  # noqa: E402
from .formatting import estimate_interval  # noqa: E402

COMPUTE_LABEL = "compute (PFLOPs, multiply-accumulates)"
SIZES = LinearSegmentedColormap.from_list("model_size", ["#1f4e9c", "#5e60ce", "#b5179e", "#d7263d"])
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 7.5, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.25, "grid.linewidth": 0.5, "savefig.bbox": "tight", "pdf.fonttype": 42,
    "svg.fonttype": "none",  # text as text: a smaller page, drawn in the browser's own sans-serif
}
LEGEND_MODELS = 8  # Fig. 1 names up to this many models in a legend; beyond, a colour bar of log P
ESTIMATORS = {"envelope": ("-", "o", "#1f4e9c"), "isoflop": ("--", "D", "#d7263d"), "parametric": (":", None, "#222222")}


def _save(figure: Figure, out: Path, stem: str) -> list[Path]:
    paths = []
    for suffix, options in (("png", {"dpi": 200}), ("pdf", {}), ("svg", {})):  # svg: inlined in index.html
        path = out / f"{stem}.{suffix}"
        write_atomic(path, lambda temp, s=suffix, o=options: figure.savefig(temp, format=s, **o))
        paths.append(path)
    return paths


_SUPERSCRIPTS = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _tick(value: float, _position: object = None) -> str:
    """A log-axis tick as plain text: 0.3, 20, 1000, or 10 with a unicode superscript (no mathtext: fast)."""
    if value <= 0:
        return ""
    if 1e-3 <= value < 1e4:
        return f"{value:g}"
    exponent = math.log10(value)
    if abs(exponent - round(exponent)) < 1e-9:
        return "10" + str(round(exponent)).translate(_SUPERSCRIPTS)
    mantissa, power = f"{value:.0e}".split("e")
    return f"{mantissa}\u00d710" + str(int(power)).translate(_SUPERSCRIPTS)


def _log_axes(ax) -> None:  # noqa: ANN001 - matplotlib Axes
    """Both axes logarithmic, labelled by `_tick` (decades only; minor ticks unlabelled)."""
    for axis, scale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
        scale("log")
        axis.set_major_formatter(ticker.FuncFormatter(_tick))
        axis.set_minor_formatter(ticker.NullFormatter())


def _plain_log_axis(axis, low: float, high: float) -> None:  # noqa: ANN001 - a matplotlib Axis
    """Label a log axis with plain numbers: evenly spaced round values within a factor 3 (where a
    decade's 1..9 x 10^k may give a single tick), at 1, 2, 3, 5 x 10^k within 30."""
    if high / low < 3:
        axis.set_major_locator(ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        axis.set_minor_locator(ticker.NullLocator())
    elif high / low < 30:
        axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        axis.set_minor_locator(ticker.LogLocator(subs=np.arange(1, 10)))
    axis.set_major_formatter(ticker.FuncFormatter(_tick))
    axis.set_minor_formatter(ticker.NullFormatter())


def _model_colours(frame: pd.DataFrame) -> tuple[dict[str, tuple], pd.DataFrame]:
    models = frame.drop_duplicates("model").sort_values(["params", "model"])[["model", "params"]]
    logp = np.log(models["params"].to_numpy(float))
    norm = Normalize(logp.min(), logp.max() if np.ptp(logp) else logp.min() + 1)
    return {m: SIZES(norm(v)) for m, v in zip(models["model"], logp)}, models


def _marker_sizes(examples: pd.Series, low: float, high: float) -> np.ndarray:
    span = math.log(high / low) if high > low else 1.0
    return 8.0 + 70.0 * np.log(examples.to_numpy(float) / low) / span


def _value_name(analysis: fits.Analysis) -> str:
    """What the values are: error (a rate), loss, or value (the metric's recorded kind)."""
    return str(analysis.filters.get("metric_kind", "error"))


def _seed_band(ax, frame: pd.DataFrame, colours: dict) -> None:  # noqa: ANN001 - matplotlib Axes
    """Where cells average several seeds: each trajectory's value times exp(+-1 seed std of its cells)."""
    if "seeds" not in frame or not (frame["seeds"] > 1).any():
        return
    for _, job in frame[frame["seeds"] > 1].sort_values("epochs").groupby("job_id"):
        spread = np.exp(job["log_std"].fillna(0.0).to_numpy())
        x = job["compute"].to_numpy() / PFLOP
        if len(job) == 1:
            ax.errorbar(x, job["error"], yerr=[job["error"] * (1 - 1 / spread), job["error"] * (spread - 1)],
                        color=colours[job["model"].iloc[0]], alpha=0.35, linewidth=0.8, zorder=1)
            continue
        ax.fill_between(x, job["error"] / spread, job["error"] * spread, color=colours[job["model"].iloc[0]],
                        alpha=0.15, linewidth=0, zorder=0)


def error_vs_compute(analysis: fits.Analysis, out: Path) -> list[Path]:
    """Fig. 1 style: all points, trajectories, the fitted E(C) and E_inf."""
    frame = analysis.frame
    law = analysis.compute
    colours, models = _model_colours(frame)
    n_low, n_high = frame["examples"].min(), frame["examples"].max()
    figure = Figure(figsize=(7.4, 4.6), layout="constrained")  # legends and colour bar inside the canvas
    ax = figure.add_subplot()
    pflops = frame["compute"] / PFLOP
    pruned = (frame["state"] == "pruned").to_numpy() if "state" in frame else np.zeros(len(frame), bool)
    segments, segment_colours, dashed = [], [], []
    for _, job in frame.sort_values("epochs").groupby("job_id"):
        if len(job) > 1:
            segments.append(np.column_stack([job["compute"] / PFLOP, job["error"]]))
            segment_colours.append(colours[job["model"].iloc[0]])
            dashed.append("state" in job and job["state"].iloc[0] == "pruned")
    for style, chosen in (("solid", [not d for d in dashed]), ("dashed", dashed)):  # pruned trajectories dashed
        if any(chosen):
            ax.add_collection(LineCollection([g for g, c in zip(segments, chosen) if c], linestyles=style,
                                             colors=[g for g, c in zip(segment_colours, chosen) if c],
                                             linewidths=0.7, alpha=0.45, zorder=1))
    _seed_band(ax, frame, colours)
    sizes = _marker_sizes(frame["examples"], n_low, n_high)
    point_colours = [colours[m] for m in frame["model"]]
    kept = ~pruned
    ax.scatter(pflops[kept], frame["error"][kept], s=sizes[kept], c=[c for c, k in zip(point_colours, kept) if k],
               edgecolors="white", linewidths=0.4, alpha=0.9, zorder=2)
    if pruned.any():  # an adaptive study's pruned trajectories: hollow markers
        ax.scatter(pflops[pruned], frame["error"][pruned], s=sizes[pruned], facecolors="none",
                   edgecolors=[c for c, p in zip(point_colours, pruned) if p], linewidths=0.9, alpha=0.9, zorder=2)
    on = frame[frame["envelope"]]
    ax.scatter(on["compute"] / PFLOP, on["error"], s=_marker_sizes(on["examples"], n_low, n_high) + 10,
               facecolors="none", edgecolors="black", linewidths=0.7, zorder=3)
    grid = np.geomspace(pflops.min(), pflops.max(), 300)
    e_inf = law.value("E_inf")
    ax.plot(grid, fits.compute_law(grid, law), ":", color="black", linewidth=1.6, zorder=4)
    if e_inf > 0:
        ax.axhline(e_inf, color="0.35", linestyle="--", linewidth=0.9, zorder=0)
        # at the left, where the runs are still far above it
        ax.annotate(f"E\u221e = {e_inf:.3f}", (0.0, e_inf), xycoords=("axes fraction", "data"),
                    xytext=(6, 3), textcoords="offset points", ha="left", va="bottom", fontsize=8, color="0.25")
    _log_axes(ax)
    low = min(frame["error"].min(), e_inf if e_inf > 0 else frame["error"].min())
    ax.set_ylim(low * 0.93, frame["error"].max() * 1.07)
    _plain_log_axis(ax.yaxis, low * 0.93, frame["error"].max() * 1.07)
    ax.set_xlabel(COMPUTE_LABEL)
    ax.set_ylabel(f"{analysis.metric} {_value_name(analysis)}")
    counted = f"{len(frame)} points"
    if analysis.seeds is not None and analysis.seeds.cells_with_seeds:
        counted = f"{len(frame)} cells of {analysis.seeds.points} points"
    ax.set_title(f"{analysis.metric}: {_value_name(analysis)} vs compute ({counted}, {frame['job_id'].nunique()} runs)")
    many = len(models) > LEGEND_MODELS
    if many:  # a colour bar of log P: a legend of dozens of names runs off the figure
        sizes_p = models["params"].to_numpy(float)
        scale = ScalarMappable(norm=LogNorm(sizes_p.min(), max(sizes_p.max(), sizes_p.min() * 1.01)), cmap=SIZES)
        bar = figure.colorbar(scale, ax=ax, pad=0.02, fraction=0.045, aspect=30)
        bar.solids.set_rasterized(False)  # vector, as the rest: an SVG without an embedded image
        bar.set_label(f"parameters P ({len(models)} models)")
        bar.ax.yaxis.set_major_formatter(ticker.FuncFormatter(_tick))
        bar.ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        handles = [Line2D([], [], marker="o", linestyle="", markersize=6, markerfacecolor=colours[m],
                          markeredgecolor="white", label=m) for m in models["model"]]
        model_legend = ax.legend(handles=handles, title="model (size)", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                                 frameon=False)
        ax.add_artist(model_legend)
    sizes = np.unique(np.geomspace(n_low, n_high, 3).round(-1 if n_high > 100 else 0))
    size_handles = [Line2D([], [], marker="o", linestyle="", color="0.5",
                           markersize=math.sqrt(_marker_sizes(pd.Series([n]), n_low, n_high)[0]), label=f"{n:,.0f}")
                    for n in sizes]
    alpha = law.params["alpha"]
    seeds = analysis.seeds
    law_handles = [] if seeds is None or not seeds.cells_with_seeds else [
        Patch(color="0.5", alpha=0.3, label=f"±1 seed std per cell\n(pooled {100 * math.expm1(seeds.log_std):.1f}%, "
                                             f"{seeds.seeds_per_cell:.2g} seeds)")]
    law_handles += [
        Line2D([], [], linestyle=":", color="black", linewidth=1.6,
               label=f"E(C) = a (b + C)^-\u03b1 + E\u221e\n\u03b1 = {estimate_interval(alpha, '.3f')}"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="black",
               label="compute-optimal"),
    ]
    if pruned.any():
        law_handles.append(Line2D([], [], marker="o", linestyle="--", color="0.5", markerfacecolor="none",
                                  label=f"pruned ({frame.loc[pruned, 'job_id'].nunique()} runs)"))
    if many:  # inside, top right: the runs fall with compute, so that corner is empty
        ax.legend(handles=law_handles + size_handles, title="fit; marker size = N", loc="upper right",
                  frameon=True, framealpha=0.85, edgecolor="0.8")
    else:
        ax.legend(handles=law_handles + size_handles, title="fit; marker size = N", loc="lower left",
                  bbox_to_anchor=(1.01, 0.0), frameon=False)
    return _save(figure, out, "fig1_error_vs_compute")


GROUP_COLOURS = ("#1f4e9c", "#d7263d", "#2a9d8f", "#e9a23b", "#6a4c93", "#555555")


def compare_error_vs_compute(analyses: dict[str, fits.Analysis], out: Path) -> list[Path]:
    """Fig. 1 of a comparison (compare.py): every group's points, trajectories and E(C) law in its colour."""
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(7.4, 4.6), layout="constrained")
        ax = figure.add_subplot()
        handles, low, high = [], math.inf, 0.0
        for (label, analysis), colour in zip(analyses.items(), GROUP_COLOURS * 4):
            frame = analysis.frame
            pflops = frame["compute"] / PFLOP
            for _, job in frame.sort_values("epochs").groupby("job_id"):
                ax.plot(job["compute"] / PFLOP, job["error"], color=colour, linewidth=0.6, alpha=0.35)
            ax.scatter(pflops, frame["error"], s=14, color=colour, alpha=0.8, edgecolors="white", linewidths=0.3)
            grid = np.geomspace(pflops.min(), pflops.max(), 200)
            ax.plot(grid, fits.compute_law(grid, analysis.compute), color=colour, linewidth=1.6)
            alpha = estimate_interval(analysis.compute.params["alpha"], ".3f")
            handles.append(Line2D([], [], color=colour, marker="o", label=f"{label}: \u03b1 = {alpha}"))
            low, high = min(low, frame["error"].min()), max(high, frame["error"].max())
        _log_axes(ax)
        ax.set_ylim(low * 0.93, high * 1.07)
        _plain_log_axis(ax.yaxis, low * 0.93, high * 1.07)
        ax.set_xlabel(COMPUTE_LABEL)
        first = next(iter(analyses.values()))
        ax.set_ylabel(f"{first.metric} {_value_name(first)}")
        ax.set_title(f"{first.metric}: {' vs '.join(analyses)} (points, trajectories, fitted E(C))")
        ax.legend(handles=handles, title="group: E(C) exponent", loc="upper right", frameon=True, framealpha=0.85)
        return _save(figure, out, "fig1_compare")


def _bottleneck_panel(ax, law: fits.LawFit | fits.Skipped, column: str, symbol: str, xlabel: str,  # noqa: ANN001
                      title: str, colours: dict) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if isinstance(law, fits.Skipped):  # wrapped inside the empty panel, clear of the axis labels
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.text(0.5, 0.5, "not fitted:\n" + textwrap.fill(law.reason, 38), transform=ax.transAxes, ha="center",
                va="center", fontsize=8, color="0.3")
        return
    points = law.points
    x = points[column].to_numpy(float)
    ax.scatter(x, points["error"], s=36, c=[colours.get(m, "0.4") for m in points["model"]],
               edgecolors="black", linewidths=0.4, zorder=3, label="best point")
    grid = np.geomspace(x.min() / 1.3, x.max() * 1.3, 200)
    ax.plot(grid, fits.saturating_law(grid, law), ":", color="black", linewidth=1.5,
            label=f"A {symbol}^-\u03b1 + E\u221e, \u03b1 = {estimate_interval(law.params['alpha'], '.3f')}")
    e_inf = law.value("E_inf")
    if e_inf > 0:
        ax.axhline(e_inf, color="0.35", linestyle="--", linewidth=0.9, zorder=0, label=f"E\u221e = {e_inf:.3f}")
    _log_axes(ax)
    low = min(points["error"].min(), e_inf if e_inf > 0 else points["error"].min()) * 0.95
    high = points["error"].max() * 1.05
    ax.set_ylim(low, high)
    _plain_log_axis(ax.yaxis, low, high)
    ax.legend(loc="upper right", frameon=False)


def bottlenecks(analysis: fits.Analysis, out: Path) -> list[Path]:
    """Fig. 6: error vs parameters when data is plentiful, and vs examples when parameters are."""
    colours, _ = _model_colours(analysis.frame)
    figure = Figure(figsize=(8.6, 3.6))
    left, right = figure.subplots(1, 2)
    largest_n = analysis.frame["examples"].max()
    _bottleneck_panel(left, analysis.bottleneck_params, "params", "P", "parameters P",
                      f"data plentiful: N = {largest_n:,}", colours)
    largest = analysis.frame.sort_values("params").iloc[-1]["model"]
    _bottleneck_panel(right, analysis.bottleneck_examples, "examples", "N", "examples N",
                      f"parameters plentiful: {largest}", colours)
    left.set_ylabel(f"{analysis.metric} {_value_name(analysis)}")
    figure.tight_layout()
    return _save(figure, out, "fig6_bottlenecks")


def allocation(analysis: fits.Analysis, out: Path) -> list[Path]:
    """Fig. 7: compute-optimal parameters and examples vs compute, per estimator."""
    figure = Figure(figsize=(8.6, 3.8))
    axes = figure.subplots(1, 2)
    fitted = [a for a in analysis.allocations if isinstance(a, fits.Allocation)]
    frame = analysis.frame
    grid = np.geomspace(frame["compute"].min() / PFLOP, frame["compute"].max() / PFLOP, 100)
    for ax, column, exponent, ylabel in ((axes[0], "params", "a", "parameters P*"),
                                         (axes[1], "examples", "b", f"examples N* (T = {analysis.epochs})")):
        handles = []
        for estimate in fitted:
            line, marker, colour = ESTIMATORS[estimate.estimator]
            value = getattr(estimate, exponent)
            intercept = estimate.p0 if column == "params" else estimate.n0
            span = grid  # a regression is drawn over the compute it was fitted on, the parametric law everywhere
            if marker:
                span = np.geomspace(estimate.points["pflops"].min() / 2, estimate.points["pflops"].max() * 2, 50)
            ax.plot(span, np.exp(intercept) * span**value.value, line, color=colour, linewidth=1.4)
            handles.append(Line2D([], [], linestyle=line, color=colour, linewidth=1.4, marker=marker, markersize=5,
                                  markerfacecolor="none", label=f"{estimate.estimator}: {exponent} = {estimate_interval(value, '.3f')}"))
            if marker:
                ax.scatter(estimate.points["pflops"], estimate.points[column], marker=marker, s=22,
                           facecolors="none", edgecolors=colour, linewidths=0.9, zorder=3)
        _log_axes(ax)
        ax.set_xlabel(COMPUTE_LABEL)
        ax.set_ylabel(ylabel)
        ax.legend(handles=handles, loc="upper left", frameon=False)
    for skipped in (a for a in analysis.allocations if isinstance(a, fits.Skipped)):
        axes[0].annotate(f"{skipped.name}: not fitted", (0.98, 0.04), xycoords="axes fraction", ha="right", fontsize=7)
    axes[0].set_title(f"P*(C) \u221d C^a  (envelope and iso-FLOP at T = {analysis.epochs})")
    axes[1].set_title("N*(C) \u221d C^b")
    figure.tight_layout()
    return _save(figure, out, "fig7_allocation")


def residuals(analysis: fits.Analysis, out: Path) -> list[Path]:
    """Log residuals log(E / E_pred) of the E(C) fit on the envelope points, in percent."""
    points = analysis.compute.points
    figure = Figure(figsize=(6.4, 3.2))
    ax = figure.add_subplot()
    relative = 100.0 * (np.log(points["error"]) - np.log(points["predicted"]))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.plot(points["pflops"], relative, "o", markersize=4, markerfacecolor="#1f4e9c", markeredgecolor="white",
            markeredgewidth=0.4)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(_tick))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(COMPUTE_LABEL)
    ax.set_ylabel("log(E / E_fit)  (%)")
    ax.set_title(f"residuals of the E(C) fit: {len(points)} compute-optimal points, "
                 f"median |r| = {np.median(np.abs(relative)):.2f}%")
    figure.tight_layout()
    return _save(figure, out, "residuals_compute")


def isoflop_profiles(analysis: fits.Analysis, out: Path) -> list[Path]:
    """On an iso-FLOP sweep: each budget's error over P, its parabola in log-log and its minimum
    (filled: interior, used; open: on an edge, left out), as Hoffmann et al.'s Fig. 3."""
    profiles = isoflop.budget_profiles(analysis.frame, analysis.epochs)
    if not profiles:
        return []
    figure = Figure(figsize=(7.4, 4.4), layout="constrained")
    ax = figure.add_subplot()
    logc = np.log([p["pflops"] for p in profiles])
    norm = Normalize(logc.min(), logc.max() if np.ptp(logc) else logc.min() + 1)
    for profile, lc in zip(profiles, logc):
        colour = SIZES(norm(lc))
        ax.scatter(profile["params"], profile["error"], s=22, color=colour, edgecolors="white", linewidths=0.4, zorder=3)
        grid = np.geomspace(profile["params"].min(), profile["params"].max(), 100)
        ax.plot(grid, np.exp(np.polyval(profile["coef"], np.log(grid))), "-", color=colour, linewidth=1.0, alpha=0.8)
        if profile["vertex"] is not None and profile["interior"]:
            best = np.exp(np.polyval(profile["coef"], math.log(profile["vertex"])))
            ax.plot(profile["vertex"], best, "*", color=colour, markersize=11, markeredgecolor="black",
                    markeredgewidth=0.5, zorder=4)
        ax.annotate(f"{profile['pflops']:.3g}",
                    (profile["params"].max(), profile["error"][np.argmax(profile["params"])]),
                    xytext=(4, 0), textcoords="offset points", fontsize=7, color=colour, va="center")
    _log_axes(ax)
    low, high = min(p["error"].min() for p in profiles), max(p["error"].max() for p in profiles)
    ax.set_ylim(low * 0.97, high * 1.03)
    _plain_log_axis(ax.yaxis, low * 0.97, high * 1.03)
    ax.set_xlabel("parameters P")
    ax.set_ylabel(f"{analysis.metric} {_value_name(analysis)}")
    used = sum(p["interior"] for p in profiles)
    ax.set_title(f"iso-FLOP profiles at T = {analysis.epochs}: {len(profiles)} budgets (PFLOPs at the right), "
                 f"{used} interior minima (stars)")
    return _save(figure, out, "fig_isoflop_profiles")


BACKTEST_STYLE = {"compute": ("-", "o", "#1f4e9c", "E(C), Eq. 5"), "parametric": ("--", "s", "#d7263d", "E(P, D = N T)"),
                  "data_constrained": (":", "^", "#222222", "E(P, D')")}


def backtest(analysis: fits.Analysis, out: Path) -> list[Path]:
    """Rolling-origin back-test: each law's error above a compute level when fitted only below it."""
    if not analysis.backtest:
        return []
    table = pd.DataFrame([r.__dict__ for r in analysis.backtest])
    figure = Figure(figsize=(6.4, 3.4))
    ax = figure.add_subplot()
    best = fits.best_law(analysis.backtest)
    for law, rows in table.groupby("law"):
        line, marker, colour, label = BACKTEST_STYLE.get(law, ("-", "o", "0.4", law))
        rows = rows.sort_values("threshold_pflops")
        ax.plot(rows["threshold_pflops"], 100 * rows["mean_abs_rel_error"], line, marker=marker, color=colour,
                markersize=5, linewidth=1.3, label=label + (" (best)" if law == best else ""))
    ax.set_xscale("log")
    low, high = table["threshold_pflops"].min() / 1.2, table["threshold_pflops"].max() * 1.2
    ax.set_xlim(low, high)
    _plain_log_axis(ax.xaxis, low, high)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("fitted below this compute (PFLOPs)")
    ax.set_ylabel("mean |relative error| above it (%)")
    ax.set_title("rolling-origin back-test on the compute-optimal points")
    ax.legend(loc="upper right", frameon=False)
    figure.tight_layout()
    return _save(figure, out, "fig_backtest")


FIGURES = (error_vs_compute, bottlenecks, allocation, residuals, backtest, isoflop_profiles)
_TO_DRAW: tuple[fits.Analysis, Path] | None = None  # what forked workers draw: inherited, never pickled


def _draw(figure) -> list[Path]:  # noqa: ANN001 - one of FIGURES
    analysis, out = _TO_DRAW
    with matplotlib.rc_context(STYLE):
        return figure(analysis, out)


def write_figures(analysis: fits.Analysis, out: Path, workers: int | None = None) -> list[Path]:
    """Every figure, as PNG (200 dpi), PDF and SVG, into `out`. Drawing is single-threaded Python,
    so where the machine has spare cores (workers: default, the cores this process may use) the
    figures are drawn in forked processes at once."""
    global _TO_DRAW
    _TO_DRAW = analysis, Path(out)
    try:
        workers = min(len(FIGURES), usable_cores() if workers is None else workers)
        if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
            return [path for figure in FIGURES for path in _draw(figure)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return [path for paths in pool.map(_draw, FIGURES) for path in paths]
    finally:
        _TO_DRAW = None
