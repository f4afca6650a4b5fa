"""Semantics of the schema's functions and triggers, against a real PostgreSQL.

update_updated_at_column, encrypt_token/decrypt_token, log_audit_event,
cleanup_expired_sessions, get_effective_system_prompts and audit_ensure_partitions.
Data is written as the superuser inside rolled-back transactions unless a test
needs its own database (the partition tests use a fresh ``db``).
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

from agentapi_db.lint import run_lints
from tests.pg import APP_LOGIN, OWNER_LOGIN, SERVICE_LOGIN, Conn, TestDatabase, acting

INVALID_PARAMETER = "22023"
WRONG_KEY = "39000"
INSUFFICIENT_PRIVILEGE = "42501"
CHECK_VIOLATION = "23514"

KEY = secrets.token_hex(32)
OTHER_KEY = secrets.token_hex(32)
OLD = datetime(2000, 1, 1, tzinfo=UTC)
T0 = datetime(2025, 1, 1, tzinfo=UTC)

ORG1, ORG2 = uuid.uuid4(), uuid.uuid4()
U1, U2, U3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()  # U1, U2 in ORG1; U3 in ORG2
CFG = uuid.uuid4()
IDS: dict[str, Any] = {"org1": ORG1, "org2": ORG2, "u1": U1, "u2": U2, "u3": U3, "cfg": CFG,
                       "old": OLD}

# --- SQL ---------------------------------------------------------------------------------
_SEED = (
    """INSERT INTO organizations (id, name, slug, updated_at) VALUES
         (%(org1)s, 'One', 'one', %(old)s), (%(org2)s, 'Two', 'two', %(old)s)""",
    """INSERT INTO users (id, organization_id, email, role, updated_at) VALUES
         (%(u1)s, %(org1)s, 'alice@example.com', 'admin', %(old)s),
         (%(u2)s, %(org1)s, 'bob@example.com', 'user', %(old)s),
         (%(u3)s, %(org2)s, 'carol@example.com', 'user', %(old)s)""",
    """INSERT INTO mcp_configurations (id, organization_id, name, type, endpoint, auth_type,
                                       oauth_provider, updated_at)
       VALUES (%(cfg)s, %(org1)s, 'shared', 'http', 'https://mcp.example.com', 'oauth', 'github',
               %(old)s)""",
    """INSERT INTO mcp_oauth_tokens (user_id, organization_id, mcp_configuration_id,
                                     oauth_provider, access_token, updated_at)
       VALUES (%(u1)s, %(org1)s, %(cfg)s, 'github', 'ciphertext', %(old)s)""",
    """INSERT INTO system_prompts (scope, content, updated_at) VALUES ('global', 'g', %(old)s)""",
)
UPDATED_AT_TABLES = (
    "organizations", "users", "mcp_configurations", "mcp_oauth_tokens", "system_prompts",
)
_TABLES_WITH_UPDATED_AT = (
    "SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attname = 'updated_at'"
    " AND NOT a.attisdropped ORDER BY 1"
)
_TOUCH = "UPDATE {} SET updated_at = updated_at"
_UPDATED_AT = "SELECT DISTINCT updated_at = now(), count(*) OVER () FROM {}"

_ENCRYPT = "SELECT encrypt_token(%s, %s)"
_DECRYPT = "SELECT decrypt_token(%s, %s)"

_LOG = (
    "SELECT log_audit_event(%(user_id)s, %(org_id)s, %(action)s, %(resource_type)s,"
    " %(resource_id)s, %(details)s, %(ip)s, %(agent)s)"
)
_LOG_FAILURE = (
    "SELECT log_audit_event(%(user_id)s, %(org_id)s, 'login', 'session', NULL, NULL, NULL, NULL,"
    " false, 'bad password')"
)
_AUDIT_ROW = (
    "SELECT user_id, organization_id, action, resource_type, resource_id, details,"
    " host(ip_address), user_agent, success, error_message,"
    " now() - \"timestamp\" < interval '1 min'"
    " FROM audit_logs WHERE id = %s"
)

_SESSION = (
    "INSERT INTO user_sessions (user_id, organization_id, workspace_path, created_at, expires_at)"
    " VALUES (%(user_id)s, %(org_id)s, %(path)s, now() - interval '2 days',"
    " now() + %(expires_in)s::interval) RETURNING id"
)
_SESSION_NO_EXPIRY = (
    "INSERT INTO user_sessions (user_id, organization_id, workspace_path, created_at)"
    " VALUES (%(user_id)s, %(org_id)s, %(path)s, now() - interval '2 days') RETURNING id"
)
_CLEANUP = "SELECT cleanup_expired_sessions()"
_SESSION_IDS = "SELECT id FROM user_sessions"

_PROMPT = (
    "INSERT INTO system_prompts (scope, organization_id, user_id, content, priority, enabled,"
    " created_at) VALUES (%(scope)s, %(org_id)s, %(user_id)s, %(content)s, %(priority)s,"
    " %(enabled)s, %(created_at)s)"
)
_EFFECTIVE = (
    "SELECT content, scope::text, precedence FROM get_effective_system_prompts(%s, %s)"
)

_PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'public.audit_logs'::regclass AND c.relname <> 'audit_logs_default'"
    " ORDER BY 1"
)
_EXPECTED_PARTITIONS = (
    "SELECT 'audit_logs_' || to_char(m, '\"y\"YYYY\"m\"MM') FROM generate_series("
    " date_trunc('month', now()) - make_interval(months => %(back)s),"
    " date_trunc('month', now()) + make_interval(months => %(ahead)s), interval '1 month') AS m"
    " ORDER BY 1"
)
_ENSURE = "SELECT audit_ensure_partitions(%s, %s)"
_MONTH_START = "SELECT date_trunc('month', now()) + make_interval(months => %s)"
_INSERT_AUDIT_AT = (
    "INSERT INTO audit_logs (\"timestamp\", action, resource_type) VALUES (%s, 'e', 't')"
    " RETURNING tableoid::regclass::text"
)
_PARTITION_POSTURE = (
    "SELECT c.relrowsecurity, c.relforcerowsecurity,"
    " has_table_privilege('agentapi_owner', c.oid, 'UPDATE'),"
    " has_table_privilege('agentapi_owner', c.oid, 'DELETE'),"
    " has_table_privilege('agentapi_owner', c.oid, 'TRUNCATE'),"
    " has_table_privilege('agentapi_app', c.oid, 'SELECT'),"
    " EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid"
    "         AND t.tgname = 'audit_logs_no_truncate' AND t.tgenabled <> 'D'),"
    " obj_description(c.oid, 'pg_class') IS NOT NULL"
    " FROM pg_class c WHERE c.relname = %s"
)


@pytest.fixture(scope="module")
def conn(identity_db: TestDatabase) -> Iterator[Conn]:
    """Superuser connection to the module's database, seeded and committed once."""
    connection = identity_db.connect()
    for statement in _SEED:
        connection.execute(statement.encode(), IDS)
    connection.commit()
    yield connection


