"""The keys one process encrypts and decrypts with.

A :class:`KeyRing` holds the master keys: one primary (it wraps every new data
key) and any number of others (they only unwrap and decrypt): during a rotation
the previous key, ``AGENTAPI_OLD_ENCRYPTION_KEY``, or the other keys of the ring
``AGENTAPI_ENCRYPTION_KEYS`` (:func:`agentapi_db.keys.parse_key_ring`). Errors
about a missing key name its key id (a keyed fingerprint), never a key. It also caches the
organizations' data keys it has unwrapped (:meth:`KeyRing.learn`), by key id.

Each ``ag1`` ciphertext names its key by id, so opening one is a dictionary
look-up plus one HMAC and one AES-CBC pass; subkeys are derived once per key. A
value may be under a data key (what the library writes) or directly under a
master key (what an operator's ``encrypt_token(token, master_key)`` writes in
psql); both open. A legacy (pgcrypto OpenPGP) value carries no key id: each
master key is tried in turn, primary first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import lru_cache

from agentapi_db.crypto.legacy import open_legacy
from agentapi_db.crypto.sealed import SubKeys, is_sealed, open_sealed, seal, sealed_key_id
from agentapi_db.errors import DecryptionError
from agentapi_db.keys import EncryptionKey

__all__ = ["KeyRing", "ring_for"]


class KeyRing:
    """A primary key and the other keys that may still decrypt (see the module docstring)."""

    __slots__ = ("_by_kid", "_data", "_keys", "_primary")

    def __init__(self, primary: EncryptionKey, others: Sequence[EncryptionKey] = ()) -> None:
        keys = [primary, *[k for k in others if k != primary]]
        self._keys = tuple(keys)
        subkeys = [SubKeys.of(k.raw_bytes()) for k in keys]
        self._primary = subkeys[0]
        self._by_kid = {s.kid: s for s in subkeys}
        self._data: dict[str, SubKeys] = {}

    @property
    def primary_kid(self) -> str:
        """The key id new ciphertexts carry."""
        return self._primary.kid

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id this ring opens, primary first."""
        return tuple(self._by_kid)

    def seal(self, plaintext: str) -> str:
        """``plaintext`` encrypted under the primary master key (``ag1`` format)."""
        return seal(self._primary, plaintext)

    # ------------------------------------------------------------- data keys

    def new_data_key(self) -> tuple[SubKeys, str]:
        """A fresh random data key (cached) and its form wrapped by the primary master key."""
        raw = os.urandom(32)
        keys = SubKeys.of(raw)
        self._data[keys.kid] = keys
        return keys, self.seal(raw.hex())

    def unwrap(self, wrapped: str) -> bytes:
        """The bytes of a wrapped data key (wrapped under any master key of the ring)."""
        if not is_sealed(wrapped):
            raise DecryptionError("a wrapped data key is malformed")
        kid = sealed_key_id(wrapped)
        if kid not in self._by_kid:
            raise DecryptionError(
                f"a data key is wrapped by master key id {kid}, which is not in the key "
                f"ring (it holds {self._kid_list()}; `agentapi-db key-ids` lists the ids of "
                "the configured keys)"
            )
        text = self.open(wrapped)
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise DecryptionError("a wrapped data key is malformed") from None
        if len(raw) != 32:
            raise DecryptionError("a wrapped data key is malformed")
        return raw

    def learn(self, key_id: str, wrapped: str) -> SubKeys:
        """Unwrap a data key read from the database, check its id, and cache it."""
        known = self._data.get(key_id)
        if known is not None:
            return known
        keys = SubKeys.of(self.unwrap(wrapped))
        if keys.kid != key_id:
            raise DecryptionError("a stored data key does not match its key id")
        self._data[key_id] = keys
        return keys

    def forget(self, key_id: str) -> None:
        """Drop a destroyed (shredded or retired) data key from the cache."""
        self._data.pop(key_id, None)

    def unknown_key_ids(self, ciphertexts: Iterable[str | None]) -> set[str]:
        """Key ids of ``ag1`` values that neither a master key nor a cached data key opens."""
        out: set[str] = set()
        for value in ciphertexts:
            if value is not None and is_sealed(value):
                kid = sealed_key_id(value)
                if kid not in self._by_kid and kid not in self._data:
                    out.add(kid)
        return out

    def is_master_key_id(self, key_id: str) -> bool:
        return key_id in self._by_kid

    def _kid_list(self) -> str:
        return "master key ids " + ", ".join(self._by_kid)

    # ------------------------------------------------------------- open

    def open(self, ciphertext: str) -> str:
        """The plaintext of an ``ag1`` or legacy value (:class:`DecryptionError` if none opens).

        An ``ag1`` value under a data key opens only once that key was learnt.
        """
        if is_sealed(ciphertext):
            kid = sealed_key_id(ciphertext)
            keys = self._by_kid.get(kid) or self._data.get(kid)
            if keys is None:
                raise DecryptionError(
                    f"a stored token was encrypted with key id {kid}, which is not available "
                    f"(not a master key of the ring, {self._kid_list()}, nor a data key "
                    "it unwrapped: a missing master key, or a destroyed data key)"
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
        """Whether a value is ``ag1`` under the primary master key."""
        return is_sealed(ciphertext) and sealed_key_id(ciphertext) == self._primary.kid

    def __repr__(self) -> str:
        return (f"KeyRing(primary={self._primary.kid}, keys={len(self._keys)}, "
                f"data_keys={len(self._data)})")

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("KeyRing cannot be pickled")


@lru_cache(maxsize=16)
def ring_for(primary: EncryptionKey, old: EncryptionKey | None,
             others: tuple[EncryptionKey, ...] = ()) -> KeyRing:
    """The (cached) ring of a primary key, an optional old key and any other keys."""
    return KeyRing(primary, ((old,) if old is not None else ()) + others)
