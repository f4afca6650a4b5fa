"""The identity helpers' two implementations, and what the identity cache must keep.

``database/schema.sql`` installs the helpers ``agentapi_auth.user_id()`` & co. either
as portable SECURITY DEFINER lookups or, with the extension ``agentapi_identity``
(``ext/``), as inlined calls of its per-transaction cache. The access matrix runs
in both modes (``tests/test_access_matrix.py``); this module pins what the cache
adds: that both give the same answers when ``users`` changes (in this transaction,
in another one, under an older snapshot, in an aborted subtransaction), that it
parses ``app.user_id`` exactly as ``requested_user_id()`` does, and who may call it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentapi_db.lint import run_lints
from tests.access_fixtures import ID, Seeded, seed
from tests.cli_fixtures import run_cli
from tests.pg import (
    OUTSIDER_LOGIN,
    SCHEMA_SQL,
    SUPERUSER,
    PgServer,
    TestDatabase,
    create_database,
    drop_database,
    psql_path,
    scratch_database,
    set_identity_mode,
    unique_name,
)

# --- SQL (all of this module's statements) ---------------------------------------
_HELPER_SHAPES = """
SELECT p.proname, l.lanname, p.prosecdef
  FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
 WHERE p.pronamespace = 'agentapi_auth'::regnamespace
   AND p.proname IN ('user_id', 'organization_id', 'admin_organization_id', 'user_email')
 ORDER BY 1
"""
_EXTENSION = "SELECT count(*) FROM pg_extension WHERE extname = 'agentapi_identity'"
_AS_OWNER = "SET LOCAL ROLE agentapi_owner"
_USE = "SELECT agentapi_auth.use_identity_cache(%s)"
_DROP_EXTENSION = "DROP EXTENSION agentapi_identity"
_AS_APP = "SET LOCAL ROLE agentapi_app"
_RESET_ROLE = "RESET ROLE"
_SET_USER = "SELECT set_config('app.user_id', %s, true)"
_IDENTITY = (
    "SELECT agentapi_auth.user_id(), agentapi_auth.organization_id(),"
    " agentapi_auth.admin_organization_id(), agentapi_auth.user_email()"
)
_ORG_SESSIONS = "SELECT count(*) FROM public.user_sessions WHERE organization_id = %s"
_VISIBLE_SESSIONS = "SELECT count(*) FROM public.user_sessions"
_SET_ROLE_OF = "UPDATE public.users SET role = %s WHERE id = %s"
_ROLE_OF = "SELECT role::text FROM public.users WHERE id = %s"
_SET_ACTIVE_OF = "UPDATE public.users SET is_active = %s WHERE id = %s"
_SAVEPOINT = "SAVEPOINT s"
_ROLLBACK_TO = "ROLLBACK TO SAVEPOINT s"
_PARSE_BOTH = (
    "SELECT agentapi_auth.cached_user_id(),"
    " (SELECT u.id FROM public.users AS u"
    "   WHERE u.id = agentapi_auth.requested_user_id() AND u.is_active)"
)
_CALL_CACHE = "SELECT agentapi_auth.cached_user_id()"
_PROMOTE_SELF = "UPDATE public.users SET role = 'admin', is_active = true WHERE id = %s"
_DEACTIVATE_OTHER = "UPDATE public.users SET is_active = false WHERE id = %s"
_TRUNCATE_USERS = "TRUNCATE public.users CASCADE"
_DECLARE = "DECLARE c CURSOR FOR SELECT agentapi_auth.admin_organization_id()"
_FETCH = "FETCH c"
_PREPARE = "PREPARE org_sessions AS SELECT count(*) FROM public.user_sessions"
_EXECUTE = "EXECUTE org_sessions"
_DEALLOCATE = "DEALLOCATE org_sessions"
_SET_TARGET = "SELECT set_config('agentapi_test.target', %s, true)"
_PROMOTE_THEN_FAIL = """
DO $$
DECLARE
    seen bigint;
BEGIN
    BEGIN
        UPDATE public.users SET role = 'admin'
         WHERE id = current_setting('agentapi_test.target')::uuid;
        SET LOCAL ROLE agentapi_app;
        SELECT count(*) INTO seen FROM public.user_sessions;
        RAISE NOTICE 'seen %', seen;
        RAISE EXCEPTION 'undo';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