def _scalar(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0]


def _error(conn: Conn, query: str, params: Any) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info, conn.transaction():
        conn.execute(query.encode(), params)
    return info.value


# --- update_updated_at_column -------------------------------------------------------------


def test_updated_at_tables_are_the_ones_tested(conn: Conn) -> None:
    with acting(conn, None):
        found = [str(r[0]) for r in conn.execute(_TABLES_WITH_UPDATED_AT)]
    assert found == sorted(UPDATED_AT_TABLES)


@pytest.mark.parametrize("table", UPDATED_AT_TABLES)
def test_update_moves_updated_at(conn: Conn, table: str) -> None:
    ident = sql.Identifier(table)
    with acting(conn, None):
        before = conn.execute(sql.SQL(_UPDATED_AT).format(ident)).fetchall()
        assert before == [(False, before[0][1])], "seeded rows start in the past"
        touched = conn.execute(sql.SQL(_TOUCH).format(ident)).rowcount
        after = conn.execute(sql.SQL(_UPDATED_AT).format(ident)).fetchall()
    assert touched >= 1
    assert after == [(True, touched)]


def test_updated_at_cannot_be_backdated_by_an_update(conn: Conn) -> None:
    with acting(conn, None):
        conn.execute("UPDATE organizations SET updated_at = %s WHERE id = %s", (OLD, ORG1))
        row = conn.execute("SELECT updated_at = now() FROM organizations WHERE id = %s", (ORG1,))
        assert row.fetchone() == (True,)


# --- agentapi_auth.requested_user_id ------------------------------------------------------

