"""Every constraint of the schema gets a row that violates it.

Rows are written as the superuser (constraints and triggers apply to every role;
RLS is proven elsewhere) inside transactions that are rolled back, on one seeded
database per module. Each violation must fail with the expected SQLSTATE *and*
the expected constraint name, so a row failing for another reason does not count.
Email and slug validation are also checked against Python reference predicates
with Hypothesis.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

from tests.pg import Conn, TestDatabase, acting

CHECK = "23514"
UNIQUE = "23505"
FOREIGN_KEY = "23503"
INSUFFICIENT_PRIVILEGE = "42501"

# --- seed (committed once per module) ------------------------------------------------
ORG1, ORG2, ORG_EMPTY = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
U1, U2, U3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()  # U1, U2 in ORG1; U3 in ORG2
CFG_ORG_OAUTH, CFG_U1_OAUTH, CFG_ORG_BEARER, CFG_ORG2_OAUTH = (uuid.uuid4() for _ in range(4))
AUDIT1 = uuid.uuid4()  # the seeded event of U1 (an id only the owner or a superuser may supply)
IDS: dict[str, Any] = {
    "audit1": AUDIT1,
    "org1": ORG1, "org2": ORG2, "org_empty": ORG_EMPTY, "u1": U1, "u2": U2, "u3": U3,
    "cfg_org_oauth": CFG_ORG_OAUTH, "cfg_u1_oauth": CFG_U1_OAUTH,
    "cfg_org_bearer": CFG_ORG_BEARER, "cfg_org2_oauth": CFG_ORG2_OAUTH,
}

_SEED = (
    """INSERT INTO organizations (id, name, slug) VALUES
         (%(org1)s, 'One', 'one'), (%(org2)s, 'Two', 'two'), (%(org_empty)s, 'Empty', 'empty')""",
    """INSERT INTO users (id, organization_id, email, role) VALUES
         (%(u1)s, %(org1)s, 'alice@example.com', 'admin'),
         (%(u2)s, %(org1)s, 'bob@example.com', 'user'),
         (%(u3)s, %(org2)s, 'carol@example.com', 'user')""",
    """INSERT INTO mcp_configurations (id, organization_id, user_id, name, type, endpoint,
                                       auth_type, bearer_token, oauth_provider) VALUES
         (%(cfg_org_oauth)s, %(org1)s, NULL, 'shared', 'http', 'https://mcp.example.com',
          'oauth', NULL, 'github'),
         (%(cfg_u1_oauth)s, %(org1)s, %(u1)s, 'mine', 'sse', 'https://sse.example.com/x',
          'oauth', NULL, 'google'),
         (%(cfg_org_bearer)s, %(org1)s, NULL, 'bearer', 'http', 'http://10.0.0.1:8080/mcp',
          'bearer', 'ciphertext', NULL),
         (%(cfg_org2_oauth)s, %(org2)s, NULL, 'shared', 'http', 'https://mcp.example.com',
          'oauth', NULL, 'github')""",
    """INSERT INTO mcp_oauth_tokens (user_id, organization_id, mcp_configuration_id,
                                     oauth_provider, access_token)
       VALUES (%(u1)s, %(org1)s, %(cfg_org_oauth)s, 'github', 'ciphertext')""",
    """INSERT INTO audit_logs (id, "timestamp", user_id, organization_id, action, resource_type)
       VALUES (%(audit1)s, date_trunc('hour', now()), %(u1)s, %(org1)s, 'seed', 'test')""",
    # audit_logs_default refuses new rows; plant one (as if stored before that
    # trigger existed) to show the default partition is append-only too.
    "ALTER TABLE audit_logs_default DISABLE TRIGGER audit_logs_refuse_unpartitioned",
    """INSERT INTO audit_logs ("timestamp", action, resource_type)
       VALUES ('2040-01-15', 'far-future', 'test')""",
    "ALTER TABLE audit_logs_default ENABLE TRIGGER audit_logs_refuse_unpartitioned",
)


NOW = datetime.now(UTC)
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# --- statements: fixed SQL, every value a bind parameter ---------------------------------
_ORG = "INSERT INTO organizations (name, slug, metadata) VALUES (%(name)s, %(slug)s, %(metadata)s)"
_USER = (
    "INSERT INTO users (organization_id, email, metadata)"
    " VALUES (%(organization_id)s, %(email)s, %(metadata)s)"
)
_SESSION = (
    "INSERT INTO user_sessions (user_id, organization_id, workspace_path, created_at, expires_at,"
    " metadata) VALUES (%(user_id)s, %(organization_id)s, %(workspace_path)s, %(created_at)s,"
    " %(expires_at)s, %(metadata)s)"
)
_CONFIG = (
    "INSERT INTO mcp_configurations (organization_id, user_id, name, type, endpoint, command,"
    " args, env, auth_type, bearer_token, oauth_provider)"
    " VALUES (%(organization_id)s, %(user_id)s, %(name)s, %(type)s, %(endpoint)s, %(command)s,"
    " %(args)s, %(env)s, %(auth_type)s, %(bearer_token)s, %(oauth_provider)s)"
)
_TOKEN = (
    "INSERT INTO mcp_oauth_tokens (user_id, organization_id, mcp_configuration_id,"
    " oauth_provider, access_token, token_type, refresh_failure_count)"
    " VALUES (%(user_id)s, %(organization_id)s, %(mcp_configuration_id)s, %(oauth_provider)s,"
    " 'ciphertext', %(token_type)s, %(refresh_failure_count)s)"
)
_PROMPT = (
    "INSERT INTO system_prompts (scope, organization_id, user_id, content, created_by)"
    " VALUES (%(scope)s, %(organization_id)s, %(user_id)s, %(content)s, %(created_by)s)"
)
_AUDIT = (
    "INSERT INTO audit_logs (action, resource_type, details)"
    " VALUES (%(action)s, %(resource_type)s, %(details)s)"
)
_AUDIT_SAME_ID = (
    'INSERT INTO audit_logs (id, "timestamp", organization_id, action, resource_type)'
    " VALUES (%(id)s, date_trunc('hour', now()), %(organization_id)s, 'again', 'test')"
)
_CONFIG_SET_SCOPE = (
    "UPDATE mcp_configurations SET organization_id = %(organization_id)s, user_id = %(user_id)s"
    " WHERE id = %(id)s"
)
_TOKEN_SET_CONFIG = (
    "UPDATE mcp_oauth_tokens SET mcp_configuration_id = %(mcp_configuration_id)s"
    " WHERE user_id = %(user_id)s"
)
_TOKEN_SET_USER = (
    "UPDATE mcp_oauth_tokens SET user_id = %(new_user_id)s WHERE user_id = %(user_id)s"
)

Statement = tuple[str, dict[str, Any]]


def _org(**values: Any) -> Statement:
    return _ORG, {"name": "Fresh", "slug": "fresh", "metadata": Jsonb({})} | values


def _user(**values: Any) -> Statement:
    return _USER, {"organization_id": ORG1, "metadata": Jsonb({})} | values


def _session(**values: Any) -> Statement:
    defaults = {"user_id": U1, "organization_id": ORG1, "workspace_path": "/w/1",
                "created_at": NOW, "expires_at": None, "metadata": Jsonb({})}
    return _SESSION, defaults | values


def _config(**values: Any) -> Statement:
    defaults = {"organization_id": ORG1, "user_id": None, "name": "c", "type": "http",
                "endpoint": "https://x.example.com", "command": None, "args": Jsonb([]),
                "env": Jsonb({}), "auth_type": "none", "bearer_token": None,
                "oauth_provider": None}
    return _CONFIG, defaults | values


def _token(**values: Any) -> Statement:
    defaults = {"user_id": U2, "organization_id": ORG1, "mcp_configuration_id": CFG_ORG_OAUTH,
                "oauth_provider": "github", "token_type": "Bearer", "refresh_failure_count": 0}
    return _TOKEN, defaults | values


def _prompt(scope: str, **values: Any) -> Statement:
    defaults = {"scope": scope, "organization_id": None, "user_id": None,
                "content": "Be brief.", "created_by": None}
    return _PROMPT, defaults | values


def _audit(**values: Any) -> Statement:
    return _AUDIT, {"action": "a", "resource_type": "r", "details": Jsonb({})} | values


def _rescope(config: uuid.UUID, organization_id: uuid.UUID, user_id: uuid.UUID | None) -> Statement:
    return _CONFIG_SET_SCOPE, {"id": config, "organization_id": organization_id, "user_id": user_id}


@dataclass(frozen=True)
class Violation:
    """A statement that must fail with ``sqlstate`` on ``constraint``."""

    id: str
    statement: Statement
    sqlstate: str
    constraint: str


V = Violation
VIOLATIONS: tuple[Violation, ...] = (
    # organizations
    V("slug_uppercase", _org(slug="Fresh"), CHECK, "organizations_slug_format"),
    V("slug_underscore", _org(slug="a_b"), CHECK, "organizations_slug_format"),
    V("slug_leading_hyphen", _org(slug="-ab"), CHECK, "organizations_slug_format"),
    V("slug_trailing_hyphen", _org(slug="ab-"), CHECK, "organizations_slug_format"),
    V("slug_empty", _org(slug=""), CHECK, "organizations_slug_format"),
    V("slug_64_chars", _org(slug="a" * 64), CHECK, "organizations_slug_format"),
    V("slug_taken", _org(slug="one"), UNIQUE, "organizations_slug_key"),
    V("org_name_blank", _org(name="  "), CHECK, "organizations_name_not_blank"),
    V("org_name_tab_newline", _org(name="\t\n"), CHECK, "organizations_name_not_blank"),
    V("org_name_too_long", _org(name="n" * 201), CHECK, "organizations_name_not_blank"),
    V("org_metadata_array", _org(metadata=Jsonb([])), CHECK, "organizations_metadata_object"),
    # users
    V("email_no_at", _user(email="alice.example.com"), CHECK, "users_email_format"),
    V("email_no_tld", _user(email="alice@localhost"), CHECK, "users_email_format"),
    V("email_space", _user(email="al ice@example.com"), CHECK, "users_email_format"),
    V("email_two_ats", _user(email="a@b@example.com"), CHECK, "users_email_format"),
    V("email_too_long", _user(email="a" * 309 + "@example.com"), CHECK, "users_email_format"),
    V("email_same_case", _user(email="alice@example.com"), UNIQUE,
      "users_organization_id_email_key"),
    V("email_other_case", _user(email="ALICE@Example.COM"), UNIQUE,
      "users_organization_id_email_key"),
    V("user_unknown_org", _user(email="x@example.com", organization_id=uuid.uuid4()),
      FOREIGN_KEY, "users_organization_id_fkey"),
    V("user_metadata_string", _user(email="x@example.com", metadata=Jsonb("s")), CHECK,
      "users_metadata_object"),
    # user_sessions
    V("workspace_blank", _session(workspace_path="   "), CHECK,
      "user_sessions_workspace_path_valid"),
    V("workspace_newlines", _session(workspace_path="\n\r\n"), CHECK,
      "user_sessions_workspace_path_valid"),
    V("workspace_dotdot", _session(workspace_path="/w/../etc"), CHECK,
      "user_sessions_workspace_path_valid"),
    V("workspace_leading_dotdot", _session(workspace_path="../w"), CHECK,
      "user_sessions_workspace_path_valid"),
    V("workspace_trailing_dotdot", _session(workspace_path="/w/.."), CHECK,
      "user_sessions_workspace_path_valid"),
    V("workspace_only_dotdot", _session(workspace_path=".."), CHECK,
      "user_sessions_workspace_path_valid"),
    V("workspace_too_long", _session(workspace_path="/" + "w" * 4096), CHECK,
      "user_sessions_workspace_path_valid"),
    V("expires_equal_created", _session(created_at=T0, expires_at=T0), CHECK,
      "user_sessions_expires_after_created"),
    V("expires_before_created", _session(created_at=T0, expires_at=T0 - timedelta(seconds=1)),
      CHECK, "user_sessions_expires_after_created"),
    V("session_metadata_array", _session(metadata=Jsonb([1])), CHECK,
      "user_sessions_metadata_object"),
    V("session_user_of_other_org", _session(user_id=U3), FOREIGN_KEY, "user_sessions_user_fkey"),
    # mcp_configurations: transport
    V("http_without_endpoint", _config(endpoint=None), CHECK,
      "mcp_configurations_http_needs_endpoint"),
    V("sse_without_endpoint", _config(type="sse", endpoint=None), CHECK,
      "mcp_configurations_http_needs_endpoint"),
    V("http_ftp_endpoint", _config(endpoint="ftp://x.example.com"), CHECK,
      "mcp_configurations_http_needs_endpoint"),
    V("http_endpoint_no_host", _config(endpoint="https://"), CHECK,
      "mcp_configurations_http_needs_endpoint"),
    V("http_endpoint_with_space", _config(endpoint="https://x.example.com/a b"), CHECK,
      "mcp_configurations_http_needs_endpoint"),
    V("http_with_command", _config(command="npx"), CHECK,
      "mcp_configurations_http_needs_endpoint"),
    V("sse_with_command", _config(type="sse", command="npx"), CHECK,
      "mcp_configurations_http_needs_endpoint"),
    V("stdio_without_command", _config(type="stdio", endpoint=None), CHECK,
      "mcp_configurations_stdio_needs_command"),
    V("stdio_blank_command", _config(type="stdio", endpoint=None, command=" "), CHECK,
      "mcp_configurations_stdio_needs_command"),
    V("stdio_with_endpoint", _config(type="stdio", command="npx"), CHECK,
      "mcp_configurations_stdio_needs_command"),
    # mcp_configurations: auth
    V("bearer_without_token", _config(auth_type="bearer"), CHECK,
      "mcp_configurations_bearer_token_iff_bearer"),
    V("none_with_bearer_token", _config(bearer_token="ct"), CHECK,
      "mcp_configurations_bearer_token_iff_bearer"),
    V("oauth_with_bearer_token",
      _config(auth_type="oauth", oauth_provider="gh", bearer_token="ct"), CHECK,
      "mcp_configurations_bearer_token_iff_bearer"),
    V("oauth_without_provider", _config(auth_type="oauth"), CHECK,
      "mcp_configurations_oauth_provider_iff_oauth"),
    V("oauth_blank_provider", _config(auth_type="oauth", oauth_provider=" "), CHECK,
      "mcp_configurations_oauth_provider_iff_oauth"),
    V("none_with_provider", _config(oauth_provider="gh"), CHECK,
      "mcp_configurations_oauth_provider_iff_oauth"),
    V("bearer_with_provider",
      _config(auth_type="bearer", bearer_token="ct", oauth_provider="gh"), CHECK,
      "mcp_configurations_oauth_provider_iff_oauth"),
    # mcp_configurations: shapes, names, keys
    V("args_object", _config(args=Jsonb({})), CHECK, "mcp_configurations_args_array"),
    V("args_string", _config(args=Jsonb("-v")), CHECK, "mcp_configurations_args_array"),
    V("env_array", _config(env=Jsonb([])), CHECK, "mcp_configurations_env_object"),
    V("config_name_blank", _config(name=" "), CHECK, "mcp_configurations_name_not_blank"),
    V("config_name_tab", _config(name="\t"), CHECK, "mcp_configurations_name_not_blank"),
    V("org_wide_name_taken", _config(name="shared"), UNIQUE, "mcp_configurations_name_key"),
    V("org_wide_name_taken_other_case", _config(name="Shared"), UNIQUE,
      "mcp_configurations_name_key"),
    V("personal_name_taken", _config(name="mine", user_id=U1), UNIQUE,
      "mcp_configurations_name_key"),
    V("personal_config_user_of_other_org", _config(user_id=U3), FOREIGN_KEY,
      "mcp_configurations_user_fkey"),
    V("config_unknown_org", _config(organization_id=uuid.uuid4()), FOREIGN_KEY,
      "mcp_configurations_organization_id_fkey"),
    # mcp_configurations: the scope is immutable (trigger), for every role
    V("org_wide_config_made_personal", _rescope(CFG_ORG_OAUTH, ORG1, U1), CHECK,
      "mcp_configurations_scope_immutable"),
    V("personal_config_made_org_wide", _rescope(CFG_U1_OAUTH, ORG1, None), CHECK,
      "mcp_configurations_scope_immutable"),
    V("personal_config_given_to_other_user", _rescope(CFG_U1_OAUTH, ORG1, U2), CHECK,
      "mcp_configurations_scope_immutable"),
    V("config_moved_to_other_org", _rescope(CFG_ORG_BEARER, ORG2, None), CHECK,
      "mcp_configurations_scope_immutable"),
    # mcp_oauth_tokens
    V("token_user_of_other_org", _token(user_id=U3), FOREIGN_KEY, "mcp_oauth_tokens_user_fkey"),
    V("token_config_of_other_org", _token(user_id=U3, organization_id=ORG2), FOREIGN_KEY,
      "mcp_oauth_tokens_configuration_fkey"),
    V("token_unknown_config", _token(mcp_configuration_id=uuid.uuid4()), FOREIGN_KEY,
      "mcp_oauth_tokens_configuration_fkey"),
    V("token_for_other_users_personal_config", _token(mcp_configuration_id=CFG_U1_OAUTH),
      CHECK, "mcp_oauth_tokens_configuration_visible"),
    V("token_for_bearer_config", _token(mcp_configuration_id=CFG_ORG_BEARER), CHECK,
      "mcp_oauth_tokens_configuration_oauth"),
    V("second_token_same_user_config", _token(user_id=U1), UNIQUE,
      "mcp_oauth_tokens_user_configuration_key"),
    V("token_provider_blank", _token(oauth_provider=" "), CHECK,
      "mcp_oauth_tokens_provider_not_blank"),
    V("token_type_blank", _token(token_type=""), CHECK, "mcp_oauth_tokens_token_type_not_blank"),
    V("token_negative_failures", _token(refresh_failure_count=-1), CHECK,
      "mcp_oauth_tokens_failure_count_nonnegative"),
    # system_prompts: scope consistency, all three scopes
    V("global_with_org", _prompt("global", organization_id=ORG1), CHECK,
      "system_prompts_scope_consistent"),
    V("global_with_user", _prompt("global", user_id=U1), CHECK,
      "system_prompts_scope_consistent"),
    V("organization_without_org", _prompt("organization"), CHECK,
      "system_prompts_scope_consistent"),
    V("organization_with_user", _prompt("organization", organization_id=ORG1, user_id=U1),
      CHECK, "system_prompts_scope_consistent"),
    V("user_without_user", _prompt("user", organization_id=ORG1), CHECK,
      "system_prompts_scope_consistent"),
    V("user_without_org", _prompt("user", user_id=U1), CHECK, "system_prompts_scope_consistent"),
    V("prompt_content_blank", _prompt("global", content="\n "), CHECK,
      "system_prompts_content_not_blank"),
    V("user_prompt_user_of_other_org", _prompt("user", organization_id=ORG1, user_id=U3),
      FOREIGN_KEY, "system_prompts_user_fkey"),
    V("organization_prompt_unknown_org", _prompt("organization", organization_id=uuid.uuid4()),
      FOREIGN_KEY, "system_prompts_organization_id_fkey"),
    V("prompt_created_by_unknown", _prompt("global", created_by=uuid.uuid4()), FOREIGN_KEY,
      "system_prompts_created_by_fkey"),
    # audit_logs
    V("audit_action_blank", _audit(action=" "), CHECK, "audit_logs_action_not_blank"),
    V("audit_resource_type_blank", _audit(resource_type=""), CHECK,
      "audit_logs_resource_type_not_blank"),
    V("audit_details_array", _audit(details=Jsonb([])), CHECK, "audit_logs_details_object"),
)

# Rows that come close to a rule but are allowed.
ALLOWED: tuple[tuple[str, tuple[Statement, ...]], ...] = (
    ("same_email_in_other_org", (_user(email="ALICE@example.com", organization_id=ORG2),)),
    ("slug_63_chars_inner_hyphens", (_org(slug="a-" + "b" * 59 + "-c"),)),
    ("slug_single_char", (_org(slug="x"),)),
    ("workspace_dots_in_names", (_session(workspace_path="/w/..hidden/a..b/.../."),)),
    ("workspace_4096_chars", (_session(workspace_path="/" + "w" * 4095),)),
    ("session_never_expires", (_session(),)),
    ("session_expires_later", (_session(created_at=T0, expires_at=T0 + timedelta(seconds=1)),)),
    ("org_wide_and_personal_same_name", (_config(name="mine"),)),
    ("personal_same_name_other_user", (_config(name="mine", user_id=U2),)),
    ("personal_same_name_as_org_wide", (_config(name="shared", user_id=U2),)),
    ("same_org_wide_name_other_org", (_config(name="bearer", organization_id=ORG2),)),
    ("stdio_with_command", (_config(type="stdio", endpoint=None, command="npx",
                                    args=Jsonb(["-y", "server"]), env=Jsonb({"A": "1"})),)),
    ("token_for_own_personal_config",
     (_token(user_id=U1, mcp_configuration_id=CFG_U1_OAUTH, oauth_provider="google"),)),
    ("token_for_org_wide_config", (_token(),)),
    ("each_scope_consistent", (_prompt("global"), _prompt("organization", organization_id=ORG1),
                               _prompt("user", organization_id=ORG1, user_id=U1))),
)


@pytest.fixture(scope="module")
def conn(module_db: TestDatabase) -> Iterator[Conn]:
    """Superuser connection to the module's database, seeded and committed once."""
    connection = module_db.connect()
    for statement in _SEED:
        connection.execute(statement, IDS)
    connection.commit()
    yield connection


