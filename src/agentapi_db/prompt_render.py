"""Rendering the final system prompt.

Template syntax
---------------
A prompt's ``template`` may contain placeholders ``{{name}}`` (spaces inside the
braces are allowed: ``{{ name }}``). A name is a letter or ``_`` followed by
letters, digits or ``_``. Every placeholder must have a variable: a missing one
raises :class:`~agentapi_db.errors.InvalidInput` (rule ``prompt_template_variable``)
naming it. Values are inserted with ``str()``, verbatim, and are not themselves
scanned for placeholders. To write literal braces, use ``{{{{`` for ``{{`` and
``}}}}`` for ``}}``. Any other text, including a lone ``{`` or ``{{`` that does
not form a placeholder, is kept as is.

Composition
-----------
1. If the session has a ``system_prompt`` override, that text alone is the
   result (``source="session"``); it is used verbatim, not rendered.
2. Else the effective prompts (user, then organization, then global; by priority
   within a scope; see ``get_effective_system_prompts``) are taken in order. Each
   contributes its rendered ``template`` if it has one, else its ``content``.
   Parts are joined with a blank line (``source="prompts"``).
3. No override and no prompts: empty text, ``source="empty"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from agentapi_db.errors import InvalidInput
from agentapi_db.models import EffectivePrompt, RenderedPrompt

__all__ = ["compose", "render_template"]

_TOKEN = re.compile(r"\{\{\{\{|\}\}\}\}|\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
SEPARATOR = "\n\n"


def render_template(template: str, variables: Mapping[str, object]) -> str:
    """Replace ``{{name}}`` placeholders; a missing variable raises InvalidInput."""

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "{{{{":
            return "{{"
        if text == "}}}}":
            return "}}"
        name = match.group(1)
        if name not in variables:
            raise InvalidInput(
                f"the prompt template needs the variable {name!r}, which was not given "
                "(rule prompt_template_variable)",
                rule="prompt_template_variable",
            )
        return str(variables[name])

    return _TOKEN.sub(replace, template)


def compose(
    session_prompt: str | None,
    prompts: Sequence[EffectivePrompt],
    variables: Mapping[str, object],
) -> RenderedPrompt:
    """The final prompt from a session override, or the effective prompts in order."""
    if session_prompt is not None:
        return RenderedPrompt(text=session_prompt, source="session")
    if not prompts:
        return RenderedPrompt(text="", source="empty")
    ordered = sorted(prompts, key=lambda p: p.precedence)
    parts = [
        render_template(p.template, variables) if p.template is not None else p.content
        for p in ordered
    ]
    return RenderedPrompt(
        text=SEPARATOR.join(parts), source="prompts", prompt_ids=[p.id for p in ordered]
    )
