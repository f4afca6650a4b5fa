"""Versioned SQL migrations for agentapi-db.

Migrations
    Version 1 is ``database/schema.sql`` itself (name ``schema``). Later versions are
    ``database/migrations/NNNN_<name>.sql`` (``0002_add_foo.sql``...): the number is
    the version, they apply in order, each in one transaction together with the row
    that records it. Files are found through :mod:`agentapi_db.resources`, so an
    installed wheel carries them.

History
    ``agentapi_meta.schema_migrations(version, name, checksum, applied_at)`` records
    every applied version with the sha256 of the file as it was applied. The schema
    ``agentapi_meta`` is owned by ``agentapi_owner`` and PUBLIC gets nothing on it.
    It holds no tenant data, but the table still enables and forces row-level
    security with a single owner policy, so the posture checks that apply to the
    application's tables (``agentapi-db verify``) hold for it too; the application
    roles have no grant on it at all.

Rules
    * A migration whose file changed after it was applied is refused (the checksum
      differs): migrations are immutable once applied. Fix forward with a new file.
    * A database that has a newer version than this package knows is refused.
    * Only one migrator runs at a time. Once the history table exists, a second
      connection of the migrator holds ``LOCK TABLE agentapi_meta.schema_migrations
      IN SHARE UPDATE EXCLUSIVE MODE`` for the whole run: that mode conflicts with
      itself but not with the reads and inserts of the history the run makes, and
      only the owner can take it (the application roles have no privilege on
      ``agentapi_meta``, so they can neither stall nor race a migration). Before
      the history exists (the first deployment, version 1 or ``--baseline``) there
      is no table to lock: the bootstrap step alone takes ``pg_advisory_lock`` on
      a fixed key, re-checks, and then hands over to the table lock. A second
      migrator waits, then finds nothing to do. A later migration must not alter
      ``agentapi_meta.schema_migrations`` itself (it would wait for its own lock).
    * Version 1 creates roles and extensions. It runs as the database's owner with
      CREATEROLE (what managed PostgreSQL gives: no superuser needed, on the old
      CREATEROLE rules of 15 and the new ones of 16+), or as a superuser; it refuses
      anyone else with a message that says what is missing. Every later migration
      runs with ``SET LOCAL ROLE agentapi_owner``, so whatever it creates is owned by
      the owner role, like the rest of the schema; the deploying login is a member of
      agentapi_owner (version 1 grants that to itself when it is not a superuser).
    * The files are plain SQL as ``psql -f`` would take them; the one psql
      meta-command allowed is ``\\set ON_ERROR_STOP ...`` (the runner always stops
      at the first error). Any other line starting with a backslash is refused.
    * A database built with ``psql -f database/schema.sql`` (no history table) is
      adopted with ``migrate(..., baseline=True)`` (``agentapi-db migrate
      --baseline``), which records version 1 without running it, after checking
      that the schema's tables are there.

Why a hand-written runner rather than Alembic or yoyo-migrations: the migrations
are plain SQL files whose first one is the canonical ``schema.sql`` (roles,
extensions, policies, ``SET ROLE`` sections). Alembic is built around SQLAlchemy
and Python revision scripts with a revision graph we do not need; yoyo stores its
own bookkeeping tables in ``public`` (which our posture checks would then have to
special-case), splits files into statements itself and does not know about the
superuser/owner split. What we need (ordered files, sha256 checksums, a migration
lock, one transaction per file, a private history table) is ~300 lines, docs included, with no new
dependency and no SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from agentapi_db.errors import AgentApiDbError
from agentapi_db.resources import schema_sql_path, sql_dir

__all__ = [
    "LOCK_KEY",
    "META_SCHEMA",
    "AppliedMigration",
    "Migration",
    "MigrationError",
    "MigrationState",
    "available_migrations",
    "migrate",
    "read_state",
]

META_SCHEMA = "agentapi_meta"
OWNER_ROLE = "agentapi_owner"

LOCK_KEY: int = int.from_bytes(
    hashlib.sha256(b"agentapi-db:migrations").digest()[:8], "big", signed=True
)
"""Key of the session-level advisory lock taken only to bootstrap the history (any
role can take an advisory lock; once the history exists the table lock is used)."""

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_ALLOWED_META = re.compile(r"^\\set\s+ON_ERROR_STOP\b.*$")

Conn = psycopg.Connection[TupleRow]

# --------------------------------------------------------------------------- SQL
_SQL_HISTORY_EXISTS = "SELECT to_regclass('agentapi_meta.schema_migrations') IS NOT NULL"
_SQL_SCHEMA_PRESENT = "SELECT to_regclass('public.organizations') IS NOT NULL"
_SQL_READ_HISTORY = (
    "SELECT version, name, checksum, applied_at FROM agentapi_meta.schema_migrations "
    "ORDER BY version"
)
_SQL_TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
_SQL_LOCK = "SELECT pg_advisory_lock(%s)"
_SQL_UNLOCK = "SELECT pg_advisory_unlock(%s)"
_SQL_SET_OWNER = "SET LOCAL ROLE agentapi_owner"
# The migration lock, on the lock connection's transaction: a mode that conflicts
# with itself, not with SELECT or INSERT on the history; only its owner may take it.
# The lock session may wait for another migrator and then sit idle for the whole run.
_SQL_LOCK_SESSION = (
    "SET LOCAL lock_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0; "
    "SET LOCAL statement_timeout = 0"
)
_SQL_LOCK_HISTORY = "LOCK TABLE agentapi_meta.schema_migrations IN SHARE UPDATE EXCLUSIVE MODE"
_SQL_TRY_LOCK_HISTORY = _SQL_LOCK_HISTORY + " NOWAIT"
_SQL_RESET_ROLE = "RESET ROLE"
_SQL_RECORD = (
    "INSERT INTO agentapi_meta.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"
)
# Created (idempotently) in the same transaction as version 1, once agentapi_owner exists.
_SQL_CREATE_HISTORY = """
CREATE SCHEMA IF NOT EXISTS agentapi_meta AUTHORIZATION agentapi_owner;
REVOKE ALL ON SCHEMA agentapi_meta FROM PUBLIC;
COMMENT ON SCHEMA agentapi_meta IS
    'agentapi-db bookkeeping (migration history). Owner only; no tenant data.';
