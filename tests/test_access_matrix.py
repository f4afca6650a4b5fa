"""The contract's access matrix for ``agentapi_app``, table-driven.

Every (table, action, actor) of the contract's "Who may do what" is a row of
:data:`CASES`. A SELECT case lists exactly which seeded rows the actor sees; a
write case says how many rows it affects (RLS-filtered rows give 0) or which error
it raises (``rls``: a policy refused the new row; ``privilege``: no grant; ``check``
/ ``fk``: a constraint or trigger). Each case acts through the real login
``app_login`` as agentapi_app in its own rolled-back transaction.

Test ids read like the matrix: ``user_sessions-update-admin_A-member_A_session-denied``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from tests.access_fixtures import (
    A_USERS,
    ACTORS,
    ALLOWED,
    B_USERS,
    CIPHERTEXT,
    CONFIGS,
    DISABLED_CONFIGS,
    EXPIRED_SESSIONS,
    FILTERED,
    ID,
    INACTIVE_USERS,
    NOBODY,
    NOW,
    PEOPLE,
    PRIV,
    RLS,
    SEED_LABELS,
    SESSIONS,
    Outcome,
    Seeded,
    attempt,
    check,
    delete_sql,
    fk,
    insert_sql,
    org_of,
    row_values,
    seed,
    update_sql,
    visible_labels,
)
from tests.pg import SUPERUSER, TABLES, TestDatabase

ACTIONS = ("select", "insert", "update", "delete")

# The one statement this module runs besides the generated case statements: the
# mutation test's deliberately broken policy (run on a throwaway database).
_BREAK_SESSIONS_SELECT = "ALTER POLICY user_sessions_select ON user_sessions USING (true)"

Row = Mapping[str, object]


@dataclass(frozen=True)
class Case:
    table: str
    action: str
    actor: str
    what: str
    visible: frozenset[str] = frozenset()
    row: Row = field(default_factory=dict)
    target: str | None = None
    expect: Outcome = ALLOWED

    @property
    def id(self) -> str:
        if self.action == "select":
            return f"{self.table}-select-{self.actor}-{self.what}"
        verdict = "allowed" if self.expect.allowed else "denied"
        return f"{self.table}-{self.action}-{self.actor}-{self.what}-{verdict}"


# ---------------------------------------------------------------------------
# Case builders
# ---------------------------------------------------------------------------


def sel(table: str, actor: str, visible: list[str]) -> Case:
    what = f"sees_{len(visible)}_rows" if visible else "sees_nothing"
    return Case(table, "select", actor, what, visible=frozenset(visible))


def ins(table: str, actor: str, what: str, row: Row, expect: Outcome) -> Case:
    return Case(table, "insert", actor, what, row=row, expect=expect)


def upd(table: str, actor: str, target: str, what: str, changes: Row, expect: Outcome) -> Case:
    return Case(table, "update", actor, what, row=changes, target=target, expect=expect)


def dele(table: str, actor: str, target: str, expect: Outcome, what: str | None = None) -> Case:
    return Case(table, "delete", actor, what or target, target=target, expect=expect)


def org_row(slug: str) -> Row:
    return {"name": "New org", "slug": slug}


def user_row(org: str, email: str, role: str = "user") -> Row:
    return {"organization_id": ID[org], "email": email, "role": role}


def session_row(user: str, org: str | None = None) -> Row:
    return {
        "user_id": ID[user],
        "organization_id": ID[org or org_of(user)],
        "workspace_path": "/workspaces/new",
    }


def config_row(org: str, user: str | None = None) -> Row:
    return {
        "organization_id": ID[org],
        "user_id": ID[user] if user else None,
        "name": "new-config",
        "type": "http",
        "endpoint": "https://mcp.example.com/new",
        "auth_type": "none",
    }


def token_row(user: str, config: str, org: str | None = None) -> Row:
    return {
        "user_id": ID[user],
        "organization_id": ID[org or CONFIGS[config][0]],
        "mcp_configuration_id": ID[config],
        "oauth_provider": "github",
        "access_token": CIPHERTEXT,
    }


def prompt_row(
    scope: str, org: str | None = None, user: str | None = None, created_by: str | None = None
) -> Row:
    return {
        "scope": scope,
        "organization_id": ID[org] if org else None,
        "user_id": ID[user] if user else None,
        "content": "a new prompt",
        "created_by": ID[created_by] if created_by else None,
    }


def audit_row(user: str | None, org: str | None) -> Row:
    return {
        "user_id": ID[user] if user else None,
        "organization_id": ID[org] if org else None,
        "action": "test.event",
        "resource_type": "test",
    }


META = {"metadata": {"theme": "dark"}}
PATH = {"workspace_path": "/workspaces/changed"}
ENDPOINT = {"endpoint": "https://mcp.example.com/changed"}
ACCESS = {"access_token": CIPHERTEXT}
CONTENT = {"content": "changed prompt"}
ORG_NAME = {"name": "Renamed org"}

# ---------------------------------------------------------------------------
# SELECT: exactly which seeded rows each actor sees
# ---------------------------------------------------------------------------

SESSIONS_OF = {
    u: [s for s, (owner, *_) in SESSIONS.items() if owner == u] for u in A_USERS + B_USERS
}
GLOBAL_PROMPTS = ["pr_global", "pr_global_low", "pr_global_off"]
ORG_WIDE_A = ["cfg_org_A", "cfg_org_A_off", "cfg_org_A_spare"]
ORG_WIDE_B = ["cfg_org_B", "cfg_org_B_spare"]

VISIBLE: dict[str, dict[str, list[str]]] = {
    "organizations": {
        "member_A": ["org_A"],
        "admin_A": ["org_A"],
        "member_B": ["org_B"],
        "admin_B": ["org_B"],
    },
    "users": {"member_A": A_USERS, "admin_A": A_USERS, "member_B": B_USERS, "admin_B": B_USERS},
    "user_sessions": {
        "member_A": SESSIONS_OF["member_A"],
        "admin_A": [s for u in A_USERS for s in SESSIONS_OF[u]],
        "member_B": SESSIONS_OF["member_B"],
        "admin_B": [s for u in B_USERS for s in SESSIONS_OF[u]],
    },
    "mcp_configurations": {
        "member_A": [*ORG_WIDE_A, "cfg_member_A", "cfg_member_A_off"],
        "admin_A": [*ORG_WIDE_A, "cfg_admin_A"],
        "member_B": [*ORG_WIDE_B, "cfg_member_B"],
        "admin_B": ORG_WIDE_B,
    },
    "mcp_oauth_tokens": {
        "member_A": ["tok_member_A_org", "tok_member_A_own"],
        "admin_A": ["tok_admin_A_org", "tok_admin_A_own"],
        "member_B": ["tok_member_B_org", "tok_member_B_own"],
        "admin_B": ["tok_admin_B_org"],
    },
    "system_prompts": {
        "member_A": [*GLOBAL_PROMPTS, "pr_org_A", "pr_org_A_off", "pr_user_member_A"],
        "admin_A": [*GLOBAL_PROMPTS, "pr_org_A", "pr_org_A_off", "pr_user_admin_A"],
        "member_B": [*GLOBAL_PROMPTS, "pr_org_B", "pr_user_member_B"],
        "admin_B": [*GLOBAL_PROMPTS, "pr_org_B", "pr_user_admin_B"],
    },
    "audit_logs": {
        "member_A": ["audit_member_A_in_org_A"],
        "admin_A": [*(f"audit_{u}_in_org_A" for u in A_USERS + B_USERS), "audit_system_in_org_A"],
        "member_B": ["audit_member_B_in_org_B"],
        "admin_B": [*(f"audit_{u}_in_org_B" for u in A_USERS + B_USERS), "audit_system_in_org_B"],
    },
}
"""The read column of the matrix; every actor in NOBODY sees nothing anywhere."""

SELECT_CASES = [
    sel(table, actor, VISIBLE[table].get(actor, [])) for table in TABLES for actor in ACTORS
]

# ---------------------------------------------------------------------------
# INSERT / UPDATE / DELETE, table by table
# ---------------------------------------------------------------------------

ORGANIZATION_CASES = [
    # Nobody in the app creates or deletes an organization (no grant at all).
    *(ins("organizations", a, "new_org", org_row("org-new"), PRIV) for a in ACTORS),
    *(dele("organizations", a, "org_A", PRIV) for a in ACTORS),
    dele("organizations", "admin_B", "org_B", PRIV),
    # Admins update their own organization only; members none.
    upd("organizations", "admin_A", "org_A", "own_org_name", ORG_NAME, ALLOWED),
    upd("organizations", "admin_A", "org_A", "own_org_id", {"id": ID["org_B"]}, PRIV),
    upd("organizations", "admin_A", "org_B", "other_org_name", ORG_NAME, FILTERED),
    upd("organizations", "member_A", "org_A", "own_org_name", ORG_NAME, FILTERED),
    upd("organizations", "admin_B", "org_B", "own_org_name", ORG_NAME, ALLOWED),
    upd("organizations", "admin_B", "org_A", "other_org_name", ORG_NAME, FILTERED),
    upd("organizations", "member_B", "org_B", "own_org_name", ORG_NAME, FILTERED),
    *(upd("organizations", a, "org_A", "org_A_name", ORG_NAME, FILTERED) for a in NOBODY),
]

USER_CASES = [
    ins("users", "admin_A", "user_in_own_org", user_row("org_A", "new@a.example.com"), ALLOWED),
    ins(
        "users",
        "admin_A",
        "admin_in_own_org",
        user_row("org_A", "boss@a.example.com", "admin"),
        ALLOWED,
    ),
    ins("users", "admin_A", "user_in_org_B", user_row("org_B", "new@b.example.com"), RLS),
    # Emails are unique per organization only: no oracle on another tenant's users.
    ins("users", "admin_A", "user_with_email_used_in_org_B",
        user_row("org_A", "MEMBER@b.example.com"), ALLOWED),
    ins("users", "admin_A", "user_with_email_taken_in_own_org",
        user_row("org_A", "Member@A.example.com"), Outcome(error="unique",
        constraint="users_organization_id_email_key")),
    ins("users", "member_A", "user_in_own_org", user_row("org_A", "new@a.example.com"), RLS),
    ins("users", "admin_B", "user_in_own_org", user_row("org_B", "new@b.example.com"), ALLOWED),
    ins("users", "admin_B", "user_in_org_A", user_row("org_A", "new@a.example.com"), RLS),
    ins("users", "member_B", "user_in_own_org", user_row("org_B", "new@b.example.com"), RLS),
    *(
        ins("users", a, "user_in_org_A", user_row("org_A", "new@a.example.com", "admin"), RLS)
        for a in NOBODY
    ),
    # A member updates their own metadata and last_login_at, nothing else.
    upd("users", "member_A", "member_A", "self_metadata", META, ALLOWED),
    upd("users", "member_A", "member_A", "self_last_login_at", {"last_login_at": NOW}, ALLOWED),
    upd("users", "member_A", "member_A", "self_role_to_admin", {"role": "admin"}, RLS),
    upd("users", "member_A", "member_A", "self_email", {"email": "me@a.example.com"}, RLS),
    upd("users", "member_A", "member_A", "self_is_active", {"is_active": False}, RLS),
    upd("users", "member_A", "member_A", "self_to_org_B", {"organization_id": ID["org_B"]}, PRIV),
    upd("users", "member_A", "member_A", "self_created_at", {"created_at": NOW}, PRIV),
    upd("users", "member_A", "member_A2", "other_member_metadata", META, FILTERED),
    upd("users", "member_A", "member_A2", "other_member_role", {"role": "admin"}, FILTERED),
    upd("users", "member_A", "admin_A", "admin_role", {"role": "user"}, FILTERED),
    upd("users", "member_A", "member_B", "org_B_member_metadata", META, FILTERED),
    # An admin manages the users of their own organization, never moves one out.
    upd("users", "admin_A", "member_A", "member_role_to_admin", {"role": "admin"}, ALLOWED),
    upd("users", "admin_A", "member_A", "member_email", {"email": "m@a.example.com"}, ALLOWED),
    upd("users", "admin_A", "inactive_A", "reactivate", {"is_active": True}, ALLOWED),
    upd("users", "admin_A", "member_A2", "deactivate", {"is_active": False}, ALLOWED),
    upd("users", "admin_A", "admin_A", "self_metadata", META, ALLOWED),
    upd(
        "users", "admin_A", "member_A", "member_to_org_B", {"organization_id": ID["org_B"]}, PRIV
    ),
    upd("users", "admin_A", "member_B", "org_B_member_role", {"role": "admin"}, FILTERED),
    upd("users", "admin_A", "admin_B", "org_B_admin_metadata", META, FILTERED),
    upd("users", "member_B", "member_B", "self_metadata", META, ALLOWED),
    upd("users", "member_B", "member_B", "self_role_to_admin", {"role": "admin"}, RLS),
    upd("users", "member_B", "member_A", "org_A_member_metadata", META, FILTERED),
    upd("users", "admin_B", "member_B", "member_role_to_admin", {"role": "admin"}, ALLOWED),
    upd("users", "admin_B", "member_A", "org_A_member_role", {"role": "admin"}, FILTERED),
    upd(
        "users", "admin_B", "member_A", "org_A_member_to_org_B",
        {"organization_id": ID["org_B"]}, PRIV,
    ),
    upd("users", "inactive_A", "inactive_A", "self_reactivate", {"is_active": True}, FILTERED),
    upd("users", "inactive_A", "inactive_A", "self_metadata", META, FILTERED),
    upd(
        "users", "inactive_admin_A", "inactive_admin_A", "self_reactivate",
        {"is_active": True}, FILTERED,
    ),
    upd("users", "inactive_admin_A", "member_A", "member_deactivate", {"is_active": False},
        FILTERED),
    *(upd("users", a, "member_A", "member_A_role", {"role": "admin"}, FILTERED) for a in NOBODY),
    dele("users", "admin_A", "member_A2", ALLOWED),
    dele("users", "admin_A", "inactive_A", ALLOWED),
    dele("users", "admin_A", "member_B", FILTERED),
    dele("users", "admin_A", "admin_B", FILTERED),
    dele("users", "member_A", "member_A2", FILTERED),
    dele("users", "member_A", "member_A", FILTERED, "self"),
    dele("users", "admin_B", "member_B", ALLOWED),
    dele("users", "admin_B", "member_A", FILTERED),
    dele("users", "member_B", "member_B", FILTERED, "self"),
    *(dele("users", a, "member_A", FILTERED) for a in NOBODY),
]

SESSION_CASES = [
    ins("user_sessions", "member_A", "own", session_row("member_A"), ALLOWED),
    ins("user_sessions", "member_A", "for_member_A2", session_row("member_A2"), RLS),
    ins("user_sessions", "member_A", "for_member_B", session_row("member_B"), RLS),
    ins("user_sessions", "member_A", "own_in_org_B", session_row("member_A", "org_B"),
        fk("user_sessions_user_fkey")),
    ins("user_sessions", "admin_A", "own", session_row("admin_A"), ALLOWED),
    ins("user_sessions", "admin_A", "for_member_A", session_row("member_A"), RLS),
    ins("user_sessions", "member_B", "own", session_row("member_B"), ALLOWED),
    ins("user_sessions", "member_B", "for_member_A", session_row("member_A"), RLS),
    ins("user_sessions", "admin_B", "own", session_row("admin_B"), ALLOWED),
    ins("user_sessions", "admin_B", "for_member_A", session_row("member_A"), RLS),
    ins("user_sessions", "inactive_A", "own", session_row("inactive_A"), RLS),
    *(ins("user_sessions", a, "for_member_A", session_row("member_A"), RLS) for a in NOBODY),
    upd("user_sessions", "member_A", "sess_member_A", "own", PATH, ALLOWED),
    upd("user_sessions", "member_A", "sess_member_A_expired", "own_expired", PATH, ALLOWED),
    upd("user_sessions", "member_A", "sess_member_A2", "other_member_session", PATH, FILTERED),
    upd("user_sessions", "member_A", "sess_member_B", "org_B_session", PATH, FILTERED),
    upd(
        "user_sessions", "member_A", "sess_member_A", "own_to_member_A2",
        {"user_id": ID["member_A2"]}, PRIV,
    ),
    upd(
        "user_sessions", "member_A", "sess_member_A", "own_to_org_B",
        {"organization_id": ID["org_B"]}, PRIV,
    ),
    upd("user_sessions", "admin_A", "sess_admin_A", "own", PATH, ALLOWED),
    upd("user_sessions", "admin_A", "sess_member_A", "member_session", PATH, FILTERED),
    upd(
        "user_sessions", "admin_A", "sess_member_A", "member_session_expiry",
        {"expires_at": NOW}, FILTERED,
    ),
    upd("user_sessions", "admin_A", "sess_member_B", "org_B_session", PATH, FILTERED),
    upd(
        "user_sessions", "admin_A", "sess_member_A", "member_session_to_admin",
        {"user_id": ID["admin_A"]}, PRIV,
    ),
    upd("user_sessions", "member_B", "sess_member_B", "own", PATH, ALLOWED),
    upd("user_sessions", "member_B", "sess_member_A", "org_A_session", PATH, FILTERED),
    upd("user_sessions", "admin_B", "sess_admin_B", "own", PATH, ALLOWED),
    upd("user_sessions", "admin_B", "sess_member_B", "member_session", PATH, FILTERED),
    upd("user_sessions", "admin_B", "sess_member_A", "org_A_session", PATH, FILTERED),
    upd("user_sessions", "inactive_A", "sess_inactive_A", "own", PATH, FILTERED),
    *(upd("user_sessions", a, "sess_member_A", "member_A_session", PATH, FILTERED) for a in NOBODY),
    dele("user_sessions", "member_A", "sess_member_A", ALLOWED, "own"),
    dele("user_sessions", "member_A", "sess_member_A2", FILTERED, "other_member_session"),
    dele("user_sessions", "member_A", "sess_member_B", FILTERED, "org_B_session"),
    dele("user_sessions", "admin_A", "sess_member_A", ALLOWED, "revoke_member_session"),
    dele("user_sessions", "admin_A", "sess_inactive_A", ALLOWED, "revoke_inactive_user_session"),
    dele("user_sessions", "admin_A", "sess_admin_A", ALLOWED, "own"),
    dele("user_sessions", "admin_A", "sess_member_B", FILTERED, "org_B_session"),
    dele("user_sessions", "member_B", "sess_member_B", ALLOWED, "own"),
    dele("user_sessions", "member_B", "sess_member_A", FILTERED, "org_A_session"),
    dele("user_sessions", "admin_B", "sess_member_B", ALLOWED, "revoke_member_session"),
    dele("user_sessions", "admin_B", "sess_member_A", FILTERED, "org_A_session"),
    dele("user_sessions", "inactive_A", "sess_inactive_A", FILTERED, "own"),
    *(
        dele("user_sessions", a, "sess_member_A", FILTERED, "member_A_session")
        for a in NOBODY
    ),
]

CONFIG_CASES = [
    ins("mcp_configurations", "member_A", "own_personal", config_row("org_A", "member_A"), ALLOWED),
    ins("mcp_configurations", "member_A", "org_wide", config_row("org_A"), RLS),
    ins(
        "mcp_configurations", "member_A", "personal_of_member_A2",
        config_row("org_A", "member_A2"), RLS,
    ),
    ins(
        "mcp_configurations", "member_A", "own_personal_in_org_B",
        config_row("org_B", "member_A"), fk("mcp_configurations_user_fkey"),
    ),
    ins("mcp_configurations", "admin_A", "org_wide", config_row("org_A"), ALLOWED),
    ins("mcp_configurations", "admin_A", "own_personal", config_row("org_A", "admin_A"), ALLOWED),
    ins("mcp_configurations", "admin_A", "org_wide_in_org_B", config_row("org_B"), RLS),
    ins("mcp_configurations", "admin_A", "org_wide_named_like_org_B_config",
        {**config_row("org_A"), "name": "cfg_org_B"}, ALLOWED),
    ins(
        "mcp_configurations", "admin_A", "personal_of_member_A",
        config_row("org_A", "member_A"), RLS,
    ),
    ins("mcp_configurations", "member_B", "own_personal", config_row("org_B", "member_B"), ALLOWED),
    ins("mcp_configurations", "member_B", "org_wide", config_row("org_B"), RLS),
    ins("mcp_configurations", "admin_B", "org_wide", config_row("org_B"), ALLOWED),
    ins("mcp_configurations", "admin_B", "org_wide_in_org_A", config_row("org_A"), RLS),
    ins(
        "mcp_configurations", "inactive_A", "own_personal",
        config_row("org_A", "inactive_A"), RLS,
    ),
    *(
        ins("mcp_configurations", a, "personal_of_member_A", config_row("org_A", "member_A"), RLS)
        for a in NOBODY
    ),
    *(ins("mcp_configurations", a, "org_wide_A", config_row("org_A"), RLS) for a in NOBODY),
    upd("mcp_configurations", "member_A", "cfg_member_A", "own_personal", ENDPOINT, ALLOWED),
    upd("mcp_configurations", "member_A", "cfg_org_A", "org_wide", ENDPOINT, FILTERED),
    upd(
        "mcp_configurations", "member_A", "cfg_member_A2", "personal_of_member_A2",
        ENDPOINT, FILTERED,
    ),
    upd("mcp_configurations", "member_A", "cfg_org_B", "org_B_config", ENDPOINT, FILTERED),
    upd(
        "mcp_configurations", "member_A", "cfg_member_A", "own_personal_to_org_wide",
        {"user_id": None}, PRIV,
    ),
    upd(
        "mcp_configurations", "member_A", "cfg_member_A", "own_personal_to_member_A2",
        {"user_id": ID["member_A2"]}, PRIV,
    ),
    upd(
        "mcp_configurations", "member_A", "cfg_member_A", "own_personal_to_org_B",
        {"organization_id": ID["org_B"]}, PRIV,
    ),
    upd("mcp_configurations", "admin_A", "cfg_org_A", "org_wide", ENDPOINT, ALLOWED),
    upd("mcp_configurations", "admin_A", "cfg_admin_A", "own_personal", ENDPOINT, ALLOWED),
    upd(
        "mcp_configurations", "admin_A", "cfg_member_A", "personal_of_member_A",
        ENDPOINT, FILTERED,
    ),
    upd("mcp_configurations", "admin_A", "cfg_org_B", "org_B_config", ENDPOINT, FILTERED),
    upd(
        "mcp_configurations", "admin_A", "cfg_org_A", "org_wide_to_org_B",
        {"organization_id": ID["org_B"]}, PRIV,
    ),
    upd(
        "mcp_configurations", "admin_A", "cfg_org_A", "org_wide_to_personal",
        {"user_id": ID["admin_A"]}, PRIV,
    ),
    upd("mcp_configurations", "member_B", "cfg_member_B", "own_personal", ENDPOINT, ALLOWED),
    upd("mcp_configurations", "member_B", "cfg_org_B", "org_wide", ENDPOINT, FILTERED),
    upd(
        "mcp_configurations", "member_B", "cfg_member_A", "personal_of_member_A",
        ENDPOINT, FILTERED,
    ),
    upd("mcp_configurations", "admin_B", "cfg_org_B", "org_wide", ENDPOINT, ALLOWED),
    upd("mcp_configurations", "admin_B", "cfg_org_A", "org_A_config", ENDPOINT, FILTERED),
    upd(
        "mcp_configurations", "admin_B", "cfg_member_B", "personal_of_member_B",
        ENDPOINT, FILTERED,
    ),
    upd("mcp_configurations", "inactive_A", "cfg_org_A", "org_wide", ENDPOINT, FILTERED),
    *(
        upd("mcp_configurations", a, "cfg_member_A", "personal_of_member_A", ENDPOINT, FILTERED)
        for a in NOBODY
    ),
    dele("mcp_configurations", "member_A", "cfg_member_A", ALLOWED, "own_personal"),
    dele("mcp_configurations", "member_A", "cfg_org_A", FILTERED, "org_wide"),
    dele("mcp_configurations", "member_A", "cfg_member_A2", FILTERED, "personal_of_member_A2"),
    dele("mcp_configurations", "admin_A", "cfg_org_A_spare", ALLOWED, "org_wide"),
    dele("mcp_configurations", "admin_A", "cfg_member_A", FILTERED, "personal_of_member_A"),
    dele("mcp_configurations", "admin_A", "cfg_org_B", FILTERED, "org_B_config"),
    dele("mcp_configurations", "member_B", "cfg_member_B", ALLOWED, "own_personal"),
    dele("mcp_configurations", "member_B", "cfg_org_B", FILTERED, "org_wide"),
    dele("mcp_configurations", "admin_B", "cfg_org_B_spare", ALLOWED, "org_wide"),
    dele("mcp_configurations", "admin_B", "cfg_org_A", FILTERED, "org_A_config"),
    dele("mcp_configurations", "admin_B", "cfg_member_B", FILTERED, "personal_of_member_B"),
    dele("mcp_configurations", "inactive_A", "cfg_org_A", FILTERED, "org_wide"),
    *(
        dele("mcp_configurations", a, "cfg_member_A", FILTERED, "personal_of_member_A")
        for a in NOBODY
    ),
]

VISIBLE_CONFIG = check("mcp_oauth_tokens_configuration_visible")
"""The trigger's refusal of a token on a configuration its user cannot see."""

