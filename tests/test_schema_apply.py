"""``psql -v ON_ERROR_STOP=1 -f database/schema.sql`` on a fresh, empty database.

The file is applied once per module by the superuser, with psql as a subprocess
(exactly what an operator runs), and the resulting catalog is compared with the
contract (shared/spec/contract.md): tables and their columns, enum types and
labels, functions and views.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from tests.pg import SCHEMA_SQL, PgServer, create_database, drop_database, psql_path, unique_name

# The contract's column lists (types where the contract gives one).
CONTRACT_TABLES: dict[str, dict[str, str | None]] = {
    "organizations": {"id": "uuid", "name": "text", "slug": "text", "metadata": "jsonb",
                      "created_at": None, "updated_at": None},
    "users": {"id": "uuid", "organization_id": "uuid", "email": "text", "role": "user_role",
              "is_active": "boolean", "metadata": "jsonb", "last_login_at": None,
              "created_at": None, "updated_at": None},
    "user_sessions": {"id": "uuid", "user_id": None, "organization_id": None,
                      "workspace_path": "text", "system_prompt": "text", "metadata": "jsonb",
                      "created_at": None, "expires_at": None, "last_active_at": None},
    "mcp_configurations": {"id": "uuid", "organization_id": None, "user_id": None, "name": None,
                           "type": "mcp_type", "endpoint": None, "command": None,
                           "args": "jsonb", "env": "jsonb", "auth_type": "auth_type",
                           "bearer_token": None, "oauth_provider": None, "enabled": None,
                           "created_at": None, "updated_at": None},
    "mcp_oauth_tokens": {"id": "uuid", "user_id": None, "organization_id": None,
                         "mcp_configuration_id": None, "oauth_provider": None,
                         "access_token": None, "refresh_token": None, "token_type": None,
                         "scope": None, "expires_at": None, "created_at": None,
                         "updated_at": None},
    "system_prompts": {"id": "uuid", "scope": "prompt_scope", "organization_id": None,
                       "user_id": None, "content": "text", "priority": "integer",
                       "template": "text", "enabled": "boolean", "created_by": None,
                       "created_at": None, "updated_at": None},
    "audit_logs": {"id": "uuid", "timestamp": "timestamp with time zone", "user_id": None,
                   "organization_id": None, "action": None, "resource_type": None,
                   "resource_id": None, "details": "jsonb", "ip_address": "inet",
                   "user_agent": None, "success": "boolean", "error_message": None},
}
# Not contract tables: internal bookkeeping of a maintenance feature (the opt-in audit
# hash chain). A new table in public must be added here on purpose.
OPERATIONAL_TABLES = {"audit_chain_heads", "organization_data_keys"}
# Columns the contract marks "null"; everything else named above may be NOT NULL.
CONTRACT_NULLABLE = {
    ("user_sessions", "system_prompt"), ("user_sessions", "expires_at"),
    ("mcp_configurations", "user_id"), ("mcp_oauth_tokens", "refresh_token"),
    ("mcp_oauth_tokens", "expires_at"), ("system_prompts", "organization_id"),
    ("system_prompts", "user_id"), ("system_prompts", "template"),
    ("system_prompts", "created_by"), ("audit_logs", "user_id"),
    ("audit_logs", "organization_id"), ("audit_logs", "resource_id"),
    ("audit_logs", "ip_address"), ("audit_logs", "user_agent"),
    ("audit_logs", "error_message"),
}
CONTRACT_ENUMS = {
    "user_role": ["admin", "user"],
    "mcp_type": ["http", "sse", "stdio"],
    "auth_type": ["none", "bearer", "oauth"],
    "prompt_scope": ["global", "organization", "user"],
}
# name -> (identity arguments' types, result type, number of defaulted arguments)
CONTRACT_FUNCTIONS: dict[str, tuple[str, str, int]] = {
    "update_updated_at_column": ("", "trigger", 0),
    "encrypt_token": ("text, text", "text", 0),
    "decrypt_token": ("text, text", "text", 0),
    "log_audit_event": ("uuid, uuid, text, text, text, jsonb, inet, text, boolean, text",
                        "uuid", 2),
    "cleanup_expired_sessions": ("", "integer", 0),
    "get_effective_system_prompts": ("uuid, uuid", "record", 0),
}
SESSION_COLUMNS = list(CONTRACT_TABLES["user_sessions"])
CONFIG_COLUMNS = list(CONTRACT_TABLES["mcp_configurations"])
CONTRACT_VIEWS: dict[str, list[str]] = {
    "active_user_sessions": [*SESSION_COLUMNS, "user_email", "user_role",
                             "organization_name", "organization_slug"],
    "effective_mcp_configurations": [*CONFIG_COLUMNS, "organization_name", "organization_slug",
                                     "user_email", "config_scope"],
}

# --- catalog queries --------------------------------------------------------------------
_TOP_LEVEL_TABLES = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    " ORDER BY 1"
)
_COLUMNS = (
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull"
    " FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0"
    " AND NOT a.attisdropped ORDER BY a.attnum"
)
_ENUMS = (
    "SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)"
    " FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
    " JOIN pg_enum e ON e.enumtypid = t.oid WHERE n.nspname = 'public' GROUP BY t.typname"
)
_FUNCTION = (
    "SELECT oidvectortypes(p.proargtypes), format_type(p.prorettype, NULL),"
    " p.pronargdefaults, p.proretset, p.provolatile"
    " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname = 'public' AND p.proname = %s"
)
_VIEWS = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm') ORDER BY 1"
)
_EXTENSIONS = (
    "SELECT e.extname, n.nspname FROM pg_extension e JOIN pg_namespace n"
    " ON n.oid = e.extnamespace WHERE e.extname IN ('pgcrypto', 'uuid-ossp') ORDER BY 1"
)
_ROLES = (
    "SELECT rolname, rolcanlogin, rolbypassrls FROM pg_roles"
    " WHERE rolname LIKE 'agentapi\\_%%' AND rolname IN"
    " ('agentapi_owner', 'agentapi_app', 'agentapi_service') ORDER BY 1"
)
_GET_EFFECTIVE_COLUMNS = (
    "SELECT unnest(proargnames[pronargs + 1:]) FROM pg_proc"
    " WHERE proname = 'get_effective_system_prompts'"
)


@dataclass
class Applied:
    returncode: int
    stdout: str
    stderr: str
    conn: psycopg.Connection[tuple[object, ...]]


@pytest.fixture(scope="module")
def applied(pg_server: PgServer) -> Iterator[Applied]:
    """A fresh empty database with schema.sql applied by psql, as the superuser."""
    name = unique_name("agentapi_apply")
    create_database(pg_server, name)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        result = subprocess.run(
            [psql_path(), "-X", "-v", "ON_ERROR_STOP=1", "-d", pg_server.url(name),
             "-f", str(SCHEMA_SQL)],
            capture_output=True, text=True, check=False, env=env, timeout=300,
        )
        with psycopg.connect(pg_server.url(name), autocommit=True) as conn:
            yield Applied(result.returncode, result.stdout, result.stderr, conn)
    finally:
        drop_database(pg_server, name)


def _rows(
    applied: Applied, query: str, params: tuple[object, ...] | None = None
) -> list[tuple[object, ...]]:
    return applied.conn.execute(query.encode(), params).fetchall()


def test_psql_applies_schema_without_errors_or_warnings(applied: Applied) -> None:
    assert applied.returncode == 0, applied.stderr
    assert "ERROR" not in applied.stderr
    assert "WARNING" not in applied.stderr, applied.stderr


def test_exactly_the_seven_contract_tables(applied: Applied) -> None:
    """The seven contract tables, plus only the documented operational ones."""
    tables = {str(r[0]) for r in _rows(applied, _TOP_LEVEL_TABLES)}
    assert len(CONTRACT_TABLES) == 7
    assert tables - OPERATIONAL_TABLES == set(CONTRACT_TABLES)
    assert tables >= OPERATIONAL_TABLES, "a listed operational table no longer exists"


@pytest.mark.parametrize("table", sorted(CONTRACT_TABLES))
def test_contract_columns_exist(applied: Applied, table: str) -> None:
    columns = {str(r[0]): (str(r[1]), bool(r[2])) for r in _rows(applied, _COLUMNS, (table,))}
    for column, type_ in CONTRACT_TABLES[table].items():
        assert column in columns, f"{table}.{column} is missing"
        if type_ is not None:
            assert columns[column][0] == type_, f"{table}.{column}"
        if (table, column) in CONTRACT_NULLABLE:
            assert columns[column][1] is False, f"{table}.{column} must be nullable"
    assert columns["id"][1] is True


def test_four_enum_types_with_contract_labels(applied: Applied) -> None:
    assert {str(r[0]): r[1] for r in _rows(applied, _ENUMS)} == CONTRACT_ENUMS


@pytest.mark.parametrize("name", sorted(CONTRACT_FUNCTIONS))
def test_contract_functions(applied: Applied, name: str) -> None:
    rows = _rows(applied, _FUNCTION, (name,))
    assert len(rows) == 1, f"{name}: {rows}"
    arguments, result, defaults, returns_set, volatility = rows[0]
    assert (arguments, result, defaults) == CONTRACT_FUNCTIONS[name]
    assert returns_set is (name == "get_effective_system_prompts")
    if name == "encrypt_token":
        assert volatility == "v", "encrypt_token's random salt makes it VOLATILE"


def test_get_effective_system_prompts_columns(applied: Applied) -> None:
    columns = {str(r[0]) for r in _rows(applied, _GET_EFFECTIVE_COLUMNS)}
    assert {"id", "scope", "content", "priority", "precedence"} <= columns


def test_the_two_views_with_contract_columns(applied: Applied) -> None:
    assert [r[0] for r in _rows(applied, _VIEWS)] == sorted(CONTRACT_VIEWS)
    for view, expected in CONTRACT_VIEWS.items():
        columns = [str(r[0]) for r in _rows(applied, _COLUMNS, (view,))]
        assert set(expected) <= set(columns), f"{view}: missing {set(expected) - set(columns)}"


def test_extensions_and_roles(applied: Applied) -> None:
    assert _rows(applied, _EXTENSIONS) == [("pgcrypto", "extensions"),
                                          ("uuid-ossp", "extensions")]
    assert _rows(applied, _ROLES) == [("agentapi_app", False, False),
                                      ("agentapi_owner", False, False),
                                      ("agentapi_service", False, False)]
