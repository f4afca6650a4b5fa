"""Public names fixed by the data contract (shared/spec/contract.md).

One place for the names that code and tests both need, so they cannot drift.
"""

from __future__ import annotations

from typing import Final

OWNER_ROLE: Final = "agentapi_owner"
APP_ROLE: Final = "agentapi_app"
SERVICE_ROLE: Final = "agentapi_service"

TABLES: Final = (
    "organizations",
    "users",
    "user_sessions",
    "mcp_configurations",
    "mcp_oauth_tokens",
    "system_prompts",
    "audit_logs",
)
"""The seven contract tables, in dependency order."""
