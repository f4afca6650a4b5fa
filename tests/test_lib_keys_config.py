"""EncryptionKey parsing/masking, Settings from the environment, connect() (no database)."""

from __future__ import annotations

import base64
import pickle
import secrets
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentapi_db import Database, EncryptionKey, Settings, connect
from agentapi_db.errors import ConfigurationError

RAW = bytes(range(32))
HEX = RAW.hex()


def test_parse_accepts_hex_and_base64_forms_of_the_same_key() -> None:
    forms = [
        HEX,
        HEX.upper(),
        f"  {HEX}\n",
        base64.b64encode(RAW).decode(),
        base64.b64encode(RAW).decode().rstrip("="),
        base64.urlsafe_b64encode(RAW).decode(),
        base64.urlsafe_b64encode(RAW).decode().rstrip("="),
    ]
    keys = [EncryptionKey.parse(f) for f in forms]
    assert all(k == keys[0] for k in keys)
    assert keys[0].sql_value == HEX and len(keys[0].sql_value) == 64


def test_parse_accepts_longer_base64_keys() -> None:
    raw = secrets.token_bytes(48)
    key = EncryptionKey.parse(base64.urlsafe_b64encode(raw).decode())
    assert key.sql_value == raw.hex()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        HEX[:-1],  # 63 hex digits: a mistyped hex key, not base64
        HEX + "0",
        base64.b64encode(secrets.token_bytes(31)).decode(),  # 248 bits: too short
        "correct horse battery staple correct horse battery staple",
        "Zm9v!" * 12,
        "=" * 44,
    ],
)
def test_parse_rejects_short_or_malformed_keys_without_echoing(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        EncryptionKey.parse(text, source="AGENTAPI_ENCRYPTION_KEY")
    message = str(info.value)
    assert "AGENTAPI_ENCRYPTION_KEY" in message
    if text.strip():
        assert text.strip() not in message
        assert text.strip()[:12] not in message
    assert info.value.__cause__ is None  # nothing chained that could carry the text


def test_key_from_bytes_needs_32() -> None:
    with pytest.raises(ConfigurationError):
        EncryptionKey(b"x" * 31)


def test_generate_repr_and_reveal() -> None:
    a, b = EncryptionKey.generate(), EncryptionKey.generate()
    assert a != b
    text = a.reveal()
    assert len(text) == 64 and int(text, 16) >= 0 and EncryptionKey.parse(text) == a
    for shown in (repr(a), str(a), f"{a}", repr([a])):
        assert text not in shown and text[:16] not in shown
        assert "redacted" in shown and a.fingerprint in shown
    with pytest.raises(TypeError):
        pickle.dumps(a)


def test_settings_from_env(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(HEX + "\n")
    env = {
        "AGENTAPI_DATABASE_URL": "postgresql://u:hunter2@db/app",
        "DATABASE_URL": "postgresql://other/db",
        "AGENTAPI_ENCRYPTION_KEY_FILE": str(key_file),
    }
    settings = Settings.from_env(env)
    assert settings.database_url == "postgresql://u:hunter2@db/app"
    assert settings.encryption_key == EncryptionKey(RAW)
    assert settings.old_encryption_key is None
    shown = repr(settings)
    assert "hunter2" not in shown and HEX not in shown and "u:***@db/app" in shown

    fallback = Settings.from_env({"DATABASE_URL": "postgresql://x/y"})
    assert fallback.database_url == "postgresql://x/y" and fallback.encryption_key is None
    with pytest.raises(ConfigurationError, match="AGENTAPI_ENCRYPTION_KEY"):
        fallback.require_key()

    old = EncryptionKey.generate()
    rotating = Settings.from_env(
        {"AGENTAPI_ENCRYPTION_KEY": HEX, "AGENTAPI_OLD_ENCRYPTION_KEY": old.reveal()},
        database_url="postgresql://flag/wins",
    )
    assert rotating.old_encryption_key == old and rotating.database_url == "postgresql://flag/wins"
    assert Settings.from_env({}).database_url is None


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"AGENTAPI_ENCRYPTION_KEY": HEX, "AGENTAPI_ENCRYPTION_KEY_FILE": "/k"}, "only one"),
        ({"AGENTAPI_ENCRYPTION_KEY_FILE": "/nonexistent/key"}, "AGENTAPI_ENCRYPTION_KEY_FILE"),
        ({"AGENTAPI_OLD_ENCRYPTION_KEY": HEX}, "AGENTAPI_ENCRYPTION_KEY"),
        ({"AGENTAPI_ENCRYPTION_KEY": "tooshort"}, "AGENTAPI_ENCRYPTION_KEY"),
    ],
)
def test_settings_errors(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    assert needle in str(info.value) and HEX not in str(info.value)
    assert "tooshort" not in str(info.value)


def test_connect_uses_the_configured_url_and_key() -> None:
    key = EncryptionKey.generate()
    # A pool that never manages to connect is fine here: nothing is executed.
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none", encryption_key=key)
    db = connect(settings, min_size=0, timeout=0.5)
    try:
        assert isinstance(db, Database) and db.key == key
    finally:
        db.close()


@given(st.binary(min_size=32, max_size=44) | st.binary(min_size=52, max_size=96))
@settings(max_examples=200, deadline=None)
def test_every_encoding_of_random_key_bytes_parses_to_the_same_key(raw: bytes) -> None:
    # 45-51 bytes are left out: their base64 is 60-68 characters, and if those
    # happen to be hex digits only (all-zero bytes give "AAAA..."), parse refuses
    # them as a mistyped hex key on purpose.
    expected = EncryptionKey(raw)
    encodings = [
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]
    if len(raw) == 32:
        encodings.append(raw.hex())
    for text in encodings:
        assert EncryptionKey.parse(text) == expected
    assert expected.sql_value == raw.hex() and len(expected.sql_value) >= 64


@given(st.binary(min_size=1, max_size=31))
@settings(max_examples=100, deadline=None)
def test_random_short_keys_are_refused(raw: bytes) -> None:
    for text in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        with pytest.raises(ConfigurationError):
            EncryptionKey.parse(text)
