"""MCP ``env`` values are secrets: sealed with the organization's data key in the process
(``ag1``), names readable, values returned only when asked (``SecretStr``), redacted
everywhere else; master-key and data-key rotation keep them working and move plaintext
values from before; ``verify`` reports plaintext values."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.types.json import Jsonb
from pydantic import SecretStr, ValidationError

from agentapi_db import EncryptionKey, opsdb
from agentapi_db.crypto.ring import KeyRing
from agentapi_db.crypto.sealed import is_sealed, sealed_key_id
from agentapi_db.datakeys import rotate_org_data_key
from agentapi_db.errors import InvalidInput
from agentapi_db.models import McpConfigSpec
from agentapi_db.ops import OpContext, mcp
from agentapi_db.ops._core import Query
from agentapi_db.rotation import rotate_keys, verify_rotation
from agentapi_db.verify_secrets import check_secret_format
from tests.lib_support import Api, Tenants
from tests.pg import SERVICE_LOGIN, SUPERUSER, TestDatabase

pytest_plugins = ("tests.lib_fixtures",)

GH = "ghp_ENVSECRET_8d1f0c2b7a"
DB_PASS = "pw-ENVSECRET-33aa91"

_ENV = "SELECT env FROM mcp_configurations WHERE id = %s"
_KEY_OF = "SELECT key_id FROM organization_data_keys WHERE organization_id = %s AND is_primary"
_PLAIN = ("INSERT INTO mcp_configurations (organization_id, name, type, command, env)"
          " VALUES (%s, 'old', 'stdio', 'srv', %s) RETURNING id")


def _env(db: TestDatabase, config_id: UUID) -> dict[str, Any]:
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(_ENV, (config_id,)).fetchone()
    assert row is not None
    return dict(row[0])


def _one(db: TestDatabase, sql: str, *params: object) -> Any:
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(sql.encode(), params).fetchone()
    assert row is not None
    return row[0]


def _create(api: Api, user: UUID) -> UUID:
    with api.app.as_user(user) as tx:
        cfg = tx.mcp.create(name="gh", type="stdio", command="github-mcp",
                            env={"GITHUB_TOKEN": GH, "DB_PASSWORD": SecretStr(DB_PASS)})
    assert cfg.env == {"GITHUB_TOKEN": None, "DB_PASSWORD": None}
    assert cfg.env_names == ["DB_PASSWORD", "GITHUB_TOKEN"]
    return cfg.id


# --- storage and the read paths ---------------------------------------------------


def test_env_values_are_sealed_with_the_org_data_key(
    api: Api, tenants: Tenants, db: TestDatabase
) -> None:
    cid = _create(api, tenants.alice)
    stored = _env(db, cid)
    assert set(stored) == {"GITHUB_TOKEN", "DB_PASSWORD"}  # names stay readable
    kid = _one(db, _KEY_OF, tenants.org_a)
    for value in stored.values():
        assert is_sealed(value) and sealed_key_id(value) == kid
    assert GH not in json.dumps(stored) and DB_PASS not in json.dumps(stored)
    # The seed's SQL function, given the master key, opens a value (psql users).
    got = _one(db, "SELECT decrypt_token(env->>'GITHUB_TOKEN', %s) FROM mcp_configurations"
                   " WHERE id = %s", api.key.sql_value, cid)
    assert got == GH


def test_env_values_only_when_asked(api: Api, tenants: Tenants) -> None:
    cid = _create(api, tenants.alice)
    with api.app.as_user(tenants.alice) as tx:
        assert tx.mcp.get(cid).env == {"GITHUB_TOKEN": None, "DB_PASSWORD": None}
        assert [c.env for c in tx.mcp.list()] == [{"GITHUB_TOKEN": None, "DB_PASSWORD": None}]
        assert [c.env for c in tx.mcp.list_effective()] == [
            {"GITHUB_TOKEN": None, "DB_PASSWORD": None}]
        opened = tx.mcp.get(cid, decrypt=True).env
        assert {k: v.get_secret_value() for k, v in opened.items() if v} == {
            "GITHUB_TOKEN": GH, "DB_PASSWORD": DB_PASS}
        env = tx.mcp.get_env(cid)
        assert {k: v.get_secret_value() for k, v in env.items()} == {
            "GITHUB_TOKEN": GH, "DB_PASSWORD": DB_PASS}
        (eff,) = tx.mcp.list_effective(decrypt=True)
        value = eff.env["GITHUB_TOKEN"]
        assert value is not None and value.get_secret_value() == GH


def test_update_reseals_a_new_env_and_keeps_the_old_one_untouched(
    api: Api, tenants: Tenants, db: TestDatabase
) -> None:
    cid = _create(api, tenants.alice)
    before = _env(db, cid)
    with api.app.as_user(tenants.alice) as tx:
        tx.mcp.update(cid, args=["--verbose"])
    assert _env(db, cid) == before  # kept as stored: not decrypted, not re-sealed
    with api.app.as_user(tenants.alice) as tx:
        done = tx.mcp.update(cid, env={"GITHUB_TOKEN": "ghp_new_ENVSECRET"})
        assert done.env == {"GITHUB_TOKEN": None}
        env = tx.mcp.get_env(cid)
    assert env["GITHUB_TOKEN"].get_secret_value() == "ghp_new_ENVSECRET"
    after = _env(db, cid)
    assert set(after) == {"GITHUB_TOKEN"} and is_sealed(after["GITHUB_TOKEN"])
    assert "ghp_new_ENVSECRET" not in json.dumps(after)
    with api.app.as_user(tenants.alice) as tx:
        tx.mcp.update(cid, env={})
    assert _env(db, cid) == {}


def test_an_org_wide_env_is_sealed_with_that_orgs_key(
    api: Api, tenants: Tenants, db: TestDatabase
) -> None:
    with api.svc.as_service() as tx:
        cfg = tx.mcp.create(name="shared", type="stdio", command="s", scope="organization",
                            organization_id=tenants.org_b, env={"TOKEN": GH})
    assert sealed_key_id(_env(db, cfg.id)["TOKEN"]) == _one(db, _KEY_OF, tenants.org_b)
    with api.app.as_user(tenants.carol) as tx:
        assert tx.mcp.get_env(cfg.id)["TOKEN"].get_secret_value() == GH


# --- redaction ---------------------------------------------------------------------


def test_env_values_are_redacted_in_reprs_dumps_and_errors(api: Api, tenants: Tenants) -> None:
    cid = _create(api, tenants.alice)
    with api.app.as_user(tenants.alice) as tx:
        cfg = tx.mcp.get(cid, decrypt=True)
    for text in (repr(cfg), str(cfg), cfg.model_dump_json(), str(cfg.model_dump()),
                 repr(cfg.env)):
        assert GH not in text and DB_PASS not in text
    assert "GITHUB_TOKEN" in repr(cfg)  # the names stay visible
    spec = McpConfigSpec(name="s", type="stdio", command="x", env={"K": SecretStr(GH)})
    assert GH not in repr(spec) and GH not in spec.model_dump_json()
    # A validation error never echoes a value (here: the rule broken is the URL).
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.alice) as tx:
        tx.mcp.create(name="bad", type="http", endpoint="ftp://x", env={"K": GH})
    assert GH not in str(info.value) and GH not in repr(info.value)
    with pytest.raises(InvalidInput) as bad_name, api.app.as_user(tenants.alice) as tx:
        tx.mcp.create(name="s", type="stdio", command="x", env={"A=B": GH})
    assert bad_name.value.rule == "mcp_configurations_env_name"
    assert GH not in str(bad_name.value)
    # The model itself, used directly, hides its input in its errors too.
    with pytest.raises(ValidationError) as raw:
        McpConfigSpec.model_validate({"name": "s", "type": "stdio", "command": "x",
                                      "env": {"A=B": GH}, "bearer_token": DB_PASS})
    assert GH not in str(raw.value) and DB_PASS not in str(raw.value)


def test_no_plaintext_env_value_in_any_statement_or_parameter() -> None:
    """Drive ``create`` and ``update`` by hand: no query text or parameter carries a value."""
    ring_key = EncryptionKey.generate()
    ctx = OpContext("user", uuid4(), ring_key)
    org = uuid4()
    seen: list[Query] = []

    def run(op: Any, rows: dict[str, Any]) -> None:
        try:
            query = next(op)
            while True:
                seen.append(query)
                query = op.send(rows.get(query.name))
        except StopIteration:
            pass

    row_id = uuid4()
    row: dict[str, Any] = {"id": row_id, "organization_id": org, "user_id": ctx.user_id,
           "name": "s",
           "type": "stdio", "endpoint": None, "command": "x", "args": [],
           "env": {"GITHUB_TOKEN": "ag1:..."}, "auth_type": "none", "oauth_provider": None,
           "enabled": True, "created_at": "2026-01-01T00:00:00Z",
           "updated_at": "2026-01-01T00:00:00Z", "has_bearer_token": False}
    primary = {"organization_id": org, "key_id": None, "wrapped_key": None}
    run(mcp.create(ctx, name="s", type="stdio", command="x", env={"GITHUB_TOKEN": GH}),
        {"datakeys.primary": primary, "datakeys.create": {"key_id": "k"},
         "mcp.create": row})
    run(mcp.update(ctx, row_id, env={"GITHUB_TOKEN": SecretStr(DB_PASS)}),
        {"mcp.lock": row, "datakeys.primary": primary, "datakeys.create": {"key_id": "k"},
         "mcp.update": row})
    assert {q.name for q in seen} >= {"mcp.create", "mcp.update"}
    for q in seen:
        text = q.sql + repr(q) + repr(dict(q.params))
        text += json.dumps({k: getattr(v, "obj", v) for k, v in q.params.items()}, default=str)
        assert GH not in text and DB_PASS not in text
    writes = [q for q in seen if q.name in ("mcp.create", "mcp.update")]
    for q in writes:
        env = q.params["env"]
        assert isinstance(env, Jsonb) and all(is_sealed(v) for v in env.obj.values())


# --- rotation, migration of plaintext values, verify ---------------------------------


def _insert_plaintext(db: TestDatabase, org: UUID) -> UUID:
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(_PLAIN.encode(), (org, Jsonb({"LEGACY_TOKEN": GH, "PORT": 5432})
                                             )).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def test_master_rotation_moves_plaintext_env_and_keeps_sealed_ones(
    api: Api, tenants: Tenants, db: TestDatabase
) -> None:
    sealed_id = _create(api, tenants.alice)
    plain_id = _insert_plaintext(db, tenants.org_b)
    # Before the migration: a plaintext value is returned as it is, and it is a finding.
    with api.svc.as_service() as tx:
        legacy = tx.mcp.get_env(plain_id)
    assert legacy["LEGACY_TOKEN"].get_secret_value() == GH
    assert legacy["PORT"].get_secret_value() == "5432"
    with psycopg.connect(db.url(SUPERUSER)) as conn:
        _, findings = check_secret_format(conn)
    assert findings == ["mcp_configurations.env: 2 value(s) stored in plaintext (from before "
                        "env values were encrypted); run `agentapi-db rotate-key`"]
    new = EncryptionKey.generate()
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        report = verify_rotation(conn, new, api.key)
        env_check = next(c for c in report.columns if c.column == "mcp_configurations.env")
        assert (env_check.total, env_check.plaintext, env_check.old_key) == (4, 2, 2)
        done = rotate_keys(conn, new, api.key, batch_size=1)
        assert done.values_reencrypted == 2  # the plaintexts; sealed ones stay as they are
        assert verify_rotation(conn, new, api.key).ok
        assert rotate_keys(conn, new, api.key).values_reencrypted == 0  # rerun: nothing left
    stored = _env(db, plain_id)
    assert all(is_sealed(v) for v in stored.values()) and GH not in json.dumps(stored)
    with psycopg.connect(db.url(SUPERUSER)) as conn:
        assert check_secret_format(conn)[1] == []
    rotated = api.factory(SERVICE_LOGIN, key=new)
    with rotated.as_service() as tx:
        assert tx.mcp.get_env(plain_id)["PORT"].get_secret_value() == "5432"
        assert tx.mcp.get_env(sealed_id)["GITHUB_TOKEN"].get_secret_value() == GH


def test_org_data_key_rotation_reencrypts_env_values(
    api: Api, tenants: Tenants, db: TestDatabase
) -> None:
    cid = _create(api, tenants.alice)
    plain_id = _insert_plaintext(db, tenants.org_a)
    old_kid = _one(db, _KEY_OF, tenants.org_a)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        done = rotate_org_data_key(conn, KeyRing(api.key), "org-a", batch_size=1)
    assert done.values_reencrypted == 4 and done.retired_key_ids == (old_kid,)
    for config_id in (cid, plain_id):
        assert {sealed_key_id(v) for v in _env(db, config_id).values()} == {done.new_key_id}
    with api.app.as_user(tenants.alice) as tx:
        assert tx.mcp.get_env(cid)["DB_PASSWORD"].get_secret_value() == DB_PASS
    with api.svc.as_service() as tx:
        assert tx.mcp.get_env(plain_id)["LEGACY_TOKEN"].get_secret_value() == GH
