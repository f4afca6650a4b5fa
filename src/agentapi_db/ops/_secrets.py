"""Envelope encryption inside operations: an organization's data key, and opening values.

* :func:`org_sealer` finds the organization a secret belongs to and its primary
  data key (unwrapped in this process, cached by the :class:`KeyRing`), making one
  if the organization has none yet (organizations created before data keys
  existed get theirs on their first secret write);
* :func:`open_values` learns the data keys a batch of ciphertexts needs (one
  statement, only for keys not cached yet) and decrypts them in this process.

Both are operations (generators of :class:`Query`), so the sync and async
executors run them, and :func:`drive` runs them on a plain connection (refresh
workers, rotation). Statements carry wrapped keys and ciphertexts only.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from psycopg.rows import dict_row

from agentapi_db import queries as Q
from agentapi_db.crypto.ring import KeyRing
from agentapi_db.crypto.sealed import SubKeys, seal
from agentapi_db.errors import NotFound
from agentapi_db.ops._core import Query, Row, all_rows, one
from agentapi_db.opsdb import Conn

__all__ = ["Sealer", "drive", "env_plaintext", "open_rows", "open_values", "org_sealer"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sealer:
    """Encrypts secrets of one organization with its primary data key."""

    organization_id: UUID
    keys: SubKeys

    def seal(self, plaintext: str) -> str:
        return seal(self.keys, plaintext)

    def seal_optional(self, plaintext: str | None) -> str | None:
        return None if plaintext is None else seal(self.keys, plaintext)


def org_sealer(
    ring: KeyRing, *, organization_id: UUID | None = None, user_id: UUID | None = None
) -> Generator[Query, Any, Sealer]:
    """The sealer of the given organization (else ``user_id``'s, else the acting user's)."""
    params = {"organization_id": organization_id, "user_id": user_id}
    for _ in range(2):
        row = yield from one("datakeys.primary", Q.DATA_KEY_PRIMARY, params)
        if row is None or row["organization_id"] is None:
            raise NotFound("organization not found")
        org: UUID = row["organization_id"]
        if row["key_id"] is not None:
            return Sealer(org, ring.learn(row["key_id"], row["wrapped_key"]))
        keys, wrapped = ring.new_data_key()
        made = yield from one(
            "datakeys.create",
            Q.DATA_KEY_INSERT,
            {"key_id": keys.kid, "organization_id": org, "wrapped_key": wrapped},
            writes=True,
        )
        if made is not None:
            return Sealer(org, keys)
        ring.forget(keys.kid)  # another transaction made it first: use theirs
        params = {"organization_id": org, "user_id": None}
    raise NotFound("organization not found")  # pragma: no cover - the winner's key exists


def open_values(
    ring: KeyRing, values: Sequence[str | None]
) -> Generator[Query, Any, list[str | None]]:
    """The plaintexts of ``values`` (None stays None), learning data keys as needed."""
    missing = ring.unknown_key_ids(values)
    if missing:
        rows = yield from all_rows(
            "datakeys.by_id", Q.DATA_KEYS_BY_ID, {"key_ids": sorted(missing)}
        )
        for r in rows:
            ring.learn(r["key_id"], r["wrapped_key"])
    return [ring.open_optional(v) for v in values]


def open_rows(ring: KeyRing, rows: list[Row], *fields: str) -> Generator[Query, Any, list[Row]]:
    """``rows`` with the ciphertexts in ``fields`` replaced by plaintexts (in place)."""
    values = [r.get(f) for r in rows for f in fields]
    opened = yield from open_values(ring, values)
    it = iter(opened)
    for r in rows:
        for f in fields:
            r[f] = next(it)
    return rows


def env_plaintext(value: object) -> str:
    """The text of an ``env`` value stored in clear (from before env values were
    encrypted): a JSON string as it is, any other JSON value as its JSON text."""
    return value if isinstance(value, str) else json.dumps(value)


def drive(conn: Conn, op: Generator[Query, Any, T]) -> T:
    """Run an operation on a plain connection, inside the caller's transaction."""
    result: Any = None
    try:
        while True:
            query = op.send(result)
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(query.sql, query.params)
                result = (cur.fetchone() if query.fetch == "one"
                          else cur.fetchall() if query.fetch == "all" else None)
    except StopIteration as stop:
        value: T = stop.value
        return value
