"""The local database: what ``agentapi-db`` and ``connect()`` use when no URL is configured.

:func:`ensure_local_database` starts (or reuses) a :class:`~agentapi_db.cluster.LocalCluster`
in :func:`~agentapi_db.cluster.default_data_dir` (``$AGENTAPI_DATA_DIR``, else
``/var/lib/agentapi-db/pg`` for root, else ``~/.local/share/agentapi-db/pg``),
creates the database ``agentapi``, applies the migrations and makes sure the
local login role exists, then returns a URL. The port and the data persist in the
data dir, so the same URL works after ``agentapi-db down`` / a reboot (the next
call starts the server again).

The local login, ``agentapi_local``, is ``NOINHERIT`` and a member of both
``agentapi_app`` and ``agentapi_service``: it has no privileges of its own, so a
transaction that does not ``SET LOCAL ROLE`` (outside ``as_user``/``as_service``)
sees nothing, and one login serves both contexts of a
:class:`~agentapi_db.Database`. That is a convenience for a single-developer
cluster; a deployment gives the application and the service separate logins.
The cluster trusts every connection from 127.0.0.1 (see ``cluster.py``): it is for
development only.

Concurrent callers (two shells running ``agentapi-db`` at once) serialize on an
``flock`` next to the data dir while they start and migrate the cluster.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from agentapi_db import context_admin
from agentapi_db.cluster import ClusterError, LocalCluster, default_data_dir
from agentapi_db.context import ContextKey
from agentapi_db.contract import TABLES
from agentapi_db.migrations import (
    MigrationError,
    MigrationState,
    available_migrations,
    migrate,
    read_state,
)

__all__ = [
    "LOCAL_DATABASE",
    "LOCAL_LOGIN",
    "LocalStatus",
    "ensure_local_database",
    "ensure_login",
    "local_cluster",
    "local_status",
    "stop_local_database",
]

LOCAL_DATABASE = "agentapi"
"""Name of the database created in the local cluster."""

LOCAL_LOGIN = "agentapi_local"
"""Login role the local URL connects as (NOINHERIT member of agentapi_app and agentapi_service)."""

LOCAL_GROUPS = ("agentapi_app", "agentapi_service")

COUNTED_TABLES = TABLES

# --------------------------------------------------------------------------- SQL
_SQL_DB_EXISTS = "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s"
_SQL_CREATE_DB = "CREATE DATABASE {}"
_SQL_ROLE_EXISTS = "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s"
_SQL_CREATE_LOGIN = "CREATE ROLE {} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
_SQL_ALTER_LOGIN = "ALTER ROLE {} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
_SQL_GRANT = "GRANT {} TO {}"
_SQL_COUNT = "SELECT count(*) FROM {}.{}"


def local_cluster(data_dir: Path | None = None) -> LocalCluster:
    """The local cluster object (nothing is started)."""
    return LocalCluster(data_dir if data_dir is not None else default_data_dir())


@contextlib.contextmanager
def _setup_lock(cluster: LocalCluster) -> Iterator[None]:
    lock_path = cluster.data_dir.with_name(cluster.data_dir.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def ensure_local_database(*, superuser: bool = False, data_dir: Path | None = None) -> str:
    """Start or reuse the local cluster, migrate database ``agentapi``, return its URL.

    The URL connects as ``agentapi_local`` (see the module docstring), or as the
    cluster's superuser when ``superuser`` is true (for migrations and checks).
    Raises :class:`~agentapi_db.cluster.ClusterError` (with the apt command to run)
    when no PostgreSQL server binaries are installed, and
    :class:`~agentapi_db.migrations.MigrationError` when the database's schema
    cannot be brought up to date.
    """
    cluster = local_cluster(data_dir)
    with _setup_lock(cluster):
        cluster.init()
        cluster.start()
        admin_url = cluster.url()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            if conn.execute(_SQL_DB_EXISTS, (LOCAL_DATABASE,)).fetchone() is None:
                conn.execute(sql.SQL(_SQL_CREATE_DB).format(sql.Identifier(LOCAL_DATABASE)))
        try:
            migrate(cluster.url(LOCAL_DATABASE))
        except MigrationError as exc:
            raise MigrationError(
                f"{exc} (local database in {cluster.data_dir}: `agentapi-db down --purge` "
                "deletes it, then `agentapi-db up` builds a new one)"
            ) from exc
        ensure_login(admin_url)
        _ensure_context_key(cluster)
    if superuser:
        return cluster.url(LOCAL_DATABASE)
    return cluster.url(LOCAL_DATABASE, user=LOCAL_LOGIN)


def ensure_login(admin_url: str) -> None:
    """Create or re-assert the local login (used by the HA pair too, see agentapi_db.ha)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(_SQL_ROLE_EXISTS, (LOCAL_LOGIN,)).fetchone() is not None
        stmt = _SQL_ALTER_LOGIN if exists else _SQL_CREATE_LOGIN
        conn.execute(sql.SQL(stmt).format(sql.Identifier(LOCAL_LOGIN)))
        for group in LOCAL_GROUPS:
            conn.execute(
                sql.SQL(_SQL_GRANT).format(sql.Identifier(group), sql.Identifier(LOCAL_LOGIN))
            )


