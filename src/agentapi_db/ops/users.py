"""Users: add, get, list, change role, (de)activate, update own profile, delete.

Admins manage the users of their organization; a member reads them and updates
their own ``metadata`` / ``last_login_at``. Row-level security enforces this; a
refused change surfaces as ``PermissionDenied``, an invisible user as ``NotFound``.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from agentapi_db import queries as Q
from agentapi_db.errors import NotFound
from agentapi_db.models import User, UserRole
from agentapi_db.ops._core import (
    OpContext,
    Query,
    Row,
    all_rows,
    missing_or_denied,
    one,
)

__all__ = [
    "activate",
    "add",
    "change_role",
    "deactivate",
    "delete",
    "get",
    "get_by_email",
    "list_users",
    "update_profile",
]


def add(
    ctx: OpContext,
    email: str,
    *,
    role: UserRole = "user",
    metadata: dict[str, Any] | None = None,
    organization_id: UUID | None = None,
) -> Generator[Query, Any, User]:
    """Add a user to ``organization_id`` (default: the acting admin's organization)."""
    row = yield from one(
        "users.add",
        Q.USER_INSERT,
        {
            "organization_id": organization_id,
            "email": email,
            "role": role,
            "metadata": Jsonb(metadata or {}),
        },
        writes=True,
    )
    return User.model_validate(row)


def get(ctx: OpContext, user_id: UUID | None = None) -> Generator[Query, Any, User]:
    """A user by id; without an id, the acting user."""
    uid = ctx.acting_user(user_id, "users.get")
    row = yield from one("users.get", Q.USER_GET, {"id": uid})
    if row is None:
        raise NotFound("user not found")
    return User.model_validate(row)


def get_by_email(
    ctx: OpContext, email: str, *, organization_id: UUID | None = None
) -> Generator[Query, Any, User]:
    """A user by email (case-insensitive) in an organization (default: the acting user's)."""
    row = yield from one(
        "users.get_by_email",
        Q.USER_GET_BY_EMAIL,
        {"organization_id": organization_id, "email": email},
    )
    if row is None:
        raise NotFound("user not found")
    return User.model_validate(row)


def list_users(
    ctx: OpContext, *, organization_id: UUID | None = None, include_inactive: bool = False
) -> Generator[Query, Any, list[User]]:
    """Users of an organization (default: the acting user's), by email."""
    rows = yield from all_rows(
        "users.list",
        Q.USER_LIST,
        {"organization_id": organization_id, "include_inactive": include_inactive},
    )
    return [User.model_validate(r) for r in rows]


def _changed(
    name: str, row: Row | None, user_id: UUID
) -> Generator[Query, Any, User]:
    if row is None:
        raise (yield from missing_or_denied(name, Q.USER_VISIBLE, {"id": user_id}, "user"))
    return User.model_validate(row)


def change_role(ctx: OpContext, user_id: UUID, role: UserRole) -> Generator[Query, Any, User]:
    row = yield from one(
        "users.change_role", Q.USER_SET_ROLE, {"id": user_id, "role": role}, writes=True
    )
    return (yield from _changed("users.visible", row, user_id))


def deactivate(ctx: OpContext, user_id: UUID) -> Generator[Query, Any, User]:
    """Mark a user inactive: from then on they act as nobody (see and write no rows)."""
    row = yield from one(
        "users.deactivate", Q.USER_SET_ACTIVE, {"id": user_id, "is_active": False}, writes=True
    )
    return (yield from _changed("users.visible", row, user_id))


def activate(ctx: OpContext, user_id: UUID) -> Generator[Query, Any, User]:
    row = yield from one(
        "users.activate", Q.USER_SET_ACTIVE, {"id": user_id, "is_active": True}, writes=True
    )
    return (yield from _changed("users.visible", row, user_id))


def update_profile(
    ctx: OpContext,
    user_id: UUID | None = None,
    *,
    metadata: dict[str, Any] | None = None,
    last_login_at: datetime | None = None,
) -> Generator[Query, Any, User]:
    """Replace ``metadata`` and/or set ``last_login_at`` (None leaves a field as is).

    Without ``user_id``: the acting user's own profile, which a member may change.
    """
    uid = ctx.acting_user(user_id, "users.update_profile")
    params = {
        "id": uid,
        "metadata": None if metadata is None else Jsonb(metadata),
        "last_login_at": last_login_at,
    }
    row = yield from one("users.update_profile", Q.USER_UPDATE_PROFILE, params, writes=True)
    return (yield from _changed("users.visible", row, uid))


def delete(ctx: OpContext, user_id: UUID) -> Generator[Query, Any, None]:
    """Delete a user and (by cascade) their sessions, personal configs and tokens."""
    row = yield from one("users.delete", Q.USER_DELETE, {"id": user_id}, writes=True)
    if row is None:
        raise (yield from missing_or_denied("users.visible", Q.USER_VISIBLE, {"id": user_id},
                                            "user"))
