"""Catalog posture: every lint in database/lint/ passes on the schema, and can fail.

For each lint there is a healthy test (the migrated template has no finding) and
one or more mistake tests: the mistake is built as the superuser in a fresh
database, inside a transaction that is rolled back (roles are cluster-wide, so
role changes are never committed), and the lint must report it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from agentapi_db.lint import LINTS, Finding, LintError, run_lints, run_lints_async
from tests.pg import TestDatabase

REQUIRED_LINTS = {
    "identity_helpers",
    "rls_not_enabled_or_forced",
    "unindexed_foreign_keys",
    "security_definer_search_path",
    "policy_unwrapped_call",
    "public_grants",
    "app_role_posture",
    "views_security_invoker",
    "duplicate_indexes",
    "missing_comments",
    "tenant_value_statistics",
    "global_tenant_indexes",
}


@dataclass(frozen=True)
class Mistake:
    """SQL that builds one mistake, and the finding the lint must then report."""

    lint: str
    id: str
    setup: tuple[str, ...]
    object: str
    detail: str


# --- the mistakes (all SQL of this module) --------------------------------------
_UNCOMMENTED_TABLE = (
    "CREATE TABLE public.scratch (id int PRIMARY KEY)",
    "ALTER TABLE public.scratch ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE public.scratch FORCE ROW LEVEL SECURITY",
)
_FK_CHILD = (
    "CREATE TABLE public.child (id int PRIMARY KEY, user_id uuid NOT NULL, organization_id uuid,"
    " CONSTRAINT child_user_fkey FOREIGN KEY (user_id, organization_id)"
    " REFERENCES public.users (id, organization_id))",
)

MISTAKES: tuple[Mistake, ...] = (
    Mistake(
        "rls_not_enabled_or_forced", "table_without_rls",
        ("CREATE TABLE public.scratch (id int PRIMARY KEY)",),
        "public.scratch", "row level security is not enabled; row level security is not forced",
    ),
    Mistake(
        "rls_not_enabled_or_forced", "rls_not_forced",
        ("ALTER TABLE public.users NO FORCE ROW LEVEL SECURITY",),
        "public.users", "row level security is not forced",
    ),
    Mistake(
        "rls_not_enabled_or_forced", "audit_partition_made_by_hand",
        ("CREATE TABLE public.audit_logs_y2031m01 PARTITION OF public.audit_logs"
         " FOR VALUES FROM ('2031-01-01') TO ('2031-02-01')",),
        "public.audit_logs_y2031m01", "row level security is not enabled",
    ),
    Mistake(
        "unindexed_foreign_keys", "fk_without_index", _FK_CHILD,
        "public.child.child_user_fkey", "key columns (user_id, organization_id)",
    ),
    Mistake(
        "unindexed_foreign_keys", "fk_index_on_one_column_only",
        (*_FK_CHILD, "CREATE INDEX child_user_idx ON public.child (user_id)"),
        "public.child.child_user_fkey", "no index of public.child",
    ),
    Mistake(
        "unindexed_foreign_keys", "fk_partial_index_with_other_predicate",
        (*_FK_CHILD,
         "CREATE INDEX child_user_idx ON public.child (organization_id, user_id) WHERE id > 0"),
        "public.child.child_user_fkey", "unusable predicate: public.child_user_idx",
    ),
    Mistake(
        "unindexed_foreign_keys", "contract_fk_index_dropped",
        ("DROP INDEX public.mcp_oauth_tokens_configuration_idx",),
        "public.mcp_oauth_tokens.mcp_oauth_tokens_configuration_fkey",
        "(mcp_configuration_id, organization_id)",
    ),
    Mistake(
        "security_definer_search_path", "definer_without_search_path",
        ("CREATE FUNCTION public.leaky() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",),
        "public.leaky()", "no SET clause at all",
    ),
    Mistake(
        "security_definer_search_path", "definer_trigger_unpinned",
        ("ALTER FUNCTION public.audit_logs_chain() RESET search_path",),
        "public.audit_logs_chain()", "without a pinned search_path",
    ),
    Mistake(
        "security_definer_search_path", "portable_helper_unpinned",
        ("SELECT agentapi_auth.use_identity_cache(false)",
         "ALTER FUNCTION agentapi_auth.user_id() RESET search_path"),
        "agentapi_auth.user_id()", "without a pinned search_path",
    ),
    Mistake(
        "identity_helpers", "helper_trusts_the_caller",
        ("CREATE OR REPLACE FUNCTION agentapi_auth.organization_id() RETURNS uuid LANGUAGE sql"
         " STABLE AS $$ SELECT nullif(current_setting('app.organization_id', true), '')::uuid $$",),
        "agentapi_auth.organization_id()", "neither the portable STABLE SECURITY DEFINER",
    ),
    Mistake(
        "identity_helpers", "immutable_helper",
        ("CREATE OR REPLACE FUNCTION agentapi_auth.user_id() RETURNS uuid LANGUAGE sql"
         " IMMUTABLE RETURN agentapi_auth.cached_user_id()",),
        "agentapi_auth.user_id()", "neither the portable STABLE SECURITY DEFINER",
    ),
    Mistake(
        "identity_helpers", "cache_call_with_a_fallback",
        ("CREATE OR REPLACE FUNCTION agentapi_auth.organization_id() RETURNS uuid LANGUAGE sql"
         " STABLE RETURN coalesce(agentapi_auth.cached_organization_id(),"
         " nullif(current_setting('app.organization_id', true), '')::uuid)",),
        "agentapi_auth.organization_id()", "RETURN agentapi_auth.cached_organization_id()",
    ),
    Mistake(
        "identity_helpers", "portable_helper_trusts_the_caller",
        ("SELECT agentapi_auth.use_identity_cache(false)",
         "CREATE OR REPLACE FUNCTION agentapi_auth.organization_id() RETURNS uuid"
         " LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
         " AS $$ BEGIN RETURN nullif(current_setting('app.org', true), '')::uuid; END $$"),
        "agentapi_auth.organization_id()", "with the body use_identity_cache(false) writes",
    ),
    Mistake(
        "identity_helpers", "cache_function_made_immutable",
        ("ALTER FUNCTION agentapi_auth.cached_admin_organization_id() IMMUTABLE",),
        "agentapi_auth.admin_organization_id()", "of the identity cache",
    ),
    Mistake(
        "identity_helpers", "half_switched",
        ("SELECT agentapi_auth.use_identity_cache(false)",
         "CREATE OR REPLACE FUNCTION agentapi_auth.user_email() RETURNS text LANGUAGE sql"
         " STABLE RETURN agentapi_auth.cached_user_email()"),
        "agentapi_auth identity helpers", "mix the portable and the identity-cache shapes",
    ),
    Mistake(
        "policy_unwrapped_call", "bare_helper_call",
        ("CREATE POLICY bare ON public.users FOR SELECT TO agentapi_app"
         " USING (id = agentapi_auth.user_id())",),
        "policy bare on public.users", "USING calls agentapi_auth.user_id(",
    ),
    Mistake(
        "policy_unwrapped_call", "bare_current_setting_in_check",
        ("CREATE POLICY bare ON public.users FOR INSERT TO agentapi_app"
         " WITH CHECK (id::text = current_setting('app.user_id', true))",),
        "policy bare on public.users", "WITH CHECK calls current_setting(",
    ),
    Mistake(
        "policy_unwrapped_call", "one_wrapped_one_bare",
        ("CREATE POLICY bare ON public.user_sessions FOR SELECT TO agentapi_app"
         " USING (organization_id = (SELECT agentapi_auth.organization_id())"
         " AND user_id = agentapi_auth.user_id())",),
        "policy bare on public.user_sessions", "agentapi_auth.user_id(",
    ),
    Mistake(
        "policy_unwrapped_call", "call_inside_subquery_where",
        ("CREATE POLICY bare ON public.user_sessions FOR SELECT TO agentapi_app"
         " USING (EXISTS (SELECT 1 FROM public.users AS u"
         " WHERE u.id = agentapi_auth.user_id()))",),
        "policy bare on public.user_sessions", "agentapi_auth.user_id(",
    ),
    Mistake(
        "public_grants", "table_to_public",
        ("GRANT SELECT ON public.users TO PUBLIC",),
        "table public.users", "granted to PUBLIC: SELECT",
    ),
    Mistake(
        "public_grants", "column_to_public",
        ("GRANT UPDATE (metadata) ON public.users TO PUBLIC",),
        "column public.users.metadata", "granted to PUBLIC: UPDATE",
    ),
    Mistake(
        "public_grants", "view_to_public",
        ("GRANT SELECT ON public.active_user_sessions TO PUBLIC",),
        "view public.active_user_sessions", "SELECT",
    ),
    Mistake(
        "public_grants", "function_to_public",
        ("GRANT EXECUTE ON FUNCTION public.decrypt_token(text, text) TO PUBLIC",),
        "function public.decrypt_token(encrypted_token text, key text)", "EXECUTE",
    ),
    Mistake(
        "public_grants", "function_with_default_acl",
        ("CREATE FUNCTION public.open_door() RETURNS int LANGUAGE sql AS 'SELECT 1'",),
        "function public.open_door()", "granted to PUBLIC: EXECUTE",
    ),
    Mistake(
        "public_grants", "type_to_public",
        ("GRANT USAGE ON TYPE public.user_role TO PUBLIC",),
        "type public.user_role", "granted to PUBLIC: USAGE",
    ),
    Mistake(
        "public_grants", "schema_to_public",
        ("GRANT USAGE ON SCHEMA agentapi_auth TO PUBLIC",),
        "schema agentapi_auth", "USAGE",
    ),
    Mistake(
        "public_grants", "sequence_to_public",
        ("CREATE SEQUENCE public.counter", "GRANT USAGE ON SEQUENCE public.counter TO PUBLIC"),
        "sequence public.counter", "USAGE",
    ),
    Mistake(
        "public_grants", "owner_default_privileges",
        ("ALTER DEFAULT PRIVILEGES FOR ROLE agentapi_owner GRANT EXECUTE ON FUNCTIONS TO PUBLIC",),
        "default privileges of agentapi_owner on functions", "EXECUTE",
    ),
    Mistake(
        "app_role_posture", "app_bypassrls",
        ("ALTER ROLE agentapi_app BYPASSRLS",),
        "role agentapi_app", "has BYPASSRLS",
    ),
    Mistake(
        "app_role_posture", "app_superuser",
        ("ALTER ROLE agentapi_app SUPERUSER",),
        "role agentapi_app", "is SUPERUSER",
    ),
    Mistake(
        "app_role_posture", "app_owns_table",
        ("ALTER TABLE public.system_prompts OWNER TO agentapi_app",),
        "role agentapi_app", "owns table public.system_prompts",
    ),
    Mistake(
        "app_role_posture", "app_member_of_owner",
        ("GRANT agentapi_owner TO agentapi_app",),
        "role agentapi_app", "is a member of agentapi_owner",
    ),
    Mistake(
        "app_role_posture", "service_with_bypassrls",
        ("ALTER ROLE agentapi_service BYPASSRLS",),
        "role agentapi_service", "has BYPASSRLS",
    ),
    Mistake(
        "app_role_posture", "owner_with_createrole",
        ("ALTER ROLE agentapi_owner CREATEROLE",),
        "role agentapi_owner", "has CREATEROLE",
    ),
    Mistake(
        "app_role_posture", "service_with_createdb",
        ("ALTER ROLE agentapi_service CREATEDB",),
        "role agentapi_service", "has CREATEDB",
    ),
    Mistake(
        "tenant_value_statistics", "statistics_back_on_email",
        ("ALTER TABLE public.users ALTER COLUMN email SET STATISTICS 100",),
        "column public.users.email", "keeps planner statistics (statistics target 100)",
    ),
    Mistake(
        "tenant_value_statistics", "partition_made_by_hand",
        ("CREATE TABLE public.audit_logs_y2099m01 PARTITION OF public.audit_logs"
         " FOR VALUES FROM ('2099-01-01') TO ('2099-02-01')",),
        "column public.audit_logs_y2099m01.action", "keeps planner statistics",
    ),
    Mistake(
        "global_tenant_indexes", "index_on_email",
        ("CREATE INDEX users_email_idx ON public.users (email)",),
        "index public.users_email_idx", "leads with email, not the tenant",
    ),
    Mistake(
        "global_tenant_indexes", "tenant_second",
        ("CREATE INDEX sessions_path_idx ON public.user_sessions"
         " (workspace_path, organization_id)",),
        "index public.sessions_path_idx", "leads with workspace_path",
    ),
    Mistake(
        "multiple_permissive_policies", "second_update_policy",
        ("CREATE POLICY users_update_again ON public.users FOR UPDATE TO agentapi_app "
         "USING (id = (SELECT agentapi_auth.user_id()))",),
        "table public.users", "2 permissive UPDATE policies for agentapi_app",
    ),
    Mistake(
        "multiple_permissive_policies", "for_all_overlaps_select",
        ("CREATE POLICY sessions_all ON public.user_sessions TO agentapi_app "
         "USING (user_id = (SELECT agentapi_auth.user_id()))",),
        "table public.user_sessions", "2 permissive SELECT policies for agentapi_app",
    ),
    Mistake(
        "app_role_posture", "group_role_can_login",
        ("ALTER ROLE agentapi_owner LOGIN",),
        "role agentapi_owner", "can log in",
    ),
    Mistake(
        "views_security_invoker", "plain_view",
        ("CREATE VIEW public.all_users AS SELECT id, email FROM public.users",),
        "public.all_users", "without security_invoker",
    ),
    Mistake(
        "views_security_invoker", "contract_view_switched_off",
        ("ALTER VIEW public.effective_mcp_configurations SET (security_invoker = false)",),
        "public.effective_mcp_configurations", "without security_invoker",
    ),
    Mistake(
        "views_security_invoker", "materialized_view",
        ("CREATE MATERIALIZED VIEW public.org_names AS SELECT name FROM public.organizations",),
        "public.org_names", "materialized view",
    ),
    Mistake(
        "duplicate_indexes", "same_expression_index",
        ("CREATE INDEX users_again ON public.users (organization_id, lower(email))",),
        "public.users", "duplicate indexes: users_again, users_organization_id_email_key",
    ),
    Mistake(
        "duplicate_indexes", "same_partial_index",
        ("CREATE INDEX sessions_expiry_again ON public.user_sessions (expires_at)"
         " WHERE expires_at IS NOT NULL",),
        "public.user_sessions", "sessions_expiry_again, user_sessions_expires_at_idx",
    ),
    Mistake(
        "missing_comments", "uncommented_table", _UNCOMMENTED_TABLE,
        "table public.scratch", "has no COMMENT",
    ),
    Mistake(
        "missing_comments", "blank_comment",
        ("COMMENT ON TABLE public.users IS '  '",),
        "table public.users", "has a blank COMMENT",
    ),
    Mistake(
        "missing_comments", "uncommented_policy",
        ("COMMENT ON POLICY users_select ON public.users IS NULL",),
        "policy users_select on public.users", "has no COMMENT",
    ),
    Mistake(
        "missing_comments", "uncommented_function",
        ("COMMENT ON FUNCTION agentapi_auth.user_email() IS NULL",),
        "function agentapi_auth.user_email()", "has no COMMENT",
    ),
    Mistake(
        "missing_comments", "uncommented_view",
        ("COMMENT ON VIEW public.active_user_sessions IS NULL",),
        "view public.active_user_sessions", "has no COMMENT",
    ),
    Mistake(
        "extension_in_public", "uuid_ossp_in_public",
        ('ALTER EXTENSION "uuid-ossp" SET SCHEMA public',),
        'extension "uuid-ossp"', "installed in schema public",
    ),
    Mistake(
        "policy_for_public", "policy_without_to",
        ("CREATE POLICY everyone ON public.organizations FOR SELECT USING (true)",),
        "policy everyone on public.organizations", "applies to PUBLIC",
    ),
    Mistake(
        "audit_log_mutable", "delete_granted",
        ("GRANT DELETE ON public.audit_logs TO agentapi_service",),
        "public.audit_logs", "agentapi_service may DELETE",
    ),
    Mistake(
        "audit_log_mutable", "owner_regains_update",
        ("GRANT UPDATE ON public.audit_logs_default TO agentapi_owner",),
        "public.audit_logs_default", "agentapi_owner may UPDATE",
    ),
    Mistake(
        "audit_log_mutable", "truncate_trigger_dropped",
        ("DROP TRIGGER audit_logs_no_truncate ON public.audit_logs_default",),
        "public.audit_logs_default", "no enabled BEFORE TRUNCATE trigger",
    ),
    Mistake(
        "audit_log_mutable", "row_trigger_disabled",
        ("ALTER TABLE public.audit_logs DISABLE TRIGGER audit_logs_append_only",),
        "public.audit_logs", "no enabled BEFORE UPDATE OR DELETE row trigger",
    ),
    Mistake(
        "audit_log_mutable", "partition_made_by_hand",
        ("CREATE TABLE public.audit_logs_y2031m01 PARTITION OF public.audit_logs"
         " FOR VALUES FROM ('2031-01-01') TO ('2031-02-01')",),
        "public.audit_logs_y2031m01", "postgres may DELETE, TRUNCATE, UPDATE",
    ),
    Mistake(
        "public_temporary_on_database", "temp_granted_to_public",
        ("DO $$ BEGIN EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC',"
         " current_database()); END $$",),
        "current database", "PUBLIC may create temporary objects",
    ),
    Mistake(
        "audit_log_mutable", "delete_policy",
        ("CREATE POLICY purge ON public.audit_logs FOR DELETE TO agentapi_owner USING (true)",),
        "public.audit_logs", "policy purge allows DELETE",
    ),
)


def _format(findings: list[Finding]) -> str:
    return "\n".join(f"  {f.check}: {f.object}: {f.detail}" for f in findings) or "  (none)"


# --- the lint set itself --------------------------------------------------------


def test_required_lints_exist_with_descriptions() -> None:
    names = [lint.name for lint in LINTS]
    assert set(names) >= REQUIRED_LINTS, REQUIRED_LINTS - set(names)
    assert len(names) == len(set(names))
    for lint in LINTS:
        assert lint.resource.startswith("lint/") and lint.resource.endswith(".sql")
        assert len(lint.description) > 40, lint.name
        assert lint.sql.lstrip().startswith(f"-- {lint.name}"), lint.resource


def test_every_lint_has_a_mistake_that_trips_it() -> None:
    assert {m.lint for m in MISTAKES} == {lint.name for lint in LINTS}


def test_unknown_lint_name_is_refused(module_db: TestDatabase) -> None:
    with module_db.connect() as conn, pytest.raises(LintError, match="no_such_lint"):
        run_lints(conn, ["no_such_lint"])


# --- healthy: the schema as migrated --------------------------------------------


@pytest.mark.parametrize("name", [lint.name for lint in LINTS])
def test_migrated_schema_passes_lint(module_db: TestDatabase, name: str) -> None:
    with module_db.connect() as conn:
        findings = run_lints(conn, [name])
    assert findings == [], f"{name} found:\n{_format(findings)}"


def test_all_lints_pass_as_the_application_login(module_db: TestDatabase) -> None:
    """The catalog is readable by any role; verify may run as a non-superuser."""
    with module_db.connect("app_login") as conn:
        findings = run_lints(conn)
    assert findings == [], _format(findings)


def test_async_runner_agrees(module_db: TestDatabase) -> None:
    async def run() -> tuple[list[Finding], list[Finding]]:
        conn = await psycopg.AsyncConnection.connect(module_db.superuser_url)
        async with conn:
            healthy = await run_lints_async(conn)
            await conn.execute("CREATE TABLE public.scratch (id int)")
            broken = await run_lints_async(conn, ["rls_not_enabled_or_forced"])
            await conn.rollback()
        return healthy, broken

    healthy, broken = asyncio.run(run())
    assert healthy == []
    assert [(f.check, f.object) for f in broken] == [
        ("rls_not_enabled_or_forced", "public.scratch")
    ]


def test_runner_leaves_no_trace(module_db: TestDatabase) -> None:
    """run_lints rolls back its own work and keeps the caller's transaction usable."""
    with module_db.connect() as conn:
        before = conn.execute("SELECT current_setting('search_path')").fetchone()
        run_lints(conn)
        after = conn.execute("SELECT current_setting('search_path')").fetchone()
        assert before == after
        conn.rollback()


