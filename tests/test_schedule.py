"""``agentapi-db schedule`` against a REAL pg_cron (a dedicated cluster preloading it)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from agentapi_db.cluster import LocalCluster
from tests.cli_fixtures import run_cli
from tests.pg import (
    OUTSIDER_LOGIN,
    SCHEMA_SQL,
    SERVICE_LOGIN,
    PgServer,
    TestDatabase,
    create_database,
    ensure_login_roles,
    run_psql_file,
)

CRON_DB = "agentapi_cron"

_CREATE_CRON = "CREATE EXTENSION pg_cron"
_DROP_CRON = "DROP EXTENSION pg_cron"
_JOBS = (
    "SELECT jobname, jobid, schedule, command, database, username FROM cron.job"
    " WHERE starts_with(jobname, 'agentapi-') ORDER BY jobname"
)
_TO_REBOOT = "SELECT cron.alter_job(%s, schedule := '@reboot')"
_RUNS = "SELECT status, return_message FROM cron.job_run_details WHERE jobid = %s"
_SEED = """
INSERT INTO organizations (id, name, slug)
VALUES ('7b4c3f1e-0000-4000-8000-000000000001', 'C', 'c');
INSERT INTO users (id, organization_id, email)
VALUES ('7b4c3f1e-0000-4000-8000-000000000002', '7b4c3f1e-0000-4000-8000-000000000001',
        'u@c.example.com');
INSERT INTO user_sessions (user_id, organization_id, workspace_path, created_at, expires_at)
VALUES ('7b4c3f1e-0000-4000-8000-000000000002', '7b4c3f1e-0000-4000-8000-000000000001', '/w/old',
        now() - interval '2 hours', now() - interval '1 hour'),
       ('7b4c3f1e-0000-4000-8000-000000000002', '7b4c3f1e-0000-4000-8000-000000000001', '/w/live',
        now() - interval '2 hours', now() + interval '1 hour');
