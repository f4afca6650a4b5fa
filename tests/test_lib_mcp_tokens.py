"""MCP configurations and OAuth tokens: validation before the database, encryption on
write, decryption only when asked, scopes, and key rotation."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest

from agentapi_db import EncryptionKey, opsdb
from agentapi_db.crypto.ring import ring_for
from agentapi_db.errors import (
    AlreadyExists,
    ConfigurationError,
    DecryptionError,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from agentapi_db.ops import OpContext, mcp
from agentapi_db.rotation import rotate_keys
from tests.lib_support import Api, Tenants
from tests.pg import APP_LOGIN, SERVICE_LOGIN, SUPERUSER, TestDatabase

pytest_plugins = ("tests.lib_fixtures",)

TOKEN = "bearer-SECRET-4f2a9c"


def _raw(db: TestDatabase, sql: Any, *params: object) -> tuple[Any, ...]:
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return tuple(row)


# --- validation before the database ------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"type": "http"}, "mcp_configurations_http_needs_endpoint"),
        ({"type": "sse", "endpoint": "ftp://x"}, "mcp_configurations_http_needs_endpoint"),
        ({"type": "http", "endpoint": "https://x", "command": "run"},
         "mcp_configurations_http_needs_endpoint"),
        ({"type": "stdio"}, "mcp_configurations_stdio_needs_command"),
        ({"type": "stdio", "command": "  "}, "mcp_configurations_stdio_needs_command"),
        ({"type": "stdio", "command": "x", "auth_type": "bearer"},
         "mcp_configurations_bearer_token_iff_bearer"),
        ({"type": "stdio", "command": "x", "bearer_token": "tok-XYZ-secret"},
         "mcp_configurations_bearer_token_iff_bearer"),
        ({"type": "stdio", "command": "x", "auth_type": "oauth"},
         "mcp_configurations_oauth_provider_iff_oauth"),
        ({"type": "stdio", "command": "x", "oauth_provider": "github"},
         "mcp_configurations_oauth_provider_iff_oauth"),
        ({"type": "stdio", "command": "x", "name": "  "}, "mcp_configurations_name_not_blank"),
        ({"type": "gopher", "command": "x"}, "type"),
        ({"type": "stdio", "command": "x", "args": "not-a-list"}, "args"),
    ],
)
def test_mcp_input_is_validated_before_any_statement(fields: dict[str, Any], rule: str) -> None:
    ctx = OpContext("user", uuid4(), EncryptionKey.generate())
    op = mcp.create(ctx, **{"name": "srv", **fields})
    with pytest.raises(InvalidInput) as info:
        next(op)  # raises before yielding a single query
    assert info.value.rule == rule
    secret = fields.get("bearer_token")
    assert secret is None or secret not in str(info.value)


def test_mcp_invalid_input_through_the_api(api: Api, tenants: Tenants) -> None:
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.alice) as tx:
        tx.mcp.create(name="s", type="http", auth_type="bearer")
    assert info.value.rule == "mcp_configurations_http_needs_endpoint"


# --- create / get / encryption -----------------------------------------------------


def test_member_creates_personal_config_with_encrypted_token(
    api: Api, tenants: Tenants, db: TestDatabase
) -> None:
    with api.app.as_user(tenants.alice) as tx:
        cfg = tx.mcp.create(
            name="search", type="http", endpoint="https://mcp.example/search",
            auth_type="bearer", bearer_token=TOKEN, env={"REGION": "eu"},
        )
    assert cfg.user_id == tenants.alice and cfg.scope == "user"
    assert cfg.has_bearer_token and cfg.bearer_token is None
    assert TOKEN not in repr(cfg) and TOKEN not in cfg.model_dump_json()
    stored, decrypted = _raw(
        db,
        "SELECT bearer_token, decrypt_token(bearer_token, %s) FROM mcp_configurations "
        "WHERE id = %s",
        api.key.sql_value,
        cfg.id,
    )
    assert stored != TOKEN and TOKEN not in stored and decrypted == TOKEN
    with api.app.as_user(tenants.alice) as tx:
        assert tx.mcp.get(cfg.id).bearer_token is None
        secret = tx.mcp.get(cfg.id, decrypt=True).bearer_token
        assert secret is not None and secret.get_secret_value() == TOKEN
        got = tx.mcp.get_secret(cfg.id)
        assert got is not None and got.get_secret_value() == TOKEN
        assert TOKEN not in repr(tx.mcp.get(cfg.id, decrypt=True))


def test_org_wide_config_admin_only(api: Api, tenants: Tenants) -> None:
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.mcp.create(name="shared", type="stdio", command="srv", scope="organization")
    with api.app.as_user(tenants.admin_a) as tx:
        shared = tx.mcp.create(name="shared", type="stdio", command="srv", args=["-v"],
                               scope="organization")
    assert shared.user_id is None and shared.organization_id == tenants.org_a
    with api.app.as_user(tenants.alice) as tx:
        assert tx.mcp.get(shared.id).args == ["-v"]
    with pytest.raises(NotFound), api.app.as_user(tenants.carol) as tx:
        tx.mcp.get(shared.id)
    with api.svc.as_service() as tx:
        svc_made = tx.mcp.create(name="shared", type="stdio", command="x", scope="organization",
                                 organization_id=tenants.org_b)
    assert svc_made.organization_id == tenants.org_b


def test_duplicate_name_in_scope(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        tx.mcp.create(name="dup", type="stdio", command="x")
    with api.app.as_user(tenants.bob) as tx:
        tx.mcp.create(name="dup", type="stdio", command="x")  # another user's scope: fine
    with pytest.raises(AlreadyExists) as info, api.app.as_user(tenants.alice) as tx:
        tx.mcp.create(name="dup", type="stdio", command="y")
    assert info.value.rule == "mcp_configurations_name_key"


def test_bearer_token_needs_a_key(api: Api, tenants: Tenants) -> None:
    keyless = api.factory(APP_LOGIN, key=None)
    with pytest.raises(ConfigurationError), keyless.as_user(tenants.alice) as tx:
        tx.mcp.create(name="b", type="http", endpoint="https://x", auth_type="bearer",
                      bearer_token=TOKEN)
    with keyless.as_user(tenants.alice) as tx:  # no secret involved: no key needed
        cfg = tx.mcp.create(name="plain", type="http", endpoint="https://x")
        assert tx.mcp.get(cfg.id).name == "plain"


# --- update -----------------------------------------------------------------------------


def test_update_validates_the_merged_config(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        cfg = tx.mcp.create(name="u", type="http", endpoint="https://a", auth_type="bearer",
                            bearer_token=TOKEN)
    with api.app.as_user(tenants.alice) as tx:
        moved = tx.mcp.update(cfg.id, endpoint="https://b", enabled=False)
        assert (moved.endpoint, moved.enabled, moved.has_bearer_token) == ("https://b", False, True)
        kept = tx.mcp.get_secret(cfg.id)
        assert kept is not None and kept.get_secret_value() == TOKEN
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.alice) as tx:
        tx.mcp.update(cfg.id, type="stdio")  # stdio needs a command, and no endpoint
    assert info.value.rule == "mcp_configurations_stdio_needs_command"
    with api.app.as_user(tenants.alice) as tx:
        new = tx.mcp.update(cfg.id, bearer_token="rotated-token")
        assert new.has_bearer_token
        rotated = tx.mcp.get_secret(cfg.id)
        assert rotated is not None and rotated.get_secret_value() == "rotated-token"
        plain = tx.mcp.update(cfg.id, auth_type="none")  # leaving bearer drops the token
        assert not plain.has_bearer_token
        assert tx.mcp.get_secret(cfg.id) is None
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.alice) as tx:
        tx.mcp.update(cfg.id, auth_type="bearer")  # bearer without a token
    assert info.value.rule == "mcp_configurations_bearer_token_iff_bearer"


def test_update_refused_outside_own_scope(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.admin_a) as tx:
        shared = tx.mcp.create(name="s", type="stdio", command="x", scope="organization")
    with api.app.as_user(tenants.bob) as tx:
        bobs = tx.mcp.create(name="b", type="stdio", command="x")
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.mcp.update(shared.id, command="y")
    with pytest.raises(NotFound), api.app.as_user(tenants.alice) as tx:
        tx.mcp.update(bobs.id, command="y")
    with pytest.raises(NotFound), api.app.as_user(tenants.admin_a) as tx:
        tx.mcp.update(bobs.id, command="y")  # admins never see others' personal configs
    with api.app.as_user(tenants.admin_a) as tx:
        assert tx.mcp.update(shared.id, command="y").command == "y"


# --- list / list_effective / delete ---------------------------------------------------


def test_list_effective(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.admin_a) as tx:
        tx.mcp.create(name="docs", type="http", endpoint="https://org/docs", scope="organization")
        tx.mcp.create(name="git", type="stdio", command="git-mcp", scope="organization")
        tx.mcp.create(name="off", type="stdio", command="x", scope="organization", enabled=False)
    with api.app.as_user(tenants.alice) as tx:
        tx.mcp.create(name="git", type="stdio", command="my-git")  # shadows the org's "git"
        tx.mcp.create(name="secret", type="http", endpoint="https://s", auth_type="bearer",
                      bearer_token=TOKEN)
    with api.app.as_user(tenants.bob) as tx:
        tx.mcp.create(name="bobs", type="stdio", command="x")
    with api.app.as_user(tenants.admin_b) as tx:
        tx.mcp.create(name="b-org", type="stdio", command="x", scope="organization")

    with api.app.as_user(tenants.alice) as tx:
        eff = tx.mcp.list_effective()
        assert [(c.name, c.config_scope) for c in eff] == [
            ("docs", "organization"), ("git", "user"), ("secret", "user")]
        assert next(c for c in eff if c.name == "git").command == "my-git"
        assert all(c.bearer_token is None for c in eff)
        assert {c.organization_slug for c in eff} == {"org-a"}
        decrypted = {c.name: c.bearer_token for c in tx.mcp.list_effective(decrypt=True)}
        token = decrypted["secret"]
        assert token is not None and token.get_secret_value() == TOKEN
        assert decrypted["docs"] is None
        everything = [c.name for c in tx.mcp.list()]
        assert everything == ["docs", "git", "off", "git", "secret"]
    with api.app.as_user(tenants.bob) as tx:
        assert [c.name for c in tx.mcp.list_effective()] == ["bobs", "docs", "git"]
    with api.svc.as_service() as tx:
        assert [c.name for c in tx.mcp.list_effective(user_id=tenants.carol)] == ["b-org"]


def test_delete(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.admin_a) as tx:
        shared = tx.mcp.create(name="s", type="stdio", command="x", scope="organization")
    with api.app.as_user(tenants.alice) as tx:
        mine = tx.mcp.create(name="m", type="stdio", command="x")
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.mcp.delete(shared.id)
    with pytest.raises(NotFound), api.app.as_user(tenants.carol) as tx:
        tx.mcp.delete(mine.id)
    with api.app.as_user(tenants.alice) as tx:
        tx.mcp.delete(mine.id)
    with api.app.as_user(tenants.admin_a) as tx:
        tx.mcp.delete(shared.id)
        assert tx.mcp.list() == []


# --- decryption errors and key rotation ------------------------------------------------


def test_wrong_key_is_decryption_error_without_the_key(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        cfg = tx.mcp.create(name="b", type="http", endpoint="https://x", auth_type="bearer",
                            bearer_token=TOKEN)
    other = EncryptionKey.generate()
    wrong = api.factory(APP_LOGIN, key=other)
    with pytest.raises(DecryptionError) as info, wrong.as_user(tenants.alice) as tx:
        tx.mcp.get(cfg.id, decrypt=True)
    text = str(info.value)
    assert other.sql_value not in text and api.key.sql_value not in text and TOKEN not in text
    with wrong.as_user(tenants.alice) as tx:  # not asking for the secret works with any key
        assert tx.mcp.get(cfg.id).name == "b"


def test_rotation_reads_with_either_key(api: Api, tenants: Tenants, db: TestDatabase) -> None:
    old_key = api.key
    with api.app.as_user(tenants.alice) as tx:
        before = tx.mcp.create(name="old", type="http", endpoint="https://x",
                               auth_type="bearer", bearer_token="under-old-key")
    new_key = EncryptionKey.generate()
    rotating = api.factory(APP_LOGIN, key=new_key, old_key=old_key)
    with rotating.as_user(tenants.alice) as tx:
        after = tx.mcp.create(name="new", type="http", endpoint="https://y",
                              auth_type="bearer", bearer_token="under-new-key")
        values = {c.name: c.bearer_token for c in tx.mcp.list_effective(decrypt=True)}
    assert {k: v.get_secret_value() for k, v in values.items() if v} == {
        "old": "under-old-key", "new": "under-new-key"}
    # Both tokens are under the organization's data key, still wrapped by the old
    # master key: the new key alone opens nothing until rotate-key re-wraps it.
    new_only = api.factory(APP_LOGIN, key=new_key)
    with pytest.raises(DecryptionError), new_only.as_user(tenants.alice) as tx:
        tx.mcp.get_secret(after.id)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        rotate_keys(conn, new_key, old_key)
    new_only = api.factory(APP_LOGIN, key=new_key)
    with new_only.as_user(tenants.alice) as tx:
        assert (s := tx.mcp.get_secret(after.id)) and s.get_secret_value() == "under-new-key"
        assert (s := tx.mcp.get_secret(before.id)) and s.get_secret_value() == "under-old-key"
    # A process that learnt the data key keeps it in memory; a new one, with only
    # the old master key, cannot unwrap it any more.
    ring_for.cache_clear()
    old_only = api.factory(APP_LOGIN, key=old_key)
    with pytest.raises(DecryptionError), old_only.as_user(tenants.alice) as tx:
        tx.mcp.get_secret(before.id)


# --- OAuth tokens ---------------------------------------------------------------------


def _oauth_config(api: Api, tenants: Tenants) -> UUID:
    with api.app.as_user(tenants.admin_a) as tx:
        return tx.mcp.create(name="gh", type="http", endpoint="https://gh", auth_type="oauth",
                             oauth_provider="github", scope="organization").id


def test_store_and_replace_token(api: Api, tenants: Tenants, db: TestDatabase) -> None:
    cfg = _oauth_config(api, tenants)
    with api.app.as_user(tenants.alice) as tx:
        first = tx.tokens.store(cfg, access_token="acc-1", refresh_token="ref-1", scope="repo")
    assert first.oauth_provider == "github" and first.access_token is None
    with api.app.as_user(tenants.alice) as tx:
        second = tx.tokens.store(cfg, access_token="acc-2")
        assert second.id == first.id  # replaced in place: one row per user and config
        got = tx.tokens.get(cfg, decrypt=True)
        assert got.access_token is not None and got.access_token.get_secret_value() == "acc-2"
        assert got.refresh_token is None and got.scope is None
        assert tx.tokens.get(cfg).access_token is None
        assert [t.id for t in tx.tokens.list()] == [first.id]
    stored = _raw(db, "SELECT access_token FROM mcp_oauth_tokens WHERE id = %s", first.id)[0]
    assert "acc-2" not in stored
    with api.app.as_user(tenants.bob) as tx:
        bobs = tx.tokens.store(cfg, access_token="bob-acc")
    assert bobs.id != first.id


def test_tokens_are_private_even_from_admins(api: Api, tenants: Tenants) -> None:
    cfg = _oauth_config(api, tenants)
    with api.app.as_user(tenants.alice) as tx:
        tx.tokens.store(cfg, access_token="acc")
    with pytest.raises(NotFound), api.app.as_user(tenants.admin_a) as tx:
        tx.tokens.get(cfg, user_id=tenants.alice)
    with pytest.raises(NotFound), api.app.as_user(tenants.carol) as tx:
        tx.tokens.store(cfg, access_token="cross-tenant")  # cannot see org A's config
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.admin_a) as tx:
        tx.tokens.store(cfg, access_token="for-alice", user_id=tenants.alice)
    with api.svc.as_service() as tx:
        svc_view = tx.tokens.get(cfg, user_id=tenants.alice, decrypt=True)
        assert svc_view.access_token is not None
        assert svc_view.access_token.get_secret_value() == "acc"


def test_token_for_non_oauth_config_is_invalid(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        plain = tx.mcp.create(name="p", type="stdio", command="x")
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.alice) as tx:
        tx.tokens.store(plain.id, access_token="acc")
    assert info.value.rule == "mcp_oauth_tokens_configuration_oauth"
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.alice) as tx:
        tx.tokens.store(plain.id, access_token="")
    assert info.value.rule == "access_token"


def test_delete_token(api: Api, tenants: Tenants) -> None:
    cfg = _oauth_config(api, tenants)
    with api.app.as_user(tenants.alice) as tx:
        tx.tokens.store(cfg, access_token="acc")
    with pytest.raises(NotFound), api.app.as_user(tenants.bob) as tx:
        tx.tokens.delete(cfg)
    with api.app.as_user(tenants.alice) as tx:
        tx.tokens.delete(cfg)
        with pytest.raises(NotFound):
            tx.tokens.delete(cfg)
        with pytest.raises(NotFound):
            tx.tokens.get(cfg)


def test_reads_refused_outside_own_scope(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.bob) as tx:
        bobs = tx.mcp.create(name="b", type="http", endpoint="https://b", auth_type="bearer",
                             bearer_token=TOKEN)
    cfg = _oauth_config(api, tenants)
    with api.app.as_user(tenants.alice) as tx:
        tx.tokens.store(cfg, access_token="acc")
    with api.app.as_user(tenants.alice) as tx:
        with pytest.raises(NotFound):
            tx.mcp.get_secret(bobs.id)
        with pytest.raises(NotFound):
            tx.mcp.get(bobs.id, decrypt=True)
        assert tx.mcp.list(organization_id=tenants.org_b) == []
        assert bobs.id not in {c.id for c in tx.mcp.list()}
        assert tx.mcp.list_effective(user_id=tenants.bob) != []  # org-wide ones only
        assert bobs.id not in {c.id for c in tx.mcp.list_effective(user_id=tenants.bob)}
    with api.app.as_user(tenants.admin_a) as tx:
        assert tx.tokens.list(user_id=tenants.alice) == []
        assert tx.tokens.list() == []
    with api.app.as_user(tenants.alice) as tx:
        assert [t.mcp_configuration_id for t in tx.tokens.list()] == [cfg]
    with api.svc.as_service() as tx:
        secret = tx.mcp.get_secret(bobs.id)
        assert secret is not None and secret.get_secret_value() == TOKEN