def expect_violation(conn: Conn, statement: Statement, sqlstate: str, constraint: str) -> None:
    query, params = statement
    with pytest.raises(psycopg.Error) as info, conn.transaction():
        conn.execute(query.encode(), params)
    error = info.value
    assert (error.sqlstate, error.diag.constraint_name) == (sqlstate, constraint), (
        f"{query}: {error.sqlstate} {error.diag.constraint_name}: {error}"
    )


@pytest.mark.parametrize("case", VIOLATIONS, ids=[v.id for v in VIOLATIONS])
def test_violation_is_refused(conn: Conn, case: Violation) -> None:
    with acting(conn, None):
        expect_violation(conn, case.statement, case.sqlstate, case.constraint)


@pytest.mark.parametrize(("case_id", "statements"), ALLOWED, ids=[a[0] for a in ALLOWED])
def test_near_miss_is_allowed(conn: Conn, case_id: str, statements: tuple[Statement, ...]) -> None:
    with acting(conn, None):
        for query, params in statements:
            assert conn.execute(query.encode(), params).rowcount == 1, case_id


_CONTRACT_CONSTRAINTS = (
    "SELECT conname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
    " JOIN pg_namespace n ON n.oid = t.relnamespace"
    " WHERE n.nspname = 'public' AND c.contype IN ('c', 'u', 'f')"
    " AND c.conparentid = 0 AND t.relname = ANY(%s)"
)
_CONTRACT_TABLES = ["organizations", "users", "user_sessions", "mcp_configurations",
                    "mcp_oauth_tokens", "system_prompts", "audit_logs"]
