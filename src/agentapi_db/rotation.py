"""Online, crash-safe master-key rotation (``agentapi-db rotate-key``).

Secrets are encrypted with per-organization data keys, which are stored wrapped
by the master key. Rotating the master key therefore re-wraps the data keys only
(one row per organization), in this process (no key and no plaintext token is
sent to PostgreSQL). A second pass moves values not yet under a data key
(the previous pgcrypto OpenPGP format, or ``ag1`` directly under a master key, as
an operator's ``encrypt_token`` in psql writes) to their organization's data key:

* a batch is one transaction as ``agentapi_service``: it locks the next
  ``batch_size`` rows by key (keyset pagination, ``FOR UPDATE``); a data key
  wrapped by the old master key is unwrapped and wrapped again by the new one; a
  value under a data key is left alone, any other one is opened and sealed
  under its organization's data key (made, wrapped by the new master key, if the
  organization has none); the batch writes back with one ``UPDATE ... FROM unnest``;
* each value is replaced atomically with its row, so at every instant it is
  readable by one of the two keys, whatever kills the process; running the
  rotation again skips what is done and finishes the rest;
* a data key or value readable by neither key stops the rotation with
  :class:`RotationError` naming the row, and is never overwritten.

Without an old key, a run moves values of the previous format (or under the one
master key directly) to the data keys. While a rotation runs, the application must run with both
keys (``AGENTAPI_ENCRYPTION_KEY`` = new, ``AGENTAPI_OLD_ENCRYPTION_KEY`` = old, or a
key ring ``AGENTAPI_ENCRYPTION_KEYS`` with the new key first): it then decrypts
with any and encrypts with the new one.

:func:`verify_rotation` checks, without changing anything, that every value is
under a data key wrapped by the new master key, and none opens with the old one.
Per-organization data-key rotation is :mod:`agentapi_db.datakeys`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, LiteralString
from uuid import UUID

from psycopg.types.json import Jsonb

from agentapi_db.crypto.ring import KeyRing
from agentapi_db.crypto.sealed import is_sealed, sealed_key_id
from agentapi_db.errors import ConfigurationError, DecryptionError, InvalidInput
from agentapi_db.keys import EncryptionKey
from agentapi_db.ops._secrets import Sealer, drive, env_plaintext, open_values, org_sealer
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
    "mcp_configurations.env",
    "mcp_oauth_tokens.access_token",
    "mcp_oauth_tokens.refresh_token",
)
"""Every column that holds a secret's ciphertext (``env``: each value of the JSON object)."""

# --------------------------------------------------------------------------- SQL

_SQL_COUNT: Final[LiteralString] = """
SELECT (SELECT count(bearer_token) FROM public.mcp_configurations)
     + (SELECT count(*) FROM public.mcp_configurations AS c, jsonb_each(c.env))
     + (SELECT count(access_token) + count(refresh_token) FROM public.mcp_oauth_tokens)
"""

_SQL_LOCK_CONFIGS: Final[LiteralString] = """
SELECT c.id, c.organization_id, c.bearer_token, c.env
  FROM public.mcp_configurations AS c
 WHERE (c.bearer_token IS NOT NULL OR c.env <> '{}'::jsonb)
   AND (%(after)s::uuid IS NULL OR c.id > %(after)s::uuid)
 ORDER BY c.id
 LIMIT %(limit)s
   FOR UPDATE
"""

_SQL_WRITE_CONFIGS: Final[LiteralString] = """
UPDATE public.mcp_configurations AS c
   SET bearer_token = v.bearer_token, env = v.env
  FROM unnest(%(ids)s::uuid[], %(col0)s::text[], %(col1)s::jsonb[]) AS v (id, bearer_token, env)
 WHERE c.id = v.id
"""

_SQL_LOCK_TOKENS: Final[LiteralString] = """
SELECT t.id, t.organization_id, t.access_token, t.refresh_token
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

_SQL_LOCK_DATA_KEYS: Final[LiteralString] = """
SELECT k.key_id, k.wrapped_key
  FROM public.organization_data_keys AS k
 WHERE (%(after)s::text IS NULL OR k.key_id > %(after)s::text)
 ORDER BY k.key_id
 LIMIT %(limit)s
   FOR UPDATE
"""

_SQL_WRITE_DATA_KEYS: Final[LiteralString] = """
UPDATE public.organization_data_keys AS k
   SET wrapped_key = v.wrapped_key
  FROM unnest(%(ids)s::text[], %(col0)s::text[]) AS v (key_id, wrapped_key)
 WHERE k.key_id = v.key_id
"""

_SQL_ALL_DATA_KEYS: Final[LiteralString] = """
SELECT key_id, wrapped_key FROM public.organization_data_keys ORDER BY key_id
"""

# --verify reads every value (ciphertexts only) in id order.
_SQL_ALL_VALUES: Final[LiteralString] = """
SELECT 'mcp_configurations.bearer_token' AS col, c.id, c.bearer_token AS ct
  FROM public.mcp_configurations AS c WHERE c.bearer_token IS NOT NULL