END
$$
"""
_CACHED_EMAIL_ONLY = (
    "CREATE OR REPLACE FUNCTION agentapi_auth.user_email() RETURNS text LANGUAGE sql"
    " STABLE RETURN agentapi_auth.cached_user_email()"
)

ORG_A = ID["org_A"]
ORG_B = ID["org_B"]
# Seeded sessions per organization (tests/access_fixtures.py): org_A has one per user
# of org_A plus one expired; member_A has two (one expired).
ORG_A_SESSIONS = 6
MEMBER_A_SESSIONS = 2
ADMIN_A = (ID["admin_A"], ORG_A, ORG_A, "admin@a.example.com")
MEMBER_B = (ID["member_B"], ORG_B, None, "member@b.example.com")
NOBODY = (None, None, None, None)


@pytest.fixture(scope="module")
def seeded(
    pg_server: PgServer, template_db: str, login_roles: dict[str, str | None]
) -> Iterator[Seeded]:
    with scratch_database(pg_server, template_db) as database:
        yield seed(database)


@pytest.fixture(scope="module")
def superuser_conn(seeded: Seeded) -> psycopg.Connection[tuple[object, ...]]:
    """One superuser connection for the many parse examples (each rolls back)."""
    return _superuser(seeded.db)


@pytest.fixture
def mode_db(
    request: pytest.FixtureRequest, identity_fn_db: TestDatabase
) -> tuple[str, Seeded]:
    """(mode, seeded database), once per identity-helper mode."""
    return str(request.node.callspec.params["identity_fn_db"]), seed(identity_fn_db)


def _superuser(db: TestDatabase) -> psycopg.Connection[tuple[object, ...]]:
    return db.connect(SUPERUSER)


@contextmanager
def _rolled_back(seeded: Seeded) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A superuser connection whose transaction is rolled back at the end."""
    conn = _superuser(seeded.db)
    try:
        yield conn
    finally:
        conn.rollback()


def _act(conn: psycopg.Connection[tuple[object, ...]], user: str) -> None:
    conn.execute(_AS_APP)
    conn.execute(_SET_USER, (str(ID[user]),))


def _count(conn: psycopg.Connection[tuple[object, ...]], query: str, *args: object) -> int:
    row = conn.execute(query, args or None).fetchone()
    assert row is not None
    return int(str(row[0]))


# --- the two shapes ----------------------------------------------------------------


def test_template_uses_the_cache_and_can_switch_both_ways(seeded: Seeded) -> None:
    with _rolled_back(seeded) as conn:
        assert _count(conn, _EXTENSION) == 1, (
            "the test server lacks ext/agentapi_identity: run scripts/install-deps.sh"
        )
        shapes = conn.execute(_HELPER_SHAPES).fetchall()
        assert {(lang, definer) for _, lang, definer in shapes} == {("sql", False)}

        conn.execute(_AS_OWNER)
        assert conn.execute(_USE, (False,)).fetchone() == (False,)
        shapes = conn.execute(_HELPER_SHAPES).fetchall()
        assert {(lang, definer) for _, lang, definer in shapes} == {("plpgsql", True)}

        assert conn.execute(_USE, (True,)).fetchone() == (True,)
        shapes = conn.execute(_HELPER_SHAPES).fetchall()
        assert {(lang, definer) for _, lang, definer in shapes} == {("sql", False)}


def test_a_null_choice_is_refused_and_changes_nothing(seeded: Seeded) -> None:
    with _rolled_back(seeded) as conn:
        conn.execute(_AS_OWNER)
        with pytest.raises(psycopg.errors.NullValueNotAllowed, match="true"):
            conn.execute(_USE, (None,))
        conn.rollback()
        shapes = conn.execute(_HELPER_SHAPES).fetchall()
        assert {(lang, definer) for _, lang, definer in shapes} == {("sql", False)}


def test_the_cache_cannot_be_chosen_without_the_extension(db: TestDatabase) -> None:
    conn = _superuser(db)
    try:
        conn.execute(_AS_OWNER)
        conn.execute(_USE, (False,))
        conn.execute(_RESET_ROLE)
        conn.execute(_DROP_EXTENSION)
        conn.execute(_AS_OWNER)
        with pytest.raises(psycopg.errors.UndefinedObject, match="agentapi_identity") as info:
            conn.execute(_USE, (True,))
        assert info.value.diag.message_hint is not None
        assert "CREATE EXTENSION agentapi_identity" in info.value.diag.message_hint
    finally:
        conn.rollback()


