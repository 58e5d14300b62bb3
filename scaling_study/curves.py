"""A job's training curves, written beside its checkpoint: curve.csv always, TensorBoard events when asked.

train() hands every step's loss, learning rate and img/s, and every evaluation point, to a
`Curves` (the seam: another logger, offline W&B say, would be one more sink). Each sink skips
the steps of a tag that it already holds, and the sinks are flushed before every checkpoint is
written, so that after a kill -9 and a resume each step is on disk exactly once: the steps up to
the checkpoint were flushed before it, those after it that reached the disk are skipped when the
resumed run redoes them, and those that did not are written by it.

- curve.csv: step, loss (mean over a block of steps, ~1000 rows per job), lr, img/s; what
  the HTML page draws.
- tensorboard/<model>,N=<N>,seed=<seed>/events.*: `tensorboard --logdir runs/` names each run by
  its model, N and seed. On by default when the `tensorboard` package is installed
  (`pip install -e '.[tensorboard]'`); a grid's `[logging] tensorboard = false` turns it off and
  `= true` makes a missing package an error.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from pathlib import Path

from .errors import StudyError

CSV_NAME = "curve.csv"
CSV_HEADER = "step,loss,lr,images_per_s"
CSV_ROWS = 1000  # rows per job at most: a loss curve, not a step log
TENSORBOARD_DIR = "tensorboard"
FLUSH_SECS = 30.0  # curves reach the disk at least this often, and before every checkpoint
FLUSH_VARIABLE = "STUDY_CURVES_FLUSH_S"  # another interval, in seconds


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_wanted(setting: bool | None) -> bool:
    """Whether to write TensorBoard events: the grid's `[logging] tensorboard`, else whether it is installed."""
    if setting is None:
        return tensorboard_installed()
    if setting and not tensorboard_installed():
        raise StudyError("the grid asks for TensorBoard curves ([logging] tensorboard = true) but the tensorboard "
                         "package is not installed: pip install tensorboard (or the .[tensorboard] extra)")
    return setting


def run_name(model: str, examples: int, seed: int) -> str:
    """The TensorBoard run of one job: its model, N and seed (a / in a model name would nest folders)."""
    return f"{model.replace('/', '_')},N={examples},seed={seed}"


class CsvCurve:
    """curve.csv: one row per block of `every` steps (the block's mean loss, its last lr and img/s).

    The tags of one step arrive in either order (losses are read from the device in batches, after
    the lr and img/s of later steps), so a row waits until its step has all three."""

    def __init__(self, path: Path, every: int):
        self.path, self.every = path, max(1, every)
        self.on_disk = _csv_last_step(path)  # steps up to here were written by an earlier run
        self.rows: list[str] = []
        self.waiting: dict[int, dict[str, float]] = {}  # row step -> the values it has so far
        self.loss_sum, self.loss_count = 0.0, 0

    def scalar(self, tag: str, step: int, value: float) -> None:
        if step <= self.on_disk or step % self.every and tag != "step/loss":
            return
        if tag in ("step/lr", "step/images_per_s"):
            self.waiting.setdefault(step, {})[tag] = value
        elif tag == "step/loss":
            self.loss_sum += value
            self.loss_count += 1
            if step % self.every == 0:
                self.waiting.setdefault(step, {})[tag] = self.loss_sum / self.loss_count
                self.loss_sum, self.loss_count = 0.0, 0
        self._complete(everything=False)

    def _complete(self, everything: bool) -> None:
        """Move the rows whose step has its loss, lr and img/s (every row with a loss, when `everything`)."""
        for step in sorted(self.waiting):
            values = self.waiting[step]
            if "step/loss" not in values or not everything and len(values) < 3:
                if everything:
                    del self.waiting[step]  # the lr of a step whose loss never came: no row
                    continue
                break
            del self.waiting[step]
            nan = float("nan")
            self.rows.append(f"{step},{values['step/loss']:.6g},{values.get('step/lr', nan):.6g},"
                             f"{values.get('step/images_per_s', nan):.6g}")

    def flush(self) -> None:
        if not self.rows:
            return
        new = not self.path.exists()
        with open(self.path, "a") as out:
            out.write((CSV_HEADER + "\n" if new else "") + "".join(row + "\n" for row in self.rows))
        self.rows.clear()

    def close(self) -> None:
        self._complete(everything=True)  # e.g. a diverged last step: its loss, without lr
        self.flush()