_CANONICAL_UUID = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
)
_REQUESTED = "SELECT set_config('app.user_id', %s, true), agentapi_auth.requested_user_id()"
_HEXISH = st.sampled_from("0123456789abcdefABCDEF-{}g G\n\u0660\uff10x_%")


def _uuid_like() -> st.SearchStrategy[str]:
    """Canonical UUIDs, and near misses: one character changed, added or removed."""
    canonical = st.uuids().map(str).flatmap(
        lambda u: st.sampled_from([u, u.upper()])
    )
    mutated = st.tuples(canonical, st.integers(0, 36), _HEXISH, st.sampled_from("rid")).map(
        lambda t: (t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]) if t[3] == "r"
        else (t[0][: t[1]] + t[2] + t[0][t[1] :]) if t[3] == "i"
        else (t[0][: t[1]] + t[0][t[1] + 1 :])
    )
    return st.one_of(canonical, mutated, st.text(_HEXISH, max_size=40))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_uuid_like())
@example(value="0123abcd-0000-4000-8000-00000000000A")
@example(value="x123abcd-0000-4000-8000-000000000000")  # not hex at the first place
@example(value="0123abcd-0000-4000-8000-00000000000x")  # nor at the last
@example(value="0123abcd-0000-4000-8000-0000000-0000")  # a fifth hyphen
@example(value="0123abcd-0000-4000-8000-000000000000\n")
@example(value="0123abcd-0000-4000-8000-00000000000\u00e9")  # 36 characters, one multibyte
@example(value="{0123abcd-0000-4000-8000-000000000000}")
@example(value="0123abcd00004000800000000000000000000")
@example(value="")
def test_requested_user_id_accepts_exactly_canonical_uuids(conn: Conn, value: str) -> None:
    with acting(conn, None):
        row = conn.execute(_REQUESTED, (value,)).fetchone()
    assert row is not None
    if _CANONICAL_UUID.fullmatch(value):
        assert row[1] == uuid.UUID(value)
    else:
        assert row[1] is None


# --- encrypt_token / decrypt_token ---------------------------------------------------------


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
                     max_size=300))
def test_encrypt_decrypt_round_trip(conn: Conn, token: str) -> None:
    with acting(conn, None):
        ciphertext = _scalar(conn, _ENCRYPT, (token, KEY))
        assert isinstance(ciphertext, str)
        assert ciphertext.startswith("ag1:") and ciphertext[20] == ":"
        base64.b64decode(ciphertext[21:], validate=True)
        if len(token) >= 4:
            assert token not in ciphertext
        assert _scalar(conn, _DECRYPT, (ciphertext, KEY)) == token


def test_null_in_null_out(conn: Conn) -> None:
    with acting(conn, None):
        assert _scalar(conn, _ENCRYPT, (None, KEY)) is None
        assert _scalar(conn, _DECRYPT, (None, KEY)) is None


def test_two_encryptions_differ(conn: Conn) -> None:
    with acting(conn, None):
        first = _scalar(conn, _ENCRYPT, ("gho_same_token", KEY))
        second = _scalar(conn, _ENCRYPT, ("gho_same_token", KEY))
        assert first != second
        assert _scalar(conn, _DECRYPT, (first, KEY)) == _scalar(conn, _DECRYPT, (second, KEY))


def test_wrong_key_raises(conn: Conn) -> None:
    with acting(conn, None):
        ciphertext = _scalar(conn, _ENCRYPT, ("gho_secret", KEY))
        error = _error(conn, _DECRYPT, (ciphertext, OTHER_KEY))
    assert error.sqlstate == WRONG_KEY
    assert "Wrong key or corrupt data" in str(error)
    assert OTHER_KEY not in str(error) and KEY not in str(error)


