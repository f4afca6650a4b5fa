"""The authenticated request context (contract: "Request context"; docs/security.md).

Once a context key exists, ``app.user_id`` counts only with a valid, unexpired
``app.context_token`` for exactly that id. An ``agentapi_app`` caller that knows any
user's id (its own organization's admin included) but holds no valid token acts as
nobody: it sees no rows and can write none. Every case runs in both identity modes
(portable helpers and the C identity cache, which verifies once per transaction).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from agentapi_db import Database, context_admin
from agentapi_db.context import ContextKey
from agentapi_db.errors import ConfigurationError, InvalidInput
from tests.access_fixtures import ID, seed
from tests.pg import APP_LOGIN, SERVICE_LOGIN, SUPERUSER, TestDatabase

Conn = psycopg.Connection[tuple[object, ...]]

_AS_APP = "SET LOCAL ROLE agentapi_app"
_SET = (
    "SELECT set_config('app.user_id', %s, true), set_config('app.context_token', %s, true)"
)
_WHO = "SELECT agentapi_auth.user_id(), agentapi_auth.admin_organization_id()"
_ORGS = "SELECT slug FROM organizations ORDER BY slug"
_RENAME = "UPDATE organizations SET name = 'taken over' WHERE id = %s"
_AUDIT = (
    "INSERT INTO audit_logs (user_id, organization_id, action, resource_type) "
    "VALUES (%s, %s, 'forged', 'test')"
)
_SIGN = "SELECT agentapi_auth.sign_context(%s, %s::interval)"
_READ_KEYS = "SELECT count(*) FROM agentapi_auth.context_keys"
_MAKE_KEY = "SELECT * FROM agentapi_auth.context_key_create(NULL)"
_EXPIRE_ALL = "UPDATE agentapi_auth.context_keys SET expires_at = now() - interval '1 minute'"


@pytest.fixture
def keyed(identity_fn_db: TestDatabase) -> Iterator[tuple[TestDatabase, ContextKey]]:
    """The seeded access-matrix tenants, with a context key configured."""
    seed(identity_fn_db)
    with identity_fn_db.connect(SUPERUSER) as conn:
        key = context_admin.create_key(conn)
    yield identity_fn_db, key


@contextmanager
def app_tx(db: TestDatabase, user_id: str, token: str) -> Iterator[Conn]:
    """A rolled-back transaction of app_login as agentapi_app with this context."""
    with db.connect(APP_LOGIN) as conn:
        conn.execute(_AS_APP)
        conn.execute(_SET, (user_id, token))
        try:
            yield conn
        finally:
            conn.rollback()


def who(conn: Conn) -> tuple[object, ...]:
    row = conn.execute(_WHO).fetchone()
    assert row is not None
    return row


def test_a_valid_token_makes_the_id_count(keyed: tuple[TestDatabase, ContextKey]) -> None:
    db, key = keyed
    admin = ID["admin_A"]
    with app_tx(db, str(admin), key.sign(admin)) as conn:
        assert who(conn) == (admin, ID["org_A"])
        assert conn.execute(_ORGS).fetchall() == [("org-a",)]
        assert conn.execute(_RENAME, (ID["org_A"],)).rowcount == 1


def _forgeries(key: ContextKey) -> dict[str, tuple[str, str]]:
    """(app.user_id, app.context_token) pairs that must all act as nobody."""
    admin_a, member_a, admin_b = str(ID["admin_A"]), ID["member_A"], ID["admin_B"]
    other = ContextKey(bytes(range(32)))  # a key the database does not have
    now = int(time.time())
    good = key.sign(ID["admin_A"])
    return {
        "bare_id": (admin_a, ""),
        "unset_token_text": (admin_a, "null"),
        "own_token_other_id": (admin_a, key.sign(member_a)),
        "other_org_admin_token": (admin_a, key.sign(admin_b)),
        "unknown_key": (admin_a, other.sign(ID["admin_A"])),
        "expired": (admin_a, key.sign(ID["admin_A"], ttl=60, now=now - 120)),
        "too_far_ahead": (admin_a, _resign(key, admin_a, now + 2 * 86_400)),
        "mac_flipped": (admin_a, good[:-1] + ("0" if good[-1] != "0" else "1")),
        "expiry_edited": (admin_a, _edit_expiry(good)),
        "upper_case_mac": (admin_a, good[:-64] + good[-64:].upper()),
        "extra_part": (admin_a, good + ".x"),
        "v2": (admin_a, "v2" + good[2:]),
        # The MAC covers the canonical (lower-case) id: one over other text is no token.
        "upper_case_text_signed": (admin_a.upper(), _resign(key, admin_a.upper(), now + 60)),
    }


def _resign(key: ContextKey, user_text: str, expiry: int) -> str:
    """A token over exactly ``user_text`` (not canonicalized) and ``expiry``."""
    secret = bytes.fromhex(key.hex())
    message = b"agentapi-context-v1." + user_text.encode() + b"." + str(expiry).encode()
    return f"v1.{key.key_id}.{expiry}.{hmac.new(secret, message, hashlib.sha256).hexdigest()}"


def _edit_expiry(token: str) -> str:
    version, key_id, expiry, mac = token.split(".")
    return f"{version}.{key_id}.{int(expiry) + 3600}.{mac}"


@pytest.mark.parametrize(
    "case",
    list(_forgeries(ContextKey(bytes(32))).keys()),
)
def test_without_a_valid_token_the_caller_acts_as_nobody(
    keyed: tuple[TestDatabase, ContextKey], case: str
) -> None:
    db, key = keyed
    user_id, token = _forgeries(key)[case]
    with app_tx(db, user_id, token) as conn:
        assert who(conn) == (None, None)
        assert conn.execute(_ORGS).fetchall() == []
        assert conn.execute(_RENAME, (ID["org_A"],)).rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(_AUDIT, (ID["admin_A"], ID["org_A"]))


def test_switching_the_id_inside_a_transaction_keeps_no_identity(
    keyed: tuple[TestDatabase, ContextKey],
) -> None:
    """The identity cache keys its answer by both settings, not by the id alone."""
    db, key = keyed
    member, admin = ID["member_A"], ID["admin_A"]
    with app_tx(db, str(member), key.sign(member)) as conn:
        assert who(conn) == (member, None)
        conn.execute("SELECT set_config('app.user_id', %s, true)", (str(admin),))
        assert who(conn) == (None, None)
        conn.execute("SELECT set_config('app.context_token', %s, true)", (key.sign(admin),))
        assert who(conn) == (admin, ID["org_A"])


def test_the_application_cannot_read_make_or_sign_keys(
    keyed: tuple[TestDatabase, ContextKey],
) -> None:
    db, key = keyed
    admin = ID["admin_A"]
    for statement, args in ((_READ_KEYS, ()), (_MAKE_KEY, ()), (_SIGN, (admin, "1 minute"))):
        with (
            app_tx(db, str(admin), key.sign(admin)) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(statement, args)


def test_the_service_signs_and_the_token_counts(keyed: tuple[TestDatabase, ContextKey]) -> None:
    db, _ = keyed
    member = ID["member_B"]
    with db.connect(SERVICE_LOGIN) as conn:
        conn.execute("SET LOCAL ROLE agentapi_service")
        row = conn.execute(_SIGN, (member, "2 minutes")).fetchone()
        for bad in ("0 seconds", "2 days", None):
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                conn.execute("SAVEPOINT s")
                try:
                    conn.execute(_SIGN, (member, bad))
                finally:
                    conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.rollback()
    assert row is not None
    with app_tx(db, str(member), str(row[0])) as conn:
        assert who(conn) == (member, None)
        assert conn.execute(_ORGS).fetchall() == [("org-b",)]


def test_rotation_keeps_old_tokens_during_the_overlap_only(
    keyed: tuple[TestDatabase, ContextKey],
) -> None:
    db, old = keyed
    admin = ID["admin_A"]
    with db.connect(SUPERUSER) as conn:
        new = context_admin.create_key(conn, overlap=datetime.timedelta(minutes=5))
    assert new.key_id != old.key_id
    for key in (old, new):
        with app_tx(db, str(admin), key.sign(admin)) as conn:
            assert who(conn)[0] == admin
    with db.connect(SUPERUSER) as conn:
        conn.execute(
            "UPDATE agentapi_auth.context_keys SET expires_at = now() - interval '1 second' "
            "WHERE id = %s",
            (old.key_id,),
        )
        conn.commit()
    with app_tx(db, str(admin), old.sign(admin)) as conn:
        assert who(conn) == (None, None)
    with app_tx(db, str(admin), new.sign(admin)) as conn:
        assert who(conn)[0] == admin
    with db.connect(SUPERUSER) as conn:
        keys = context_admin.list_keys(conn)
    assert [(k.key_id, k.valid) for k in keys] == [(old.key_id, False), (new.key_id, True)]


def test_all_keys_expired_means_nobody_counts(keyed: tuple[TestDatabase, ContextKey]) -> None:
    db, key = keyed
    with db.connect(SUPERUSER) as conn:
        conn.execute(_EXPIRE_ALL)
        conn.commit()
    admin = ID["admin_A"]
    with app_tx(db, str(admin), key.sign(admin)) as conn:
        assert who(conn) == (None, None)
    with app_tx(db, str(admin), "") as conn:  # and the bare id does not come back
        assert who(conn) == (None, None)


def test_the_library_signs_in_process(keyed: tuple[TestDatabase, ContextKey]) -> None:
    db, key = keyed
    admin = ID["admin_A"]
    with (
        Database(db.url(APP_LOGIN), context_key=key, min_size=1, max_size=1) as app,
        app.as_user(admin) as tx,
    ):
        assert [o.slug for o in tx.organizations.list()] == ["org-a"]
    # Without the key (or with another), the same library call sees nothing.
    for held in (None, ContextKey(bytes(range(32)))):
        with (
            Database(db.url(APP_LOGIN), context_key=held, min_size=1, max_size=1) as app,
            app.as_user(admin) as tx,
        ):
            assert tx.organizations.list() == []


def test_the_token_is_a_parameter_never_in_the_statement_text(
    keyed: tuple[TestDatabase, ContextKey],
) -> None:
    db, key = keyed
    admin = ID["admin_A"]
    with (
        Database(db.url(APP_LOGIN), context_key=key, min_size=1, max_size=1) as app,
        app.as_user(admin) as tx,
        db.connect(SUPERUSER) as watcher,
    ):
        token = tx.connection.execute("SELECT current_setting('app.context_token')").fetchone()
        texts = [
            str(r[0])
            for r in watcher.execute(
                "SELECT query FROM pg_stat_activity WHERE usename = %s", (APP_LOGIN,)
            ).fetchall()
        ]
    assert token is not None and str(token[0]).startswith(f"v1.{key.key_id}.")
    assert texts and not any(str(token[0]) in t or key.hex() in t for t in texts)


def test_context_key_parsing_and_repr() -> None:
    key = ContextKey.parse("ab" * 32)
    assert key.hex() not in repr(key) and key.key_id in repr(key)
    for bad in ("", "ab" * 31, "zz" * 32, "ab" * 33):
        with pytest.raises(ConfigurationError) as info:
            ContextKey.parse(bad)
        assert "ab" * 31 not in str(info.value)
    with pytest.raises(ConfigurationError):
        key.sign(uuid.uuid4(), ttl=0)
    with pytest.raises(ConfigurationError):
        key.sign(uuid.uuid4(), ttl=86_401)


def test_overlap_out_of_range_is_refused(keyed: tuple[TestDatabase, ContextKey]) -> None:
    db, _ = keyed
    with db.connect(SUPERUSER) as conn, pytest.raises(InvalidInput):
        context_admin.create_key(conn, overlap=datetime.timedelta(days=8))
    with db.connect(SUPERUSER) as conn:
        assert len(context_admin.list_keys(conn)) == 1


def test_without_any_key_the_bare_id_counts(identity_fn_db: TestDatabase) -> None:
    """The seed's behaviour, which verify reports as a finding (tests/test_verify.py)."""
    seed(identity_fn_db)
    admin = ID["admin_A"]
    with app_tx(identity_fn_db, str(admin), "") as conn:
        assert who(conn) == (admin, ID["org_A"])
