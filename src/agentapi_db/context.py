"""The authenticated request context: context keys and the tokens they sign.

A transaction's acting user is ``app.user_id``. Once the database has a context key
(``agentapi-db context-key create``), that id counts only together with
``app.context_token``, a short-lived token for exactly that id that the caller
cannot forge from SQL::

    v1.<key id>.<expiry, Unix seconds>.<mac>
    mac    = hex(HMAC-SHA256(key, b"agentapi-context-v1." + <user id> + b"." + <expiry>))
    key id = the first 16 hex digits of sha256(key)

The library holds a copy of the key (``AGENTAPI_CONTEXT_KEY`` or
``AGENTAPI_CONTEXT_KEY_FILE``: 64 hex digits, as ``context-key create`` prints it)
and signs in-process, so the token travels in the transaction's single context
round trip at no extra cost. ``agentapi_auth.requested_user_id()`` in
``database/schema.sql`` verifies it by the same rule; docs/security.md gives the
rules in full. A key never appears in a repr, a log or an error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from pathlib import Path
from uuid import UUID

from agentapi_db.errors import ConfigurationError

__all__ = [
    "DEFAULT_TOKEN_TTL",
    "ENV_CONTEXT_KEY",
    "ENV_CONTEXT_KEY_FILE",
    "MAX_TOKEN_TTL",
    "ContextKey",
    "load_context_key",
]

ENV_CONTEXT_KEY = "AGENTAPI_CONTEXT_KEY"
ENV_CONTEXT_KEY_FILE = "AGENTAPI_CONTEXT_KEY_FILE"

DEFAULT_TOKEN_TTL = 300
"""Seconds a token made by the library is valid (it is checked at the transaction's start)."""
MAX_TOKEN_TTL = 86_400
"""The server refuses tokens that expire more than a day ahead."""

_PREFIX = b"agentapi-context-v1."
_KEY_BYTES = 32


class ContextKey:
    """A 32-byte context key; signs tokens. Its repr shows only the key id."""

    __slots__ = ("_secret", "key_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != _KEY_BYTES:
            raise ConfigurationError(f"a context key is {_KEY_BYTES} bytes (64 hex digits)")
        self._secret = secret
        self.key_id = hashlib.sha256(secret).hexdigest()[:16]

    @classmethod
    def parse(cls, text: str, *, source: str = ENV_CONTEXT_KEY) -> ContextKey:
        """From 64 hex digits (surrounding white space ignored)."""
        value = text.strip()
        try:
            secret = bytes.fromhex(value)
        except ValueError:
            raise ConfigurationError(f"{source} is not 64 hex digits") from None
        if len(secret) != _KEY_BYTES:
            raise ConfigurationError(f"{source} is not 64 hex digits")
        return cls(secret)

    def hex(self) -> str:
        """The key as 64 hex digits (to store it in a file or a secret manager)."""
        return self._secret.hex()

    def sign(self, user_id: UUID, *, ttl: int = DEFAULT_TOKEN_TTL, now: float | None = None) -> str:
        """A token for ``user_id``, valid ``ttl`` seconds from ``now`` (default: the clock)."""
        if not 0 < ttl <= MAX_TOKEN_TTL:
            raise ConfigurationError(f"a context token is valid 1 to {MAX_TOKEN_TTL} seconds")
        expiry = int(now if now is not None else time.time()) + ttl
        message = _PREFIX + str(user_id).encode() + b"." + str(expiry).encode()
        mac = hmac.new(self._secret, message, hashlib.sha256).hexdigest()
        return f"v1.{self.key_id}.{expiry}.{mac}"

    def __repr__(self) -> str:
        return f"ContextKey(<redacted>, key_id={self.key_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ContextKey) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(self.key_id)


def load_context_key(env: Mapping[str, str] | None = None) -> ContextKey | None:
    """``AGENTAPI_CONTEXT_KEY``, else the file ``AGENTAPI_CONTEXT_KEY_FILE`` names, else None."""
    environ: Mapping[str, str] = os.environ if env is None else env
    value = environ.get(ENV_CONTEXT_KEY)
    if value:
        return ContextKey.parse(value)
    path = environ.get(ENV_CONTEXT_KEY_FILE)
    if path:
        try:
            content = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the key file named by {ENV_CONTEXT_KEY_FILE} ({path}): "
                f"{exc.strerror}"
            ) from None
        return ContextKey.parse(content, source=f"key file {path} ({ENV_CONTEXT_KEY_FILE})")
    return None
