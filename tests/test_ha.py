"""The HA pair under pg_auto_failover, and the library across failovers (real engine).

Order matters: the module shares one pair (``ha_pair``); every test that kills or
switches a node ends with a healthy primary + secondary again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from uuid import UUID

import psycopg
import pytest

from agentapi_db.db import AsyncDatabase, Database
from agentapi_db.errors import DatabaseUnavailable, PermissionDenied, Unavailable
from agentapi_db.ha.engine import HaCluster, multi_host_url
from agentapi_db.local import LOCAL_LOGIN
from agentapi_db.migrations import migrate
from agentapi_db.retry import retry
from tests.access_fixtures import Seeded, seed
from tests.ha_fixtures import (
    Writer,
    ha_pair,
    is_in_recovery,
    kill_node,
    longest_pause,
    missing_commits,
    only_unavailable,
    restore_pair,
    resume_after,
)
from tests.pg import IDENTITY_MODES, PgServer, TestDatabase, ensure_login_roles, set_identity_mode
from tests.test_access_matrix import SELECT_CASES, check_case

pytestmark = pytest.mark.requires_pg_auto_failover

__all__ = ["ha_pair"]

RESUME_TARGET_S = 10.0
TENANTS = 3


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentapi_db.cli", *args],
        capture_output=True, text=True, check=False, timeout=120, env=dict(os.environ),
    )


@pytest.fixture(scope="module")
def db(ha_pair: HaCluster) -> Iterator[Database]:
    database = Database(
        ha_pair.url(), read_url=ha_pair.read_url(), min_size=TENANTS, max_size=TENANTS + 2,
        timeout=20.0,
    )
    yield database
    database.close()


@pytest.fixture(scope="module")
def tenants(db: Database) -> list[UUID]:
    users: list[UUID] = []
    for i in range(TENANTS):
        with db.as_service() as tx:
            _, admin = tx.organizations.provision(
                name=f"HA {i}", slug=f"ha-{i}", admin_email=f"a{i}@ha.test"
            )
        users.append(admin.id)
    return users


def _under_load(
    cluster: HaCluster, db: Database, tenants: list[UUID], action: str
) -> tuple[float, list[Writer]]:
    """Writers of every tenant commit; ``action`` happens; seconds until all commit again."""
    writers = [Writer(db, user) for user in tenants]
    for writer in writers:
        writer.start()
    time.sleep(1.5)
    status = cluster.status()
    primary = status.node("primary")
    t0 = time.monotonic()
    if action == "kill":
        kill_node(primary)
    elif action == "kill-postmaster":
        assert primary.pid is not None
        os.kill(primary.pid, 9)
    else:
        cluster.switchover()
    deadline = t0 + 30
    while time.monotonic() < deadline and resume_after(writers, t0) == float("inf"):
        time.sleep(0.1)
    time.sleep(1.0)  # a few more commits after the resume
    for writer in writers:
        writer.join()
    if action == "switchover":  # no kill instant: the outage is the longest pause
        return longest_pause(writers, t0), writers
    return resume_after(writers, t0), writers


def _report(name: str, seconds: float) -> None:
    sys.stderr.write(f"\n[ha] {name}: writes resumed after {seconds:.2f} s\n")


# ---------------------------------------------------------------------------


def test_status_json_has_the_issue_shape(ha_pair: HaCluster) -> None:
    result = _cli("ha", "status", "--data-dir", str(ha_pair.data_dir), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["url"].endswith("target_session_attrs=read-write&connect_timeout=2")
    assert "prefer-standby" in data["read_url"]
    assert data["superuser_url"].startswith("postgresql://postgres@")
    roles = sorted(node["role"] for node in data["nodes"])
    assert roles == ["primary", "standby"]
    for node in data["nodes"]:
        assert set(node) >= {"name", "role", "port", "pid", "agent_pid"}
        for pid in (node["pid"], node["agent_pid"]):
            assert isinstance(pid, int) and os.path.exists(f"/proc/{pid}")
    # the login works, and the schema is migrated on the primary
    with psycopg.connect(data["url"]) as conn:
        row = conn.execute("SELECT current_user, pg_is_in_recovery()").fetchone()
        assert row == (LOCAL_LOGIN, False)
    with psycopg.connect(data["superuser_url"]) as conn:
        row = conn.execute("SELECT count(*) FROM agentapi_meta.schema_migrations").fetchone()
        assert row is not None and row[0] >= 1
    # replication is synchronous
    primary = next(n for n in data["nodes"] if n["role"] == "primary")
    with psycopg.connect(host="127.0.0.1", port=primary["port"], user="postgres") as conn:
        row = conn.execute("SHOW synchronous_standby_names").fetchone()
        assert row is not None and "pgautofailover_standby" in row[0]


def test_read_only_blocks_go_to_the_standby(db: Database, tenants: list[UUID]) -> None:
    with db.as_user(tenants[0], read_only=True) as tx:
        row = tx.connection.execute("SELECT pg_is_in_recovery()").fetchone()
        assert row == (True,)
    with pytest.raises(PermissionDenied, match="read_only"), db.as_user(
        tenants[0], read_only=True
    ) as tx:
        tx.sessions.create(workspace_path="/ro")


def test_async_database_routes_and_refuses_alike(ha_pair: HaCluster, tenants: list[UUID]) -> None:
    standby_url = multi_host_url([ha_pair.status().node("standby").port], LOCAL_LOGIN, "any")

    async def scenario() -> None:
        async with AsyncDatabase(ha_pair.url(), read_url=ha_pair.read_url()) as adb:
            async with adb.as_user(tenants[2], read_only=True) as tx:
                cur = await tx.connection.execute("SELECT pg_is_in_recovery()")
                assert await cur.fetchone() == (True,)
            async with adb.as_user(tenants[2]) as tx:
                cur = await tx.connection.execute("SELECT pg_is_in_recovery()")
                assert await cur.fetchone() == (False,)
        async with AsyncDatabase(standby_url, min_size=1, max_size=1, timeout=2.0) as guarded:
            with pytest.raises(DatabaseUnavailable):
                async with guarded.as_service() as tx:
                    await tx.connection.execute("SELECT 1")

    asyncio.run(scenario())


def test_pool_never_lends_a_standby(ha_pair: HaCluster) -> None:
    standby = ha_pair.status().node("standby")
    url = multi_host_url([standby.port], LOCAL_LOGIN, "any")
    # the read-write pool's check refuses the standby's connections...
    guarded = Database(url, min_size=1, max_size=1, timeout=2.0)
    try:
        with pytest.raises(DatabaseUnavailable), guarded.as_service() as tx:
            tx.connection.execute("SELECT 1")
    finally:
        guarded.close()
    # ...and without the check, a write there is a typed, retryable error
    unguarded = Database(url, min_size=1, max_size=1, check_connections=False)
    try:
        with pytest.raises(Unavailable) as info, unguarded.as_service() as tx:
            tx.organizations.provision(name="X", slug="x-ro", admin_email="x@ro.test")
        assert info.value.retryable and info.value.sqlstate == "25006"
    finally:
        unguarded.close()


@pytest.mark.parametrize("mode", IDENTITY_MODES)
def test_rls_read_cells_hold_on_the_standby(ha_pair: HaCluster, mode: str) -> None:
    """The access matrix's read cells, run against the standby of a seeded database."""
    status = ha_pair.status()
    primary, standby = status.node("primary"), status.node("standby")
    name = f"matrix_{mode}"
    primary_server = PgServer(f"postgresql://postgres@127.0.0.1:{primary.port}/postgres")
    with primary_server.admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(primary_server.url(name))
    ensure_login_roles(primary_server)
    on_primary = TestDatabase(server=primary_server, name=name)
    set_identity_mode(on_primary, mode)
    seeded = seed(on_primary)
    with psycopg.connect(primary_server.url(name)) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        lsn = row[0]
    standby_server = PgServer(f"postgresql://postgres@127.0.0.1:{standby.port}/postgres")
    on_standby = TestDatabase(server=standby_server, name=name)
    deadline = time.monotonic() + 30
    while True:
        with psycopg.connect(standby_server.url(name)) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)
            ).fetchone()
        assert row is not None and row[0] is True
        if row[1]:
            break
        assert time.monotonic() < deadline, "the standby did not replay the seed"
        time.sleep(0.1)
    there = Seeded(db=on_standby, key=seeded.key, ciphertext=seeded.ciphertext)
    failures: list[str] = []
    try:
        for case in SELECT_CASES:
            try:
                check_case(there, case)
            except AssertionError as exc:
                failures.append(f"{case.id}: {exc}")
    finally:
        on_standby.close_all()
        on_primary.close_all()
    assert not failures, "\n".join(failures)
    assert len(SELECT_CASES) > 20


