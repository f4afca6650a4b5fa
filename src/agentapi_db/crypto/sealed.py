"""The ``ag1`` ciphertext format.

Text form: ``ag1:<kid>:<base64(iv || ciphertext || tag)>`` where

* ``kid`` is 16 hex digits, the first 8 bytes of HMAC-SHA256(key, "agentapi-db/ag1/kid"):
  it names the key without revealing it (a fingerprint of a 256-bit random key);
* ``enc_key`` = HMAC-SHA256(key, "agentapi-db/ag1/enc") and ``mac_key`` =
  HMAC-SHA256(key, "agentapi-db/ag1/mac") are independent 256-bit subkeys;
* ``ciphertext`` is AES-256-CBC with PKCS#7 padding under ``enc_key``, random
  16-byte ``iv``;
* ``tag`` = HMAC-SHA256(mac_key, "ag1:<kid>:" || iv || ciphertext), checked in
  constant time before anything is decrypted (encrypt-then-MAC; the header is
  authenticated, so a value cannot be relabelled with another key id).

pgcrypto does the same with ``hmac``, ``encrypt_iv`` and ``decrypt_iv(...,
'aes-cbc/pad:pkcs')``: see ``encrypt_token`` / ``decrypt_token`` in
``database/schema.sql``. AES-GCM would be faster but pgcrypto cannot open it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import threading
from typing import Final

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from agentapi_db.errors import DecryptionError

__all__ = ["FORMAT_PREFIX", "SubKeys", "is_sealed", "key_id_of", "open_sealed", "seal",
           "sealed_key_id"]

FORMAT_PREFIX: Final = "ag1:"
_KID_LABEL: Final = b"agentapi-db/ag1/kid"
_ENC_LABEL: Final = b"agentapi-db/ag1/enc"
_MAC_LABEL: Final = b"agentapi-db/ag1/mac"
_KID_HEX: Final = 16
_IV: Final = 16
_TAG: Final = 32
_BLOCK: Final = 16


def _derive(key: bytes, label: bytes) -> bytes:
    return hmac.digest(key, label, "sha256")


def key_id_of(key: bytes) -> str:
    """The key id written into every ciphertext made with ``key``."""
    return _derive(key, _KID_LABEL)[: _KID_HEX // 2].hex()


class SubKeys:
    """The derived subkeys of one key, derived once and reused (see :class:`KeyRing`).

    Decryption runs AES-256 in ECB mode over the whole (authenticated) ciphertext
    and XORs each block with the previous one: that is CBC decryption, through
    one cipher context kept per key instead of a new one per value (a third of
    the cost of a value). The context is shared, so it is used under a lock.
    """

    __slots__ = ("_ecb", "_lock", "enc", "kid", "mac")

    def __init__(self, kid: str, enc: bytes, mac: bytes) -> None:
        self.kid = kid
        self.enc = enc
        self.mac = mac
        self._ecb = Cipher(algorithms.AES256(enc), modes.ECB()).decryptor()  # noqa: S305
        self._lock = threading.Lock()

    @classmethod
    def of(cls, key: bytes) -> SubKeys:
        return cls(key_id_of(key), _derive(key, _ENC_LABEL), _derive(key, _MAC_LABEL))

    def cbc_decrypt(self, iv: bytes, ciphertext: bytes) -> bytes:
        """AES-256-CBC decryption of whole blocks (no padding removed)."""
        with self._lock:
            blocks = self._ecb.update(ciphertext)
        size = len(ciphertext)
        chain = int.from_bytes(iv + ciphertext[:-_BLOCK], "big")
        return (int.from_bytes(blocks, "big") ^ chain).to_bytes(size, "big")

    def __repr__(self) -> str:
        return f"SubKeys(kid={self.kid}, <redacted>)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("SubKeys cannot be pickled")


def is_sealed(text: str) -> bool:
    """Whether ``text`` is in the ``ag1`` format (else: the legacy format, or garbage)."""
    return text.startswith(FORMAT_PREFIX)


def sealed_key_id(text: str) -> str:
    """The key id of an ``ag1`` ciphertext (:class:`DecryptionError` if malformed)."""
    kid = text[len(FORMAT_PREFIX): len(FORMAT_PREFIX) + _KID_HEX]
    if (not is_sealed(text) or len(kid) != _KID_HEX
            or text[len(FORMAT_PREFIX) + _KID_HEX: len(FORMAT_PREFIX) + _KID_HEX + 1] != ":"):
        raise DecryptionError("a stored ciphertext is malformed")
    return kid


def seal(keys: SubKeys, plaintext: str) -> str:
    """Encrypt ``plaintext`` (UTF-8) under ``keys``; a fresh random IV each call."""
    iv = os.urandom(_IV)
    padder = padding.PKCS7(128).padder()
    data = padder.update(plaintext.encode()) + padder.finalize()
    enc = Cipher(algorithms.AES256(keys.enc), modes.CBC(iv)).encryptor()
    body = iv + enc.update(data) + enc.finalize()
    header = f"{FORMAT_PREFIX}{keys.kid}:".encode()
    tag = hmac.digest(keys.mac, header + body, "sha256")
    return header.decode() + base64.b64encode(body + tag).decode()


def open_sealed(keys: SubKeys, text: str) -> str:
    """Check and decrypt an ``ag1`` ciphertext made with ``keys``.

    :class:`DecryptionError` if it is malformed, names another key, or fails the
    tag check (wrong key, tampering); it never returns garbage.
    """
    if sealed_key_id(text) != keys.kid:
        raise DecryptionError("a stored token was encrypted with another key")
    header_len = len(FORMAT_PREFIX) + _KID_HEX + 1
    try:
        raw = base64.b64decode(text[header_len:], validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError("a stored ciphertext is malformed") from None
    if len(raw) < _IV + _BLOCK + _TAG or (len(raw) - _IV - _TAG) % _BLOCK:
        raise DecryptionError("a stored ciphertext is malformed")
    body, tag = raw[:-_TAG], raw[-_TAG:]
    expected = hmac.digest(keys.mac, text[:header_len].encode() + body, "sha256")
    if not hmac.compare_digest(tag, expected):
        raise DecryptionError("a stored token does not authenticate (wrong key or corrupt data)")
    data = keys.cbc_decrypt(body[:_IV], body[_IV:])
    # PKCS#7, checked only after the tag: no padding oracle. Authenticated data
    # with bad padding was written by a holder of the key, but not by us.
    pad = data[-1]
    if not 1 <= pad <= _BLOCK or data[-pad:] != bytes([pad]) * pad:
        raise DecryptionError("a stored ciphertext is malformed")
    try:
        return data[:-pad].decode()
    except UnicodeDecodeError:
        raise DecryptionError("a stored ciphertext is malformed") from None
