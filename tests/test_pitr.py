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
from agentapi_db.local import LOCAL_DATABASE, ensure_local_database
from tests.ha_fixtures import ha_dir

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
    db = Database(app_url, min_size=1, max_size=2)
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