TOKEN_CASES = [
    ins("mcp_oauth_tokens", "member_A", "own_on_org_wide", token_row("member_A", "cfg_org_A_spare"),
        ALLOWED),
    ins("mcp_oauth_tokens", "member_A", "for_member_A2",
        token_row("member_A2", "cfg_org_A_spare"), RLS),
    ins("mcp_oauth_tokens", "member_A", "own_on_member_A2_personal_config",
        token_row("member_A", "cfg_member_A2"), VISIBLE_CONFIG),
    ins("mcp_oauth_tokens", "member_A", "own_on_org_B_config",
        token_row("member_A", "cfg_org_B"), fk("mcp_oauth_tokens_user_fkey")),
    ins("mcp_oauth_tokens", "member_A", "own_on_org_B_config_claiming_org_A",
        token_row("member_A", "cfg_org_B", "org_A"),
        fk("mcp_oauth_tokens_configuration_fkey")),
    ins("mcp_oauth_tokens", "admin_A", "own_on_org_wide", token_row("admin_A", "cfg_org_A_spare"),
        ALLOWED),
    ins("mcp_oauth_tokens", "admin_A", "for_member_A", token_row("member_A", "cfg_org_A_spare"),
        RLS),
    ins("mcp_oauth_tokens", "admin_A", "own_on_member_A_personal_config",
        token_row("admin_A", "cfg_member_A"), VISIBLE_CONFIG),
    ins("mcp_oauth_tokens", "member_B", "own_on_org_wide", token_row("member_B", "cfg_org_B_spare"),
        ALLOWED),
    ins("mcp_oauth_tokens", "member_B", "own_on_org_A_config",
        token_row("member_B", "cfg_org_A_spare"),
        fk("mcp_oauth_tokens_user_fkey")),
    ins("mcp_oauth_tokens", "admin_B", "own_on_org_wide", token_row("admin_B", "cfg_org_B_spare"),
        ALLOWED),
    ins("mcp_oauth_tokens", "admin_B", "for_member_B", token_row("member_B", "cfg_org_B_spare"),
        RLS),
    ins("mcp_oauth_tokens", "inactive_A", "own_on_org_wide",
        token_row("inactive_A", "cfg_org_A_spare"), RLS),
    *(
        ins("mcp_oauth_tokens", a, "for_member_A", token_row("member_A", "cfg_org_A_spare"), RLS)
        for a in NOBODY
    ),
    upd("mcp_oauth_tokens", "member_A", "tok_member_A_org", "own", ACCESS, ALLOWED),
    upd("mcp_oauth_tokens", "member_A", "tok_member_A_own", "own_refresh_claim",
        {"refresh_claimed_until": NOW, "refresh_claimed_by": "worker-1"}, ALLOWED),
    upd("mcp_oauth_tokens", "member_A", "tok_member_A2_org", "member_A2_token", ACCESS, FILTERED),
    upd("mcp_oauth_tokens", "member_A", "tok_member_B_org", "org_B_token", ACCESS, FILTERED),
    upd("mcp_oauth_tokens", "member_A", "tok_member_A_org", "own_to_member_A2",
        {"user_id": ID["member_A2"]}, PRIV),
    upd("mcp_oauth_tokens", "member_A", "tok_member_A_org", "own_to_other_config",
        {"mcp_configuration_id": ID["cfg_org_A_spare"]}, PRIV),
    upd("mcp_oauth_tokens", "member_A", "tok_member_A_org", "own_to_org_B",
        {"organization_id": ID["org_B"]}, PRIV),
    upd("mcp_oauth_tokens", "admin_A", "tok_admin_A_own", "own", ACCESS, ALLOWED),
    upd("mcp_oauth_tokens", "admin_A", "tok_member_A_org", "member_A_token", ACCESS, FILTERED),
    upd("mcp_oauth_tokens", "admin_A", "tok_member_B_org", "org_B_token", ACCESS, FILTERED),
    upd("mcp_oauth_tokens", "member_B", "tok_member_B_own", "own", ACCESS, ALLOWED),
    upd("mcp_oauth_tokens", "member_B", "tok_member_A_org", "org_A_token", ACCESS, FILTERED),
    upd("mcp_oauth_tokens", "admin_B", "tok_admin_B_org", "own", ACCESS, ALLOWED),
    upd("mcp_oauth_tokens", "admin_B", "tok_member_B_org", "member_B_token", ACCESS, FILTERED),
    upd("mcp_oauth_tokens", "inactive_A", "tok_inactive_A_org", "own", ACCESS, FILTERED),
    *(
        upd("mcp_oauth_tokens", a, "tok_member_A_org", "member_A_token", ACCESS, FILTERED)
        for a in NOBODY
    ),
    dele("mcp_oauth_tokens", "member_A", "tok_member_A_own", ALLOWED, "own"),
    dele("mcp_oauth_tokens", "member_A", "tok_member_A2_own", FILTERED, "member_A2_token"),
    dele("mcp_oauth_tokens", "admin_A", "tok_admin_A_org", ALLOWED, "own"),
    dele("mcp_oauth_tokens", "admin_A", "tok_member_A_org", FILTERED, "member_A_token"),
    dele("mcp_oauth_tokens", "member_B", "tok_member_B_org", ALLOWED, "own"),
    dele("mcp_oauth_tokens", "member_B", "tok_member_A_org", FILTERED, "org_A_token"),
    dele("mcp_oauth_tokens", "admin_B", "tok_admin_B_org", ALLOWED, "own"),
    dele("mcp_oauth_tokens", "admin_B", "tok_member_B_own", FILTERED, "member_B_token"),
    dele("mcp_oauth_tokens", "inactive_A", "tok_inactive_A_org", FILTERED, "own"),
    *(
        dele("mcp_oauth_tokens", a, "tok_member_A_org", FILTERED, "member_A_token")
        for a in NOBODY
    ),
]

