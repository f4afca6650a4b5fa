"""Per-organization data keys: one key per organization, wrapped by the master key;
RLS on the wrapped keys; rotation of one organization's key; crypto-shredding with
``org delete``, and the proof across a real backup that, once the master key is
rotated and the old one destroyed, an old dump no longer opens the deleted
organization's secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from agentapi_db import Database, EncryptionKey, migrations, opsdb
from agentapi_db.crypto.ring import KeyRing, ring_for
from agentapi_db.crypto.sealed import key_id_of, sealed_key_id
from agentapi_db.datakeys import rotate_org_data_key
from agentapi_db.errors import DecryptionError
from agentapi_db.ops._secrets import drive, open_values
from tests.cli_fixtures import run_cli
from tests.lib_support import Tenants, provision_tenants
from tests.pg import APP_LOGIN, SERVICE_LOGIN, SUPERUSER, TestDatabase, acting, drop_database

_KEYS = "SELECT organization_id, key_id, wrapped_key, is_primary FROM organization_data_keys"
_BEARERS = "SELECT organization_id, bearer_token FROM mcp_configurations ORDER BY name"
_ENVS = "SELECT organization_id, env FROM mcp_configurations WHERE env <> '{}'"
_ALL_BEARERS = "SELECT bearer_token FROM mcp_configurations WHERE bearer_token IS NOT NULL"
_AUDIT = "SELECT details FROM audit_logs WHERE action = 'organization.delete'"


def _rows(db: TestDatabase, query: str, params: Any = None, dbname: str | None = None
          ) -> list[tuple[Any, ...]]:
    url = db.server.url(dbname) if dbname else db.url(SUPERUSER)
    with psycopg.connect(url) as conn:
        return list(conn.execute(query.encode(), params).fetchall())


def _populate(db: TestDatabase, key: EncryptionKey) -> tuple[Database, Tenants]:
    svc = Database(db.url(SERVICE_LOGIN), key=key, min_size=1, max_size=1)
    app = Database(db.url(APP_LOGIN), key=key, min_size=1, max_size=1)
    t = provision_tenants(svc)
    for user, name in ((t.alice, "a1"), (t.bob, "a2"), (t.carol, "b1")):
        with app.as_user(user) as tx:
            tx.mcp.create(name=name, type="http", endpoint="https://x", auth_type="bearer",
                          bearer_token=f"same-token-{name[0]}")
    svc.close()
    return app, t


def test_each_organization_has_its_own_wrapped_data_key(db: TestDatabase) -> None:
    key = EncryptionKey.generate()
    app, t = _populate(db, key)
    try:
        keys = {r[0]: r for r in _rows(db, _KEYS)}
        assert set(keys) == {t.org_a, t.org_b}
        for _, kid, wrapped, primary in keys.values():
            assert primary and sealed_key_id(wrapped) == key_id_of(key.raw_bytes())
            assert kid != key_id_of(key.raw_bytes())
        for org, ct in _rows(db, _BEARERS):
            assert sealed_key_id(ct) == keys[org][1]
        with app.as_user(t.carol) as tx:
            assert [c.bearer_token.get_secret_value() for c in tx.mcp.list_effective(decrypt=True)
                    if c.bearer_token] == ["same-token-b"]
        # The seed's SQL function, given the master key, follows the data key.
        for org, ct in _rows(db, _BEARERS):
            got = _rows(db, "SELECT decrypt_token(%s, %s)", (ct, key.sql_value))[0][0]
            assert got == ("same-token-a" if org == t.org_a else "same-token-b")
    finally:
        app.close()


def test_members_read_only_their_own_organizations_wrapped_key(db: TestDatabase) -> None:
    app, t = _populate(db, EncryptionKey.generate())
    app.close()
    with db.connect(APP_LOGIN) as conn, acting(conn, "agentapi_app", str(t.alice)):
        assert {r[0] for r in conn.execute(_KEYS)} == {t.org_a}
    for statement, params in (
        ("UPDATE organization_data_keys SET is_primary = false", None),
        ("DELETE FROM organization_data_keys", None),
        ("INSERT INTO organization_data_keys (key_id, organization_id, wrapped_key)"
         " VALUES ('0123456789abcdef', %s, 'ag1:0123456789abcdef:AAAA')", (t.org_b,)),
    ):
        with db.connect(APP_LOGIN) as conn, acting(conn, "agentapi_app", str(t.alice)), \
                pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(statement.encode(), params)
        assert "permission denied" in str(info.value) or "row-level security" in str(info.value)


def test_rotating_one_organizations_data_key(db: TestDatabase) -> None:
    key = EncryptionKey.generate()
    app, t = _populate(db, key)
    before = {r[0]: r[1] for r in _rows(db, _KEYS)}
    ring = KeyRing(key)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        done = rotate_org_data_key(conn, ring, "org-a", batch_size=1)
        assert done.values_reencrypted == 2 and done.retired_key_ids == (before[t.org_a],)
        again = rotate_org_data_key(conn, ring, "org-a")  # a second rotation: a newer key
        assert again.new_key_id != done.new_key_id
    after = {r[0]: r[1] for r in _rows(db, _KEYS)}
    assert after[t.org_b] == before[t.org_b] and after[t.org_a] == again.new_key_id
    for org, ct in _rows(db, _BEARERS):
        assert sealed_key_id(ct) == after[org]
    ring_for.cache_clear()  # a fresh process: it learns the new key from the table
    fresh = Database(db.url(APP_LOGIN), key=key, min_size=1, max_size=1)
    try:
        with fresh.as_user(t.alice) as tx:
            secret = tx.mcp.get_secret(tx.mcp.list()[0].id)
            assert secret is not None and secret.get_secret_value() == "same-token-a"
    finally:
        fresh.close()
        app.close()


def test_delete_shreds_and_an_old_backup_no_longer_opens_after_master_rotation(
    db: TestDatabase, tmp_path: Path
) -> None:
    old_master, new_master = EncryptionKey.generate(), EncryptionKey.generate()
    app, t = _populate(db, old_master)
    with app.as_user(t.alice) as tx:  # env values are shredded with the rest
        tx.mcp.create(name="env", type="stdio", command="srv",
                      env={"GITHUB_TOKEN": "env-token-a"})
    app.close()
    a_values = [r[1] for r in _rows(db, _BEARERS) if r[0] == t.org_a and r[1]]
    a_env = [v for r in _rows(db, _ENVS) if r[0] == t.org_a for v in r[1].values()]
    assert len(a_env) == 1
    migrations.migrate(db.url(SUPERUSER), baseline=True)
    dump = tmp_path / "before-delete.dump"
    su = {"AGENTAPI_DATABASE_URL": db.url(SUPERUSER)}
    assert run_cli("backup", str(dump), env=su).code == 0

    svc = {"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN),
           "AGENTAPI_ENCRYPTION_KEY": old_master.reveal()}
    refused = run_cli("org", "delete", "--slug", "org-a", env=svc)
    assert refused.code == 2 and "--yes" in refused.stderr
    gone = run_cli("org", "delete", "--slug", "org-a", "--yes", env=svc)
    assert gone.code == 0, str(gone)
    assert {r[0] for r in _rows(db, _KEYS)} == {t.org_b}
    (details,) = _rows(db, _AUDIT)[0]
    assert details["slug"] == "org-a" and details["crypto_shredded"] is True
    assert len(details["data_key_ids"]) == 1 and details["mcp_configurations"] == 3

    # The closing step: a new master key re-wraps the remaining data keys; the old
    # master key is then destroyed (here: never used again).
    rotate_env = {"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN),
                  "AGENTAPI_ENCRYPTION_KEY": new_master.reveal(),
                  "AGENTAPI_OLD_ENCRYPTION_KEY": old_master.reveal()}
    assert run_cli("rotate-key", env=rotate_env).code == 0
    assert run_cli("rotate-key", "--verify", env=rotate_env).code == 0

    restored = f"{db.name}_old"
    try:
        out = run_cli("restore", str(dump), "--into", restored, env=su)
        assert out.code == 0, str(out)
        # The old dump still holds org A's rows and its wrapped data key ...
        wrapped = [r for r in _rows(db, _KEYS, dbname=restored) if r[0] == t.org_a]
        assert len(wrapped) == 1
        old_values = [r[0] for r in _rows(db, _ALL_BEARERS, dbname=restored)]
        assert set(a_values) <= set(old_values)
        assert a_env == [v for r in _rows(db, _ENVS, dbname=restored) if r[0] == t.org_a
                         for v in r[1].values()]
        # ... which nothing in use opens: the key ring now holds the new master only.
        current = KeyRing(new_master)
        with psycopg.connect(db.server.url(restored)) as conn:
            for value in a_values + a_env:
                with pytest.raises(DecryptionError):
                    drive(conn, open_values(current, [value]))
            # Control: the destroyed master key would have opened it. Destroying it
            # is what the closing step relies on.
            assert drive(conn, open_values(KeyRing(old_master), [a_values[0], a_env[0]])) == [
                "same-token-a", "env-token-a"]
    finally:
        drop_database(db.server, restored)
