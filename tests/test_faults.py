"""Faults and load through the library: killed backends, cleanup races, random tenants,
PgBouncer under load.

* A backend terminated (``pg_terminate_backend``) in the middle of a transaction:
  the call fails cleanly, nothing of the transaction is left, the pool replaces
  the connection and the next call works.
* ``cleanup_expired_sessions()`` and the batched ``agentapi-db sessions cleanup``
  run while sessions are created and touched: no deadlock, no live session lost.
* A Hypothesis state machine drives actors of three organizations through allowed
  and forbidden operations; after every step nobody has read another
  organization's row, every forbidden write was refused and changed nothing, and
  the audit log only grew.
* 100 tenants, 20,000 transactions through PgBouncer (transaction pooling, 4
  server connections): zero cross-tenant rows.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from agentapi_db import Database, EncryptionKey
from agentapi_db.db import Transaction
from agentapi_db.errors import (
    AgentApiDbError,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from tests.cli_fixtures import run_cli
from tests.pg import APP_LOGIN, SERVICE_LOGIN, SUPERUSER, TestDatabase
from tests.pgbouncer_fixtures import running_pgbouncer

# ---------------------------------------------------------------------------
# SQL (the checks' own statements, as the superuser: the ground truth)
# ---------------------------------------------------------------------------
_TERMINATE = "SELECT pg_terminate_backend(%s, 10000)"  # waits until it is gone
_BY_PATH = "SELECT count(*) FROM user_sessions WHERE workspace_path = %s"
_EVENTS_BY_ACTION = "SELECT count(*) FROM audit_logs WHERE action = %s"
_SESSION_IDS = "SELECT id FROM user_sessions WHERE id = ANY(%s)"
_EXPIRED_LEFT = "SELECT count(*) FROM user_sessions WHERE expires_at <= now()"
_AUDIT_IDS = "SELECT id FROM audit_logs"
_USER_COUNT = "SELECT count(*) FROM users"
_CONFIG_COUNT = "SELECT count(*) FROM mcp_configurations"
_SESSION_EXISTS = "SELECT count(*) FROM user_sessions WHERE id = %s"
_USER_ROLE = "SELECT role::text FROM users WHERE id = %s"
_SERVER_CONNS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND usename = %s AND backend_type = 'client backend'"
)

REFUSED = (PermissionDenied, InvalidInput)
"""How a forbidden write on a row the actor can see must fail."""
HIDDEN = (PermissionDenied, InvalidInput, NotFound)
"""How a write on another tenant's row may fail: RLS hides the row, so NotFound too."""


@dataclass(frozen=True)
class Actor:
    org: UUID
    user: UUID
    admin: bool
    slug: str


def _provision(svc: Database, orgs: int, members: int = 1) -> list[Actor]:
    actors: list[Actor] = []
    with svc.as_service() as tx:
        for i in range(orgs):
            slug = f"t{i}-{uuid4().hex[:6]}"
            org, admin = tx.organizations.provision(
                name=f"Tenant {i}", slug=slug, admin_email=f"admin@{slug}.test"
            )
            actors.append(Actor(org.id, admin.id, True, slug))
            for m in range(members):
                user = tx.users.add(f"m{m}@{slug}.test", organization_id=org.id)
                actors.append(Actor(org.id, user.id, False, slug))
    return actors


@pytest.fixture
def dbs(db: TestDatabase) -> Iterator[tuple[Database, Database]]:
    key = EncryptionKey.generate()
    app = Database(db.url(APP_LOGIN), key=key, min_size=1, max_size=4)
    svc = Database(db.url(SERVICE_LOGIN), key=key, min_size=1, max_size=2)
    try:
        yield app, svc
    finally:
        app.close()
        svc.close()


def _scalar(db: TestDatabase, query: Any, params: Any = None) -> Any:
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


# ---------------------------------------------------------------------------
# backend killed mid-transaction
# ---------------------------------------------------------------------------


