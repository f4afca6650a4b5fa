"""Access cells beyond the per-table matrix: functions, agentapi_service, agentapi_owner,
and a login with no membership at all.

* ``get_effective_system_prompts`` never returns another tenant's prompts, whoever
  calls and whatever ids are passed; ``log_audit_event`` cannot forge an event under
  agentapi_app.
* agentapi_service (``service_login`` + ``SET LOCAL ROLE``) provisions an organization
  and its first admin, creates global prompts, runs the maintenance functions and sees
  every row; even it cannot put a token on another user's personal configuration,
  move a configuration, or change an audit row.
* agentapi_owner (``owner_login`` + ``SET LOCAL ROLE``) cannot change an audit row either.
* agentapi_app cannot run the maintenance functions; ``outsider_login`` reads nothing.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager

import psycopg
import pytest
from psycopg import errors

from tests.access_fixtures import (
    CONFIGS,
    EXPIRED_SESSIONS,
    FILTERED,
    ID,
    LABEL,
    NOBODY,
    PRIV,
    RLS,
    SEED_LABELS,
    Outcome,
    Seeded,
    attempt,
    check,
    classify,
    delete_sql,
    insert_sql,
    seed,
    truncate_sql,
    update_sql,
    visible_labels,
)
from tests.pg import (
    APP_LOGIN,
    APP_ROLE,
    OUTSIDER_LOGIN,
    OWNER_LOGIN,
    OWNER_ROLE,
    SERVICE_LOGIN,
    SERVICE_ROLE,
    SUPERUSER,
    TABLES,
    Conn,
    TestDatabase,
    acting,
)

# ---------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------

_EFFECTIVE_PROMPTS = (
    "SELECT id FROM public.get_effective_system_prompts(%s::uuid, %s::uuid) ORDER BY precedence"
)
_LOG_EVENT = (
    "SELECT public.log_audit_event(%s::uuid, %s::uuid, 'test.event', 'test', NULL,"
    " '{}'::jsonb, NULL, NULL)"
)
_CLEANUP = "SELECT public.cleanup_expired_sessions()"
_ENSURE_PARTITIONS = "SELECT public.audit_ensure_partitions(1, 0)"
_AUDIT_UPDATE = "UPDATE audit_logs SET success = false WHERE id = %s"
_AUDIT_DELETE = "DELETE FROM audit_logs WHERE id = %s"
_AUDIT_TRUNCATE = "TRUNCATE audit_logs"
_AUDIT_PARTITIONS = (
    "SELECT c.relname FROM pg_catalog.pg_inherits AS i"
    " JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'public.audit_logs'::regclass ORDER BY 1"
)
_OWNER_REGRANT = "GRANT UPDATE, DELETE ON public.audit_logs TO agentapi_owner"
_AUDIT_BY_ID = "SELECT user_id, organization_id FROM audit_logs WHERE id = %s"
_PROVISION_ORG = "INSERT INTO organizations (name, slug) VALUES ('Org C', 'org-c') RETURNING id"
_PROVISION_ADMIN = (
    "INSERT INTO users (organization_id, email, role) VALUES (%s, 'admin@c.example.com', 'admin')"
    " RETURNING id"
)
_GLOBAL_PROMPT = (
    "INSERT INTO system_prompts (scope, content, priority) VALUES ('global', 'be kind', 99)"
    " RETURNING id"
)
_ORG_IDS = "SELECT id FROM organizations"
_NEW_MEMBER = (
    "INSERT INTO users (organization_id, email) VALUES (%s, 'member@c.example.com')"
)
_SET_ROLE_SERVICE = "SET ROLE agentapi_service"

# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(identity_db: TestDatabase) -> Seeded:
    return seed(identity_db)


def _as(seeded: Seeded, login: str, role: str) -> AbstractContextManager[Conn]:
    return acting(seeded.login(login), role)


# ---------------------------------------------------------------------------
# get_effective_system_prompts: never another tenant's prompts
# ---------------------------------------------------------------------------

MEMBER_A_PROMPTS = ["pr_user_member_A", "pr_org_A", "pr_global", "pr_global_low"]
A_SHARED_PROMPTS = ["pr_org_A", "pr_global", "pr_global_low"]
MEMBER_B_PROMPTS = ["pr_user_member_B", "pr_org_B", "pr_global", "pr_global_low"]

# (actor, user passed, organization passed, expected prompts in precedence order)
APP_PROMPT_CASES: list[tuple[str, str, str, list[str]]] = [
    ("member_A", "member_A", "org_A", MEMBER_A_PROMPTS),
    ("member_A", "member_B", "org_B", []),
    ("member_A", "admin_B", "org_B", []),
    ("member_A", "member_A", "org_B", []),
    ("member_A", "member_B", "org_A", []),
    ("member_A", "member_A2", "org_A", A_SHARED_PROMPTS),  # never A2's own prompt
    ("admin_A", "member_A", "org_A", A_SHARED_PROMPTS),  # an admin neither
    ("admin_A", "admin_B", "org_B", []),
    ("member_B", "member_B", "org_B", MEMBER_B_PROMPTS),
    ("admin_B", "member_A", "org_A", []),
    ("admin_B", "admin_B", "org_A", []),
    *((actor, "member_A", "org_A", []) for actor in NOBODY),
    ("inactive_A", "inactive_A", "org_A", []),
]


def _prompt_labels(conn: Conn, user: str, org: str) -> list[str]:
    rows = conn.execute(_EFFECTIVE_PROMPTS, (ID[user], ID[org])).fetchall()
    return [LABEL.get(row[0], f"?{row[0]}") for row in rows]


@pytest.mark.parametrize(
    ("actor", "user", "org", "expected"),
    APP_PROMPT_CASES,
    ids=[f"app-{a}-for-{u}@{o}" for a, u, o, _ in APP_PROMPT_CASES],
)
def test_effective_prompts_as_app(
    seeded: Seeded, actor: str, user: str, org: str, expected: list[str]
) -> None:
    with seeded.as_app(actor) as conn:
        assert _prompt_labels(conn, user, org) == expected


SERVICE_PROMPT_CASES: list[tuple[str, str, list[str]]] = [
    ("member_A", "org_A", MEMBER_A_PROMPTS),
    ("member_B", "org_B", MEMBER_B_PROMPTS),
    ("member_A", "org_B", []),  # mismatched user and organization
    ("member_B", "org_A", []),
    ("admin_A", "org_B", []),
]


@pytest.mark.parametrize(
    ("user", "org", "expected"),
    SERVICE_PROMPT_CASES,
    ids=[f"service-for-{u}@{o}" for u, o, _ in SERVICE_PROMPT_CASES],
)
def test_effective_prompts_as_service(
    seeded: Seeded, user: str, org: str, expected: list[str]
) -> None:
    with _as(seeded, SERVICE_LOGIN, SERVICE_ROLE) as conn:
        assert _prompt_labels(conn, user, org) == expected


def test_effective_prompts_of_an_unknown_user_are_empty_as_service(seeded: Seeded) -> None:
    with _as(seeded, SERVICE_LOGIN, SERVICE_ROLE) as conn:
        rows = conn.execute(_EFFECTIVE_PROMPTS, (uuid.uuid4(), ID["org_A"])).fetchall()
        assert rows == []


# ---------------------------------------------------------------------------
# log_audit_event: the app records only the acting user in their organization
# ---------------------------------------------------------------------------

# (actor, user recorded, organization recorded, outcome)
LOG_CASES: list[tuple[str, str | None, str | None, Outcome]] = [
    ("member_A", "member_A", "org_A", Outcome(rows=1)),
    ("admin_A", "admin_A", "org_A", Outcome(rows=1)),
    ("member_B", "member_B", "org_B", Outcome(rows=1)),
    ("member_A", "member_A2", "org_A", RLS),
    ("member_A", "member_A", "org_B", RLS),
    ("member_A", "member_B", "org_B", RLS),
    ("member_A", None, "org_A", RLS),
    ("member_A", "member_A", None, RLS),
    ("admin_A", "member_A", "org_A", RLS),
    ("admin_B", "member_A", "org_A", RLS),
    ("inactive_A", "inactive_A", "org_A", RLS),
    *((actor, "member_A", "org_A", RLS) for actor in NOBODY),
]


@pytest.mark.parametrize(
    ("actor", "user", "org", "expected"),
    LOG_CASES,
    ids=[
        f"app-{a}-logs-{u or 'nobody'}@{o or 'nowhere'}-{'allowed' if e.allowed else 'denied'}"
        for a, u, o, e in LOG_CASES
    ],
)
def test_log_audit_event_as_app(
    seeded: Seeded, actor: str, user: str | None, org: str | None, expected: Outcome
) -> None:
    user_id = ID[user] if user else None
    org_id = ID[org] if org else None
    with seeded.as_app(actor) as conn:
        try:
            row = conn.execute(_LOG_EVENT, (user_id, org_id)).fetchone()
        except psycopg.Error as exc:
            assert classify(exc) == expected
            return
        assert expected.allowed, f"logged an event; expected {expected}"
        assert row is not None
        recorded = conn.execute(_AUDIT_BY_ID, (row[0],)).fetchone()
        assert recorded == (user_id, org_id)


def test_log_audit_event_as_service_records_any_event(seeded: Seeded) -> None:
    with _as(seeded, SERVICE_LOGIN, SERVICE_ROLE) as conn:
        row = conn.execute(_LOG_EVENT, (None, ID["org_B"])).fetchone()
        assert row is not None
        assert conn.execute(_AUDIT_BY_ID, (row[0],)).fetchone() == (None, ID["org_B"])


# ---------------------------------------------------------------------------
# agentapi_service and agentapi_owner
# ---------------------------------------------------------------------------

PRIVILEGED = [(SERVICE_LOGIN, SERVICE_ROLE), (OWNER_LOGIN, OWNER_ROLE)]


@pytest.mark.parametrize(("login", "role"), PRIVILEGED, ids=["service", "owner"])
@pytest.mark.parametrize("table", TABLES)
def test_privileged_roles_see_every_row(
    seeded: Seeded, login: str, role: str, table: str
) -> None:
    with _as(seeded, login, role) as conn:
        assert visible_labels(conn, table) == set(SEED_LABELS[table])


# One ordinary write per table that service and owner may do (not audit_logs).
PRIVILEGED_UPDATES = [
    ("organizations", "org_B", {"name": "Renamed"}),
    ("users", "member_B", {"role": "admin"}),
    ("user_sessions", "sess_member_A", {"workspace_path": "/w/changed"}),
    ("mcp_configurations", "cfg_member_A", {"endpoint": "https://mcp.example.com/x"}),
    ("mcp_oauth_tokens", "tok_member_A2_own", {"token_type": "MAC"}),
    ("system_prompts", "pr_global", {"content": "changed"}),
]


@pytest.mark.parametrize(("login", "role"), PRIVILEGED, ids=["service", "owner"])
@pytest.mark.parametrize(
    ("table", "target", "changes"), PRIVILEGED_UPDATES, ids=[t for t, _, _ in PRIVILEGED_UPDATES]
)
def test_privileged_roles_update_and_delete_any_row(
    seeded: Seeded, login: str, role: str, table: str, target: str, changes: dict[str, object]
) -> None:
    with _as(seeded, login, role) as conn:
        query = update_sql(table, list(changes))
        assert attempt(conn, query, [*changes.values(), ID[target]]) == Outcome(rows=1)
        assert attempt(conn, delete_sql(table), [ID[target]]) == Outcome(rows=1)


AUDIT_WRITES = [
    ("update", _AUDIT_UPDATE),
    ("delete", _AUDIT_DELETE),
    ("truncate", _AUDIT_TRUNCATE),
]


@pytest.mark.parametrize(("login", "role"), PRIVILEGED, ids=["service", "owner"])
@pytest.mark.parametrize(("action", "query"), AUDIT_WRITES, ids=[a for a, _ in AUDIT_WRITES])
def test_no_role_changes_an_audit_row(
    seeded: Seeded, login: str, role: str, action: str, query: str
) -> None:
    params = [] if action == "truncate" else [ID["audit_member_A_in_org_A"]]
    with _as(seeded, login, role) as conn:
        assert attempt(conn, query, params) == PRIV
    with _as(seeded, login, role) as conn:  # the row is still there
        assert "audit_member_A_in_org_A" in visible_labels(conn, "audit_logs")


@pytest.mark.parametrize(("login", "role"), PRIVILEGED, ids=["service", "owner"])
def test_no_role_changes_an_audit_partition_directly(seeded: Seeded, login: str, role: str) -> None:
    with seeded.db.connect(SUPERUSER) as su:
        partitions = [str(r[0]) for r in su.execute(_AUDIT_PARTITIONS).fetchall()]
    assert "audit_logs_default" in partitions and len(partitions) >= 5
    outcomes = {}
    for partition in partitions:
        for action, query in [
            ("update", update_sql(partition, ["success"])),
            ("delete", delete_sql(partition)),
        ]:
            params: list[object] = [False] if action == "update" else []
            with _as(seeded, login, role) as conn:
                outcomes[partition, action] = attempt(
                    conn, query, [*params, ID["audit_member_A_in_org_A"]]
                )
    assert all(o == PRIV for o in outcomes.values()), outcomes


def test_owner_granting_itself_update_still_changes_no_audit_row(seeded: Seeded) -> None:
    """The owner can re-grant itself UPDATE/DELETE; RLS (no such policy) still filters."""
    target = [ID["audit_member_A_in_org_A"]]
    with _as(seeded, OWNER_LOGIN, OWNER_ROLE) as conn:
        conn.execute(_OWNER_REGRANT)
        assert attempt(conn, _AUDIT_UPDATE, target) == FILTERED
        assert attempt(conn, _AUDIT_DELETE, target) == FILTERED


@pytest.mark.parametrize(("action", "query"), AUDIT_WRITES[:2], ids=["update", "delete"])
def test_even_a_superuser_trips_the_append_only_trigger(
    seeded: Seeded, action: str, query: str
) -> None:
    conn = seeded.login(SUPERUSER)
    with acting(conn, None), pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        conn.execute(query, [ID["audit_member_A_in_org_A"]])


@pytest.mark.parametrize(("login", "role"), PRIVILEGED, ids=["service", "owner"])
def test_privileged_roles_append_audit_events(seeded: Seeded, login: str, role: str) -> None:
    row = {"organization_id": ID["org_A"], "action": "maintenance", "resource_type": "job"}
    with _as(seeded, login, role) as conn:
        assert attempt(conn, insert_sql("audit_logs", list(row)), list(row.values())) == Outcome(
            rows=1
        )


def test_service_provisions_an_organization_and_its_first_admin(db: TestDatabase) -> None:
    """The service creates org C and its admin; that admin then runs org C in the app."""
    with db.connect(SERVICE_LOGIN) as conn:
        conn.execute(_SET_ROLE_SERVICE)
        org = conn.execute(_PROVISION_ORG).fetchone()
        assert org is not None
        admin = conn.execute(_PROVISION_ADMIN, (org[0],)).fetchone()
        assert admin is not None
        conn.commit()
    with db.connect(APP_LOGIN) as conn, acting(conn, APP_ROLE, str(admin[0])):
        assert [r[0] for r in conn.execute(_ORG_IDS).fetchall()] == [org[0]]
        assert conn.execute(_NEW_MEMBER, (org[0],)).rowcount == 1


def test_service_creates_global_prompts_visible_to_every_tenant(seeded: Seeded) -> None:
    with _as(seeded, SERVICE_LOGIN, SERVICE_ROLE) as conn:
        row = conn.execute(_GLOBAL_PROMPT).fetchone()
        assert row is not None
        LABEL[row[0]] = "new_global"  # this process only; the transaction rolls back
        try:
            for user, org, own in [("member_B", "org_B", MEMBER_B_PROMPTS),
                                   ("member_A", "org_A", MEMBER_A_PROMPTS)]:
                # Globals come after user and organization prompts, by priority (99 first).
                expected = [*own[:2], "new_global", *own[2:]]
                assert _prompt_labels(conn, user, org) == expected
        finally:
            del LABEL[row[0]]


def test_service_cleans_up_expired_sessions(seeded: Seeded) -> None:
    with _as(seeded, SERVICE_LOGIN, SERVICE_ROLE) as conn:
        row = conn.execute(_CLEANUP).fetchone()
        assert row == (len(EXPIRED_SESSIONS),)
        assert visible_labels(conn, "user_sessions") == (
            set(SEED_LABELS["user_sessions"]) - EXPIRED_SESSIONS
        )


def test_service_runs_audit_ensure_partitions(seeded: Seeded) -> None:
    with _as(seeded, SERVICE_LOGIN, SERVICE_ROLE) as conn:
        row = conn.execute(_ENSURE_PARTITIONS).fetchone()
        assert row is not None and row[0] >= 0


# The schema rule "a token's configuration is one its user can see" holds for the
# service too (a trigger, not a policy), and so does the immutable config scope.
SCOPE_FIXED = check("mcp_configurations_scope_immutable")
VISIBLE_CONFIG = check("mcp_oauth_tokens_configuration_visible")
SERVICE_WRITES: list[tuple[str, str, list[object], Outcome]] = [
    ("token_on_another_users_personal_config", "insert", ["member_A", "cfg_member_A2"],
     VISIBLE_CONFIG),
    ("token_of_member_A2_on_org_wide_config", "insert", ["member_A2", "cfg_org_A_spare"],
     Outcome(rows=1)),
    ("token_moved_to_user_who_cannot_see_its_config", "move_token",
     ["tok_member_A_own", "member_A2"], VISIBLE_CONFIG),
    ("org_wide_config_made_personal", "config_scope", ["cfg_org_A", "user_id", "member_A"],
     SCOPE_FIXED),
    ("personal_config_made_org_wide", "config_scope", ["cfg_member_A", "user_id", None],
     SCOPE_FIXED),
    ("config_moved_to_org_B", "config_scope", ["cfg_org_A", "organization_id", "org_B"],
     SCOPE_FIXED),
]


@pytest.mark.parametrize(
    ("what", "kind", "args", "expected"),
    SERVICE_WRITES,
    ids=[f"service-{w}-{'allowed' if e.allowed else 'denied'}" for w, _, _, e in SERVICE_WRITES],
)
def test_service_schema_rules(
    seeded: Seeded, what: str, kind: str, args: list[object], expected: Outcome
) -> None:
    with _as(seeded, SERVICE_LOGIN, SERVICE_ROLE) as conn:
        if kind == "insert":
            user, config = str(args[0]), str(args[1])
            row = {
                "user_id": ID[user],
                "organization_id": ID[CONFIGS[config][0]],
                "mcp_configuration_id": ID[config],
                "oauth_provider": "github",
                "access_token": seeded.ciphertext,
            }
            outcome = attempt(conn, insert_sql("mcp_oauth_tokens", list(row)), list(row.values()))
        elif kind == "move_token":
            outcome = attempt(
                conn,
                update_sql("mcp_oauth_tokens", ["user_id"]),
                [ID[str(args[1])], ID[str(args[0])]],
            )
        else:
            target, column, value = str(args[0]), str(args[1]), args[2]
            new = ID[str(value)] if value is not None else None
            outcome = attempt(conn, update_sql("mcp_configurations", [column]), [new, ID[target]])
        assert outcome == expected, outcome.detail


# ---------------------------------------------------------------------------
# What agentapi_app and an outsider cannot do at all
# ---------------------------------------------------------------------------

MAINTENANCE = [
    ("cleanup_expired_sessions", _CLEANUP),
    ("audit_ensure_partitions", _ENSURE_PARTITIONS),
]


@pytest.mark.parametrize("actor", ["admin_A", "member_A", "unset"])
@pytest.mark.parametrize(("name", "query"), MAINTENANCE, ids=[n for n, _ in MAINTENANCE])
def test_app_cannot_run_maintenance(seeded: Seeded, actor: str, name: str, query: str) -> None:
    with seeded.as_app(actor) as conn:
        assert attempt(conn, query, []) == PRIV


@pytest.mark.parametrize("table", TABLES)
def test_app_cannot_truncate(seeded: Seeded, table: str) -> None:
    """TRUNCATE ignores row-level security, so the application must not have it."""
    with seeded.as_app("admin_A") as conn:
        assert attempt(conn, truncate_sql(table), []) == PRIV


@pytest.mark.parametrize("role", [SERVICE_ROLE, OWNER_ROLE])
def test_app_login_cannot_become_service_or_owner(seeded: Seeded, role: str) -> None:
    conn = seeded.login(APP_LOGIN)
    with pytest.raises(errors.InsufficientPrivilege), acting(conn, role):
        pass


OUTSIDER_READS = [*TABLES, "active_user_sessions", "effective_mcp_configurations"]


@pytest.mark.parametrize("relation", OUTSIDER_READS)
def test_outsider_reads_nothing(seeded: Seeded, relation: str) -> None:
    conn = seeded.login(OUTSIDER_LOGIN)
    with (
        acting(conn, None, str(ID["admin_A"])),
        pytest.raises(errors.InsufficientPrivilege, match="permission denied"),
    ):
        visible_labels(conn, relation)


@pytest.mark.parametrize("role", [APP_ROLE, SERVICE_ROLE, OWNER_ROLE])
def test_outsider_cannot_become_a_group_role(seeded: Seeded, role: str) -> None:
    conn = seeded.login(OUTSIDER_LOGIN)
    with pytest.raises(errors.InsufficientPrivilege), acting(conn, role):
        pass


def test_outsider_cannot_log_or_read_prompts(seeded: Seeded) -> None:
    conn = seeded.login(OUTSIDER_LOGIN)
    for query, params in [
        (_LOG_EVENT, (ID["admin_A"], ID["org_A"])),
        (_EFFECTIVE_PROMPTS, (ID["admin_A"], ID["org_A"])),
    ]:
        with (
            acting(conn, None, str(ID["admin_A"])),
            pytest.raises(errors.InsufficientPrivilege, match="permission denied"),
        ):
            conn.execute(query, params)

