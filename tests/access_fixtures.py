"""Seed data, actors and the case runner for the access-matrix tests.

The seed is two tenants with rows of every table for every relevant owner. Row ids
are fixed (``uuid5`` of a readable label), so the expectations in the test modules
are written as labels at import time and checked against real ids at run time.

Everything is seeded by the superuser (who bypasses RLS); every check then acts
through a real login (``app_login`` and friends) with :func:`tests.pg.acting`, in a
transaction that is rolled back, so cases never see each other's writes.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from tests.pg import APP_LOGIN, APP_ROLE, SUPERUSER, TABLES, Conn, TestDatabase, acting

# ---------------------------------------------------------------------------
# SQL (the only place this module writes SQL)
# ---------------------------------------------------------------------------

_SEED_ORG = "INSERT INTO organizations (id, name, slug) VALUES (%s, %s, %s)"
_SEED_USER = (
    "INSERT INTO users (id, organization_id, email, role, is_active) VALUES (%s, %s, %s, %s, %s)"
)
_SEED_SESSION = (
    "INSERT INTO user_sessions (id, user_id, organization_id, workspace_path, created_at,"
    " expires_at) VALUES (%s, %s, %s, %s, now() + %s::interval, now() + %s::interval)"
)
_SEED_CONFIG = (
    "INSERT INTO mcp_configurations (id, organization_id, user_id, name, type, endpoint,"
    " auth_type, oauth_provider, enabled) VALUES (%s, %s, %s, %s, 'http', %s, %s, %s, %s)"
)
_SEED_TOKEN = (
    "INSERT INTO mcp_oauth_tokens (id, user_id, organization_id, mcp_configuration_id,"
    " oauth_provider, access_token, refresh_token)"
    " VALUES (%s, %s, %s, %s, 'github', encrypt_token(%s, %s), encrypt_token(%s, %s))"
)
_SEED_PROMPT = (
    "INSERT INTO system_prompts (id, scope, organization_id, user_id, content, priority,"
    " enabled, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now() - %s::interval)"
)
_SEED_AUDIT = (
    "INSERT INTO audit_logs (id, user_id, organization_id, action, resource_type)"
    " VALUES (%s, %s, %s, 'seed.event', 'seed')"
)
_SAMPLE_CIPHERTEXT = "SELECT encrypt_token(%s, %s)"
_CURRENT_USER_ID = "SELECT current_setting('app.user_id', true)"


def select_ids_sql(relation: str) -> sql.Composed:
    """``SELECT id FROM public.<relation>`` (a table or view of the contract).

    Schema-qualified, so that a role without USAGE on the schema gets "permission
    denied" rather than "does not exist".
    """
    return sql.SQL("SELECT id FROM {}").format(sql.Identifier("public", relation))


def insert_sql(table: str, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier("public", table),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(sql.Placeholder() for _ in columns),
    )


def update_sql(table: str, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
        sql.Identifier("public", table),
        sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder()) for c in columns
        ),
    )


def truncate_sql(table: str) -> sql.Composed:
    return sql.SQL("TRUNCATE {}").format(sql.Identifier("public", table))


def delete_sql(table: str) -> sql.Composed:
    return sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier("public", table))


# ---------------------------------------------------------------------------
# Seed data
# ---------------------------------------------------------------------------

_NAMESPACE = uuid.UUID("6f1c0c2e-8d7a-4e55-9a1b-0a9e3c1d2b40")


def fixed_id(label: str) -> uuid.UUID:
    """The fixed id of a seeded row (or of an actor that has no row)."""
    return uuid.uuid5(_NAMESPACE, label)


ORGS: dict[str, tuple[str, str]] = {"org_A": ("Org A", "org-a"), "org_B": ("Org B", "org-b")}

# label: (organization, email, role, is_active)
USERS: dict[str, tuple[str, str, str, bool]] = {
    "admin_A": ("org_A", "admin@a.example.com", "admin", True),
    "member_A": ("org_A", "member@a.example.com", "user", True),
    "member_A2": ("org_A", "member2@a.example.com", "user", True),
    "inactive_A": ("org_A", "inactive@a.example.com", "user", False),
    "inactive_admin_A": ("org_A", "former-admin@a.example.com", "admin", False),
    "admin_B": ("org_B", "admin@b.example.com", "admin", True),
    "member_B": ("org_B", "member@b.example.com", "user", True),
}
A_USERS = [u for u, (org, *_) in USERS.items() if org == "org_A"]
B_USERS = [u for u, (org, *_) in USERS.items() if org == "org_B"]
INACTIVE_USERS = {u for u, (*_, active) in USERS.items() if not active}


def org_of(user: str) -> str:
    return USERS[user][0]


# label: (user, created offset, expires offset); "sess_<user>" for every user.
SESSIONS: dict[str, tuple[str, str, str]] = {
    **{f"sess_{u}": (u, "0", "1 day") for u in USERS},
    "sess_member_A_expired": ("member_A", "-2 days", "-1 day"),
    "sess_member_B_expired": ("member_B", "-2 days", "-1 day"),
}
EXPIRED_SESSIONS = {"sess_member_A_expired", "sess_member_B_expired"}

# label: (organization, user or None for org-wide, auth_type, enabled)
CONFIGS: dict[str, tuple[str, str | None, str, bool]] = {
    "cfg_org_A": ("org_A", None, "oauth", True),
    "cfg_org_A_off": ("org_A", None, "none", False),
    "cfg_org_A_spare": ("org_A", None, "oauth", True),  # no tokens yet: for INSERT cases
    "cfg_org_B": ("org_B", None, "oauth", True),
    "cfg_org_B_spare": ("org_B", None, "oauth", True),
    "cfg_member_A": ("org_A", "member_A", "oauth", True),
    "cfg_member_A_off": ("org_A", "member_A", "none", False),
    "cfg_member_A2": ("org_A", "member_A2", "oauth", True),
    "cfg_admin_A": ("org_A", "admin_A", "oauth", True),
    "cfg_member_B": ("org_B", "member_B", "oauth", True),
}
DISABLED_CONFIGS = {label for label, (*_, enabled) in CONFIGS.items() if not enabled}

# label: (user, configuration)
TOKENS: dict[str, tuple[str, str]] = {
    "tok_member_A_org": ("member_A", "cfg_org_A"),
    "tok_member_A_own": ("member_A", "cfg_member_A"),
    "tok_member_A2_org": ("member_A2", "cfg_org_A"),
    "tok_member_A2_own": ("member_A2", "cfg_member_A2"),
    "tok_admin_A_org": ("admin_A", "cfg_org_A"),
    "tok_admin_A_own": ("admin_A", "cfg_admin_A"),
    "tok_inactive_A_org": ("inactive_A", "cfg_org_A"),
    "tok_member_B_org": ("member_B", "cfg_org_B"),
    "tok_member_B_own": ("member_B", "cfg_member_B"),
    "tok_admin_B_org": ("admin_B", "cfg_org_B"),
}

# label: (scope, organization, user, priority, enabled, age)
PROMPTS: dict[str, tuple[str, str | None, str | None, int, bool, str]] = {
    "pr_global": ("global", None, None, 10, True, "3 hours"),
    "pr_global_low": ("global", None, None, 1, True, "2 hours"),
    "pr_global_off": ("global", None, None, 5, False, "1 hour"),
    "pr_org_A": ("organization", "org_A", None, 0, True, "1 hour"),
    "pr_org_A_off": ("organization", "org_A", None, 0, False, "1 hour"),
    "pr_org_B": ("organization", "org_B", None, 0, True, "1 hour"),
    **{f"pr_user_{u}": ("user", org_of(u), u, 0, True, "1 hour") for u in USERS},
}

# label: (user or None, organization or None); every user in each organization,
# plus events with no user (system events) and one with neither.
AUDITS: dict[str, tuple[str | None, str | None]] = {
    **{f"audit_{u}_in_{org}": (u, org) for u in USERS for org in ORGS},
    "audit_system_in_org_A": (None, "org_A"),
    "audit_system_in_org_B": (None, "org_B"),
    "audit_platform": (None, None),
}

SEED_LABELS: dict[str, list[str]] = {
    "organizations": list(ORGS),
    "users": list(USERS),
    "user_sessions": list(SESSIONS),
    "mcp_configurations": list(CONFIGS),
    "mcp_oauth_tokens": list(TOKENS),
    "system_prompts": list(PROMPTS),
    "audit_logs": list(AUDITS),
}
assert set(SEED_LABELS) == set(TABLES)

ID: dict[str, uuid.UUID] = {
    label: fixed_id(label) for labels in SEED_LABELS.values() for label in labels
}
LABEL: dict[uuid.UUID, str] = {v: k for k, v in ID.items()}


def _seed(conn: Conn, key: str) -> None:
    for label, (name, slug) in ORGS.items():
        conn.execute(_SEED_ORG, (ID[label], name, slug))
    for label, (org, email, role, active) in USERS.items():
        conn.execute(_SEED_USER, (ID[label], ID[org], email, role, active))
    for label, (user, created, expires) in SESSIONS.items():
        conn.execute(
            _SEED_SESSION,
            (ID[label], ID[user], ID[org_of(user)], f"/workspaces/{label}", created, expires),
        )
    for label, (org, owner, auth, enabled) in CONFIGS.items():
        provider = "github" if auth == "oauth" else None
        conn.execute(
            _SEED_CONFIG,
            (
                ID[label],
                ID[org],
                ID[owner] if owner else None,
                label,
                f"https://mcp.example.com/{label}",
                auth,
                provider,
                enabled,
            ),
        )
    for label, (user, config) in TOKENS.items():
        conn.execute(
            _SEED_TOKEN,
            (
                ID[label],
                ID[user],
                ID[org_of(user)],
                ID[config],
                f"access-{label}",
                key,
                f"refresh-{label}",
                key,
            ),
        )
    for label, (scope, prompt_org, prompt_user, priority, enabled, age) in PROMPTS.items():
        conn.execute(
            _SEED_PROMPT,
            (
                ID[label],
                scope,
                ID[prompt_org] if prompt_org else None,
                ID[prompt_user] if prompt_user else None,
                f"prompt {label}",
                priority,
                enabled,
                age,
            ),
        )
    for label, (actor, place) in AUDITS.items():
        conn.execute(
            _SEED_AUDIT, (ID[label], ID[actor] if actor else None, ID[place] if place else None)
        )


# ---------------------------------------------------------------------------
# Actors (of agentapi_app)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Who acts: a value for ``app.user_id`` (``None``: never set on its connection)."""

    name: str
    setting: str | None


