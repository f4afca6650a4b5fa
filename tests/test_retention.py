"""Audit partitions and retention: whole partitions only, export first, audited, crash-safe."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import psycopg
import pytest

from agentapi_db import opsdb
from agentapi_db.chain import enable_chain, organization_id_for_slug, verify_chain
from agentapi_db.retention import export_path, list_partitions, run_retention
from tests.cli_fixtures import run_cli
from tests.ops_fixtures import seed_tenant, service_events
from tests.pg import APP_LOGIN, SERVICE_LOGIN, SUPERUSER, TestDatabase

_ENSURE_BACK = "SELECT audit_ensure_partitions(0, 30)"
_MONTH_NAME = (
    "SELECT 'audit_logs_' || to_char(date_trunc('month', now()) - %s * interval '1 month',"
    " '\"y\"YYYY\"m\"MM')"
)
_PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'audit_logs'::regclass ORDER BY 1"
)
_RETENTION_EVENTS = (
    "SELECT resource_id, (details->>'events')::int, details->>'exported_to' FROM audit_logs"
    " WHERE action = 'audit.retention.drop_partition' ORDER BY resource_id"
)
_COUNT_EVENTS = "SELECT count(*) FROM audit_logs WHERE action = 'service.event'"
_RETIRED = "SELECT count(*) FROM pg_class WHERE relnamespace = 'agentapi_retired'::regnamespace"
_DETACH_ONLY = "SELECT count(*) FROM audit_retention_detach(%s)"
_AS_SERVICE = "SET LOCAL ROLE agentapi_service"
_AS_APP = "SET LOCAL ROLE agentapi_app"
_CALL_RETENTION = "SELECT audit_retention(12)"
_AUDIT_WRITE = "INSERT INTO audit_logs (action, resource_type) VALUES ('busy', 'test')"


def _month_name(db: TestDatabase, months_ago: int) -> str:
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(_MONTH_NAME, (months_ago,)).fetchone()
    assert row is not None
    return str(row[0])


def _setup(db: TestDatabase) -> None:
    """Partitions 30 months back; 3 events in each month from 1 to 26 months ago."""
    with db.connect(SUPERUSER) as conn:
        conn.execute(_ENSURE_BACK)
        conn.commit()
    tenant = seed_tenant(db, "ret")
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        enable_chain(conn, tenant.org_id)
    for months in range(26, 0, -1):  # oldest first, as time would have written them
        service_events(db, tenant, 3, age=f"{months} months")


def test_retention_exports_then_drops_whole_partitions(db: TestDatabase, tmp_path: Path) -> None:
    _setup(db)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        before = {p.name for p in list_partitions(conn)}
        dropped = run_retention(conn, 12, export_dir=tmp_path)
        after = {p.name for p in list_partitions(conn)}
    oldest_kept = _month_name(db, 12)
    names = [d.name for d in dropped]
    assert names == sorted(n for n in before if n.startswith("audit_logs_y") and n < oldest_kept)
    assert len(names) == 30 - 12
    assert after == before - set(names)
    assert oldest_kept in after and "audit_logs_default" in after
    # Months 13..26 ago held 3 events each; older partitions were empty.
    assert sum(d.events for d in dropped) == 3 * (26 - 12)
    for d in dropped:
        path = export_path(tmp_path, d.name)
        assert d.exported_to == path
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = [json.loads(line) for line in fh]
        assert len(lines) == d.events
        for event in lines:
            assert event["action"] == "service.event"
            assert d.range_start.isoformat()[:7] <= event["timestamp"][:7]
    assert not list(tmp_path.glob("*.partial"))
    with db.connect(SUPERUSER) as conn:
        audited = conn.execute(_RETENTION_EVENTS).fetchall()
        left = conn.execute(_COUNT_EVENTS).fetchone()
        retired = conn.execute(_RETIRED).fetchone()
    assert [a[0] for a in audited] == names
    assert all(a[2] == str(export_path(tmp_path, a[0])) for a in audited)
    assert sum(a[1] for a in audited) == 3 * 14
    assert left == (3 * 12,)
    assert retired == (0,)
    # A second run has nothing to do.
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        assert run_retention(conn, 12, export_dir=tmp_path) == []


def test_chain_still_verifies_after_retention(db: TestDatabase) -> None:
    _setup(db)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        run_retention(conn, 6)
        report = verify_chain(conn, organization_id_for_slug(conn, "ret"), "ret")
    assert report.ok, report.broken
    assert report.base_seq == 1 + 3 * 20  # enrolment event + events 26..7 months ago
    assert report.events_checked == 3 * 6


def test_interrupted_retention_is_finished_by_the_next_run(
    db: TestDatabase, tmp_path: Path
) -> None:
    """A crash after detaching leaves retired tables; the next run exports and drops them."""
    _setup(db)
    with db.connect(SERVICE_LOGIN) as conn:
        conn.execute(_AS_SERVICE)
        detached = conn.execute(_DETACH_ONLY, (24,)).fetchone()
        conn.commit()
    assert detached == (30 - 24,)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        dropped = run_retention(conn, 24, export_dir=tmp_path)
    assert len(dropped) == 6
    assert sum(d.events for d in dropped) == 3 * (26 - 24)
    assert all(export_path(tmp_path, d.name).is_file() for d in dropped)


def test_retention_is_for_the_service_only(db: TestDatabase) -> None:
    with db.connect(APP_LOGIN) as conn:
        conn.execute(_AS_APP)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(_CALL_RETENTION)


def test_keep_must_be_positive(db: TestDatabase) -> None:
    out = run_cli("audit", "retention", "--keep", "0", env={"AGENTAPI_DATABASE_URL": db.url()})
    assert out.code == 2
    with db.connect(SERVICE_LOGIN) as conn:
        conn.execute(_AS_SERVICE)
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute(_DETACH_ONLY, (0,))


def test_cli_partitions_and_retention(db: TestDatabase, tmp_path: Path) -> None:
    env = {"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN)}
    out = run_cli("audit", "partitions", "--ahead", "6", "--back", "14", "--json", env=env)
    assert out.code == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["created"] > 0
    names = {p["name"] for p in data["partitions"]}
    assert _month_name(db, 14) in names and _month_name(db, -6) in names
    again = run_cli("audit", "partitions", "--ahead", "6", "--back", "14", "--json", env=env)
    assert json.loads(again.stdout)["created"] == 0
    out = run_cli("audit", "retention", "--keep", "12", "--export-dir", str(tmp_path), env=env)
    assert out.code == 0, out.stdout + out.stderr
    assert "2 partition(s) dropped" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{_month_name(db, m)}.jsonl.gz" for m in (13, 14)
    )


def test_retention_gives_up_on_a_busy_audit_log_and_changes_nothing(db: TestDatabase) -> None:
    _setup(db)
    env = {"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN)}
    with db.connect(SERVICE_LOGIN) as busy:  # a writer whose transaction is still open
        busy.execute(_AS_SERVICE)
        busy.execute(_AUDIT_WRITE)
        started = time.monotonic()
        out = run_cli("audit", "retention", "--keep", "12", env=env)
        waited = time.monotonic() - started
        busy.rollback()
    assert out.code == 1, str(out)
    assert "lock timeout" in out.stderr
    assert waited < 15
    with db.connect(SUPERUSER) as conn:
        assert conn.execute(_RETIRED).fetchone() == (0,)
        assert len(conn.execute(_PARTITIONS).fetchall()) == 31 + 3 + 1  # nothing detached
    assert run_cli("audit", "retention", "--keep", "12", env=env).code == 0


_RETIRED_UPDATE = "UPDATE agentapi_retired.{} SET action = 'rewritten'"
_RETIRED_DELETE = "DELETE FROM agentapi_retired.{}"


@pytest.mark.parametrize("statement", [_RETIRED_UPDATE, _RETIRED_DELETE], ids=["update", "delete"])
def test_retired_partitions_stay_append_only_until_dropped(
    db: TestDatabase, statement: str
) -> None:
    """DETACH drops the row trigger cloned from audit_logs; retention puts it back.

    Even a superuser (who bypasses RLS and grants) cannot change a retired event.
    """
    _setup(db)
    with db.connect(SUPERUSER) as conn:
        assert conn.execute(_DETACH_ONLY, (12,)).fetchone() == (18,)
        conn.commit()
        name = _month_name(db, 13)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(psycopg.sql.SQL(statement).format(psycopg.sql.Identifier(name)))
        conn.rollback()
        # ...and agentapi_service (no BYPASSRLS) still reads it for the export.
        conn.execute(_AS_SERVICE)
        count = conn.execute(
            psycopg.sql.SQL("SELECT count(*) FROM agentapi_retired.{}").format(
                psycopg.sql.Identifier(name)
            )
        ).fetchone()
        assert count == (3,)
