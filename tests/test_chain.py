"""The per-organization audit hash chain: linking, tamper detection, CLI."""

from __future__ import annotations

import threading
from typing import LiteralString
from uuid import UUID

import psycopg
import pytest

from agentapi_db import opsdb
from agentapi_db.chain import ChainReport, enable_chain, verify_chain
from tests.cli_fixtures import run_cli
from tests.ops_fixtures import Tenant, app_events, seed_tenant, service_events
from tests.pg import APP_LOGIN, SERVICE_LOGIN, SUPERUSER, TestDatabase


@pytest.fixture
def db(identity_fn_db: TestDatabase) -> TestDatabase:
    """Every case in both identity-helper modes (the chain trigger asks organization_id())."""
    return identity_fn_db


# Tampering happens as the superuser with triggers off (session_replication_role =
# replica), which is exactly what the chain must expose.
_REPLICA = "SET session_replication_role = replica"
_TAMPER_DETAILS = (
    "UPDATE audit_logs SET details = '{\"n\": -1}' WHERE organization_id = %s AND chain_seq = %s"
    " RETURNING id"
)
_TAMPER_HASH = (
    "UPDATE audit_logs SET chain_hash = sha256('forged') WHERE organization_id = %s"
    " AND chain_seq = %s RETURNING id"
)
_SNEAK_IN = (
    "INSERT INTO audit_logs (\"timestamp\", organization_id, action, resource_type)"
    " VALUES (now() + interval '5 seconds', %s, 'sneaked', 'x') RETURNING id"
)
_DELETE_SEQ = "DELETE FROM audit_logs WHERE organization_id = %s AND chain_seq = %s RETURNING id"
_CHAIN = (
    "SELECT chain_seq FROM audit_logs WHERE organization_id = %s AND chain_seq IS NOT NULL"
    " ORDER BY chain_seq"
)
_UNCHAINED = "SELECT count(*) FROM audit_logs WHERE organization_id = %s AND chain_seq IS NULL"
_FORGE_AS_SERVICE = (
    "INSERT INTO audit_logs (organization_id, action, resource_type, chain_seq, chain_hash)"
    " VALUES (%s, 'forged', 'x', 999, sha256('x')) RETURNING chain_seq, chain_hash"
)
_SERVICE_EVENT = (
    "INSERT INTO audit_logs (organization_id, action, resource_type) VALUES (%s, 'one', 'x')"
    " RETURNING chain_seq"
)
_DROP_TRIGGER = "DROP TRIGGER audit_logs_chain ON audit_logs"
_CHAIN_TRIGGERS = (
    "SELECT count(*) FROM pg_trigger AS t JOIN pg_partition_tree('audit_logs') AS p"
    " ON p.relid = t.tgrelid WHERE t.tgname LIKE 'audit_logs_chain%%'"
)
_TREE_SIZE = "SELECT count(*) FROM pg_partition_tree('audit_logs')"
_AS_SERVICE = "SET LOCAL ROLE agentapi_service"
_REPEATABLE_READ = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
_SNAPSHOT_NOW = "SELECT count(*) FROM audit_logs"
_APP_FORGE = (
    "INSERT INTO audit_logs (user_id, organization_id, action, resource_type, chain_seq)"
    " VALUES (%s, %s, 'x', 'y', 1)"
)
_AS_APP = "SELECT set_config('role', 'agentapi_app', true), set_config('app.user_id', %s, true)"


def _enrolled(db: TestDatabase, slug: str) -> Tenant:
    tenant = seed_tenant(db, slug)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        assert enable_chain(conn, tenant.org_id) is True
        assert enable_chain(conn, tenant.org_id) is False
    return tenant


def _tamper(db: TestDatabase, stmt: LiteralString, org: UUID, seq: int) -> UUID:
    with db.connect(SUPERUSER) as conn:
        conn.execute(_REPLICA)
        row = conn.execute(stmt, (org, seq)).fetchone()
        conn.commit()
    assert row is not None
    event_id: UUID = row[0]
    return event_id