def _csv_last_step(path: Path) -> int:
    """The last step in curve.csv (a line torn by a kill is cut off first); 0 when there is none."""
    if not path.exists():
        return 0
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        path.write_text(text)
    lines = text.splitlines()
    return int(lines[-1].split(",")[0]) if len(lines) > 1 else 0


def read_csv_curve(folder: Path) -> list[tuple[int, float]]:
    """(step, loss) from a job folder's curve.csv, oldest first; [] when it has none."""
    path = Path(folder) / CSV_NAME
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines()[1:]:
        parts = line.split(",")
        try:
            step, loss = int(parts[0]), float(parts[1])
        except (IndexError, ValueError):
            continue  # a torn last line
        if math.isfinite(loss):
            out.append((step, loss))
    return out


class TensorBoardCurve:
    """Scalars in TensorBoard event files (torch.utils.tensorboard); a resumed job appends a new
    events file to the same run and skips the steps that the earlier ones already hold.

    Scalars wait in a list until flush(): handed to the writer one by one, each would wake its
    writer thread, which on a CPU with as many cores as training threads stalls the step's
    parallel work (a few scalars per step, hundreds of wake-ups a second for a small model).
    """

    def __init__(self, folder: Path, description: str):
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.last = last_steps(folder)
        self.writer = SummaryWriter(str(folder), max_queue=1000, flush_secs=3600)  # Curves flushes
        if "job" not in self.last:
            self.writer.add_text("job", description, 0)
        self.pending: list[tuple[str, float, int]] = []

    def scalar(self, tag: str, step: int, value: float) -> None:
        if step > self.last.get(tag, 0):
            self.pending.append((tag, value, step))
            self.last[tag] = step

    def flush(self) -> None:
        for tag, value, step in self.pending:
            self.writer.add_scalar(tag, value, step)
        self.pending.clear()
        self.writer.flush()

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0}, purge_orphaned_data=False)
    accumulator.Reload()
    return accumulator


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard run folder, {tag: [(step, value), ...]}, read with tensorboard's
    own EventAccumulator (no purging: what is on disk)."""
    accumulator = _accumulator(folder)
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def last_steps(folder: Path) -> dict[str, int]:
    """The last step of each tag already in a run folder's event files ({} for a new run); "job"
    when the job's description (a text summary) is there."""
    if not any(Path(folder).glob("events.out.tfevents.*")):
        return {}
    accumulator = _accumulator(folder)
    last = {tag: max((e.step for e in accumulator.Scalars(tag)), default=0) for tag in accumulator.Tags()["scalars"]}
    if accumulator.Tags().get("tensors"):
        last["job"] = 0
    return last


class Curves:
    """Fans each value out to the sinks; train() calls scalar() per step and evaluation, flush() before
    each checkpoint, and the runner close() at the end."""

    def __init__(self, sinks: list, flush_s: float | None = None):
        self.sinks = sinks
        self.flush_s = flush_s if flush_s is not None else float(os.environ.get(FLUSH_VARIABLE) or FLUSH_SECS)
        self.flushed = time.monotonic()

    def scalar(self, tag: str, step: int, value: float) -> None:
        for sink in self.sinks:
            sink.scalar(tag, step, float(value))
        if time.monotonic() - self.flushed >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()
        self.flushed = time.monotonic()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_curves(folder: Path, spec, tensorboard: bool | None = None) -> Curves:  # noqa: ANN001 - a JobSpec
    """The curves of the job whose folder is `folder`: curve.csv, and TensorBoard events if wanted."""
    from . import budget

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tc = spec.train
    total = budget.total_steps(spec.examples, tc.batch_size, spec.total_epochs, tc.drop_last)
    sinks: list = [CsvCurve(folder / CSV_NAME, math.ceil(total / CSV_ROWS))]
    if tensorboard_wanted(tensorboard):
        description = (f"{spec.model.name}, N={spec.examples:,}, seed={spec.seed}, T={list(spec.epochs)}, "
                       f"batch {tc.batch_size}, {tc.optimizer} lr {tc.lr:g}")
        sinks.append(TensorBoardCurve(folder / TENSORBOARD_DIR / run_name(spec.model.name, spec.examples, spec.seed),
                                      description))
    return Curves(sinks)
