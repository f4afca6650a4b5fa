"""public.tune_tenant_statistics(): the planner's tenant estimate for skewed tenants.

Under RLS the acting tenant is an InitPlan, so the planner estimates a tenant as
rows / n_distinct(organization_id). The function pins n_distinct to the
effective number of tenants, sum(n)^2 / sum(n^2) (database/schema.sql, 12.4).
These tests check the number, where it is written (tables, every audit
partition, new partitions), who may run it, and the plan it is for: the audit
page of a large tenant read in index order rather than sorted.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.pg import APP_LOGIN, SERVICE_LOGIN, Conn, TestDatabase, acting

# --- SQL ---------------------------------------------------------------------------------
_TUNE = "SELECT table_name, row_count, tenants, effective_tenants FROM tune_tenant_statistics()"
_N_DISTINCT = """
SELECT c.relname::text, (SELECT split_part(o, '=', 2)::float8 FROM unnest(a.attoptions) AS o
                          WHERE o LIKE 'n_distinct=%%')
  FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid
 WHERE a.attname = 'organization_id' AND c.relnamespace = 'public'::regnamespace
   AND c.relkind IN ('r', 'p')
"""
_ORGS = """
INSERT INTO organizations (id, name, slug)
SELECT md5('o' || g)::uuid, 'Org ' || g, 'org-' || g FROM generate_series(1, %(orgs)s) AS g
"""
# users_per_org[i] users in organization i + 1; the first user of each is an admin.
_USERS = """
INSERT INTO users (id, organization_id, email, role)
SELECT md5('u' || o || '-' || u)::uuid, md5('o' || o)::uuid, 'u' || u || '@org' || o || '.example',
       CASE WHEN u = 1 THEN 'admin' ELSE 'user' END::user_role
  FROM unnest(%(users_per_org)s::int[]) WITH ORDINALITY AS t(n, o), generate_series(1, t.n) AS u
"""
_SESSIONS = """
INSERT INTO user_sessions (user_id, organization_id, workspace_path)
SELECT u.id, u.organization_id, '/w' FROM users AS u, generate_series(1, %(per_user)s)
"""
# events_per_org[i] events of organization i + 1, by its first user, in the last 7 days.
_EVENTS = """
INSERT INTO audit_logs (user_id, organization_id, action, resource_type, "timestamp")
SELECT md5('u' || o || '-1')::uuid, md5('o' || o)::uuid, 'a', 'r',
       now() - interval '7 days' * random() + interval '1 minute'
  FROM unnest(%(events_per_org)s::int[]) WITH ORDINALITY AS t(n, o), generate_series(1, t.n)
"""
_SET_N_DISTINCT = "ALTER TABLE mcp_oauth_tokens ALTER COLUMN organization_id SET (n_distinct = 5)"
# One global prompt (no organization) and 3 + 1 organization prompts: 16 / 10.
_PROMPTS = """
INSERT INTO system_prompts (scope, organization_id, content)
VALUES ('global', NULL, 'g'), ('organization', md5('o1')::uuid, 'a'),
       ('organization', md5('o1')::uuid, 'b'), ('organization', md5('o1')::uuid, 'c'),
       ('organization', md5('o2')::uuid, 'd')
"""
_INHERITED = """
SELECT attoptions FROM pg_attribute
 WHERE attrelid = 'audit_logs'::regclass AND attname = 'organization_id'
"""
_TUNE_ONE = "SELECT table_name, effective_tenants FROM tune_tenant_statistics(%s)"
_AUDIT_PAGE = """
EXPLAIN (FORMAT JSON)
SELECT id, "timestamp", user_id, organization_id, action
  FROM audit_logs
 WHERE "timestamp" >= now() - interval '7 days'
 ORDER BY "timestamp" DESC, id DESC
 LIMIT 51