PROMPT_CASES = [
    ins("system_prompts", "member_A", "own_user_prompt",
        prompt_row("user", "org_A", "member_A"), ALLOWED),
    ins("system_prompts", "member_A", "own_user_prompt_created_by_self",
        prompt_row("user", "org_A", "member_A", created_by="member_A"), ALLOWED),
    ins("system_prompts", "member_A", "own_user_prompt_created_by_member_A2",
        prompt_row("user", "org_A", "member_A", created_by="member_A2"), RLS),
    ins("system_prompts", "member_A", "user_prompt_of_member_A2",
        prompt_row("user", "org_A", "member_A2"), RLS),
    ins("system_prompts", "member_A", "org_prompt", prompt_row("organization", "org_A"), RLS),
    ins("system_prompts", "member_A", "global_prompt", prompt_row("global"), RLS),
    ins("system_prompts", "admin_A", "org_prompt", prompt_row("organization", "org_A"), ALLOWED),
    ins("system_prompts", "admin_A", "own_user_prompt",
        prompt_row("user", "org_A", "admin_A"), ALLOWED),
    ins("system_prompts", "admin_A", "org_B_prompt", prompt_row("organization", "org_B"), RLS),
    ins("system_prompts", "admin_A", "global_prompt", prompt_row("global"), RLS),
    ins("system_prompts", "admin_A", "user_prompt_of_member_A",
        prompt_row("user", "org_A", "member_A"), RLS),
    ins("system_prompts", "member_B", "own_user_prompt",
        prompt_row("user", "org_B", "member_B"), ALLOWED),
    ins("system_prompts", "member_B", "org_prompt", prompt_row("organization", "org_B"), RLS),
    ins("system_prompts", "admin_B", "org_prompt", prompt_row("organization", "org_B"), ALLOWED),
    ins("system_prompts", "admin_B", "org_A_prompt", prompt_row("organization", "org_A"), RLS),
    ins("system_prompts", "admin_B", "global_prompt", prompt_row("global"), RLS),
    ins("system_prompts", "inactive_A", "own_user_prompt",
        prompt_row("user", "org_A", "inactive_A"), RLS),
    *(
        ins("system_prompts", a, "user_prompt_of_member_A",
            prompt_row("user", "org_A", "member_A"), RLS)
        for a in NOBODY
    ),
    *(ins("system_prompts", a, "global_prompt", prompt_row("global"), RLS) for a in NOBODY),
    *(ins("system_prompts", a, "org_A_prompt", prompt_row("organization", "org_A"), RLS)
      for a in NOBODY),
    upd("system_prompts", "member_A", "pr_user_member_A", "own_user_prompt", CONTENT, ALLOWED),
    upd("system_prompts", "member_A", "pr_org_A", "org_prompt", CONTENT, FILTERED),
    upd("system_prompts", "member_A", "pr_global", "global_prompt", CONTENT, FILTERED),
    upd("system_prompts", "member_A", "pr_user_member_A2", "member_A2_prompt", CONTENT, FILTERED),
    upd("system_prompts", "member_A", "pr_user_member_B", "org_B_user_prompt", CONTENT, FILTERED),
    upd("system_prompts", "member_A", "pr_user_member_A", "own_prompt_scope_to_organization",
        {"scope": "organization", "user_id": None}, PRIV),
    upd("system_prompts", "member_A", "pr_user_member_A", "own_prompt_scope_only",
        {"scope": "organization"}, PRIV),
    upd("system_prompts", "member_A", "pr_user_member_A", "own_prompt_to_member_A2",
        {"user_id": ID["member_A2"]}, PRIV),
    upd("system_prompts", "admin_A", "pr_org_A", "org_prompt", CONTENT, ALLOWED),
    upd("system_prompts", "admin_A", "pr_org_A", "org_prompt_disable", {"enabled": False},
        ALLOWED),
    upd("system_prompts", "admin_A", "pr_org_B", "org_B_prompt", CONTENT, FILTERED),
    upd("system_prompts", "admin_A", "pr_global", "global_prompt", CONTENT, FILTERED),
    upd("system_prompts", "admin_A", "pr_user_member_A", "member_A_prompt", CONTENT, FILTERED),
    upd("system_prompts", "admin_A", "pr_org_A", "org_prompt_scope_to_global",
        {"scope": "global", "organization_id": None}, PRIV),
    upd("system_prompts", "admin_A", "pr_org_A", "org_prompt_scope_only", {"scope": "global"},
        PRIV),
    upd("system_prompts", "admin_A", "pr_org_A", "org_prompt_to_org_B",
        {"organization_id": ID["org_B"]}, PRIV),
    upd("system_prompts", "member_B", "pr_user_member_B", "own_user_prompt", CONTENT, ALLOWED),
    upd("system_prompts", "member_B", "pr_org_B", "org_prompt", CONTENT, FILTERED),
    upd("system_prompts", "admin_B", "pr_org_B", "org_prompt", CONTENT, ALLOWED),
    upd("system_prompts", "admin_B", "pr_org_A", "org_A_prompt", CONTENT, FILTERED),
    upd("system_prompts", "inactive_A", "pr_user_inactive_A", "own_user_prompt", CONTENT,
        FILTERED),
    *(
        upd("system_prompts", a, "pr_user_member_A", "member_A_prompt", CONTENT, FILTERED)
        for a in NOBODY
    ),
    *(upd("system_prompts", a, "pr_global", "global_prompt", CONTENT, FILTERED) for a in NOBODY),
    *(upd("system_prompts", a, "pr_org_A", "org_A_prompt", CONTENT, FILTERED) for a in NOBODY),
    dele("system_prompts", "member_A", "pr_user_member_A", ALLOWED, "own_user_prompt"),
    dele("system_prompts", "member_A", "pr_org_A", FILTERED, "org_prompt"),
    dele("system_prompts", "member_A", "pr_global", FILTERED, "global_prompt"),
    dele("system_prompts", "member_A", "pr_user_member_A2", FILTERED, "member_A2_prompt"),
    dele("system_prompts", "admin_A", "pr_org_A", ALLOWED, "org_prompt"),
    dele("system_prompts", "admin_A", "pr_org_B", FILTERED, "org_B_prompt"),
    dele("system_prompts", "admin_A", "pr_global", FILTERED, "global_prompt"),
    dele("system_prompts", "admin_A", "pr_user_member_A", FILTERED, "member_A_prompt"),
    dele("system_prompts", "member_B", "pr_user_member_B", ALLOWED, "own_user_prompt"),
    dele("system_prompts", "member_B", "pr_org_B", FILTERED, "org_prompt"),
    dele("system_prompts", "admin_B", "pr_org_B", ALLOWED, "org_prompt"),
    dele("system_prompts", "admin_B", "pr_org_A", FILTERED, "org_A_prompt"),
    dele("system_prompts", "inactive_A", "pr_user_inactive_A", FILTERED, "own_user_prompt"),
    *(
        dele("system_prompts", a, "pr_user_member_A", FILTERED, "member_A_prompt")
        for a in NOBODY
    ),
]

