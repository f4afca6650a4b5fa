"""Backup and verified restore (``agentapi-db backup`` / ``agentapi-db restore``).

``backup FILE`` runs ``pg_dump --format=custom`` inside an exported snapshot and,
in the same snapshot, records the schema version and the exact row count of every
table in a manifest next to it (``FILE.manifest.json``). The dump is written to
``FILE.partial`` and renamed into place when complete.

``restore FILE --verify`` creates a scratch database, ``pg_restore``s the dump
into it, compares its schema version and row counts with the manifest, and drops
it: exit 1 on any mismatch. ``--into NAME`` restores into a new database NAME
instead (and keeps it), with the same comparison.

Both need a superuser (or a login that reads every row with row-level security
off, which the schema's FORCE ROW LEVEL SECURITY leaves to superusers), and the
PostgreSQL client tools of the server's major version or newer, found by
:mod:`agentapi_db.pgtools` (for a restore, also as new as the pg_dump that wrote the
archive). The password never goes on a
command line: it is handed to pg_dump/pg_restore as ``PGPASSWORD``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agentapi_db import migrations
from agentapi_db.errors import AgentApiDbError, InvalidInput
from agentapi_db.opsdb import Conn
from agentapi_db.pgtools import archive_dump_major, find_tool

__all__ = [
    "BackupManifest",
    "RestoreReport",
    "backup",
    "manifest_path",
    "restore",
]

MANIFEST_SUFFIX: Final = ".manifest.json"

# --------------------------------------------------------------------------- SQL

_SQL_SNAPSHOT: Final[LiteralString] = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
)
_SQL_EXPORT_SNAPSHOT: Final[LiteralString] = "SELECT pg_catalog.pg_export_snapshot()"
# Ordinary tables with data of the application's schemas (partitions are counted
# once, through their parent).
_SQL_TABLES: Final[LiteralString] = """
SELECT n.nspname::text, c.relname::text
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('public', 'agentapi_meta', 'agentapi_retired')
   AND c.relkind IN ('r', 'p')
   AND NOT c.relispartition
 ORDER BY 1, 2
"""
_SQL_COUNT: Final[LiteralString] = "SELECT count(*) FROM {}.{}"
_SQL_CREATE_DB: Final[LiteralString] = "CREATE DATABASE {} TEMPLATE template0"
_SQL_DB_EXISTS: Final[LiteralString] = "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s"
_SQL_DROP_DB: Final[LiteralString] = "DROP DATABASE IF EXISTS {} WITH (FORCE)"

# --------------------------------------------------------------------------- API


@dataclass(frozen=True)
class BackupManifest:
    """What a backup holds: schema version and exact row counts, from the dump's snapshot."""

    database: str
    schema_version: int
    row_counts: dict[str, int]
    file: str
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "schema_version": self.schema_version,
            "row_counts": self.row_counts,
            "file": self.file,
            "bytes": self.bytes,
        }

    @classmethod
    def load(cls, path: Path) -> BackupManifest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                database=str(data["database"]),
                schema_version=int(data["schema_version"]),
                row_counts={str(k): int(v) for k, v in data["row_counts"].items()},
                file=str(data["file"]),
                bytes=int(data.get("bytes", 0)),
            )
        except FileNotFoundError:
            raise InvalidInput(
                f"no manifest {path}: it is written by `agentapi-db backup` next to the dump",
                rule="manifest",
            ) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"unreadable manifest {path}: {exc}", rule="manifest") from None


@dataclass
class RestoreReport:
    """The comparison of a restored database with the backup's manifest."""

    database: str
    kept: bool
    expected: BackupManifest
    schema_version: int
    row_counts: dict[str, int]
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def manifest_path(dump: Path) -> Path:
    return dump.with_name(dump.name + MANIFEST_SUFFIX)


