"""``agentapi-db stats``, ``backup`` and ``restore --verify`` against real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from agentapi_db import backup as backup_module
from agentapi_db import migrations
from agentapi_db.keys import EncryptionKey
from agentapi_db.stats import TENANT_TABLES
from tests.cli_fixtures import run_cli
from tests.ops_fixtures import app_events, seed_encrypted, seed_tenant, service_events
from tests.pg import SERVICE_LOGIN, SUPERUSER, TestDatabase, drop_database

_DEAD_TUPLES = "UPDATE mcp_configurations SET enabled = NOT enabled"
_FLUSH = "SELECT pg_stat_force_next_flush()"
_DATABASES = "SELECT datname FROM pg_database WHERE datname LIKE 'agentapi_restore_check_%'"
_COUNT_IN = "SELECT count(*) FROM mcp_oauth_tokens"
# Only the n_distinct options: PostgreSQL 15.20 also keeps its own (pg_attver=...) there.
_N_DISTINCT_OF_CONFIGS = """
SELECT array_agg(o ORDER BY o) FROM pg_attribute AS a, unnest(a.attoptions) AS o
 WHERE a.attrelid = 'mcp_configurations'::regclass AND a.attname = 'organization_id'
   AND o LIKE 'n_distinct%'
"""


def _populated(db: TestDatabase) -> None:
    tenant = seed_tenant(db, "ops")
    seed_encrypted(db, tenant, EncryptionKey.generate(), bearer=30, oauth=20)
    app_events(db, tenant.member_id, 5)
    service_events(db, tenant, 7)


def test_stats_reports_sizes_dead_tuples_and_index_usage(db: TestDatabase) -> None:
    _populated(db)
    with db.connect(SUPERUSER) as conn:
        conn.execute(_DEAD_TUPLES)
        conn.commit()
        conn.execute(_FLUSH)
        conn.commit()
    out = run_cli("stats", "--json", env={"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN)})
    assert out.code == 0, str(out)
    data = json.loads(out.stdout)
    tables = {f"{t['schema']}.{t['table']}": t for t in data["tables"]}
    configs = tables["public.mcp_configurations"]
    assert configs["dead_tuples"] >= 50 and configs["live_tuples"] >= 50
    assert configs["total_bytes"] >= configs["table_bytes"] > 0
    assert "last_autovacuum" in configs and "last_analyze" in configs
    indexes = {i["index"]: i for i in data["indexes"]}
    assert indexes["users_organization_id_email_key"]["unique"] is True
    assert indexes["users_organization_id_email_key"]["unused"] is False
    assert all(not i["unique"] and i["scans"] == 0 for i in indexes.values() if i["unused"])
    assert set(data["unused_indexes"]) == {
        f"{i['schema']}.{i['index']}" for i in data["indexes"] if i["unused"]
    }
    text = run_cli("stats", env={"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN)})
    assert text.code == 0, str(text)
    assert "public.mcp_configurations" in text.stdout and "unused index" in text.stdout


def test_stats_tune_pins_the_tenant_estimate(db: TestDatabase) -> None:
    _populated(db)
    seed_encrypted(db, seed_tenant(db, "ops2"), EncryptionKey.generate(), bearer=10, oauth=0)
    env = {"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN)}
    out = run_cli("stats", "--tune", "--json", env=env)
    assert out.code == 0, str(out)
    tuned = {t["table"]: t for t in json.loads(out.stdout)["tuned"]}
    assert list(tuned) == list(TENANT_TABLES)
    configs = tuned["mcp_configurations"]
    assert configs["rows"] == 60 and configs["tenants"] == 2
    assert configs["effective_tenants"] == round(60**2 / (50**2 + 10**2), 1)
    assert tuned["audit_logs"]["tenants"] == 1  # one tenant: nothing pinned
    assert tuned["audit_logs"]["effective_tenants"] is None
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(_N_DISTINCT_OF_CONFIGS).fetchone()
    assert row is not None and row[0] == [f"n_distinct={configs['effective_tenants']}"]
    text = run_cli("stats", "--tune", env=env)
    assert text.code == 0, str(text)
    assert "mcp_configurations" in text.stdout and "effective tenants" in text.stdout


def test_backup_then_restore_verify(db: TestDatabase, tmp_path: Path) -> None:
    _populated(db)
    migrations.migrate(db.url(SUPERUSER), baseline=True)
    env = {"AGENTAPI_DATABASE_URL": db.url(SUPERUSER)}
    dump = tmp_path / "agentapi.dump"
    out = run_cli("backup", str(dump), "--json", env=env)
    assert out.code == 0, str(out)
    assert dump.is_file() and dump.read_bytes()[:5] == b"PGDMP"
    manifest = json.loads(Path(str(dump) + ".manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["row_counts"]["public.mcp_configurations"] == 50
    assert manifest["row_counts"]["public.audit_logs"] == 12
    assert "password" not in json.dumps(manifest)

    ok = run_cli("restore", str(dump), "--verify", env=env)
    assert ok.code == 0, str(ok)
    assert "restore verified" in ok.stdout
    # The scratch database is gone.
    with db.connect(SUPERUSER) as conn:
        assert conn.execute(_DATABASES).fetchall() == []

    # A manifest that disagrees with the dump is a failed verification.
    manifest["row_counts"]["public.mcp_oauth_tokens"] = 21
    manifest["schema_version"] = 2
    Path(str(dump) + ".manifest.json").write_text(json.dumps(manifest))
    bad = run_cli("restore", str(dump), "--verify", "--json", env=env)
    assert bad.code == 1, str(bad)
    problems = json.loads(bad.stdout)["mismatches"]
    assert problems == [
        "schema version 1, expected 2",
        "public.mcp_oauth_tokens: 20 rows, expected 21",
    ]


def test_restore_into_keeps_the_database(db: TestDatabase, tmp_path: Path) -> None:
    _populated(db)
    env = {"AGENTAPI_DATABASE_URL": db.url(SUPERUSER)}
    dump = tmp_path / "b.dump"
    assert run_cli("backup", str(dump), env=env).code == 0
    target = f"{db.name}_copy"
    try:
        out = run_cli("restore", str(dump), "--into", target, env=env)
        assert out.code == 0, str(out)
        with psycopg.connect(db.server.url(target)) as conn:
            assert conn.execute(_COUNT_IN).fetchone() == (20,)
        again = run_cli("restore", str(dump), "--into", target, env=env)
        assert again.code == 2 and "already exists" in again.stderr
    finally:
        drop_database(db.server, target)


def test_corrupt_backup_fails_cleanly_and_leaves_nothing(db: TestDatabase, tmp_path: Path) -> None:
    env = {"AGENTAPI_DATABASE_URL": db.url(SUPERUSER)}
    dump = tmp_path / "c.dump"
    assert run_cli("backup", str(dump), env=env).code == 0
    dump.write_bytes(dump.read_bytes()[: len(dump.read_bytes()) // 2])
    out = run_cli("restore", str(dump), "--verify", env=env)
    assert out.code == 1, str(out)
    assert "pg_restore failed" in out.stderr and "Traceback" not in out.stderr
    with db.connect(SUPERUSER) as conn:
        assert conn.execute(_DATABASES).fetchall() == []
    missing = run_cli("restore", str(tmp_path / "nope.dump"), "--verify", env=env)
    assert missing.code == 2, str(missing)
    neither = run_cli("restore", str(dump), env=env)
    assert neither.code == 2, str(neither)


def test_password_reaches_the_tools_through_the_environment_only() -> None:
    conninfo, env = backup_module._split_password(
        "postgresql://admin:s3cr%40t@db.example.com:6543/agentapi?sslmode=require"
    )
    assert "s3cr" not in conninfo and "password" not in conninfo
    assert "db.example.com" in conninfo and "sslmode=require" in conninfo
    assert env["PGPASSWORD"] == "s3cr@t"