def test_schema_applies_without_the_extension_when_told(pg_server: PgServer) -> None:
    """agentapi.identity_cache = off: the portable helpers, no extension, lints clean."""
    name = unique_name("agentapi_portable")
    create_database(pg_server, name)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGOPTIONS"] = "-c agentapi.identity_cache=off"
        result = subprocess.run(
            [psql_path(), "-X", "-v", "ON_ERROR_STOP=1", "-q", "-d", pg_server.url(name),
             "-f", str(SCHEMA_SQL)],
            capture_output=True, text=True, check=False, env=env, timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        with psycopg.connect(pg_server.url(name)) as conn:
            assert _count(conn, _EXTENSION) == 0
            shapes = conn.execute(_HELPER_SHAPES).fetchall()
            assert {(lang, definer) for _, lang, definer in shapes} == {("plpgsql", True)}
            assert run_lints(conn) == []
    finally:
        drop_database(pg_server, name)


# --- when the cache must look again -------------------------------------------------


def test_a_change_to_users_is_seen_by_the_next_statement(mode_db: tuple[str, Seeded]) -> None:
    """An admin demoted in this transaction loses admin rights at the next statement."""
    _, seeded = mode_db
    with _rolled_back(seeded) as conn:
        _act(conn, "admin_A")
        assert _count(conn, _ORG_SESSIONS, ORG_A) == ORG_A_SESSIONS
        conn.execute(_RESET_ROLE)
        conn.execute(_SET_ROLE_OF, ("user", ID["admin_A"]))
        conn.execute(_AS_APP)
        assert _count(conn, _ORG_SESSIONS, ORG_A) == 1  # their own session only
        conn.execute(_RESET_ROLE)
        conn.execute(_SET_ACTIVE_OF, (False, ID["admin_A"]))
        conn.execute(_AS_APP)
        assert _count(conn, _VISIBLE_SESSIONS) == 0


def test_an_aborted_subtransaction_takes_its_identity_with_it(
    mode_db: tuple[str, Seeded],
) -> None:
    """Promoted inside a savepoint, cached as admin, rolled back: a member again."""
    _, seeded = mode_db
    with _rolled_back(seeded) as conn:
        conn.execute(_SAVEPOINT)
        conn.execute(_SET_ROLE_OF, ("admin", ID["member_A"]))
        _act(conn, "member_A")
        assert _count(conn, _ORG_SESSIONS, ORG_A) == ORG_A_SESSIONS
        conn.execute(_ROLLBACK_TO)
        _act(conn, "member_A")
        assert _count(conn, _ORG_SESSIONS, ORG_A) == MEMBER_A_SESSIONS


def test_a_rewritten_users_table_is_read_afresh(mode_db: tuple[str, Seeded]) -> None:
    """TRUNCATE in this transaction gives every row a new place: nobody, not an error."""
    _, seeded = mode_db
    with _rolled_back(seeded) as conn:
        _act(conn, "admin_A")
        assert conn.execute(_IDENTITY).fetchone() == ADMIN_A
        conn.execute(_RESET_ROLE)
        conn.execute(_TRUNCATE_USERS)
        conn.execute(_AS_APP)
        assert conn.execute(_IDENTITY).fetchone() == NOBODY


def test_a_new_app_user_id_is_looked_up(mode_db: tuple[str, Seeded]) -> None:
    _, seeded = mode_db
    with _rolled_back(seeded) as conn:
        _act(conn, "admin_A")
        assert conn.execute(_IDENTITY).fetchone() == ADMIN_A
        conn.execute(_SET_USER, (str(ID["member_B"]),))
        assert conn.execute(_IDENTITY).fetchone() == MEMBER_B
        conn.execute(_SET_USER, (str(ID["inactive_A"]),))
        assert conn.execute(_IDENTITY).fetchone() == NOBODY
        conn.execute(_SET_USER, ("",))
        assert conn.execute(_IDENTITY).fetchone() == NOBODY


def test_nothing_carries_over_to_the_next_transaction(mode_db: tuple[str, Seeded]) -> None:
    """One pooled connection: user A, then no user, then user B."""
    _, seeded = mode_db
    conn = seeded.db.connect("app_login")
    try:
        _act(conn, "admin_A")
        assert _count(conn, _VISIBLE_SESSIONS) == ORG_A_SESSIONS
        conn.commit()
        conn.execute(_AS_APP)
        assert conn.execute(_IDENTITY).fetchone() == NOBODY
        assert _count(conn, _VISIBLE_SESSIONS) == 0
        conn.commit()
        _act(conn, "member_B")
        assert conn.execute(_IDENTITY).fetchone() == MEMBER_B
    finally:
        conn.rollback()


def test_a_change_committed_elsewhere_is_seen_by_the_next_statement(
    mode_db: tuple[str, Seeded],
) -> None:
    """Another transaction deactivates admin_A and commits: the next statement sees it."""
    _, seeded = mode_db
    app = seeded.db.connect("app_login")
    other = _superuser(seeded.db)
    try:
        _act(app, "admin_A")
        assert _count(app, _VISIBLE_SESSIONS) == ORG_A_SESSIONS
        other.execute(_SET_ACTIVE_OF, (False, ID["admin_A"]))
        other.commit()
        assert _count(app, _VISIBLE_SESSIONS) == 0
        assert app.execute(_IDENTITY).fetchone() == NOBODY
    finally:  # the clone is dropped after the test: nothing to restore
        app.rollback()
        other.rollback()


def test_a_demoted_admin_cannot_write_with_the_rights_they_lost(
    mode_db: tuple[str, Seeded],
) -> None:
    """Demoted by another transaction mid-way, admin_A cannot write as an admin any more."""
    _, seeded = mode_db
    app = seeded.db.connect("app_login")
    other = _superuser(seeded.db)
    try:
        _act(app, "admin_A")
        assert _count(app, _ORG_SESSIONS, ORG_A) == ORG_A_SESSIONS  # an admin, answer kept
        other.execute(_SET_ROLE_OF, ("user", ID["admin_A"]))
        other.commit()
        # A member now: the admin update policy no longer reaches another user's row,
        # and the member self-update policy refuses the promotion.
        assert app.execute(_DEACTIVATE_OTHER, (ID["member_A"],)).rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            app.execute(_PROMOTE_SELF, (ID["admin_A"],))
        app.rollback()
        row = other.execute(_ROLE_OF, (ID["admin_A"],)).fetchone()
        other.commit()
        assert row == ("user",)
    finally:  # the clone is dropped after the test: nothing to restore
        app.rollback()
        other.rollback()


def test_an_older_snapshot_does_not_outlive_the_change(mode_db: tuple[str, Seeded]) -> None:
    """A cursor opened before the change answers as of its snapshot; the next statement
    after it answers as of now, in both modes."""
    _, seeded = mode_db
    with _rolled_back(seeded) as conn:
        conn.execute(_AS_APP)
        conn.execute(_SET_USER, (str(ID["admin_A"]),))
        conn.execute(_DECLARE)
        conn.execute(_RESET_ROLE)
        conn.execute(_SET_ACTIVE_OF, (False, ID["admin_A"]))
        conn.execute(_AS_APP)
        assert conn.execute(_FETCH).fetchone() == (ORG_A,)  # the cursor's snapshot
        assert conn.execute(_IDENTITY).fetchone() == NOBODY
        assert _count(conn, _VISIBLE_SESSIONS) == 0


def test_an_exception_block_takes_its_identity_with_it(mode_db: tuple[str, Seeded]) -> None:
    """Promoted and read as admin inside a plpgsql block that then fails: a member again."""
    _, seeded = mode_db
    conn = _superuser(seeded.db)
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
    try:
        _act(conn, "member_A")
        assert _count(conn, _VISIBLE_SESSIONS) == MEMBER_A_SESSIONS
        conn.execute(_RESET_ROLE)
        conn.execute(_SET_TARGET, (str(ID["member_A"]),))
        conn.execute(_PROMOTE_THEN_FAIL)
        assert notices == [f"seen {ORG_A_SESSIONS}"]  # an admin inside the block
        conn.execute(_AS_APP)
        assert _count(conn, _VISIBLE_SESSIONS) == MEMBER_A_SESSIONS
    finally:
        conn.rollback()


def test_a_prepared_statement_asks_again_on_each_execution(
    mode_db: tuple[str, Seeded],
) -> None:
    """Plans are cached, answers are not: the same prepared statement for two users."""
    _, seeded = mode_db
    conn = seeded.db.connect("app_login")
    try:
        conn.execute(_PREPARE)
        for _ in range(6):  # past the custom-plan phase, so the generic plan runs too
            _act(conn, "admin_A")
            assert _count(conn, _EXECUTE) == ORG_A_SESSIONS
            conn.execute(_SET_USER, (str(ID["member_B"]),))
            assert _count(conn, _EXECUTE) == 2
            conn.commit()
        conn.execute(_DEALLOCATE)
        conn.commit()
    finally:
        conn.rollback()


# --- parsing app.user_id exactly as requested_user_id() does ------------------------

_ACTIVE = str(ID["member_A"])


def _variants() -> st.SearchStrategy[str]:
    """Strings near a real active user's id: case changes, edits, wrappers, junk."""
    base = st.just(_ACTIVE)
    upper = st.just(_ACTIVE.upper())
    mixed = st.lists(st.booleans(), min_size=36, max_size=36).map(
        lambda flags: "".join(c.upper() if f else c for c, f in zip(_ACTIVE, flags, strict=True))
    )
    edited = st.tuples(
        st.integers(0, 36), st.integers(0, 2), st.text(max_size=3)
    ).map(lambda t: _ACTIVE[: t[0]] + t[2] + _ACTIVE[t[0] + t[1]:])
    wrapped = st.sampled_from(
        ["{%s}", " %s", "%s ", "urn:uuid:%s", "%s\n", "(%s)"]
    ).map(lambda fmt: fmt % _ACTIVE)
    compact = st.just(_ACTIVE.replace("-", ""))
    return st.one_of(base, upper, mixed, edited, wrapped, compact, st.text(max_size=40))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=_variants())