CONTEXT_KEY_FILE = "context.key"
"""The local database's context key, in its data dir (0600): the request context is
authenticated there too, so `agentapi-db verify` passes and development runs the
production path."""


def local_context_key(data_dir: Path | None = None) -> ContextKey | None:
    """The local database's context key, or None before it was made."""
    path = local_cluster(data_dir).data_dir / CONTEXT_KEY_FILE
    try:
        return ContextKey.parse(path.read_text(encoding="utf-8"), source=f"key file {path}")
    except FileNotFoundError:
        return None


def _ensure_context_key(cluster: LocalCluster) -> None:
    """Make the local context key (in the database and the data dir) once."""
    path = cluster.data_dir / CONTEXT_KEY_FILE
    with psycopg.connect(cluster.url(LOCAL_DATABASE)) as conn:
        known = {k.key_id for k in context_admin.list_keys(conn) if k.valid}
        have = local_context_key(cluster.data_dir)
        if have is not None and have.key_id in known:
            return
        key = context_admin.create_key(conn)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key.hex() + "\n")
    tmp.replace(path)


def stop_local_database(data_dir: Path | None = None, *, purge: bool = False) -> bool:
    """Stop the local cluster; return whether it was running.

    The data is kept, unless ``purge``: then the whole data dir is deleted.
    """
    cluster = local_cluster(data_dir)
    with _setup_lock(cluster):
        running = cluster.is_initialized() and cluster.is_running()
        if purge:
            cluster.destroy()
        elif running:
            cluster.stop()
    return running


@dataclass(frozen=True)
class LocalStatus:
    """What ``agentapi-db status`` shows."""

    data_dir: Path
    initialized: bool
    running: bool
    port: int | None
    pid: int | None
    server_version: str | None
    url: str | None
    schema_version: int | None
    latest_version: int
    schema_up_to_date: bool | None
    row_counts: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {
            "data_dir": str(self.data_dir),
            "initialized": self.initialized,
            "running": self.running,
            "port": self.port,
            "pid": self.pid,
            "server_version": self.server_version,
            "url": self.url,
            "database": LOCAL_DATABASE,
            "schema_version": self.schema_version,
            "latest_version": self.latest_version,
            "schema_up_to_date": self.schema_up_to_date,
            "row_counts": self.row_counts,
        }


def local_status(data_dir: Path | None = None) -> LocalStatus:
    """The local cluster's state; reads the database only when the server runs.

    Never starts anything. Binaries are not required to report a stopped or
    missing cluster.
    """
    cluster = local_cluster(data_dir)
    initialized = cluster.is_initialized()
    try:
        status = cluster.status() if initialized else None
    except ClusterError:
        status = None
    running = bool(status and status.running)
    latest = max(m.version for m in available_migrations())
    schema_version: int | None = None
    up_to_date: bool | None = None
    counts: dict[str, int] = {}
    url: str | None = None
    if running:
        url = cluster.url(LOCAL_DATABASE, user=LOCAL_LOGIN)
        state = _read_local_state(cluster)
        if state is not None:
            schema_version = state.current_version
            up_to_date = state.up_to_date and state.has_history
            if state.schema_present:
                counts = _row_counts(cluster)
    return LocalStatus(
        data_dir=cluster.data_dir,
        initialized=initialized,
        running=running,
        port=status.port if status is not None else None,
        pid=status.pid if status is not None else None,
        server_version=status.server_version if status is not None else None,
        url=url,
        schema_version=schema_version,
        latest_version=latest,
        schema_up_to_date=up_to_date,
        row_counts=counts,
    )


def _read_local_state(cluster: LocalCluster) -> MigrationState | None:
    try:
        with psycopg.connect(cluster.url(LOCAL_DATABASE), autocommit=True) as conn:
            return read_state(conn)
    except psycopg.OperationalError:
        return None  # database not created yet


def _row_counts(cluster: LocalCluster) -> dict[str, int]:
    counts: dict[str, int] = {}
    with psycopg.connect(cluster.url(LOCAL_DATABASE), autocommit=True) as conn:
        for table in COUNTED_TABLES:
            row = conn.execute(
                sql.SQL(_SQL_COUNT).format(sql.Identifier("public"), sql.Identifier(table))
            ).fetchone()
            counts[table] = int(row[0]) if row is not None else 0
    return counts
