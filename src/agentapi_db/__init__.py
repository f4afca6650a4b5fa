"""agentapi-db: the multi-tenant PostgreSQL data layer of AgentAPI.

The library: :class:`Database` / :class:`AsyncDatabase` (pooled, tenant context per
transaction via ``as_user()`` / ``as_service()``), :class:`Settings` (from the
environment), :class:`EncryptionKey`, and :func:`connect` / :func:`connect_async`.
Errors are in :mod:`agentapi_db.errors`, result models in :mod:`agentapi_db.models`.

The names are imported lazily, so ``import agentapi_db.cluster`` (CLI start-up)
does not load psycopg_pool and pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from agentapi_db.config import Settings
    from agentapi_db.context import ContextKey
    from agentapi_db.db import (
        AsyncDatabase,
        AsyncTransaction,
        Database,
        Transaction,
        connect,
        connect_async,
    )
    from agentapi_db.keys import EncryptionKey
    from agentapi_db.ops._core import UNSET

_EXPORTS = {
    "Settings": "agentapi_db.config",
    "ContextKey": "agentapi_db.context",
    "AsyncDatabase": "agentapi_db.db",
    "AsyncTransaction": "agentapi_db.db",
    "Database": "agentapi_db.db",
    "Transaction": "agentapi_db.db",
    "connect": "agentapi_db.db",
    "connect_async": "agentapi_db.db",
    "EncryptionKey": "agentapi_db.keys",
    "UNSET": "agentapi_db.ops._core",
}

__all__ = [
    "UNSET",
    "AsyncDatabase",
    "AsyncTransaction",
    "ContextKey",
    "Database",
    "EncryptionKey",
    "Settings",
    "Transaction",
    "__version__",
    "connect",
    "connect_async",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentapi_db' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
