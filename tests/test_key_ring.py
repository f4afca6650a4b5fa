"""The key ring from the environment (``AGENTAPI_ENCRYPTION_KEYS[_FILE]``): its format and
errors, reading values wrapped by any ring key, ``rotate-key`` re-wrapping to the primary,
and errors that name the missing key's id, never a key."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from agentapi_db import Database, opsdb
from agentapi_db.config import Settings
from agentapi_db.crypto.ring import ring_for
from agentapi_db.crypto.sealed import key_id_of, sealed_key_id
from agentapi_db.errors import ConfigurationError, DecryptionError
from agentapi_db.keys import EncryptionKey, parse_key_ring
from agentapi_db.rotation import RotationError, rotate_keys
from tests.cli_fixtures import assert_clean_error, run_cli
from tests.lib_support import provision_tenants
from tests.pg import APP_LOGIN, SERVICE_LOGIN, SUPERUSER, TestDatabase

_WRAPPED = "SELECT organization_id, wrapped_key FROM organization_data_keys"


def _kid(key: EncryptionKey) -> str:
    return key_id_of(key.raw_bytes())


def _ring_text(*entries: tuple[str, EncryptionKey]) -> str:
    return "".join(f"{name}:{key.reveal()}\n" for name, key in entries)


# --- the format -------------------------------------------------------------------


def test_ring_format_primary_first_comments_and_encodings(tmp_path: Path) -> None:
    a, b, c = (EncryptionKey.generate() for _ in range(3))
    b64 = base64.urlsafe_b64encode(c.raw_bytes()).decode().rstrip("=")
    text = f"# rotated 2026-12\n\n2026-12:{a.reveal()}\n  2026-06 : {b.reveal()}\nold.v1:{b64}\n"
    assert parse_key_ring(text, source="ring") == (("2026-12", a), ("2026-06", b), ("old.v1", c))
    ring_file = tmp_path / "ring"
    ring_file.write_text(text)
    for env in ({"AGENTAPI_ENCRYPTION_KEYS": text},
                {"AGENTAPI_ENCRYPTION_KEYS_FILE": str(ring_file)}):
        settings = Settings.from_env(env)
        assert settings.encryption_key == a and settings.previous_keys == (b, c)
        assert settings.key_ids == ("2026-12", "2026-06", "old.v1")
        assert settings.key_ring().primary_kid == _kid(a)
        shown = repr(settings)
        assert all(k.reveal() not in shown for k in (a, b, c)) and b64 not in shown


def _bad_rings() -> list[tuple[str, str, str]]:
    """(ring text, what the error says, the key material it must not echo)."""
    k1, k2 = EncryptionKey.generate().reveal(), EncryptionKey.generate().reveal()
    return [
        (f"{k1}\n", "line 1: expected <id>:<key>", k1),
        (f"a:{k1}\n{k2}:b\n", "line 2: the id before the colon", k2),
        (f"a:{k1}\nb:{k2[:40]}\n", "line 2 (key id b) is too short", k2[:40]),
        (f"a:{k1}\na:{k2}\n", "line 2: the id a is used twice", k2),
        (f"a:{k1}\nb:{k1.upper()}\n", "line 2: key b is the same key as a", k1),
        (f"a:{k1}\nb:{k2[:63]}!\n", "line 2 (key id b) is malformed", k2[:63]),
        ("# only a comment\n\n", "holds no key", "#"),
    ]


@pytest.mark.parametrize(("text", "needle", "material"), _bad_rings())
def test_bad_rings_say_what_is_wrong_without_echoing_keys(
    text: str, needle: str, material: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"AGENTAPI_ENCRYPTION_KEYS": text})
    message = str(info.value)
    assert "AGENTAPI_ENCRYPTION_KEYS" in message and needle in message, message
    if material != "#":
        assert material not in message and material.lower() not in message.lower()


@pytest.mark.parametrize("other", ["AGENTAPI_ENCRYPTION_KEY", "AGENTAPI_OLD_ENCRYPTION_KEY",
                                   "AGENTAPI_ENCRYPTION_KEYS_FILE"])
def test_ring_and_single_key_variables_do_not_mix(other: str) -> None:
    key = EncryptionKey.generate()
    env = {"AGENTAPI_ENCRYPTION_KEYS": _ring_text(("a", key)), other: key.reveal()}
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    assert other in str(info.value) and key.reveal() not in str(info.value)


def test_the_single_key_variables_still_work() -> None:
    new, old = EncryptionKey.generate(), EncryptionKey.generate()
    s = Settings.from_env({"AGENTAPI_ENCRYPTION_KEY": new.reveal(),
                           "AGENTAPI_OLD_ENCRYPTION_KEY": old.reveal()})
    assert s.encryption_key == new and s.previous_keys == (old,) and s.key_ids == ()
    assert s.key_ring().kids == (_kid(new), _kid(old))


# --- with the database --------------------------------------------------------------


def test_a_ring_reads_values_wrapped_by_either_key_and_rotate_key_rewraps(
    db: TestDatabase,
) -> None:
    a, b = EncryptionKey.generate(), EncryptionKey.generate()
    svc_a = Database(db.url(SERVICE_LOGIN), key=a, min_size=1, max_size=1)
    t = provision_tenants(svc_a)
    with svc_a.as_service() as tx:  # org A's data key is wrapped by key a
        ca = tx.mcp.create(name="a", type="stdio", command="s", scope="organization",
                           organization_id=t.org_a, env={"TOKEN": "tok-under-a"})
    svc_a.close()
    ring_for.cache_clear()
    svc_b = Database(db.url(SERVICE_LOGIN), key=b, min_size=1, max_size=1)
    with svc_b.as_service() as tx:  # org B's by key b
        cb = tx.mcp.create(name="b", type="http", endpoint="https://b", auth_type="bearer",
                           bearer_token="tok-under-b", scope="organization",
                           organization_id=t.org_b)
    svc_b.close()
    with db.connect(SUPERUSER) as conn:
        wrapped = {r[0]: sealed_key_id(r[1]) for r in conn.execute(_WRAPPED)}
    assert wrapped == {t.org_a: _kid(a), t.org_b: _kid(b)}

    # A ring holding both (b primary) reads both organizations' secrets.
    ring_for.cache_clear()
    env = {"AGENTAPI_ENCRYPTION_KEYS": _ring_text(("new", b), ("old", a))}
    app = Database.from_settings(Settings.from_env(
        {**env, "AGENTAPI_DATABASE_URL": db.url(APP_LOGIN)}), min_size=1, max_size=1)
    try:
        with app.as_user(t.alice) as tx:
            assert tx.mcp.get_env(ca.id)["TOKEN"].get_secret_value() == "tok-under-a"
        with app.as_user(t.carol) as tx:
            secret = tx.mcp.get_secret(cb.id)
            assert secret is not None and secret.get_secret_value() == "tok-under-b"
    finally:
        app.close()

    # rotate-key with the ring: every data key re-wrapped by the primary.
    cli_env = {**env, "AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN)}
    assert run_cli("rotate-key", "--verify", env=cli_env).code == 1
    done = run_cli("rotate-key", env=cli_env)
    assert done.code == 0, str(done)
    assert a.reveal() not in done.stdout + done.stderr
    assert run_cli("rotate-key", "--verify", env=cli_env).code == 0
    with db.connect(SUPERUSER) as conn:
        assert {sealed_key_id(r[1]) for r in conn.execute(_WRAPPED)} == {_kid(b)}
    # The old key can now leave the ring.
    ring_for.cache_clear()
    only_b = Database(db.url(APP_LOGIN), key=b, min_size=1, max_size=1)
    try:
        with only_b.as_user(t.alice) as tx:
            assert tx.mcp.get_env(ca.id)["TOKEN"].get_secret_value() == "tok-under-a"
    finally:
        only_b.close()


def test_a_ring_missing_the_needed_key_names_its_id(db: TestDatabase) -> None:
    a, c = EncryptionKey.generate(), EncryptionKey.generate()
    svc = Database(db.url(SERVICE_LOGIN), key=a, min_size=1, max_size=1)
    t = provision_tenants(svc)
    with svc.as_service() as tx:
        cfg = tx.mcp.create(name="a", type="stdio", command="s", scope="organization",
                            organization_id=t.org_a, env={"TOKEN": "tok-a"})
    svc.close()
    ring_for.cache_clear()
    wrong = Database(db.url(SERVICE_LOGIN), key=c, min_size=1, max_size=1)
    try:
        with pytest.raises(DecryptionError) as info, wrong.as_service() as tx:
            tx.mcp.get_env(cfg.id)
    finally:
        wrong.close()
    message = str(info.value)
    assert f"master key id {_kid(a)}" in message and _kid(c) in message
    assert a.reveal() not in message and c.reveal() not in message
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn, pytest.raises(RotationError) as rot:
        rotate_keys(conn, c, None)
    assert _kid(a) in str(rot.value) and "organization_data_keys" in str(rot.value)
    out = run_cli("rotate-key", env={"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN),
                                     "AGENTAPI_ENCRYPTION_KEYS": _ring_text(("c", c))})
    assert_clean_error(out, 2, _kid(a))
    assert c.reveal() not in out.stdout + out.stderr


def test_key_ids_lists_ids_never_keys() -> None:
    a, b = EncryptionKey.generate(), EncryptionKey.generate()
    out = run_cli("key-ids", env={"AGENTAPI_ENCRYPTION_KEYS": _ring_text(("new", a),
                                                                          ("old", b))})
    assert out.code == 0, str(out)
    assert f"new (primary): key id {_kid(a)}" in out.stdout
    assert f"old: key id {_kid(b)}" in out.stdout
    assert a.reveal() not in out.stdout and b.reveal() not in out.stdout
