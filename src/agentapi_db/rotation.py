"""Online, crash-safe encryption key rotation (``agentapi-db rotate-key``).

Every encrypted value (``mcp_configurations.bearer_token``,
``mcp_oauth_tokens.access_token`` and ``refresh_token``) is re-encrypted into the
``ag1`` format under the new key, in batches, in this process (no key and no
plaintext token is sent to PostgreSQL):

* a batch is one transaction as ``agentapi_service``: it locks the next
  ``batch_size`` rows by id (keyset pagination, ``FOR UPDATE``) and reads their
  ciphertexts; each value already ``ag1`` under the new key is left alone, every
  other one (``ag1`` under the old key, or the previous pgcrypto OpenPGP format
  under either key) is opened and sealed again under the new key, and the batch
  writes the changed ciphertexts back with one ``UPDATE ... FROM unnest``;
* each value is replaced atomically with its row, so at every instant it is
  readable by one of the two keys, whatever kills the process; running the
  rotation again skips what is done and finishes the rest;
* a value readable by neither key stops the rotation with :class:`RotationError`
  naming the row, and is never overwritten.

Without an old key, a run moves values of the previous format that open with the
(only) key into ``ag1``. While a rotation runs, the application must run with both
keys (``AGENTAPI_ENCRYPTION_KEY`` = new, ``AGENTAPI_OLD_ENCRYPTION_KEY`` = old): it
then decrypts with either and encrypts with the new one.

:func:`verify_rotation` checks, without changing anything, that every value is
``ag1`` under the new key and none opens with the old one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, LiteralString
from uuid import UUID

from agentapi_db.crypto.ring import KeyRing
from agentapi_db.crypto.sealed import is_sealed, sealed_key_id
from agentapi_db.errors import ConfigurationError, DecryptionError, InvalidInput
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
"""Every column that holds a token ciphertext."""

# --------------------------------------------------------------------------- SQL

_SQL_COUNT: Final[LiteralString] = """
SELECT (SELECT count(bearer_token) FROM public.mcp_configurations)
     + (SELECT count(access_token) + count(refresh_token) FROM public.mcp_oauth_tokens)
"""

_SQL_LOCK_CONFIGS: Final[LiteralString] = """
SELECT c.id, c.bearer_token
  FROM public.mcp_configurations AS c
 WHERE c.bearer_token IS NOT NULL
   AND (%(after)s::uuid IS NULL OR c.id > %(after)s::uuid)
 ORDER BY c.id
 LIMIT %(limit)s
   FOR UPDATE
"""

_SQL_WRITE_CONFIGS: Final[LiteralString] = """
UPDATE public.mcp_configurations AS c
   SET bearer_token = v.bearer_token
  FROM unnest(%(ids)s::uuid[], %(col0)s::text[]) AS v (id, bearer_token)
 WHERE c.id = v.id
"""

_SQL_LOCK_TOKENS: Final[LiteralString] = """
SELECT t.id, t.access_token, t.refresh_token
  FROM public.mcp_oauth_tokens AS t
 WHERE (%(after)s::uuid IS NULL OR t.id > %(after)s::uuid)
 ORDER BY t.id
 LIMIT %(limit)s
   FOR UPDATE
"""

_SQL_WRITE_TOKENS: Final[LiteralString] = """
UPDATE public.mcp_oauth_tokens AS t
   SET access_token = v.access_token, refresh_token = v.refresh_token
  FROM unnest(%(ids)s::uuid[], %(col0)s::text[], %(col1)s::text[])
       AS v (id, access_token, refresh_token)
 WHERE t.id = v.id
"""

# --verify reads every value (ciphertexts only) in id order.
_SQL_ALL_VALUES: Final[LiteralString] = """
SELECT 'mcp_configurations.bearer_token' AS col, c.id, c.bearer_token AS ct
  FROM public.mcp_configurations AS c WHERE c.bearer_token IS NOT NULL
UNION ALL
SELECT 'mcp_oauth_tokens.access_token', t.id, t.access_token
  FROM public.mcp_oauth_tokens AS t
UNION ALL
SELECT 'mcp_oauth_tokens.refresh_token', t.id, t.refresh_token
  FROM public.mcp_oauth_tokens AS t WHERE t.refresh_token IS NOT NULL
 ORDER BY 1, 2
