"""Reader for the previous token format: pgcrypto ``pgp_sym_encrypt``, base64 text.

Values written before the ``ag1`` format were made in the database by
``pgp_sym_encrypt(token, key_text, 'cipher-algo=aes256, s2k-mode=1,
s2k-digest-algo=sha256')``. To read them without sending the key to PostgreSQL,
this module opens exactly that subset of OpenPGP (RFC 4880) in the process:

* a symmetric-key session key packet (tag 3, version 4) with a simple (0) or
  salted (1) S2K, optionally carrying an encrypted session key;
* a symmetrically encrypted integrity-protected data packet (tag 18, version 1):
  OpenPGP CFB, the quick check of the random prefix, and the modification
  detection code (SHA-1) checked in constant time;
* inside, one literal data packet (tag 11), uncompressed (pgcrypto's default).

Anything else (compression, the unprotected packet 9, other ciphers) is refused
with :class:`DecryptionError`. ``rotate-key`` rewrites such values into ``ag1``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from agentapi_db.errors import DecryptionError

__all__ = ["open_legacy"]

_HASHES: Final = {2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}
_AES_KEY_BYTES: Final = {7: 16, 8: 24, 9: 32}
_BLOCK: Final = 16


def _bad() -> DecryptionError:
    return DecryptionError("a stored token does not open (wrong key or corrupt data)")


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, body) of each packet, with partial body lengths joined."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        head = data[pos]
        pos += 1
        if not head & 0x80:
            raise _bad()
        if head & 0x40:  # new format
            tag = head & 0x3F
            body = b""
            while True:
                if pos >= len(data):
                    raise _bad()
                first = data[pos]
                if first < 192:
                    size, pos = first, pos + 1
                elif first < 224:
                    size = ((first - 192) << 8) + data[pos + 1] + 192
                    pos += 2
                elif first == 255:
                    size = int.from_bytes(data[pos + 1: pos + 5], "big")
                    pos += 5
                else:  # partial body length: more chunks follow
                    size = 1 << (first & 0x1F)
                    body += data[pos + 1: pos + 1 + size]
                    pos += 1 + size
                    continue
                body += data[pos: pos + size]
                pos += size
                break
        else:  # old format
            tag = (head >> 2) & 0x0F
            kind = head & 0x03
            if kind == 3:
                size = len(data) - pos
            else:
                width = (1, 2, 4)[kind]
                size = int.from_bytes(data[pos: pos + width], "big")
                pos += width
            body = data[pos: pos + size]
            pos += size
        if pos > len(data):
            raise _bad()
        out.append((tag, body))
    return out


def _s2k(spec: bytes, passphrase: bytes, size: int) -> bytes:
    kind = spec[0]
    algo = _HASHES.get(spec[1]) if len(spec) > 1 else None
    if algo is None or kind not in (0, 1) or (kind == 1 and len(spec) < 10):
        raise _bad()
    salt = spec[2:10] if kind == 1 else b""
    out = b""
    preload = 0
    while len(out) < size:
        out += hashlib.new(algo, b"\0" * preload + salt + passphrase).digest()
        preload += 1
    return out[:size]


def _cfb_decrypt(key: bytes, data: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), CFB(b"\0" * _BLOCK)).decryptor()
    return dec.update(data) + dec.finalize()


def open_legacy(text: str, passphrase: str) -> str:
    """The token in a legacy ciphertext, opened with the key text it was made with."""
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
        packets = _packets(raw)
    except (binascii.Error, ValueError, IndexError):
        raise _bad() from None
    if len(packets) != 2 or packets[0][0] != 3 or packets[1][0] != 18:
        raise _bad()
    skesk, seipd = packets[0][1], packets[1][1]
    if len(skesk) < 4 or skesk[0] != 4 or skesk[1] not in _AES_KEY_BYTES:
        raise _bad()
    algo = skesk[1]
    spec_len = 2 if skesk[2] == 0 else 10
    s2k_key = _s2k(skesk[2: 2 + spec_len], passphrase.encode(), _AES_KEY_BYTES[algo])
    rest = skesk[2 + spec_len:]
    session = s2k_key
    if rest:
        opened = _cfb_decrypt(s2k_key, rest)
        if opened[0] not in _AES_KEY_BYTES:
            raise _bad()
        algo, session = opened[0], opened[1:]
        if len(session) != _AES_KEY_BYTES[algo]:
            raise _bad()
    if not seipd or seipd[0] != 1 or len(seipd) < 1 + _BLOCK + 2 + 22:
        raise _bad()
    plain = _cfb_decrypt(session, seipd[1:])
    if plain[_BLOCK - 2: _BLOCK] != plain[_BLOCK: _BLOCK + 2]:
        raise _bad()  # the quick check: almost always a wrong key
    mdc = hashlib.sha1(plain[:-20]).digest()  # noqa: S324 - OpenPGP's MDC is SHA-1
    if plain[-22:-20] != b"\xd3\x14" or not hmac.compare_digest(mdc, plain[-20:]):
        raise _bad()
    try:
        inner = _packets(plain[_BLOCK + 2: -22])
    except (ValueError, IndexError):
        raise _bad() from None
    if len(inner) != 1 or inner[0][0] != 11:
        raise _bad()
    literal = inner[0][1]
    name_len = literal[1]
    try:
        return literal[2 + name_len + 4:].decode()
    except UnicodeDecodeError:
        raise _bad() from None