AUDIT_CASES = [
    ins("audit_logs", "member_A", "self_in_own_org", audit_row("member_A", "org_A"), ALLOWED),
    ins("audit_logs", "member_A", "about_member_A2", audit_row("member_A2", "org_A"), RLS),
    ins("audit_logs", "member_A", "self_in_org_B", audit_row("member_A", "org_B"), RLS),
    ins("audit_logs", "member_A", "no_user_in_own_org", audit_row(None, "org_A"), RLS),
    ins("audit_logs", "member_A", "self_no_org", audit_row("member_A", None), RLS),
    ins("audit_logs", "member_A", "self_backdated",
        {**audit_row("member_A", "org_A"), "timestamp": NOW}, PRIV),
    ins("audit_logs", "admin_A", "self_in_own_org", audit_row("admin_A", "org_A"), ALLOWED),
    ins("audit_logs", "admin_A", "about_member_A", audit_row("member_A", "org_A"), RLS),
    ins("audit_logs", "admin_A", "self_in_org_B", audit_row("admin_A", "org_B"), RLS),
    ins("audit_logs", "member_B", "self_in_own_org", audit_row("member_B", "org_B"), ALLOWED),
    ins("audit_logs", "member_B", "about_member_A", audit_row("member_A", "org_A"), RLS),
    ins("audit_logs", "admin_B", "self_in_own_org", audit_row("admin_B", "org_B"), ALLOWED),
    ins("audit_logs", "admin_B", "about_member_B", audit_row("member_B", "org_B"), RLS),
    ins("audit_logs", "inactive_A", "self_in_own_org", audit_row("inactive_A", "org_A"), RLS),
    *(ins("audit_logs", a, "as_member_A", audit_row("member_A", "org_A"), RLS) for a in NOBODY),
    *(ins("audit_logs", a, "anonymous", audit_row(None, None), RLS) for a in NOBODY),
    # Append-only: no UPDATE or DELETE for anyone, own events included.
    *(
        upd("audit_logs", a, f"audit_{a}_in_{org_of(a)}", "own_event",
            {"action": "forged"}, PRIV)
        for a in PEOPLE
    ),
    *(
        upd("audit_logs", a, "audit_member_A_in_org_A", "member_A_event",
            {"success": False}, PRIV)
        for a in ACTORS
    ),
    *(dele("audit_logs", a, f"audit_{a}_in_{org_of(a)}", PRIV, "own_event") for a in PEOPLE),
    *(dele("audit_logs", a, "audit_member_A_in_org_A", PRIV, "member_A_event") for a in ACTORS),
]

