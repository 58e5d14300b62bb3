"""The one exception type the CLI turns into a one-line message and an exit code."""


class StudyError(Exception):
    """A user-facing failure: printed as one line, never as a traceback."""

    exit_code = 1


class GridError(StudyError):
    """A grid file that cannot be planned (bad TOML, unknown key, wrong type, bad value)."""

    exit_code = 2


class BadInput(StudyError):
    """A command-line value or input file that cannot be used: a usage error, found before any work."""

    exit_code = 2
