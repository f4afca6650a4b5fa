"""Per-organization data keys: rotation of one organization's key, and crypto-shredding.

* :func:`rotate_org_data_key` gives an organization a new primary data key and
  re-encrypts that organization's secrets with it, in batches (one transaction
  each, rows locked by id), then deletes the old key once no value uses it. It
  is crash-safe and resumable: a run finding a retired (non-primary) key of the
  organization continues moving values off it instead of making yet another key.
* :func:`delete_organization` deletes an organization (its users, sessions,
  configurations, tokens and prompts by cascade) and its data keys, with an
  audit event, in one transaction: its secrets cannot be decrypted with the keys
  in use any more. The audit log is kept; see docs/encryption.md for what an
  older backup still holds and the master-key rotation that closes it.

Keys are wrapped, unwrapped and used in this process only (as ``agentapi_service``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, LiteralString
from uuid import UUID

from psycopg.types.json import Jsonb

from agentapi_db.crypto.ring import KeyRing
from agentapi_db.crypto.sealed import SubKeys, is_sealed, seal
from agentapi_db.errors import AgentApiDbError, InvalidInput, NotFound
from agentapi_db.ops._secrets import drive, env_plaintext, open_values
from agentapi_db.opsdb import Conn, service_transaction

__all__ = ["DataKeyRotation", "ShredResult", "delete_organization", "rotate_org_data_key"]

_SQL_ORG: Final[LiteralString] = """
SELECT id, name, slug FROM public.organizations WHERE lower(slug) = %(slug)s FOR UPDATE
"""

_SQL_ORG_KEYS: Final[LiteralString] = """
SELECT key_id, is_primary FROM public.organization_data_keys
 WHERE organization_id = %(org)s ORDER BY created_at, key_id FOR UPDATE
"""

_SQL_RETIRE_PRIMARY: Final[LiteralString] = """
UPDATE public.organization_data_keys SET is_primary = false
 WHERE organization_id = %(org)s AND is_primary
"""

_SQL_NEW_PRIMARY: Final[LiteralString] = """
INSERT INTO public.organization_data_keys (key_id, organization_id, wrapped_key, is_primary)
VALUES (%(key_id)s, %(org)s, %(wrapped_key)s, true)
"""

_SQL_PRIMARY: Final[LiteralString] = """
SELECT key_id, wrapped_key FROM public.organization_data_keys
 WHERE organization_id = %(org)s AND is_primary
"""

# Values of the organization not yet under its primary key, by id (keyset).
_SQL_LOCK_CONFIGS: Final[LiteralString] = """
SELECT c.id, c.bearer_token, c.env FROM public.mcp_configurations AS c
 WHERE c.organization_id = %(org)s
   AND (left(c.bearer_token, 21) <> %(prefix)s
        OR EXISTS (SELECT FROM jsonb_each_text(c.env) AS e
                    WHERE left(e.value, 21) IS DISTINCT FROM %(prefix)s))
   AND (%(after)s::uuid IS NULL OR c.id > %(after)s::uuid)
 ORDER BY c.id LIMIT %(limit)s FOR UPDATE
"""

_SQL_WRITE_CONFIG: Final[LiteralString] = """
UPDATE public.mcp_configurations SET bearer_token = %(v0)s, env = %(env)s WHERE id = %(id)s
"""

_SQL_LOCK_TOKENS: Final[LiteralString] = """
SELECT id, access_token, refresh_token FROM public.mcp_oauth_tokens
 WHERE organization_id = %(org)s
   AND (left(access_token, 21) <> %(prefix)s OR left(refresh_token, 21) <> %(prefix)s)
   AND (%(after)s::uuid IS NULL OR id > %(after)s::uuid)
 ORDER BY id LIMIT %(limit)s FOR UPDATE
"""

_SQL_WRITE_OAUTH: Final[LiteralString] = """
UPDATE public.mcp_oauth_tokens SET access_token = %(v0)s, refresh_token = %(v1)s
 WHERE id = %(id)s
