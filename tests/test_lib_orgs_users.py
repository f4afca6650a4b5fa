"""Organizations and users, through the context each operation is meant for and one it
must be refused in; every test runs against the sync and the async API."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from agentapi_db.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied
from tests.lib_support import Api, Tenants

pytest_plugins = ("tests.lib_fixtures",)


# --- organizations -------------------------------------------------------------------


def test_provision_as_service_creates_org_and_admin(api: Api) -> None:
    with api.svc.as_service() as tx:
        org, admin = tx.organizations.provision(
            name="Acme", slug="acme", admin_email="Boss@Acme.test", metadata={"plan": "pro"}
        )
    assert org.slug == "acme" and org.metadata == {"plan": "pro"}
    assert admin.organization_id == org.id and admin.role == "admin" and admin.is_active
    with api.app.as_user(admin.id) as tx:
        assert tx.organizations.get() == org
        assert tx.users.get().email == "Boss@Acme.test"


def test_provision_as_user_is_refused(api: Api, tenants: Tenants) -> None:
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.admin_a) as tx:
        tx.organizations.provision(name="Evil", slug="evil", admin_email="e@evil.test")
    with api.svc.as_service() as tx:
        assert sorted(o.slug for o in tx.organizations.list()) == ["org-a", "org-b"]


def test_provision_duplicate_slug_is_already_exists(api: Api, tenants: Tenants) -> None:
    with pytest.raises(AlreadyExists) as info, api.svc.as_service() as tx:
        tx.organizations.provision(name="Again", slug="org-a", admin_email="x@x.test")
    assert info.value.rule == "organizations_slug_key"
    assert "organizations_slug_key" in str(info.value)


def test_provision_bad_slug_names_the_rule(api: Api) -> None:
    with pytest.raises(InvalidInput) as info, api.svc.as_service() as tx:
        tx.organizations.provision(name="Bad", slug="Not A Slug", admin_email="x@x.test")
    assert info.value.rule == "organizations_slug_format"
    assert "organizations_slug_format" in str(info.value)


def test_get_and_list_organizations(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        assert tx.organizations.get().id == tenants.org_a
        assert [o.id for o in tx.organizations.list()] == [tenants.org_a]
        with pytest.raises(NotFound):
            tx.organizations.get(tenants.org_b)
        with pytest.raises(NotFound):
            tx.organizations.get_by_slug("org-b")
    with api.svc.as_service() as tx:
        assert tx.organizations.get_by_slug("org-b").id == tenants.org_b
        assert len(tx.organizations.list()) == 2


def test_update_organization(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.admin_a) as tx:
        org = tx.organizations.update(name="Org A renamed", metadata={"tier": 2})
        assert (org.name, org.metadata, org.slug) == ("Org A renamed", {"tier": 2}, "org-a")
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.organizations.update(name="member was here")
    with pytest.raises(NotFound), api.app.as_user(tenants.admin_a) as tx:
        tx.organizations.update(tenants.org_b, name="cross-tenant")
    # Slugs are globally unique: only the service changes them.
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.admin_a) as tx:
        tx.organizations.update(slug="new-slug")
    with api.svc.as_service() as tx:
        moved = tx.organizations.update(tenants.org_b, slug="org-b2", name="B2")
        assert (moved.slug, moved.name) == ("org-b2", "B2")
        assert tx.organizations.get(tenants.org_a).name == "Org A renamed"


def test_delete_organization_is_service_only(api: Api, tenants: Tenants) -> None:
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.admin_a) as tx:
        tx.organizations.delete(tenants.org_a)
    with api.svc.as_service() as tx:
        tx.organizations.delete(tenants.org_b)
        with pytest.raises(NotFound):
            tx.organizations.delete(uuid4())
    with api.svc.as_service() as tx:
        assert [o.id for o in tx.organizations.list()] == [tenants.org_a]


# --- users ------------------------------------------------------------------------------


def test_admin_adds_user_member_cannot(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.admin_a) as tx:
        dave = tx.users.add("dave@a.test", metadata={"team": "x"})
    assert dave.organization_id == tenants.org_a and dave.role == "user"
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.users.add("eve@a.test")
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.admin_a) as tx:
        tx.users.add("mallory@b.test", organization_id=tenants.org_b)


def test_add_user_duplicate_email_is_per_org_and_case_insensitive(
    api: Api, tenants: Tenants
) -> None:
    with pytest.raises(AlreadyExists) as info, api.app.as_user(tenants.admin_a) as tx:
        tx.users.add("ALICE@a.test")
    assert info.value.rule == "users_organization_id_email_key"
    # The same address in another organization is fine.
    with api.app.as_user(tenants.admin_b) as tx:
        assert tx.users.add("alice@a.test").organization_id == tenants.org_b


def test_add_user_invalid_email_names_rule(api: Api, tenants: Tenants) -> None:
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.admin_a) as tx:
        tx.users.add("no-at-sign")
    assert info.value.rule == "users_email_format"


def test_get_and_list_users(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        assert tx.users.get(tenants.bob).email == "bob@a.test"
        assert tx.users.get_by_email("BOB@A.TEST").id == tenants.bob
        emails = [u.email for u in tx.users.list()]
        assert emails == ["admin@a.test", "alice@a.test", "bob@a.test"]
        with pytest.raises(NotFound):
            tx.users.get(tenants.carol)
        assert tx.users.list(organization_id=tenants.org_b) == []
    with api.svc.as_service() as tx:
        assert [u.id for u in tx.users.list(organization_id=tenants.org_b)] == [
            tenants.admin_b,
            tenants.carol,
        ]
        with pytest.raises(InvalidInput) as info:
            tx.users.get()  # the service has no acting user
        assert info.value.rule == "user_id_required"


def test_change_role(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.admin_a) as tx:
        assert tx.users.change_role(tenants.alice, "admin").role == "admin"
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.bob) as tx:
        tx.users.change_role(tenants.bob, "admin")  # not even their own role
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.bob) as tx:
        tx.users.change_role(tenants.alice, "user")
    with pytest.raises(NotFound), api.app.as_user(tenants.admin_a) as tx:
        tx.users.change_role(tenants.carol, "admin")
    with pytest.raises(InvalidInput), api.app.as_user(tenants.admin_a) as tx:
        tx.users.change_role(tenants.bob, "owner")  # type: ignore[arg-type]
    with api.svc.as_service() as tx:
        assert tx.users.get(tenants.bob).role == "user"
        assert tx.users.get(tenants.alice).role == "admin"


def test_deactivate_and_activate(api: Api, tenants: Tenants) -> None:
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.users.deactivate(tenants.bob)
    with api.app.as_user(tenants.admin_a) as tx:
        assert tx.users.deactivate(tenants.bob).is_active is False
        assert [u.id for u in tx.users.list()] == [tenants.admin_a, tenants.alice]
        assert len(tx.users.list(include_inactive=True)) == 3
    with api.app.as_user(tenants.bob) as tx, pytest.raises(NotFound):
        tx.organizations.get()
    with api.app.as_user(tenants.admin_a) as tx:
        assert tx.users.activate(tenants.bob).is_active is True
    with api.app.as_user(tenants.bob) as tx:
        assert tx.organizations.get().id == tenants.org_a


def test_update_profile(api: Api, tenants: Tenants) -> None:
    login = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with api.app.as_user(tenants.alice) as tx:
        me = tx.users.update_profile(metadata={"theme": "dark"}, last_login_at=login)
    assert me.metadata == {"theme": "dark"} and me.last_login_at == login
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.users.update_profile(tenants.bob, metadata={"hacked": True})
    with pytest.raises(NotFound), api.app.as_user(tenants.alice) as tx:
        tx.users.update_profile(tenants.carol, metadata={"hacked": True})
    with api.svc.as_service() as tx:
        assert tx.users.get(tenants.bob).metadata == {}


def test_delete_user(api: Api, tenants: Tenants) -> None:
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.users.delete(tenants.bob)
    with pytest.raises(NotFound), api.app.as_user(tenants.admin_a) as tx:
        tx.users.delete(tenants.carol)
    with api.app.as_user(tenants.admin_a) as tx:
        tx.users.delete(tenants.bob)
        with pytest.raises(NotFound):
            tx.users.get(tenants.bob)


def test_lookups_and_activation_refused_across_roles_and_tenants(
    api: Api, tenants: Tenants
) -> None:
    with api.app.as_user(tenants.alice) as tx:
        with pytest.raises(NotFound):
            tx.users.get_by_email("carol@b.test", organization_id=tenants.org_b)
        with pytest.raises(NotFound):
            tx.users.get_by_email("carol@b.test")
    with api.app.as_user(tenants.admin_a) as tx:
        tx.users.deactivate(tenants.bob)
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.users.activate(tenants.bob)
    with pytest.raises(NotFound), api.app.as_user(tenants.admin_b) as tx:
        tx.users.activate(tenants.bob)
    with api.svc.as_service() as tx:
        assert tx.users.get_by_email("BOB@a.test", organization_id=tenants.org_a).is_active is False
        assert tx.users.activate(tenants.bob).is_active is True
