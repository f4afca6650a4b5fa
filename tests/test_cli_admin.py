"""Admin commands through the installed ``agentapi-db`` entry point (subprocesses)."""

from __future__ import annotations

import csv
import io
import json
import re
import select
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest

from agentapi_db import Database, EncryptionKey
from tests.cli_fixtures import assert_clean_error, cli_env, entry_point, run_cli
from tests.pg import APP_LOGIN, SERVICE_LOGIN, TestDatabase

# ---------------------------------------------------------------------------
# SQL (seeding and checks, as the superuser)
# ---------------------------------------------------------------------------
_COUNT_ORGS = "SELECT count(*) FROM organizations"
_ORG_BY_SLUG = "SELECT id FROM organizations WHERE slug = %s"
_USER_ROLE = "SELECT role::text FROM users WHERE lower(email) = lower(%s)"
_SEED_SESSIONS = """
INSERT INTO user_sessions (user_id, organization_id, workspace_path, created_at, expires_at)
SELECT %(user_id)s, %(org_id)s, '/w/' || g, now() - interval '2 days',
       CASE WHEN g <= %(expired)s THEN now() - interval '1 day' ELSE now() + interval '1 day' END
  FROM generate_series(1, %(total)s) AS g
"""
_COUNT_SESSIONS = (
    "SELECT count(*) FILTER (WHERE expires_at <= now()), count(*) FILTER (WHERE expires_at > now())"
    " FROM user_sessions"
)
_LOCK_ONE_EXPIRED = (
    "SELECT id FROM user_sessions WHERE expires_at <= now() ORDER BY id LIMIT 1 FOR UPDATE"
)
_CLEANUP_AUDITED = (
    "SELECT details FROM audit_logs WHERE action = 'sessions.cleanup' ORDER BY timestamp DESC"
)


@pytest.fixture
def service(db: TestDatabase) -> Iterator[Database]:
    with Database(db.url(SERVICE_LOGIN), key=EncryptionKey.generate(), max_size=2) as database:
        yield database


@pytest.fixture
def two_orgs(service: Database) -> dict[str, UUID]:
    """acme (alice admin, carol user) and globex (bob admin); returns ids by name."""
    ids: dict[str, UUID] = {}
    with service.as_service() as tx:
        acme, alice = tx.organizations.provision(
            name="Acme", slug="acme", admin_email="alice@acme.test"
        )
        globex, bob = tx.organizations.provision(
            name="Globex", slug="globex", admin_email="bob@globex.test"
        )
        carol = tx.users.add("carol@acme.test", organization_id=acme.id)
    ids.update(acme=acme.id, globex=globex.id, alice=alice.id, bob=bob.id, carol=carol.id)
    return ids


def scalar(db: TestDatabase, query: str, *params: object) -> object:
    with db.connect() as conn:
        row = conn.execute(query.encode(), params or None).fetchone()
        conn.rollback()
    return None if row is None else row[0]


# ---------------------------------------------------------------------------
# org create / user add
# ---------------------------------------------------------------------------


def test_org_create_and_user_add(db: TestDatabase) -> None:
    url = db.url(SERVICE_LOGIN)
    created = run_cli(
        "org", "create", "--name", "Initech", "--slug", "initech",
        "--admin-email", "peter@initech.test", "--database-url", url, "--json",
    )  # fmt: skip
    assert created.code == 0, str(created)
    doc = json.loads(created.stdout)
    assert doc["organization"]["slug"] == "initech"
    assert doc["admin"]["role"] == "admin" and doc["admin"]["email"] == "peter@initech.test"
    assert doc["admin"]["organization_id"] == doc["organization"]["id"]
    assert str(scalar(db, _ORG_BY_SLUG, "initech")) == doc["organization"]["id"]

    added = run_cli(
        "user", "add", "--org", "initech", "--email", "milton@initech.test",
        "--role", "admin", "--database-url", url,
    )  # fmt: skip
    assert added.code == 0, str(added)
    assert "milton@initech.test" in added.stdout
    assert scalar(db, _USER_ROLE, "milton@initech.test") == "admin"


