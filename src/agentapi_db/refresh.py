"""The database side of OAuth token refresh, for refresh workers (as ``agentapi_service``).

A provider that rotates refresh tokens revokes the whole token family when one
refresh token is used twice, so two workers must never refresh the same token.

* :func:`claim_expiring` claims the tokens that expire within a window, with
  ``FOR UPDATE SKIP LOCKED`` (concurrent workers skip each other's rows instead of
  waiting) and a lease: ``refresh_claimed_by`` = the worker, and
  ``refresh_claimed_until`` = now + lease. A token whose lease is still running is
  not claimable; one whose lease ran out (a crashed worker) is, again.
* :func:`store_refreshed` writes the new access and refresh tokens (encrypted),
  the new expiry, resets the failure count and releases the lease, in one
  statement, and only if the caller still holds the lease (else :class:`LeaseLost`).
* :func:`record_failure` counts a failed refresh, keeps the provider's error
  (with the token values redacted from it, truncated), releases the lease and
  backs off: the token is not claimable again for ``2**failures`` minutes (at
  most an hour). ``refresh_claimed_until`` doubles as that "not before" time.
* :func:`revoke` deletes a token and records an audit event, atomically.

Plaintext tokens appear only in :class:`ClaimedToken` fields, which ``repr()``
hides. Tokens are encrypted and decrypted in this process
(:mod:`agentapi_db.crypto`): no key and no plaintext token reaches PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, LiteralString
from uuid import UUID

from agentapi_db.crypto.ring import ring_for
from agentapi_db.errors import AgentApiDbError, InvalidInput, NotFound
from agentapi_db.keys import EncryptionKey
from agentapi_db.ops._secrets import drive, open_values, org_sealer
from agentapi_db.opsdb import Conn, service_transaction

__all__ = [
    "MAX_ERROR_LENGTH",
    "ClaimedToken",
    "LeaseLost",
    "RefreshStatus",
    "claim_expiring",
    "record_failure",
    "refresh_status",
    "revoke",
    "store_refreshed",
]

MAX_ERROR_LENGTH: Final = 500
"""``last_refresh_error`` keeps at most this many characters."""

# --------------------------------------------------------------------------- SQL

_SQL_CLAIM: Final[LiteralString] = """
WITH due AS (
    SELECT t.id
      FROM public.mcp_oauth_tokens AS t
     WHERE t.expires_at IS NOT NULL
       AND t.expires_at <= now() + %(within)s::interval
       AND t.refresh_token IS NOT NULL
       AND (t.refresh_claimed_until IS NULL OR t.refresh_claimed_until <= now())
       AND t.refresh_failure_count < %(max_failures)s
     ORDER BY t.expires_at, t.id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE public.mcp_oauth_tokens AS t
   SET refresh_claimed_until = now() + %(lease)s::interval,
       refresh_claimed_by = %(worker)s
  FROM due
 WHERE t.id = due.id
RETURNING t.id, t.user_id, t.organization_id, t.mcp_configuration_id, t.oauth_provider,
          t.token_type, t.scope, t.expires_at, t.refresh_claimed_until, t.refresh_failure_count,
          t.access_token, t.refresh_token
"""

# The new refresh token is optional: providers that do not rotate it keep the old one.
_SQL_STORE: Final[LiteralString] = """
UPDATE public.mcp_oauth_tokens
   SET access_token = %(access_token)s,
       refresh_token = coalesce(%(refresh_token)s::text, refresh_token),
       expires_at = %(expires_at)s,
       token_type = coalesce(%(token_type)s::text, token_type),
       scope = coalesce(%(scope)s::text, scope),
       refresh_claimed_until = NULL,
       refresh_claimed_by = NULL,
       refresh_failure_count = 0,
       last_refresh_error = NULL,
       last_refreshed_at = now()
 WHERE id = %(id)s
   AND refresh_claimed_by = %(worker)s
   AND refresh_claimed_until > now()
RETURNING id
"""

_SQL_FAILURE: Final[LiteralString] = """
UPDATE public.mcp_oauth_tokens
   SET refresh_failure_count = refresh_failure_count + 1,
       last_refresh_error = %(error)s,
       refresh_claimed_by = NULL,
       refresh_claimed_until = now() + least(interval '1 minute' * power(2, refresh_failure_count),
                                             interval '1 hour')
 WHERE id = %(id)s
   AND refresh_claimed_by = %(worker)s
   AND refresh_claimed_until > now()
RETURNING refresh_failure_count
"""

_SQL_REVOKE: Final[LiteralString] = """
WITH gone AS (
    DELETE FROM public.mcp_oauth_tokens
     WHERE id = %(id)s
    RETURNING id, user_id, organization_id, mcp_configuration_id, oauth_provider
)
SELECT public.log_audit_event(
           g.user_id, g.organization_id, 'oauth_token.revoke', 'mcp_oauth_token', g.id::text,
           jsonb_build_object('reason', %(reason)s::text, 'oauth_provider', g.oauth_provider,
                              'mcp_configuration_id', g.mcp_configuration_id),
           NULL, NULL)
  FROM gone AS g
"""

_SQL_STATUS: Final[LiteralString] = """
SELECT count(*),
       count(*) FILTER (WHERE refresh_token IS NOT NULL),
       count(*) FILTER (WHERE expires_at <= now()),
       count(*) FILTER (WHERE expires_at > now() AND expires_at <= now() + %(within)s::interval),
       count(*) FILTER (WHERE refresh_claimed_by IS NOT NULL AND refresh_claimed_until > now()),
       count(*) FILTER (WHERE refresh_claimed_by IS NULL AND refresh_claimed_until > now()),
       count(*) FILTER (WHERE refresh_failure_count > 0),
       count(*) FILTER (WHERE refresh_failure_count >= %(max_failures)s),
       min(expires_at) FILTER (WHERE refresh_token IS NOT NULL)
  FROM public.mcp_oauth_tokens
"""

# --------------------------------------------------------------------------- API


class LeaseLost(AgentApiDbError):
    """The worker no longer holds the token's lease (it ran out, or another worker took it)."""


@dataclass(frozen=True)
class ClaimedToken:
    """A token claimed for refresh. The plaintext tokens are hidden from ``repr()``."""

    id: UUID
    user_id: UUID
    organization_id: UUID
    mcp_configuration_id: UUID
    oauth_provider: str
    token_type: str
    scope: str | None
    expires_at: datetime | None
    claimed_until: datetime
    failure_count: int
    worker_id: str
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)