SET LOCAL ROLE agentapi_owner;
CREATE TABLE IF NOT EXISTS agentapi_meta.schema_migrations (
    version     integer     PRIMARY KEY CHECK (version > 0),
    name        text        NOT NULL,
    checksum    text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE agentapi_meta.schema_migrations IS
    'One row per applied agentapi-db migration; checksum = sha256 of the file as applied.';
REVOKE ALL ON agentapi_meta.schema_migrations FROM PUBLIC;
ALTER TABLE agentapi_meta.schema_migrations ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentapi_meta.schema_migrations FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS schema_migrations_owner ON agentapi_meta.schema_migrations;
CREATE POLICY schema_migrations_owner ON agentapi_meta.schema_migrations
    TO agentapi_owner USING (true) WITH CHECK (true);
RESET ROLE;
"""


class MigrationError(AgentApiDbError):
    """Migrations cannot be applied: edited after applying, unknown version, bad file..."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    path: Path
    checksum: str

    def sql_text(self) -> str:
        """The file's SQL, with the allowed psql meta-command lines blanked out."""
        return _strip_meta_commands(self.path.read_text(encoding="utf-8"), self.path)


@dataclass(frozen=True)
class AppliedMigration:
    """A row of ``agentapi_meta.schema_migrations``."""

    version: int
    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True)
