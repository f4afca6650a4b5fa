"""50 concurrent tenants through a real PgBouncer in transaction pooling mode.

PgBouncer (Debian package) runs with ``pool_mode = transaction`` and
``default_pool_size = max_db_connections = 2``: every transaction of every tenant
is multiplexed over the same two server connections. The library sets the role
and ``app.user_id`` with ``set_config(..., true)`` per transaction, so nothing may
leak from one transaction into the next on a shared server connection. The test
checks every row every tenant gets back, and interleaves transactions opened
without a context (``Database.transaction()``), which must see nothing.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from agentapi_db import AsyncDatabase, Database, EncryptionKey, context_admin
from agentapi_db.db import AsyncTransaction, Transaction
from agentapi_db.errors import NotFound
from tests.pg import APP_LOGIN, SERVICE_LOGIN, SUPERUSER, TABLES, TestDatabase
from tests.pgbouncer_fixtures import PgBouncer, running_pgbouncer

ORGS = 10
USERS_PER_ORG = 5  # one admin + four members: 50 tenants' users in all
THREADS = 50
RUN_SECONDS = 4.0
ASYNC_TASKS = 50
ASYNC_RUN_SECONDS = 2.0
SERVER_POOL = 2

# ---------------------------------------------------------------------------
# SQL (the checks' own statements)
# ---------------------------------------------------------------------------
_WHO = "SELECT current_user, current_setting('app.user_id', true)"
_COUNTS = sql.SQL(" UNION ALL ").join(
    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table)) for table in TABLES
)
_SESSION_LEVEL_SET = "SELECT set_config('app.user_id', %s, false)"  # what the library never does
_SERVER_CONNS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = %s"
)


@dataclass(frozen=True)
class Tenant:
    user_id: UUID
    org_id: UUID
    admin: bool
    email: str


@dataclass
class Ledger:
    """What the workers saw: operations done and every isolation violation."""

    ops: int = 0
    no_context_checks: int = 0
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bad(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)

    def done(self, no_context: bool = False) -> None:
        with self.lock:
            self.ops += 1
            if no_context:
                self.no_context_checks += 1


def _seed(service: Database) -> tuple[list[Tenant], dict[UUID, UUID]]:
    """10 orgs x 5 users, with sessions, configs, prompts and audit events each.

    Returns the tenants and one session id per organization (for probing others').
    """
    tenants: list[Tenant] = []
    org_session: dict[UUID, UUID] = {}
    with service.as_service() as tx:
        tx.prompts.create("global prompt", scope="global")
        for o in range(ORGS):
            org, admin = tx.organizations.provision(
                name=f"Org {o}", slug=f"org-{o}", admin_email=f"admin@org{o}.test"
            )
            people = [admin] + [
                tx.users.add(f"member{u}@org{o}.test", organization_id=org.id)
                for u in range(1, USERS_PER_ORG)
            ]
            tx.mcp.create(
                name="shared",
                type="http",
                endpoint=f"https://mcp.org{o}.test",
                auth_type="bearer",
                bearer_token=f"token-of-org-{o}",
                scope="organization",
                organization_id=org.id,
            )
            tx.prompts.create(f"org {o} prompt", scope="organization", organization_id=org.id)
            for person in people:
                tenants.append(Tenant(person.id, org.id, person.role == "admin", person.email))
                for s in range(2):
                    session = tx.sessions.create(
                        workspace_path=f"/w/{person.email}/{s}",
                        ttl=timedelta(hours=1),
                        user_id=person.id,
                    )
                    org_session.setdefault(org.id, session.id)
                tx.mcp.create(name="mine", type="stdio", command="tool", user_id=person.id)
                tx.prompts.create(f"prompt of {person.email}", scope="user", user_id=person.id)
                tx.audit.log("seed", "user", user_id=person.id, organization_id=org.id)
    return tenants, org_session


@pytest.fixture
def bouncer(db: TestDatabase) -> Iterator[PgBouncer]:
    with running_pgbouncer(
        db.server.superuser_url, [APP_LOGIN, SERVICE_LOGIN, SUPERUSER], pool_size=SERVER_POOL
    ) as running:
        yield running


# ---------------------------------------------------------------------------
# The checks of one tenant transaction (shared by the sync and async workers)
# ---------------------------------------------------------------------------


def _check_sessions(t: Tenant, rows: list[tuple[UUID, UUID]], ledger: Ledger) -> None:
    for org_id, user_id in rows:
        if org_id != t.org_id or (not t.admin and user_id != t.user_id):
            ledger.bad(f"{t.email} saw a session of org {org_id} / user {user_id}")


def _check_configs(t: Tenant, rows: list[tuple[UUID, UUID | None]], ledger: Ledger) -> None:
    for org_id, user_id in rows:
        if org_id != t.org_id or user_id not in (None, t.user_id):
            ledger.bad(f"{t.email} saw an MCP config of org {org_id} / user {user_id}")


def _check_prompts(t: Tenant, rows: list[tuple[UUID | None, UUID | None]], ledger: Ledger) -> None:
    for org_id, user_id in rows:
        if org_id not in (None, t.org_id) or user_id not in (None, t.user_id):
            ledger.bad(f"{t.email} got a prompt of org {org_id} / user {user_id}")


def _check_audit(t: Tenant, rows: list[tuple[UUID | None, UUID | None]], ledger: Ledger) -> None:
    for org_id, user_id in rows:
        if org_id != t.org_id or (not t.admin and user_id != t.user_id):
            ledger.bad(f"{t.email} read an audit event of org {org_id} / user {user_id}")


def _check_who(t: Tenant, row: tuple[object, object] | None, ledger: Ledger) -> None:
    if row != ("agentapi_app", str(t.user_id)):
        ledger.bad(f"{t.email}'s transaction ran as {row}")


def _check_nothing(counts: list[int], who: tuple[object, object] | None, ledger: Ledger) -> None:
    if any(counts):
        ledger.bad(f"a transaction without a context saw rows: {counts}")
    if who is None or who[0] != APP_LOGIN or who[1] not in (None, ""):
        ledger.bad(f"a transaction without a context ran as {who}")


def _sync_step(
    db: Database, t: Tenant, others: list[UUID], rng: random.Random, ledger: Ledger
) -> None:
    choice = rng.randrange(7)
    if choice == 6:
        with db.transaction() as tx:
            counts = [int(r[0]) for r in tx.connection.execute(_COUNTS).fetchall()]
            who = tx.connection.execute(_WHO).fetchone()
        _check_nothing(counts, who, ledger)
        ledger.done(no_context=True)
        return
    with db.as_user(t.user_id) as tx:
        _check_who(t, tx.connection.execute(_WHO).fetchone(), ledger)
        _sync_op(tx, t, choice, others, rng, ledger)
    ledger.done()


def _sync_op(
    tx: Transaction, t: Tenant, choice: int, others: list[UUID], rng: random.Random, ledger: Ledger
) -> None:
    if choice == 0:
        page = tx.sessions.list_active(limit=200)
        _check_sessions(t, [(s.organization_id, s.user_id) for s in page.items], ledger)
    elif choice == 1:
        made = tx.sessions.create(workspace_path="/w/new", ttl=timedelta(minutes=5))
        if tx.sessions.get(made.id).user_id != t.user_id:
            ledger.bad(f"{t.email} created a session that is not theirs")
    elif choice == 2:
        configs = tx.mcp.list_effective(decrypt=True)
        _check_configs(t, [(c.organization_id, c.user_id) for c in configs], ledger)
    elif choice == 3:
        prompts = tx.prompts.list_effective()
        _check_prompts(t, [(p.organization_id, p.user_id) for p in prompts], ledger)
    elif choice == 4:
        tx.audit.log("work", "session")
        events = tx.audit.query(limit=200).items
        _check_audit(t, [(e.organization_id, e.user_id) for e in events], ledger)
    else:
        target = rng.choice(others)
        try:
            tx.sessions.get(target)
        except NotFound:
            return
        ledger.bad(f"{t.email} read session {target} of another organization")


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def _sample_server_connections(db: TestDatabase, stop: threading.Event, peak: list[int]) -> None:
    with psycopg.connect(db.superuser_url, autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute(_SERVER_CONNS, (APP_LOGIN,)).fetchone()
            peak[0] = max(peak[0], int(row[0]) if row else 0)
            time.sleep(0.05)


def _run_threads(worker: Callable[[int], None], count: int) -> None:
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a tenant worker hung"


@pytest.mark.parametrize("authenticated", [False, True], ids=["bare_id", "context_token"])
def test_fifty_tenants_through_pgbouncer_see_only_their_own_rows(
    db: TestDatabase, bouncer: PgBouncer, authenticated: bool
) -> None:
    """With a context key configured, the id and the token both travel per transaction."""
    key = EncryptionKey.generate()
    context_key = None
    if authenticated:
        with psycopg.connect(db.url(SUPERUSER)) as conn:
            context_key = context_admin.create_key(conn)
    with Database(db.url(SERVICE_LOGIN), key=key, max_size=2) as service:
        tenants, org_session = _seed(service)
    assert len(tenants) == THREADS

    ledger = Ledger()
    stop = threading.Event()
    peak = [0]
    sampler = threading.Thread(target=_sample_server_connections, args=(db, stop, peak))
    url = bouncer.url(db.name, APP_LOGIN)
    with Database(
        url, key=key, context_key=context_key, min_size=4, max_size=25, timeout=60
    ) as app:
        sampler.start()
        deadline = time.monotonic() + RUN_SECONDS

        def worker(index: int) -> None:
            tenant = tenants[index]
            rng = random.Random(index)
            others = [s for org, s in org_session.items() if org != tenant.org_id]
            try:
                while time.monotonic() < deadline:
                    _sync_step(app, tenant, others, rng, ledger)
            except Exception as exc:  # reported, and fails the test below
                with ledger.lock:
                    ledger.errors.append(f"{tenant.email}: {type(exc).__name__}: {exc}")

        try:
            _run_threads(worker, THREADS)
        finally:
            stop.set()
            sampler.join(timeout=30)

    print(  # shown with pytest -s: the numbers of the run
        f"pgbouncer sync: {ledger.ops} transactions ({ledger.no_context_checks} without "
        f"context) by {THREADS} threads in {RUN_SECONDS}s; peak server connections {peak[0]}"
    )
    assert ledger.errors == [], ledger.errors[:5]
    assert ledger.violations == [], ledger.violations[:10]
    # The run did real, interleaved work...
    assert ledger.ops >= 500, f"only {ledger.ops} transactions in {RUN_SECONDS}s"
    assert ledger.no_context_checks >= 20
    # ...over at most two server connections.
    assert 1 <= peak[0] <= SERVER_POOL, f"{peak[0]} server connections for app_login"


async def _async_step(
    db: AsyncDatabase, t: Tenant, others: list[UUID], rng: random.Random, ledger: Ledger
) -> None:
    choice = rng.randrange(4)
    if choice == 3:
        async with db.transaction() as tx:
            counts = [int(r[0]) for r in await (await tx.connection.execute(_COUNTS)).fetchall()]
            who = await (await tx.connection.execute(_WHO)).fetchone()
        _check_nothing(counts, who, ledger)
        ledger.done(no_context=True)
        return
    async with db.as_user(t.user_id) as tx:
        _check_who(t, await (await tx.connection.execute(_WHO)).fetchone(), ledger)
        await _async_op(tx, t, choice, others, rng, ledger)
    ledger.done()


async def _async_op(
    tx: AsyncTransaction,
    t: Tenant,
    choice: int,
    others: list[UUID],
    rng: random.Random,
    ledger: Ledger,
) -> None:
    if choice == 0:
        page = await tx.sessions.list_active(limit=200)
        _check_sessions(t, [(s.organization_id, s.user_id) for s in page.items], ledger)
    elif choice == 1:
        await tx.audit.log("work", "session")
        events = (await tx.audit.query(limit=200)).items
        _check_audit(t, [(e.organization_id, e.user_id) for e in events], ledger)
    else:
        target = rng.choice(others)
        try:
            await tx.sessions.get(target)
        except NotFound:
            return
        ledger.bad(f"{t.email} read session {target} of another organization")


def test_fifty_async_tenants_through_pgbouncer(db: TestDatabase, bouncer: PgBouncer) -> None:
    key = EncryptionKey.generate()
    with Database(db.url(SERVICE_LOGIN), key=key, max_size=2) as service:
        tenants, org_session = _seed(service)
    ledger = Ledger()

    async def main() -> None:
        async with AsyncDatabase(
            bouncer.url(db.name, APP_LOGIN), key=key, min_size=2, max_size=20, timeout=60
        ) as app:
            deadline = time.monotonic() + ASYNC_RUN_SECONDS

            async def worker(index: int) -> None:
                tenant = tenants[index % len(tenants)]
                rng = random.Random(1000 + index)
                others = [s for org, s in org_session.items() if org != tenant.org_id]
                while time.monotonic() < deadline:
                    await _async_step(app, tenant, others, rng, ledger)

            await asyncio.gather(*(worker(i) for i in range(ASYNC_TASKS)))

    asyncio.run(main())
    print(
        f"pgbouncer async: {ledger.ops} transactions ({ledger.no_context_checks} without "
        f"context) by {ASYNC_TASKS} tasks in {ASYNC_RUN_SECONDS}s"
    )
    assert ledger.violations == [], ledger.violations[:10]
    assert ledger.ops >= 200, f"only {ledger.ops} transactions in {ASYNC_RUN_SECONDS}s"
    assert ledger.no_context_checks >= 10


def test_the_checks_catch_a_session_level_leak(db: TestDatabase, bouncer: PgBouncer) -> None:
    """Negative control: a session-level SET through PgBouncer does leak, and is caught.

    One client sets ``app.user_id`` for the SESSION (not the transaction) on a pooled
    server connection; later no-context transactions of other clients that land on
    that server connection then see that user's rows. This is why the library only
    ever uses ``set_config(..., true)``, and it proves the checks above can fail.
    """
    key = EncryptionKey.generate()
    with Database(db.url(SERVICE_LOGIN), key=key, max_size=2) as service:
        tenants, _ = _seed(service)
    ledger = Ledger()
    url = bouncer.url(db.name, APP_LOGIN)
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as polluter:
        for _ in range(SERVER_POOL * 2):  # pollute every server connection it lands on
            polluter.execute(_SESSION_LEVEL_SET, (str(tenants[0].user_id),))
    with Database(url, key=key, min_size=2, max_size=4) as app:
        for _ in range(20):
            with app.transaction() as tx:
                counts = [int(r[0]) for r in tx.connection.execute(_COUNTS).fetchall()]
                who = tx.connection.execute(_WHO).fetchone()
            _check_nothing(counts, who, ledger)
    assert ledger.violations, "a session-level app.user_id leaked nowhere: the check is blind"
