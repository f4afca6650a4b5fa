"""Regression tests for holes found in review of the schema.

Each test reproduces an attack that worked against an earlier version of
``database/schema.sql`` and asserts it no longer does:

1. ``search_path = ''`` on SECURITY DEFINER functions still searches ``pg_temp``
   first for types: a caller-made ``pg_temp.uuid`` domain with a CHECK calling
   the caller's function ran that function as ``agentapi_owner``.
2. A BEFORE trigger that checked a token's configuration as the definer answered
   questions about another tenant's configurations before RLS refused the row.
3. Caller-chosen primary keys revealed, by collision, that another tenant's id exists.
4. A global unique slug let an admin probe which slugs other tenants use.
5. Policies whose arms trusted a helper evaluated for a different acting user: with
   set_config between two InitPlans of one statement, a member borrowed another
   tenant's admin id to read their own organization's admin-only rows.
6. Month arithmetic in the caller's TimeZone left gaps between audit partitions.
7. The audit hash-chain trigger (SECURITY DEFINER, BEFORE INSERT, so before RLS)
   locked another tenant's chain head, telling whether it is enrolled and writing;
   and members could read chain positions, which count the whole organization's events.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql

from tests.pg import (
    APP_LOGIN,
    APP_ROLE,
    IDENTITY_MODES,
    Conn,
    TestDatabase,
    acting,
    set_identity_mode,
)

ORG_A = str(uuid.uuid5(uuid.NAMESPACE_URL, "regress/org-a"))
ORG_B = str(uuid.uuid5(uuid.NAMESPACE_URL, "regress/org-b"))
ADMIN_A = str(uuid.uuid5(uuid.NAMESPACE_URL, "regress/admin-a"))
MEMBER_A = str(uuid.uuid5(uuid.NAMESPACE_URL, "regress/member-a"))
ADMIN_B = str(uuid.uuid5(uuid.NAMESPACE_URL, "regress/admin-b"))
CONFIG_B_PERSONAL = str(uuid.uuid5(uuid.NAMESPACE_URL, "regress/config-b-personal"))
CONFIG_B_ORG = str(uuid.uuid5(uuid.NAMESPACE_URL, "regress/config-b-org"))
KEY = "9" * 64

_SEED = (
    "INSERT INTO organizations (id, name, slug)"
    " VALUES (%(org_a)s, 'A', 'org-a'), (%(org_b)s, 'B', 'org-b')",
    "INSERT INTO users (id, organization_id, email, role) VALUES"
    " (%(admin_a)s, %(org_a)s, 'admin@a.example', 'admin'),"
    " (%(member_a)s, %(org_a)s, 'member@a.example', 'user'),"
    " (%(admin_b)s, %(org_b)s, 'admin@b.example', 'admin')",
    "INSERT INTO mcp_configurations (id, organization_id, user_id, name, type, endpoint, auth_type,"
    " oauth_provider) VALUES"
    " (%(cfg_b_personal)s, %(org_b)s, %(admin_b)s, 'secret-b', 'http', 'https://b.example',"
    " 'oauth', 'gh'),"
    " (%(cfg_b_org)s, %(org_b)s, NULL, 'org-b', 'http', 'https://b.example', 'none', NULL)",
    "INSERT INTO mcp_oauth_tokens (user_id, organization_id, mcp_configuration_id, oauth_provider,"
    " access_token) VALUES (%(admin_b)s, %(org_b)s, %(cfg_b_personal)s, 'gh',"
    " encrypt_token('B-SECRET-TOKEN', %(key)s))",
)
_IDS = {
    "org_a": ORG_A,
    "org_b": ORG_B,
    "admin_a": ADMIN_A,
    "member_a": MEMBER_A,
    "admin_b": ADMIN_B,
    "cfg_b_personal": CONFIG_B_PERSONAL,
    "cfg_b_org": CONFIG_B_ORG,
    "key": KEY,
}

_EVIL_FUNCTION = """
CREATE FUNCTION pg_temp.evil(pg_catalog.uuid) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
    IF current_user = 'agentapi_owner' THEN
        EXECUTE 'CREATE POLICY pwn ON public.mcp_oauth_tokens TO agentapi_app USING (true)';
    END IF;
    RETURN true;
