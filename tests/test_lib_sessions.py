"""Sessions: create with a TTL, get, touch, list_active (keyset), revoke, cleanup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from agentapi_db.errors import InvalidInput, NotFound, PermissionDenied
from tests.lib_support import Api, Tenants
from tests.pg import SUPERUSER, TestDatabase

pytest_plugins = ("tests.lib_fixtures",)


def _expire(db: TestDatabase, session_id: UUID) -> None:
    """Move a session into the past (as the superuser: no RLS, no grants in the way)."""
    with db.connect(SUPERUSER) as conn:
        conn.execute(
            "UPDATE user_sessions SET created_at = now() - interval '2 hours', "
            "expires_at = now() - interval '1 hour' WHERE id = %s",
            (session_id,),
        )
        conn.commit()


def test_create_with_ttl(api: Api, tenants: Tenants) -> None:
    before = datetime.now(UTC)
    with api.app.as_user(tenants.alice) as tx:
        s = tx.sessions.create(
            workspace_path="/work/alice", ttl=timedelta(hours=8), metadata={"agent": "x"}
        )
    assert s.user_id == tenants.alice and s.organization_id == tenants.org_a
    assert s.expires_at is not None
    assert timedelta(hours=7, minutes=59) < s.expires_at - before < timedelta(hours=8, minutes=1)
    with api.app.as_user(tenants.alice) as tx:
        forever = tx.sessions.create(workspace_path="/w")
    assert forever.expires_at is None


def test_create_refused_for_someone_else(api: Api, tenants: Tenants) -> None:
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.sessions.create(workspace_path="/w", user_id=tenants.bob)
    with pytest.raises(NotFound), api.app.as_user(tenants.alice) as tx:
        tx.sessions.create(workspace_path="/w", user_id=tenants.carol)
    with api.svc.as_service() as tx:
        assert tx.sessions.create(workspace_path="/w", user_id=tenants.carol).user_id == (
            tenants.carol
        )
        with pytest.raises(InvalidInput):
            tx.sessions.create(workspace_path="/w")  # the service must say for whom


def test_create_validates(api: Api, tenants: Tenants) -> None:
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.alice) as tx:
        tx.sessions.create(workspace_path="/w", ttl=timedelta(seconds=-1))
    assert info.value.rule == "user_sessions_expires_after_created"
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.alice) as tx:
        tx.sessions.create(workspace_path="/a/../etc")
    assert info.value.rule == "user_sessions_workspace_path_valid"


def test_get_own_and_admin_but_not_colleague_or_other_tenant(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        mine = tx.sessions.create(workspace_path="/alice")
    with api.app.as_user(tenants.carol) as tx:
        theirs = tx.sessions.create(workspace_path="/carol")
    with api.app.as_user(tenants.alice) as tx:
        assert tx.sessions.get(mine.id) == mine
        with pytest.raises(NotFound):
            tx.sessions.get(theirs.id)
    with api.app.as_user(tenants.bob) as tx, pytest.raises(NotFound):
        tx.sessions.get(mine.id)
    with api.app.as_user(tenants.admin_a) as tx:
        assert tx.sessions.get(mine.id).id == mine.id
        with pytest.raises(NotFound):
            tx.sessions.get(theirs.id)


def test_touch(api: Api, tenants: Tenants, db: TestDatabase) -> None:
    with api.app.as_user(tenants.alice) as tx:
        s = tx.sessions.create(workspace_path="/w", ttl=timedelta(minutes=5))
    with api.app.as_user(tenants.alice) as tx:
        touched = tx.sessions.touch(s.id, extend=timedelta(hours=1))
    assert touched.last_active_at > s.last_active_at
    assert touched.expires_at is not None and s.expires_at is not None
    assert touched.expires_at > s.expires_at + timedelta(minutes=50)
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.admin_a) as tx:
        tx.sessions.touch(s.id)  # admins read and revoke, they do not use others' sessions
    with pytest.raises(NotFound), api.app.as_user(tenants.carol) as tx:
        tx.sessions.touch(s.id)
    _expire(db, s.id)
    with pytest.raises(NotFound, match="expired"), api.app.as_user(tenants.alice) as tx:
        tx.sessions.touch(s.id)


def test_set_system_prompt(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        s = tx.sessions.create(workspace_path="/w")
        assert tx.sessions.set_system_prompt(s.id, "Be brief.").system_prompt == "Be brief."
        assert tx.sessions.set_system_prompt(s.id, None).system_prompt is None
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.admin_a) as tx:
        tx.sessions.set_system_prompt(s.id, "admin override")


def test_list_active_keyset_pagination(api: Api, tenants: Tenants, db: TestDatabase) -> None:
    with api.app.as_user(tenants.alice) as tx:
        made = [tx.sessions.create(workspace_path=f"/w{i}").id for i in range(5)]
        expired = tx.sessions.create(workspace_path="/old", ttl=timedelta(hours=1))
    with api.app.as_user(tenants.bob) as tx:
        bobs = tx.sessions.create(workspace_path="/bob").id
    with api.app.as_user(tenants.carol) as tx:
        tx.sessions.create(workspace_path="/carol")
    _expire(db, expired.id)

    seen: list[UUID] = []
    cursor: str | None = None
    pages = 0
    with api.app.as_user(tenants.alice) as tx:
        while True:
            page = tx.sessions.list_active(limit=2, cursor=cursor)
            pages += 1
            assert len(page.items) <= 2
            seen.extend(s.id for s in page.items)
            assert all(s.user_email == "alice@a.test" for s in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
    assert pages == 3
    assert sorted(seen) == sorted(made)  # no duplicates, nothing expired, nobody else's
    with api.app.as_user(tenants.alice) as tx:
        newest_first = [s.id for s in tx.sessions.list_active(limit=10).items]
    assert newest_first == seen
    with api.app.as_user(tenants.admin_a) as tx:
        org_wide = {s.id for s in tx.sessions.list_active(limit=100).items}
        only_bob = [s.id for s in tx.sessions.list_active(user_id=tenants.bob).items]
    assert org_wide == {*made, bobs} and only_bob == [bobs]
    with api.svc.as_service() as tx:
        everything = tx.sessions.list_active(limit=100).items
        of_b = tx.sessions.list_active(organization_id=tenants.org_b).items
    assert len(everything) == 7 and [s.organization_slug for s in of_b] == ["org-b"]


def test_list_active_rejects_bad_cursor_and_limit(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        with pytest.raises(InvalidInput) as info:
            tx.sessions.list_active(cursor="garbage!")
        assert info.value.rule == "cursor"
        with pytest.raises(InvalidInput) as info:
            tx.sessions.list_active(limit=0)
        assert info.value.rule == "limit"


def test_revoke(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        a1 = tx.sessions.create(workspace_path="/1")
        a2 = tx.sessions.create(workspace_path="/2")
    with pytest.raises(NotFound), api.app.as_user(tenants.bob) as tx:
        tx.sessions.revoke(a1.id)
    with pytest.raises(NotFound), api.app.as_user(tenants.admin_b) as tx:
        tx.sessions.revoke(a1.id)
    with api.app.as_user(tenants.alice) as tx:
        tx.sessions.revoke(a1.id)
    with api.app.as_user(tenants.admin_a) as tx:
        tx.sessions.revoke(a2.id)  # an admin revokes any session of their organization
        with pytest.raises(NotFound):
            tx.sessions.revoke(uuid4())
    with api.svc.as_service() as tx:
        assert tx.sessions.list_active().items == []


def test_cleanup_expired_is_service_only(api: Api, tenants: Tenants, db: TestDatabase) -> None:
    with api.app.as_user(tenants.alice) as tx:
        old = tx.sessions.create(workspace_path="/old", ttl=timedelta(hours=1))
        live = tx.sessions.create(workspace_path="/live", ttl=timedelta(hours=1))
    _expire(db, old.id)
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.admin_a) as tx:
        tx.sessions.cleanup_expired()
    with api.svc.as_service() as tx:
        assert tx.sessions.cleanup_expired() == 1
    with api.app.as_user(tenants.alice) as tx:
        assert tx.sessions.get(live.id).id == live.id
        with pytest.raises(NotFound):
            tx.sessions.get(old.id)
