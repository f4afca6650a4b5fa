"""Configuration from the environment (and from command-line flags, which win).

==================================  ================================================
variable                            meaning
==================================  ================================================
``AGENTAPI_DATABASE_URL``           PostgreSQL URL (else ``DATABASE_URL``; else none:
                                    :func:`agentapi_db.connect` uses the local cluster)
``AGENTAPI_ENCRYPTION_KEY``         token key: 64 hex digits or base64 of >= 32 bytes
``AGENTAPI_ENCRYPTION_KEY_FILE``    file holding the key (instead of the variable)
``AGENTAPI_OLD_ENCRYPTION_KEY``     previous key during a rotation (optional)
``AGENTAPI_OLD_ENCRYPTION_KEY_FILE``  file holding the previous key (optional)
``AGENTAPI_ENCRYPTION_KEYS``        key ring instead of the four above: one
                                    ``<id>:<key>`` a line, the primary first
                                    (:func:`agentapi_db.keys.parse_key_ring`)
``AGENTAPI_ENCRYPTION_KEYS_FILE``   file holding the key ring
``AGENTAPI_CONTEXT_KEY``            context key (64 hex digits) that signs the
                                    request context (see :mod:`agentapi_db.context`)
``AGENTAPI_CONTEXT_KEY_FILE``       file holding the context key
==================================  ================================================

Setting both a key variable and its ``_FILE`` twin is an error (which one would win
is not obvious), and so is setting the key ring together with the single-key
variables. Errors name the variable or file (and a ring's line), never the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agentapi_db.context import ContextKey, load_context_key
from agentapi_db.crypto.ring import KeyRing
from agentapi_db.errors import ConfigurationError
from agentapi_db.keys import EncryptionKey, parse_key_ring

__all__ = ["Settings", "load_key"]

ENV_DATABASE_URL = "AGENTAPI_DATABASE_URL"
ENV_DATABASE_URL_FALLBACK = "DATABASE_URL"
ENV_KEY = "AGENTAPI_ENCRYPTION_KEY"
ENV_KEY_FILE = "AGENTAPI_ENCRYPTION_KEY_FILE"
ENV_OLD_KEY = "AGENTAPI_OLD_ENCRYPTION_KEY"
ENV_OLD_KEY_FILE = "AGENTAPI_OLD_ENCRYPTION_KEY_FILE"
ENV_KEYS = "AGENTAPI_ENCRYPTION_KEYS"
ENV_KEYS_FILE = "AGENTAPI_ENCRYPTION_KEYS_FILE"


def _redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for repr only)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<conninfo>" if "password" in url else url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostpart}"


def _read_text(env: Mapping[str, str], var: str, file_var: str) -> tuple[str, str] | None:
    """(text, source) from ``env[var]`` or from the file named by ``env[file_var]``."""
    text = env.get(var)
    path = env.get(file_var)
    if text and path:
        raise ConfigurationError(f"set only one of {var} and {file_var}")
    if text:
        return text, var
    if path:
        try:
            content = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the key file named by {file_var} ({path}): {exc.strerror}"
            ) from None
        return content, f"key file {path} ({file_var})"
    return None


def load_key(env: Mapping[str, str], var: str, file_var: str) -> EncryptionKey | None:
    """The key from ``env[var]`` or from the file named by ``env[file_var]``, or None."""
    found = _read_text(env, var, file_var)
    return None if found is None else EncryptionKey.parse(found[0], source=found[1])


def load_key_ring(env: Mapping[str, str]) -> tuple[tuple[str, EncryptionKey], ...] | None:
    """The ``(id, key)`` entries of ``AGENTAPI_ENCRYPTION_KEYS[_FILE]``, primary first."""
    found = _read_text(env, ENV_KEYS, ENV_KEYS_FILE)
    if found is None:
        return None
    single = [v for v in (ENV_KEY, ENV_KEY_FILE, ENV_OLD_KEY, ENV_OLD_KEY_FILE) if env.get(v)]
    if single:
        raise ConfigurationError(
            f"set either the key ring ({ENV_KEYS} or {ENV_KEYS_FILE}) or "
            f"{', '.join(single)}, not both: the ring holds the old keys too"
        )
    return parse_key_ring(found[0], source=found[1])


@dataclass(frozen=True, slots=True)
class Settings:
    """What the library needs to connect: a URL (or None for the local cluster) and keys."""

    database_url: str | None = None
    encryption_key: EncryptionKey | None = None
    """The primary key: it wraps new data keys (the ring's first key)."""
    old_encryption_key: EncryptionKey | None = None
    context_key: ContextKey | None = None
    other_keys: tuple[EncryptionKey, ...] = ()
    """The key ring's other keys (they only decrypt)."""
    key_ids: tuple[str, ...] = ()
    """The key ring's ids, primary first (empty without a ring)."""

    @property
    def previous_keys(self) -> tuple[EncryptionKey, ...]:
        """Every key besides the primary: the old key, or the ring's other keys."""
        old = () if self.old_encryption_key is None else (self.old_encryption_key,)
        return old + self.other_keys

    def key_ring(self) -> KeyRing:
        """The ring of the primary key and the previous keys."""
        return KeyRing(self.require_key(), self.previous_keys)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        database_url: str | None = None,
        encryption_key: str | EncryptionKey | None = None,
        old_encryption_key: str | EncryptionKey | None = None,
    ) -> Settings:
        """Read the environment (``os.environ`` by default); explicit arguments (flags) win."""
        environ: Mapping[str, str] = os.environ if env is None else env
        url = database_url or environ.get(ENV_DATABASE_URL) or environ.get(
            ENV_DATABASE_URL_FALLBACK
        )
        ring = load_key_ring(environ) if encryption_key is None else None
        if ring is not None:
            if old_encryption_key is not None:
                raise ConfigurationError(
                    f"--old-encryption-key and {ENV_KEYS}: put the old key in the ring")
            return cls(
                database_url=url or None,
                encryption_key=ring[0][1],
                other_keys=tuple(k for _, k in ring[1:]),
                key_ids=tuple(i for i, _ in ring),
                context_key=load_context_key(environ),
            )
        key = (
            _as_key(encryption_key, "--encryption-key")
            if encryption_key is not None
            else load_key(environ, ENV_KEY, ENV_KEY_FILE)
        )
        old = (
            _as_key(old_encryption_key, "--old-encryption-key")
            if old_encryption_key is not None
            else load_key(environ, ENV_OLD_KEY, ENV_OLD_KEY_FILE)
        )
        if old is not None and key is None:
            raise ConfigurationError(
                f"{ENV_OLD_KEY} is set but {ENV_KEY} is not: rotation needs the new key too"
            )
        return cls(
            database_url=url or None,
            encryption_key=key,
            old_encryption_key=old,
            context_key=load_context_key(environ),
        )

    def require_key(self) -> EncryptionKey:
        """The encryption key, or a ConfigurationError saying how to set one."""
        if self.encryption_key is None:
            raise ConfigurationError(
                f"no encryption key configured: set {ENV_KEY} or {ENV_KEY_FILE} "
                f"(or a key ring, {ENV_KEYS} or {ENV_KEYS_FILE}) "
                "(generate one with `agentapi-db keygen`)"
            )
        return self.encryption_key

    def __repr__(self) -> str:
        url = None if self.database_url is None else _redact_url(self.database_url)
        return (
            f"Settings(database_url={url!r}, encryption_key={self.encryption_key!r}, "
            f"old_encryption_key={self.old_encryption_key!r}, other_keys={self.other_keys!r}, "
            f"key_ids={self.key_ids!r}, context_key={self.context_key!r})"
        )


def _as_key(value: str | EncryptionKey, source: str) -> EncryptionKey:
    return value if isinstance(value, EncryptionKey) else EncryptionKey.parse(value, source=source)