WRITE_CASES = [
    *ORGANIZATION_CASES,
    *USER_CASES,
    *SESSION_CASES,
    *CONFIG_CASES,
    *TOKEN_CASES,
    *PROMPT_CASES,
    *AUDIT_CASES,
]
CASES = [*SELECT_CASES, *WRITE_CASES]

# ---------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------


def check_case(seeded: Seeded, case: Case, *, set_role: bool = True) -> None:
    """Act as the case's actor and compare what happens with the expectation."""
    with seeded.as_app(case.actor, set_role=set_role) as conn:
        if case.action == "select":
            seen = visible_labels(conn, case.table)
            assert seen == set(case.visible), (
                f"{case.actor} sees {sorted(seen)}; the matrix says {sorted(case.visible)} "
                f"(unexpected: {sorted(seen - case.visible)}, "
                f"missing: {sorted(case.visible - seen)})"
            )
            return
        if case.action == "insert":
            outcome = attempt(
                conn, insert_sql(case.table, list(case.row)), row_values(seeded, case.row)
            )
            if outcome.allowed:  # what one may create, one may read back
                new = [label for label in visible_labels(conn, case.table) if label[0] == "?"]
                assert len(new) == 1, f"the new row is not readable by its creator: {new}"
        elif case.action == "update":
            assert case.target is not None
            outcome = attempt(
                conn,
                update_sql(case.table, list(case.row)),
                [*row_values(seeded, case.row), ID[case.target]],
            )
        else:
            assert case.target is not None
            outcome = attempt(conn, delete_sql(case.table), [ID[case.target]])
        assert outcome == case.expect, f"got {outcome}; the matrix says {case.expect}"