def test_org_create_rejects_bad_input_without_writing(db: TestDatabase) -> None:
    url = db.url(SERVICE_LOGIN)
    before = scalar(db, _COUNT_ORGS)
    bad_slug = run_cli(
        "org", "create", "--name", "X", "--slug", "Not A Slug!",
        "--admin-email", "x@x.test", "--database-url", url,
    )  # fmt: skip
    assert_clean_error(bad_slug, 2, "slug", "organizations_slug_format")
    bad_email = run_cli(
        "org", "create", "--name", "X", "--slug", "xco",
        "--admin-email", "not-an-email", "--database-url", url,
    )  # fmt: skip
    assert_clean_error(bad_email, 2, "email")
    # provisioning is atomic: the org of a refused admin is not left behind
    assert scalar(db, _COUNT_ORGS) == before
    assert scalar(db, _ORG_BY_SLUG, "xco") is None


def test_duplicate_slug_is_exit_1(db: TestDatabase, two_orgs: dict[str, UUID]) -> None:
    result = run_cli(
        "org", "create", "--name", "Acme 2", "--slug", "acme",
        "--admin-email", "z@acme.test", "--database-url", db.url(SERVICE_LOGIN),
    )  # fmt: skip
    assert_clean_error(result, 1, "already exists")


def test_user_add_errors(db: TestDatabase, two_orgs: dict[str, UUID]) -> None:
    url = db.url(SERVICE_LOGIN)
    unknown = run_cli("user", "add", "--org", "nope", "--email", "a@b.test", "--database-url", url)
    assert_clean_error(unknown, 2, "no organization with slug 'nope'")
    dup = run_cli(
        "user", "add", "--org", "acme", "--email", "CAROL@acme.test", "--database-url", url
    )
    assert_clean_error(dup, 1, "already exists")
    bad_role = run_cli(
        "user", "add", "--org", "acme", "--email", "d@acme.test", "--role", "owner",
        "--database-url", url,
    )  # fmt: skip
    assert bad_role.code == 2 and "Traceback" not in bad_role.stderr


def test_service_commands_need_the_service_role(db: TestDatabase) -> None:
    # app_login is a member of agentapi_app only: it cannot act as agentapi_service.
    result = run_cli(
        "org", "create", "--name", "Evil", "--slug", "evil",
        "--admin-email", "e@evil.test", "--database-url", db.url(APP_LOGIN),
    )  # fmt: skip
    assert_clean_error(result, 4, "permission denied")
    assert scalar(db, _ORG_BY_SLUG, "evil") is None


# ---------------------------------------------------------------------------
# sessions cleanup
# ---------------------------------------------------------------------------


def _seed_sessions(db: TestDatabase, ids: dict[str, UUID], expired: int, total: int) -> None:
    with db.connect() as conn:
        conn.execute(
            _SEED_SESSIONS,
            {"user_id": ids["carol"], "org_id": ids["acme"], "expired": expired, "total": total},
        )
        conn.commit()


def test_sessions_cleanup_in_batches(db: TestDatabase, two_orgs: dict[str, UUID]) -> None:
    _seed_sessions(db, two_orgs, expired=20_000, total=20_250)
    result = run_cli(
        "sessions", "cleanup", "--batch-size", "3000", "--database-url", db.url(SERVICE_LOGIN),
        "--json",
    )  # fmt: skip
    assert result.code == 0, str(result)
    doc = json.loads(result.stdout)
    assert doc["deleted"] == 20_000
    assert doc["batches"] == 7  # six full batches of 3000, then 2000
    with db.connect() as conn:
        expired, active = conn.execute(_COUNT_SESSIONS).fetchone() or (None, None)
        details = conn.execute(_CLEANUP_AUDITED).fetchone()
    assert (expired, active) == (0, 250)
    assert details is not None and details[0]["deleted"] == 20_000

    again = run_cli("sessions", "cleanup", "--database-url", db.url(SERVICE_LOGIN))
    assert again.code == 0, str(again)
    assert "deleted 0 expired session(s)" in again.stdout


def test_sessions_cleanup_skips_locked_rows(db: TestDatabase, two_orgs: dict[str, UUID]) -> None:
    _seed_sessions(db, two_orgs, expired=50, total=60)
    with db.connect() as holder:
        locked = holder.execute(_LOCK_ONE_EXPIRED).fetchone()
        assert locked is not None
        started = time.monotonic()
        result = run_cli(
            "sessions", "cleanup", "--batch-size", "10", "--database-url",
            db.url(SERVICE_LOGIN), "--json",
        )  # fmt: skip
        elapsed = time.monotonic() - started
        holder.rollback()
    assert result.code == 0, str(result)
    assert json.loads(result.stdout)["deleted"] == 49
    assert elapsed < 60
    with db.connect() as conn:
        assert conn.execute(_COUNT_SESSIONS).fetchone() == (1, 10)