def test_backend_killed_mid_transaction(db: TestDatabase, dbs: tuple[Database, Database]) -> None:
    app, svc = dbs
    alice = next(a for a in _provision(svc, 1) if not a.admin)
    marker = f"/killed/{uuid4().hex}"
    for round_ in range(3):
        with pytest.raises(AgentApiDbError), app.as_user(alice.user) as tx:
            tx.sessions.create(workspace_path=marker)
            tx.audit.log("fault.half_written", "test", details={"round": round_})
            pid = tx.connection.info.backend_pid
            with db.connect(SUPERUSER) as su:
                su.execute(_TERMINATE, (pid,))
                su.commit()
            tx.sessions.create(workspace_path=marker + "/second")
        # Nothing of the killed transaction was written.
        assert _scalar(db, _BY_PATH, (marker,)) == 0
        assert _scalar(db, _EVENTS_BY_ACTION, ("fault.half_written",)) == 0
        # The pool recovered: the next calls work.
        for _ in range(4):
            with app.as_user(alice.user) as tx:
                made = tx.sessions.create(workspace_path=f"/ok/{round_}")
                assert tx.sessions.get(made.id).user_id == alice.user


# ---------------------------------------------------------------------------
# cleanup against concurrent creates and touches
# ---------------------------------------------------------------------------