"""


def _n_distinct(conn: Conn) -> dict[str, float | None]:
    return {name: value for name, value in conn.execute(_N_DISTINCT).fetchall()}


def _tune(conn: Conn) -> dict[str, tuple[int, int, float | None]]:
    rows = conn.execute(_TUNE).fetchall()
    return {
        name: (count, tenants, None if eff is None else float(eff))
        for name, count, tenants, eff in rows
    }


def _node_types(plan: dict[str, Any]) -> list[str]:
    found = [str(plan["Node Type"])]
    for child in plan.get("Plans", []):
        found += _node_types(child)
    return found


def _seed(conn: Conn, users_per_org: list[int], sessions_per_user: int,
          events_per_org: list[int]) -> None:
    conn.execute(_ORGS, {"orgs": len(users_per_org)})
    conn.execute(_USERS, {"users_per_org": users_per_org})
    conn.execute(_SESSIONS, {"per_user": sessions_per_user})
    conn.execute(_EVENTS, {"events_per_org": events_per_org})
    conn.commit()


def test_effective_tenants_are_computed_and_pinned_everywhere(db: TestDatabase) -> None:
    with db.connect() as conn:
        # users: 9 and 1 -> 100 / 82; sessions: 18 and 2 -> 400 / 328; events: 90 and 10.
        _seed(conn, [9, 1], 2, [90, 10])
        conn.execute(_PROMPTS)
        conn.execute(_SET_N_DISTINCT)  # an old value on a table that is now empty
        conn.commit()
        result = _tune(conn)
        conn.commit()
        assert result["users"] == (10, 2, 1.2)
        assert result["user_sessions"] == (20, 2, 1.2)
        assert result["audit_logs"] == (100, 2, 1.2)
        assert result["system_prompts"] == (4, 2, 1.6)  # the global prompt is not counted
        assert result["mcp_oauth_tokens"] == (0, 0, None)
        assert set(result) == {"users", "user_sessions", "mcp_configurations",
                               "mcp_oauth_tokens", "system_prompts", "audit_logs"}
        pinned = _n_distinct(conn)
        partitions = [name for name in pinned if name.startswith("audit_logs_")]
        assert "audit_logs_default" in partitions and len(partitions) >= 4
        for name in ["users", "user_sessions", "audit_logs", *partitions]:
            assert pinned[name] == 1.2, name
        assert pinned["mcp_oauth_tokens"] is None  # reset, not left at 5
        # The parent's own statistics (inherited) use n_distinct_inherited.
        row = conn.execute(_INHERITED).fetchone()
        assert row is not None and "n_distinct_inherited=1.2" in row[0]


def test_a_single_tenant_pins_nothing(db: TestDatabase) -> None:
    with db.connect() as conn:
        _seed(conn, [3, 1], 1, [30, 10])
        _tune(conn)
        conn.execute("DELETE FROM organizations WHERE id = md5('o2')::uuid")
        conn.commit()
        # One organization left: pinning 1 would make every later tenant look like
        # the whole table until the next run.
        result = _tune(conn)
        assert result["users"] == (3, 1, None)
        assert result["user_sessions"] == (3, 1, None)
        pinned = _n_distinct(conn)
        assert pinned["users"] is None and pinned["user_sessions"] is None
        # Audit events outlive their organization (no foreign key): still two tenants.
        assert result["audit_logs"] == (40, 2, 1.6) and pinned["audit_logs_default"] == 1.6


def test_one_table_at_a_time_and_only_known_tables(db: TestDatabase) -> None:
    with db.connect() as conn:
        _seed(conn, [3, 1], 1, [30, 10])
        assert conn.execute(_TUNE_ONE, ("users",)).fetchall() == [("users", Decimal("1.6"))]
        pinned = _n_distinct(conn)
        assert pinned["users"] == 1.6 and pinned["user_sessions"] is None
        conn.rollback()
        for bad in ("organizations", "pg_class", "users; DROP TABLE users"):
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                conn.execute(_TUNE_ONE, (bad,))
            conn.rollback()


def test_a_new_audit_partition_gets_the_pinned_estimate(db: TestDatabase) -> None:
    with db.connect() as conn:
        _seed(conn, [3, 1], 1, [30, 10])  # 1600 / 1000
        assert _tune(conn)["audit_logs"][2] == 1.6
        before = set(_n_distinct(conn))
        conn.execute("SELECT audit_ensure_partitions(0, 6)")
        pinned = _n_distinct(conn)
        new = set(pinned) - before
        assert len(new) >= 4
        assert all(pinned[name] == 1.6 for name in new)


def test_a_new_partition_without_tuning_keeps_the_planner_default(db: TestDatabase) -> None:
    with db.connect() as conn:
        before = set(_n_distinct(conn))
        conn.execute("SELECT audit_ensure_partitions(0, 6)")
        pinned = _n_distinct(conn)
        assert set(pinned) - before
        assert all(pinned[name] is None for name in set(pinned) - before)


def test_service_may_tune_the_application_may_not(db: TestDatabase) -> None:
    with db.connect(SERVICE_LOGIN) as conn, acting(conn, "agentapi_service"):
        assert len(conn.execute(_TUNE).fetchall()) == 6
    with (
        db.connect(APP_LOGIN) as conn,
        acting(conn, "agentapi_app", str(uuid.uuid4())),
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(_TUNE)


def test_a_large_tenants_audit_page_is_read_in_index_order_once_tuned(db: TestDatabase) -> None:
    # 200 organizations of one user; the first holds 30 % of the 7,000 events of the
    # week. Untuned, the planner expects 7,000 / 200 = 35 events for any tenant and
    # sorts them all; tuned (about 11 effective tenants) it reads a page in order.
    events = [2_100] + [4_900 // 199] * 199
    with db.connect() as conn:
        _seed(conn, [1] * 200, 1, events)
        conn.execute("ANALYZE")
        conn.commit()
        row = conn.execute("SELECT md5('u1-1')::uuid").fetchone()
        assert row is not None
        admin = str(row[0])

        def plan() -> list[str]:
            with acting(conn, "agentapi_app", admin):
                row = conn.execute(_AUDIT_PAGE).fetchone()
                assert row is not None
                return _node_types(row[0][0]["Plan"])

        assert "Sort" in plan()
        assert 10 < (_tune(conn)["audit_logs"][2] or 0) < 12
        conn.commit()
        tuned = plan()
        assert "Sort" not in tuned
        assert "Limit" in tuned
