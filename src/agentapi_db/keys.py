"""The token encryption key.

A key carries at least 256 random bits. It is written as 64 hex digits, or as
base64 / base64url (padded or not) of 32 or more bytes. :meth:`EncryptionKey.parse`
refuses anything else with a :class:`~agentapi_db.errors.ConfigurationError` whose
message never contains the text it was given. Hex digits only, 60-68 of them but
not 64, is refused as a mistyped hex key rather than read as base64.

The library never sends a key to PostgreSQL: it encrypts in the process
(:mod:`agentapi_db.crypto`, with :meth:`EncryptionKey.raw_bytes`).
:attr:`EncryptionKey.sql_value` is the canonical text form (lowercase hex of the key
bytes) that an operator gives the seed's SQL functions in psql, and the passphrase
of values in the previous (pgcrypto OpenPGP) format. A key written in hex and the
same bytes written in base64 are the same key.

``repr()`` and ``str()`` show only a short fingerprint (the first 8 hex digits of
SHA-256 over the key bytes), enough to tell two keys apart in logs and nothing more.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

from agentapi_db.errors import ConfigurationError

__all__ = ["MIN_KEY_BYTES", "EncryptionKey", "parse_key_ring"]

MIN_KEY_BYTES = 32
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")
_HEX_ONLY = re.compile(r"[0-9A-Fa-f]+")
_B64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
# At most 32 characters: no key (64 hex digits, or 43+ base64 characters) fits in an
# id, so an id echoed in an error can never be a key written on the wrong side.
_RING_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


class EncryptionKey:
    """A 256-bit (or longer) secret for ``encrypt_token`` / ``decrypt_token``."""

    __slots__ = ("_bytes",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes | bytearray):
            raise ConfigurationError("an encryption key is built from bytes")
        if len(raw) < MIN_KEY_BYTES:
            raise ConfigurationError(
                f"encryption key too short: it needs at least {MIN_KEY_BYTES} bytes "
                "(256 bits); generate one with `agentapi-db keygen`"
            )
        self._bytes = bytes(raw)

    @classmethod
    def parse(cls, text: str, *, source: str = "encryption key") -> EncryptionKey:
        """Parse 64 hex digits or base64/base64url of >= 32 bytes.

        ``source`` names where the text came from (an environment variable, a
        file) in the error message; the text itself is never echoed.
        """
        if not isinstance(text, str):
            raise ConfigurationError(f"{source}: expected text")
        value = text.strip()
        if not value:
            raise ConfigurationError(f"{source} is empty; generate one with `agentapi-db keygen`")
        if _HEX64.fullmatch(value):
            return cls(bytes.fromhex(value))
        if _HEX_ONLY.fullmatch(value) and 60 <= len(value) <= 68:
            # Hex digits only, and almost 64 of them: a mistyped hex key, which
            # would otherwise silently parse as base64 of ~47 bytes (a random base64
            # key of that length is practically never all hex digits).
            raise ConfigurationError(
                f"{source} is malformed: a hex key has exactly 64 hex digits "
                f"(this one has {len(value)})"
            )
        if not _B64.fullmatch(value):
            raise ConfigurationError(
                f"{source} is malformed: write it as 64 hex digits or as base64/base64url "
                f"of at least {MIN_KEY_BYTES} bytes (`agentapi-db keygen` prints one)"
            )
        unpadded = value.rstrip("=")
        padded = unpadded + "=" * (-len(unpadded) % 4)
        try:
            raw = base64.b64decode(
                padded.replace("-", "+").replace("_", "/"), validate=True
            )
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                f"{source} is malformed: not valid hex or base64"
            ) from None
        if len(raw) < MIN_KEY_BYTES:
            raise ConfigurationError(
                f"{source} is too short: {len(raw)} bytes; at least {MIN_KEY_BYTES} bytes "
                "(256 bits) are needed; generate one with `agentapi-db keygen`"
            )
        return cls(raw)

    @classmethod
    def generate(cls) -> EncryptionKey:
        """A new random 256-bit key (``secrets.token_bytes(32)``)."""
        return cls(secrets.token_bytes(MIN_KEY_BYTES))

    @property
    def sql_value(self) -> str:
        """The canonical text form (64 hex digits): the OpenPGP passphrase of legacy values."""
        return self._bytes.hex()

    def raw_bytes(self) -> bytes:
        """The key bytes, for the in-process cipher (:mod:`agentapi_db.crypto`) only."""
        return self._bytes

    def reveal(self) -> str:
        """The canonical text form (64 hex digits for a 32-byte key), e.g. for ``keygen``."""
        return self._bytes.hex()

    @property
    def fingerprint(self) -> str:
        """First 8 hex digits of SHA-256 of the key bytes: identifies a key, reveals nothing."""
        return hashlib.sha256(self._bytes).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"EncryptionKey(<redacted>, fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncryptionKey):
            return NotImplemented
        return hmac.compare_digest(self._bytes, other._bytes)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("EncryptionKey cannot be pickled")


def parse_key_ring(text: str, *, source: str) -> tuple[tuple[str, EncryptionKey], ...]:
    """The ``(id, key)`` entries of a key ring, the primary first.

    One entry a line, ``<id>:<key>``: ``id`` is a name of the operator's choosing
    (a letter or digit, then up to 31 of letters, digits, ``.``, ``_``, ``-``),
    ``key`` a key as :meth:`EncryptionKey.parse` takes it. Blank lines and lines
    starting with ``#`` are ignored. The first entry is the primary key (it wraps
    new data keys); the others only decrypt. Ids and keys must be unique.

    Errors name ``source`` and the line number, and a well-formed id; never a
    key, nor any text of a line that could hold one.
    """
    entries: list[tuple[str, EncryptionKey]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        ring_id, sep, key_text = stripped.partition(":")
        ring_id = ring_id.strip()
        where = f"{source}, line {number}"
        if not sep:
            raise ConfigurationError(
                f"{where}: expected <id>:<key> (an id, a colon, then the key)"
            )
        if not _RING_ID.fullmatch(ring_id):
            raise ConfigurationError(
                f"{where}: the id before the colon must be 1-32 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        key = EncryptionKey.parse(key_text, source=f"{where} (key id {ring_id})")
        for other_id, other in entries:
            if other_id == ring_id:
                raise ConfigurationError(f"{where}: the id {ring_id} is used twice")
            if other == key:
                raise ConfigurationError(
                    f"{where}: key {ring_id} is the same key as {other_id}"
                )
        entries.append((ring_id, key))
    if not entries:
        raise ConfigurationError(
            f"{source} holds no key: one <id>:<key> a line, the primary first"
        )
    return tuple(entries)