# --- each lint can fail -----------------------------------------------------------


@pytest.mark.parametrize("mistake", MISTAKES, ids=[f"{m.lint}-{m.id}" for m in MISTAKES])
def test_lint_reports_mistake(db: TestDatabase, mistake: Mistake) -> None:
    conn = db.connect()
    try:
        assert run_lints(conn, [mistake.lint]) == [], "the fresh database should start healthy"
        for statement in mistake.setup:
            conn.execute(statement.encode())
        findings = run_lints(conn, [mistake.lint])
    finally:
        # Never committed: role attributes and memberships are cluster-wide.
        conn.rollback()
    assert any(
        f.check == mistake.lint and f.object == mistake.object and mistake.detail in f.detail
        for f in findings
    ), f"expected {mistake.object!r} / {mistake.detail!r}; got:\n{_format(findings)}"
    # And the rollback really restored the healthy state.
    assert run_lints(conn, [mistake.lint]) == []


def test_fk_index_in_any_order_or_not_null_partial_is_accepted(db: TestDatabase) -> None:
    conn = db.connect()
    try:
        for statement in _FK_CHILD:
            conn.execute(statement.encode())
        conn.execute(
            "CREATE INDEX child_user_idx ON public.child (organization_id, user_id, id)"
            " WHERE organization_id IS NOT NULL AND user_id IS NOT NULL"
        )
        findings = run_lints(conn, ["unindexed_foreign_keys"])
    finally:
        conn.rollback()
    assert findings == [], _format(findings)


