"""Online, crash-safe encryption key rotation (``agentapi-db rotate-key``).

Every encrypted value (``mcp_configurations.bearer_token``,
``mcp_oauth_tokens.access_token`` and ``refresh_token``) is re-encrypted from the
old key to the new one, in batches:

* a batch is one transaction as ``agentapi_service``: it locks the next
  ``batch_size`` rows by id (keyset pagination, ``FOR UPDATE``), and
  ``reencrypt_token()`` replaces each ciphertext in place: unchanged if it already
  opens with the new key, re-encrypted if it opens with the old key;
* each value is replaced atomically with its row, so at every instant it is
  readable by exactly one of the two keys, whatever kills the process; running the
  rotation again skips what is done and finishes the rest;
* a value readable by neither key stops the rotation with :class:`RotationError`
  naming the row, and is never overwritten.

While a rotation runs, the application must run with both keys
(``AGENTAPI_ENCRYPTION_KEY`` = new, ``AGENTAPI_OLD_ENCRYPTION_KEY`` = old): it
then decrypts with either and encrypts with the new one.

:func:`verify_rotation` checks, without changing anything, that every value opens
with the new key and none with the old one. Keys only ever travel as bind
parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, LiteralString
from uuid import UUID

import psycopg

from agentapi_db.errors import ConfigurationError, InvalidInput
from agentapi_db.keys import EncryptionKey
from agentapi_db.opsdb import Conn, service_transaction

__all__ = [
    "ENCRYPTED_COLUMNS",
    "ColumnCheck",
    "RotationError",
    "RotationResult",
    "VerifyReport",
    "count_encrypted_values",
    "rotate_keys",
    "verify_rotation",
]

ENCRYPTED_COLUMNS: Final[tuple[str, ...]] = (
    "mcp_configurations.bearer_token",
    "mcp_oauth_tokens.access_token",
    "mcp_oauth_tokens.refresh_token",
)
"""Every column that holds a ciphertext of ``encrypt_token``."""

# --------------------------------------------------------------------------- SQL

_SQL_COUNT: Final[LiteralString] = """
SELECT (SELECT count(bearer_token) FROM public.mcp_configurations)
     + (SELECT count(access_token) + count(refresh_token) FROM public.mcp_oauth_tokens)
"""

# Each batch statement returns one row per row of the batch: its id and how many
# of its values it re-encrypted (0 when they were already under the new key).
_SQL_BATCH_CONFIGS: Final[LiteralString] = """
WITH batch AS (
    SELECT c.id, c.bearer_token
      FROM public.mcp_configurations AS c
     WHERE c.bearer_token IS NOT NULL
       AND (%(after)s::uuid IS NULL OR c.id > %(after)s::uuid)
     ORDER BY c.id
     LIMIT %(limit)s
       FOR UPDATE
), fixed AS (
    SELECT b.id, b.bearer_token AS before,
           public.reencrypt_token(b.bearer_token, %(new_key)s, %(old_key)s) AS after
      FROM batch AS b
), changed AS (
    UPDATE public.mcp_configurations AS c
       SET bearer_token = f.after
      FROM fixed AS f
     WHERE c.id = f.id AND f.after IS DISTINCT FROM f.before
)
SELECT f.id, (f.after IS DISTINCT FROM f.before)::int AS values_changed, 1 AS values_seen
  FROM fixed AS f
 ORDER BY f.id
"""

_SQL_BATCH_TOKENS: Final[LiteralString] = """
WITH batch AS (
    SELECT t.id, t.access_token, t.refresh_token
      FROM public.mcp_oauth_tokens AS t
     WHERE (%(after)s::uuid IS NULL OR t.id > %(after)s::uuid)
     ORDER BY t.id
     LIMIT %(limit)s
       FOR UPDATE
), fixed AS (
    SELECT b.id,
           b.access_token AS access_before,
           public.reencrypt_token(b.access_token, %(new_key)s, %(old_key)s) AS access_after,
           b.refresh_token AS refresh_before,
           public.reencrypt_token(b.refresh_token, %(new_key)s, %(old_key)s) AS refresh_after
      FROM batch AS b
), changed AS (
    UPDATE public.mcp_oauth_tokens AS t
       SET access_token = f.access_after, refresh_token = f.refresh_after
      FROM fixed AS f
     WHERE t.id = f.id
       AND (f.access_after IS DISTINCT FROM f.access_before
            OR f.refresh_after IS DISTINCT FROM f.refresh_before)
)
SELECT f.id,
       (f.access_after IS DISTINCT FROM f.access_before)::int
         + (f.refresh_after IS DISTINCT FROM f.refresh_before)::int AS values_changed,
       1 + (f.refresh_before IS NOT NULL)::int AS values_seen
  FROM fixed AS f
 ORDER BY f.id