def test_cleanup_races_creates_and_touches(
    db: TestDatabase, dbs: tuple[Database, Database]
) -> None:
    app, svc = dbs
    actors = _provision(svc, 2, members=2)
    stop = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()
    long_lived: list[UUID] = []
    short_lived: list[UUID] = []
    owner: dict[UUID, UUID] = {}
    extended: list[UUID] = []
    cleaned = [0]

    def guard(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                while not stop.is_set():
                    fn()
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        return run

    def create() -> None:
        actor = random.choice(actors)
        short = random.random() < 0.6
        ttl = timedelta(milliseconds=random.randint(50, 400)) if short else timedelta(hours=1)
        with app.as_user(actor.user) as tx:
            made = tx.sessions.create(workspace_path="/race", ttl=ttl)
        with lock:
            (short_lived if short else long_lived).append(made.id)
            owner[made.id] = actor.user

    def touch() -> None:
        with lock:
            if not short_lived:
                return
            target = random.choice(short_lived[-50:])
        with app.as_user(owner[target]) as tx:  # its own user keeps it alive
            try:
                tx.sessions.touch(target, extend=timedelta(hours=1))
            except NotFound:
                return  # it had expired (and may be gone): touching it is refused
        with lock:
            extended.append(target)

    def cleanup() -> None:
        with svc.as_service() as tx:
            cleaned[0] += tx.sessions.cleanup_expired()

    threads = [threading.Thread(target=guard(f)) for f in (create, create, touch, touch, cleanup)]
    for t in threads:
        t.start()
    # The batched CLI cleanup runs at the same time, in its own process.
    batched = [
        run_cli("sessions", "cleanup", "--batch-size", "7", "--json",
                env={"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN)})
        for _ in range(3)
    ]
    # Keep racing until each kind of session is well represented (however slow the machine).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stop.is_set():
        with lock:
            if len(long_lived) > 20 and len(extended) > 5 and len(short_lived) > 20:
                break
        time.sleep(0.1)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors  # a deadlock would surface as TransactionConflict
    assert all(b.code == 0 for b in batched), [str(b) for b in batched if b.code]
    time.sleep(0.5)
    with svc.as_service() as tx:
        tx.sessions.cleanup_expired()
    must_live = list(set(long_lived) | set(extended))
    assert len(long_lived) > 20 and len(extended) > 5 and len(short_lived) > 20
    with db.connect(SUPERUSER) as conn:
        alive = {r[0] for r in conn.execute(_SESSION_IDS, (must_live,))}
        gone = {r[0] for r in conn.execute(_SESSION_IDS, (short_lived,))}
        expired_left = conn.execute(_EXPIRED_LEFT).fetchone()
    assert alive == set(must_live), "a live session was deleted"
    assert expired_left == (0,)
    assert gone == set(extended) & set(short_lived)


# ---------------------------------------------------------------------------
# random actors of three organizations (Hypothesis stateful)
# ---------------------------------------------------------------------------


class TenantMachine(RuleBasedStateMachine):
    """Random allowed and forbidden operations by actors of three organizations."""

    def __init__(self, db: TestDatabase, app: Database, actors: list[Actor]) -> None:
        super().__init__()
        self.db = db
        self.app = app
        self.actors = actors
        self.sessions: dict[UUID, list[UUID]] = {a.org: [] for a in actors}
        with db.connect(SUPERUSER) as conn:
            self.audit_ids = {r[0] for r in conn.execute(_AUDIT_IDS)}

    def _other(self, actor: Actor, pick: int) -> Actor:
        others = [a for a in self.actors if a.org != actor.org]
        return others[pick % len(others)]

    def _refused(self, errors: tuple[type[Exception], ...], fn: Callable[[], Any]) -> None:
        with pytest.raises(errors):
            fn()

    actor_index = st.integers(min_value=0, max_value=100)

    # -- allowed ------------------------------------------------------------------

    @rule(i=actor_index)
    def create_session(self, i: int) -> None:
        actor = self.actors[i % len(self.actors)]
        with self.app.as_user(actor.user) as tx:
            made = tx.sessions.create(workspace_path=f"/h/{i}", ttl=timedelta(hours=1))
        assert (made.organization_id, made.user_id) == (actor.org, actor.user)
        self.sessions[actor.org].append(made.id)

    @rule(i=actor_index)
    def log_event(self, i: int) -> None:
        actor = self.actors[i % len(self.actors)]
        with self.app.as_user(actor.user) as tx:
            tx.audit.log("machine.event", "test", details={"i": i})

    @rule(i=actor_index)
    def read_everything(self, i: int) -> None:
        actor = self.actors[i % len(self.actors)]
        with self.app.as_user(actor.user) as tx:
            sessions = tx.sessions.list_active(limit=500).items
            users = tx.users.list(include_inactive=True)
            events = tx.audit.query(limit=500).items
            org = tx.organizations.get()
        assert org.id == actor.org
        assert all(s.organization_id == actor.org for s in sessions)
        assert all(u.organization_id == actor.org for u in users)
        assert all(e.organization_id == actor.org for e in events)
        if not actor.admin:
            assert all(s.user_id == actor.user for s in sessions)
            assert all(e.user_id == actor.user for e in events)

    # -- forbidden ----------------------------------------------------------------

    @rule(i=actor_index, j=actor_index)
    def revoke_foreign_session(self, i: int, j: int) -> None:
        actor = self.actors[i % len(self.actors)]
        victim = self._other(actor, j)
        if not self.sessions[victim.org]:
            return
        target = self.sessions[victim.org][j % len(self.sessions[victim.org])]

        def attempt() -> None:
            with self.app.as_user(actor.user) as tx:
                tx.sessions.revoke(target)

        self._refused(HIDDEN, attempt)
        assert _scalar(self.db, _SESSION_EXISTS, (target,)) == 1

    @rule(i=actor_index, j=actor_index)
    def add_user_elsewhere(self, i: int, j: int) -> None:
        actor = self.actors[i % len(self.actors)]
        target_org = actor.org if not actor.admin else self._other(actor, j).org
        before = _scalar(self.db, _USER_COUNT)

        def attempt() -> None:
            with self.app.as_user(actor.user) as tx:
                tx.users.add(f"x{uuid4().hex[:8]}@evil.test", organization_id=target_org)

        self._refused(REFUSED, attempt)
        assert _scalar(self.db, _USER_COUNT) == before

    @rule(i=actor_index, j=actor_index)
    def log_event_for_other_org(self, i: int, j: int) -> None:
        actor = self.actors[i % len(self.actors)]
        other = self._other(actor, j)

        def attempt() -> None:
            with self.app.as_user(actor.user) as tx:
                tx.audit.log("machine.forged", "test", organization_id=other.org,
                             user_id=other.user)

        self._refused(REFUSED, attempt)
        assert _scalar(self.db, _EVENTS_BY_ACTION, ("machine.forged",)) == 0

    @rule(i=actor_index)
    def member_promotes_self(self, i: int) -> None:
        members = [a for a in self.actors if not a.admin]
        actor = members[i % len(members)]

        def attempt() -> None:
            with self.app.as_user(actor.user) as tx:
                tx.users.change_role(actor.user, "admin")

        self._refused(REFUSED, attempt)
        assert _scalar(self.db, _USER_ROLE, (actor.user,)) == "user"

    @rule(i=actor_index)
    def member_deletes_own_admin(self, i: int) -> None:
        members = [a for a in self.actors if not a.admin]
        actor = members[i % len(members)]
        admin = next(a for a in self.actors if a.admin and a.org == actor.org)
        before = _scalar(self.db, _USER_COUNT)

        def attempt() -> None:
            with self.app.as_user(actor.user) as tx:
                tx.users.delete(admin.user)  # visible to the member, but not theirs to delete

        self._refused(REFUSED, attempt)
        assert _scalar(self.db, _USER_COUNT) == before

    @rule(i=actor_index)
    def member_creates_org_wide_config(self, i: int) -> None:
        members = [a for a in self.actors if not a.admin]
        actor = members[i % len(members)]
        before = _scalar(self.db, _CONFIG_COUNT)

        def attempt() -> None:
            with self.app.as_user(actor.user) as tx:
                tx.mcp.create(name=f"c{i}", type="stdio", command="x", scope="organization")

        self._refused(REFUSED, attempt)
        assert _scalar(self.db, _CONFIG_COUNT) == before

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def audit_log_only_grows(self) -> None:
        with self.db.connect(SUPERUSER) as conn:
            now = {r[0] for r in conn.execute(_AUDIT_IDS)}
        assert self.audit_ids <= now, "an audit event disappeared"
        self.audit_ids = now


def test_random_actors_never_cross_tenants(
    db: TestDatabase, dbs: tuple[Database, Database]
) -> None:
    app, svc = dbs
    actors = _provision(svc, 3, members=1)
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: TenantMachine(db, app, actors),
        settings=settings(
            max_examples=20,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# ---------------------------------------------------------------------------
# PgBouncer under load
# ---------------------------------------------------------------------------

TENANTS = 100
TRANSACTIONS = 20_000
SERVER_CONNECTIONS = 4
CLIENT_THREADS = 16


def _mixed_work(tx: Transaction, n: int) -> list[UUID | None]:
    """One transaction of mixed work; returns the organization ids of every row read."""
    kind = n % 4
    if kind == 0:
        tx.sessions.create(workspace_path=f"/load/{n}", ttl=timedelta(hours=1))
        return [s.organization_id for s in tx.sessions.list_active(limit=20).items]
    if kind == 1:
        tx.audit.log("load.event", "test", resource_id=str(n))
        return [e.organization_id for e in tx.audit.query(limit=20).items]
    if kind == 2:
        return [u.organization_id for u in tx.users.list()]
    return [tx.organizations.get().id]


def test_pgbouncer_load_no_cross_tenant_rows(db: TestDatabase) -> None:
    key = EncryptionKey.generate()
    with Database(db.url(SERVICE_LOGIN), key=key, max_size=2) as svc:
        admins = [a for a in _provision(svc, TENANTS, members=0) if a.admin]
    assert len(admins) == TENANTS
    counter = iter(range(TRANSACTIONS))
    lock = threading.Lock()
    errors: list[BaseException] = []
    leaks: list[str] = []
    done = [0]

    with running_pgbouncer(
        db.superuser_url, [APP_LOGIN, SERVICE_LOGIN, SUPERUSER], pool_size=SERVER_CONNECTIONS
    ) as bouncer, Database(
        bouncer.url(db.name, APP_LOGIN), key=key, min_size=CLIENT_THREADS,
        max_size=CLIENT_THREADS,
    ) as app:

        def client(seed: int) -> None:
            rng = random.Random(seed)
            try:
                while True:
                    with lock:
                        n = next(counter, None)
                    if n is None:
                        return
                    me = admins[rng.randrange(TENANTS)]
                    with app.as_user(me.user) as tx:
                        rows = _mixed_work(tx, n)
                    bad = [r for r in rows if r != me.org]
                    if bad or not rows:
                        leaks.append(f"tx {n} as {me.slug}: {len(bad)} foreign of {len(rows)}")
                    with lock:
                        done[0] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENT_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        with db.connect(SUPERUSER) as conn:
            server_conns = conn.execute(_SERVER_CONNS, (APP_LOGIN,)).fetchone()
    assert not errors, errors[:3]
    assert leaks == []
    assert done[0] == TRANSACTIONS
    assert server_conns is not None and server_conns[0] <= SERVER_CONNECTIONS
    assert _scalar(db, _EVENTS_BY_ACTION, ("load.event",)) == TRANSACTIONS // 4
