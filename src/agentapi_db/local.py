"""The local PostgreSQL cluster used when no database URL is configured (work in progress)."""

from __future__ import annotations

from agentapi_db.cluster import ClusterError

__all__ = ["ensure_local_database"]


def ensure_local_database(*, superuser: bool = False) -> str:
    """Start (or reuse) the local cluster, migrate it, and return a URL to it."""
    raise ClusterError("the local database is not implemented yet; pass --database-url")
