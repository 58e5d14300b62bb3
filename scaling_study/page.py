"""reports/index.html: the whole study on one self-contained page (inline SVG and CSS, no network, no server).

What it shows: the study's state (jobs by state, compute spent against planned, an ETA at the rate
so far), the fits with their intervals and the estimators' table (from fit.json), the figures
(the SVGs `study fit` writes, inlined), runs that stopped early (pruned, failed, diverged,
cancelled, or any other state) with their reason, and every job's loss curve (its curve.csv,
else the train loss at its evaluation epochs). `study fit` writes it after each fit;
`study report` writes it alone, and `--watch` rewrites it (atomically) whenever the database or
a running job's curve changes. A tiny inline script records any page error in the <html>
element's data-errors attribute, and where each figure was laid out in data-figures, which the
browser test reads.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from . import budget, db
from .curves import read_csv_curve
from .files import job_dir, write_atomic
from .formatting import duration, pflops, row_interval
from .progress import eta_seconds

PAGE_NAME = "index.html"
CURVE_POINTS = 120  # a job's curve is drawn from at most this many points (block means)
KNOWN_KEYS = {"study", "metric", "filters", "compute_unit", "points", "runs", "models", "envelope_points",
              "epochs_for_allocation", "bootstrap_resamples", "seed", "huber_delta", "flops_per_example", "laws",
              "allocation", "held_out", "figures", "provenance"}
LAW_TITLES = {"compute": "E(C), compute-optimal envelope (Eq. 5)", "bottleneck_params": "E vs parameters (data plentiful)",
              "bottleneck_examples": "E vs examples (parameters plentiful)", "parametric": "E(P, D), parametric"}
STATE_COLOURS = {"pending": "#9aa5b1", "running": "#1f77b4", "done": "#2a9d55", "failed": "#d7263d",
                 "diverged": "#e07b00", "cancelled": "#6c757d", "pruned": "#8e44ad"}


# ---- What the page shows, read from the database and the job folders ----

def study_state(engine, study: str) -> dict:  # noqa: ANN001 - an Engine
    """Jobs by state (any state the database holds), compute spent, planned and to go, and an ETA."""
    rows = db.job_rows(engine, study)
    counts: dict[str, int] = {}
    spent = planned = to_go = 0.0
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
        examples = db._examples_per_epoch(row)
        full = budget.compute(row["flops_per_example"], examples, row["epochs"])
        done = budget.compute(row["flops_per_example"], examples, min(row["epochs_done"], row["epochs"]))
        planned += full
        spent += done
        if row["state"] in ("pending", "running"):
            to_go += full - done
    ordered = [s for s in db.JOB_STATES if s in counts] + sorted(s for s in counts if s not in db.JOB_STATES)
    started = [row["started_at"] for row in rows if row["started_at"]]
    now = db.now()
    running = [row for row in rows if row["state"] == "running"]
    eta = eta_seconds((now - min(started)).total_seconds(), spent, to_go) if running and started else None
    return {"study": study, "jobs": rows, "counts": {s: counts[s] for s in ordered}, "spent": spent,
            "planned": planned, "to_go": to_go, "eta_s": eta, "running": running, "now": now}


def _binned(points: list[tuple[float, float]], bins: int = CURVE_POINTS) -> list[tuple[float, float]]:
    """At most `bins` points: the mean of each run of consecutive points."""
    if len(points) <= bins:
        return points
    size = len(points) / bins
    out = []
    for i in range(bins):
        part = points[round(i * size):round((i + 1) * size)]
        if part:
            out.append((sum(x for x, _ in part) / len(part), sum(y for _, y in part) / len(part)))
    return out


def job_curves(engine, rows: list[dict], runs_dir: Path,  # noqa: ANN001 - an Engine
               metric: str | None = None) -> dict[int, tuple[str, list[tuple[float, float]]]]:
    """{job id: (what is drawn, [(x, y)])}: curve.csv's step losses, else the recorded train/loss per
    epoch, else (an imported study has no loss) the fitted metric's error per epoch."""
    wanted = ["train/loss"] + ([metric] if metric else [])
    with engine.connect() as conn:
        recorded = conn.execute(
            sa.select(db.evaluations.c.job_id, db.evaluations.c.metric, db.evaluations.c.epoch, db.evaluations.c.value)
            .where(db.evaluations.c.metric.in_(wanted), db.evaluations.c.job_id.in_([r["id"] for r in rows]))
            .order_by(db.evaluations.c.job_id, db.evaluations.c.epoch)
        ).all()
    by_job: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for job_id, name, epoch, value in recorded:
        by_job.setdefault((job_id, name), []).append((float(epoch), float(value)))
    curves = {}
    for row in rows:
        steps = read_csv_curve(job_dir(runs_dir, row))
        if steps:
            curves[row["id"]] = ("train loss vs step", _binned([(float(s), v) for s, v in steps]))
        elif (row["id"], "train/loss") in by_job:
            curves[row["id"]] = ("train loss vs epoch", by_job[row["id"], "train/loss"])
        elif metric and (row["id"], metric) in by_job:
            curves[row["id"]] = (f"{metric} error vs epoch", by_job[row["id"], metric])
    return curves


