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
``AGENTAPI_CONTEXT_KEY``            context key (64 hex digits) that signs the
                                    request context (see :mod:`agentapi_db.context`)
``AGENTAPI_CONTEXT_KEY_FILE``       file holding the context key
==================================  ================================================

Setting both a key variable and its ``_FILE`` twin is an error (which one would win
is not obvious). Errors name the variable or file, never the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agentapi_db.context import ContextKey, load_context_key
from agentapi_db.errors import ConfigurationError
from agentapi_db.keys import EncryptionKey

__all__ = ["Settings", "load_key"]

ENV_DATABASE_URL = "AGENTAPI_DATABASE_URL"
ENV_DATABASE_URL_FALLBACK = "DATABASE_URL"
ENV_KEY = "AGENTAPI_ENCRYPTION_KEY"
ENV_KEY_FILE = "AGENTAPI_ENCRYPTION_KEY_FILE"
ENV_OLD_KEY = "AGENTAPI_OLD_ENCRYPTION_KEY"
ENV_OLD_KEY_FILE = "AGENTAPI_OLD_ENCRYPTION_KEY_FILE"


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


def load_key(env: Mapping[str, str], var: str, file_var: str) -> EncryptionKey | None:
    """The key from ``env[var]`` or from the file named by ``env[file_var]``, or None."""
    text = env.get(var)
    path = env.get(file_var)
    if text and path:
        raise ConfigurationError(f"set only one of {var} and {file_var}")
    if text:
        return EncryptionKey.parse(text, source=var)
    if path:
        try:
            content = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the key file named by {file_var} ({path}): {exc.strerror}"
            ) from None
        return EncryptionKey.parse(content, source=f"key file {path} ({file_var})")
    return None


@dataclass(frozen=True, slots=True)
class Settings:
    """What the library needs to connect: a URL (or None for the local cluster) and keys."""

    database_url: str | None = None
    encryption_key: EncryptionKey | None = None
    old_encryption_key: EncryptionKey | None = None
    context_key: ContextKey | None = None

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
                "(generate one with `agentapi-db keygen`)"
            )
        return self.encryption_key

    def __repr__(self) -> str:
        url = None if self.database_url is None else _redact_url(self.database_url)
        return (
            f"Settings(database_url={url!r}, encryption_key={self.encryption_key!r}, "
            f"old_encryption_key={self.old_encryption_key!r}, context_key={self.context_key!r})"
        )


def _as_key(value: str | EncryptionKey, source: str) -> EncryptionKey:
    return value if isinstance(value, EncryptionKey) else EncryptionKey.parse(value, source=source)