def _split_password(url: str) -> tuple[str, dict[str, str]]:
    """(conninfo without password, extra env with PGPASSWORD if there was one)."""
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    password = params.pop("password", None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    return make_conninfo("", **params), env


def _with_dbname(url: str, dbname: str) -> str:
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    params["dbname"] = dbname
    return make_conninfo("", **params)


def _server_major(conn: Conn) -> int:
    return int(conn.info.server_version) // 10000


def _run_tool(tool: str, args: list[str], url: str, min_major: int) -> None:
    conninfo, env = _split_password(url)
    program = find_tool(tool, min_major).path
    argv = [str(program), *args, "--no-password", "--dbname", conninfo]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, env=env, check=False, timeout=6 * 3600
        )
    except OSError as exc:
        raise AgentApiDbError(f"cannot run {tool}: {exc}") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        detail = "; ".join(lines[-3:]) or f"exit {result.returncode}"
        raise AgentApiDbError(f"{tool} failed: {detail}")


def _counts(conn: Conn) -> dict[str, int]:
    counts: dict[str, int] = {}
    for schema, table in conn.execute(_SQL_TABLES).fetchall():
        query = sql.SQL(_SQL_COUNT).format(sql.Identifier(schema), sql.Identifier(table))
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def backup(url: str, file: Path) -> BackupManifest:
    """``pg_dump -Fc`` of the database into ``file``, plus its manifest."""
    partial = file.with_name(file.name + ".partial")
    try:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            conn.execute(_SQL_SNAPSHOT)
            row = conn.execute(_SQL_EXPORT_SNAPSHOT).fetchone()
            snapshot = str(row[0]) if row else ""
            version = migrations.read_state(conn).current_version
            counts = _counts(conn)
            database = str(conn.info.dbname)
            # The snapshot stays valid while this transaction is open.
            _run_tool("pg_dump", ["--format=custom", f"--snapshot={snapshot}", "--file",
                                  str(partial)], url, _server_major(conn))
        os.replace(partial, file)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    manifest = BackupManifest(database, version, counts, file.name, file.stat().st_size)
    manifest_path(file).write_text(json.dumps(manifest.as_dict(), indent=2) + "\n")
    return manifest


@contextmanager
def _admin(url: str) -> Iterator[Conn]:
    with psycopg.connect(_with_dbname(url, "postgres"), autocommit=True) as conn:
        yield conn


def restore(url: str, file: Path, *, into: str | None = None) -> RestoreReport:
    """Restore ``file`` into a new database (``into``, else a scratch one that is dropped)
    and compare it with the manifest."""
    if not file.is_file():
        raise InvalidInput(f"no backup file {file}", rule="backup_file")
    expected = BackupManifest.load(manifest_path(file))
    name = into or f"agentapi_restore_check_{secrets.token_hex(4)}"
    with _admin(url) as admin:
        # pg_restore must read the archive (as new as the pg_dump that wrote it) and
        # talk to the target server: the newer of the two majors. Looked up before
        # anything is created, so a missing tool leaves nothing behind.
        needed = max(_server_major(admin), archive_dump_major(file) or 0)
        find_tool("pg_restore", needed)
        if admin.execute(_SQL_DB_EXISTS, (name,)).fetchone() is not None:
            raise InvalidInput(f"database {name} already exists; restore needs a new one",
                               rule="restore_target")
        admin.execute(sql.SQL(_SQL_CREATE_DB).format(sql.Identifier(name)))
    target = _with_dbname(url, name)
    keep = into is not None
    try:
        _run_tool("pg_restore", ["--exit-on-error", str(file)], target, needed)
        with psycopg.connect(target, autocommit=True) as conn:
            version = migrations.read_state(conn).current_version
            counts = _counts(conn)
        report = RestoreReport(name, keep, expected, version, counts)
        if version != expected.schema_version:
            report.mismatches.append(
                f"schema version {version}, expected {expected.schema_version}"
            )
        for table in sorted(set(counts) | set(expected.row_counts)):
            got, want = counts.get(table), expected.row_counts.get(table)
            if got != want:
                report.mismatches.append(f"{table}: {got} rows, expected {want}")
    except BaseException:
        keep = False
        raise
    finally:
        if not keep:
            with _admin(url) as admin:
                admin.execute(sql.SQL(_SQL_DROP_DB).format(sql.Identifier(name)))
    return report
