"""Locate the SQL files shipped with the package.

A regular install carries the repository's ``database/**/*.sql`` inside the
package as ``agentapi_db/_sql/`` (see ``hatch_build.py``). An editable install
(``pip install -e .``) does not; there the files are read straight from the
repository's ``database/`` directory, next to ``src/``.

``AGENTAPI_SQL_DIR`` overrides both, for trying out a schema from elsewhere.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["schema_sql_path", "sql_dir", "sql_files", "sql_path", "sql_text"]

_SCHEMA = "schema.sql"


def _candidates() -> list[Path]:
    found: list[Path] = []
    override = os.environ.get("AGENTAPI_SQL_DIR")
    if override:
        found.append(Path(override))
    packaged = resources.files("agentapi_db") / "_sql"
    # The package is always a plain directory (no zip imports), so this is a real path.
    found.append(Path(str(packaged)))
    # Editable install / source checkout: <repo>/src/agentapi_db/resources.py -> <repo>/database
    found.append(Path(__file__).resolve().parents[2] / "database")
    return found


def sql_dir() -> Path:
    """Directory holding ``schema.sql`` and the other SQL files."""
    candidates = _candidates()
    for candidate in candidates:
        if (candidate / _SCHEMA).is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{_SCHEMA} not found; looked in: {tried}")


def sql_path(name: str) -> Path:
    """Path of the SQL file ``name`` (relative, e.g. ``"schema.sql"`` or ``"seed/demo.sql"``)."""
    root = sql_dir().resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"SQL file name escapes the SQL directory: {name!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no SQL file {name!r} in {root}")
    return path


def sql_files(subdir: str) -> list[str]:
    """Sorted names of the ``*.sql`` files in ``subdir``, in the form ``sql_path`` takes."""
    root = sql_dir().resolve()
    folder = (root / subdir).resolve()
    if not folder.is_relative_to(root):
        raise ValueError(f"SQL directory name escapes the SQL directory: {subdir!r}")
    if not folder.is_dir():
        raise FileNotFoundError(f"no SQL directory {subdir!r} in {root}")
    return sorted(p.relative_to(root).as_posix() for p in folder.glob("*.sql") if p.is_file())


def schema_sql_path() -> Path:
    """Path of ``schema.sql``."""
    return sql_path(_SCHEMA)


def sql_text(name: str) -> str:
    """Contents of the SQL file ``name`` (UTF-8)."""
    return sql_path(name).read_text(encoding="utf-8")
