"""Point-in-time recovery with the real pgBackRest, through the CLI.

Write tenants' data, note the time, write more including a destructive mistake
(an organization deleted), restore to the noted time into a new data dir: the
data is exactly as it was then.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agentapi_db.cluster import LocalCluster
from agentapi_db.db import Database
from agentapi_db.ha.pitr import PGBACKREST_HINT
from agentapi_db.local import LOCAL_DATABASE, ensure_local_database, local_context_key
from tests.ha_fixtures import ha_dir

pytestmark = pytest.mark.requires_pgbackrest

# Everything a tenant owns that the snapshot compares, row by row.
_SNAPSHOT = {
    "organizations": "SELECT id, slug, name FROM organizations ORDER BY id",
    "users": "SELECT id, organization_id, email FROM users ORDER BY id",
    "user_sessions": "SELECT id, user_id, workspace_path FROM user_sessions ORDER BY id",
    "audit_logs": "SELECT count(*) FROM audit_logs",
}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentapi_db.cli", *args],
        capture_output=True, text=True, check=False, timeout=600, env=dict(os.environ),
    )


def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {name: conn.execute(query).fetchall() for name, query in _SNAPSHOT.items()}


@pytest.fixture(scope="module")
def source() -> Iterator[LocalCluster]:
    if shutil.which("pgbackrest") is None:
        pytest.fail(PGBACKREST_HINT)
    data_dir = ha_dir("pitr").with_name("pg")
    ensure_local_database(data_dir=data_dir)
    cluster = LocalCluster(data_dir)
    try:
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def _provision(db: Database, slug: str, sessions: int) -> None:
    with db.as_service() as tx:
        _, admin = tx.organizations.provision(
            name=slug.title(), slug=slug, admin_email=f"admin@{slug}.test"
        )
    for i in range(sessions):
        with db.as_user(admin.id) as tx:
            tx.sessions.create(workspace_path=f"/{slug}/{i}")


def test_restore_to_a_time_brings_back_exactly_that_data(source: LocalCluster) -> None:
    data_dir = str(source.data_dir)
    app_url = source.url(LOCAL_DATABASE, user="agentapi_local")
    superuser_url = source.url(LOCAL_DATABASE)
    # The local database makes a context key: without it the app login acts as nobody.
    key = local_context_key(source.data_dir)
    assert key is not None
    db = Database(app_url, min_size=1, max_size=2, context_key=key)
    try:
        _provision(db, "acme", 3)
        result = _cli("pitr", "backup", "--data-dir", data_dir, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["type"] == "full"
        _provision(db, "globex", 2)
        expected = _snapshot(superuser_url)
        time.sleep(1.0)
        with psycopg.connect(superuser_url) as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            noted = row[0]
        time.sleep(1.0)
        _provision(db, "initech", 2)
        with psycopg.connect(superuser_url) as conn:  # the destructive mistake
            conn.execute("DELETE FROM organizations WHERE slug = 'acme'")
    finally:
        db.close()
    after = _snapshot(superuser_url)
    assert after != expected
    result = _cli("pitr", "backup", "--data-dir", data_dir, "--type", "diff", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["type"] == "diff"

    listing = _cli("pitr", "list", "--data-dir", data_dir, "--json")
    assert listing.returncode == 0, listing.stderr
    info = json.loads(listing.stdout)
    assert [b["type"] for b in info["backups"]] == ["full", "diff"]
    assert info["recoverable"]["from"] is not None and info["wal"]["max"] is not None

    into = source.data_dir.parent / "restored"
    result = _cli(
        "pitr", "restore", "--data-dir", data_dir, "--to", noted.isoformat(),
        "--into", str(into), "--json",
    )
    assert result.returncode == 0, result.stderr
    restored_info = json.loads(result.stdout)
    restored = LocalCluster(into)
    try:
        got = _snapshot(restored_info["superuser_url"])
        assert got == expected
        slugs = {row[1] for row in got["organizations"]}
        assert slugs == {"acme", "globex"}  # acme is back, initech never happened
        assert len(got["user_sessions"]) == 5
        # the source is untouched
        assert _snapshot(superuser_url) == after
        with psycopg.connect(restored_info["superuser_url"]) as conn:
            row = conn.execute("SHOW archive_mode").fetchone()
            assert row == ("off",)
    finally:
        restored.destroy()


def test_restore_refuses_bad_input(source: LocalCluster, tmp_path: Path) -> None:
    result = _cli("pitr", "restore", "--data-dir", str(source.data_dir), "--to", "yesterday",
                  "--into", str(tmp_path / "x"))
    assert result.returncode == 2 and "ISO 8601" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli("pitr", "backup", "--data-dir", str(source.data_dir), "--type", "weekly")
    assert result.returncode == 2 and "--type" in result.stderr


def test_schedule_prints_backup_timers(source: LocalCluster) -> None:
    config = source.data_dir.parent / "pgbackrest" / "pgbackrest.conf"
    result = _cli("schedule", "--backups", str(config), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["backups"]
    cron = [line for line in data["cron_d"] if not line.startswith(("#", "SHELL", "PATH"))]
    assert cron == [
        f"30 1 * * 0 postgres pgbackrest --config={config} --stanza=agentapi backup --type=full",
        f"30 1 * * 1-6 postgres pgbackrest --config={config} --stanza=agentapi backup --type=diff",
    ]
    assert "OnCalendar=Sun *-*-* 01:30:00" in data["systemd"]["agentapi-db-backup-full.timer"]
    assert "User=postgres" in data["systemd"]["agentapi-db-backup-diff.service"]
    # the printed command is one pgBackRest runs: a diff backup against the test's repo
    listed = json.loads(_cli("pitr", "list", "--data-dir", str(source.data_dir), "--json").stdout)
    if not listed["backups"]:  # run alone: a diff needs a full backup first
        assert _cli("pitr", "backup", "--data-dir", str(source.data_dir)).returncode == 0
    argv = cron[1].split(" postgres ", 1)[1].split()
    run = subprocess.run(
        ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups", *argv]
        if os.geteuid() == 0 else argv,
        capture_output=True, text=True, check=False, timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        cwd=source.data_dir.parent,
    )
    assert run.returncode == 0, run.stderr
    info = _cli("pitr", "list", "--data-dir", str(source.data_dir), "--json")
    assert json.loads(info.stdout)["backups"][-1]["type"] == "diff"