END $f$
"""
_EVIL_DOMAIN = "CREATE DOMAIN pg_temp.uuid AS pg_catalog.uuid CHECK (pg_temp.evil(VALUE))"
_POLICY_EXISTS = "SELECT count(*) FROM pg_policies WHERE policyname = 'pwn'"
_GRANT_TEMP = "GRANT TEMPORARY ON DATABASE {} TO agentapi_app"
_SET_USER = "SELECT set_config('app.user_id', %s, true)"


@pytest.fixture(params=IDENTITY_MODES)
def seeded(request: pytest.FixtureRequest, db: TestDatabase) -> Iterator[TestDatabase]:
    set_identity_mode(db, str(request.param))
    with db.connect() as conn:
        for statement in _SEED:
            conn.execute(statement, _IDS)
        conn.commit()
    yield db


def test_app_cannot_create_temporary_objects(seeded: TestDatabase) -> None:
    with seeded.connect(APP_LOGIN) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("CREATE TEMP TABLE t (x int)")


def test_pg_temp_type_shadowing_does_not_run_as_owner(seeded: TestDatabase) -> None:
    """Even where a DBA re-grants TEMPORARY, definer helpers resolve pg_catalog.uuid."""
    with seeded.connect() as admin:
        admin.execute(sql.SQL(_GRANT_TEMP).format(sql.Identifier(seeded.name)))
        admin.commit()
    conn = psycopg.connect(seeded.url(APP_LOGIN), autocommit=True)
    try:
        conn.execute(_EVIL_FUNCTION)
        conn.execute(_EVIL_DOMAIN)
        with conn.transaction():
            conn.execute(_SET_USER, (MEMBER_A,))
            conn.execute("SELECT count(*) FROM public.users")
            conn.execute("SELECT count(*) FROM public.mcp_oauth_tokens")
    finally:
        conn.close()
    with seeded.connect() as admin:
        row = admin.execute(_POLICY_EXISTS).fetchone()
    assert row is not None
    assert row[0] == 0, "a caller's pg_temp function ran as agentapi_owner"


@pytest.mark.parametrize(
    ("token_user", "config_id"),
    [
        pytest.param(ADMIN_B, CONFIG_B_PERSONAL, id="other-tenant-personal-config"),
        pytest.param(ADMIN_B, CONFIG_B_ORG, id="other-tenant-org-config-not-oauth"),
        pytest.param(ADMIN_B, str(uuid.uuid4()), id="unknown-config"),
    ],
)
def test_token_insert_reveals_nothing_about_other_tenants(
    seeded: TestDatabase, token_user: str, config_id: str
) -> None:
    """Every probe gets the same RLS refusal, whatever the other tenant's config is."""
    conn: Conn = seeded.connect(APP_LOGIN)
    with acting(conn, APP_ROLE, MEMBER_A), pytest.raises(errors.InsufficientPrivilege) as info:
        conn.execute(
            "INSERT INTO mcp_oauth_tokens (user_id, organization_id, mcp_configuration_id,"
            " oauth_provider, access_token) VALUES (%s, %s, %s, 'gh', 'x')",
            (token_user, ORG_B, config_id),
        )
    assert "row-level security" in str(info.value)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO users (id, organization_id, email) VALUES (%(id)s, %(org)s, 'z@a.example')",
        "INSERT INTO user_sessions (id, user_id, organization_id, workspace_path)"
        " VALUES (%(id)s, %(me)s, %(org)s, '/w')",
        "INSERT INTO mcp_configurations (id, organization_id, name, type, endpoint)"
        " VALUES (%(id)s, %(org)s, 'n', 'http', 'https://a.example')",
        "INSERT INTO system_prompts (id, scope, organization_id, content)"
        " VALUES (%(id)s, 'organization', %(org)s, 'c')",
    ],
    ids=["users", "user_sessions", "mcp_configurations", "system_prompts"],
)
def test_app_cannot_choose_primary_keys(seeded: TestDatabase, statement: str) -> None:
    """A collision with another tenant's id would reveal the id exists."""
    conn: Conn = seeded.connect(APP_LOGIN)
    with acting(conn, APP_ROLE, ADMIN_A), pytest.raises(errors.InsufficientPrivilege) as info:
        conn.execute(statement, {"id": ADMIN_B, "org": ORG_A, "me": ADMIN_A})
    assert "permission denied" in str(info.value)


def test_admin_cannot_probe_other_tenants_slugs(seeded: TestDatabase) -> None:
    conn: Conn = seeded.connect(APP_LOGIN)
    with acting(conn, APP_ROLE, ADMIN_A), pytest.raises(errors.InsufficientPrivilege):
        conn.execute("UPDATE organizations SET slug = 'org-b' WHERE id = %s", (ORG_A,))
    with acting(conn, APP_ROLE, ADMIN_A):
        cur = conn.execute("UPDATE organizations SET name = 'A2' WHERE id = %s", (ORG_A,))
        assert cur.rowcount == 1


# --- 5. identities mixed within one statement --------------------------------------
# Each (SELECT agentapi_auth.x()) InitPlan is evaluated on its own; set_config in an
# outer arm of a join can change app.user_id between two of them. Every policy arm
# must hold for whichever user its own helper saw.

