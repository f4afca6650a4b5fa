"""agentapi_db.verify.run_checks on a migrated database: clean, then each check broken."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from agentapi_db import context_admin, lint
from agentapi_db.logins import create_login
from agentapi_db.migrations import migrate
from agentapi_db.verify import CheckResult, run_checks
from tests.cli_fixtures import empty_database
from tests.pg import SCHEMA_SQL, PgServer

_SU_LOGIN = "verify_test_superuser_login"
_CREATE_SU_LOGIN = "CREATE ROLE {} LOGIN SUPERUSER"
_GRANT_APP = "GRANT agentapi_app TO {}"
_DROP_ROLE = "DROP ROLE IF EXISTS {}"
_META_PUBLIC = "GRANT USAGE ON SCHEMA agentapi_meta TO PUBLIC"
_META_NO_FORCE = "ALTER TABLE agentapi_meta.schema_migrations NO FORCE ROW LEVEL SECURITY"
_TAMPER_CHECKSUM = "UPDATE agentapi_meta.schema_migrations SET checksum = repeat('0', 64)"


@pytest.fixture
def migrated_url(pg_server: PgServer, login_roles: dict[str, str | None]) -> Iterator[str]:
    with empty_database(pg_server, "agentapi_verify") as name:
        url = pg_server.url(name)
        migrate(url)
        with psycopg.connect(url) as conn:
            context_admin.create_key(conn)
        yield url


def checks(url: str) -> dict[str, CheckResult]:
    with psycopg.connect(url) as conn:
        return {r.name: r for r in run_checks(conn)}


def failing(url: str) -> dict[str, list[str]]:
    return {name: r.findings for name, r in checks(url).items() if not r.ok}


def test_a_migrated_database_passes_every_check(migrated_url: str) -> None:
    results = checks(migrated_url)
    expected = {f"lint:{item.name}" for item in lint.LINTS} | {
        "login_roles",
        "login_escalation",
        "login_timeouts",
        "context_key",
        "migration_history",
        "schema_version",
        "secret_format",
        "secret_logging",
    }
    assert set(results) == expected
    assert failing(migrated_url) == {}
    assert results["secret_logging"].warnings == []  # the test server logs no statements


def test_superuser_login_acting_as_app_is_a_finding(migrated_url: str) -> None:
    role = sql.Identifier(_SU_LOGIN)
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(sql.SQL(_DROP_ROLE).format(role))
        conn.execute(sql.SQL(_CREATE_SU_LOGIN).format(role))
        try:
            conn.execute(sql.SQL(_GRANT_APP).format(role))
            found = failing(migrated_url)
        finally:
            conn.execute(sql.SQL(_DROP_ROLE).format(role))
    assert list(found) == ["login_roles"]
    assert found["login_roles"] == [
        f"login {_SU_LOGIN} can act as agentapi_app but is SUPERUSER"
    ]


_ESC_LOGIN = "verify_test_escalating_login"
_CREATE_LOGIN = "CREATE ROLE {} LOGIN"
_GRANT_OWNER = "GRANT agentapi_owner TO {}"
_MIDDLE = "verify_test_middle_group"
_CREATE_GROUP = "CREATE ROLE {} NOLOGIN"
_GRANT = "GRANT {} TO {}"


@pytest.mark.parametrize("indirect", [False, True], ids=["direct", "through_a_group"])
def test_login_acting_as_app_and_owner_is_a_finding(migrated_url: str, indirect: bool) -> None:
    login, middle = sql.Identifier(_ESC_LOGIN), sql.Identifier(_MIDDLE)
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        for role in (login, middle):
            conn.execute(sql.SQL(_DROP_ROLE).format(role))
        conn.execute(sql.SQL(_CREATE_LOGIN).format(login))
        try:
            conn.execute(sql.SQL(_GRANT_APP).format(login))
            assert failing(migrated_url) == {}  # agentapi_app alone is what it should be
            if indirect:
                conn.execute(sql.SQL(_CREATE_GROUP).format(middle))
                conn.execute(sql.SQL(_GRANT_OWNER).format(middle))
                conn.execute(sql.SQL(_GRANT).format(middle, login))
            else:
                conn.execute(sql.SQL(_GRANT_OWNER).format(login))
            found = failing(migrated_url)
        finally:
            for role in (login, middle):
                conn.execute(sql.SQL(_DROP_ROLE).format(role))
    assert list(found) == ["login_escalation"]
    assert found["login_escalation"][0].startswith(
        f"login {_ESC_LOGIN} can act as agentapi_app and as agentapi_owner"
    )


def test_migration_history_posture_is_checked(migrated_url: str) -> None:
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(_META_PUBLIC)
        conn.execute(_META_NO_FORCE)
    found = failing(migrated_url)
    assert list(found) == ["migration_history"]
    text = " ".join(found["migration_history"])
    assert "schema agentapi_meta: PUBLIC has USAGE" in text
    assert "agentapi_meta.schema_migrations: row level security not enabled and forced" in text


def test_tampered_checksum_is_a_finding(migrated_url: str) -> None:
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(_TAMPER_CHECKSUM)
    found = failing(migrated_url)
    assert list(found) == ["schema_version"]
    assert "migration 1 (schema) was changed after it was applied" in found["schema_version"][0]


def test_pending_migration_is_a_finding(
    migrated_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "database"
    shutil.copytree(SCHEMA_SQL.parent, copy)
    (copy / "migrations").mkdir(exist_ok=True)
    (copy / "migrations" / "0002_later.sql").write_text("SELECT 1;\n")
    monkeypatch.setenv("AGENTAPI_SQL_DIR", str(copy))
    found = failing(migrated_url)
    assert found == {"schema_version": ["migration 2 (later) is not applied"]}
    migrate(migrated_url)
    assert failing(migrated_url) == {}


_DROP_KEYS = "DELETE FROM agentapi_auth.context_keys"
_EXPIRE_KEYS = "UPDATE agentapi_auth.context_keys SET expires_at = now() - interval '1 second'"


def test_no_context_key_is_a_finding_that_says_what_injection_could_do(
    migrated_url: str,
) -> None:
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(_EXPIRE_KEYS)
    found = failing(migrated_url)
    assert list(found) == ["context_key"] and "every context key has expired" in found[
        "context_key"
    ][0]
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(_DROP_KEYS)
    found = failing(migrated_url)
    assert list(found) == ["context_key"]
    assert "no context key is configured" in found["context_key"][0]
    assert "SQL injection" in found["context_key"][0]


_SECRET_SEED = (
    "INSERT INTO organizations (id, name, slug) VALUES ('00000000-0000-4000-8000-000000000001',"
    " 'O', 'o')",
    "INSERT INTO mcp_configurations (organization_id, name, type, endpoint, auth_type,"
    " bearer_token) VALUES ('00000000-0000-4000-8000-000000000001', 'legacy', 'http', 'https://x',"
    " 'bearer', encode(extensions.pgp_sym_encrypt('t', repeat('a', 64)), 'base64')),"
    " ('00000000-0000-4000-8000-000000000001', 'direct', 'http', 'https://y', 'bearer',"
    " encrypt_token('t', repeat('a', 64)))",
)


def test_values_not_under_a_data_key_are_findings(migrated_url: str) -> None:
    with psycopg.connect(migrated_url) as conn:
        for statement in _SECRET_SEED:
            conn.execute(statement.encode())
    found = failing(migrated_url)
    assert list(found) == ["secret_format"]
    assert [f.split(":")[0] for f in found["secret_format"]] == [
        "mcp_configurations.bearer_token"] * 2
    assert "1 value(s) still in the previous (OpenPGP) format" in found["secret_format"][0]
    assert "1 value(s) not under an organization data key" in found["secret_format"][1]
    assert "a" * 64 not in " ".join(found["secret_format"])


def test_logging_settings_are_warnings_not_failures(migrated_url: str) -> None:
    with psycopg.connect(migrated_url) as conn:
        conn.execute(b"SET log_statement = 'all'")
        conn.execute(b"SET log_min_duration_statement = 0")
        results = {r.name: r for r in run_checks(conn)}
    logging = results["secret_logging"]
    assert logging.ok and len(logging.warnings) == 2
    assert logging.warnings[0].startswith("log_statement = all")
    assert logging.warnings[1].startswith("log_min_duration_statement is set")


_TIMEOUT_LOGIN = "verify_test_timeout_login"
_WHO_WAITS = "SELECT count(*) FROM public.users"


def _timeout_warnings(url: str) -> list[str]:
    return [w for w in checks(url)["login_timeouts"].warnings if _TIMEOUT_LOGIN in w]


def test_logins_without_timeouts_are_warned_about_and_login_create_bounds_them(
    migrated_url: str,
) -> None:
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(sql.SQL(_DROP_ROLE).format(sql.Identifier(_TIMEOUT_LOGIN)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOINHERIT").format(
            sql.Identifier(_TIMEOUT_LOGIN)))
        try:
            conn.execute(sql.SQL(_GRANT_APP).format(sql.Identifier(_TIMEOUT_LOGIN)))
            (warning,) = _timeout_warnings(migrated_url)
            assert "lock_timeout, statement_timeout, idle_in_transaction_session_timeout" in warning
            assert checks(migrated_url)["login_timeouts"].ok  # a warning, not a finding
        finally:
            conn.execute(sql.SQL(_DROP_ROLE).format(sql.Identifier(_TIMEOUT_LOGIN)))
        create_login(conn, _TIMEOUT_LOGIN, "app", "pw", timeouts={
            "idle_in_transaction_session_timeout": "1s"})
        try:
            assert _timeout_warnings(migrated_url) == []
            # The bound is real: a transaction of the login that locks users and then
            # idles is ended by the server, and another tenant's read proceeds.
            holder = psycopg.connect(
                make_conninfo(migrated_url, user=_TIMEOUT_LOGIN, password="pw"))
            holder.execute("SET ROLE agentapi_app")
            holder.execute("LOCK TABLE public.users IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with psycopg.connect(migrated_url) as other:
                other.execute(_WHO_WAITS).fetchone()
            waited = time.monotonic() - started
            assert 0.5 < waited < 10, waited
            with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
                holder.execute("SELECT 1")
            holder.close()
        finally:
            conn.execute(sql.SQL(_DROP_ROLE).format(sql.Identifier(_TIMEOUT_LOGIN)))
