"""A grid's TOML text as tables: the one reader of a grid file's text and of the copy the database
records with each study. It imports no torch and checks no data path, so `study status` and the
runner can read a recorded grid on any machine; grid.py validates the tables it returns."""

from __future__ import annotations

import tomllib

from .errors import GridError


def grid_tables(text: str | None, path: str = "<grid>") -> dict:
    """The TOML tables of a grid's text, or GridError naming `path` (and tomllib's line and column)."""
    try:
        return tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as error:
        # tomllib's message already ends with "(at line L, column C)".
        raise GridError(f"{path}: malformed TOML: {error}") from None


def recorded_section(text: str | None, section: str) -> dict:
    """One table of a study's recorded grid; {} when it is absent, not a table, or the text is not TOML
    (a grid is validated when planned; what the database holds is read as it is)."""
    try:
        table = grid_tables(text).get(section, {})
    except GridError:
        return {}
    return table if isinstance(table, dict) else {}