"""

# After a batch failed: find the row whose value neither key opens.
_SQL_FIND_UNREADABLE_CONFIG: Final[LiteralString] = """
SELECT c.id, 'bearer_token'
  FROM public.mcp_configurations AS c
 WHERE c.bearer_token IS NOT NULL
   AND (%(after)s::uuid IS NULL OR c.id > %(after)s::uuid)
   AND NOT public.token_decrypts_with(c.bearer_token, %(new_key)s)
   AND NOT public.token_decrypts_with(c.bearer_token, %(old_key)s)
 ORDER BY c.id
 LIMIT 1
"""

_SQL_FIND_UNREADABLE_OAUTH: Final[LiteralString] = """
SELECT t.id, CASE WHEN NOT public.token_decrypts_with(t.access_token, %(new_key)s)
                   AND NOT public.token_decrypts_with(t.access_token, %(old_key)s)
                  THEN 'access_token' ELSE 'refresh_token' END
  FROM public.mcp_oauth_tokens AS t
 WHERE (%(after)s::uuid IS NULL OR t.id > %(after)s::uuid)
   AND ((NOT public.token_decrypts_with(t.access_token, %(new_key)s)
         AND NOT public.token_decrypts_with(t.access_token, %(old_key)s))
        OR (t.refresh_token IS NOT NULL
            AND NOT public.token_decrypts_with(t.refresh_token, %(new_key)s)
            AND NOT public.token_decrypts_with(t.refresh_token, %(old_key)s)))
 ORDER BY t.id
 LIMIT 1
"""

# --verify: one row per encrypted value that is not (new key only). With no old
# key, %(old_key)s is NULL and only the new key is checked.
_SQL_VERIFY: Final[LiteralString] = """
WITH value AS (
    SELECT 'mcp_configurations.bearer_token' AS col, c.id, c.bearer_token AS ct
      FROM public.mcp_configurations AS c WHERE c.bearer_token IS NOT NULL
    UNION ALL
    SELECT 'mcp_oauth_tokens.access_token', t.id, t.access_token
      FROM public.mcp_oauth_tokens AS t
    UNION ALL
    SELECT 'mcp_oauth_tokens.refresh_token', t.id, t.refresh_token
      FROM public.mcp_oauth_tokens AS t WHERE t.refresh_token IS NOT NULL
), checked AS (
    SELECT v.col, v.id,
           public.token_decrypts_with(v.ct, %(new_key)s) AS opens_new,
           CASE WHEN %(old_key)s::text IS NULL THEN false
                ELSE public.token_decrypts_with(v.ct, %(old_key)s::text) END AS opens_old
      FROM value AS v
)
SELECT c.col, count(*) AS total,
       count(*) FILTER (WHERE c.opens_new AND NOT c.opens_old) AS ok,
       count(*) FILTER (WHERE c.opens_old) AS old_key,
       count(*) FILTER (WHERE NOT c.opens_new AND NOT c.opens_old) AS unreadable,
       (array_agg(c.id ORDER BY c.id) FILTER (WHERE NOT c.opens_new OR c.opens_old))[1:5] AS sample
  FROM checked AS c
 GROUP BY c.col
