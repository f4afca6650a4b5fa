"""Smoke tests: the server runs, the helpers work, the template holds the contract tables."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from agentapi_db.cluster import STATE_FILE, LocalCluster
from tests.pg import (
    APP_LOGIN,
    APP_ROLE,
    OUTSIDER_LOGIN,
    SERVICE_LOGIN,
    SERVICE_ROLE,
    TABLES,
    PgServer,
    TestDatabase,
    acting,
)


def test_server_is_postgresql_15_or_newer(pg_server: PgServer) -> None:
    with pg_server.admin_connect() as conn:
        row = conn.execute(
            "SELECT version(), current_setting('server_version_num')::int"
        ).fetchone()
    assert row is not None
    version, number = row
    assert str(version).startswith("PostgreSQL ")
    assert number >= 150000


def test_local_cluster_keeps_its_port_across_restarts() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="agentapi-test-cluster-"))
    tmp.chmod(0o755)
    try:
        cluster = LocalCluster(tmp / "c", fast=True)
        cluster.init()
        cluster.start()
        assert cluster.is_running()
        port = cluster.port
        assert json.loads((tmp / "c" / STATE_FILE).read_text())["port"] == port
        cluster.stop()
        assert not cluster.is_running()

        again = LocalCluster(tmp / "c")  # no port given: reuses the saved one
        again.start()
        status = again.status()
        assert status.running
        assert status.port == port
        assert status.pid is not None
        with psycopg.connect(again.dsn()) as conn:
            row = conn.execute("SELECT current_setting('port')::int").fetchone()
        assert row == (port,)
    finally:
        LocalCluster(tmp / "c").destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    assert not (tmp / "c").exists()


def test_acting_is_transaction_local(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.superuser_url) as conn:
        me = conn.info.user
        query = "SELECT current_user, current_setting('app.user_id', true)"
        with acting(conn, "pg_read_all_data", "not-a-uuid"):
            assert conn.execute(query).fetchone() == ("pg_read_all_data", "not-a-uuid")
        row = conn.execute(query).fetchone()
        assert row is not None
        assert row[0] == me
        assert row[1] in (None, "")


def test_template_has_the_contract_tables(db: TestDatabase) -> None:
    with db.connect() as conn:
        kinds = {
            name: conn.execute(
                "SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)", (name,)
            ).fetchone()
            for name in TABLES
        }
    assert {name: kind is not None and kind[0] in ("r", "p") for name, kind in kinds.items()} == {
        name: True for name in TABLES
    }


def test_logins_act_through_their_group_role(db: TestDatabase) -> None:
    query = "SELECT current_user, session_user"
    for login, role in ((APP_LOGIN, APP_ROLE), (SERVICE_LOGIN, SERVICE_ROLE)):
        conn = db.connect(login)
        with acting(conn, role):
            assert conn.execute(query).fetchone() == (role, login)
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (False,)
        conn.rollback()


def test_outsider_cannot_take_a_group_role(db: TestDatabase) -> None:
    # Either the schema denies it CONNECT, or SET ROLE fails: both are fine.
    with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.OperationalError)):
        conn = db.connect(OUTSIDER_LOGIN)
        with acting(conn, APP_ROLE):
            pass
