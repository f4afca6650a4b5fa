"""The local database: ``agentapi-db up`` / ``status`` / ``down`` and ensure_local_database()."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from agentapi_db.cluster import LocalCluster
from tests.cli_fixtures import assert_clean_error, run_cli, traversable_tmp_dir

_INSERT_ORG = "INSERT INTO organizations (name, slug) VALUES ('Persist', 'persist')"
_COUNT_ORGS = "SELECT count(*) FROM public.organizations"
_SET_APP = "SET LOCAL ROLE agentapi_app"
_LOGIN_ATTRS = (
    "SELECT rolcanlogin, rolinherit, rolsuper, rolbypassrls, "
    "pg_has_role(oid, 'agentapi_app', 'MEMBER'), pg_has_role(oid, 'agentapi_service', 'MEMBER'), "
    "pg_has_role(oid, 'agentapi_owner', 'MEMBER') FROM pg_roles WHERE rolname = 'agentapi_local'"
)


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    with traversable_tmp_dir("agentapi-local-test-") as tmp:
        path = tmp / "pg"
        try:
            yield path
        finally:
            cluster = LocalCluster(path)
            if cluster.is_initialized():
                cluster.stop(mode="immediate")


def test_up_status_down_up_keeps_port_and_data(data_dir: Path) -> None:
    env = {"AGENTAPI_DATA_DIR": str(data_dir)}

    before = run_cli("status", "--json", env=env)
    assert before.code == 0, str(before)
    assert json.loads(before.stdout)["initialized"] is False

    up = run_cli("up", "--json", env=env)
    assert up.code == 0, str(up)
    status = json.loads(up.stdout)
    assert status["running"] is True
    assert status["schema_version"] == status["latest_version"] >= 1
    assert status["schema_up_to_date"] is True
    assert status["row_counts"]["organizations"] == 0
    port = status["port"]
    url = status["url"]
    assert url.startswith("postgresql://agentapi_local@127.0.0.1:")

    # The superuser writes a row; it must survive down/up.
    cluster = LocalCluster(data_dir)
    with psycopg.connect(cluster.url("agentapi"), autocommit=True) as conn:
        conn.execute(_INSERT_ORG)

    down = run_cli("down", env=env)
    assert down.code == 0, str(down)
    stopped = json.loads(run_cli("status", "--json", env=env).stdout)
    assert stopped["running"] is False and stopped["initialized"] is True
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=3).close()

    again = run_cli("up", "--json", env=env)
    assert again.code == 0, str(again)
    restarted = json.loads(again.stdout)
    assert restarted["port"] == port and restarted["url"] == url
    assert restarted["row_counts"]["organizations"] == 1

    text = run_cli("status", env=env)
    assert text.code == 0
    assert str(data_dir) in text.stdout and str(port) in text.stdout
    assert "version" in text.stdout


def test_local_login_sees_nothing_outside_a_context(data_dir: Path) -> None:
    env = {"AGENTAPI_DATA_DIR": str(data_dir)}
    status = json.loads(run_cli("up", "--json", env=env).stdout)
    with psycopg.connect(status["url"]) as conn:
        attrs = conn.execute(_LOGIN_ATTRS).fetchone()
        # login, NOINHERIT, not superuser, not bypassrls; member of app and service, not owner
        assert attrs == (True, False, False, False, True, True, False)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(_COUNT_ORGS)
        conn.rollback()
        conn.execute(_SET_APP)
        # as agentapi_app without app.user_id: RLS shows nothing (the superuser inserted 1 row)
        assert conn.execute(_COUNT_ORGS).fetchone() == (0,)
        conn.rollback()


def test_ensure_local_database_is_idempotent(data_dir: Path) -> None:
    from agentapi_db.local import ensure_local_database

    first = ensure_local_database(data_dir=data_dir)
    second = ensure_local_database(data_dir=data_dir)
    assert first == second
    superuser = ensure_local_database(data_dir=data_dir, superuser=True)
    assert superuser.startswith("postgresql://postgres@")
    verified = run_cli("verify", "--database-url", superuser)
    assert verified.code == 0, str(verified)


def test_missing_postgresql_binaries_say_how_to_install(tmp_path: Path) -> None:
    env = {
        "AGENTAPI_DATA_DIR": str(tmp_path / "never"),
        "AGENTAPI_PG_BINDIR": str(tmp_path / "no-postgres-here"),
    }
    result = run_cli("up", env=env)
    assert_clean_error(result, 3, "apt-get install postgresql")
    assert not (tmp_path / "never" / "pgdata").exists()


def test_up_demo_twice_walks_through_isolation(data_dir: Path) -> None:
    env = {"AGENTAPI_DATA_DIR": str(data_dir)}
    first = run_cli("up", "--demo", "--json", env=env)
    assert first.code == 0, str(first)
    doc = json.loads(first.stdout)
    assert doc["loaded"] is True
    steps = doc["steps"]
    assert len(steps) >= 9 and all(step["ok"] for step in steps), steps
    outcomes = {step["action"]: step["outcome"] for step in steps}
    assert outcomes["read a globex session by its id"].startswith("NotFound")
    assert outcomes["create an org-wide MCP config"].startswith("PermissionDenied")
    assert "Carol" in doc["rendered_prompt"]

    counts_after_first = json.loads(run_cli("status", "--json", env=env).stdout)["row_counts"]
    key_file = data_dir / "demo-encryption.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    assert len(key) == 64

    again = run_cli("up", "--demo", env=env)
    assert again.code == 0, str(again)
    assert "demo data already loaded" in again.stdout
    assert "Tenant isolation" in again.stdout and "✗" not in again.stdout
    status = json.loads(run_cli("status", "--json", env=env).stdout)
    assert status["row_counts"] == counts_after_first  # the second run added nothing
    assert counts_after_first["user_sessions"] >= 5
    for result in (first, again):
        assert key not in result.stdout + result.stderr

    # The demo's commands work against it (through the local login).
    carol = doc["users"]["carol@acme.test"]
    shown = run_cli("prompts", "show", "--user", carol, "--var", "name=C", "--var", "project=p",
                    env=env)  # fmt: skip
    assert shown.code == 0, str(shown)
    assert "Acme" in shown.stdout
