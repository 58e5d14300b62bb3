"""Checks on what users give and on what is printed back: study names that are safe as folder
names, text from the database or a CSV shown without raw control characters, data that is there."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path

# A study's folder is "<name>-<8 hex>"; most file systems allow 255 bytes per name.
MAX_NAME = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=@,-]")


def name_problem(name: str) -> str:
    """Why `name` cannot be a study name ('' when it can): too long, control characters, or a path."""
    if len(name) > MAX_NAME or len(name.encode()) > 2 * MAX_NAME:
        return f"is {len(name)} characters long; at most {MAX_NAME} (it names the study's folder under --runs-dir)"
    if bad := [c for c in name if not c.isprintable()]:
        return f"holds control character(s) {printable(''.join(dict.fromkeys(bad)))}; use printable characters only"
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".."):
        return "must not contain / or \\ or start with .. (it names a folder under --runs-dir); use e.g. - or _"
    return ""


def folder_name(name: str) -> str:
    """The study's name as one safe path component: itself when it is plain (so existing folders keep
    their names), else a slug plus a hash, for names recorded before they were checked (or imported)."""
    if not name_problem(name) and not name.startswith("."):
        return name
    slug = _UNSAFE.sub("_", name)[:40].strip("._") or "study"
    return f"{slug}~{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def printable(text: object, keep: str = "") -> str:
    """`text` with every control character (ANSI escapes, newlines unless kept) shown as an escape, e.g. \\x1b."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii") for c in text)


def missing_data(specs) -> list[tuple[str, str]]:  # noqa: ANN001 - JobSpec-like objects or spec dicts
    """(where, path) of each data path the jobs name that is not on this machine, once each."""
    missing: dict[str, str] = {}
    for spec in specs:
        pretrain = spec["pretrain"] if isinstance(spec, dict) else spec.pretrain
        downstream = spec["downstream"] if isinstance(spec, dict) else spec.downstream
        get = (lambda item, key: item[key]) if isinstance(spec, dict) else getattr
        sets = [("[data.pretrain]", pretrain)] + [(f"[[data.downstream]] {get(d, 'dataset')}", d) for d in downstream]
        for where, item in sets:
            path = get(item, "path")
            if not path or not Path(path).exists():
                missing.setdefault(path or "(no path)", where)
    return [(where, path) for path, where in missing.items()]


def output_problem(path: Path, folder: bool = False) -> str:
    """Why `path` (a file, or with `folder` a directory) cannot be written ('' when it seems it can),
    found before any work: an existing folder given as the file, a file in the way of a folder, a
    parent that is a file, a read-only place."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            return f"{path} is a file, not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder; give a file name, e.g. {path / 'evaluations.csv'}"
        return _unwritable(path if folder else path.parent)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, so {path} cannot be made"
    return _unwritable(ancestor)


def _unwritable(folder: Path) -> str:
    """Why nothing can be made in `folder`, tried with a file that vanishes at once (root passes os.access
    on a read-only mount or /proc); '' when it can."""
    if not os.access(folder, os.W_OK):
        return f"{folder} is read-only"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"{folder} is read-only ({error.strerror})" if error.errno == errno.EROFS else \
            f"nothing can be written in {folder} ({error.strerror})"
    return ""
