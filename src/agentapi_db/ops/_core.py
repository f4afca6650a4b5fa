"""The building blocks of an operation: :class:`Query`, :data:`Op` and :class:`OpContext`.

Why generators
--------------
Every operation (``sessions.create``, ``organizations.provision``, ...) is written
ONCE, as a generator function that *yields* :class:`Query` objects and *receives*
their results::

    def get(ctx: OpContext, session_id: UUID) -> Op[Session]:
        row = yield from one(Q.SESSION_GET, {"id": session_id})
        if row is None:
            raise NotFound("session not found")
        return Session.model_validate(row)

The generator does no I/O. Two tiny executors drive it: a sync one (``Transaction.run``
on a ``psycopg.Connection``) and an async one (``AsyncTransaction.run`` on a
``psycopg.AsyncConnection``); see :mod:`agentapi_db.db`. Multi-statement operations
(provision, update-after-read, render) keep their control flow in plain Python, in
one place, and work identically in both worlds. ``mypy --strict`` checks the
operation's signature and return type, and :mod:`agentapi_db.ops._bind` turns each
generator function into a typed sync method and a typed async method with the same
parameters, so neither API repeats a query or a signature.

The alternative ("queries as data + two executors") breaks down as soon as an
operation needs a second statement depending on the first one's result; the
generator keeps that logic single-sourced.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, LiteralString
from uuid import UUID

from pydantic import SecretStr

from agentapi_db.crypto.ring import KeyRing, ring_for
from agentapi_db.errors import (
    AgentApiDbError,
    ConfigurationError,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from agentapi_db.keys import EncryptionKey

__all__ = [
    "UNSET",
    "Fetch",
    "Mode",
    "Op",
    "OpContext",
    "Query",
    "Row",
    "Unset",
    "all_rows",
    "check_limit",
    "decode_cursor",
    "encode_cursor",
    "exec_",
    "missing_or_denied",
    "one",
    "paginate",
    "read_key_params",
    "reveal",
    "rowcount",
]

class Unset(enum.Enum):
    """Type of :data:`UNSET`: "leave this field as it is" where None is a real value."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET

Fetch = Literal["one", "all", "rowcount", "none"]
Mode = Literal["user", "service", "none"]
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Query:
    """One statement to run: SQL text (a constant from :mod:`agentapi_db.queries`),
    its parameters, what to fetch, and whether it writes.

    ``sensitive`` marks statements whose parameters carry a key or a token; the
    executors never log parameters at all, and ``repr`` hides them always.
    """

    name: str
    sql: LiteralString
    params: Mapping[str, object]
    fetch: Fetch = "one"
    writes: bool = False
    sensitive: bool = False

    def __repr__(self) -> str:
        return f"Query({self.name!r}, fetch={self.fetch!r}, writes={self.writes})"


Op = Generator[Query, Any, Any]
"""An operation: yields queries, receives each result, returns the value.

Annotate operations as ``Generator[Query, Any, T]`` via :data:`Op` aliases in the
modules; the executors send ``dict`` rows (``fetch="one"``: ``dict | None``,
``"all"``: ``list[dict]``), an ``int`` (``"rowcount"``) or ``None``.
"""


@dataclass(frozen=True, slots=True)
class OpContext:
    """Who is acting, and the keys: everything an operation may need besides the SQL."""

    mode: Mode
    user_id: UUID | None = None
    key: EncryptionKey | None = None
    old_key: EncryptionKey | None = None
    other_keys: tuple[EncryptionKey, ...] = ()
    """More keys that decrypt (the other keys of a key ring)."""

    def require_key(self) -> EncryptionKey:
        if self.key is None:
            raise ConfigurationError(
                "no encryption key configured: set AGENTAPI_ENCRYPTION_KEY or "
                "AGENTAPI_ENCRYPTION_KEY_FILE (generate one with `agentapi-db keygen`)"
            )
        return self.key

    def ring(self) -> KeyRing:
        """The keys to encrypt with (``key``) and decrypt with (``key``, ``old_key``,
        ``other_keys``).

        Encryption and decryption happen here, in the application process: no
        key and no plaintext token is ever sent to PostgreSQL.
        """
        return ring_for(self.require_key(), self.old_key, self.other_keys)

    def acting_user(self, user_id: UUID | None, what: str) -> UUID:
        """``user_id`` if given, else the acting user; the service must always say whom."""
        if user_id is not None:
            return user_id
        if self.user_id is None:
            raise InvalidInput(
                f"{what}: user_id is required outside as_user()", rule="user_id_required"
            )
        return self.user_id