"""

_SQL_READ_ONLY: Final[LiteralString] = "SET TRANSACTION READ ONLY"

_BATCHES: Final[tuple[tuple[str, tuple[str, ...], LiteralString, LiteralString], ...]] = (
    ("mcp_configurations", ("bearer_token",), _SQL_LOCK_CONFIGS, _SQL_WRITE_CONFIGS),
    ("mcp_oauth_tokens", ("access_token", "refresh_token"), _SQL_LOCK_TOKENS, _SQL_WRITE_TOKENS),
)

# --------------------------------------------------------------------------- API


class RotationError(InvalidInput):
    """A stored value opens with neither key: the rotation stopped and changed nothing of it."""

    # (the batch holding it is rolled back; batches before it are committed)

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
    legacy: int = 0
    """Values still in the previous (pgcrypto OpenPGP) format, opening with the new key."""


@dataclass
class VerifyReport:
    """``--verify`` result: every value must be ``ag1`` under the new key, none open with
    the old one."""

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


def _rewrap(ring: KeyRing, table: str, column: str, row_id: UUID, value: str) -> str:
    """``value`` as ``ag1`` under the ring's primary key (itself if it already is)."""
    if ring.is_current(value):
        return value
    try:
        return ring.seal(ring.open(value))
    except DecryptionError:
        raise RotationError(table, column, row_id) from None


def rotate_keys(
    conn: Conn,
    new_key: EncryptionKey,
    old_key: EncryptionKey | None,
    *,
    batch_size: int = 500,
    on_batch: Callable[[int], None] | None = None,
) -> RotationResult:
    """Re-encrypt every value into ``ag1`` under ``new_key``; see the module docstring.

    ``conn`` must be in autocommit mode (each batch is its own transaction).
    ``on_batch(values_seen)`` is called after each committed batch.
    """
    if batch_size < 1 or batch_size > 100_000:
        raise InvalidInput("batch size must be between 1 and 100000", rule="batch_size")
    _check_keys(new_key, old_key)
    ring = KeyRing(new_key, () if old_key is None else (old_key,))
    result = RotationResult()
    for table, columns, lock_sql, write_sql in _BATCHES:
        after: UUID | None = None
        while True:
            with service_transaction(conn):
                rows = conn.execute(lock_sql, {"after": after, "limit": batch_size}).fetchall()
                if not rows:
                    break
                seen = changed = 0
                new_values: list[list[str | None]] = [[] for _ in columns]
                for row in rows:
                    for i, column in enumerate(columns):
                        value = row[1 + i]
                        if value is None:
                            new_values[i].append(None)
                            continue
                        fresh = _rewrap(ring, table, column, row[0], value)
                        seen += 1
                        changed += fresh != value
                        new_values[i].append(fresh)
                if changed:
                    params: dict[str, object] = {"ids": [r[0] for r in rows]}
                    params.update({f"col{i}": v for i, v in enumerate(new_values)})
                    conn.execute(write_sql, params)
            after = rows[-1][0]
            result.batches += 1
            result.values_seen += seen
            result.values_reencrypted += changed
            if on_batch is not None:
                on_batch(seen)
    return result


def _classify(
    new: KeyRing, old: KeyRing | None, value: str
) -> str:
    """``ok`` (ag1 under the new key), ``old_key``, ``legacy`` (old format, new key) or
    ``unreadable``."""
    if is_sealed(value):
        try:
            kid = sealed_key_id(value)
        except DecryptionError:
            return "unreadable"
        ring = new if kid == new.primary_kid else old
        kind = "ok" if ring is new else "old_key"
    else:
        ring, kind = new, "legacy"
    for candidate, label in ((ring, kind), (old, "old_key")):
        if candidate is None:
            continue
        try:
            candidate.open(value)
            return label
        except DecryptionError:
            continue
    return "unreadable"


def verify_rotation(
    conn: Conn, new_key: EncryptionKey, old_key: EncryptionKey | None
) -> VerifyReport:
    """Check every value is ``ag1`` under ``new_key`` and none opens with ``old_key``;
    changes nothing. Values are read as ciphertexts and checked in this process."""
    _check_keys(new_key, old_key)
    new = KeyRing(new_key)
    old = None if old_key is None else KeyRing(old_key)
    counts: dict[str, dict[str, int]] = {c: {} for c in ENCRYPTED_COLUMNS}
    samples: dict[str, list[UUID]] = {c: [] for c in ENCRYPTED_COLUMNS}
    with service_transaction(conn):
        conn.execute(_SQL_READ_ONLY)
        for column, row_id, value in conn.execute(_SQL_ALL_VALUES):
            kind = _classify(new, old, value)
            bucket = counts[column]
            bucket[kind] = bucket.get(kind, 0) + 1
            if kind != "ok" and len(samples[column]) < 5:
                samples[column].append(row_id)
    report = VerifyReport(checked_old_key=old_key is not None)
    for column in ENCRYPTED_COLUMNS:
        c = counts[column]
        report.columns.append(ColumnCheck(
            column, sum(c.values()), c.get("ok", 0), c.get("old_key", 0),
            c.get("unreadable", 0), tuple(samples[column]), c.get("legacy", 0),
        ))
    return report
