"""System prompts: manage each scope, list the effective ones, render the final prompt.

Scopes: ``global`` (``as_service()`` only), ``organization`` (an admin of that
organization, or the service), ``user`` (the user themselves, or the service).
Rendering and the template syntax are described in :mod:`agentapi_db.prompt_render`.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any
from uuid import UUID

from agentapi_db import queries as Q
from agentapi_db.errors import InvalidInput, NotFound, rule_message
from agentapi_db.models import EffectivePrompt, PromptScope, RenderedPrompt, SystemPrompt
from agentapi_db.ops._core import (
    UNSET,
    OpContext,
    Query,
    Unset,
    all_rows,
    missing_or_denied,
    one,
)
from agentapi_db.prompt_render import compose, render_template

__all__ = ["create", "delete", "get", "list_effective", "list_prompts", "render", "update"]

_SCOPE_RULE = "system_prompts_scope_consistent"


def create(
    ctx: OpContext,
    content: str,
    *,
    scope: PromptScope = "user",
    priority: int = 0,
    template: str | None = None,
    enabled: bool = True,
    user_id: UUID | None = None,
    organization_id: UUID | None = None,
) -> Generator[Query, Any, SystemPrompt]:
    """Create a prompt.

    ``scope="user"``: for the acting user (or ``user_id``); ``"organization"``: for
    ``organization_id`` (default: the acting user's); ``"global"``: neither.
    A template's variables are supplied at render time (:func:`render`).
    """
    if scope == "global":
        if user_id is not None or organization_id is not None:
            raise InvalidInput(rule_message(_SCOPE_RULE), rule=_SCOPE_RULE)
        owner = None
    elif scope == "organization":
        if user_id is not None:
            raise InvalidInput(rule_message(_SCOPE_RULE), rule=_SCOPE_RULE)
        owner = None
    elif scope == "user":
        owner = ctx.acting_user(user_id, "prompts.create")
    else:
        raise InvalidInput("scope must be 'global', 'organization' or 'user'", rule="scope")
    params = {
        "scope": scope,
        "organization_id": organization_id,
        "user_id": owner,
        "content": content,
        "priority": priority,
        "template": template,
        "enabled": enabled,
    }
    row = yield from one("prompts.create", Q.PROMPT_INSERT, params, writes=True)
    return SystemPrompt.model_validate(row)


def get(ctx: OpContext, prompt_id: UUID) -> Generator[Query, Any, SystemPrompt]:
    row = yield from one("prompts.get", Q.PROMPT_GET, {"id": prompt_id})
    if row is None:
        raise NotFound("prompt not found")
    return SystemPrompt.model_validate(row)


def list_prompts(
    ctx: OpContext, *, scope: PromptScope | None = None, organization_id: UUID | None = None
) -> Generator[Query, Any, list[SystemPrompt]]:
    """Every prompt the caller may see (enabled or not), optionally filtered."""
    rows = yield from all_rows(
        "prompts.list", Q.PROMPT_LIST, {"scope": scope, "organization_id": organization_id}
    )
    return [SystemPrompt.model_validate(r) for r in rows]


def update(
    ctx: OpContext,
    prompt_id: UUID,
    *,
    content: str | None = None,
    priority: int | None = None,
    template: str | Unset | None = UNSET,
    enabled: bool | None = None,
) -> Generator[Query, Any, SystemPrompt]:
    """Change some fields (None / UNSET keep them; ``template=None`` removes the template)."""
    params = {
        "id": prompt_id,
        "content": content,
        "priority": priority,
        "set_template": not isinstance(template, Unset),
        "template": None if isinstance(template, Unset) else template,
        "enabled": enabled,
    }
    row = yield from one("prompts.update", Q.PROMPT_UPDATE, params, writes=True)
    if row is None:
        raise (yield from missing_or_denied("prompts.get", Q.PROMPT_GET, {"id": prompt_id},
                                            "prompt"))
    return SystemPrompt.model_validate(row)


def delete(ctx: OpContext, prompt_id: UUID) -> Generator[Query, Any, None]:
    row = yield from one("prompts.delete", Q.PROMPT_DELETE, {"id": prompt_id}, writes=True)
    if row is None:
        raise (yield from missing_or_denied("prompts.get", Q.PROMPT_GET, {"id": prompt_id},
                                            "prompt"))


def list_effective(
    ctx: OpContext, *, user_id: UUID | None = None
) -> Generator[Query, Any, list[EffectivePrompt]]:
    """``get_effective_system_prompts`` for a user (default: acting), in precedence order."""
    uid = ctx.acting_user(user_id, "prompts.list_effective")
    rows = yield from all_rows("prompts.list_effective", Q.PROMPT_EFFECTIVE, {"user_id": uid})
    return [EffectivePrompt.model_validate(r) for r in rows]


def render(
    ctx: OpContext,
    *,
    session_id: UUID | None = None,
    variables: Mapping[str, object] | None = None,
    user_id: UUID | None = None,
) -> Generator[Query, Any, RenderedPrompt]:
    """The final system prompt: the session's override if it has one, else the
    user's effective prompts (templates rendered with ``variables``).

    The user is ``user_id``, else the session's user, else the acting user.
    """
    values: Mapping[str, object] = variables or {}
    override: str | None = None
    uid = user_id
    if session_id is not None:
        session = yield from one("sessions.get", Q.SESSION_GET, {"id": session_id})
        if session is None:
            raise NotFound("session not found")
        override = session["system_prompt"]
        uid = uid or session["user_id"]
    if override is not None:
        return compose(override, [], values)
    prompts = yield from list_effective(ctx, user_id=ctx.acting_user(uid, "prompts.render"))
    return compose(None, prompts, values)


# Re-exported for callers who render a template on its own.
__all__ += ["render_template"]
