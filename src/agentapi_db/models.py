"""Typed results and validated inputs (pydantic v2, frozen).

Why pydantic rather than dataclasses: the same library gives us

* validation of *inputs* before they reach the database (an MCP configuration's
  type/endpoint/command/auth rules are checked in Python with the same rule names
  as the schema's CHECK constraints, so callers get :class:`InvalidInput` with
  ``.rule`` whether Python or PostgreSQL caught the mistake);
* typed, immutable *results* built straight from ``dict`` rows
  (``Model.model_validate(row)``), with UUIDs, datetimes and JSON checked;
* ``SecretStr`` for decrypted tokens: ``repr()``, ``str()`` and ``model_dump_json()``
  show ``'**********'``; the plain value needs an explicit ``.get_secret_value()``.

Results never carry ciphertexts. A secret is ``None`` unless it was decrypted on
request (``decrypt=True``); ``has_bearer_token`` says whether one is stored. The
same holds for each value of an MCP configuration's ``env``: its names are always
there, its values are ``None`` unless decrypted (then ``SecretStr``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agentapi_db.errors import InvalidInput, rule_message

__all__ = [
    "ActiveSession",
    "AuditEvent",
    "AuthType",
    "EffectiveMcpConfiguration",
    "EffectivePrompt",
    "McpConfigSpec",
    "McpConfiguration",
    "McpType",
    "OAuthToken",
    "Organization",
    "Page",
    "PromptScope",
    "RenderedPrompt",
    "Session",
    "SystemPrompt",
    "User",
    "UserRole",
    "check_mcp_rules",
    "invalid_input_from",
]

UserRole = Literal["admin", "user"]
McpType = Literal["http", "sse", "stdio"]
AuthType = Literal["none", "bearer", "oauth"]
PromptScope = Literal["global", "organization", "user"]

T = TypeVar("T")

_FROZEN = ConfigDict(frozen=True, extra="ignore")
_HTTP_ENDPOINT = re.compile(r"^https?://[^\s/?#]+\S*$", re.IGNORECASE)


class Organization(BaseModel):
    model_config = _FROZEN
    id: UUID
    name: str
    slug: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class User(BaseModel):
    model_config = _FROZEN
    id: UUID
    organization_id: UUID
    email: str
    role: UserRole
    is_active: bool
    metadata: dict[str, Any]
    last_login_at: datetime | None
    created_at: datetime
    updated_at: datetime


class Session(BaseModel):
    model_config = _FROZEN
    id: UUID
    user_id: UUID
    organization_id: UUID
    workspace_path: str
    system_prompt: str | None
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    last_active_at: datetime


class ActiveSession(Session):
    """A row of the ``active_user_sessions`` view."""

    user_email: str
    user_role: UserRole
    organization_name: str
    organization_slug: str


class McpConfiguration(BaseModel):
    model_config = _FROZEN
    id: UUID
    organization_id: UUID
    user_id: UUID | None
    name: str
    type: McpType
    endpoint: str | None
    command: str | None
    args: list[Any]
    env: dict[str, SecretStr | None]
    """Environment variables: every name; each value only when decrypted on request
    (``decrypt=True``, as ``SecretStr``), ``None`` otherwise. Values are stored
    encrypted with the organization's data key, like the bearer token."""
    auth_type: AuthType
    oauth_provider: str | None
    enabled: bool
    created_at: datetime
    updated_at: datetime
    has_bearer_token: bool
    bearer_token: SecretStr | None = None
    """Decrypted bearer token, only when asked for (``decrypt=True``)."""

    @property
    def scope(self) -> Literal["organization", "user"]:
        return "organization" if self.user_id is None else "user"

    @property
    def env_names(self) -> list[str]:
        """The names of the environment variables set (never their values), sorted."""
        return sorted(self.env)


class EffectiveMcpConfiguration(McpConfiguration):
    """A row of ``effective_mcp_configurations`` as it applies to one user."""

    organization_name: str
    organization_slug: str
    user_email: str | None
    config_scope: Literal["organization", "user"]


class OAuthToken(BaseModel):
    model_config = _FROZEN
    id: UUID
    user_id: UUID
    organization_id: UUID
    mcp_configuration_id: UUID
    oauth_provider: str
    token_type: str
    scope: str | None
    expires_at: datetime | None
    refresh_failure_count: int
    last_refreshed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    access_token: SecretStr | None = None
    """Decrypted access token, only when asked for (``decrypt=True``)."""
    refresh_token: SecretStr | None = None
    """Decrypted refresh token (None if asked for but absent, or not asked for)."""


