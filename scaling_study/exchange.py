"""Results in and out: `study import` reads a CSV of results produced elsewhere, `study export` writes the frame.

An imported CSV has one row per evaluation point: `model, params, flops_per_example, examples,
epochs` and the value under one of `error` (an error rate in [0, 1]), `loss` or `value` (any
positive number: a loss in nats, a perplexity), optionally `metric` (default "imported"), `seed`
(default 0) and `metric_kind` (error, loss or value: the kind of the row's metric, default the
name of the value column; `study export` writes it, so a loss study round-trips under `error`).
The metric's kind is recorded per study and metric. The columns that
`study export` adds (`study, job_id, kind, state, compute`) are accepted and ignored, except
`study`, which names the study of the row when `--study` is not given; compute is always
recomputed by Eq. 4. Every bad row is reported; if there is one, nothing is imported.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import pandas as pd

from .checks import name_problem, output_problem, printable
from .errors import BadInput, StudyError
from .files import write_atomic

REQUIRED = ("model", "params", "flops_per_example", "examples", "epochs", "error")
VALUE_COLUMNS = ("error", "loss", "value")  # one of them holds the value; its name is the metric's kind
METRIC_KINDS = VALUE_COLUMNS
DEFAULTS = {"metric": "imported", "seed": "0", "metric_kind": ""}
IGNORED = ("study", "job_id", "kind", "state", "compute")  # written by `study export`
FORMATS = ("csv", "parquet")
INT64_MAX = 2**63 - 1  # the database's BIGINT


class BadRows(StudyError):
    """Rows of an imported file that cannot be read: one message per row, and a summary."""

    def __init__(self, rows: list[str], summary: str):
        super().__init__("\n".join([*rows, summary]))
        self.rows = rows
        self.summary = summary


def _integer(text: str, positive: bool = True) -> int:
    value = float(text)  # accepts 1e6 and 1000000.0
    if not math.isfinite(value) or value != int(value) or (positive and value <= 0) or abs(value) > INT64_MAX:
        raise ValueError
    return int(value)


def _spec_hash(spec: dict) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def read_results_csv(path: Path, study: str | None = None) -> list[dict]:
    """The trajectories of a results CSV (see `db.import_trajectories`), or a StudyError listing every bad row."""
    path = Path(path)
    try:
        return _read_results_csv(path, study)
    except UnicodeDecodeError as error:
        raise BadInput(f"{path}: not a UTF-8 text CSV (byte {error.start}: {error.reason}); give the results as CSV text") from None
    except csv.Error as error:  # e.g. a NUL byte
        raise BadInput(f"{path}: not a readable CSV ({error}); give the results as CSV text") from None


def _read_results_csv(path: Path, study: str | None) -> list[dict]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as error:
        raise StudyError(f"cannot read {path}: {error.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        if not header:
            raise StudyError(f"{path}: empty file; expected a header with {', '.join(REQUIRED)}")
        reader.fieldnames = header
        given = [c for c in VALUE_COLUMNS if c in header]
        if len(given) > 1:
            raise StudyError(f"{path}:1: value columns {', '.join(given)}; give the value under one of "
                             f"{', '.join(VALUE_COLUMNS)}")
        value_column = given[0] if given else "error"
        missing = [c for c in REQUIRED[:-1] if c not in header] + ([] if given else ["error (or loss, or value)"])
        if missing:
            raise StudyError(f"{path}:1: missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)} "
                             f"(or loss, or value)")
        valid = set(REQUIRED) | set(VALUE_COLUMNS) | set(DEFAULTS) | set(IGNORED)
        unknown = [c for c in header if c not in valid]
        if unknown:
            raise StudyError(f"{path}:1: unknown column(s) {', '.join(unknown)}; valid columns: "
                             f"{', '.join(REQUIRED + VALUE_COLUMNS[1:] + tuple(DEFAULTS) + IGNORED)}")
        bad: list[str] = []
        rows = 0
        trajectories: dict[tuple, dict] = {}
        seen: dict[tuple, int] = {}
        models: dict[tuple[str, str], tuple[int, int, int]] = {}
        kinds: dict[tuple[str, str], tuple[str, int]] = {}
        for record in reader:
            rows += 1
            line = reader.line_num
            if None in record:
                bad.append(f"{path}:{line}: {len(header) + len(record[None])} fields, the header has {len(header)}")
                continue
            values = {k: (v or "").strip() for k, v in record.items()}
            problems = []
            parsed: dict = {"model": values["model"]}
            if not parsed["model"]:
                problems.append("model is empty")
            for column in ("params", "flops_per_example", "examples", "epochs"):
                try:
                    parsed[column] = _integer(values[column])
                except ValueError:
                    problems.append(f"{column} {values[column]!r} is not a positive integer of at most 2**63 - 1")
            kind = values.get("metric_kind") or value_column
            if kind not in METRIC_KINDS:
                problems.append(f"metric_kind {kind!r} is not one of {', '.join(METRIC_KINDS)}")
            try:
                parsed["error"] = float(values[value_column])
                if kind == "error" and not 0.0 <= parsed["error"] <= 1.0:
                    raise ValueError
                if not math.isfinite(parsed["error"]) or parsed["error"] < 0:
                    raise ValueError
            except ValueError:
                problems.append(f"{value_column} {values[value_column]!r} is not an error rate in [0, 1]" if kind == "error"
                                else f"{value_column} {values[value_column]!r} is not a finite number >= 0")
            parsed["metric"] = values.get("metric") or DEFAULTS["metric"]
            known_kind = kinds.setdefault((study or values.get("study") or path.stem, parsed["metric"]), (kind, line))
            if known_kind[0] != kind and kind in METRIC_KINDS:
                problems.append(f"metric {parsed['metric']} has kind {kind} here but {known_kind[0]} on line {known_kind[1]}")
            try:
                parsed["seed"] = _integer(values.get("seed") or DEFAULTS["seed"], positive=False)
            except ValueError:
                problems.append(f"seed {values.get('seed')!r} is not an integer")
            parsed["study"] = study or values.get("study") or path.stem
            if problem := name_problem(parsed["study"]):
                problems.append(f"study name {printable(parsed['study'])!r} {problem}")
            if problems:
                bad.append(f"{path}:{line}: " + "; ".join(problems))
                continue
            described = (parsed["params"], parsed["flops_per_example"], line)
            first = models.setdefault((parsed["study"], parsed["model"]), described)
            if first[:2] != described[:2]:
                bad.append(f"{path}:{line}: model {parsed['model']} has params {parsed['params']} and flops_per_example "
                           f"{parsed['flops_per_example']}, but {first[0]} and {first[1]} on line {first[2]}")
                continue
            point = (parsed["study"], parsed["model"], parsed["examples"], parsed["seed"], parsed["metric"], parsed["epochs"])
            if point in seen:
                bad.append(f"{path}:{line}: duplicate of line {seen[point]} (same study, model, examples, seed, metric, epochs)")
                continue
            seen[point] = line
            key = point[:4]
            if key not in trajectories:
                spec = {"imported": True, "model": parsed["model"], "params": parsed["params"],
                        "flops_per_example": parsed["flops_per_example"], "examples": parsed["examples"],
                        "seed": parsed["seed"]}
                trajectories[key] = {"study": parsed["study"], "spec": spec, "spec_hash": _spec_hash(spec),
                                     **{k: spec[k] for k in ("model", "params", "flops_per_example", "examples", "seed")},
                                     "points": [], "metric_kinds": {}}
            trajectories[key]["points"].append((parsed["epochs"], parsed["metric"], parsed["error"]))
            trajectories[key]["metric_kinds"][parsed["metric"]] = kind
    if bad:
        raise BadRows(bad, f"{len(bad)} bad row(s) of {rows} in {path}; nothing imported")
    if not trajectories:
        raise StudyError(f"{path}: no rows to import")
    return list(trajectories.values())


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise BadInput(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def export_target(fmt: str, out: Path | None) -> Path:
    """Where `study export` writes (`out`, else evaluations.<format>), checked before any work."""
    _check_format(fmt)
    target = Path(out or f"evaluations.{fmt}")
    if problem := output_problem(target):
        raise BadInput(f"cannot write --out {target}: {problem}")
    return target


def write_frame(frame: pd.DataFrame, path: Path, fmt: str) -> Path:
    """The evaluation frame as CSV or Parquet; a failed write leaves what stood at `path` as it was."""
    _check_format(fmt)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise StudyError("--format parquet needs pyarrow: pip install pyarrow") from None
    try:
        return write_atomic(path, lambda temp: frame.to_parquet(temp, index=False) if fmt == "parquet"
                            else frame.to_csv(temp, index=False))
    except OSError as error:  # e.g. /proc, a full disk
        raise BadInput(f"cannot write --out {path}: {error.strerror or error}; choose another path") from None
