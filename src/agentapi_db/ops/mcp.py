"""MCP server configurations: create, update, get, list, list the effective ones, delete.

Inputs are validated in Python (:class:`~agentapi_db.models.McpConfigSpec`, same rule
names as the schema's constraints) before any statement runs. A bearer token is
encrypted in the application process before it is written (the statement only
carries its ciphertext) and decrypted, again in the process, only when asked:
``get(..., decrypt=True)``, ``get_secret(...)`` or ``list_effective(decrypt=True)``;
results otherwise carry ``bearer_token=None`` and ``has_bearer_token``.

The values of ``env`` (a stdio server's credentials, e.g. ``GITHUB_TOKEN``) are
secrets too: each is sealed (``ag1``) with the organization's data key in this
process before it is written, so ``mcp_configurations.env`` holds
``{"NAME": "ag1:<kid>:..."}``. Reads return every name with the value ``None``;
``decrypt=True`` (or ``get_env(...)``) opens the values, as ``SecretStr``. A value
stored in clear before values were encrypted is returned as it is when asked for
(``rotate-key`` seals it; ``verify`` reports it until then).

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
from agentapi_db.crypto.ring import KeyRing
from agentapi_db.crypto.sealed import is_sealed
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
    Row,
    Unset,
    all_rows,
    missing_or_denied,
    one,
    read_key_params,
    reveal,
)
from agentapi_db.ops._secrets import Sealer, env_plaintext, open_rows, open_values, org_sealer

__all__ = ["create", "delete", "get", "get_env", "get_secret", "list_configs", "list_effective",
           "update"]

# Stands in for a stored token that an update keeps, so the rules can be checked.
_STORED = SecretStr("<stored>")


def _spec(fields: dict[str, Any]) -> McpConfigSpec:
    try:
        return McpConfigSpec.model_validate(fields)
    except ValidationError as exc:
        raise invalid_input_from(exc) from None


def _sealed_env(spec: McpConfigSpec, sealer: Sealer | None) -> dict[str, str]:
    """Each value of ``spec.env`` sealed with the organization's data key."""
    if not spec.env:
        return {}
    if sealer is None:  # pragma: no cover - callers make a sealer whenever env is set
        raise InvalidInput("env values need the organization's data key", rule="env")
    return {name: sealer.seal(value.get_secret_value()) for name, value in spec.env.items()}


def _names_only(row: Row) -> Row:
    """``row`` with its env values hidden (in place): the names stay, the values are None."""
    row["env"] = dict.fromkeys(row["env"] or {})
    return row


def _open_env(ring: KeyRing, rows: list[Row]) -> Generator[Query, Any, list[Row]]:
    """The env values of ``rows`` decrypted in place (in this process). A value not in
    format ``ag1`` was stored in clear before values were encrypted: it is returned
    as it is (``rotate-key`` seals it)."""
    sealed = [v for r in rows for v in (r["env"] or {}).values()
              if isinstance(v, str) and is_sealed(v)]
    opened = iter((yield from open_values(ring, sealed)))
    for r in rows:
        r["env"] = {k: (next(opened) if isinstance(v, str) and is_sealed(v)
                        else env_plaintext(v))
                    for k, v in (r["env"] or {}).items()}
    return rows


