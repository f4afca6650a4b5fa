"""Table and index statistics (``agentapi-db stats``): the seed's "monitor table sizes
and index usage".

From ``pg_stat_user_tables`` / ``pg_stat_user_indexes`` and the size functions, for
the application's schemas: per table its total, heap and index size, the
planner's row estimate, live and dead tuples, sequential vs index scans and the
last (auto)vacuum and (auto)analyze; per index its size and scans. An index is
reported *unused* when it was never scanned since the statistics were reset and
it enforces nothing (not unique, not a primary key): a candidate to drop, after
checking that the statistics cover a representative period (``stats_reset``).
These views are readable by any role, so no special login is needed.

:func:`tune_tenant_statistics` (``agentapi-db stats --tune``) runs
``public.tune_tenant_statistics()`` as ``agentapi_service``: it pins the planner's
estimate of a tenant's rows to the effective number of tenants, so that plans made
without knowing the acting tenant (every plan under RLS) suit the large tenants
(database/schema.sql, section 12.4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final, LiteralString

from agentapi_db.contract import TABLES
from agentapi_db.opsdb import Conn, service_transaction

__all__ = [
    "TENANT_TABLES",
    "DatabaseStats",
    "IndexStats",
    "TableStats",
    "TenantEstimate",
    "collect_stats",
    "tune_tenant_statistics",
]

_SCHEMAS: Final = ["public", "agentapi_auth", "agentapi_meta", "agentapi_retired"]
# The tables with an organization_id column (all but organizations itself).
TENANT_TABLES: Final = tuple(t for t in TABLES if t != "organizations")

# --------------------------------------------------------------------------- SQL

_SQL_DATABASE: Final[LiteralString] = """
SELECT current_database(), pg_catalog.pg_database_size(current_database()), d.stats_reset
  FROM pg_catalog.pg_stat_database AS d
 WHERE d.datname = current_database()
"""
_SQL_TABLES: Final[LiteralString] = """
SELECT s.schemaname::text, s.relname::text,
       pg_catalog.pg_total_relation_size(s.relid), pg_catalog.pg_relation_size(s.relid),
       pg_catalog.pg_indexes_size(s.relid),
       greatest(c.reltuples, 0)::bigint, s.n_live_tup, s.n_dead_tup,
       s.seq_scan, coalesce(s.idx_scan, 0),
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
       s.n_mod_since_analyze
  FROM pg_catalog.pg_stat_user_tables AS s
  JOIN pg_catalog.pg_class AS c ON c.oid = s.relid
 WHERE s.schemaname = ANY (%(schemas)s)
 ORDER BY pg_catalog.pg_total_relation_size(s.relid) DESC, s.schemaname, s.relname
"""
_SQL_INDEXES: Final[LiteralString] = """
SELECT i.schemaname::text, i.relname::text, i.indexrelname::text,
       pg_catalog.pg_relation_size(i.indexrelid), i.idx_scan, i.idx_tup_read, i.idx_tup_fetch,
       x.indisunique, x.indisprimary
  FROM pg_catalog.pg_stat_user_indexes AS i
  JOIN pg_catalog.pg_index AS x ON x.indexrelid = i.indexrelid
 WHERE i.schemaname = ANY (%(schemas)s)
 ORDER BY i.schemaname, i.relname, i.indexrelname
"""
_SQL_TUNE: Final[LiteralString] = """
SELECT table_name, row_count, tenants, effective_tenants
  FROM public.tune_tenant_statistics(%(table)s)
"""

# --------------------------------------------------------------------------- API


@dataclass(frozen=True)
class TenantEstimate:
    """What tune_tenant_statistics() pinned on one table (None: under two tenants, reset)."""

    table: str
    rows: int
    tenants: int
    effective_tenants: float | None


def tune_tenant_statistics(conn: Conn) -> list[TenantEstimate]:
    """Run ``public.tune_tenant_statistics(table)`` as agentapi_service, one table per
    transaction, so that its SHARE UPDATE EXCLUSIVE locks cover one table at a time."""
    result: list[TenantEstimate] = []
    for table in TENANT_TABLES:
        with service_transaction(conn):
            rows = conn.execute(_SQL_TUNE, {"table": table}).fetchall()
        result += [
            TenantEstimate(str(t), int(n), int(k), None if e is None else float(e))
            for t, n, k, e in rows
        ]
    return result


@dataclass(frozen=True)
class TableStats:
    schema: str
    table: str
    total_bytes: int
    table_bytes: int
    index_bytes: int
    estimated_rows: int
    live_tuples: int
    dead_tuples: int
    seq_scans: int
    index_scans: int
    last_vacuum: datetime | None
    last_autovacuum: datetime | None
    last_analyze: datetime | None
    last_autoanalyze: datetime | None
    modified_since_analyze: int


@dataclass(frozen=True)
class IndexStats:
    schema: str
    table: str
    index: str
    bytes: int
    scans: int
    tuples_read: int
    tuples_fetched: int
    unique: bool
    primary: bool

    @property
    def unused(self) -> bool:
        """Never scanned, and enforces no constraint."""
        return self.scans == 0 and not self.unique and not self.primary


@dataclass(frozen=True)
class DatabaseStats:
    database: str
    database_bytes: int
    stats_reset: datetime | None
    tables: list[TableStats]
    indexes: list[IndexStats]

    @property
    def unused_indexes(self) -> list[IndexStats]:
        return [i for i in self.indexes if i.unused]

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "database_bytes": self.database_bytes,
            "stats_reset": self.stats_reset,
            "tables": [asdict(t) for t in self.tables],
            "indexes": [asdict(i) | {"unused": i.unused} for i in self.indexes],
            "unused_indexes": [f"{i.schema}.{i.index}" for i in self.unused_indexes],
        }


def collect_stats(conn: Conn) -> DatabaseStats:
    """Read the statistics (one transaction, nothing changed)."""
    params = {"schemas": _SCHEMAS}
    with conn.transaction():
        db_row = conn.execute(_SQL_DATABASE).fetchone()
        tables = [TableStats(*row) for row in conn.execute(_SQL_TABLES, params)]
        indexes = [IndexStats(*row) for row in conn.execute(_SQL_INDEXES, params)]
    name, size, reset = db_row if db_row is not None else ("?", 0, None)
    return DatabaseStats(str(name), int(size), reset, tables, indexes)