PEOPLE = ("member_A", "admin_A", "member_B", "admin_B")
"""Actors that are active users of an organization."""
NOBODY = ("inactive_A", "inactive_admin_A", "unset", "empty", "malformed", "unknown")
"""Actors that must see nothing and write nothing."""
ACTORS: dict[str, Actor] = {
    **{name: Actor(name, str(ID[name])) for name in PEOPLE},
    "inactive_A": Actor("inactive_A", str(ID["inactive_A"])),
    "inactive_admin_A": Actor("inactive_admin_A", str(ID["inactive_admin_A"])),
    "unset": Actor("unset", None),
    "empty": Actor("empty", ""),
    "malformed": Actor("malformed", "not-a-uuid"),
    "unknown": Actor("unknown", str(fixed_id("unknown-user"))),
}
assert set(ACTORS) == set(PEOPLE) | set(NOBODY)


# ---------------------------------------------------------------------------
# The seeded database
# ---------------------------------------------------------------------------


class _Ciphertext:
    """Placeholder in a case's row for an encrypt_token() ciphertext made at seed time."""

    def __repr__(self) -> str:
        return "CIPHERTEXT"


CIPHERTEXT = _Ciphertext()


@dataclass
class Seeded:
    """A seeded database and its connections (one per app actor, one per other login)."""

    db: TestDatabase
    key: str = field(repr=False)
    ciphertext: str = field(repr=False)
    _app: dict[str, Conn] = field(default_factory=dict, repr=False)
    _logins: dict[str, Conn] = field(default_factory=dict, repr=False)

    def login(self, login: str) -> Conn:
        """A shared connection as ``login`` (autocommit off)."""
        if login not in self._logins:
            self._logins[login] = self.db.connect(login)
        return self._logins[login]

    @contextmanager
    def as_app(self, actor: str, *, set_role: bool = True) -> Iterator[Conn]:
        """A rolled-back transaction of ``app_login`` as agentapi_app, acting as ``actor``.

        ``SET LOCAL ROLE agentapi_app`` unless ``set_role`` is false (then the login
        acts through its inherited membership). Each (actor, set_role) has a
        connection of its own, so "unset" really never had ``app.user_id`` set in
        its session (a transaction-local set leaves ``''`` behind in the session
        once the transaction ends).
        """
        key = f"{actor}:{set_role}"
        if key not in self._app:
            self._app[key] = self.db.connect(APP_LOGIN)
        conn = self._app[key]
        with acting(conn, APP_ROLE if set_role else None, ACTORS[actor].setting) as c:
            if actor == "unset":
                row = c.execute(_CURRENT_USER_ID).fetchone()
                assert row is not None and row[0] is None, "app.user_id is set"
            yield c

    def resolve(self, value: object) -> object:
        """A case value as a query parameter."""
        if value is CIPHERTEXT:
            return self.ciphertext
        if isinstance(value, dict):
            return Jsonb(value)
        return value


