"""OAuth token refresh support: claim (SKIP LOCKED + lease), store, failure, revoke."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from agentapi_db import opsdb
from agentapi_db.errors import NotFound
from agentapi_db.keys import EncryptionKey
from agentapi_db.refresh import (
    MAX_ERROR_LENGTH,
    ClaimedToken,
    LeaseLost,
    claim_expiring,
    record_failure,
    refresh_status,
    revoke,
    store_refreshed,
)
from tests.cli_fixtures import run_cli
from tests.ops_fixtures import seed_encrypted, seed_tenant
from tests.pg import SERVICE_LOGIN, SUPERUSER, TestDatabase

_EXPIRE_ALL_SOON = "UPDATE mcp_oauth_tokens SET expires_at = now() + interval '1 minute'"
_EXPIRE_LATER = "UPDATE mcp_oauth_tokens SET expires_at = now() + interval '2 days' WHERE id = %s"
_END_LEASE = (
    "UPDATE mcp_oauth_tokens SET refresh_claimed_until = now() - interval '1 second' WHERE id = %s"
)
_TOKEN_ROW = (
    "SELECT decrypt_token(access_token, %(key)s), decrypt_token(refresh_token, %(key)s),"
    " refresh_claimed_by, refresh_claimed_until, refresh_failure_count, last_refresh_error,"
    " last_refreshed_at, expires_at FROM mcp_oauth_tokens WHERE id = %(id)s"
)
_AUDIT_FOR = (
    "SELECT action, user_id, organization_id, details->>'reason' FROM audit_logs"
    " WHERE resource_id = %s"
)
_COUNT_TOKENS = "SELECT count(*) FROM mcp_oauth_tokens WHERE id = %s"
_REFRESHED = (
    "SELECT count(*) FILTER (WHERE decrypt_token(access_token, %(key)s) = 'new-' || id"
    "   AND decrypt_token(refresh_token, %(key)s) = 'rt-' || id"
    "   AND refresh_claimed_by IS NULL AND last_refreshed_at IS NOT NULL), count(*)"
    " FROM mcp_oauth_tokens"
)


def _setup(db: TestDatabase, tokens: int) -> EncryptionKey:
    key = EncryptionKey.generate()
    seed_encrypted(db, seed_tenant(db, "acme"), key, bearer=0, oauth=tokens)
    return key


def _row(db: TestDatabase, key: EncryptionKey, token_id: UUID) -> tuple[object, ...]:
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(_TOKEN_ROW, {"key": key.sql_value, "id": token_id}).fetchone()
    assert row is not None
    return tuple(row)


def test_eight_workers_claim_every_token_exactly_once(db: TestDatabase) -> None:
    key = _setup(db, 1000)
    with db.connect(SUPERUSER) as conn:
        conn.execute(_EXPIRE_ALL_SOON)
        conn.commit()
    claimed: list[UUID] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
                start.wait()
                while True:
                    batch = claim_expiring(
                        conn, worker_id=f"worker-{n}", key=key, within=timedelta(minutes=5),
                        limit=7,
                    )
                    if not batch:
                        return
                    with lock:
                        claimed.extend(c.id for c in batch)
                    for c in batch:
                        store_refreshed(
                            conn, c, key=key, access_token=f"new-{c.id}",
                            refresh_token=f"rt-{c.id}",
                            expires_at=datetime.now(UTC) + timedelta(hours=1),
                        )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    counts = Counter(claimed)
    # 100 of the 1000 tokens have no refresh token: there is nothing to refresh for them.
    assert len(counts) == 900
    assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1][:5]
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(_REFRESHED, {"key": key.sql_value}).fetchone()
    assert row == (900, 1000)


def test_claim_window_order_and_lease(db: TestDatabase) -> None:
    key = _setup(db, 20)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        # Seeded expiries are 1..20 minutes ahead (and 0 for the first): window of 5 minutes.
        first = claim_expiring(conn, worker_id="a", key=key, within=timedelta(minutes=5), limit=100)
        assert first and all(
            c.expires_at is not None
            and c.expires_at <= datetime.now(UTC) + timedelta(minutes=5, seconds=5)
            for c in first
        )
        assert [c.expires_at for c in first] == sorted(c.expires_at for c in first if c.expires_at)
        assert all(c.access_token.startswith("access-oauth-") for c in first)
        assert all(c.refresh_token.startswith("refresh-oauth-") for c in first)
        assert "access-oauth" not in repr(first[0]) and "refresh-oauth" not in repr(first[0])
        # While the lease runs, nobody else gets them.
        assert claim_expiring(conn, worker_id="b", key=key, within=timedelta(minutes=5)) == []
        # A lease that ran out (a crashed worker) can be claimed again; the old holder lost it.
        victim = first[0]
        with db.connect(SUPERUSER) as su:
            su.execute(_END_LEASE, (victim.id,))
            su.commit()
        again = claim_expiring(conn, worker_id="b", key=key, within=timedelta(minutes=5))
        assert [c.id for c in again] == [victim.id]
        with pytest.raises(LeaseLost):
            store_refreshed(conn, victim, key=key, access_token="late", expires_at=None)
        store_refreshed(
            conn, again[0], key=key, access_token="fresh", expires_at=None, refresh_token=None
        )
    access, refresh, by, until, failures, error, refreshed_at, _ = _row(db, key, victim.id)
    assert (access, by, until, failures, error) == ("fresh", None, None, 0, None)
    assert refresh == victim.refresh_token  # no new refresh token given: the old one stays
    assert refreshed_at is not None


def test_failure_is_recorded_without_tokens_and_backs_off(db: TestDatabase) -> None:
    key = _setup(db, 10)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        claims = claim_expiring(conn, worker_id="w", key=key, within=timedelta(hours=1), limit=1)
        assert len(claims) == 1
        claim: ClaimedToken = claims[0]
        message = (
            f"invalid_grant: refresh token {claim.refresh_token} was revoked "
            f"(access {claim.access_token}) " + "x" * 1000
        )
        assert record_failure(conn, claim, message) == 1
        with pytest.raises(LeaseLost):  # the lease was released
            record_failure(conn, claim, "again")
        # Backing off: not claimable right away even though it expires soon.
        others = claim_expiring(conn, worker_id="w2", key=key, within=timedelta(hours=1))
        assert claim.id not in {c.id for c in others}
    *_, failures, error, _, _ = _row(db, key, claim.id)
    assert failures == 1
    assert isinstance(error, str) and len(error) == MAX_ERROR_LENGTH
    assert error.startswith(
        "invalid_grant: refresh token [redacted] was revoked (access [redacted])"
    )
    assert claim.refresh_token not in error and claim.access_token not in error


def test_revoke_deletes_and_audits(db: TestDatabase) -> None:
    key = _setup(db, 3)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        claims = claim_expiring(conn, worker_id="w", key=key, within=timedelta(hours=1), limit=1)
        token = claims[0]
        event = revoke(conn, token.id, reason="provider revoked the grant")
        assert isinstance(event, UUID)
        with pytest.raises(NotFound):
            revoke(conn, token.id, reason="twice")
    with db.connect(SUPERUSER) as su:
        assert su.execute(_COUNT_TOKENS, (token.id,)).fetchone() == (0,)
        rows = su.execute(_AUDIT_FOR, (str(token.id),)).fetchall()
    assert rows == [
        ("oauth_token.revoke", token.user_id, token.organization_id, "provider revoked the grant")
    ]


def test_claim_decrypts_with_old_key_during_rotation(db: TestDatabase) -> None:
    old = _setup(db, 5)
    new = EncryptionKey.generate()
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        claims = claim_expiring(
            conn, worker_id="w", key=new, old_key=old, within=timedelta(hours=1), limit=1
        )
        assert claims and claims[0].access_token.startswith("access-oauth-")
        store_refreshed(conn, claims[0], key=new, access_token="a2", refresh_token="r2",
                        expires_at=None)
    assert _row(db, new, claims[0].id)[:2] == ("a2", "r2")


def test_status_counts_and_cli(db: TestDatabase) -> None:
    key = _setup(db, 30)  # expiries 1..30 minutes ahead; 3 without refresh token
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        claims = claim_expiring(conn, worker_id="w", key=key, within=timedelta(minutes=4), limit=2)
        record_failure(conn, claims[0], "boom")
        status = refresh_status(conn, within=timedelta(minutes=10), max_failures=1)
    assert (status.tokens, status.refreshable, status.expired) == (30, 27, 0)
    assert status.expiring_soon == 10
    assert (status.leased, status.backing_off, status.failing, status.given_up) == (1, 1, 1, 1)
    out = run_cli(
        "tokens", "status", "--within", "10", "--json",
        env={"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN)},
    )
    assert out.code == 0, str(out)
    data = json.loads(out.stdout)
    assert (data["tokens"], data["expiring_soon"], data["leased"]) == (30, 10, 1)
    assert "access-oauth" not in out.stdout and "refresh-oauth" not in out.stdout