def test_policy_made_under_another_search_path_is_checked(db: TestDatabase) -> None:
    """A policy written as user_id() with agentapi_auth on the search_path is still found."""
    conn = db.connect()
    try:
        conn.execute("SET LOCAL search_path = agentapi_auth, public")
        conn.execute(
            "CREATE POLICY bare ON public.users FOR SELECT TO agentapi_app"
            " USING (id = user_id())"
        )
        findings = run_lints(conn, ["policy_unwrapped_call"])
    finally:
        conn.rollback()
    assert [(f.object, f.detail.split(" outside")[0]) for f in findings] == [
        ("policy bare on public.users", "USING calls agentapi_auth.user_id(...)")
    ]


_NEW_PARTITION_TARGETS = """
SELECT a.attname::text, a.attstattarget
  FROM pg_inherits AS i JOIN pg_attribute AS a ON a.attrelid = i.inhrelid
 WHERE i.inhparent = 'public.audit_logs'::regclass AND a.attrelid::regclass::text = %s
   AND a.attname IN ('action', 'user_id', 'organization_id') ORDER BY 1
"""


def test_partitions_made_by_upkeep_keep_no_statistics(db: TestDatabase) -> None:
    """audit_ensure_partitions() gives a new partition the parent's zero targets
    (section 14), so partition upkeep never brings tenant-value statistics back."""
    conn = db.connect()
    try:
        made = conn.execute("SELECT audit_ensure_partitions(0, 24)").fetchone()
        assert made is not None and made[0] > 0
        oldest = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).replace(day=1)
        name = oldest.strftime("audit_logs_y%Ym%m")
        targets: dict[str, int] = dict(conn.execute(_NEW_PARTITION_TARGETS, (name,)).fetchall())
        assert targets["action"] == 0 and targets["user_id"] == 0, targets
        assert targets["organization_id"] != 0, targets  # the tenant keeps its statistics
        assert run_lints(conn, ["tenant_value_statistics"]) == []
    finally:
        conn.rollback()
