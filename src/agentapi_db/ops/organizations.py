"""Organizations: provision (with the first admin, atomically), get, list, update, delete.

Provisioning and deleting are for ``as_service()``; under ``as_user()`` the
database refuses them (``PermissionDenied``). An admin reads and updates their
own organization; a member reads it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from agentapi_db import queries as Q
from agentapi_db.errors import NotFound
from agentapi_db.models import Organization, User
from agentapi_db.ops._core import OpContext, Query, all_rows, missing_or_denied, one

__all__ = ["delete", "get", "get_by_slug", "list_all", "provision", "update"]


def provision(
    ctx: OpContext,
    *,
    name: str,
    slug: str,
    admin_email: str,
    metadata: dict[str, Any] | None = None,
    admin_metadata: dict[str, Any] | None = None,
) -> Generator[Query, Any, tuple[Organization, User]]:
    """Create an organization and its first admin in one transaction (service only)."""
    org_row = yield from one(
        "organizations.provision.org",
        Q.ORG_INSERT,
        {"name": name, "slug": slug, "metadata": Jsonb(metadata or {})},
        writes=True,
    )
    org = Organization.model_validate(org_row)
    admin_row = yield from one(
        "organizations.provision.admin",
        Q.USER_INSERT,
        {
            "organization_id": org.id,
            "email": admin_email,
            "role": "admin",
            "metadata": Jsonb(admin_metadata or {}),
        },
        writes=True,
    )
    return org, User.model_validate(admin_row)


def get(ctx: OpContext, organization_id: UUID | None = None) -> Generator[Query, Any, Organization]:
    """An organization by id; without an id, the acting user's own."""
    row = yield from one("organizations.get", Q.ORG_GET, {"id": organization_id})
    if row is None:
        raise NotFound("organization not found")
    return Organization.model_validate(row)


def get_by_slug(ctx: OpContext, slug: str) -> Generator[Query, Any, Organization]:
    row = yield from one("organizations.get_by_slug", Q.ORG_GET_BY_SLUG, {"slug": slug})
    if row is None:
        raise NotFound("organization not found")
    return Organization.model_validate(row)


def list_all(ctx: OpContext) -> Generator[Query, Any, list[Organization]]:
    """Every organization the caller may see (a user: their own; the service: all)."""
    rows = yield from all_rows("organizations.list", Q.ORG_LIST, {})
    return [Organization.model_validate(r) for r in rows]


def update(
    ctx: OpContext,
    organization_id: UUID | None = None,
    *,
    name: str | None = None,
    slug: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Generator[Query, Any, Organization]:
    """Change name and/or metadata (None leaves a field as is): an admin of the
    organization, or the service. Changing ``slug`` is for the service only."""
    if slug is not None:
        moved = yield from one(
            "organizations.set_slug",
            Q.ORG_SET_SLUG,
            {"id": organization_id, "slug": slug},
            writes=True,
        )
        if moved is None:
            raise NotFound("organization not found")
    params = {
        "id": organization_id,
        "name": name,
        "metadata": None if metadata is None else Jsonb(metadata),
    }
    row = yield from one("organizations.update", Q.ORG_UPDATE, params, writes=True)
    if row is None:
        raise (
            yield from missing_or_denied(
                "organizations.visible", Q.ORG_VISIBLE, {"id": organization_id}, "organization"
            )
        )
    return Organization.model_validate(row)


def delete(ctx: OpContext, organization_id: UUID) -> Generator[Query, Any, None]:
    """Delete an organization and everything in it (service only)."""
    row = yield from one("organizations.delete", Q.ORG_DELETE, {"id": organization_id},
                         writes=True)
    if row is None:
        raise NotFound("organization not found")