def _interval(value: timedelta, name: str) -> timedelta:
    if value <= timedelta(0):
        raise InvalidInput(f"{name} must be positive", rule=name)
    return value


def _check_worker(worker_id: str) -> str:
    if not worker_id.strip() or len(worker_id) > 200:
        raise InvalidInput("worker id must be 1-200 characters", rule="worker_id")
    return worker_id


def claim_expiring(
    conn: Conn,
    *,
    worker_id: str,
    key: EncryptionKey,
    old_key: EncryptionKey | None = None,
    other_keys: tuple[EncryptionKey, ...] = (),
    within: timedelta = timedelta(minutes=5),
    limit: int = 50,
    lease: timedelta = timedelta(minutes=2),
    max_failures: int = 10,
) -> list[ClaimedToken]:
    """Claim up to ``limit`` tokens with a refresh token that expire within ``within``.

    Soonest expiry first. Committed before returning: the lease is visible to every
    other worker. Tokens that failed ``max_failures`` times in a row are left alone.
    """
    if limit < 1 or limit > 10_000:
        raise InvalidInput("limit must be between 1 and 10000", rule="limit")
    if within < timedelta(0):
        raise InvalidInput("within must not be negative", rule="within")
    params: dict[str, Any] = {
        "worker": _check_worker(worker_id),
        "within": within,
        "limit": limit,
        "lease": _interval(lease, "lease"),
        "max_failures": max_failures,
    }
    ring = ring_for(key, old_key, other_keys)
    # Decrypted inside the claiming transaction: a value no key opens rolls the
    # claim back (no lease is left on tokens nobody received).
    with service_transaction(conn):
        rows = conn.execute(_SQL_CLAIM, params).fetchall()
        values = drive(conn, open_values(ring, [v for r in rows for v in (r[10], r[11])]))
    opened = [(str(values[2 * i]), str(values[2 * i + 1])) for i in range(len(rows))]
    claims = [
        ClaimedToken(
            id=r[0],
            user_id=r[1],
            organization_id=r[2],
            mcp_configuration_id=r[3],
            oauth_provider=r[4],
            token_type=r[5],
            scope=r[6],
            expires_at=r[7],
            claimed_until=r[8],
            failure_count=r[9],
            worker_id=worker_id,
            access_token=access,
            refresh_token=refresh,
        )
        for r, (access, refresh) in zip(rows, opened, strict=True)
    ]
    claims.sort(key=lambda c: (c.expires_at is None, c.expires_at, str(c.id)))
    return claims