_UNIQUE_INDEXES = (
    "SELECT indexrelid::regclass::text FROM pg_index"
    " WHERE indisunique AND NOT indisprimary AND indrelid = ANY(%s::regclass[])"
    " AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = indexrelid)"
)


def test_every_named_constraint_has_a_violation(conn: Conn) -> None:
    """Every CHECK, UNIQUE, FOREIGN KEY and unique index of the contract tables is exercised."""
    with acting(conn, None):
        named = {str(r[0]) for r in conn.execute(_CONTRACT_CONSTRAINTS, (_CONTRACT_TABLES,))}
        named |= {str(r[0]) for r in conn.execute(_UNIQUE_INDEXES, (_CONTRACT_TABLES,))}
    covered = {v.constraint for v in VIOLATIONS} | {"audit_logs_organization_id_id_key"}
    # Target of the composite foreign keys: (id, ...) is unique because id is the primary key.
    composite_targets = {"users_id_organization_id_key"}
    assert named - covered == composite_targets
    assert "users_organization_id_email_key" in named


_PARENT_CONSTRAINT = (
    "SELECT p.conname FROM pg_constraint AS c JOIN pg_constraint AS p ON p.oid = c.conparentid"
    " WHERE c.conname = %s"
)


def test_repeated_audit_event_id_is_refused(conn: Conn) -> None:
    """The same event id twice in an organization (at the same time) violates the
    tenant-leading unique key, through the partition's copy of it."""
    with acting(conn, None):
        with pytest.raises(psycopg.errors.UniqueViolation) as info, conn.transaction():
            conn.execute(_AUDIT_SAME_ID.encode(), {"id": AUDIT1, "organization_id": ORG1})
        name = info.value.diag.constraint_name
        parent = conn.execute(_PARENT_CONSTRAINT, (name,)).fetchone()
        assert parent is not None and parent[0] == "audit_logs_organization_id_id_key", name