"""

# A retired key is deleted only when no value of the organization still uses it.
_SQL_DROP_RETIRED: Final[LiteralString] = """
DELETE FROM public.organization_data_keys AS k
 WHERE k.organization_id = %(org)s AND NOT k.is_primary
   AND NOT EXISTS (SELECT FROM public.mcp_configurations AS c
                    WHERE c.organization_id = %(org)s
                      AND (left(c.bearer_token, 21) = 'ag1:' || k.key_id || ':'
                           OR EXISTS (SELECT FROM jsonb_each_text(c.env) AS e
                                       WHERE left(e.value, 21) = 'ag1:' || k.key_id || ':')))
   AND NOT EXISTS (SELECT FROM public.mcp_oauth_tokens AS t
                    WHERE t.organization_id = %(org)s
                      AND (left(t.access_token, 21) = 'ag1:' || k.key_id || ':'
                           OR left(t.refresh_token, 21) = 'ag1:' || k.key_id || ':'))
RETURNING k.key_id
"""

_SQL_DELETE_ORG: Final[LiteralString] = """
WITH keys AS (
    SELECT coalesce(array_agg(key_id ORDER BY key_id), '{}') AS ids
      FROM public.organization_data_keys WHERE organization_id = %(org)s
), gone AS (
    DELETE FROM public.organizations WHERE id = %(org)s RETURNING id
)
SELECT (SELECT ids FROM keys),
       (SELECT count(*) FROM public.users WHERE organization_id = %(org)s),
       (SELECT count(*) FROM public.mcp_configurations WHERE organization_id = %(org)s),
       (SELECT count(*) FROM public.mcp_oauth_tokens WHERE organization_id = %(org)s),
       (SELECT count(*) FROM gone)
"""

# Recorded without an organization: the organization's own rows (and chain head,
# if it was enrolled in the audit hash chain) are gone; its past events stay.
_SQL_AUDIT: Final[LiteralString] = """
SELECT public.log_audit_event(NULL, NULL, 'organization.delete', 'organization', %(org)s::text,
                              %(details)s, NULL, NULL)