def _corruptions(ciphertext: str) -> dict[str, str]:
    head, raw = ciphertext[:21], base64.b64decode(ciphertext[21:])
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x01
    last = bytearray(raw)
    last[-1] ^= 0x80
    return {
        "flipped_middle_byte": head + base64.b64encode(bytes(flipped)).decode(),
        "flipped_last_byte": head + base64.b64encode(bytes(last)).decode(),
        "truncated_half": head + base64.b64encode(raw[: len(raw) // 2]).decode(),
        "truncated_one_byte": head + base64.b64encode(raw[:-1]).decode(),
        "empty": head,
        "garbage_bytes": head + base64.b64encode(b"\x00" * 64).decode(),
    }


@pytest.mark.parametrize(
    "kind",
    ["flipped_middle_byte", "flipped_last_byte", "truncated_half", "truncated_one_byte",
     "empty", "garbage_bytes"],
)
def test_corrupt_ciphertext_raises(conn: Conn, kind: str) -> None:
    with acting(conn, None):
        ciphertext = _scalar(conn, _ENCRYPT, ("gho_secret_token_value", KEY))
        error = _error(conn, _DECRYPT, (_corruptions(ciphertext)[kind], KEY))
    assert error.sqlstate == WRONG_KEY, str(error)
    assert KEY not in str(error)


def test_malformed_base64_raises(conn: Conn) -> None:
    with acting(conn, None):
        error = _error(conn, _DECRYPT, ("not base64 at all!", KEY))
    assert error.sqlstate == INVALID_PARAMETER


@pytest.mark.parametrize("query", [_ENCRYPT, _DECRYPT], ids=["encrypt", "decrypt"])
@pytest.mark.parametrize("key", ["short", "x" * 31, "", None], ids=["5", "31", "empty", "null"])
def test_short_or_missing_key_raises(conn: Conn, query: str, key: str | None) -> None:
    with acting(conn, None):
        ciphertext = _scalar(conn, _ENCRYPT, ("gho_token", KEY))
        argument = "gho_token" if query == _ENCRYPT else ciphertext
        error = _error(conn, query, (argument, key))
    assert error.sqlstate == INVALID_PARAMETER
    assert "encryption key must be at least 32 characters" in str(error)
    if key:
        assert key not in str(error)


def test_key_of_32_characters_but_under_256_bits_raises(conn: Conn) -> None:
    # 32 base64 characters are 24 bytes: the ag1 format needs the full 256 bits.
    with acting(conn, None):
        error = _error(conn, _ENCRYPT, ("t", "k" * 32))
    assert error.sqlstate == INVALID_PARAMETER
    assert "256 bits" in str(error) and "k" * 32 not in str(error)


def test_base64_key_of_32_bytes_works(conn: Conn) -> None:
    key = base64.b64encode(bytes.fromhex(KEY)).decode()
    with acting(conn, None):
        assert _scalar(conn, _DECRYPT, (_scalar(conn, _ENCRYPT, ("t", key)), KEY)) == "t"


def test_application_can_encrypt_and_decrypt(identity_db: TestDatabase) -> None:
    with identity_db.connect(APP_LOGIN) as app, acting(app, "agentapi_app", str(U1)):
        assert _scalar(app, _DECRYPT, (_scalar(app, _ENCRYPT, ("t", KEY)), KEY)) == "t"


# --- log_audit_event -----------------------------------------------------------------------


def _log_params(user_id: uuid.UUID | None, org_id: uuid.UUID | None) -> dict[str, Any]:
    return {"user_id": user_id, "org_id": org_id, "action": "config.update",
            "resource_type": "mcp_configuration", "resource_id": str(CFG),
            "details": Jsonb({"field": "endpoint"}), "ip": "192.0.2.7", "agent": "curl/8"}


@pytest.mark.parametrize("login, role", [(SERVICE_LOGIN, "agentapi_service"),
                                         (APP_LOGIN, "agentapi_app")])
def test_log_audit_event_returns_id_of_stored_row(
    identity_db: TestDatabase, login: str, role: str
) -> None:
    with identity_db.connect(login) as other, acting(other, role, str(U2)):
        event_id = _scalar(other, _LOG, _log_params(U2, ORG1))
        assert isinstance(event_id, uuid.UUID)
        row = other.execute(_AUDIT_ROW.encode(), (event_id,)).fetchone()
    assert row == (U2, ORG1, "config.update", "mcp_configuration", str(CFG),
                   {"field": "endpoint"}, "192.0.2.7", "curl/8", True, None, True)


def test_log_audit_event_records_failures_and_null_details(conn: Conn) -> None:
    with acting(conn, None):
        event_id = _scalar(conn, _LOG_FAILURE, {"user_id": None, "org_id": None})
        row = conn.execute(_AUDIT_ROW.encode(), (event_id,)).fetchone()
    assert row == (None, None, "login", "session", None, {}, None, None, False, "bad password",
                   True)


@pytest.mark.parametrize("user_id, org_id", [(U1, ORG1), (U2, ORG2), (U3, ORG2), (None, ORG1)],
                         ids=["other_user", "other_org", "other_tenant", "no_user"])
def test_log_audit_event_cannot_forge_as_application(
    identity_db: TestDatabase, user_id: uuid.UUID | None, org_id: uuid.UUID
) -> None:
    with identity_db.connect(APP_LOGIN) as app, acting(app, "agentapi_app", str(U2)):
        error = _error(app, _LOG, _log_params(user_id, org_id))
    assert error.sqlstate == INSUFFICIENT_PRIVILEGE
    assert "row-level security" in str(error)


# --- cleanup_expired_sessions --------------------------------------------------------------


def test_cleanup_deletes_exactly_the_expired_sessions(
    identity_db: TestDatabase, conn: Conn
) -> None:
    try:
        survivors: set[uuid.UUID] = set()
        for i, expires_in in enumerate(["-1 day", "-1 second", "-36 hours"]):
            conn.execute(_SESSION.encode(), {"user_id": U1 if i else U3,
                                             "org_id": ORG1 if i else ORG2,
                                             "path": f"/expired/{i}", "expires_in": expires_in})
        for i, expires_in in enumerate(["1 hour", "30 days"]):
            survivors.add(_scalar(conn, _SESSION, {"user_id": U2, "org_id": ORG1,
                                                   "path": f"/live/{i}", "expires_in": expires_in}))
        for i in range(2):
            survivors.add(_scalar(conn, _SESSION_NO_EXPIRY, {"user_id": U1, "org_id": ORG1,
                                                             "path": f"/forever/{i}"}))
        conn.commit()
        with identity_db.connect(SERVICE_LOGIN) as service, acting(service, "agentapi_service"):
            assert _scalar(service, _CLEANUP) == 3
            assert {r[0] for r in service.execute(_SESSION_IDS)} == survivors
            assert _scalar(service, _CLEANUP) == 0
    finally:
        conn.execute("DELETE FROM user_sessions")
        conn.commit()


def test_cleanup_is_not_for_the_application(identity_db: TestDatabase) -> None:
    with identity_db.connect(APP_LOGIN) as app, acting(app, "agentapi_app", str(U1)):
        error = _error(app, _CLEANUP, None)
    assert error.sqlstate == INSUFFICIENT_PRIVILEGE


# --- get_effective_system_prompts ----------------------------------------------------------

# (content, scope, org, user, priority, enabled, age in days)
_PROMPTS: tuple[tuple[str, str, uuid.UUID | None, uuid.UUID | None, int, bool, int], ...] = (
    ("global-low-old", "global", None, None, 0, True, 30),
    ("global-high", "global", None, None, 5, True, 1),
    ("global-low-new", "global", None, None, 0, True, 2),
    ("global-disabled", "global", None, None, 99, False, 1),
    ("org-1-newer", "organization", ORG1, None, 1, True, 1),
    ("org-1-older", "organization", ORG1, None, 1, True, 10),
    ("org-9", "organization", ORG1, None, 9, True, 1),
    ("org-disabled", "organization", ORG1, None, 50, False, 1),
    ("user-0-new", "user", ORG1, U1, 0, True, 1),
    ("user-0-old", "user", ORG1, U1, 0, True, 5),
    ("user-minus", "user", ORG1, U1, -3, True, 9),
    ("user-disabled", "user", ORG1, U1, 7, False, 1),
    ("other-user", "user", ORG1, U2, 100, True, 1),
    ("other-org", "organization", ORG2, None, 100, True, 1),
    ("other-org-user", "user", ORG2, U3, 100, True, 1),
)
EXPECTED_FOR_U1 = [
    ("user-0-old", "user"), ("user-0-new", "user"), ("user-minus", "user"),
    ("org-9", "organization"), ("org-1-older", "organization"), ("org-1-newer", "organization"),
    ("global-high", "global"), ("global-low-old", "global"), ("global-low-new", "global"),
]


@pytest.fixture
def prompts(conn: Conn) -> Iterator[None]:
    """The prompts above, committed (other logins must see them), removed afterwards."""
    conn.execute("DELETE FROM system_prompts")
    for content, scope, org_id, user_id, priority, enabled, age in _PROMPTS:
        conn.execute(_PROMPT.encode(), {
            "scope": scope, "org_id": org_id, "user_id": user_id, "content": content,
            "priority": priority, "enabled": enabled,
            "created_at": datetime.now(UTC) - timedelta(days=age),
        })
    conn.commit()
    try:
        yield
    finally:
        conn.execute("DELETE FROM system_prompts")
        conn.commit()


def _effective(conn: Conn, user_id: uuid.UUID, org_id: uuid.UUID) -> list[tuple[str, str, int]]:
    return [(str(r[0]), str(r[1]), int(r[2]))
            for r in conn.execute(_EFFECTIVE.encode(), (user_id, org_id))]


@pytest.mark.usefixtures("prompts")
@pytest.mark.parametrize("login, role", [(SERVICE_LOGIN, "agentapi_service"),
                                         (APP_LOGIN, "agentapi_app")])
def test_effective_prompts_order(identity_db: TestDatabase, login: str, role: str) -> None:
    with identity_db.connect(login) as other, acting(other, role, str(U1)):
        rows = _effective(other, U1, ORG1)
    assert [(content, scope) for content, scope, _ in rows] == EXPECTED_FOR_U1
    assert [precedence for _, _, precedence in rows] == list(range(1, len(EXPECTED_FOR_U1) + 1))


@pytest.mark.usefixtures("prompts")
def test_effective_prompts_for_a_member_without_user_prompts(conn: Conn) -> None:
    with acting(conn, None):
        rows = _effective(conn, U3, ORG2)
    assert [c for c, _, _ in rows] == ["other-org-user", "other-org", "global-high",
                                       "global-low-old", "global-low-new"]


@pytest.mark.usefixtures("prompts")
@pytest.mark.parametrize("user_id, org_id", [(U1, ORG2), (U3, ORG1), (uuid.uuid4(), ORG1)],
                         ids=["user_not_in_org", "other_tenant_user", "unknown_user"])
def test_effective_prompts_empty_unless_user_in_org(
    conn: Conn, user_id: uuid.UUID, org_id: uuid.UUID
) -> None:
    with acting(conn, None):
        assert _effective(conn, user_id, org_id) == []


@pytest.mark.usefixtures("prompts")
def test_effective_prompts_never_cross_tenants_for_the_application(
    identity_db: TestDatabase,
) -> None:
    with identity_db.connect(APP_LOGIN) as app, acting(app, "agentapi_app", str(U1)):
        assert _effective(app, U3, ORG2) == []
        # Another member of the same org: RLS hides U2's own prompt from U1.
        assert [c for c, _, _ in _effective(app, U2, ORG1)] == [
            "org-9", "org-1-older", "org-1-newer", "global-high", "global-low-old",
            "global-low-new",
        ]


# --- audit_ensure_partitions ---------------------------------------------------------------


def _partitions(conn: Conn) -> list[str]:
    return [str(r[0]) for r in conn.execute(_PARTITIONS)]


def _expected(conn: Conn, ahead: int, back: int) -> list[str]:
    return [str(r[0]) for r in conn.execute(_EXPECTED_PARTITIONS.encode(),
                                            {"ahead": ahead, "back": back})]


_RELOPTIONS = "SELECT reloptions FROM pg_class WHERE oid = ('public.' || quote_ident(%s))::regclass"


def test_ensure_partitions_creates_months_and_is_idempotent(db: TestDatabase) -> None:
    with db.connect() as conn:
        before = _partitions(conn)
        assert set(_expected(conn, 3, 1)) <= set(before), "the schema creates -1..+3"
        created = _scalar(conn, _ENSURE, (6, 2))
        after = _partitions(conn)
        assert sorted(set(before) | set(_expected(conn, 6, 2))) == after
        wanted = set(_expected(conn, 6, 2))
        assert created == len(wanted - set(before)) == len(after) - len(before) > 0
        assert _scalar(conn, _ENSURE, (6, 2)) == 0
        assert _partitions(conn) == after
        conn.commit()
        for name in set(after) - set(before):
            posture = conn.execute(_PARTITION_POSTURE, (name,)).fetchone()
            # RLS on+forced; owner: no UPDATE/DELETE/TRUNCATE; the app reads only through
            # the parent (no grant on the partition itself); truncate trigger; comment
            assert posture == (True, True, False, False, False, False, True, True), name
            # analyzed after 0.5% change: the current month's stats go stale fast
            assert _scalar(conn, _RELOPTIONS, (name,)) == ["autovacuum_analyze_scale_factor=0.005"]
        assert run_lints(conn, ["rls_not_enabled_or_forced", "audit_log_mutable",
                                "missing_comments", "public_grants"]) == []


def test_new_partitions_refuse_change_for_owner_and_superuser(db: TestDatabase) -> None:
    with db.connect() as conn:
        _scalar(conn, _ENSURE, (6, 0))
        conn.commit()
        newest = _partitions(conn)[-1]
        start = _scalar(conn, _MONTH_START, (6,))
        assert _scalar(conn, _INSERT_AUDIT_AT, (start,)) == newest
        conn.commit()
        table = sql.Identifier(newest)
        for statement in ("UPDATE {} SET action = 'x'", "DELETE FROM {}", "TRUNCATE {}"):
            with pytest.raises(psycopg.Error) as info, conn.transaction():
                conn.execute(sql.SQL(statement).format(table))
            assert info.value.sqlstate == INSUFFICIENT_PRIVILEGE
            assert "append-only" in str(info.value)
        with db.connect(OWNER_LOGIN) as owner, acting(owner, "agentapi_owner"):
            for statement in ("UPDATE {} SET action = 'x'", "DELETE FROM {}", "TRUNCATE {}"):
                with pytest.raises(psycopg.Error) as info, owner.transaction():
                    owner.execute(sql.SQL(statement).format(table))
                assert info.value.sqlstate == INSUFFICIENT_PRIVILEGE


@pytest.mark.parametrize("ahead, back", [(-1, 0), (0, -1), (None, 0), (0, None), (121, 0),
                                         (0, 241)])
def test_ensure_partitions_refuses_bad_arguments(
    db: TestDatabase, ahead: int | None, back: int | None
) -> None:
    with db.connect() as conn:
        before = _partitions(conn)
        error = _error(conn, _ENSURE, (ahead, back))
        assert error.sqlstate == INVALID_PARAMETER
        assert "months_ahead must be 0..120 and months_back 0..240" in str(error)
        assert _partitions(conn) == before


def test_ensure_partitions_refuses_to_park_an_event_in_the_default_partition(
    db: TestDatabase,
) -> None:
    # A month ahead of the partitions is refused at insert (it would stop upkeep for
    # that month); tests/test_smaller_findings.py covers stray rows already there.
    with db.connect() as conn:
        before = _partitions(conn)
        stray = _scalar(conn, _MONTH_START, (7,)) + timedelta(days=3)
        error = _error(conn, _INSERT_AUDIT_AT, (stray,))
        assert error.sqlstate == CHECK_VIOLATION
        assert "outside the monthly partitions" in str(error)
        assert _partitions(conn) == before
        assert _scalar(conn, _ENSURE, (8, 0)) == 5


def test_events_land_in_their_month(db: TestDatabase) -> None:
    with db.connect() as conn:
        for offset in (-1, 0, 1, 3):
            start = _scalar(conn, _MONTH_START, (offset,))
            expected = "audit_logs_" + start.strftime("y%Ym%m")
            assert _scalar(conn, _INSERT_AUDIT_AT, (start,)) == expected
            last_instant = start.replace(day=28) + timedelta(days=4)
            last_instant = last_instant.replace(day=1) - timedelta(microseconds=1)
            assert _scalar(conn, _INSERT_AUDIT_AT, (last_instant,)) == expected
        conn.rollback()
        old = datetime(2001, 5, 5, tzinfo=UTC)
        assert _error(conn, _INSERT_AUDIT_AT, (old,)).sqlstate == CHECK_VIOLATION


def test_service_may_ensure_partitions_application_may_not(db: TestDatabase) -> None:
    with db.connect(SERVICE_LOGIN) as service, acting(service, "agentapi_service"):
        assert _scalar(service, _ENSURE, (4, 0)) == 1
    with db.connect(APP_LOGIN) as app, acting(app, "agentapi_app", str(U1)):
        assert _error(app, _ENSURE, (4, 0)).sqlstate == INSUFFICIENT_PRIVILEGE
