"""Agent sessions: create with a TTL, get, touch, list the active ones, revoke.

A user manages their own sessions; an admin also reads and revokes any session
of their organization. ``cleanup_expired`` is for ``as_service()``.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from agentapi_db import queries as Q
from agentapi_db.errors import InvalidInput, NotFound, PermissionDenied
from agentapi_db.models import ActiveSession, Page, Session
from agentapi_db.ops._core import (
    OpContext,
    Query,
    all_rows,
    check_limit,
    decode_cursor,
    missing_or_denied,
    one,
    paginate,
)

__all__ = [
    "cleanup_expired",
    "create",
    "get",
    "list_active",
    "revoke",
    "set_system_prompt",
    "touch",
]


def _positive(ttl: timedelta | None, what: str) -> timedelta | None:
    if ttl is not None and ttl <= timedelta(0):
        raise InvalidInput(
            f"{what} must be positive (rule user_sessions_expires_after_created)",
            rule="user_sessions_expires_after_created",
        )
    return ttl


def create(
    ctx: OpContext,
    *,
    workspace_path: str,
    ttl: timedelta | None = None,
    system_prompt: str | None = None,
    metadata: dict[str, Any] | None = None,
    user_id: UUID | None = None,
) -> Generator[Query, Any, Session]:
    """A new session for the acting user (or ``user_id``), expiring after ``ttl`` (None: never)."""
    uid = ctx.acting_user(user_id, "sessions.create")
    params = {
        "user_id": uid,
        "workspace_path": workspace_path,
        "system_prompt": system_prompt,
        "metadata": Jsonb(metadata or {}),
        "ttl": _positive(ttl, "ttl"),
    }
    row = yield from one("sessions.create", Q.SESSION_INSERT, params, writes=True)
    if row is None:
        raise NotFound("user not found (or inactive)")
    return Session.model_validate(row)


def get(ctx: OpContext, session_id: UUID) -> Generator[Query, Any, Session]:
    row = yield from one("sessions.get", Q.SESSION_GET, {"id": session_id})
    if row is None:
        raise NotFound("session not found")
    return Session.model_validate(row)


def touch(
    ctx: OpContext, session_id: UUID, *, extend: timedelta | None = None
) -> Generator[Query, Any, Session]:
    """Set ``last_active_at`` to now; with ``extend``, also ``expires_at = now() + extend``.

    An expired session cannot be touched (NotFound).
    """
    params = {"id": session_id, "extend": _positive(extend, "extend")}
    row = yield from one("sessions.touch", Q.SESSION_TOUCH, params, writes=True)
    if row is not None:
        return Session.model_validate(row)
    current = yield from one("sessions.get", Q.SESSION_GET, {"id": session_id})
    if current is None:
        raise NotFound("session not found")
    # Only its own user may update a session (the service any), so a session of
    # the caller's that the update did not match had expired when it ran, even if
    # a concurrent request of the same user has extended it since.
    own = ctx.mode == "service" or current["user_id"] == ctx.user_id
    expires = current["expires_at"]
    if own or (expires is not None and expires <= datetime.now(expires.tzinfo)):
        raise NotFound("session has expired")
    raise PermissionDenied("permission denied: you may not change this session")


def set_system_prompt(
    ctx: OpContext, session_id: UUID, system_prompt: str | None
) -> Generator[Query, Any, Session]:
    """Set (or clear, with None) the session's prompt override."""
    row = yield from one(
        "sessions.set_system_prompt",
        Q.SESSION_SET_PROMPT,
        {"id": session_id, "system_prompt": system_prompt},
        writes=True,
    )
    if row is None:
        raise (yield from missing_or_denied("sessions.get", Q.SESSION_GET, {"id": session_id},
                                            "session"))
    return Session.model_validate(row)


def list_active(
    ctx: OpContext,
    *,
    user_id: UUID | None = None,
    organization_id: UUID | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Generator[Query, Any, Page[ActiveSession]]:
    """Unexpired sessions the caller may see, newest first, keyset-paginated.

    A member sees their own; an admin every session of their organization; the
    service every session (filter with ``user_id`` / ``organization_id``).
    """
    check_limit(limit)
    after_ts, after_id = decode_cursor(cursor)
    rows = yield from all_rows(
        "sessions.list_active",
        Q.SESSION_LIST_ACTIVE,
        {
            "user_id": user_id,
            "organization_id": organization_id,
            "after_created_at": after_ts,
            "after_id": after_id,
            "limit": limit + 1,
        },
    )
    page, next_cursor = paginate(rows, limit, "created_at")
    return Page[ActiveSession](
        items=[ActiveSession.model_validate(r) for r in page], next_cursor=next_cursor
    )


def revoke(ctx: OpContext, session_id: UUID) -> Generator[Query, Any, None]:
    """Delete a session (own; an admin: any of their organization)."""
    row = yield from one("sessions.revoke", Q.SESSION_DELETE, {"id": session_id}, writes=True)
    if row is None:
        raise NotFound("session not found")


def cleanup_expired(ctx: OpContext) -> Generator[Query, Any, int]:
    """``cleanup_expired_sessions()``: delete expired sessions, return how many (service)."""
    row = yield from one("sessions.cleanup_expired", Q.SESSION_CLEANUP, {}, writes=True)
    return int(row["deleted"]) if row is not None else 0