@pytest.fixture(scope="module")
def seeded(identity_db: TestDatabase) -> Seeded:
    return seed(identity_db)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matrix(seeded: Seeded, case: Case) -> None:
    check_case(seeded, case)


@pytest.mark.parametrize("case", SELECT_CASES, ids=[c.id for c in SELECT_CASES])
def test_reads_are_the_same_without_set_role(seeded: Seeded, case: Case) -> None:
    """``app_login`` without SET ROLE acts through its membership: the same policies apply."""
    check_case(seeded, case, set_role=False)


# ---------------------------------------------------------------------------
# Views: exactly what the base tables' RLS allows, plus the views' own filters
# ---------------------------------------------------------------------------

SESSION_VIEW_HIDES = EXPIRED_SESSIONS | {
    s for s, (owner, *_) in SESSIONS.items() if owner in INACTIVE_USERS
}
VIEW_CASES = [
    *(
        (
            "active_user_sessions",
            actor,
            set(VISIBLE["user_sessions"].get(actor, [])) - SESSION_VIEW_HIDES,
        )
        for actor in ACTORS
    ),
    *(
        (
            "effective_mcp_configurations",
            actor,
            set(VISIBLE["mcp_configurations"].get(actor, [])) - DISABLED_CONFIGS,
        )
        for actor in ACTORS
    ),
]