def one(
    name: str, sql: LiteralString, params: Mapping[str, object], *, writes: bool = False,
    sensitive: bool = False,
) -> Generator[Query, Any, Row | None]:
    """Run a statement and receive its first row (or None)."""
    row: Row | None = yield Query(name, sql, params, "one", writes, sensitive)
    return row


def all_rows(
    name: str, sql: LiteralString, params: Mapping[str, object], *, sensitive: bool = False
) -> Generator[Query, Any, list[Row]]:
    """Run a (read) statement and receive all its rows."""
    rows: list[Row] = yield Query(name, sql, params, "all", False, sensitive)
    return rows


def rowcount(
    name: str, sql: LiteralString, params: Mapping[str, object]
) -> Generator[Query, Any, int]:
    """Run a writing statement and receive how many rows it touched."""
    count: int = yield Query(name, sql, params, "rowcount", True, False)
    return count


def exec_(
    name: str, sql: LiteralString, params: Mapping[str, object], *, writes: bool = True
) -> Generator[Query, Any, None]:
    """Run a statement and ignore its result."""
    yield Query(name, sql, params, "none", writes, False)


def missing_or_denied(
    name: str, visible_sql: LiteralString, params: Mapping[str, object], what: str
) -> Generator[Query, Any, AgentApiDbError]:
    """After a write touched no row: NotFound if the row is invisible, else PermissionDenied.

    Row-level security filters the rows an UPDATE/DELETE may touch silently; a
    second look tells "no such row (for you)" from "you may see it but not change it".
    """
    row = yield from one(name, visible_sql, params)
    if row is None:
        return NotFound(f"{what} not found")
    return PermissionDenied(f"permission denied: you may not change this {what}")


def check_limit(limit: int, maximum: int = 1000) -> int:
    if not 1 <= limit <= maximum:
        raise InvalidInput(f"limit must be between 1 and {maximum}", rule="limit")
    return limit


def encode_cursor(ts: datetime, row_id: UUID) -> str:
    """An opaque keyset cursor for (timestamp, id)."""
    raw = json.dumps([ts.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime | None, UUID | None]:
    """(timestamp, id) from :func:`encode_cursor`, or (None, None) without a cursor."""
    if cursor is None:
        return None, None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        ts_text, id_text = json.loads(base64.urlsafe_b64decode(padded.encode()))
        ts = datetime.fromisoformat(ts_text)
        if ts.tzinfo is None:
            raise ValueError("naive timestamp")
        return ts, UUID(id_text)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidInput("the pagination cursor is malformed", rule="cursor") from None


def paginate(rows: list[Row], limit: int, ts_field: str) -> tuple[list[Row], str | None]:
    """Trim a ``limit + 1`` fetch to ``limit`` rows and give the next cursor, if any."""
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    last = page[-1]
    return page, encode_cursor(last[ts_field], last["id"])


def read_key_params(ctx: OpContext, decrypt: bool) -> dict[str, object]:
    """The ``decrypt`` parameter of a statement that may return ciphertexts.

    Asking to decrypt without a key fails here, before any statement runs.
    """
    if decrypt:
        ctx.require_key()
    return {"decrypt": decrypt}


def reveal(secret: str | SecretStr | None) -> str | None:
    """The plain value of a secret given as ``str`` or ``SecretStr``."""
    if secret is None or isinstance(secret, str):
        return secret
    return secret.get_secret_value()
