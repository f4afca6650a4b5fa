"""The ag1 token format: the library (Python) and the seed's SQL functions (pgcrypto)
read each other's values; tampering and wrong keys raise on both sides; the previous
OpenPGP format still opens in the process; no repr shows a key."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentapi_db.crypto import KeyRing
from agentapi_db.crypto.legacy import open_legacy
from agentapi_db.crypto.sealed import SubKeys, key_id_of, open_sealed, seal
from agentapi_db.errors import DecryptionError
from agentapi_db.keys import EncryptionKey
from tests.pg import Conn, TestDatabase

KEY = EncryptionKey.generate()
OTHER = EncryptionKey.generate()
SUB = SubKeys.of(KEY.raw_bytes())

_ENCRYPT = "SELECT encrypt_token(%s, %s)"
_DECRYPT = "SELECT decrypt_token(%s, %s)"
_LEGACY = (
    "SELECT encode(extensions.pgp_sym_encrypt(%s, %s,"
    " 'cipher-algo=aes256, s2k-mode=1, s2k-digest-algo=sha256'), 'base64')"
)
_WRONG_KEY = "39000"
_TOKENS = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=300)
_SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def conn(module_db: TestDatabase) -> Iterator[Conn]:
    connection = module_db.connect()
    connection.autocommit = True
    yield connection


def _scalar(conn: Conn, query: str, params: Any) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0]


@_SETTINGS
@given(token=_TOKENS)
def test_library_value_opens_in_sql(conn: Conn, token: str) -> None:
    ciphertext = KeyRing(KEY).seal(token)
    assert ciphertext.startswith(f"ag1:{key_id_of(KEY.raw_bytes())}:")
    assert _scalar(conn, _DECRYPT, (ciphertext, KEY.sql_value)) == token


@_SETTINGS
@given(token=_TOKENS)
def test_sql_value_opens_in_library(conn: Conn, token: str) -> None:
    ciphertext = _scalar(conn, _ENCRYPT, (token, KEY.sql_value))
    assert KeyRing(KEY).open(ciphertext) == token


def test_sql_takes_the_key_in_base64_too(conn: Conn) -> None:
    b64 = base64.urlsafe_b64encode(KEY.raw_bytes()).decode().rstrip("=")
    assert EncryptionKey.parse(b64) == KEY
    ciphertext = _scalar(conn, _ENCRYPT, ("gho_b64", b64))
    assert KeyRing(KEY).open(ciphertext) == "gho_b64"
    assert _scalar(conn, _DECRYPT, (ciphertext, KEY.sql_value)) == "gho_b64"


def test_sql_refuses_a_key_under_256_bits(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
        _scalar(conn, _ENCRYPT, ("t", "k" * 32))
    assert "256 bits" in str(info.value)


def _tampered(ciphertext: str) -> dict[str, str]:
    head, body = ciphertext[:21], base64.b64decode(ciphertext[21:])
    flip = bytearray(body)
    flip[20] ^= 1
    last = bytearray(body)
    last[-1] ^= 0x80
    other_kid = "ag1:" + key_id_of(OTHER.raw_bytes()) + ":" + ciphertext[21:]
    return {
        "flipped_ciphertext": head + base64.b64encode(bytes(flip)).decode(),
        "flipped_tag": head + base64.b64encode(bytes(last)).decode(),
        "truncated": head + base64.b64encode(body[:-1]).decode(),
        "short": head + base64.b64encode(body[:40]).decode(),
        "relabelled": other_kid,
    }


@pytest.mark.parametrize(
    "kind", ["flipped_ciphertext", "flipped_tag", "truncated", "short", "relabelled"]
)
def test_tampering_raises_on_both_sides(conn: Conn, kind: str) -> None:
    bad = _tampered(seal(SUB, "gho_secret_token_value"))[kind]
    with pytest.raises(DecryptionError):
        KeyRing(KEY, [OTHER]).open(bad)
    with pytest.raises(psycopg.Error) as info:
        _scalar(conn, _DECRYPT, (bad, KEY.sql_value))
    assert info.value.sqlstate == _WRONG_KEY
    assert KEY.sql_value not in str(info.value)


def test_wrong_key_raises_on_both_sides(conn: Conn) -> None:
    from_sql = _scalar(conn, _ENCRYPT, ("gho_x", KEY.sql_value))
    with pytest.raises(DecryptionError) as info:
        KeyRing(OTHER).open(from_sql)
    assert KEY.sql_value not in str(info.value) and OTHER.sql_value not in str(info.value)
    with pytest.raises(psycopg.Error) as err:
        _scalar(conn, _DECRYPT, (seal(SUB, "gho_x"), OTHER.sql_value))
    assert err.value.sqlstate == _WRONG_KEY


@_SETTINGS
@given(token=_TOKENS)
def test_legacy_pgp_values_open_in_the_library(conn: Conn, token: str) -> None:
    ciphertext = _scalar(conn, _LEGACY, (token, KEY.sql_value))
    assert open_legacy(ciphertext, KEY.sql_value) == token
    assert KeyRing(OTHER, [KEY]).open(ciphertext) == token
    assert _scalar(conn, _DECRYPT, (ciphertext, KEY.sql_value)) == token


def test_legacy_value_with_a_wrong_key_raises(conn: Conn) -> None:
    ciphertext = _scalar(conn, _LEGACY, ("gho_old", KEY.sql_value))
    with pytest.raises(DecryptionError):
        KeyRing(OTHER).open(ciphertext)
    raw = bytearray(base64.b64decode(ciphertext))
    raw[-3] ^= 1
    with pytest.raises(DecryptionError):
        open_legacy(base64.b64encode(bytes(raw)).decode(), KEY.sql_value)


def test_long_legacy_value_with_partial_lengths(conn: Conn) -> None:
    token = secrets.token_urlsafe(3000)
    ciphertext = _scalar(conn, _LEGACY, (token, KEY.sql_value))
    assert open_legacy(ciphertext, KEY.sql_value) == token


def test_reprs_hide_keys() -> None:
    ring = KeyRing(KEY, [OTHER])
    for text in (repr(ring), repr(SUB), str(KEY)):
        assert KEY.sql_value not in text and OTHER.sql_value not in text
        assert SUB.enc.hex() not in text and SUB.mac.hex() not in text


def test_garbage_is_a_decryption_error() -> None:
    for text in ("", "ag1:", "ag1:0123456789abcdef:", "ag1:zz:abc", "not base64!", "QUJD"):
        with pytest.raises(DecryptionError):
            KeyRing(KEY).open(text)


def test_open_sealed_checks_the_key_id() -> None:
    with pytest.raises(DecryptionError):
        open_sealed(SubKeys.of(OTHER.raw_bytes()), seal(SUB, "x"))
