"""Tenant context per transaction: as_user / as_service / transaction, pool hygiene, rollback."""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

import pytest

from agentapi_db import AsyncDatabase, Database, EncryptionKey
from agentapi_db.errors import AgentApiDbError, InvalidInput, NotFound, PermissionDenied
from tests.lib_support import Api, Tenants
from tests.pg import APP_LOGIN, NOINHERIT_SERVICE_LOGIN, SERVICE_LOGIN, SUPERUSER, TestDatabase

pytest_plugins = ("tests.lib_fixtures",)

_STATE = (
    "SELECT current_user AS role, current_setting('app.user_id', true) AS user_id, "
    "pg_backend_pid() AS pid"
)


def _state(conn: Any) -> dict[str, Any]:
    row = conn.execute(_STATE).fetchone()
    assert row is not None
    return {"role": row[0], "user_id": row[1], "pid": row[2]}


def test_context_is_transaction_local_and_the_pooled_connection_comes_back_clean(
    db: TestDatabase, lib_key: EncryptionKey
) -> None:
    with Database(db.url(APP_LOGIN), key=lib_key, min_size=1, max_size=1) as app, Database(
        db.url(SERVICE_LOGIN), key=lib_key, min_size=1, max_size=1
    ) as svc:
        with svc.as_service() as tx:
            assert _state(tx.connection)["role"] == "agentapi_service"
            _org, admin = tx.organizations.provision(
                name="A", slug="a", admin_email="admin@a.test"
            )
        with app.as_user(admin.id) as tx:
            inside = _state(tx.connection)
            assert inside["role"] == "agentapi_app"
            assert inside["user_id"] == str(admin.id)
        # max_size=1: the next transaction gets the very same server connection.
        with app.transaction() as tx:
            after = _state(tx.connection)
            assert after["pid"] == inside["pid"]
            assert after["role"] == APP_LOGIN
            assert after["user_id"] in (None, "")
            assert tx.organizations.list() == []
        # Even outside any transaction of ours, the session has nothing set.
        with app.pool.connection() as conn:
            raw = _state(conn)
            assert raw["pid"] == inside["pid"]
            assert raw["role"] == APP_LOGIN and raw["user_id"] in (None, "")
            guc = conn.execute(
                "SELECT count(*) FROM pg_settings WHERE source = 'session' AND name IN "
                "('role', 'app.user_id')"
            ).fetchone()
            assert guc is not None and guc[0] == 0


def test_begin_and_the_context_take_one_round_trip(
    db: TestDatabase, lib_key: EncryptionKey
) -> None:
    """as_user() sends BEGIN and its context statement in one pipeline: the empty block
    makes two round trips in all (that one, and COMMIT), seen in libpq's trace."""
    with Database(db.url(SERVICE_LOGIN), key=lib_key, max_size=1) as svc, svc.as_service() as tx:
        _org, admin = tx.organizations.provision(name="T", slug="t", admin_email="t@t.test")
    with Database(
        db.url(APP_LOGIN), key=lib_key, min_size=1, max_size=1, check_connections=False
    ) as app, tempfile.TemporaryFile("w+", encoding="utf-8") as trace:
        with app.pool.connection() as conn:
            conn.pgconn.trace(trace.fileno())
        with app.as_user(admin.id) as tx:
            pass
        with app.pool.connection() as conn:
            conn.pgconn.untrace()
            assert _state(conn)["role"] == APP_LOGIN
        trace.seek(0)
        sent = [line.split("\t") for line in trace.read().splitlines()]
    # libpq's trace: timestamp, direction, length, message type, ...
    ends = [f[3] for f in sent if len(f) > 3 and f[1] == "F" and f[3] in ("Sync", "Query")]
    texts = " ".join("\t".join(f[4:]) for f in sent if len(f) > 4 and f[1] == "F")
    assert ends == ["Sync", "Query"], ends
    assert "BEGIN" in texts and "app.user_id" in texts and "COMMIT" in texts


