"""Results in, fitted and out: `study import`, `export`, `fit`, `predict` and `report`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import db
from ..checks import printable
from ..errors import BadInput
from ..formatting import estimate_interval, interval, row_interval
from .common import DbOption, app, console, errors, one_study, user_errors, wrapping_table


@app.command("import")
@user_errors
def import_results(
    file: Annotated[Path, typer.Argument(help="CSV: model, params, flops_per_example, examples, epochs, error[, metric, seed]")],
    study: Annotated[Optional[str], typer.Option(help="Study to import into [default: the file's `study` column, else its name]")] = None,
    db_url: DbOption = None,
) -> None:
    """Import results produced elsewhere; every bad row is reported and then nothing is imported."""
    from ..exchange import BadRows, read_results_csv

    try:
        trajectories = read_results_csv(file, study)
    except BadRows as bad:  # one line per bad row, then the summary as the error
        for row in bad.rows:
            errors.print(printable(row), markup=False, highlight=False, soft_wrap=True)
        raise BadInput(bad.summary) from None
    engine = db.connect(db_url)
    jobs_added, points_added, present = db.import_trajectories(engine, str(file), trajectories)
    names = sorted({t["study"] for t in trajectories})
    console.print(
        f"imported {points_added} evaluation points ({present} already present) in {len(trajectories)} trajectories "
        f"({jobs_added} new jobs) into study {', '.join(names)}",
        markup=False, highlight=False,
    )


@app.command("export")
@user_errors
def export_results(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Only this study")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Only this metric, e.g. cifar100/linear")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
    out: Annotated[Optional[Path], typer.Option(help="File to write [default: evaluations.<format>]")] = None,
) -> None:
    """Write every evaluation point (one row per job, epoch and metric) as CSV or Parquet."""
    from ..exchange import export_target, write_frame

    target = export_target(fmt, out)
    engine = db.connect(db_url, create=False, write=False)
    if study:
        one_study(engine, study)
    frame = db.evaluations_frame(engine, study, metric)
    if frame.empty:
        raise BadInput("no evaluation points to export" + (f" for metric {metric!r}" if metric else ""))
    path = write_frame(frame, target, fmt)
    console.print(f"wrote {len(frame)} evaluation points to {path}", markup=False, highlight=False)


@app.command("fit")
@user_errors
def fit_laws(
    db_url: DbOption = None,
    study: Annotated[Optional[list[str]], typer.Option(help="Study to fit [default: the only one in the database]; "
                                                       "repeat to compare studies")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Metric [default: the first */linear, else upstream/top1]")] = None,
    kind: Annotated[Optional[str], typer.Option(help="Only models of this kind: bottleneck (B-MLP), standard (S-MLP), "
                                                "or a family (cnn, vit, module:callable)")] = None,
    compare_kinds: Annotated[bool, typer.Option("--compare-kinds", help="Fit each model kind of the study on its own "
                                                "and compare them")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="T of the envelope and iso-FLOP allocation [default: the smallest T]")] = None,
    exclude: Annotated[Optional[list[int]], typer.Option(help="Leave out this job id (repeat for more)")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% intervals")] = 1000,
    out: Annotated[Path, typer.Option(help="Directory for the figures, report.md, fit.json and index.html")] = Path("reports"),
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resamples")] = 0,
    merge_sizes: Annotated[float, typer.Option(min=0.0, max=0.5, help="Merge models whose parameter counts differ by less than this relative tolerance")] = 0.01,
    budget_tolerance: Annotated[float, typer.Option(min=1e-6, max=2.0, help="Points whose log compute differ by at most this share an iso-FLOP budget")] = 0.1,
    page: Annotated[bool, typer.Option("--page/--no-page", help="Also write the study's page, index.html")] = True,
    runs_dir: Annotated[Path, typer.Option(help="Job folders, for the page's loss curves", envvar="STUDY_RUNS")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print fit.json (every number) instead of the tables")] = False,
) -> None:
    """Fit E(C), the bottleneck laws and the compute-optimal allocation; write figures, a report and the page."""
    from .. import analysis as fits
    from ..analysis import identifiability
    from ..analysis.select import check_kind
    from ..report import fit_study, writable_folder, write_study_page

    check_kind(kind)
    writable_folder(out)
    engine = db.connect(db_url, create=False, write=False)
    if compare_kinds or len(study or []) > 1:
        compare_groups(engine, study, compare_kinds, metric, kind, epochs, exclude or (), bootstrap, seed, merge_sizes,
                       budget_tolerance, out)
        return
    name = one_study(engine, study[0] if study else None)
    done = fit_study(engine, name, out, metric, kind, epochs, exclude or (), bootstrap, seed, merge_sizes, budget_tolerance)
    analysis, written = done.analysis, list(done.files)
    if page:
        written.append(write_study_page(engine, name, out, runs_dir))

    if as_json:
        from ..report import JSON_NAME

        print((out / JSON_NAME).read_text(), end="")
        return
    laws = wrapping_table(f"study {name!r}, {analysis.metric}: {len(done.points)} points, 95% bootstrap intervals",
                          ["law", "points", "alpha", "E_inf", "status"], left={"law", "status"})
    named = (("E(C) envelope", analysis.compute), ("E vs params", analysis.bottleneck_params),
             ("E vs examples", analysis.bottleneck_examples), ("E(P, D)", analysis.parametric))
    if analysis.data_constrained is not None:
        named += (("E(P, D')", analysis.data_constrained),)
    for label, law in named:
        if isinstance(law, fits.Skipped):
            laws.add_row(label, "", "", "", f"not fitted: {law.reason}")
        else:
            alpha = estimate_interval(law.params["alpha"], ".3g")
            if "beta" in law.params:
                alpha += f", beta {estimate_interval(law.params['beta'], '.3g')}"
            laws.add_row(label, str(len(law.points)), alpha, estimate_interval(law.params["E_inf"], ".3g"),
                         identifiability.status_text(law.status, identifiability.law_flags(law)))
    console.print(laws)
    allocation = wrapping_table(f"compute-optimal allocation P* ~ C^a, N* ~ C^b (T = {analysis.epochs})",
                                ["estimator", "a", "b", "mode"], left={"estimator", "mode"})
    for estimate in analysis.allocations:
        if isinstance(estimate, fits.Skipped):
            allocation.add_row(estimate.name, "not fitted", estimate.reason, "")
        else:
            allocation.add_row(estimate.estimator, estimate_interval(estimate.a, ".3g"), estimate_interval(estimate.b, ".3g"),
                               identifiability.status_text(estimate.mode, identifiability.allocation_flags(estimate)))
    console.print(allocation)
    for line in fits.summary_lines(analysis):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    sweep = analysis.sweep
    console.print(f"sweep: {sweep['mode']} ({sweep['reason']})", markup=False, highlight=False, soft_wrap=True)
    for name, flags in identifiability.analysis_flags(analysis).items():
        for flag in flags:
            console.print(f"not identified: {name} {flag['param']}: {flag['reason']}", markup=False, highlight=False,
                          soft_wrap=True)
    for group in sweep["merged_sizes"]["groups"]:
        if group["merged"]:
            console.print(f"merged into {group['model']}: " + ", ".join(m["model"] for m in group["merged"]),
                          markup=False, highlight=False, soft_wrap=True)
        if group.get("kept_apart"):
            console.print(f"kept apart from {group['model']} (near-equal size, but both ran the same N, T and seed): "
                          + ", ".join(m["model"] for m in group["kept_apart"]), markup=False, highlight=False,
                          soft_wrap=True)
    if pruned := done.pruned:
        saved = sum(p["saved_pflops"] for p in pruned)
        table = wrapping_table(f"pruned trajectories (adaptive): {len(pruned)}, saving {saved:.3g} PFLOPs",
                               ["job", "model", "N", "epochs run", "saved PFLOPs", "closest point vs envelope"],
                               left={"model", "closest point vs envelope"})
        for p in pruned:
            table.add_row(str(p["job_id"]), p["model"], f"{p['examples']:,}", f"{p['epochs_done']}/{p['epochs']}",
                          f"{p['saved_pflops']:.3g}", f"T = {p['epoch']}: low {p['low']:.4f} > {p['envelope']:.4f}")
        console.print(table)
    console.print("wrote " + ", ".join(str(p) for p in [*done.figures, *written]), markup=False, highlight=False)


def compare_groups(engine, studies: list[str] | None, by_kind: bool, metric: str | None, kind: str | None,
                   epochs: int | None, exclude: Sequence[int], bootstrap: int, seed: int, merge_sizes: float,
                   budget_tolerance: float, out: Path) -> None:
    """`study fit` over two studies, or over the kinds of one: each fitted on its own, then side by side."""
    from .. import compare
    from ..report import _unwritable

    if len(studies or []) > 1 and by_kind:
        raise BadInput("--compare-kinds compares the kinds of one study; with two --study, leave it out")
    names = [one_study(engine, s) for s in studies] if studies else [one_study(engine, None)]
    analyses = compare.compare(compare.groups(engine, names, by_kind, metric, kind, exclude), epochs, bootstrap, seed,
                               merge_sizes, budget_tolerance)
    try:
        written, rows = compare.write(analyses, out)
    except OSError as error:
        raise _unwritable(out, error) from None
    labels = list(analyses)
    first = next(iter(analyses.values()))
    pairs = list(rows[0]["verdicts"]) if rows else []
    table = wrapping_table(f"{' vs '.join(labels)}, {first.metric}: 95% bootstrap intervals, each group fitted on its own",
                           ["quantity", *labels, *pairs], left={"quantity", *pairs})
    for row in rows:
        cells = [interval(row["groups"][label]["value"], row["groups"][label]["low"], row["groups"][label]["high"], ".3g")
                 for label in labels]
        table.add_row(row["quantity"], *cells, *({True: "differ", False: "no", None: "-"}[row["verdicts"][pair]["differ"]] for pair in pairs))
    console.print(table)
    console.print("differ: the 95% interval of the difference of the bootstrap draws excludes 0 (see report.md)",
                  markup=False, highlight=False, soft_wrap=True)
    console.print("wrote " + ", ".join(str(p) for p in written if p.suffix in (".png", ".json", ".md")),
                  markup=False, highlight=False, soft_wrap=True)


@app.command("predict")
@user_errors
def predict(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Study to fit [default: the only one in the database]")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Metric [default: the first */linear, else upstream/top1]")] = None,
    kind: Annotated[Optional[str], typer.Option(help="Only models of this kind: bottleneck, standard, or a family")] = None,
    model: Annotated[Optional[str], typer.Option(help="Predict a run of this model (with --examples and --epochs)")] = None,
    params: Annotated[Optional[float], typer.Option(help="Predict a run of a model of this many parameters, in the study or not (with --examples and --epochs)")] = None,
    flops_per_example: Annotated[Optional[float], typer.Option(help="FLOP(f) of the --params model [default: the study's log-log fit of FLOP(f) on P]")] = None,
    examples: Annotated[Optional[int], typer.Option(help="N of the run to predict")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="T of the run to predict; with --compute, the T of the allocation")] = None,
    compute: Annotated[Optional[float], typer.Option(help="Target compute in PFLOPs: the best value and (P*, N*) there")] = None,
    exclude: Annotated[Optional[list[int]], typer.Option(help="Leave out this job id (repeat for more)")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% intervals")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resamples")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Predict a run's value, or the compute-optimal (P*, N*) at a compute, with 95% intervals."""
    from ..analysis.predict import answer as prediction
    from ..analysis.predict import check_question
    from ..analysis.select import check_kind

    check_question(model, examples, epochs, compute, params, flops_per_example)
    check_kind(kind)
    engine = db.connect(db_url, create=False, write=False)  # predict only reads
    name = one_study(engine, study)
    answer = prediction(db.evaluations_frame(engine, name, metric), name, metric, kind, exclude or (), model, examples,
                        epochs, compute, bootstrap, seed, params, flops_per_example)
    if as_json:
        from ..report import json_text

        print(json_text(answer))
        return
    if "run" in answer:
        run = answer["run"]
        size = run["model"] or f"a model of {run['params']:.4g} parameters (FLOP(f) {run['flops_per_example']:.4g})"
        console.print(f"{size} at N = {run['examples']:,}, T = {run['epochs']} ({run['pflops']:.3g} PFLOPs): "
                      f"{run['metric']} {run['metric_kind']} {row_interval(run['prediction'])} (95% prediction interval"
                      f"{interval_kind(run['prediction'])}, {run['chosen_form']} form)", markup=False, highlight=False,
                      soft_wrap=True)
        for form, row in run["forms"].items():
            if form != run["chosen_form"]:
                console.print(f"  {form} form: {row_interval(row)}", markup=False, highlight=False)
        for note in run["notes"]:
            console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if "compute" in answer:
        at = answer["compute"]
        console.print(f"at {at['pflops']:.4g} PFLOPs ({at['extrapolation']:.3g}x the largest run): best "
                      f"{at['metric_kind']} {row_interval(at['compute_law'])}{interval_kind(at['compute_law'])} by "
                      f"{at['compute_law']['formula']}", markup=False, highlight=False, soft_wrap=True)
        table = wrapping_table(f"compute-optimal allocation at {at['pflops']:.4g} PFLOPs (T = {at['epochs_for_allocation']}), "
                               "95% intervals", ["estimator", "P*", "N*", f"{at['metric_kind']} there"], left={"estimator"})
        for estimator, row in at["allocation"].items():
            if "skipped" in row:
                table.add_row(estimator, "not fitted", row["skipped"], "")
            else:
                there = row.get("value_there")
                table.add_row(estimator, row_interval(row, "params"), row_interval(row, "examples"), "" if there is None else f"{there:.4g}")
        console.print(table)
        for note in at["notes"]:
            console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


