"""MCP server configurations: create, update, get, list, list the effective ones, delete.

Inputs are validated in Python (:class:`~agentapi_db.models.McpConfigSpec`, same rule
names as the schema's constraints) before any statement runs. A bearer token is
encrypted in the application process before it is written (the statement only
carries its ciphertext) and decrypted, again in the process, only when asked:
``get(..., decrypt=True)``, ``get_secret(...)`` or ``list_effective(decrypt=True)``;
results otherwise carry ``bearer_token=None`` and ``has_bearer_token``.

Scope: ``scope="user"`` (default) makes a personal config of the acting user (or
``user_id``); ``scope="organization"`` an org-wide one, which only an admin (or
the service) may create, update or delete.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any, Literal
from uuid import UUID

from psycopg.types.json import Jsonb
from pydantic import SecretStr, ValidationError

from agentapi_db import queries as Q
from agentapi_db.errors import InvalidInput, NotFound
from agentapi_db.models import (
    AuthType,
    EffectiveMcpConfiguration,
    McpConfigSpec,
    McpConfiguration,
    McpType,
    invalid_input_from,
)
from agentapi_db.ops._core import (
    UNSET,
    OpContext,
    Query,
    Unset,
    all_rows,
    missing_or_denied,
    one,
    read_key_params,
    reveal,
)
from agentapi_db.ops._secrets import Sealer, open_rows, org_sealer

__all__ = ["create", "delete", "get", "get_secret", "list_configs", "list_effective", "update"]

# Stands in for a stored token that an update keeps, so the rules can be checked.
_STORED = SecretStr("<stored>")


def _spec(fields: dict[str, Any]) -> McpConfigSpec:
    try:
        return McpConfigSpec.model_validate(fields)
    except ValidationError as exc:
        raise invalid_input_from(exc) from None


def _write_params(
    spec: McpConfigSpec, token: str | None, sealer: Sealer | None
) -> dict[str, object]:
    return {
        "name": spec.name,
        "type": spec.type,
        "endpoint": spec.endpoint,
        "command": spec.command,
        "args": Jsonb(list(spec.args)),
        "env": Jsonb(dict(spec.env)),
        "auth_type": spec.auth_type,
        "bearer_token": sealer.seal(token) if sealer is not None and token is not None else None,
        "oauth_provider": spec.oauth_provider,
        "enabled": spec.enabled,
    }


def create(
    ctx: OpContext,
    *,
    name: str,
    type: McpType,
    endpoint: str | None = None,
    command: str | None = None,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    auth_type: AuthType = "none",
    bearer_token: str | SecretStr | None = None,
    oauth_provider: str | None = None,
    enabled: bool = True,
    scope: Literal["user", "organization"] = "user",
    user_id: UUID | None = None,
    organization_id: UUID | None = None,
) -> Generator[Query, Any, McpConfiguration]:
    """Create a configuration after validating it; the bearer token is stored encrypted."""
    spec = _spec(
        {
            "name": name,
            "type": type,
            "endpoint": endpoint,
            "command": command,
            "args": [] if args is None else args,
            "env": {} if env is None else env,
            "auth_type": auth_type,
            "bearer_token": bearer_token,
            "oauth_provider": oauth_provider,
            "enabled": enabled,
        }
    )
    if scope == "organization":
        if user_id is not None:
            raise InvalidInput("an organization-wide config has no user_id", rule="scope")
        owner = None
    elif scope == "user":
        owner = ctx.acting_user(user_id, "mcp.create")
    else:
        raise InvalidInput("scope must be 'user' or 'organization'", rule="scope")
    token = reveal(spec.bearer_token)
    sealer = None
    if token is not None:
        # The organization's data key encrypts the token, so the row's organization
        # is resolved first (given, else the owner's, else the acting user's).
        sealer = yield from org_sealer(ctx.ring(), organization_id=organization_id,
                                       user_id=owner)
        organization_id = sealer.organization_id
    params = _write_params(spec, token, sealer)
    params.update({"organization_id": organization_id, "user_id": owner})
    row = yield from one("mcp.create", Q.MCP_INSERT, params, writes=True, sensitive=True)
    return McpConfiguration.model_validate(row)


def _visible(config_id: UUID) -> dict[str, object]:
    return {"id": config_id, "decrypt": False}


def update(
    ctx: OpContext,
    config_id: UUID,
    *,
    name: str | Unset = UNSET,
    type: McpType | Unset = UNSET,
    endpoint: str | Unset | None = UNSET,
    command: str | Unset | None = UNSET,
    args: Sequence[str] | Unset = UNSET,
    env: Mapping[str, str] | Unset = UNSET,
    auth_type: AuthType | Unset = UNSET,
    bearer_token: str | SecretStr | Unset | None = UNSET,
    oauth_provider: str | Unset | None = UNSET,
    enabled: bool | Unset = UNSET,
) -> Generator[Query, Any, McpConfiguration]:
    """Change some fields; the merged result is validated before it is written.

    Fields left ``UNSET`` keep their value. ``bearer_token=None`` removes the
    token; switching ``auth_type`` away from ``bearer`` removes it too. The scope
    (organization, owner) never changes.
    """
    current = yield from one("mcp.lock", Q.MCP_LOCK, {"id": config_id})
    if current is None:
        raise (yield from missing_or_denied("mcp.visible", Q.MCP_GET, _visible(config_id),
                                            "MCP configuration"))
    changes: dict[str, Any] = {
        "name": name,
        "type": type,
        "endpoint": endpoint,
        "command": command,
        "args": args,
        "env": env,
        "auth_type": auth_type,
        "oauth_provider": oauth_provider,
        "enabled": enabled,
    }
    merged = {k: (current[k] if v is UNSET else v) for k, v in changes.items()}
    merged["args"] = list(merged["args"])
    merged["env"] = dict(merged["env"])
    if not isinstance(bearer_token, Unset):
        action = "clear" if bearer_token is None else "set"
    elif merged["auth_type"] != "bearer" and current["has_bearer_token"]:
        action = "clear"
    else:
        action = "keep"
    token = reveal(bearer_token) if not isinstance(bearer_token, Unset) else None
    if action == "set":
        merged["bearer_token"] = bearer_token
    elif action == "keep" and current["has_bearer_token"]:
        merged["bearer_token"] = _STORED
    else:
        merged["bearer_token"] = None
    spec = _spec(merged)
    sealer = None
    if action == "set":
        sealer = yield from org_sealer(ctx.ring(), organization_id=current["organization_id"])
    params = _write_params(spec, token if action == "set" else None, sealer)
    params.update({"id": config_id, "token_action": action})
    row = yield from one("mcp.update", Q.MCP_UPDATE, params, writes=True, sensitive=True)
    if row is None:  # pragma: no cover - the row is locked, so it cannot vanish
        raise NotFound("MCP configuration not found")
    return McpConfiguration.model_validate(row)


def get(
    ctx: OpContext, config_id: UUID, *, decrypt: bool = False
) -> Generator[Query, Any, McpConfiguration]:
    """One configuration; with ``decrypt=True`` its bearer token too (as ``SecretStr``)."""
    params = {"id": config_id, **read_key_params(ctx, decrypt)}
    row = yield from one("mcp.get", Q.MCP_GET, params, sensitive=decrypt)
    if row is None:
        raise NotFound("MCP configuration not found")
    if decrypt:
        yield from open_rows(ctx.ring(), [row], "bearer_token")
    return McpConfiguration.model_validate(row)


def get_secret(ctx: OpContext, config_id: UUID) -> Generator[Query, Any, SecretStr | None]:
    """The decrypted bearer token of a configuration (None if it has none)."""
    config = yield from get(ctx, config_id, decrypt=True)
    return config.bearer_token


def list_configs(
    ctx: OpContext, *, organization_id: UUID | None = None
) -> Generator[Query, Any, list[McpConfiguration]]:
    """All configurations of an organization the caller may see, enabled or not
    (org-wide first, then personal; by name). Tokens are never decrypted here."""
    rows = yield from all_rows("mcp.list", Q.MCP_LIST, {"organization_id": organization_id})
    return [McpConfiguration.model_validate(r) for r in rows]


def list_effective(
    ctx: OpContext, *, user_id: UUID | None = None, decrypt: bool = False
) -> Generator[Query, Any, list[EffectiveMcpConfiguration]]:
    """The enabled configurations in effect for a user (default: the acting user).

    Org-wide configs of their organization plus their own; a personal config
    shadows an org-wide one with the same name. Sorted by name.
    """
    uid = ctx.acting_user(user_id, "mcp.list_effective")
    params = {"user_id": uid, **read_key_params(ctx, decrypt)}
    rows = yield from all_rows("mcp.list_effective", Q.MCP_LIST_EFFECTIVE, params,
                               sensitive=decrypt)
    if decrypt:
        rows = yield from open_rows(ctx.ring(), rows, "bearer_token")
    return [EffectiveMcpConfiguration.model_validate(r) for r in rows]


def delete(ctx: OpContext, config_id: UUID) -> Generator[Query, Any, None]:
    """Delete a configuration (and, by cascade, its OAuth tokens)."""
    row = yield from one("mcp.delete", Q.MCP_DELETE, {"id": config_id}, writes=True)
    if row is None:
        raise (yield from missing_or_denied("mcp.visible", Q.MCP_GET, _visible(config_id),
                                            "MCP configuration"))
