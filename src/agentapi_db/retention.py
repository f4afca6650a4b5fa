"""Audit partitions and retention (``agentapi-db audit partitions`` / ``audit retention``).

Retention is the only way audit events ever leave the database, and it only
drops whole monthly partitions (never ``DELETE``), in two steps (see
``schema.sql`` section 12.3):

1. ``audit_retention_detach(keep)`` detaches every partition whose month ended
   ``keep`` or more months before the current month began into the schema
   ``agentapi_retired`` (a short lock on ``audit_logs``);
2. for each retired table: optionally export it (``--export-dir``: JSON Lines,
   gzip, one file per partition, streamed through a server-side cursor, written to
   a temporary file and renamed into place once complete and synced), then
   ``audit_retention_drop(name, export path)`` drops it and records an
   ``audit.retention.drop_partition`` event, in one transaction that also checks
   the number of events dropped equals the number exported.

A crash anywhere leaves either attached partitions or retired tables; the next run
exports and drops whatever is retired, so nothing is dropped unexported when an
export directory is given.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, LiteralString

from psycopg import sql

from agentapi_db.errors import AgentApiDbError, InvalidInput
from agentapi_db.opsdb import Conn, service_transaction

__all__ = [
    "PartitionInfo",
    "RetiredPartition",
    "ensure_partitions",
    "export_path",
    "list_partitions",
    "run_retention",
]

_PARTITION_NAME = re.compile(r"audit_logs_y[0-9]{4}m[0-9]{2}")

# --------------------------------------------------------------------------- SQL

_SQL_ENSURE: Final[LiteralString] = "SELECT public.audit_ensure_partitions(%s, %s)"
_SQL_LIST: Final[LiteralString] = """
SELECT c.relname::text,
       pg_catalog.pg_get_expr(c.relpartbound, c.oid),
       greatest(c.reltuples, 0)::bigint,
       pg_catalog.pg_total_relation_size(c.oid)
  FROM pg_catalog.pg_inherits AS i
  JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'public.audit_logs'::pg_catalog.regclass
 ORDER BY c.relname
"""
_SQL_DETACH: Final[LiteralString] = (
    "SELECT partition_name, range_start, range_end FROM public.audit_retention_detach(%s)"
)
_SQL_DROP: Final[LiteralString] = "SELECT public.audit_retention_drop(%s, %s)"
# Identifier filled in with psycopg.sql.Identifier (the name is also checked above).
_SQL_EXPORT: Final[LiteralString] = (
    'SELECT row_to_json(r)::text FROM agentapi_retired.{} AS r ORDER BY r."timestamp", r.id'
)

# --------------------------------------------------------------------------- API


@dataclass(frozen=True)
class PartitionInfo:
    """One partition of ``audit_logs`` (row count is the planner's estimate)."""

    name: str
    bounds: str
    estimated_rows: int
    total_bytes: int


@dataclass(frozen=True)
class RetiredPartition:
    """A partition retention dropped."""

    name: str
    range_start: datetime
    range_end: datetime
    events: int
    exported_to: Path | None


def ensure_partitions(conn: Conn, months_ahead: int = 3, months_back: int = 0) -> int:
    """Create the missing monthly partitions; returns how many were created."""
    with service_transaction(conn):
        row = conn.execute(_SQL_ENSURE, (months_ahead, months_back)).fetchone()
    return int(row[0]) if row else 0


def list_partitions(conn: Conn) -> list[PartitionInfo]:
    """Every partition of ``audit_logs``, the default one included."""
    with service_transaction(conn):
        rows = conn.execute(_SQL_LIST).fetchall()
    return [PartitionInfo(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]


def export_path(export_dir: Path, partition: str) -> Path:
    """Where the export of ``partition`` goes: ``<dir>/<partition>.jsonl.gz``."""
    return export_dir / f"{partition}.jsonl.gz"


def _export(conn: Conn, partition: str, export_dir: Path) -> tuple[Path, int]:
    """Stream the retired table into ``<dir>/<name>.jsonl.gz``; returns (path, events)."""
    if not _PARTITION_NAME.fullmatch(partition):
        raise InvalidInput(f"not an audit partition name: {partition!r}", rule="partition")
    final = export_path(export_dir, partition)
    tmp = final.with_name(final.name + ".partial")
    query = sql.SQL(_SQL_EXPORT).format(sql.Identifier(partition))
    count = 0
    try:
        with service_transaction(conn, snapshot=True), conn.cursor(name="agentapi_export") as cur:
            cur.itersize = 5000
            cur.execute(query)
            with gzip.open(tmp, "wt", encoding="utf-8") as out:
                for (line,) in cur:
                    out.write(str(line))
                    out.write("\n")
                    count += 1
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final, count


def run_retention(
    conn: Conn,
    keep_months: int,
    *,
    export_dir: Path | None = None,
    on_partition: Callable[[RetiredPartition], None] | None = None,
) -> list[RetiredPartition]:
    """Drop (after exporting, if ``export_dir``) every partition older than ``keep_months``."""
    if keep_months < 1 or keep_months > 1200:
        raise InvalidInput("--keep must be between 1 and 1200 months", rule="keep_months")
    if export_dir is not None:
        export_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(export_dir, os.W_OK):
            raise InvalidInput(f"cannot write to {export_dir}", rule="export_dir")
    with service_transaction(conn):
        retired = conn.execute(_SQL_DETACH, (keep_months,)).fetchall()
    done: list[RetiredPartition] = []
    for name, start, end in retired:
        path: Path | None = None
        exported = 0
        if export_dir is not None:
            path, exported = _export(conn, str(name), export_dir)
        with service_transaction(conn):
            row = conn.execute(_SQL_DROP, (name, str(path) if path else None)).fetchone()
            events = int(row[0]) if row else 0
            if path is not None and events != exported:
                raise AgentApiDbError(  # rolls the drop back; the table stays retired
                    f"{name}: exported {exported} events but the table holds {events}; not dropped"
                )
        item = RetiredPartition(str(name), start, end, events, path)
        done.append(item)
        if on_partition is not None:
            on_partition(item)
    return done