def interval_kind(row: dict) -> str:
    """', calibrated on the back-test' when the interval was widened by the calibration."""
    return ", calibrated on the back-test" if row.get("calibrated") else ""


@app.command("report")
@user_errors
def report_page(
    db_url: DbOption = None,
    study: Annotated[Optional[str], typer.Option(help="Study to show [default: the only one in the database]")] = None,
    out: Annotated[Path, typer.Option(help="Directory of the page (index.html) and of the fit it shows")] = Path("reports"),
    runs_dir: Annotated[Path, typer.Option(help="Job folders, for the loss curves", envvar="STUDY_RUNS")] = Path("runs"),
    fit: Annotated[bool, typer.Option("--fit/--no-fit", help="Refit first when points landed after the last fit "
                                      "(same metric, kind and exclusions as that fit)")] = True,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples of a refit")] = 1000,
    watch: Annotated[bool, typer.Option("--watch", help="Keep rewriting the page as results land, until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between looks at the database with --watch")] = 10.0,
) -> None:
    """Write reports/index.html: the study's state, fits, figures and every job's loss curve, in one file."""
    from .. import page
    from ..report import refit_if_stale, writable_folder, write_study_page

    writable_folder(out)
    engine = db.connect(db_url, create=False, write=False)
    name = one_study(engine, study)

    def write() -> Path:
        note = refit_if_stale(engine, name, out, bootstrap) if fit else ""  # too few points yet, say: the page shows why
        path = write_study_page(engine, name, out, runs_dir, note=note, refresh_s=interval if watch else None)
        console.print(f"wrote {path}" + (f" ({note})" if note else ""), markup=False, highlight=False, soft_wrap=True)
        return path

    if not watch:
        write()
        return
    console.print(f"watching study {name!r} every {interval:g} s; Ctrl-C stops", markup=False, highlight=False)
    page.watch(engine, name, out, runs_dir, interval, write)
    console.print("stopped watching", markup=False, highlight=False)