def test_token_update_to_invisible_config_is_refused(conn: Conn) -> None:
    """The visibility trigger also guards UPDATEs that re-point a token."""
    with acting(conn, None):
        conn.execute(_token()[0].encode(), _token()[1])
        for config, constraint in (
            (CFG_U1_OAUTH, "mcp_oauth_tokens_configuration_visible"),
            (CFG_ORG_BEARER, "mcp_oauth_tokens_configuration_oauth"),
        ):
            statement = (_TOKEN_SET_CONFIG, {"mcp_configuration_id": config, "user_id": U2})
            expect_violation(conn, statement, CHECK, constraint)


def test_token_moved_to_other_user_is_refused(conn: Conn) -> None:
    """Moving U1's token for their personal config to U2 trips the visibility trigger."""
    with acting(conn, None):
        conn.execute(b"DELETE FROM mcp_oauth_tokens")
        query, params = _token(user_id=U1, mcp_configuration_id=CFG_U1_OAUTH)
        conn.execute(query.encode(), params)
        statement = (_TOKEN_SET_USER, {"new_user_id": U2, "user_id": U1})
        expect_violation(conn, statement, CHECK, "mcp_oauth_tokens_configuration_visible")


def test_scope_trigger_binds_service_role_too(conn: Conn) -> None:
    with acting(conn, "agentapi_service"):
        expect_violation(conn, _rescope(CFG_ORG_OAUTH, ORG1, U1), CHECK,
                         "mcp_configurations_scope_immutable")