class MigrationState:
    """How a database's history compares with the migration files."""

    available: list[Migration]
    applied: list[AppliedMigration]
    has_history: bool
    schema_present: bool
    pending: list[Migration] = field(default_factory=list)
    changed: list[tuple[Migration, AppliedMigration]] = field(default_factory=list)
    unknown: list[AppliedMigration] = field(default_factory=list)

    @property
    def current_version(self) -> int:
        """Highest applied version (0 when none)."""
        return max((a.version for a in self.applied), default=0)

    @property
    def latest_version(self) -> int:
        """Highest version among the files."""
        return max((m.version for m in self.available), default=0)

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.changed and not self.unknown

    def problems(self) -> list[str]:
        """Why migrating is refused (empty when it may proceed)."""
        out = [
            f"migration {m.version} ({m.name}) was changed after it was applied: "
            f"checksum {m.checksum[:12]}... differs from the applied {a.checksum[:12]}...; "
            "applied migrations are immutable, add a new migration instead"
            for m, a in self.changed
        ]
        out.extend(
            f"the database has migration {a.version} ({a.name}) that this agentapi-db "
            "does not know; upgrade agentapi-db"
            for a in self.unknown
        )
        return out


def _strip_meta_commands(text: str, path: Path) -> str:
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        if line.startswith("\\"):
            if not _ALLOWED_META.match(line.rstrip("\r\n")):
                raise MigrationError(
                    f"{path.name}:{number}: psql meta-command not supported by the migration "
                    "runner (only \\set ON_ERROR_STOP is)"
                )
            lines[number - 1] = "\n"
    return "".join(lines)


def _checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def available_migrations(directory: Path | None = None) -> list[Migration]:
    """Version 1 (``schema.sql``) and ``migrations/NNNN_*.sql``, in version order.

    ``directory``: the SQL directory (default: :func:`agentapi_db.resources.sql_dir`).
    """
    root = directory if directory is not None else sql_dir()
    schema = root / "schema.sql" if directory is not None else schema_sql_path()
    found = [Migration(1, "schema", schema, _checksum(schema))]
    folder = root / "migrations"
    if folder.is_dir():
        for path in sorted(folder.glob("*.sql")):
            match = _FILE_RE.match(path.name)
            if match is None:
                raise MigrationError(f"{path}: a migration file is named NNNN_lower_snake_name.sql")
            version = int(match.group(1))
            if version < 2:
                raise MigrationError(f"{path}: version 1 is schema.sql; start at 0002")
            found.append(Migration(version, match.group(2), path, _checksum(path)))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {sorted(versions)}")
    return found


def read_state(conn: Conn, available: Sequence[Migration] | None = None) -> MigrationState:
    """Compare the database's history with the migration files (reads only)."""
    files = list(available) if available is not None else available_migrations()
    has_history = bool(_scalar(conn, _SQL_HISTORY_EXISTS))
    schema_present = bool(_scalar(conn, _SQL_SCHEMA_PRESENT))
    applied: list[AppliedMigration] = []
    if has_history:
        applied = [
            AppliedMigration(int(v), str(n), str(c), ts)
            for v, n, c, ts in conn.execute(_SQL_READ_HISTORY).fetchall()
        ]
    by_version = {a.version: a for a in applied}
    known = {m.version for m in files}
    return MigrationState(
        available=files,
        applied=applied,
        has_history=has_history,
        schema_present=schema_present,
        pending=[m for m in files if m.version not in by_version],
        changed=[
            (m, by_version[m.version])
            for m in files
            if m.version in by_version and by_version[m.version].checksum != m.checksum
        ],
        unknown=[a for a in applied if a.version not in known],
    )


def _scalar(conn: Conn, query: str) -> object:
    row = conn.execute(query.encode()).fetchone()
    return None if row is None else row[0]


def migrate(
    url: str,
    *,
    baseline: bool = False,
    on_event: Callable[[str], None] | None = None,
) -> list[Migration]:
    """Apply the pending migrations to the database at ``url``; return those applied.

    ``baseline``: for a database built with ``psql -f schema.sql`` and no history,
    record version 1 as applied without running it (see the module docstring).
    ``on_event``: called with a short human-readable message at each step.
    Raises :class:`MigrationError` when a rule is broken; nothing is then applied.
    """
    say = on_event or (lambda _msg: None)
    files = available_migrations()
    with psycopg.connect(url, autocommit=True) as conn:
        applied: list[Migration] = []
        if not _scalar(conn, _SQL_HISTORY_EXISTS):
            applied = _bootstrap(conn, files, baseline=baseline, say=say)
            baseline = False  # adopted (or made) by the bootstrap, here or elsewhere
        with psycopg.connect(url, autocommit=False) as lock_conn:
            _lock_history(lock_conn, say)
            try:
                return applied + _migrate_locked(conn, files, baseline=baseline, say=say)
            finally:
                if not lock_conn.closed and not lock_conn.broken:
                    lock_conn.rollback()