def test_the_cache_parses_app_user_id_like_requested_user_id(
    superuser_conn: psycopg.Connection[tuple[object, ...]], text: str
) -> None:
    if "\x00" in text:
        return  # a setting cannot hold NUL; set_config refuses it for both
    conn = superuser_conn
    try:
        conn.execute(_SET_USER, (text,))
        row = conn.execute(_PARSE_BOTH).fetchone()
    finally:
        conn.rollback()
    assert row is not None
    cached, portable = row
    assert cached == portable, f"app.user_id = {text!r}"


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        (_ACTIVE, True),
        (_ACTIVE.upper(), True),
        (_ACTIVE[:9] + _ACTIVE[9:].upper(), True),
        (_ACTIVE.replace("-", ""), False),
        ("{" + _ACTIVE + "}", False),
        (" " + _ACTIVE, False),
        (_ACTIVE[:-1] + "g", False),
        (_ACTIVE[:8] + "+" + _ACTIVE[9:], False),
        ("", False),
    ],
)
def test_the_cache_accepts_canonical_ids_only(
    superuser_conn: psycopg.Connection[tuple[object, ...]], text: str, accepted: bool
) -> None:
    conn = superuser_conn
    try:
        conn.execute(_SET_USER, (text,))
        row = conn.execute(_PARSE_BOTH).fetchone()
    finally:
        conn.rollback()
    expected = ID["member_A"] if accepted else None
    assert row == (expected, expected)