def test_scope_trigger_allows_same_scope_and_other_columns(conn: Conn) -> None:
    with acting(conn, None):
        query, params = _rescope(CFG_U1_OAUTH, ORG1, U1)
        assert conn.execute(query.encode(), params).rowcount == 1
        renamed = conn.execute(
            "UPDATE mcp_configurations SET name = 'renamed' WHERE id = %s RETURNING name",
            (CFG_U1_OAUTH,),
        ).fetchone()
        assert renamed == ("renamed",)


# --- audit_logs: append-only for every role, superuser included ------------------------

_AUDIT_PARTITION = (
    "SELECT tableoid::regclass::text FROM audit_logs WHERE action = %s"
)


def _audit_tables(conn: Conn) -> list[str]:
    with acting(conn, None):
        monthly = conn.execute(_AUDIT_PARTITION, ("seed",)).fetchone()
        default = conn.execute(_AUDIT_PARTITION, ("far-future",)).fetchone()
    assert monthly is not None and default is not None
    assert default[0] == "audit_logs_default" and monthly[0].startswith("audit_logs_y")
    return ["audit_logs", str(monthly[0]), str(default[0])]


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "TRUNCATE"])
@pytest.mark.parametrize("target", ["parent", "monthly", "default"])
def test_audit_is_append_only_for_superuser(conn: Conn, operation: str, target: str) -> None:
    table = dict(zip(["parent", "monthly", "default"], _audit_tables(conn), strict=True))[target]
    statements: dict[str, Any] = {
        "UPDATE": "UPDATE {} SET action = 'forged'",
        "DELETE": "DELETE FROM {}",
        "TRUNCATE": "TRUNCATE {}",
    }
    statement = sql.SQL(statements[operation]).format(sql.Identifier(table))
    with acting(conn, None):
        with pytest.raises(psycopg.Error) as info, conn.transaction():
            conn.execute(statement)
        assert info.value.sqlstate == INSUFFICIENT_PRIVILEGE
        assert f"audit_logs is append-only: {operation} is not allowed" in str(info.value)
        left = conn.execute("SELECT count(*) FROM audit_logs WHERE action <> 'forged'").fetchone()
        assert left == (2,)