def _bootstrap(
    conn: Conn, files: list[Migration], *, baseline: bool, say: Callable[[str], None]
) -> list[Migration]:
    """Version 1 (or its baseline) under the advisory lock, while no history exists."""
    if conn.execute(_SQL_TRY_LOCK, (LOCK_KEY,)).fetchone() != (True,):
        say("another migrator holds the migration lock; waiting for it")
        conn.execute(_SQL_LOCK, (LOCK_KEY,))
    try:
        if _scalar(conn, _SQL_HISTORY_EXISTS):
            return []  # another migrator made it while we waited
        return _migrate_locked(conn, files[:1], baseline=baseline, say=say)
    finally:
        if not conn.closed and not conn.broken:
            conn.execute(_SQL_UNLOCK, (LOCK_KEY,))


def _lock_history(lock_conn: Conn, say: Callable[[str], None]) -> None:
    """Take the migration lock on ``lock_conn``; it is held until that transaction ends."""
    lock_conn.execute(_SQL_SET_OWNER)
    lock_conn.execute(_SQL_LOCK_SESSION)
    try:
        with lock_conn.transaction():  # a savepoint: NOWAIT's failure leaves the rest
            lock_conn.execute(_SQL_TRY_LOCK_HISTORY)
    except psycopg.errors.LockNotAvailable:
        say("another migrator holds the migration lock; waiting for it")
        lock_conn.execute(_SQL_LOCK_HISTORY)


def _migrate_locked(
    conn: Conn, files: list[Migration], *, baseline: bool, say: Callable[[str], None]
) -> list[Migration]:
    state = read_state(conn, files)
    problems = state.problems()
    if problems:
        raise MigrationError("; ".join(problems))
    pending = list(state.pending)
    if pending and pending[0].version == 1 and state.schema_present:
        if not baseline:
            raise MigrationError(
                "the database already has the agentapi-db tables but no migration history "
                "(it was built with psql -f schema.sql?); adopt it with "
                "`agentapi-db migrate --baseline`"
            )
        with conn.transaction():
            if not state.has_history:  # else it is locked by this migrator: leave it be
                _ensure_history(conn)
            _record(conn, pending[0])
        say(f"baseline: recorded migration 1 ({pending[0].name}) as applied without running it")
        pending = pending[1:]
    elif baseline and state.has_history:
        say("baseline: the database already has a migration history; nothing to adopt")
    if not pending:
        say(f"schema is up to date (version {max(state.latest_version, state.current_version)})")
        return []
    applied: list[Migration] = []
    for migration in pending:
        text = migration.sql_text()
        say(f"applying migration {migration.version} ({migration.name})")
        try:
            with conn.transaction():
                if migration.version == 1:
                    conn.execute(text.encode())
                    conn.execute(_SQL_RESET_ROLE)
                    if not state.has_history:
                        _ensure_history(conn)
                else:
                    conn.execute(_SQL_SET_OWNER)
                    conn.execute(text.encode())
                    conn.execute(_SQL_RESET_ROLE)
                _record(conn, migration)
        except psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if exc.diag.message_hint:
                detail += f" (hint: {exc.diag.message_hint})"
            raise MigrationError(
                f"migration {migration.version} ({migration.name}) failed and was rolled "
                f"back: {detail}"
            ) from exc
        applied.append(migration)
    return applied


def _ensure_history(conn: Conn) -> None:
    conn.execute(_SQL_CREATE_HISTORY.encode())


def _record(conn: Conn, migration: Migration) -> None:
    conn.execute(_SQL_SET_OWNER)
    conn.execute(_SQL_RECORD, (migration.version, migration.name, migration.checksum))
    conn.execute(_SQL_RESET_ROLE)