def test_sessions_cleanup_shows_progress(db: TestDatabase, two_orgs: dict[str, UUID]) -> None:
    _seed_sessions(db, two_orgs, expired=30, total=30)
    result = run_cli(
        "sessions", "cleanup", "--batch-size", "10", "--database-url", db.url(SERVICE_LOGIN)
    )
    assert result.code == 0, str(result)
    assert "deleting expired sessions" in result.stderr
    assert "30/30" in result.stderr
    assert "deleted 30 expired session(s) in 4 batch(es)" in result.stdout


# ---------------------------------------------------------------------------
# audit tail / export
# ---------------------------------------------------------------------------


def _log_events(service: Database, ids: dict[str, UUID], per_org: int) -> None:
    for i in range(per_org):
        for org, user in (("acme", "alice"), ("globex", "bob")):
            with service.as_service() as tx:
                tx.audit.log(
                    f"test.{org}.{i}", "thing", resource_id=str(i), details={"i": i},
                    user_id=ids[user], organization_id=ids[org],
                )  # fmt: skip


def test_audit_tail_filters_by_org_oldest_first(
    db: TestDatabase, service: Database, two_orgs: dict[str, UUID]
) -> None:
    _log_events(service, two_orgs, per_org=5)
    result = run_cli(
        "audit", "tail", "--org", "globex", "-n", "3", "--json",
        "--database-url", db.url(SERVICE_LOGIN),
    )  # fmt: skip
    assert result.code == 0, str(result)
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["action"] for e in events] == ["test.globex.2", "test.globex.3", "test.globex.4"]
    assert {e["organization_id"] for e in events} == {str(two_orgs["globex"])}

    text = run_cli("audit", "tail", "-n", "2", "--database-url", db.url(SERVICE_LOGIN))
    assert text.code == 0, str(text)
    lines = text.stdout.splitlines()
    assert len(lines) == 2 and "test.globex.4" in lines[1] and "globex" in lines[1]