@pytest.mark.parametrize("role", ["agentapi_owner", "agentapi_service", "agentapi_app"])
@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "TRUNCATE"])
def test_audit_is_append_only_for_every_role(
    module_db: TestDatabase, conn: Conn, role: str, operation: str
) -> None:
    login = {"agentapi_owner": "owner_login", "agentapi_service": "service_login",
             "agentapi_app": "app_login"}[role]
    statements = {
        "UPDATE": "UPDATE audit_logs SET action = 'forged'",
        "DELETE": "DELETE FROM audit_logs",
        "TRUNCATE": "TRUNCATE audit_logs",
    }
    with module_db.connect(login) as other, acting(other, role, str(U1)):
        with pytest.raises(psycopg.Error) as info:
            other.execute(statements[operation].encode())
        assert info.value.sqlstate == INSUFFICIENT_PRIVILEGE


# --- Hypothesis: email and slug against reference predicates ----------------------------

_SLUG_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789")
_ALNUM = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_LOCAL_EXTRA = set(".!#$%&'*+/=?^_`{|}~-")


def slug_is_valid(slug: str) -> bool:
    """Reference: 1..63 of a-z, 0-9, '-', not starting or ending with '-'."""
    return (
        1 <= len(slug) <= 63
        and all(ch in _SLUG_CHARS or ch == "-" for ch in slug)
        and slug[0] != "-"
        and slug[-1] != "-"
    )


