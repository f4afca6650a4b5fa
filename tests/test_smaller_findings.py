"""Issue 14, part 3 ("the smaller findings"); docs/security.md says why each is so.

* Partition upkeep survives a future-dated or very old event: such an event is
  refused at insert (it would land in audit_logs_default), and a stray row already
  in the default partition makes audit_ensure_partitions() skip that month with a
  warning, not fail for every month.
* Audit event ids are unique: no role below the owner may supply ``id``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.pg import (
    APP_LOGIN,
    SERVICE_LOGIN,
    Conn,
    TestDatabase,
    acting,
)

ORG = str(uuid.uuid5(uuid.NAMESPACE_URL, "small/org"))
MEMBER = str(uuid.uuid5(uuid.NAMESPACE_URL, "small/member"))
EVENT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "small/event"))

_SEED = (
    "INSERT INTO organizations (id, name, slug) VALUES (%(org)s, 'S', 'small-org')",
    "INSERT INTO users (id, organization_id, email, role)"
    " VALUES (%(member)s, %(org)s, 'member@small.example', 'user')",
)
_MONTH_START = "SELECT date_trunc('month', now()) + make_interval(months => %s)"
_INSERT_AT = (
    "INSERT INTO audit_logs (\"timestamp\", action, resource_type) VALUES (%s, 'e', 't')"
    " RETURNING tableoid::regclass::text"
)
_ENSURE = "SELECT audit_ensure_partitions(%s, %s)"
_PARTITIONS = (
    "SELECT c.relname::text FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'public.audit_logs'::regclass ORDER BY 1"
)
_DEFAULT_ROWS = "SELECT count(*) FROM audit_logs WHERE tableoid = 'audit_logs_default'::regclass"
_DISABLE_REFUSAL = "ALTER TABLE audit_logs_default DISABLE TRIGGER audit_logs_refuse_unpartitioned"
_ENABLE_REFUSAL = "ALTER TABLE audit_logs_default ENABLE TRIGGER audit_logs_refuse_unpartitioned"
_INSERT_WITH_ID = (
    "INSERT INTO audit_logs (id, \"timestamp\", user_id, organization_id, action, resource_type)"
    " VALUES (%s, %s, %s, %s, 'dup', 't')"
)
_APP_INSERT_WITH_ID = (
    "INSERT INTO audit_logs (id, user_id, organization_id, action, resource_type)"
    " VALUES (%s, %s, %s, 'dup', 't')"
)
_LOG_EVENT = (
    "SELECT log_audit_event(%s::uuid, %s::uuid, 'small.event', 'test', NULL, '{}', NULL, NULL)"
)
_COUNT_ID = "SELECT count(*) FROM audit_logs WHERE id = %s"


@pytest.fixture
def seeded(db: TestDatabase) -> TestDatabase:
    params = {"org": ORG, "member": MEMBER}
    with db.connect() as conn:
        for statement in _SEED:
            conn.execute(statement.encode(), params)
        conn.commit()
    return db


def _scalar(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0]


def _error(conn: Conn, query: str, params: Any = None) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info, conn.transaction():
        conn.execute(query.encode(), params)
    return info.value


# --- 3. partition upkeep survives a future-dated or very old event -------------------


@pytest.mark.parametrize("when", ["future", "very_old"])
def test_an_event_outside_the_partitions_is_refused_with_a_clear_error(
    seeded: TestDatabase, when: str
) -> None:
    with seeded.connect(SERVICE_LOGIN) as service, acting(service, "agentapi_service"):
        if when == "future":
            at = _scalar(service, _MONTH_START, (17,)) + timedelta(days=3)
        else:
            at = datetime(2001, 5, 5, tzinfo=UTC)
        error = _error(service, _INSERT_AT, (at,))
        assert isinstance(error, errors.CheckViolation), error
        assert "is outside the monthly partitions of audit_logs" in str(error)
        assert error.diag.message_detail and "audit_logs_y" in error.diag.message_detail
        assert error.diag.message_hint and "audit_ensure_partitions" in error.diag.message_hint
        assert _scalar(service, _DEFAULT_ROWS) == 0
        # Upkeep goes on for every month, the refused one's included.
        assert _scalar(service, _ENSURE, (18, 0)) == 15
        if when == "future":
            assert _scalar(service, _INSERT_AT, (at,)).startswith("audit_logs_y")


def test_events_in_their_month_still_land_there(seeded: TestDatabase) -> None:
    with seeded.connect(SERVICE_LOGIN) as service, acting(service, "agentapi_service"):
        for offset in (-1, 0, 3):
            start = _scalar(service, _MONTH_START, (offset,))
            assert _scalar(service, _INSERT_AT, (start,)) == "audit_logs_" + start.strftime(
                "y%Ym%m"
            )


def test_a_stray_row_in_the_default_partition_does_not_stop_upkeep(db: TestDatabase) -> None:
    """A row already in audit_logs_default (stored before the refusal existed; here
    planted by the superuser with the trigger disabled) costs that month only."""
    with db.connect() as conn:
        stray = _scalar(conn, _MONTH_START, (7,)) + timedelta(days=3)
        conn.execute(_DISABLE_REFUSAL)
        assert _scalar(conn, _INSERT_AT, (stray,)) == "audit_logs_default"
        conn.execute(_ENABLE_REFUSAL)
        conn.commit()
        warnings: list[str] = []
        conn.add_notice_handler(lambda d: warnings.append(str(d.message_primary)))
        before = set(_partitions(conn))
        # Months 4, 5, 6, 8 are made; month 7 is reported and skipped.
        assert _scalar(conn, _ENSURE, (8, 0)) == 4
        conn.commit()
        made = set(_partitions(conn)) - before
        assert stray.strftime("audit_logs_y%Ym%m") not in made and len(made) == 4
        assert any("audit_logs_default holds events for" in w for w in warnings), warnings
        # ...and every later run still works.
        assert _scalar(conn, _ENSURE, (9, 0)) == 1


def _partitions(conn: Conn) -> list[str]:
    return [str(r[0]) for r in conn.execute(_PARTITIONS)]


# --- 4. audit event ids are unique ---------------------------------------------------


def test_service_cannot_supply_an_audit_id(seeded: TestDatabase) -> None:
    """Two events with one id in different months would both fit the (id, timestamp) key."""
    with seeded.connect(SERVICE_LOGIN) as service, acting(service, "agentapi_service"):
        now = _scalar(service, _MONTH_START, (0,)) + timedelta(hours=1)
        later = _scalar(service, _MONTH_START, (1,)) + timedelta(hours=1)
        error = _error(service, _INSERT_WITH_ID, (EVENT_ID, now, MEMBER, ORG))
        assert isinstance(error, errors.InsufficientPrivilege), error
        error = _error(service, _INSERT_WITH_ID, (EVENT_ID, later, MEMBER, ORG))
        assert isinstance(error, errors.InsufficientPrivilege), error
        assert _scalar(service, _COUNT_ID, (EVENT_ID,)) == 0


def test_application_cannot_supply_an_audit_id(seeded: TestDatabase) -> None:
    with seeded.connect(APP_LOGIN) as app, acting(app, "agentapi_app", MEMBER):
        error = _error(app, _APP_INSERT_WITH_ID, (EVENT_ID, MEMBER, ORG))
        assert isinstance(error, errors.InsufficientPrivilege), error
        # The audit path of the library (log_audit_event) still works and assigns ids.
        first = _scalar(app, _LOG_EVENT, (MEMBER, ORG))
        second = _scalar(app, _LOG_EVENT, (MEMBER, ORG))
        assert first != second
        assert _scalar(app, _COUNT_ID, (first,)) == 1