def test_audit_tail_follow_prints_new_events(
    db: TestDatabase, service: Database, two_orgs: dict[str, UUID]
) -> None:
    _log_events(service, two_orgs, per_org=1)
    proc = subprocess.Popen(
        [entry_point(), "audit", "tail", "--follow", "--json", "-n", "1", "--org", "acme",
         "--database-url", db.url(SERVICE_LOGIN)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = _read_line(proc, timeout=30)
        assert json.loads(first)["action"] == "test.acme.0"
        with service.as_service() as tx:
            tx.audit.log("test.globex.live", "thing", organization_id=two_orgs["globex"])
            tx.audit.log("test.acme.live", "thing", organization_id=two_orgs["acme"])
        live = _read_line(proc, timeout=30)
        assert json.loads(live)["action"] == "test.acme.live"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line:
                return line
        if proc.poll() is not None:
            raise AssertionError(
                f"tail exited {proc.returncode}: {proc.stderr and proc.stderr.read()}"
            )
    raise AssertionError("no line from audit tail --follow in time")


def test_audit_export_jsonl_and_csv(
    db: TestDatabase, service: Database, two_orgs: dict[str, UUID], tmp_path: Path
) -> None:
    _log_events(service, two_orgs, per_org=4)
    url = db.url(SERVICE_LOGIN)
    target = tmp_path / "acme.jsonl"
    result = run_cli(
        "audit", "export", "--org", "acme", "--output", str(target), "--database-url", url
    )
    assert result.code == 0, str(result)
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["action"] for r in rows] == [f"test.acme.{i}" for i in range(4)]
    assert all(r["organization_id"] == str(two_orgs["acme"]) for r in rows)
    assert rows[0]["details"] == {"i": 0}
    assert "exported 4 event(s)" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["acme.jsonl"]  # no partial file left

    as_csv = run_cli("audit", "export", "--format", "csv", "--database-url", url)
    assert as_csv.code == 0, str(as_csv)
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(table) == 8
    assert json.loads(table[0]["details"]) == {"i": 0}
    assert {r["success"] for r in table} == {"True"}

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    empty = run_cli("audit", "export", "--since", future, "--database-url", url)
    assert empty.code == 0 and empty.stdout == ""
    past = run_cli("audit", "export", "--until", "2000-01-01", "--database-url", url)
    assert past.code == 0 and past.stdout == ""


def test_audit_export_bad_input(db: TestDatabase, tmp_path: Path) -> None:
    url = db.url(SERVICE_LOGIN)
    assert_clean_error(
        run_cli("audit", "export", "--since", "yesterday", "--database-url", url), 2, "--since"
    )
    assert_clean_error(
        run_cli(
            "audit", "export", "--since", "2026-02-01", "--until", "2026-01-01",
            "--database-url", url,
        ),
        2,
        "earlier",
    )  # fmt: skip
    missing = tmp_path / "no" / "such" / "dir" / "out.jsonl"
    assert_clean_error(
        run_cli("audit", "export", "--output", str(missing), "--database-url", url), 2, "--output"
    )
    assert_clean_error(
        run_cli("audit", "export", "--org", "nope", "--database-url", url), 2, "nope"
    )
    bad_format = run_cli("audit", "export", "--format", "xml", "--database-url", url)
    assert bad_format.code == 2 and "Traceback" not in bad_format.stderr


# ---------------------------------------------------------------------------
# prompts show
# ---------------------------------------------------------------------------


def test_prompts_show_renders_the_effective_prompt(
    db: TestDatabase, service: Database, two_orgs: dict[str, UUID]
) -> None:
    carol = two_orgs["carol"]
    with service.as_service() as tx:
        tx.prompts.create("GLOBAL RULES", scope="global")
        tx.prompts.create("ACME RULES", scope="organization", organization_id=two_orgs["acme"])
        tx.prompts.create("GLOBEX RULES", scope="organization", organization_id=two_orgs["globex"])
        tx.prompts.create("x", scope="user", user_id=carol, template="Hi {{name}}")
        session = tx.sessions.create(
            workspace_path="/w", system_prompt="SESSION OVERRIDE", user_id=carol
        )
        bob_session = tx.sessions.create(workspace_path="/b", user_id=two_orgs["bob"])
    url = db.url(SERVICE_LOGIN)

    shown = run_cli(
        "prompts", "show", "--user", str(carol), "--var", "name=Carol", "--database-url", url
    )
    assert shown.code == 0, str(shown)
    assert shown.stdout == "Hi Carol\n\nACME RULES\n\nGLOBAL RULES\n"

    as_json = run_cli(
        "prompts", "show", "--user", str(carol), "--session", str(session.id), "--json",
        "--database-url", url,
    )  # fmt: skip
    assert as_json.code == 0, str(as_json)
    doc = json.loads(as_json.stdout)
    assert doc["text"] == "SESSION OVERRIDE" and doc["source"] == "session"

    missing_var = run_cli("prompts", "show", "--user", str(carol), "--database-url", url)
    assert_clean_error(missing_var, 2, "name")
    other = run_cli(
        "prompts", "show", "--user", str(carol), "--session", str(bob_session.id),
        "--var", "name=C", "--database-url", url,
    )  # fmt: skip
    assert_clean_error(other, 2, "session not found")
    unknown = run_cli(
        "prompts", "show", "--user", "00000000-0000-0000-0000-000000000000", "--database-url", url
    )
    assert_clean_error(unknown, 2, "user not found")
    assert_clean_error(
        run_cli("prompts", "show", "--user", "carol", "--database-url", url), 2, "UUID"
    )


# ---------------------------------------------------------------------------
# keygen
# ---------------------------------------------------------------------------


def test_keygen_prints_a_fresh_valid_key() -> None:
    first = run_cli("keygen")
    second = run_cli("keygen", "--json")
    assert first.code == 0 and second.code == 0
    key = first.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    doc = json.loads(second.stdout)
    assert doc["key"] != key
    parsed = EncryptionKey.parse(doc["key"])
    assert parsed.fingerprint == doc["fingerprint"]


@pytest.mark.parametrize(
    "command",
    [
        ["org", "create", "--name", "A", "--slug", "a", "--admin-email", "a@a.test"],
        ["user", "add", "--org", "acme", "--email", "a@a.test"],
        ["sessions", "cleanup"],
        ["audit", "tail"],
        ["audit", "export"],
        ["prompts", "show", "--user", "00000000-0000-0000-0000-000000000000"],
    ],
)
def test_unreachable_database_is_exit_3(command: list[str]) -> None:
    started = time.monotonic()
    result = run_cli(*command, "--database-url", "postgresql://nobody@127.0.0.1:1/nothing")
    assert_clean_error(result, 3, "connection")
    assert time.monotonic() - started < 20  # fails fast, not after the pool's timeout