def _label_is_valid(label: str) -> bool:
    return (
        1 <= len(label) <= 63
        and all(ch in _ALNUM or ch == "-" for ch in label)
        and label[0] != "-"
        and label[-1] != "-"
    )


def email_is_valid(email: str) -> bool:
    """Reference: local@domain, at most 320 chars; ASCII atext/dot local part; 2+ DNS labels."""
    if len(email) > 320 or email.count("@") != 1:
        return False
    local, domain = email.split("@")
    labels = domain.split(".")
    return (
        len(local) >= 1
        and all(ch in _ALNUM or ch in _LOCAL_EXTRA for ch in local)
        and len(labels) >= 2
        and all(_label_is_valid(label) for label in labels)
    )


def _db_accepts(conn: Conn, statement: bytes, value: str, constraint: str) -> bool:
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(statement, {**IDS, "value": value})
    except psycopg.errors.CheckViolation as error:
        assert error.diag.constraint_name == constraint
        return False
    return True


_slug_text = st.one_of(
    st.text(alphabet="abz09-_A. é", max_size=70),
    st.from_regex(re.compile(r"[a-z0-9][a-z0-9-]{0,70}[a-z0-9-]?"), fullmatch=True),
)
_label = st.text(alphabet="aZ09-_.é", min_size=0, max_size=8)
_email_text = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
    st.builds(
        lambda local, labels: local + "@" + ".".join(labels),
        st.text(alphabet="aZ9.!#'`{~-@ \"(", min_size=0, max_size=8),
        st.lists(_label, min_size=0, max_size=4),
    ),
)