"""

_SQL_READ_ONLY: Final[LiteralString] = "SET TRANSACTION READ ONLY"

_BATCHES: Final[tuple[tuple[str, LiteralString, LiteralString], ...]] = (
    ("mcp_configurations", _SQL_BATCH_CONFIGS, _SQL_FIND_UNREADABLE_CONFIG),
    ("mcp_oauth_tokens", _SQL_BATCH_TOKENS, _SQL_FIND_UNREADABLE_OAUTH),
)

# --------------------------------------------------------------------------- API


class RotationError(InvalidInput):
    """A stored value opens with neither key: the rotation stopped and changed nothing of it."""

    def __init__(self, table: str, column: str, row_id: UUID | None) -> None:
        where = f"{table}.{column} of row {row_id}" if row_id else f"a value of {table}"
        super().__init__(
            f"{where} decrypts with neither the new nor the old key; rotation stopped "
            "(rows before it are done; fix or remove that value and run it again)",
            rule="rotation_value_unreadable",
        )
        self.table = table
        self.column = column
        self.row_id = row_id


@dataclass
class RotationResult:
    """What a rotation run did."""

    values_seen: int = 0
    values_reencrypted: int = 0
    batches: int = 0


@dataclass(frozen=True)
class ColumnCheck:
    """``--verify`` result for one encrypted column."""

    column: str
    total: int
    ok: int
    old_key: int
    unreadable: int
    sample: tuple[UUID, ...]


@dataclass
class VerifyReport:
    """``--verify`` result: every value must open with the new key and none with the old."""

    columns: list[ColumnCheck] = field(default_factory=list)
    checked_old_key: bool = True

    @property
    def ok(self) -> bool:
        return all(c.ok == c.total for c in self.columns)

    @property
    def total(self) -> int:
        return sum(c.total for c in self.columns)


def _check_keys(new_key: EncryptionKey, old_key: EncryptionKey | None) -> None:
    if old_key is not None and old_key == new_key:
        raise ConfigurationError(
            "the old and the new encryption key are the same key; nothing to rotate"
        )


def count_encrypted_values(conn: Conn) -> int:
    """How many encrypted values the database holds (for a progress bar)."""
    with service_transaction(conn):
        row = conn.execute(_SQL_COUNT).fetchone()
    return int(row[0]) if row is not None else 0


def rotate_keys(
    conn: Conn,
    new_key: EncryptionKey,
    old_key: EncryptionKey,
    *,
    batch_size: int = 500,
    on_batch: Callable[[int], None] | None = None,
) -> RotationResult:
    """Re-encrypt every value from ``old_key`` to ``new_key``; see the module docstring.

    ``conn`` must be in autocommit mode (each batch is its own transaction).
    ``on_batch(values_seen)`` is called after each committed batch.
    """
    if batch_size < 1 or batch_size > 100_000:
        raise InvalidInput("batch size must be between 1 and 100000", rule="batch_size")
    _check_keys(new_key, old_key)
    result = RotationResult()
    for table, batch_sql, find_sql in _BATCHES:
        after: UUID | None = None
        while True:
            params = {
                "after": after,
                "limit": batch_size,
                "new_key": new_key.sql_value,
                "old_key": old_key.sql_value,
            }
            try:
                with service_transaction(conn):
                    rows = conn.execute(batch_sql, params).fetchall()
            except psycopg.errors.DataCorrupted:
                with service_transaction(conn):
                    bad = conn.execute(find_sql, params).fetchone()
                raise RotationError(
                    table,
                    str(bad[1]) if bad else "?",
                    bad[0] if bad else None,
                ) from None
            if not rows:
                break
            after = rows[-1][0]
            seen = sum(int(r[2]) for r in rows)
            result.batches += 1
            result.values_seen += seen
            result.values_reencrypted += sum(int(r[1]) for r in rows)
            if on_batch is not None:
                on_batch(seen)
    return result


def verify_rotation(
    conn: Conn, new_key: EncryptionKey, old_key: EncryptionKey | None
) -> VerifyReport:
    """Check every value opens with ``new_key`` and none with ``old_key``; changes nothing."""
    _check_keys(new_key, old_key)
    params = {
        "new_key": new_key.sql_value,
        "old_key": old_key.sql_value if old_key is not None else None,
    }
    with service_transaction(conn):
        conn.execute(_SQL_READ_ONLY)
        rows = conn.execute(_SQL_VERIFY, params).fetchall()
    found = {str(r[0]): r for r in rows}
    report = VerifyReport(checked_old_key=old_key is not None)
    for column in ENCRYPTED_COLUMNS:
        r = found.get(column)
        if r is None:
            report.columns.append(ColumnCheck(column, 0, 0, 0, 0, ()))
        else:
            report.columns.append(
                ColumnCheck(column, int(r[1]), int(r[2]), int(r[3]), int(r[4]), tuple(r[5] or ()))
            )
    return report
