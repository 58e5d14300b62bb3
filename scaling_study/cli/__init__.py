"""The `study` command line: the only package that knows the CLI. It parses, calls and prints.

One module per group of commands, each registering its commands on `app`: planning (plan, bench),
jobs (status, prune, run, logs, retry, cancel, submit), datasets (evaluate, data prepare) and
results (import, export, fit, predict, report); common holds what they share.
"""

from __future__ import annotations

# Importing a module registers its commands; `study --help` lists them in this order.
from . import planning  # noqa: F401, I001
from . import jobs  # noqa: F401
from . import datasets  # noqa: F401
from . import results  # noqa: F401
from .common import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry for `python -m scaling_study`
    app(prog_name="study")
