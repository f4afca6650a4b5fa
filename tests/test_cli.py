"""The installed ``agentapi-db`` entry point: migrate, verify, help, exit codes, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.cli_fixtures import assert_clean_error, empty_database, run_cli
from tests.pg import APP_LOGIN, PgServer, TestDatabase

_SABOTAGE = "ALTER TABLE public.users NO FORCE ROW LEVEL SECURITY"
_GRANT_PUBLIC = "GRANT SELECT ON public.organizations TO PUBLIC"
_HISTORY_COUNT = "SELECT count(*) FROM agentapi_meta.schema_migrations"


@pytest.fixture
def fresh_url(pg_server: PgServer, login_roles: dict[str, str | None]) -> Iterator[str]:
    """Superuser URL of a new, empty database."""
    with empty_database(pg_server, "agentapi_cli") as name:
        yield pg_server.url(name)


def test_migrate_then_verify_a_fresh_database(fresh_url: str, tmp_path: Path) -> None:
    first = run_cli("migrate", "--database-url", fresh_url)
    assert first.code == 0, str(first)
    assert "applied 1 (schema)" in first.stdout

    again = run_cli("migrate", "--database-url", fresh_url, "--json")
    assert again.code == 0, str(again)
    assert json.loads(again.stdout) == {"applied": [], "schema_version": 1, "latest_version": 1}
    with psycopg.connect(fresh_url) as conn:
        assert conn.execute(_HISTORY_COUNT).fetchone() == (1,)

    unkeyed = run_cli("verify", "--database-url", fresh_url)
    assert unkeyed.code == 1 and "✗ context_key" in unkeyed.stdout, str(unkeyed)
    made = run_cli(
        "context-key", "create", "--database-url", fresh_url, "--output", str(tmp_path / "ctx.key")
    )
    assert made.code == 0, str(made)
    verified = run_cli("verify", "--database-url", fresh_url)
    assert verified.code == 0, str(verified)
    lines = [line for line in verified.stdout.splitlines() if line.strip()]
    checks = [line for line in lines if line.startswith(("✓", "✗"))]
    assert len(checks) >= 10 and all(line.startswith("✓") for line in checks), str(verified)
    assert any("lint:rls_not_enabled_or_forced" in line for line in checks)
    assert any("schema_version" in line for line in checks)


def test_verify_names_a_sabotaged_table(fresh_url: str) -> None:
    assert run_cli("migrate", "--database-url", fresh_url).code == 0
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute(_SABOTAGE)
        conn.execute(_GRANT_PUBLIC)
    result = run_cli("verify", "--database-url", fresh_url)
    assert result.code == 1, str(result)
    assert "✗ lint:rls_not_enabled_or_forced" in result.stdout
    assert "public.users: row level security is not forced" in result.stdout
    assert "✗ lint:public_grants" in result.stdout

    as_json = run_cli("verify", "--database-url", fresh_url, "--json")
    assert as_json.code == 1
    checks = {c["check"]: c for c in json.loads(as_json.stdout)}
    rls = checks["lint:rls_not_enabled_or_forced"]
    assert rls["ok"] is False
    assert any("public.users" in f for f in rls["findings"])
    assert checks["schema_version"]["ok"] is True


def test_verify_reports_a_database_without_history(db: TestDatabase) -> None:
    result = run_cli("verify", "--database-url", db.superuser_url, "--json")
    assert result.code == 1, str(result)
    checks = {c["check"]: c for c in json.loads(result.stdout)}
    assert checks["schema_version"]["ok"] is False
    assert "--baseline" in checks["schema_version"]["findings"][0]
    assert checks["lint:rls_not_enabled_or_forced"]["ok"] is True


def test_migrate_refuses_a_psql_built_database_without_baseline(db: TestDatabase) -> None:
    refused = run_cli("migrate", "--database-url", db.superuser_url)
    assert_clean_error(refused, 1, "--baseline")
    adopted = run_cli("migrate", "--database-url", db.superuser_url, "--baseline")
    assert adopted.code == 0, str(adopted)
    found = json.loads(run_cli("verify", "--database-url", db.superuser_url, "--json").stdout)
    assert [c["check"] for c in found if not c["ok"]] == ["context_key"]


def test_unreachable_database_is_exit_3_without_traceback() -> None:
    result = run_cli("verify", "--database-url", "postgresql://nobody@127.0.0.1:1/nothing")
    assert_clean_error(result, 3, "connection")
    result = run_cli("migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/nothing")
    assert_clean_error(result, 3)


def test_malformed_database_url_is_exit_3() -> None:
    result = run_cli("verify", "--database-url", "postgresql://[::1")
    assert_clean_error(result, 3)


def test_unknown_database_is_exit_3(pg_server: PgServer) -> None:
    result = run_cli("verify", "--database-url", pg_server.url("no_such_database_here"))
    assert_clean_error(result, 3, "no_such_database_here")


def test_migrate_as_a_non_superuser_on_an_empty_database(
    fresh_url: str, pg_server: PgServer
) -> None:
    name = fresh_url.rsplit("/", 1)[-1]
    result = run_cli("migrate", "--database-url", pg_server.url(name, APP_LOGIN))
    assert_clean_error(result, 1, "superuser")


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["migrate"],
        ["verify"],
        ["up"],
        ["down"],
        ["status"],
        ["org"],
        ["user"],
        ["sessions"],
        ["audit"],
        ["prompts"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.code == 0, str(result)
    assert "Usage: agentapi-db" in result.stdout


def test_root_help_documents_the_exit_codes() -> None:
    result = run_cli("--help")
    assert result.code == 0
    flat = " ".join(result.stdout.split())
    for text in ("2 bad usage", "3 cannot connect", "4 permission denied"):
        assert text in flat, result.stdout


def test_unknown_option_is_a_usage_error() -> None:
    result = run_cli("migrate", "--no-such-option")
    assert result.code == 2
    assert "Traceback" not in result.stderr