"""
_SESSIONS = "SELECT workspace_path FROM user_sessions ORDER BY 1"


@pytest.fixture(scope="module")
def cron_cluster() -> Iterator[LocalCluster]:
    tmp = Path(tempfile.mkdtemp(prefix="agentapi-cron-"))
    tmp.chmod(0o755)
    cluster = LocalCluster(tmp / "cluster", fast=True, pg_cron=True, cron_database=CRON_DB)
    try:
        cluster.init()
        cluster.start()
        server = PgServer(superuser_url=cluster.url(), cluster=cluster)
        create_database(server, CRON_DB)
        run_psql_file(cluster.url(CRON_DB), SCHEMA_SQL)
        ensure_login_roles(server)
        with psycopg.connect(cluster.url(CRON_DB), autocommit=True) as conn:
            conn.execute(_CREATE_CRON)
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def _jobs(cluster: LocalCluster) -> dict[str, tuple[object, ...]]:
    with psycopg.connect(cluster.url(CRON_DB), autocommit=True) as conn:
        return {str(r[0]): tuple(r[1:]) for r in conn.execute(_JOBS)}


@pytest.mark.requires_pg_cron
def test_schedule_registers_jobs_idempotently(cron_cluster: LocalCluster) -> None:
    env = {"AGENTAPI_DATABASE_URL": cron_cluster.url(CRON_DB)}
    dry = run_cli("schedule", "--dry-run", env=env)
    assert dry.code == 0, str(dry)
    assert _jobs(cron_cluster) == {}

    first = run_cli("schedule", env=env)
    assert first.code == 0, str(first)
    jobs = _jobs(cron_cluster)
    assert sorted(jobs) == [
        "agentapi-audit-partitions",
        "agentapi-audit-retention",
        "agentapi-session-cleanup",
        "agentapi-tenant-statistics",
    ]
    assert all(j[3] == CRON_DB and j[4] == "postgres" for j in jobs.values())
    assert "audit_retention(12)" in str(jobs["agentapi-audit-retention"][2])

    again = run_cli("schedule", "--cleanup-schedule", "*/10 * * * *", "--keep", "24", env=env)
    assert again.code == 0, str(again)
    updated = _jobs(cron_cluster)
    assert {k: v[0] for k, v in updated.items()} == {k: v[0] for k, v in jobs.items()}
    assert updated["agentapi-session-cleanup"][1] == "*/10 * * * *"
    assert "audit_retention(24)" in str(updated["agentapi-audit-retention"][2])

    fewer = run_cli("schedule", "--no-retention", "--json", env=env)
    assert fewer.code == 0, str(fewer)
    assert json.loads(fewer.stdout)["unscheduled"] == ["agentapi-audit-retention"]
    assert sorted(_jobs(cron_cluster)) == [
        "agentapi-audit-partitions",
        "agentapi-session-cleanup",
        "agentapi-tenant-statistics",
    ]


@pytest.mark.requires_pg_cron
def test_a_registered_job_really_runs(cron_cluster: LocalCluster) -> None:
    """Run the registered cleanup job (rescheduled to @reboot) through pg_cron itself."""
    env = {"AGENTAPI_DATABASE_URL": cron_cluster.url(CRON_DB)}
    assert run_cli("schedule", env=env).code == 0
    jobid = _jobs(cron_cluster)["agentapi-session-cleanup"][0]
    with psycopg.connect(cron_cluster.url(CRON_DB), autocommit=True) as conn:
        conn.execute(_SEED)
        conn.execute(_TO_REBOOT, (jobid,))
    cron_cluster.restart()
    deadline = time.monotonic() + 60
    runs: list[tuple[object, ...]] = []
    with psycopg.connect(cron_cluster.url(CRON_DB), autocommit=True) as conn:
        while time.monotonic() < deadline:
            runs = [tuple(r) for r in conn.execute(_RUNS, (jobid,))]
            if runs and runs[0][0] in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        sessions = [r[0] for r in conn.execute(_SESSIONS)]
    assert runs == [("succeeded", "1 row")], runs
    assert sessions == ["/w/live"]


@pytest.mark.requires_pg_cron
def test_scheduling_user_must_be_able_to_act_as_service(cron_cluster: LocalCluster) -> None:
    server = PgServer(superuser_url=cron_cluster.url())
    out = run_cli(
        "schedule", env={"AGENTAPI_DATABASE_URL": server.url(CRON_DB, OUTSIDER_LOGIN)}
    )
    assert out.code == 3, str(out)
    assert "agentapi_service" in out.stderr


@pytest.mark.requires_pg_cron
def test_preloaded_but_not_created_gives_a_hint(cron_cluster: LocalCluster) -> None:
    server = PgServer(superuser_url=cron_cluster.url())
    with psycopg.connect(cron_cluster.url(CRON_DB), autocommit=True) as conn:
        conn.execute(_DROP_CRON)
    try:
        out = run_cli("schedule", env={"AGENTAPI_DATABASE_URL": server.url(CRON_DB)})
        assert out.code == 0, str(out)
        assert "CREATE EXTENSION pg_cron" in out.stderr
        assert "agentapi-db sessions cleanup" in out.stdout
    finally:
        with psycopg.connect(cron_cluster.url(CRON_DB), autocommit=True) as conn:
            conn.execute(_CREATE_CRON)


def test_without_pg_cron_prints_crontab_lines(db: TestDatabase) -> None:
    out = run_cli("schedule", "--keep", "6", env={"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN)})
    assert out.code == 0, str(out)
    assert "CREATE EXTENSION" not in out.stderr  # pg_cron is not preloaded on that server
    lines = [line for line in out.stdout.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "*/5 * * * * agentapi-db sessions cleanup",
        "15 3 * * * agentapi-db audit partitions --ahead 3",
        "15 4 * * 0 agentapi-db stats --tune",
        "45 3 * * * agentapi-db audit retention --keep 6",
    ]