UNION ALL
SELECT 'mcp_configurations.env', c.id, e.value
  FROM public.mcp_configurations AS c CROSS JOIN LATERAL jsonb_each_text(c.env) AS e
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
    ("mcp_configurations", ("bearer_token", "env"), _SQL_LOCK_CONFIGS, _SQL_WRITE_CONFIGS),
    ("mcp_oauth_tokens", ("access_token", "refresh_token"), _SQL_LOCK_TOKENS, _SQL_WRITE_TOKENS),
)

# --------------------------------------------------------------------------- API


class RotationError(InvalidInput):
    """A stored value opens with neither key: the rotation stopped and changed nothing of it."""

    # (the batch holding it is rolled back; batches before it are committed)

    def __init__(self, table: str, column: str, row_id: UUID | str | None,
                 reason: str | None = None) -> None:
        where = f"{table}.{column} of row {row_id}" if row_id else f"a value of {table}"
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"{where} decrypts with no key of the key ring{why}; rotation stopped "
            "(rows before it are done; configure the missing key, or fix or remove that "
            "value, and run it again)",
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
    data_keys_seen: int = 0
    data_keys_rewrapped: int = 0


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
    direct: int = 0
    """Values in ``ag1`` directly under the new master key (not yet under a data key)."""
    plaintext: int = 0
    """``env`` values stored in clear (from before env values were encrypted)."""


@dataclass
class VerifyReport:
    """``--verify`` result: every value must be ``ag1`` under the new key, none open with
    the old one."""

    columns: list[ColumnCheck] = field(default_factory=list)
    checked_old_key: bool = True
    data_keys: int = 0
    data_keys_ok: int = 0
    """Data keys wrapped by the new master key."""
    data_keys_old: int = 0
    """Data keys still wrapped by the old master key."""

    @property
    def ok(self) -> bool:
        return (all(c.ok == c.total for c in self.columns)
                and self.data_keys_ok == self.data_keys)

    @property
    def total(self) -> int:
        return sum(c.total for c in self.columns)


def _previous(
    new_key: EncryptionKey, old_key: EncryptionKey | None, other_keys: Sequence[EncryptionKey]
) -> tuple[EncryptionKey, ...]:
    """The keys besides the new (primary) one: the old key, then the ring's others."""
    previous = ((old_key,) if old_key is not None else ()) + tuple(other_keys)
    if any(k == new_key for k in previous):
        raise ConfigurationError(
            "the old and the new encryption key are the same key; nothing to rotate"
        )
    return previous


def count_encrypted_values(conn: Conn) -> int:
    """How many encrypted values the database holds (for a progress bar)."""
    with service_transaction(conn):
        row = conn.execute(_SQL_COUNT).fetchone()
    return int(row[0]) if row is not None else 0


def _rewrap_data_keys(
    conn: Conn, ring: KeyRing, batch_size: int, result: RotationResult,
    on_batch: Callable[[int], None] | None,
) -> None:
    after: str | None = None
    while True:
        with service_transaction(conn):
            rows = conn.execute(_SQL_LOCK_DATA_KEYS,
                                {"after": after, "limit": batch_size}).fetchall()
            if not rows:
                return
            fresh: list[str] = []
            for key_id, wrapped in rows:
                if sealed_key_id(wrapped) == ring.primary_kid:
                    fresh.append(wrapped)
                    continue
                try:
                    fresh.append(ring.seal(ring.unwrap(wrapped).hex()))
                except DecryptionError as exc:
                    raise RotationError("organization_data_keys", "wrapped_key",
                                        key_id, reason=str(exc)) from None
            changed = sum(a != b for a, b in zip(fresh, (r[1] for r in rows), strict=True))
            if changed:
                conn.execute(_SQL_WRITE_DATA_KEYS, {"ids": [r[0] for r in rows], "col0": fresh})
        after = rows[-1][0]
        result.batches += 1
        result.data_keys_seen += len(rows)
        result.data_keys_rewrapped += changed
        if on_batch is not None:
            on_batch(0)


def _move_value(
    conn: Conn, ring: KeyRing, sealers: dict[UUID, Sealer], where: tuple[str, str, UUID],
    org: UUID, value: str, *, plaintext: bool = False,
) -> str:
    """``value`` unchanged if it is under a data key (checked: it must open), else sealed
    under its organization's data key. With ``plaintext``, a value not in ``ag1`` is
    a plaintext (an ``env`` value from before they were encrypted), sealed as it is."""
    try:
        if is_sealed(value) and not ring.is_master_key_id(sealed_key_id(value)):
            drive(conn, open_values(ring, [value]))
            return value
        plain = value if plaintext and not is_sealed(value) else ring.open(value)
    except DecryptionError as exc:
        raise RotationError(*where, reason=str(exc)) from None
    sealer = sealers.get(org)
    if sealer is None:
        sealer = sealers[org] = drive(conn, org_sealer(ring, organization_id=org))
    return sealer.seal(plain)


def _move_env(
    conn: Conn, ring: KeyRing, sealers: dict[UUID, Sealer], where: tuple[str, str, UUID],
    org: UUID, env: dict[str, object],
) -> dict[str, str]:
    """Each value of an ``env`` object moved as :func:`_move_value` does (plaintexts
    from before sealed)."""
    return {name: _move_value(conn, ring, sealers, where, org, env_plaintext(value),
                              plaintext=True)
            for name, value in env.items()}


