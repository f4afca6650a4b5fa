"""Plain psycopg plumbing shared by the operational modules.

Key rotation, token refresh, retention, the audit chain, stats and backup work on
plain psycopg connections (no pool) and act as ``agentapi_service`` transaction by
transaction: :func:`service_transaction` runs ``SET LOCAL ROLE agentapi_service``
(through ``set_config('role', ..., true)``), which ends with the transaction, so a
connection never keeps the role. The login behind the URL must be a member of
``agentapi_service`` (or a superuser).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, LiteralString

import psycopg
from psycopg.rows import TupleRow

__all__ = ["Conn", "connect", "service_transaction"]

Conn = psycopg.Connection[TupleRow]

_SQL_AS_SERVICE: Final[LiteralString] = "SELECT set_config('role', 'agentapi_service', true)"
_SQL_SNAPSHOT: Final[LiteralString] = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"


def connect(url: str, *, application_name: str = "agentapi-db-ops") -> Conn:
    """An autocommit connection (each :func:`service_transaction` is one transaction).

    ``prepare_threshold=None``: no server-side prepared statements, so the same code
    runs behind PgBouncer in transaction pooling.
    """
    return psycopg.connect(
        url, autocommit=True, prepare_threshold=None, application_name=application_name
    )


@contextmanager
def service_transaction(conn: Conn, *, snapshot: bool = False) -> Iterator[Conn]:
    """One transaction acting as ``agentapi_service``; committed on success, else rolled back.

    ``snapshot``: a read-only REPEATABLE READ transaction, so several statements
    see one consistent state of the database.
    """
    with conn.transaction():
        if snapshot:
            conn.execute(_SQL_SNAPSHOT)
        conn.execute(_SQL_AS_SERVICE)
        yield conn
