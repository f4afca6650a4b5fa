"""Audit events: log (``log_audit_event``) and query with filters and keyset pagination.

Under ``as_user()`` an event is always about the acting user and their
organization (the database refuses anything else with ``PermissionDenied``);
a member reads their own events, an admin those of their organization. The
service logs and reads anything.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from agentapi_db import queries as Q
from agentapi_db.errors import InvalidInput
from agentapi_db.models import AuditEvent, Page
from agentapi_db.ops._core import OpContext, Query, all_rows, check_limit, decode_cursor, one
from agentapi_db.ops._core import paginate as _paginate

__all__ = ["log", "query"]


def log(
    ctx: OpContext,
    action: str,
    resource_type: str,
    *,
    resource_id: str | UUID | None = None,
    details: Mapping[str, Any] | None = None,
    ip_address: str | IPv4Address | IPv6Address | None = None,
    user_agent: str | None = None,
    success: bool = True,
    error_message: str | None = None,
    user_id: UUID | None = None,
    organization_id: UUID | None = None,
) -> Generator[Query, Any, UUID]:
    """Append one event and return its id. ``user_id`` / ``organization_id`` default to
    the acting user and their organization."""
    params = {
        "user_id": user_id,
        "organization_id": organization_id,
        "action": action,
        "resource_type": resource_type,
        "resource_id": None if resource_id is None else str(resource_id),
        "details": Jsonb(dict(details or {})),
        "ip_address": None if ip_address is None else str(ip_address),
        "user_agent": user_agent,
        "success": success,
        "error_message": error_message,
    }
    row = yield from one("audit.log", Q.AUDIT_LOG, params, writes=True)
    if row is None:  # pragma: no cover - a SELECT of a function returns one row
        raise InvalidInput("log_audit_event returned nothing", rule="audit")
    return UUID(str(row["id"]))


def query(
    ctx: OpContext,
    *,
    action: str | None = None,
    resource_type: str | None = None,
    user_id: UUID | None = None,
    organization_id: UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Generator[Query, Any, Page[AuditEvent]]:
    """Events the caller may read, newest first; ``since`` inclusive, ``until`` exclusive.

    Pass the returned ``next_cursor`` (with the same filters) for the next page.
    """
    check_limit(limit, 10_000)
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(f"{name} must be timezone-aware", rule=name)
    after_ts, after_id = decode_cursor(cursor)
    rows = yield from all_rows(
        "audit.query",
        Q.AUDIT_QUERY,
        {
            "action": action,
            "resource_type": resource_type,
            "user_id": user_id,
            "organization_id": organization_id,
            "since": since,
            "until": until,
            "after_ts": after_ts,
            "after_id": after_id,
            "limit": limit + 1,
        },
    )
    page, next_cursor = _paginate(rows, limit, "timestamp")
    return Page[AuditEvent](
        items=[AuditEvent.model_validate(r) for r in page], next_cursor=next_cursor
    )
