"""Context keys in the database: create, rotate, list (``agentapi-db context-key``).

Keys are generated in the server (``agentapi_auth.context_key_create()``, with
pgcrypto's ``gen_random_bytes``) and come back once in the result, so a key is never
sent to the server in a statement or a parameter, where a log could keep it. The
functions run as ``agentapi_owner`` (``SET LOCAL ROLE``): connect as the deploying
login, a member of ``agentapi_owner``, or a superuser.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, LiteralString

import psycopg
from psycopg.rows import TupleRow

from agentapi_db.context import ContextKey
from agentapi_db.errors import InvalidInput

__all__ = ["KeyInfo", "create_key", "list_keys"]

Conn = psycopg.Connection[TupleRow]

# --------------------------------------------------------------------------- SQL
_SQL_AS_OWNER: Final[LiteralString] = "SET LOCAL ROLE agentapi_owner"
_SQL_CREATE: Final[LiteralString] = (
    "SELECT key_id, secret FROM agentapi_auth.context_key_create(%s::interval)"
)
_SQL_LIST: Final[LiteralString] = (
    "SELECT id, created_at, expires_at, expires_at IS NULL OR expires_at > now() "
    "FROM agentapi_auth.context_keys ORDER BY created_at"
)

MAX_OVERLAP = timedelta(days=7)


@dataclass(frozen=True)
class KeyInfo:
    """One context key as ``context-key list`` shows it (never the secret)."""

    key_id: str
    created_at: datetime
    expires_at: datetime | None
    valid: bool


def create_key(conn: Conn, *, overlap: timedelta | None = None) -> ContextKey:
    """Make a new context key in the database and return it (commits).

    ``overlap`` (rotation): every older key still valid expires after it, so tokens
    signed by the old key keep working while the application moves to the new one.
    """
    if overlap is not None and not timedelta(0) <= overlap <= MAX_OVERLAP:
        raise InvalidInput("the overlap is 0 to 7 days", rule="context_key_overlap")
    with conn.transaction():
        conn.execute(_SQL_AS_OWNER)
        row = conn.execute(_SQL_CREATE, (overlap,)).fetchone()
    if row is None:  # pragma: no cover - the function always returns one row
        raise RuntimeError("context_key_create returned nothing")
    return ContextKey(bytes(row[1]))


def list_keys(conn: Conn) -> list[KeyInfo]:
    """Every context key, oldest first."""
    with conn.transaction():
        conn.execute(_SQL_AS_OWNER)
        rows = conn.execute(_SQL_LIST).fetchall()
    return [KeyInfo(str(r[0]), r[1], r[2], bool(r[3])) for r in rows]
