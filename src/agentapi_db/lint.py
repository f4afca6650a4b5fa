"""Catalog lints: one SQL query per known schema mistake (Supabase splinter style).

Each ``database/lint/NNN_<name>.sql`` file holds one query that returns no rows
when the database is healthy and one row per finding, with the text columns
``object`` and ``detail``. Its leading ``--`` comment says what it checks and why.

:func:`run_lints` (and :func:`run_lints_async`) run them inside a transaction
that is always rolled back, with ``search_path`` pinned to ``pg_catalog`` so
deparsed expressions and ``regclass`` names come out fully qualified::

    with psycopg.connect(url) as conn:
        for finding in run_lints(conn):
            print(finding.check, finding.object, finding.detail)

The caller needs read access to the system catalogs only (any role has it);
``app_role_posture`` reads cluster-wide role data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from agentapi_db.resources import sql_files, sql_text

__all__ = ["LINTS", "Finding", "Lint", "LintError", "load_lints", "run_lints", "run_lints_async"]

LINT_DIR = "lint"

# --- SQL (the only statement this module issues besides the lint files) --------
_SQL_PIN_SEARCH_PATH = "SET LOCAL search_path = pg_catalog, pg_temp"

_EXPECTED_COLUMNS = ("object", "detail")
_FILE_NAME = re.compile(r"^(?P<order>\d{3})_(?P<name>[a-z][a-z0-9_]*)\.sql$")


class LintError(RuntimeError):
    """A lint file is malformed, or an unknown lint was asked for."""


@dataclass(frozen=True)
class Lint:
    """One check: its name (``rls_not_enabled_or_forced``), what it checks, its query."""

    name: str
    description: str
    resource: str
    sql: str

    def __repr__(self) -> str:
        return f"Lint(name={self.name!r}, resource={self.resource!r})"


@dataclass(frozen=True)
class Finding:
    """One problem a lint found: which lint, on what object, and what is wrong."""

    check: str
    object: str
    detail: str


def _description(name: str, text: str) -> str:
    """The ``What:`` paragraph of the file's header comment, as one line."""
    header: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("--"):
            break
        header.append(stripped[2:].strip().removeprefix("* "))
    paragraphs: list[str] = []
    current: list[str] = []
    for line in header:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    for paragraph in paragraphs:
        if paragraph.startswith("What:"):
            return paragraph.removeprefix("What:").strip()
    raise LintError(f"lint {name!r}: the header comment has no 'What:' paragraph")


def load_lints() -> list[Lint]:
    """Read every ``lint/NNN_<name>.sql`` shipped with the package, in file order."""
    lints: list[Lint] = []
    for resource in sql_files(LINT_DIR):
        match = _FILE_NAME.match(resource.rsplit("/", 1)[-1])
        if match is None:
            raise LintError(f"lint file {resource!r} is not named NNN_<name>.sql")
        name = match["name"]
        text = sql_text(resource)
        lints.append(
            Lint(name=name, description=_description(name, text), resource=resource, sql=text)
        )
    names = [lint.name for lint in lints]
    if len(set(names)) != len(names):
        raise LintError(f"duplicate lint names in {LINT_DIR}/: {sorted(names)}")
    return lints


LINTS: list[Lint] = load_lints()
"""Every lint, in file order."""


def _select(names: Iterable[str] | None) -> list[Lint]:
    if names is None:
        return list(LINTS)
    wanted = list(names)
    known = {lint.name: lint for lint in LINTS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise LintError(f"unknown lint(s) {unknown}; known: {sorted(known)}")
    return [known[name] for name in wanted]


def _check_columns(lint: Lint, description: Any) -> None:
    columns = tuple(column.name for column in description or ())
    if columns != _EXPECTED_COLUMNS:
        raise LintError(f"lint {lint.name!r} returns columns {columns}, not {_EXPECTED_COLUMNS}")


def _findings(lint: Lint, rows: list[tuple[Any, ...]]) -> list[Finding]:
    return [Finding(check=lint.name, object=str(row[0]), detail=str(row[1])) for row in rows]


def run_lints(
    conn: psycopg.Connection[Any], names: Iterable[str] | None = None
) -> list[Finding]:
    """Run the lints (all, or those named) and return every finding, lint by lint.

    Runs in a transaction (a savepoint if one is open) that is always rolled back.
    """
    selected = _select(names)
    findings: list[Finding] = []
    with conn.transaction(force_rollback=True), conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(_SQL_PIN_SEARCH_PATH)
        for lint in selected:
            cur.execute(lint.sql.encode())
            _check_columns(lint, cur.description)
            findings.extend(_findings(lint, cur.fetchall()))
    return findings


async def run_lints_async(
    conn: psycopg.AsyncConnection[Any], names: Iterable[str] | None = None
) -> list[Finding]:
    """Async twin of :func:`run_lints`."""
    selected = _select(names)
    findings: list[Finding] = []
    async with conn.transaction(force_rollback=True), conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(_SQL_PIN_SEARCH_PATH)
        for lint in selected:
            await cur.execute(lint.sql.encode())
            _check_columns(lint, cur.description)
            findings.extend(_findings(lint, await cur.fetchall()))
    return findings