_PROPERTY_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)


@_PROPERTY_SETTINGS
@given(slug=_slug_text)
@example(slug="a" * 63)
@example(slug="a" * 64)
@example(slug="a--b")
@example(slug="ab\n")
def test_slug_check_matches_reference(conn: Conn, slug: str) -> None:
    statement = b"INSERT INTO organizations (name, slug) VALUES ('n', %(value)s)"
    # The seed's slugs would collide on the unique key, not the format check.
    if slug in {"one", "two", "empty"}:
        slug = slug + "x"
    with acting(conn, None):
        accepted = _db_accepts(conn, statement, slug, "organizations_slug_format")
    assert accepted == slug_is_valid(slug), slug


@_PROPERTY_SETTINGS
@given(email=_email_text)
@example(email="a@b.c")
@example(email="a@b")
@example(email="a@-b.com")
@example(email="a@b-.com")
@example(email="a@" + "b" * 64 + ".com")
@example(email="a@" + "b" * 63 + ".com")
@example(email="x" * 308 + "@example.com")
@example(email="x" * 309 + "@example.com")
@example(email="a@b.com\n")
@example(email="ä@b.com")
def test_email_check_matches_reference(conn: Conn, email: str) -> None:
    statement = b"INSERT INTO users (organization_id, email) VALUES (%(org_empty)s, %(value)s)"
    with acting(conn, None):
        accepted = _db_accepts(conn, statement, email, "users_email_format")
    assert accepted == email_is_valid(email), email
