"""The keys one process encrypts and decrypts with.

A :class:`KeyRing` holds one primary key (it encrypts everything new) and any
number of other keys (they only decrypt): during a rotation the previous key,
``AGENTAPI_OLD_ENCRYPTION_KEY``. Each ``ag1`` ciphertext names its key by id, so
opening one is a dictionary look-up plus one HMAC and one AES-CBC pass; the
subkeys are derived once per key, when the ring is built. A legacy (pgcrypto
OpenPGP) value carries no key id: each key is tried in turn, primary first.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from agentapi_db.crypto.legacy import open_legacy
from agentapi_db.crypto.sealed import SubKeys, is_sealed, open_sealed, seal, sealed_key_id
from agentapi_db.errors import DecryptionError
from agentapi_db.keys import EncryptionKey

__all__ = ["KeyRing", "ring_for"]


class KeyRing:
    """A primary key and the other keys that may still decrypt (see the module docstring)."""

    __slots__ = ("_by_kid", "_keys", "_primary")

    def __init__(self, primary: EncryptionKey, others: Sequence[EncryptionKey] = ()) -> None:
        keys = [primary, *[k for k in others if k != primary]]
        self._keys = tuple(keys)
        subkeys = [SubKeys.of(k.raw_bytes()) for k in keys]
        self._primary = subkeys[0]
        self._by_kid = {s.kid: s for s in subkeys}

    @property
    def primary_kid(self) -> str:
        """The key id new ciphertexts carry."""
        return self._primary.kid

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id this ring opens, primary first."""
        return tuple(self._by_kid)

    def seal(self, plaintext: str) -> str:
        """``plaintext`` encrypted under the primary key (``ag1`` format)."""
        return seal(self._primary, plaintext)

    def open(self, ciphertext: str) -> str:
        """The plaintext of an ``ag1`` or legacy value (:class:`DecryptionError` if none opens)."""
        if is_sealed(ciphertext):
            keys = self._by_kid.get(sealed_key_id(ciphertext))
            if keys is None:
                raise DecryptionError(
                    "a stored token was encrypted with a key that is not configured"
                )
            return open_sealed(keys, ciphertext)
        for key in self._keys:
            try:
                return open_legacy(ciphertext, key.sql_value)
            except DecryptionError:
                continue
        raise DecryptionError("a stored token does not open (wrong key or corrupt data)")

    def open_optional(self, ciphertext: str | None) -> str | None:
        return None if ciphertext is None else self.open(ciphertext)

    def seal_optional(self, plaintext: str | None) -> str | None:
        return None if plaintext is None else self.seal(plaintext)

    def is_current(self, ciphertext: str) -> bool:
        """Whether a value is ``ag1`` under the primary key (nothing for rotation to do)."""
        return is_sealed(ciphertext) and sealed_key_id(ciphertext) == self._primary.kid

    def __repr__(self) -> str:
        return f"KeyRing(primary={self._primary.kid}, keys={len(self._keys)})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("KeyRing cannot be pickled")


@lru_cache(maxsize=16)
def ring_for(primary: EncryptionKey, old: EncryptionKey | None) -> KeyRing:
    """The (cached) ring of a primary key and an optional old key."""
    return KeyRing(primary, () if old is None else (old,))