def rotate_keys(
    conn: Conn,
    new_key: EncryptionKey,
    old_key: EncryptionKey | None,
    *,
    batch_size: int = 500,
    on_batch: Callable[[int], None] | None = None,
    other_keys: Sequence[EncryptionKey] = (),
) -> RotationResult:
    """Re-wrap every data key by ``new_key`` and move every other value to a data key;
    see the module docstring.

    ``old_key`` and ``other_keys`` (a key ring's keys besides its primary) only
    decrypt: a data key wrapped by any of them is re-wrapped by ``new_key``.

    ``conn`` must be in autocommit mode (each batch is its own transaction).
    ``on_batch(values_seen)`` is called after each committed batch.
    """
    if batch_size < 1 or batch_size > 100_000:
        raise InvalidInput("batch size must be between 1 and 100000", rule="batch_size")
    ring = KeyRing(new_key, _previous(new_key, old_key, other_keys))
    result = RotationResult()
    _rewrap_data_keys(conn, ring, batch_size, result, on_batch)
    for table, columns, lock_sql, write_sql in _BATCHES:
        after: UUID | None = None
        while True:
            sealers: dict[UUID, Sealer] = {}
            with service_transaction(conn):
                rows = conn.execute(lock_sql, {"after": after, "limit": batch_size}).fetchall()
                if not rows:
                    break
                seen = changed = 0
                new_values: list[list[object]] = [[] for _ in columns]
                for row in rows:
                    for i, column in enumerate(columns):
                        value = row[2 + i]
                        where = (table, column, row[0])
                        if column == "env":
                            env = _move_env(conn, ring, sealers, where, row[1], value)
                            seen += len(env)
                            changed += sum(env[k] != value[k] for k in env)
                            new_values[i].append(Jsonb(env))
                            continue
                        if value is None:
                            new_values[i].append(None)
                            continue
                        fresh = _move_value(conn, ring, sealers, where, row[1], value)
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


def _classify(new: KeyRing, old: KeyRing | None, value: str, column: str) -> str:
    """``ok`` (under a data key the new master key unwraps), ``old_key`` (opens only
    with the old master key), ``direct`` (ag1 directly under the new master key),
    ``legacy`` (previous format, new key), ``plaintext`` (an ``env`` value in clear)
    or ``unreadable``."""
    if column == "mcp_configurations.env" and not is_sealed(value):
        return "plaintext"
    kid = sealed_key_id(value) if is_sealed(value) else None
    for ring, label in ((new, "ok"), (old, "old_key")):
        if ring is None:
            continue
        try:
            ring.open(value)
        except DecryptionError:
            continue
        if label == "ok" and kid is None:
            return "legacy"
        if label == "ok" and ring.is_master_key_id(kid or ""):
            return "direct"
        return label
    return "unreadable"


def _load_data_keys(
    conn: Conn, new: KeyRing, old: KeyRing | None, report: VerifyReport
) -> None:
    for key_id, wrapped in conn.execute(_SQL_ALL_DATA_KEYS):
        report.data_keys += 1
        for ring, label in ((new, "ok"), (old, "old")):
            if ring is None:
                continue
            try:
                ring.learn(key_id, wrapped)
            except DecryptionError:
                continue
            if label == "ok":
                report.data_keys_ok += 1
            else:
                report.data_keys_old += 1
            break


def verify_rotation(
    conn: Conn, new_key: EncryptionKey, old_key: EncryptionKey | None,
    *, other_keys: Sequence[EncryptionKey] = (),
) -> VerifyReport:
    """Check every data key is wrapped by ``new_key`` and every value is under a data
    key, none opening with ``old_key`` (or any of ``other_keys``); changes nothing.
    Everything is read as ciphertext and checked in this process."""
    previous = _previous(new_key, old_key, other_keys)
    new = KeyRing(new_key)
    old = KeyRing(previous[0], previous[1:]) if previous else None
    counts: dict[str, dict[str, int]] = {c: {} for c in ENCRYPTED_COLUMNS}
    samples: dict[str, list[UUID]] = {c: [] for c in ENCRYPTED_COLUMNS}
    report = VerifyReport(checked_old_key=bool(previous))
    with service_transaction(conn):
        conn.execute(_SQL_READ_ONLY)
        _load_data_keys(conn, new, old, report)
        for column, row_id, value in conn.execute(_SQL_ALL_VALUES):
            kind = _classify(new, old, value, column)
            bucket = counts[column]
            bucket[kind] = bucket.get(kind, 0) + 1
            if kind != "ok" and len(samples[column]) < 5:
                samples[column].append(row_id)
    for column in ENCRYPTED_COLUMNS:
        c = counts[column]
        report.columns.append(ColumnCheck(
            column, sum(c.values()), c.get("ok", 0), c.get("old_key", 0),
            c.get("unreadable", 0), tuple(samples[column]), c.get("legacy", 0),
            c.get("direct", 0), c.get("plaintext", 0),
        ))
    return report