def seed(db: TestDatabase) -> Seeded:
    """Seed ``db`` as the superuser and commit; return a :class:`Seeded`."""
    key = secrets.token_hex(32)  # 64 hex characters, as the library's keys
    with db.connect(SUPERUSER) as conn:
        _seed(conn, key)
        row = conn.execute(_SAMPLE_CIPHERTEXT, ("access-new", key)).fetchone()
        conn.commit()
    assert row is not None
    return Seeded(db=db, key=key, ciphertext=str(row[0]))


# ---------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a write did: ``rows`` affected, or the kind of ``error`` it raised.

    Error kinds: ``rls`` (42501, a row-level security policy refused the new row),
    ``privilege`` (42501, permission denied: grants), ``check`` (23514, a CHECK
    constraint or a trigger's check), ``fk`` (23503), ``unique`` (23505); for the
    last three, ``constraint`` names the constraint that fired.
    """

    rows: int | None = None
    error: str | None = None
    constraint: str | None = None
    detail: str = field(default="", compare=False)

    @property
    def allowed(self) -> bool:
        return self.error is None and bool(self.rows)

    def __str__(self) -> str:
        if self.error is None:
            return f"{self.rows} row(s)"
        named = f" {self.constraint}" if self.constraint else ""
        return f"error {self.error}{named}" + (f" ({self.detail})" if self.detail else "")


ALLOWED = Outcome(rows=1)
FILTERED = Outcome(rows=0)
RLS = Outcome(error="rls")
PRIV = Outcome(error="privilege")


def check(constraint: str) -> Outcome:
    """A CHECK constraint (or a trigger raising check_violation) named ``constraint``."""
    return Outcome(error="check", constraint=constraint)


def fk(constraint: str) -> Outcome:
    """A foreign key violation of ``constraint``."""
    return Outcome(error="fk", constraint=constraint)


def classify(exc: psycopg.Error) -> Outcome:
    """The :class:`Outcome` of a failed statement; unexpected errors are re-raised."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, errors.InsufficientPrivilege):
        if "row-level security" in message:
            return Outcome(error="rls", detail=message)
        if message.startswith("permission denied"):
            return Outcome(error="privilege", detail=message)
    kinds = {errors.CheckViolation: "check", errors.ForeignKeyViolation: "fk",
             errors.UniqueViolation: "unique"}
    for cls, kind in kinds.items():
        if isinstance(exc, cls):
            return Outcome(error=kind, constraint=exc.diag.constraint_name, detail=message)
    raise exc


def attempt(conn: Conn, query: sql.Composed | str, params: Sequence[object]) -> Outcome:
    """Run one write; its affected row count, or the classified error."""
    try:
        cur = conn.execute(query, params)
    except psycopg.Error as exc:
        return classify(exc)
    return Outcome(rows=cur.rowcount)


def visible_labels(conn: Conn, relation: str) -> set[str]:
    """Labels of the rows of ``relation`` the connection sees (unknown ids as ``?<id>``)."""
    rows = conn.execute(select_ids_sql(relation)).fetchall()
    return {LABEL.get(row[0], f"?{row[0]}") for row in rows}


def row_values(seeded: Seeded, row: Mapping[str, object]) -> list[object]:
    return [seeded.resolve(v) for v in row.values()]


NOW = datetime(2026, 1, 1, tzinfo=UTC)
"""A fixed timestamp for cases that write one."""