def load_fit(out: Path, study: str) -> dict | None:
    """fit.json in `out` if it is this study's, else None."""
    path = Path(out) / "fit.json"
    try:
        fit = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return fit if isinstance(fit, dict) and fit.get("study") == study else None


def figure_svgs(out: Path, fit: dict | None) -> list[tuple[str, str]]:
    """(name, <svg>...</svg>) of each figure of the fit, read from its SVG files in `out`."""
    if not fit:
        return []
    stems = list(dict.fromkeys(Path(p).stem for p in fit.get("figures", [])))
    found = []
    for stem in stems:
        path = Path(out) / f"{stem}.svg"
        if path.exists():
            found.append((stem, inline_svg(path.read_text())))
    return found


def inline_svg(text: str) -> str:
    """An SVG file as an element of the page: without its XML prolog, its metadata and its namespace
    declarations (the HTML parser supplies them), so that the page names no URL at all; made compact
    (see `_compact`)."""
    text = text[text.find("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, count=1, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text[:text.find(">") + 1], count=2) + text[text.find(">") + 1:]
    return _compact(text)


_CIRCLE = re.compile(r'<path d="(M [-\d. ]+\n(?:C [-\d. ]+\n){8}z\n)"([^>]*)/>')


def _as_circle(match: re.Match) -> str:
    """matplotlib draws each scatter marker as a path of 8 Bezier arcs (700 bytes); a <circle> is 100."""
    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", match.group(1))]
    xs, ys = numbers[0::2], numbers[1::2]
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    if abs(width - height) > 1e-3 * max(width, 1e-9):
        return match.group(0)
    return (f'<circle cx="{(max(xs) + min(xs)) / 2:.2f}" cy="{(max(ys) + min(ys)) / 2:.2f}" '
            f'r="{width / 2:.2f}"{match.group(2)}/>')


def _compact(svg: str) -> str:
    """Scatter markers as circles and coordinates to 1/100 pt: a 5,000-point figure shrinks fivefold."""
    svg = _CIRCLE.sub(_as_circle, svg)
    return re.sub(r"(\d\.\d\d)\d+", r"\1", svg)


# ---- HTML ----

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2733;background:#f5f7fa}
header{background:#1d2733;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}header p{margin:2px 0 0;color:#c9d3de}
main{padding:12px 24px 40px;max-width:1400px}section{background:#fff;border:1px solid #dde3ea;border-radius:6px;margin:14px 0;padding:12px 16px}
h2{font-size:16px;margin:4px 0 10px}h3{font-size:14px;margin:12px 0 6px}
table{border-collapse:collapse;margin:4px 0 8px}td,th{border-bottom:1px solid #e6eaef;padding:3px 10px;text-align:right;vertical-align:top}
td:last-child{text-align:left;max-width:560px}
th{background:#f0f3f6;font-weight:600}td:first-child,th:first-child{text-align:left}
.bar{display:flex;height:14px;border-radius:3px;overflow:hidden;background:#e6eaef;margin:6px 0;max-width:700px}
.bar span{display:block;height:100%}.legend span{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 12px}
.figures figure{display:inline-block;margin:6px 12px 12px 0;vertical-align:top}.figures svg{max-width:100%;height:auto}
figcaption{font-size:12px;color:#5a6b7b}.note{color:#5a6b7b}.warn{color:#b23a00}
.jobs{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:8px}
.job{border:1px solid #e6eaef;border-radius:4px;padding:4px 6px 2px}.job p{margin:0;font-size:12px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.nw{white-space:nowrap}.job svg{display:block}.state{font-weight:600}pre{background:#f0f3f6;padding:8px;overflow:auto;max-height:400px;font-size:12px}
"""

ERROR_SCRIPT = """(function(){var seen=[];function note(m){seen.push(String(m));
document.documentElement.setAttribute('data-errors',seen.join(' | '));}
window.addEventListener('error',function(e){var t=e.target;note(e.message||('failed to load '+((t&&(t.src||t.href))||'a resource')));},true);
window.addEventListener('unhandledrejection',function(e){note('unhandled rejection: '+e.reason);});
var original=console.error;console.error=function(){note(Array.prototype.join.call(arguments,' '));original.apply(console,arguments);};
document.addEventListener('DOMContentLoaded',function(){document.documentElement.setAttribute('data-ready','1');});
window.addEventListener('load',function(){var boxes={};document.querySelectorAll('figure[id^="figure-"]').forEach(function(f){
var r=f.querySelector('svg').getBoundingClientRect();boxes[f.id.slice(7)]=[Math.round(r.left+scrollX),Math.round(r.top+scrollY),
Math.round(r.width),Math.round(r.height)];});document.documentElement.setAttribute('data-figures',JSON.stringify(boxes));});})();"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A table of already escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _state_section(state: dict) -> str:
    counts, total = state["counts"], max(1, sum(state["counts"].values()))
    bar = "".join(f'<span style="width:{100 * n / total:.3f}%;background:{STATE_COLOURS.get(s, "#555")}" '
                  f'title="{_e(s)}: {n}"></span>' for s, n in counts.items())
    legend = "".join(f'<span style="background:{STATE_COLOURS.get(s, "#555")}"></span>{_e(s)} {n}'
                     for s, n in counts.items())
    share = state["spent"] / state["planned"] if state["planned"] else 0.0
    if state["eta_s"] is not None:
        eta = f"ETA {duration(state['eta_s'])} at the rate so far ({len(state['running'])} running)"
    elif state["to_go"] > 0:
        eta = "no job running: no ETA (`study run --resume` continues)"
    else:
        eta = "nothing left to run"
    rows = [[_e(s), str(n)] for s, n in counts.items()]
    running = ""
    if state["running"]:
        running = "<h3>Running</h3>" + _table(
            ["job", "model", "N", "seed", "epochs", "worker"],
            [[str(r["id"]), _e(r["model"]), f"{r['examples']:,}", str(r["seed"]), f"{r['epochs_done']}/{r['epochs']}",
              _e(r["worker"] or "")] for r in state["running"]])
    return (f'<section id="state"><h2>State</h2><div class="bar">{bar}</div><div class="legend">{legend}</div>'
            + _table(["state", "jobs"], rows + [["<b>total</b>", f"<b>{total}</b>"]])
            + f"<p>Compute: <b>{pflops(state['spent'], 4)}</b> of {pflops(state['planned'], 4)} PFLOPs planned "
            f"({share:.1%}); {pflops(state['to_go'], 4)} PFLOPs to go. {_e(eta)}.</p>"
            f'<div class="bar"><span style="width:{100 * share:.3f}%;background:#1f77b4"></span></div>{running}</section>')


def _fit_section(fit: dict | None, note: str) -> str:
    if not fit:
        why = note or "no fit yet: `study fit` (or `study report`, once points are recorded) writes one"
        return f'<section id="fits"><h2>Fits</h2><p class="note">{_e(why)}</p></section>'
    parts = [f'<section id="fits"><h2>Fits: {_e(fit.get("metric"))}</h2>',
             f'<p class="note">{_e(fit.get("points"))} points of {_e(fit.get("runs"))} runs, '
             f'{_e(fit.get("bootstrap_resamples"))} bootstrap resamples, 95% intervals; fitted '
             f'{_e((fit.get("provenance") or {}).get("created", "?"))}. {_e(fit.get("compute_unit", ""))}</p>']
    if note:
        parts.append(f'<p class="warn">{_e(note)}</p>')
    rows = []
    for key, law in (fit.get("laws") or {}).items():
        title = _e(LAW_TITLES.get(key, key))
        if not isinstance(law, dict) or "skipped" in law:
            rows.append([title, "", "", f"not fitted: {_e((law or {}).get('skipped', ''))}"])
            continue
        params = "<br>".join(f'<span class="nw">{_e(name)} = {_e(row_interval(value))}</span>'
                             for name, value in (law.get("params") or {}).items())
        rows.append([f"{title}<br><small>{_e(law.get('formula', ''))}</small>", _e(law.get("points", "")), params,
                     _e(law.get("status", ""))])
    parts.append("<h3>Laws</h3>" + _table(["law", "points", "parameters [95% interval]", "status"], rows))
    rows = []
    for name, estimate in (fit.get("allocation") or {}).items():
        if not isinstance(estimate, dict) or "skipped" in estimate:
            rows.append([_e(name), "–", "–", f"not fitted: {_e((estimate or {}).get('skipped', ''))}"])
        else:
            rows.append([_e(name), _e(row_interval(estimate.get("a"))), _e(row_interval(estimate.get("b"))),
                         _e(estimate.get("method", ""))])
    parts.append(f"<h3>Compute-optimal allocation: P* ~ C^a, N* ~ C^b (T = {_e(fit.get('epochs_for_allocation'))})</h3>"
                 + _table(["estimator", "a [95%]", "b [95%]", "method"], rows))
    rows = []
    for name, check in (fit.get("held_out") or {}).items():
        if not isinstance(check, dict) or "skipped" in check:
            rows.append([_e(name), "–", "–", f"not done: {_e((check or {}).get('skipped', ''))}"])
        else:
            mean, worst = check.get("mean_abs_relative_error"), check.get("max_abs_relative_error")
            rows.append([_e(name), _e(f"{check.get('train_points')} / {check.get('test_points')}"),
                         _e(f"{mean:.2%}" if mean is not None else "–"), _e(f"{worst:.2%}" if worst is not None else "–")])
    if rows:
        parts.append("<h3>Held-out check (top compute held out)</h3>"
                     + _table(["law", "train / held-out points", "mean abs rel. error", "max abs rel. error"], rows))
    extra = {k: v for k, v in fit.items() if k not in KNOWN_KEYS}
    if extra:  # results other parts of `study fit` add: shown as they are
        text = json.dumps(extra, indent=1, default=str)
        if len(text) > 50_000:
            text = text[:50_000] + "\n..."
        parts.append(f"<details><summary>More results ({_e(', '.join(extra))})</summary><pre>{_e(text)}</pre></details>")
    return "".join(parts) + "</section>"


def _figures_section(figures: list[tuple[str, str]]) -> str:
    if not figures:
        return ""
    items = "".join(f'<figure id="figure-{_e(stem)}">{svg}<figcaption>{_e(stem)}</figcaption></figure>'
                    for stem, svg in figures)
    return f'<section id="figures" class="figures"><h2>Figures</h2>{items}</section>'


def _stopped_section(rows: list[dict]) -> str:
    stopped = [r for r in rows if r["state"] not in ("pending", "running", "done")]
    if not stopped:
        return ""
    pruned = sum(r["state"] == "pruned" for r in stopped)
    title = f"Runs stopped early ({pruned} pruned)" if pruned else "Runs stopped early"
    body = _table(["job", "model", "N", "seed", "state", "epochs", "reason"],
                  [[str(r["id"]), _e(r["model"]), f"{r['examples']:,}", str(r["seed"]), _e(r["state"]),
                    f"{r['epochs_done']}/{r['epochs']}", f'<span style="white-space:normal">{_e(r["error"] or "")}</span>']
                   for r in stopped])
    return f'<section id="stopped"><h2>{title}</h2>{body}</section>'


def curve_svg(points: list[tuple[float, float]], colour: str, width: int = 228, height: int = 64) -> str:
    """A small line chart of (x, y) with the first and last y printed; an empty frame without points."""
    frame = f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#fbfcfd" stroke="#e6eaef"/>'
    if not points:
        return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">{frame}'
                f'<text x="{width / 2}" y="{height / 2 + 4}" font-size="10" fill="#9aa5b1" text-anchor="middle">'
                "no curve yet</text></svg>")
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    left, right, top, bottom = 4, 4, 6, 12
    sx = (width - left - right) / ((x1 - x0) or 1)
    sy = (height - top - bottom) / ((y1 - y0) or 1)
    path = " ".join(f"{left + (x - x0) * sx:.1f},{top + (y1 - y) * sy:.1f}" for x, y in points)
    marks = "" if len(points) > 1 else f'<circle cx="{left}" cy="{top}" r="2" fill="{colour}"/>'
    label = f"{ys[0]:.3g} \u2192 {ys[-1]:.3g} (min {y0:.3g})"
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">{frame}'
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.3" points="{path}"/>{marks}'
            f'<text x="{left}" y="{height - 2}" font-size="9" fill="#5a6b7b">{_e(label)}</text></svg>')


def _jobs_section(rows: list[dict], curves: dict) -> str:
    cards = []
    for r in rows:
        axis, points = curves.get(r["id"], ("no curve recorded", []))
        colour = STATE_COLOURS.get(r["state"], "#555")
        cards.append(f'<div class="job" id="job-{r["id"]}"><p><b>#{r["id"]}</b> {_e(r["model"])} N={r["examples"]:,} '
                     f'seed {r["seed"]}</p>{curve_svg(points, colour)}<p class="note"><span class="state" '
                     f'style="color:{colour}">{_e(r["state"])}</span> {r["epochs_done"]}/{r["epochs"]} epochs '
                     f'&middot; {_e(axis)}</p></div>')
    return f'<section id="curves"><h2>Loss curves ({len(rows)} jobs)</h2><div class="jobs">{"".join(cards)}</div></section>'


def render(state: dict, fit: dict | None, figures: list[tuple[str, str]], curves: dict, *, note: str = "",
           refresh_s: float | None = None) -> str:
    """The page's HTML: one file, nothing fetched."""
    refresh = f'<meta http-equiv="refresh" content="{max(1, round(refresh_s))}">' if refresh_s else ""
    stamp = f"{state['now']:%Y-%m-%d %H:%M:%S} UTC"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{refresh}"
        f"<title>study {_e(state['study'])}</title><script>{ERROR_SCRIPT}</script><style>{CSS}</style></head><body>"
        f"<header><h1>Scaling study <code>{_e(state['study'])}</code></h1>"
        f"<p>written {stamp}{' &middot; rewritten as results land' if refresh_s else ''}</p></header><main>"
        + _state_section(state) + _fit_section(fit, note) + _figures_section(figures)
        + _stopped_section(state["jobs"]) + _jobs_section(state["jobs"], curves)
        + "</main></body></html>\n"
    )


def write_page(engine, study: str, out: Path, runs_dir: Path, *, note: str = "",  # noqa: ANN001 - an Engine
               refresh_s: float | None = None) -> Path:
    """Write out/index.html atomically from the database, the job folders, and fit.json and its SVGs in `out`."""
    out = Path(out)
    state = study_state(engine, study)
    fit = load_fit(out, study)
    metric = (fit or {}).get("metric")
    text = render(state, fit, figure_svgs(out, fit), job_curves(engine, state["jobs"], Path(runs_dir), metric),
                  note=note, refresh_s=refresh_s)
    return write_atomic(out / PAGE_NAME, lambda temp: temp.write_text(text))


# ---- Keeping it current ----

def fingerprint(engine, study: str, runs_dir: Path) -> tuple:  # noqa: ANN001 - an Engine
    """Changes whenever the page would: a job's state or progress, a new point, a running job's curve."""
    rows = db.job_rows(engine, study)
    with engine.connect() as conn:
        points = conn.execute(
            sa.select(sa.func.count(), sa.func.max(db.evaluations.c.created_at))
            .select_from(db.evaluations.join(db.jobs).join(db.studies)).where(db.studies.c.name == study)
        ).one()
    curves = []
    for row in rows:
        if row["state"] == "running":
            path = job_dir(Path(runs_dir), row) / "curve.csv"
            curves.append(path.stat().st_mtime_ns if path.exists() else 0)
    return (tuple((r["id"], r["state"], r["epochs_done"]) for r in rows), tuple(points), tuple(curves))


def newest_point(engine, study: str) -> dt.datetime | None:  # noqa: ANN001 - an Engine
    """When the study's newest evaluation point was recorded (naive UTC)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.max(db.evaluations.c.created_at))
            .select_from(db.evaluations.join(db.jobs).join(db.studies)).where(db.studies.c.name == study)
        ).scalar()


def fit_is_stale(engine, study: str, out: Path) -> bool:  # noqa: ANN001 - an Engine
    """True when points were recorded after the fit in `out` (or there is none and there are points)."""
    newest = newest_point(engine, study)
    if newest is None:
        return False
    fit = load_fit(out, study)
    created = (fit or {}).get("provenance", {}).get("created")
    if not created:
        return True
    try:
        fitted = dt.datetime.fromisoformat(created).astimezone(dt.timezone.utc).replace(tzinfo=None)
    except ValueError:
        return True
    return newest >= fitted


def watch(engine, study: str, out: Path, runs_dir: Path, interval_s: float, write: Callable[[], object],  # noqa: ANN001
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Call write() now and whenever the fingerprint changes, polling every interval_s; returns on Ctrl-C."""
    last = None
    try:
        while True:
            current = fingerprint(engine, study, runs_dir)
            if current != last:
                write()
                last = current
            sleep(interval_s)
    except KeyboardInterrupt:
        return
