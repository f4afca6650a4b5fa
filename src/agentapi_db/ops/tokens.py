"""OAuth tokens of a user for an MCP configuration: store (insert or replace), get, delete.

``store`` is one atomic ``INSERT ... ON CONFLICT DO UPDATE`` on the unique key
(user, organization, configuration); access and refresh tokens are encrypted in the
application process, and the statement carries only their ciphertexts. ``get``
decrypts (in the process) only with ``decrypt=True``. A user handles only their own tokens, for
configurations they can see.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import SecretStr

from agentapi_db import queries as Q
from agentapi_db.errors import InvalidInput, NotFound, rule_message
from agentapi_db.models import OAuthToken
from agentapi_db.ops._core import (
    OpContext,
    Query,
    all_rows,
    one,
    read_key_params,
    reveal,
)
from agentapi_db.ops._secrets import open_rows, org_sealer

__all__ = ["delete", "get", "list_tokens", "store"]


def store(
    ctx: OpContext,
    mcp_configuration_id: UUID,
    *,
    access_token: str | SecretStr,
    refresh_token: str | SecretStr | None = None,
    token_type: str = "Bearer",  # noqa: S107 - the OAuth token type, not a secret
    scope: str | None = None,
    expires_at: datetime | None = None,
    oauth_provider: str | None = None,
    user_id: UUID | None = None,
) -> Generator[Query, Any, OAuthToken]:
    """Insert or replace the token of a user (default: acting) for a configuration.

    ``oauth_provider`` defaults to the configuration's. Replacing resets the
    refresh bookkeeping (claim, failure count, last error).
    """
    uid = ctx.acting_user(user_id, "tokens.store")
    access = reveal(access_token)
    if not access:
        raise InvalidInput("access_token must not be empty", rule="access_token")
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidInput("expires_at must be timezone-aware", rule="expires_at")
    # The token belongs to the user's organization: its data key encrypts it.
    sealer = yield from org_sealer(ctx.ring(), user_id=uid)
    params = {
        "user_id": uid,
        "mcp_configuration_id": mcp_configuration_id,
        "oauth_provider": oauth_provider,
        "access_token": sealer.seal(access),
        "refresh_token": sealer.seal_optional(reveal(refresh_token) or None),
        "token_type": token_type,
        "scope": scope,
        "expires_at": expires_at,
    }
    row = yield from one("tokens.store", Q.OAUTH_UPSERT, params, writes=True, sensitive=True)
    if row is None:
        raise NotFound("MCP configuration (or user) not found")
    if row["id"] is None:
        rule = "mcp_oauth_tokens_configuration_oauth"
        raise InvalidInput(rule_message(rule), rule=rule)
    return OAuthToken.model_validate(row)


def get(
    ctx: OpContext,
    mcp_configuration_id: UUID,
    *,
    user_id: UUID | None = None,
    decrypt: bool = False,
) -> Generator[Query, Any, OAuthToken]:
    """The token row; with ``decrypt=True`` also the access and refresh tokens."""
    uid = ctx.acting_user(user_id, "tokens.get")
    params = {
        "user_id": uid,
        "mcp_configuration_id": mcp_configuration_id,
        **read_key_params(ctx, decrypt),
    }
    row = yield from one("tokens.get", Q.OAUTH_GET, params, sensitive=decrypt)
    if row is None:
        raise NotFound("OAuth token not found")
    if decrypt:
        yield from open_rows(ctx.ring(), [row], "access_token", "refresh_token")
    return OAuthToken.model_validate(row)


def list_tokens(
    ctx: OpContext, *, user_id: UUID | None = None
) -> Generator[Query, Any, list[OAuthToken]]:
    """A user's token rows (never decrypted)."""
    uid = ctx.acting_user(user_id, "tokens.list")
    rows = yield from all_rows("tokens.list", Q.OAUTH_LIST, {"user_id": uid})
    return [OAuthToken.model_validate(r) for r in rows]


def delete(
    ctx: OpContext, mcp_configuration_id: UUID, *, user_id: UUID | None = None
) -> Generator[Query, Any, None]:
    uid = ctx.acting_user(user_id, "tokens.delete")
    row = yield from one(
        "tokens.delete",
        Q.OAUTH_DELETE,
        {"user_id": uid, "mcp_configuration_id": mcp_configuration_id},
        writes=True,
    )
    if row is None:
        raise NotFound("OAuth token not found")