@pytest.mark.parametrize(
    ("view", "actor", "expected"),
    VIEW_CASES,
    ids=[f"{v}-select-{a}-sees_{len(e)}_rows" for v, a, e in VIEW_CASES],
)
def test_view_respects_rls(seeded: Seeded, view: str, actor: str, expected: set[str]) -> None:
    with seeded.as_app(actor) as conn:
        assert visible_labels(conn, view) == expected


# ---------------------------------------------------------------------------
# Self-checks of the table
# ---------------------------------------------------------------------------


def test_matrix_covers_every_table_action_and_actor() -> None:
    covered = {(c.table, c.action, c.actor) for c in CASES}
    missing = sorted(set(itertools.product(TABLES, ACTIONS, ACTORS)) - covered)
    assert not missing, f"no case for {missing}"
    for actor in PEOPLE:  # each person is also shown allowed and denied on every table
        for table in TABLES:
            if table == "organizations" and actor.startswith("member"):
                continue  # the contract allows a member no write there
            verdicts = {
                c.expect.allowed for c in WRITE_CASES if (c.table, c.actor) == (table, actor)
            }
            assert verdicts == {True, False}, (table, actor, verdicts)


def test_case_ids_are_unique_and_labels_exist() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    for case in CASES:
        labels = set(case.visible) | ({case.target} if case.target else set())
        assert labels <= set(SEED_LABELS[case.table]), (case.id, labels)


def test_a_broken_policy_makes_the_matrix_fail(db: TestDatabase) -> None:
    """Mutation check: with user_sessions_select opened up, its SELECT cases fail."""
    broken = seed(db)
    with db.connect(SUPERUSER) as conn:
        conn.execute(_BREAK_SESSIONS_SELECT)
        conn.commit()
    failed = []
    for case in SELECT_CASES:
        if case.table != "user_sessions":
            continue
        try:
            check_case(broken, case)
        except AssertionError:
            failed.append(case.actor)
    assert sorted(failed) == sorted(ACTORS), failed