def store_refreshed(
    conn: Conn,
    claim: ClaimedToken,
    *,
    key: EncryptionKey,
    access_token: str,
    expires_at: datetime | None,
    refresh_token: str | None = None,
    token_type: str | None = None,
    scope: str | None = None,
) -> None:
    """Store the provider's new tokens (encrypted with ``key`` in this process) and release
    the lease.

    ``refresh_token=None`` keeps the current refresh token. Raises :class:`LeaseLost`
    (and changes nothing) if the lease ran out or another worker holds it now.
    """
    if not access_token:
        raise InvalidInput("access token must not be empty", rule="access_token")
    with service_transaction(conn):
        sealer = drive(conn, org_sealer(ring_for(key, None),
                                        organization_id=claim.organization_id))
        params: dict[str, Any] = {
            "id": claim.id,
            "worker": claim.worker_id,
            "access_token": sealer.seal(access_token),
            "refresh_token": sealer.seal_optional(refresh_token),
            "expires_at": expires_at,
            "token_type": token_type,
            "scope": scope,
        }
        row = conn.execute(_SQL_STORE, params).fetchone()
    if row is None:
        raise LeaseLost(f"the refresh lease on token {claim.id} is no longer held by this worker")


def redact(error: str, claim: ClaimedToken) -> str:
    """``error`` with the claim's token values replaced, cut to :data:`MAX_ERROR_LENGTH`."""
    text = error
    for secret in (claim.access_token, claim.refresh_token):
        if secret:
            text = text.replace(secret, "[redacted]")
    return text[:MAX_ERROR_LENGTH]


def record_failure(conn: Conn, claim: ClaimedToken, error: str) -> int:
    """Record a failed refresh, release the lease and back off; returns the failure count.

    The token values are redacted from ``error`` before it is stored.
    """
    params: dict[str, Any] = {
        "id": claim.id,
        "worker": claim.worker_id,
        "error": redact(error, claim) or "refresh failed",
    }
    with service_transaction(conn):
        row = conn.execute(_SQL_FAILURE, params).fetchone()
    if row is None:
        raise LeaseLost(f"the refresh lease on token {claim.id} is no longer held by this worker")
    return int(row[0])


def revoke(conn: Conn, token_id: UUID, *, reason: str) -> UUID:
    """Delete the token and record an ``oauth_token.revoke`` audit event (one transaction).

    Returns the audit event's id; :class:`NotFound` if there is no such token.
    """
    with service_transaction(conn):
        row = conn.execute(_SQL_REVOKE, {"id": token_id, "reason": reason}).fetchone()
    if row is None:
        raise NotFound(f"no OAuth token {token_id}")
    event_id: UUID = row[0]
    return event_id


@dataclass(frozen=True)
class RefreshStatus:
    """Counts over every OAuth token (no token values): what refresh workers face."""

    tokens: int
    refreshable: int
    expired: int
    expiring_soon: int
    leased: int
    backing_off: int
    failing: int
    given_up: int
    next_expiry: datetime | None


def refresh_status(
    conn: Conn, *, within: timedelta = timedelta(minutes=5), max_failures: int = 10
) -> RefreshStatus:
    """How many tokens are expired, expire within ``within``, are leased, failing..."""
    params: dict[str, Any] = {"within": within, "max_failures": max_failures}
    with service_transaction(conn):
        row = conn.execute(_SQL_STATUS, params).fetchone()
    if row is None:  # an aggregate always returns a row
        raise AgentApiDbError("the token status query returned nothing")
    n = [int(v) for v in row[:8]]
    return RefreshStatus(
        tokens=n[0], refreshable=n[1], expired=n[2], expiring_soon=n[3], leased=n[4],
        backing_off=n[5], failing=n[6], given_up=n[7], next_expiry=row[8],
    )
