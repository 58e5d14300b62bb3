"""The exceptions the CLI turns into a one-line message and an exit code.

Exit codes, as the README promises:
- 2: a user error, something the user can fix in what they gave: a bad option or grid, a missing or
  unreadable file, a bad CSV row, an unknown study, job or format, a device that is not there. Every
  StudyError is one unless it says otherwise.
- 1: a fault, not the user's input: jobs that failed while running, a worker that died, a full disk
  or a database that refused a write (Fault), and any OSError or database error no check foresaw
  (the CLI's wrapper prints those as one line too).
"""


class StudyError(Exception):
    """A user-facing failure: printed as one line, never as a traceback."""

    exit_code = 2


class GridError(StudyError):
    """A grid file that cannot be planned (bad TOML, unknown key, wrong type, bad value)."""


class BadInput(StudyError):
    """A command-line value or input file that cannot be used: a usage error, found before any work."""


class Fault(StudyError):
    """Work that was started and failed for a reason outside the user's input (exit code 1)."""

    exit_code = 1


class DatabaseGone(Fault):
    """The SQLite file a command opened was deleted or replaced while it worked: nothing more can be recorded."""