_SEED_SESSIONS = (
    "INSERT INTO user_sessions (user_id, organization_id, workspace_path) VALUES"
    " (%(admin_a)s, %(org_a)s, '/w/admin-a'), (%(member_a)s, %(org_a)s, '/w/member-a'),"
    " (%(admin_b)s, %(org_b)s, '/w/admin-b')"
)
_SEED_EVENTS = (
    "INSERT INTO audit_logs (user_id, organization_id, action, resource_type) VALUES"
    " (%(admin_a)s, %(org_a)s, 'admin.secret', 'x'), (%(member_a)s, %(org_a)s, 'own', 'x'),"
    " (%(admin_b)s, %(org_b)s, 'b', 'x')"
)
_MIXED_IDENTITIES = """
SELECT s.user_id::text
  FROM (SELECT n, o, set_config('app.user_id', u, true) AS s
          FROM (VALUES (1, %(org_b)s::uuid, %(first)s), (2, %(org_a)s::uuid, %(second)s))
               AS x (n, o, u)
        OFFSET 0) AS v
  JOIN LATERAL (SELECT s.user_id FROM {table} AS s WHERE s.organization_id = v.o OFFSET 0)
       AS s ON true
"""


@pytest.mark.parametrize("table", ["user_sessions", "audit_logs"])
def test_member_cannot_borrow_another_tenants_admin_in_one_statement(
    seeded: TestDatabase, table: str
) -> None:
    with seeded.connect() as admin:
        admin.execute(_SEED_SESSIONS, _IDS)
        admin.execute(_SEED_EVENTS, _IDS)
        admin.commit()
    conn: Conn = seeded.connect(APP_LOGIN)
    statement = sql.SQL(_MIXED_IDENTITIES).format(table=sql.Identifier(table))
    with acting(conn, APP_ROLE, MEMBER_A):
        rows = conn.execute(statement, {**_IDS, "first": MEMBER_A, "second": ADMIN_B}).fetchall()
    seen = {row[0] for row in rows}
    assert ADMIN_A not in seen, "a member read an admin's rows by mixing identities"
    with acting(conn, APP_ROLE, MEMBER_A):
        deleted = conn.execute(
            "DELETE FROM user_sessions s USING (SELECT set_config('app.user_id', %s, true)) v"
            " WHERE s.workspace_path = '/w/admin-a' AND s.organization_id = %s"
            " RETURNING s.id",
            (ADMIN_B, ORG_A),
        ).fetchall()
        assert deleted == []


# --- 6. month boundaries do not depend on the caller's TimeZone ----------------------

_MONTH_AHEAD_6H = (
    "SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '4 months'"
    " + interval '6 hours') AT TIME ZONE 'UTC'"
)
_INSERT_AT = (
    "INSERT INTO audit_logs (action, resource_type, \"timestamp\") VALUES ('tz', 'test', %s)"
    " RETURNING tableoid::regclass::text"
)


def test_partitions_made_in_another_time_zone_leave_no_gap(seeded: TestDatabase) -> None:
    with seeded.connect() as conn:
        conn.execute("SET TimeZone = 'Etc/GMT+12'")
        conn.execute("SELECT audit_ensure_partitions(4, 0)")
        conn.execute("RESET TimeZone")
        at = conn.execute(_MONTH_AHEAD_6H).fetchone()
        assert at is not None
        landed = conn.execute(_INSERT_AT, (at[0],)).fetchone()
        conn.rollback()
    assert landed is not None
    assert landed[0] != "audit_logs_default", "an event fell into a gap between partitions"


# --- 7. the chain trigger answers nothing about another tenant ----------------------

_ENABLE_CHAIN = "SELECT audit_chain_enable(%s)"
_B_WRITES = (
    "INSERT INTO audit_logs (user_id, organization_id, action, resource_type)"
    " VALUES (%s, %s, 'b.busy', 'x')"
)


def test_chain_head_of_another_tenant_is_not_touched_before_rls(seeded: TestDatabase) -> None:
    """Org B is enrolled and has an audit write in flight (its chain head is locked).
    Member A naming org B must get RLS's refusal at once, not wait on B's lock."""
    with seeded.connect() as admin:
        admin.execute(_ENABLE_CHAIN, (ORG_B,))
        admin.commit()
    writer = seeded.connect()
    writer.execute(_B_WRITES, (ADMIN_B, ORG_B))  # holds B's chain head until rollback
    try:
        conn: Conn = seeded.connect(APP_LOGIN)
        with acting(conn, APP_ROLE, MEMBER_A), pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SET LOCAL lock_timeout = '2s'")
            conn.execute(
                "INSERT INTO audit_logs (user_id, organization_id, action, resource_type)"
                " VALUES (%s, %s, 'probe', 'x')",
                (MEMBER_A, ORG_B),
            )
    finally:
        writer.rollback()


def test_members_cannot_read_chain_positions(seeded: TestDatabase) -> None:
    """chain_seq counts all of an organization's events: gaps between a member's own
    events would tell how much everyone else wrote."""
    conn: Conn = seeded.connect(APP_LOGIN)
    with acting(conn, APP_ROLE, MEMBER_A):
        conn.execute(
            "SELECT log_audit_event(%s, %s, 'own', 'x', NULL, NULL, NULL, NULL)",
            (MEMBER_A, ORG_A),
        )
        own = conn.execute("SELECT count(*) FROM audit_logs").fetchone()
        assert own == (1,)
    with acting(conn, APP_ROLE, MEMBER_A), pytest.raises(errors.InsufficientPrivilege):
        conn.execute("SELECT chain_seq, chain_hash FROM audit_logs")