"""

# (lock, write, how many text columns, whether the row has an env object too)
_BATCHES: Final = (
    (_SQL_LOCK_CONFIGS, _SQL_WRITE_CONFIG, 1, True),
    (_SQL_LOCK_TOKENS, _SQL_WRITE_OAUTH, 2, False),
)


def _reseal_env(
    conn: Conn, ring: KeyRing, primary: SubKeys, env: dict[str, object]
) -> tuple[dict[str, str], int]:
    """An ``env`` object with every value under ``primary`` (values already there kept,
    values in clear from before sealed), and how many values changed."""
    prefix = f"ag1:{primary.kid}:"
    todo = {k: v for k, v in env.items() if not (isinstance(v, str) and v.startswith(prefix))}
    sealed = {k: v for k, v in todo.items() if isinstance(v, str) and is_sealed(v)}
    opened = drive(conn, open_values(ring, list(sealed.values())))
    plain = {k: env_plaintext(v) for k, v in todo.items()}
    plain.update({k: v for k, v in zip(sealed, opened, strict=True) if v is not None})
    out = {k: str(v) for k, v in env.items()}
    out.update({k: seal(primary, v) for k, v in plain.items()})
    return out, len(plain)


@dataclass
class DataKeyRotation:
    """What :func:`rotate_org_data_key` did."""

    organization_id: UUID
    new_key_id: str
    values_reencrypted: int = 0
    retired_key_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShredResult:
    """What :func:`delete_organization` destroyed."""

    organization_id: UUID
    slug: str
    data_key_ids: tuple[str, ...]
    users: int
    configurations: int
    oauth_tokens: int
    audit_event_id: UUID


def _org(conn: Conn, slug: str) -> tuple[UUID, str, str]:
    row = conn.execute(_SQL_ORG, {"slug": slug}).fetchone()
    if row is None:
        raise NotFound(f"no organization with slug {slug!r}")
    return row[0], row[1], row[2]


def rotate_org_data_key(
    conn: Conn, ring: KeyRing, slug: str, *, batch_size: int = 500,
    on_batch: Callable[[int], None] | None = None,
) -> DataKeyRotation:
    """Give organization ``slug`` a new data key and re-encrypt its secrets with it."""
    if batch_size < 1 or batch_size > 100_000:
        raise InvalidInput("batch size must be between 1 and 100000", rule="batch_size")
    with service_transaction(conn):
        org, _, _ = _org(conn, slug)
        keys = conn.execute(_SQL_ORG_KEYS, {"org": org}).fetchall()
        if all(primary for _, primary in keys):  # nothing under way: start one
            fresh, wrapped = ring.new_data_key()
            conn.execute(_SQL_RETIRE_PRIMARY, {"org": org})
            conn.execute(_SQL_NEW_PRIMARY,
                         {"key_id": fresh.kid, "org": org, "wrapped_key": wrapped})
        row = conn.execute(_SQL_PRIMARY, {"org": org}).fetchone()
        if row is None:  # a run was interrupted between its retire and insert: impossible,
            raise AgentApiDbError(f"organization {slug!r} has no primary data key")  # one tx
        primary = ring.learn(row[0], row[1])
    result = DataKeyRotation(org, primary.kid)
    prefix = f"ag1:{primary.kid}:"
    for lock_sql, write_sql, width, with_env in _BATCHES:
        after: UUID | None = None
        while True:
            with service_transaction(conn):
                rows = conn.execute(lock_sql, {"org": org, "prefix": prefix, "after": after,
                                               "limit": batch_size}).fetchall()
                if not rows:
                    break
                plain = drive(conn, open_values(ring, [v for r in rows for v in r[1:1 + width]]))
                for i, r in enumerate(rows):
                    params: dict[str, object] = {"id": r[0]}
                    for j in range(width):
                        value = plain[i * width + j]
                        params[f"v{j}"] = None if value is None else seal(primary, value)
                    if with_env:
                        env, moved = _reseal_env(conn, ring, primary, r[1 + width])
                        params["env"] = Jsonb(env)
                        result.values_reencrypted += moved
                    conn.execute(write_sql, params)
                result.values_reencrypted += sum(v is not None for v in plain)
            after = rows[-1][0]
            if on_batch is not None:
                on_batch(len(rows))
    with service_transaction(conn):
        dropped = conn.execute(_SQL_DROP_RETIRED, {"org": org}).fetchall()
    result.retired_key_ids = tuple(str(r[0]) for r in dropped)
    for kid in result.retired_key_ids:
        ring.forget(kid)
    return result


def delete_organization(conn: Conn, slug: str, *, ring: KeyRing | None = None) -> ShredResult:
    """Delete organization ``slug`` with all its rows and data keys, audited, atomically."""
    with service_transaction(conn):
        org, name, org_slug = _org(conn, slug)
        row = conn.execute(_SQL_DELETE_ORG, {"org": org}).fetchone()
        if row is None:  # pragma: no cover - an aggregate row always comes back
            raise AgentApiDbError("deleting the organization returned nothing")
        key_ids = tuple(str(k) for k in row[0])
        details = {"slug": org_slug, "name": name, "data_key_ids": list(key_ids),
                   "users": int(row[1]), "mcp_configurations": int(row[2]),
                   "oauth_tokens": int(row[3]), "crypto_shredded": True}
        event = conn.execute(_SQL_AUDIT, {"org": org, "details": Jsonb(details)}).fetchone()
        if event is None:  # pragma: no cover - log_audit_event always returns an id
            raise AgentApiDbError("the audit event of the deletion was not recorded")
    if ring is not None:
        for kid in key_ids:
            ring.forget(kid)
    return ShredResult(org, org_slug, key_ids, int(row[1]), int(row[2]), int(row[3]), event[0])