def test_sigkill_of_the_primary_node_loses_no_commit(
    ha_pair: HaCluster, db: Database, tenants: list[UUID]
) -> None:
    before = ha_pair.status().node("primary").name
    resumed, writers = _under_load(ha_pair, db, tenants, "kill")
    _report("SIGKILL agent + postmaster of the primary", resumed)
    assert resumed < RESUME_TARGET_S, f"writes resumed after {resumed:.1f} s"
    assert not only_unavailable(writers), "errors other than Unavailable were raised"
    assert missing_commits(ha_pair, writers) == []
    assert sum(len(w.committed) for w in writers) > 3 * TENANTS
    after = ha_pair.status()
    assert after.node("primary").name != before
    # the old primary comes back, as a standby of the new one
    status = restore_pair(ha_pair)
    old = next(n for n in status.nodes if n.name == before)
    assert old.role == "standby" and is_in_recovery(old.port)
    assert missing_commits(ha_pair, writers) == []


def test_postmaster_killed_alone_is_restarted_or_failed_over(
    ha_pair: HaCluster, db: Database, tenants: list[UUID]
) -> None:
    resumed, writers = _under_load(ha_pair, db, tenants, "kill-postmaster")
    _report("SIGKILL of the primary's postmaster alone", resumed)
    assert resumed < RESUME_TARGET_S, f"writes resumed after {resumed:.1f} s"
    assert not only_unavailable(writers)
    assert missing_commits(ha_pair, writers) == []
    restore_pair(ha_pair)


def test_switchover_and_retry(ha_pair: HaCluster, db: Database, tenants: list[UUID]) -> None:
    before = ha_pair.status().node("primary").name
    resumed, writers = _under_load(ha_pair, db, tenants, "switchover")
    _report("switchover (longest pause between two commits)", resumed)
    assert resumed < RESUME_TARGET_S
    assert not only_unavailable(writers)
    assert missing_commits(ha_pair, writers) == []
    status = ha_pair.wait_pair()
    assert status.node("primary").name != before
    assert is_in_recovery(status.node("standby").port)

    # a block marked safe to retry runs through a second switchover
    def read_count() -> int:
        with db.as_user(tenants[1]) as tx:
            row = tx.connection.execute("SELECT count(*) FROM user_sessions").fetchone()
            return int(row[0]) if row else -1

    results: list[int] = []

    def reader() -> None:
        end = time.monotonic() + 8
        while time.monotonic() < end:
            results.append(retry(read_count, timeout=20))
            time.sleep(0.02)

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.5)
    ha_pair.switchover()
    thread.join(timeout=60)
    assert results and all(n > 0 for n in results)