class SystemPrompt(BaseModel):
    model_config = _FROZEN
    id: UUID
    scope: PromptScope
    organization_id: UUID | None
    user_id: UUID | None
    content: str
    priority: int
    template: str | None
    enabled: bool
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime


class EffectivePrompt(BaseModel):
    """A row of ``get_effective_system_prompts``: precedence 1 comes first."""

    model_config = _FROZEN
    id: UUID
    scope: PromptScope
    organization_id: UUID | None
    user_id: UUID | None
    content: str
    priority: int
    template: str | None
    created_at: datetime
    precedence: int


class RenderedPrompt(BaseModel):
    """The final system prompt and where it came from."""

    model_config = _FROZEN
    text: str
    source: Literal["session", "prompts", "empty"]
    prompt_ids: list[UUID] = Field(default_factory=list)


class AuditEvent(BaseModel):
    model_config = _FROZEN
    id: UUID
    timestamp: datetime
    user_id: UUID | None
    organization_id: UUID | None
    action: str
    resource_type: str
    resource_id: str | None
    details: dict[str, Any]
    ip_address: str | None
    user_agent: str | None
    success: bool
    error_message: str | None


class Page(BaseModel, Generic[T]):
    """One page of a keyset-paginated listing; pass ``next_cursor`` to get the next."""

    model_config = ConfigDict(frozen=True)
    items: list[T]
    next_cursor: str | None = None


# ---------------------------------------------------------------------------
# Validated input: MCP configurations
# ---------------------------------------------------------------------------


def check_mcp_rules(
    *,
    type: str,
    endpoint: str | None,
    command: str | None,
    auth_type: str,
    has_bearer_token: bool,
    oauth_provider: str | None,
) -> None:
    """The schema's MCP rules, checked in Python; raises :class:`InvalidInput` with the rule."""
    rule: str | None = None
    if type in ("http", "sse"):
        if endpoint is None or not _HTTP_ENDPOINT.match(endpoint) or command is not None:
            rule = "mcp_configurations_http_needs_endpoint"
    elif type == "stdio" and (command is None or not command.strip() or endpoint is not None):
        rule = "mcp_configurations_stdio_needs_command"
    if rule is None and (auth_type == "bearer") != has_bearer_token:
        rule = "mcp_configurations_bearer_token_iff_bearer"
    if rule is None and (
        (auth_type == "oauth") != (oauth_provider is not None)
        or (oauth_provider is not None and not oauth_provider.strip())
    ):
        rule = "mcp_configurations_oauth_provider_iff_oauth"
    if rule is not None:
        raise InvalidInput(rule_message(rule), rule=rule)


class McpConfigSpec(BaseModel):
    """What a caller gives to create an MCP configuration; validated on construction.

    Its validation errors never show the input (``hide_input_in_errors``): it holds
    the bearer token and the env values."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    name: str = Field(min_length=1, max_length=200)
    type: McpType
    endpoint: str | None = None
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, SecretStr] = Field(default_factory=dict)
    """Values are secrets (``SecretStr``): a repr or a validation error never shows them."""
    auth_type: AuthType = "none"
    bearer_token: SecretStr | None = None
    oauth_provider: str | None = None
    enabled: bool = True

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name in value:
            if not name or "\0" in name or "=" in name:
                raise PydanticCustomError(
                    "mcp_configurations_env_name",
                    "an env variable name must be non-empty, without '=' or NUL",
                )
        return value

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError(
                "mcp_configurations_name_not_blank", "name must not be blank"
            )
        return value

    @model_validator(mode="after")
    def _rules(self) -> McpConfigSpec:
        try:
            check_mcp_rules(
                type=self.type,
                endpoint=self.endpoint,
                command=self.command,
                auth_type=self.auth_type,
                has_bearer_token=self.bearer_token is not None,
                oauth_provider=self.oauth_provider,
            )
        except InvalidInput as exc:
            raise PydanticCustomError(exc.rule, exc.message) from None
        return self


def invalid_input_from(exc: ValidationError) -> InvalidInput:
    """An :class:`InvalidInput` for the first error of a pydantic ValidationError.

    Uses the error's location, type and message only: never the input value
    (which could be a token).
    """
    first = exc.errors(include_input=False, include_url=False)[0]
    loc = ".".join(str(part) for part in first["loc"]) or "input"
    kind = str(first["type"])
    if kind.startswith(("mcp_", "system_prompts_", "users_", "user_sessions_")):
        return InvalidInput(first["msg"], rule=kind)
    return InvalidInput(f"{loc}: {first['msg']}", rule=loc)