# --- who may call it ---------------------------------------------------------------


def test_outsiders_cannot_read_the_cache(seeded: Seeded) -> None:
    conn = seeded.db.connect(OUTSIDER_LOGIN)
    try:
        conn.execute(_SET_USER, (str(ID["admin_A"]),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(_CALL_CACHE)
    finally:
        conn.rollback()


# --- agentapi-db identity-cache -------------------------------------------------------


def test_cli_shows_and_switches_the_identity_helpers(db: TestDatabase) -> None:
    env = {"AGENTAPI_DATABASE_URL": db.url(SUPERUSER)}
    shown = run_cli("identity-cache", "--json", env=env)
    assert shown.code == 0, str(shown)
    assert json.loads(shown.stdout) == {
        "mode": "cache", "extension_version": "1.0", "extension_available": "1.0",
        "problems": [],
    }
    off = run_cli("identity-cache", "--off", env=env)
    assert off.code == 0 and "identity helpers: portable" in off.stdout, str(off)
    with db.connect(SUPERUSER) as conn:
        shapes = conn.execute(_HELPER_SHAPES).fetchall()
    assert {(lang, definer) for _, lang, definer in shapes} == {("plpgsql", True)}
    on = run_cli("identity-cache", "--on", "--json", env=env)
    assert on.code == 0 and json.loads(on.stdout)["mode"] == "cache", str(on)


def test_cli_refuses_the_cache_without_the_extension(db: TestDatabase) -> None:
    set_identity_mode(db, "portable")
    with db.connect(SUPERUSER) as conn:
        conn.execute(_DROP_EXTENSION)
        conn.commit()
    env = {"AGENTAPI_DATABASE_URL": db.url(SUPERUSER)}
    out = run_cli("identity-cache", "--on", env=env)
    assert out.code == 3, str(out)
    assert "CREATE EXTENSION agentapi_identity" in out.stderr
    assert "Traceback" not in out.stderr
    shown = run_cli("identity-cache", env=env)
    assert shown.code == 0 and "portable; agentapi_identity not installed" in shown.stdout


def test_cli_reports_a_half_switched_database(db: TestDatabase) -> None:
    set_identity_mode(db, "portable")
    with db.connect(SUPERUSER) as conn:
        conn.execute(_AS_OWNER)
        conn.execute(_CACHED_EMAIL_ONLY)
        conn.commit()
    out = run_cli("identity-cache", env={"AGENTAPI_DATABASE_URL": db.url(SUPERUSER)})
    assert out.code == 1 and "identity helpers: invalid" in out.stdout, str(out)
    assert "mix the portable and the identity-cache shapes" in out.stdout