def test_async_context_is_transaction_local(db: TestDatabase, lib_key: EncryptionKey) -> None:
    async def scenario() -> None:
        async with (
            AsyncDatabase(db.url(SERVICE_LOGIN), key=lib_key, max_size=1) as svc,
            svc.as_service() as tx,
        ):
            _org, admin = await tx.organizations.provision(
                name="A", slug="a", admin_email="admin@a.test"
            )
        async with AsyncDatabase(db.url(APP_LOGIN), key=lib_key, max_size=1) as app:
            async with app.as_user(admin.id) as tx:
                cur = await tx.connection.execute(_STATE)
                inside = await cur.fetchone()
                assert inside is not None
                assert inside[0] == "agentapi_app" and inside[1] == str(admin.id)
            async with app.transaction() as tx:
                cur = await tx.connection.execute(_STATE)
                after = await cur.fetchone()
                assert after is not None
                assert after[2] == inside[2]
                assert after[0] == APP_LOGIN and after[1] in (None, "")
                assert await tx.organizations.list() == []

    asyncio.run(scenario())


def test_work_outside_a_context_sees_nothing(api: Api, tenants: Tenants) -> None:
    with api.app.transaction() as tx:
        assert tx.organizations.list() == []
        assert tx.users.list(organization_id=tenants.org_a) == []
        with pytest.raises(NotFound):
            tx.users.get(tenants.alice)
    # A login that does not inherit agentapi_service (agentapi-db's own logins are
    # NOINHERIT) has none of its rights without SET ROLE: nothing visible, nothing
    # writable. (One that inherits it acts with the service's policies, by design:
    # the role has no attribute to withhold, only grants and policies.)
    noinherit = api.factory(NOINHERIT_SERVICE_LOGIN)
    with noinherit.transaction() as tx, pytest.raises(PermissionDenied):
        tx.organizations.list()
    with noinherit.transaction() as tx, pytest.raises(PermissionDenied):
        tx.organizations.provision(name="X", slug="x", admin_email="x@x.test")
    with api.svc.as_service() as tx:
        assert {o.id for o in tx.organizations.list()} >= {tenants.org_a}


def test_as_user_with_unknown_or_inactive_user_sees_nothing(api: Api, tenants: Tenants) -> None:
    from uuid import uuid4

    with api.app.as_user(uuid4()) as tx:
        assert tx.organizations.list() == []
    with api.app.as_user(tenants.admin_a) as tx:
        tx.users.deactivate(tenants.bob)
    with api.app.as_user(tenants.bob) as tx:
        assert tx.organizations.list() == []
        assert tx.users.list(organization_id=tenants.org_a) == []


def test_malformed_user_id_is_invalid_input(api: Api) -> None:
    with pytest.raises(InvalidInput) as info:
        api.app.as_user("not-a-uuid")
    assert info.value.rule == "user_id"


def test_a_login_cannot_take_a_role_it_is_not_granted(api: Api) -> None:
    with pytest.raises(PermissionDenied), api.app.as_service() as tx:
        tx.organizations.list()


def test_failed_call_rolls_back_the_whole_transaction(api: Api) -> None:
    with api.svc.as_service() as tx:
        org, _admin = tx.organizations.provision(name="R", slug="r", admin_email="r@r.test")
        with pytest.raises(InvalidInput):
            tx.users.add("not an email", organization_id=org.id)
        # The transaction is dead: later calls refuse at once ...
        with pytest.raises(AgentApiDbError, match="already failed"):
            tx.organizations.get(org.id)
    # ... and leaving the block rolled back the organization written before the failure.
    with api.svc.as_service() as tx:
        assert [o.slug for o in tx.organizations.list()] == []


def test_exception_in_the_block_rolls_back(api: Api) -> None:
    with pytest.raises(RuntimeError), api.svc.as_service() as tx:
        tx.organizations.provision(name="R", slug="r", admin_email="r@r.test")
        raise RuntimeError("boom")
    with api.svc.as_service() as tx:
        assert tx.organizations.list() == []


def test_provision_with_invalid_admin_email_leaves_nothing_behind(
    api: Api, db: TestDatabase
) -> None:
    with pytest.raises(InvalidInput) as info, api.svc.as_service() as tx:
        tx.organizations.provision(name="Bad", slug="bad", admin_email="nope")
    assert info.value.rule == "users_email_format"
    with db.connect(SUPERUSER) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM organizations), (SELECT count(*) FROM users)"
        ).fetchone()
    assert counts == (0, 0)