def _one(db: TestDatabase, stmt: LiteralString, params: tuple[object, ...]) -> int:
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(stmt, params).fetchone()
    assert row is not None
    return int(row[0])


def _verify(db: TestDatabase, tenant: Tenant) -> ChainReport:
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        return verify_chain(conn, tenant.org_id, tenant.slug)


def test_events_are_chained_and_verify(db: TestDatabase) -> None:
    tenant = _enrolled(db, "chained")
    other = seed_tenant(db, "plain")
    app_events(db, tenant.member_id, 20)
    service_events(db, tenant, 30)
    app_events(db, other.member_id, 5)
    with db.connect(SUPERUSER) as conn:
        seqs = [r[0] for r in conn.execute(_CHAIN, (tenant.org_id,))]
        unchained = conn.execute(_UNCHAINED, (other.org_id,)).fetchone()
    assert seqs == list(range(1, 52))  # the enrolment event, then 50
    assert unchained == (5,)
    report = _verify(db, tenant)
    assert report.ok, report.broken
    assert (report.events_checked, report.last_seq) == (51, 51)


def test_nobody_supplies_chain_values(db: TestDatabase) -> None:
    tenant = _enrolled(db, "forge")
    with db.connect(SERVICE_LOGIN) as conn:
        conn.execute(_AS_SERVICE)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(_FORGE_AS_SERVICE, (tenant.org_id,))
    with db.connect(APP_LOGIN) as conn:
        conn.execute(_AS_APP, (str(tenant.member_id),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(_APP_FORGE, (tenant.member_id, tenant.org_id))
    # The owner may write the columns, but the trigger overrides what it gives.
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(_FORGE_AS_SERVICE, (tenant.org_id,)).fetchone()
        conn.commit()
    assert row is not None and row[0] == 2
    assert _verify(db, tenant).ok


def test_triggers_come_with_the_first_enrolment(db: TestDatabase) -> None:
    def triggers() -> int:
        return _one(db, _CHAIN_TRIGGERS, ())

    assert triggers() == 0  # a fresh schema pays nothing for the chain
    tenant = _enrolled(db, "first")
    tree = _one(db, _TREE_SIZE, ())  # audit_logs and its partitions
    assert tree > 2 and triggers() == 2 * tree
    with db.connect(SUPERUSER) as conn:
        conn.execute(_DROP_TRIGGER)
        conn.commit()
    broken = _verify(db, tenant).broken
    assert broken is not None and broken.kind == "trigger"
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        assert enable_chain(conn, tenant.org_id) is False  # already enrolled; triggers repaired
    assert triggers() == 2 * tree
    assert _verify(db, tenant).ok


def test_changed_event_is_the_first_broken_link(db: TestDatabase) -> None:
    tenant = _enrolled(db, "tamper")
    service_events(db, tenant, 40)
    event_id = _tamper(db, _TAMPER_DETAILS, tenant.org_id, 17)
    _tamper(db, _TAMPER_DETAILS, tenant.org_id, 30)  # a later break is not the first one
    report = _verify(db, tenant)
    assert report.broken is not None
    assert (report.broken.kind, report.broken.chain_seq, report.broken.event_id) == (
        "hash", 17, event_id,
    )
    assert report.events_checked == 16


def test_forged_hash_is_detected(db: TestDatabase) -> None:
    tenant = _enrolled(db, "hash")
    service_events(db, tenant, 10)
    event_id = _tamper(db, _TAMPER_HASH, tenant.org_id, 5)
    report = _verify(db, tenant)
    assert report.broken is not None
    assert (report.broken.kind, report.broken.chain_seq, report.broken.event_id) == (
        "hash", 5, event_id,
    )


def test_deleted_event_is_a_gap_and_deleted_tail_is_reported(db: TestDatabase) -> None:
    tenant = _enrolled(db, "gap")
    service_events(db, tenant, 10)
    _tamper(db, _DELETE_SEQ, tenant.org_id, 11)  # the last event
    tail = _verify(db, tenant).broken
    assert tail is not None and (tail.kind, tail.chain_seq) == ("tail", 11)
    _tamper(db, _DELETE_SEQ, tenant.org_id, 4)
    gap = _verify(db, tenant).broken
    assert gap is not None and (gap.kind, gap.chain_seq) == ("gap", 5)
    assert "position 4 " in gap.detail


def test_concurrent_writers_keep_one_contiguous_chain(db: TestDatabase) -> None:
    tenant = _enrolled(db, "busy")
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            app_events(db, tenant.member_id, 40)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with db.connect(SUPERUSER) as conn:
        seqs = [r[0] for r in conn.execute(_CHAIN, (tenant.org_id,))]
    assert seqs == list(range(1, 162))
    assert _verify(db, tenant).ok


def test_cli_enable_and_verify_chain(db: TestDatabase) -> None:
    tenant = seed_tenant(db, "clichain")
    env = {"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN)}
    out = run_cli("audit", "enable-chain", "--org", "clichain", env=env)
    assert out.code == 0, out.stdout + out.stderr
    service_events(db, tenant, 12)
    out = run_cli("audit", "verify-chain", "--org", "clichain", env=env)
    assert out.code == 0, out.stdout + out.stderr
    event_id = _tamper(db, _TAMPER_DETAILS, tenant.org_id, 9)
    out = run_cli("audit", "verify-chain", "--json", env=env)
    assert out.code == 1, out.stdout + out.stderr
    assert '"chain_seq": 9' in out.stdout and str(event_id) in out.stdout
    out = run_cli("audit", "verify-chain", "--org", "clichain", env=env)
    assert out.code == 1
    assert "9" in out.stdout and str(event_id) in out.stdout
    missing = run_cli("audit", "verify-chain", "--org", "nope", env=env)
    assert missing.code == 2, missing.stdout + missing.stderr


def test_bulk_and_multi_statement_inserts_chain_in_order(db: TestDatabase) -> None:
    tenant = _enrolled(db, "bulk")
    service_events(db, tenant, 500)  # one INSERT ... SELECT of 500 rows
    with db.connect(SERVICE_LOGIN) as conn:  # several statements in one transaction
        conn.execute(_AS_SERVICE)
        for _ in range(3):
            conn.execute(_SERVICE_EVENT, (tenant.org_id,))
        conn.commit()
    with db.connect(SUPERUSER) as conn:
        seqs = [r[0] for r in conn.execute(_CHAIN, (tenant.org_id,))]
    assert seqs == list(range(1, 505))
    report = _verify(db, tenant)
    assert report.ok, report.broken
    assert report.last_seq == 504


def test_repeatable_read_writer_cannot_fork_the_chain(db: TestDatabase) -> None:
    tenant = _enrolled(db, "rr")
    with db.connect(SERVICE_LOGIN) as early, db.connect(SERVICE_LOGIN) as late:
        early.execute(_REPEATABLE_READ)
        early.execute(_AS_SERVICE)
        early.execute(_SNAPSHOT_NOW)  # the snapshot is taken here
        late.execute(_AS_SERVICE)
        late.execute(_SERVICE_EVENT, (tenant.org_id,))
        late.commit()
        with pytest.raises(psycopg.errors.SerializationFailure):
            early.execute(_SERVICE_EVENT, (tenant.org_id,))
        early.rollback()
    assert _verify(db, tenant).ok


def test_event_written_with_the_trigger_off_is_reported(db: TestDatabase) -> None:
    tenant = _enrolled(db, "bypass")
    service_events(db, tenant, 3)
    with db.connect(SUPERUSER) as conn:
        conn.execute(_REPLICA)
        row = conn.execute(_SNEAK_IN, (tenant.org_id,)).fetchone()
        conn.commit()
    assert row is not None
    broken = _verify(db, tenant).broken
    assert broken is not None
    assert (broken.kind, broken.event_id) == ("unchained", row[0])