def _write_params(
    spec: McpConfigSpec, token: str | None, sealer: Sealer | None, env: dict[str, Any]
) -> dict[str, object]:
    return {
        "name": spec.name,
        "type": spec.type,
        "endpoint": spec.endpoint,
        "command": spec.command,
        "args": Jsonb(list(spec.args)),
        "env": Jsonb(env),
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
    env: Mapping[str, str | SecretStr] | None = None,
    auth_type: AuthType = "none",
    bearer_token: str | SecretStr | None = None,
    oauth_provider: str | None = None,
    enabled: bool = True,
    scope: Literal["user", "organization"] = "user",
    user_id: UUID | None = None,
    organization_id: UUID | None = None,
) -> Generator[Query, Any, McpConfiguration]:
    """Create a configuration after validating it; the bearer token and the env values
    are stored encrypted."""
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
    if token is not None or spec.env:
        # The organization's data key encrypts the secrets, so the row's organization
        # is resolved first (given, else the owner's, else the acting user's).
        sealer = yield from org_sealer(ctx.ring(), organization_id=organization_id,
                                       user_id=owner)
        organization_id = sealer.organization_id
    params = _write_params(spec, token, sealer, _sealed_env(spec, sealer))
    params.update({"organization_id": organization_id, "user_id": owner})
    row = yield from one("mcp.create", Q.MCP_INSERT, params, writes=True, sensitive=True)
    if row is None:  # pragma: no cover - INSERT ... RETURNING returns its row
        raise NotFound("MCP configuration not created")
    return McpConfiguration.model_validate(_names_only(row))


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
    env: Mapping[str, str | SecretStr] | Unset = UNSET,
    auth_type: AuthType | Unset = UNSET,
    bearer_token: str | SecretStr | Unset | None = UNSET,
    oauth_provider: str | Unset | None = UNSET,
    enabled: bool | Unset = UNSET,
) -> Generator[Query, Any, McpConfiguration]:
    """Change some fields; the merged result is validated before it is written.

    Fields left ``UNSET`` keep their value. ``bearer_token=None`` removes the
    token; switching ``auth_type`` away from ``bearer`` removes it too. ``env``
    replaces the whole environment (each value sealed again); left ``UNSET``, the
    stored values are kept as they are, never decrypted. The scope (organization,
    owner) never changes.
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
    new_env = not isinstance(env, Unset)
    merged = {k: (current[k] if v is UNSET else v) for k, v in changes.items()}
    merged["args"] = list(merged["args"])
    # A kept env is not decrypted: its names alone are validated.
    merged["env"] = (dict.fromkeys(current["env"] or {}, _STORED) if isinstance(env, Unset)
                     else dict(env))
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
    if action == "set" or (new_env and spec.env):
        sealer = yield from org_sealer(ctx.ring(), organization_id=current["organization_id"])
    stored_env = _sealed_env(spec, sealer) if new_env else dict(current["env"] or {})
    params = _write_params(spec, token if action == "set" else None, sealer, stored_env)
    params.update({"id": config_id, "token_action": action})
    row = yield from one("mcp.update", Q.MCP_UPDATE, params, writes=True, sensitive=True)
    if row is None:  # pragma: no cover - the row is locked, so it cannot vanish
        raise NotFound("MCP configuration not found")
    return McpConfiguration.model_validate(_names_only(row))


def get(
    ctx: OpContext, config_id: UUID, *, decrypt: bool = False
) -> Generator[Query, Any, McpConfiguration]:
    """One configuration; with ``decrypt=True`` its bearer token and env values too
    (as ``SecretStr``)."""
    params = {"id": config_id, **read_key_params(ctx, decrypt)}
    row = yield from one("mcp.get", Q.MCP_GET, params, sensitive=decrypt)
    if row is None:
        raise NotFound("MCP configuration not found")
    if decrypt:
        yield from open_rows(ctx.ring(), [row], "bearer_token")
        yield from _open_env(ctx.ring(), [row])
    else:
        _names_only(row)
    return McpConfiguration.model_validate(row)


def get_secret(ctx: OpContext, config_id: UUID) -> Generator[Query, Any, SecretStr | None]:
    """The decrypted bearer token of a configuration (None if it has none)."""
    config = yield from get(ctx, config_id, decrypt=True)
    return config.bearer_token


def get_env(ctx: OpContext, config_id: UUID) -> Generator[Query, Any, dict[str, SecretStr]]:
    """The decrypted env of a configuration (name -> ``SecretStr``; empty if none)."""
    config = yield from get(ctx, config_id, decrypt=True)
    return {name: value for name, value in config.env.items() if value is not None}


def list_configs(
    ctx: OpContext, *, organization_id: UUID | None = None
) -> Generator[Query, Any, list[McpConfiguration]]:
    """All configurations of an organization the caller may see, enabled or not
    (org-wide first, then personal; by name). Tokens and env values are never
    decrypted here (env names only)."""
    rows = yield from all_rows("mcp.list", Q.MCP_LIST, {"organization_id": organization_id})
    return [McpConfiguration.model_validate(_names_only(r)) for r in rows]


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
        rows = yield from _open_env(ctx.ring(), rows)
    else:
        rows = [_names_only(r) for r in rows]
    return [EffectiveMcpConfiguration.model_validate(r) for r in rows]


def delete(ctx: OpContext, config_id: UUID) -> Generator[Query, Any, None]:
    """Delete a configuration (and, by cascade, its OAuth tokens)."""
    row = yield from one("mcp.delete", Q.MCP_DELETE, {"id": config_id}, writes=True)
    if row is None:
        raise (yield from missing_or_denied("mcp.visible", Q.MCP_GET, _visible(config_id),
                                            "MCP configuration"))
