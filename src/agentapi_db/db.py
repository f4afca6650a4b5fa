"""Database / AsyncDatabase: pooled connections and tenant context per transaction.

::

    db = Database(url, key=EncryptionKey.parse(text))
    with db.as_user(user_id) as tx:          # SET LOCAL ROLE agentapi_app + app.user_id
        tx.sessions.create(workspace_path="/w", ttl=timedelta(hours=8))
    with db.as_service() as tx:              # SET LOCAL ROLE agentapi_service
        org, admin = tx.organizations.provision(name="Acme", slug="acme",
                                                admin_email="a@acme.test")

    adb = AsyncDatabase(url, key=...)
    async with adb.as_user(user_id) as tx:
        await tx.sessions.create(workspace_path="/w")

Each ``with`` block is ONE transaction on one pooled connection. The role and
``app.user_id`` are set with ``set_config(..., true)`` (i.e. ``SET LOCAL``), so they
end with the transaction: nothing session-level is ever set, the connection goes
back to the pool clean, and the pool is safe behind PgBouncer in transaction
pooling mode. The pool's connections are in autocommit mode: each block sends
``BEGIN`` and the context statement together in one pipeline (one round trip; a
psycopg-managed transaction would wait for its ``BEGIN`` first) and ends with
``COMMIT``, or ``ROLLBACK`` after a failure. Use ``tx.connection.transaction()``
inside a block for a savepoint; never commit the block's transaction yourself.
``prepare_threshold`` defaults to None (no server-side prepared statements),
which PgBouncer < 1.21 needs; pass an int on a direct connection.
``check_connections`` (default True) makes the pool test a connection with an
empty query before handing it out, so a backend that died while idle (a server
or PgBouncer restart, pg_terminate_backend) is replaced instead of failing the
next call; it costs one round trip per transaction.

High availability: the URL may be a libpq multi-host URL
(``postgresql://u@h1:p1,h2:p2/db?target_session_attrs=read-write``), which
psycopg tries host by host. With ``check_connections`` the pool's check also
reads the ``in_hot_standby`` and ``default_transaction_read_only`` parameters the
server reports on every change, so a connection to a server that is (or became) a
standby or read-only is discarded, never lent; it costs nothing beyond the empty
query (measured here per checkout + ``SELECT 1``: 63 us without a check, 126-130
us with the empty query, 122-142 us with this check, 244 us with a
``SELECT pg_is_in_recovery()`` check). A transaction
cut by a failover raises :class:`~agentapi_db.errors.Unavailable` (retryable;
``during_commit`` says the COMMIT's outcome is unknown); :mod:`agentapi_db.retry`
retries a block the caller marks as safe to retry. ``read_url`` (optional) opens a
second pool, typically ``target_session_attrs=prefer-standby``, that serves
``as_user(..., read_only=True)`` blocks (``BEGIN READ ONLY``); without it those
blocks run read-only on the main pool.

Work outside a context (:meth:`Database.transaction`) runs as the login role
itself, with no ``app.user_id``: row-level security shows it nothing.

Errors: every statement's error is translated (:func:`agentapi_db.errors.from_psycopg`)
and marks the transaction failed; so does an exception an operation raises after
one of its statements changed rows (e.g. the second half of a multi-statement
operation being refused). An operation refused without having changed anything
(``NotFound`` on a zero-row update) leaves the transaction usable. A failed
transaction is rolled back when the block ends, whether or not the exception
escaped it: a failed call never leaves anything half-written. Later calls in the
same block raise at once.

The executors (:meth:`Transaction.run`, :meth:`AsyncTransaction.run`) drive the
operation generators of :mod:`agentapi_db.ops`; see :mod:`agentapi_db.ops._core`
for why operations are generators.

Logging: logger ``agentapi_db``; statements are logged at DEBUG by name only,
never with parameters (they may carry keys or tokens).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import Any, LiteralString, Self, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from agentapi_db import queries as Q
from agentapi_db.config import Settings
from agentapi_db.context import ContextKey
from agentapi_db.errors import (
    AgentApiDbError,
    ConfigurationError,
    InvalidInput,
    PermissionDenied,
    Unavailable,
    from_psycopg,
)
from agentapi_db.keys import EncryptionKey
from agentapi_db.ops import _bind as repos
from agentapi_db.ops._core import OpContext, Query

__all__ = [
    "AsyncDatabase",
    "AsyncTransaction",
    "Database",
    "Transaction",
    "connect",
    "connect_async",
]

log = logging.getLogger("agentapi_db")

T = TypeVar("T")
_FAILED = "the transaction already failed and will be rolled back; start a new one"
_READ_ONLY = "a read_only block cannot write; use a block without read_only=True"


def _user_uuid(user_id: UUID | str) -> UUID:
    if isinstance(user_id, UUID):
        return user_id
    try:
        return UUID(str(user_id))
    except ValueError:
        raise InvalidInput("user_id must be a UUID", rule="user_id") from None


def _result_of(stop: StopIteration) -> Any:
    return stop.value


def _changed_something(query: Query, result: Any) -> bool:
    """Whether a writing statement may have changed rows (a RETURNING row, a count)."""
    if query.fetch == "one":
        return result is not None
    if query.fetch in ("all", "rowcount"):
        return bool(result)
    return True


_TX_SLOTS = (
    "audit", "connection", "mcp", "organizations", "prompts", "sessions", "tokens", "users",
)


class _TxState:
    """What the two transaction classes share: context, failure flag, logging."""

    __slots__ = ("_context", "failed", "read_only")

    def __init__(self, context: OpContext, read_only: bool = False) -> None:
        self._context = context
        self.failed = False
        self.read_only = read_only

    @property
    def context(self) -> OpContext:
        """Who acts in this transaction (mode, user id) and the keys."""
        return self._context

    def _begin(self, query: Query) -> None:
        if self.failed:
            raise AgentApiDbError(_FAILED)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("agentapi_db: %s (%s)", query.name, self._context.mode)

    def _failure(self, exc: psycopg.Error) -> AgentApiDbError:
        self.failed = True
        if self.read_only and exc.sqlstate == "25006":
            return PermissionDenied(_READ_ONLY, sqlstate="25006")
        mapped = from_psycopg(exc)
        log.debug("agentapi_db: statement failed: %s", type(mapped).__name__)
        return mapped


class Transaction(_TxState):
    """One transaction in a tenant context; the repositories run their operations here."""

    __slots__ = _TX_SLOTS

    def __init__(
        self, connection: psycopg.Connection[Any], context: OpContext, read_only: bool = False
    ) -> None:
        super().__init__(context, read_only)
        self.connection = connection
        """The psycopg connection, for statements of your own (never a session-level SET)."""
        self.organizations = repos.Organizations(self)
        self.users = repos.Users(self)
        self.sessions = repos.Sessions(self)
        self.mcp = repos.McpConfigurations(self)
        self.tokens = repos.OAuthTokens(self)
        self.prompts = repos.Prompts(self)
        self.audit = repos.Audit(self)

    def execute(self, query: Query) -> Any:
        """Run one :class:`Query` and return its result (the sync executor's step)."""
        self._begin(query)
        try:
            with self.connection.cursor(row_factory=dict_row) as cur:
                cur.execute(query.sql, query.params)
                if query.fetch == "one":
                    return cur.fetchone()
                if query.fetch == "all":
                    return cur.fetchall()
                if query.fetch == "rowcount":
                    return cur.rowcount
                return None
        except psycopg.Error as exc:
            raise self._failure(exc) from exc

    def run(self, op: Generator[Query, Any, T]) -> T:
        """Drive an operation: send it each query's result until it returns."""
        wrote = False
        result: Any = None
        try:
            while True:
                query = op.send(result)
                result = self.execute(query)
                wrote = wrote or (query.writes and _changed_something(query, result))
        except StopIteration as stop:
            value: T = _result_of(stop)
            return value
        except BaseException:
            if wrote:
                self.failed = True
            raise
        finally:
            op.close()


class AsyncTransaction(_TxState):
    """The asyncio twin of :class:`Transaction` (same repositories, awaitable methods)."""

    __slots__ = _TX_SLOTS

    def __init__(
        self, connection: psycopg.AsyncConnection[Any], context: OpContext, read_only: bool = False
    ) -> None:
        super().__init__(context, read_only)
        self.connection = connection
        self.organizations = repos.AsyncOrganizations(self)
        self.users = repos.AsyncUsers(self)
        self.sessions = repos.AsyncSessions(self)
        self.mcp = repos.AsyncMcpConfigurations(self)
        self.tokens = repos.AsyncOAuthTokens(self)
        self.prompts = repos.AsyncPrompts(self)
        self.audit = repos.AsyncAudit(self)

    async def execute(self, query: Query) -> Any:
        """Run one :class:`Query` and return its result (the async executor's step)."""
        self._begin(query)
        try:
            async with self.connection.cursor(row_factory=dict_row) as cur:
                await cur.execute(query.sql, query.params)
                if query.fetch == "one":
                    return await cur.fetchone()
                if query.fetch == "all":
                    return await cur.fetchall()
                if query.fetch == "rowcount":
                    return cur.rowcount
                return None
        except psycopg.Error as exc:
            raise self._failure(exc) from exc

    async def run(self, op: Generator[Query, Any, T]) -> T:
        """Drive an operation: send it each query's result until it returns."""
        wrote = False
        result: Any = None
        try:
            while True:
                query = op.send(result)
                result = await self.execute(query)
                wrote = wrote or (query.writes and _changed_something(query, result))
        except StopIteration as stop:
            value: T = _result_of(stop)
            return value
        except BaseException:
            if wrote:
                self.failed = True
            raise
        finally:
            op.close()


def _rollback_quietly(conn: psycopg.Connection[Any]) -> None:
    """Roll back after a failure; an error here (a broken connection, which the pool
    then discards) must not hide the failure being raised."""
    try:
        conn.execute(Q.ROLLBACK)
    except psycopg.Error:
        log.debug("agentapi_db: rollback after a failure failed too")


async def _rollback_quietly_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """The asyncio twin of :func:`_rollback_quietly`."""
    try:
        await conn.execute(Q.ROLLBACK)
    except psycopg.Error:
        log.debug("agentapi_db: rollback after a failure failed too")


# Reported by the server to the client on every change (GUC_REPORT, PostgreSQL 14+):
# reading them costs nothing beyond the empty query that delivers them.
_READ_ONLY_PARAMETERS = ("in_hot_standby", "default_transaction_read_only")
_NOT_WRITABLE = "the server is a standby or read-only"


def _read_only_server(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return any(conn.info.parameter_status(name) == "on" for name in _READ_ONLY_PARAMETERS)


def _check_writable(conn: psycopg.Connection[Any]) -> None:
    """Pool check of a read-write pool: the connection works and the server is writable."""
    ConnectionPool.check_connection(conn)
    if _read_only_server(conn):
        raise psycopg.OperationalError(_NOT_WRITABLE)


async def _check_writable_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """The asyncio twin of :func:`_check_writable`."""
    await AsyncConnectionPool.check_connection(conn)
    if _read_only_server(conn):
        raise psycopg.OperationalError(_NOT_WRITABLE)


def _commit_failed(exc: psycopg.Error) -> AgentApiDbError:
    """The error for a COMMIT that failed: a lost connection leaves the outcome unknown."""
    mapped = from_psycopg(exc)
    if isinstance(mapped, Unavailable) and exc.sqlstate is None:
        return Unavailable(
            "the connection was lost during COMMIT: the outcome is unknown",
            during_commit=True,
        )
    return mapped


def _pool_kwargs(prepare_threshold: int | None, application_name: str) -> dict[str, Any]:
    # Autocommit: each transaction is delimited by BEGIN ... COMMIT of our own (_tx).
    return {
        "autocommit": True,
        "prepare_threshold": prepare_threshold,
        "application_name": application_name,
    }


def _context_query(
    mode: str, user_id: UUID | None, context_key: ContextKey | None
) -> tuple[LiteralString | None, dict[str, Any]]:
    if mode == "user" and user_id is not None:
        token = context_key.sign(user_id) if context_key is not None else ""
        return Q.CONTEXT_AS_USER, {"user_id": str(user_id), "token": token}
    if mode == "service":
        return Q.CONTEXT_AS_SERVICE, {}
    return None, {}


class _DatabaseBase:
    def __init__(
        self,
        url: str,
        *,
        key: EncryptionKey | None,
        old_key: EncryptionKey | None,
        context_key: ContextKey | None = None,
        other_keys: Sequence[EncryptionKey] = (),
    ) -> None:
        if (old_key is not None or other_keys) and key is None:
            raise ConfigurationError("old_key needs key: rotation decrypts with either")
        self.key = key
        self.old_key = old_key
        self.other_keys = tuple(other_keys)
        self.context_key = context_key

    @classmethod
    def from_settings(cls, settings: Settings, **pool_options: Any) -> Self:
        """Build from :class:`Settings` (which must carry a URL); ``pool_options`` as in
        the constructor (``min_size``, ``max_size``, ``timeout``, ...)."""
        if settings.database_url is None:
            raise ConfigurationError("no database URL configured (AGENTAPI_DATABASE_URL)")
        return cls(
            settings.database_url,
            key=settings.encryption_key,
            old_key=settings.old_encryption_key,
            context_key=settings.context_key,
            other_keys=settings.other_keys,
            **pool_options,
        )

    def _context(self, mode: str, user_id: UUID | None = None) -> OpContext:
        if mode == "user":
            return OpContext("user", user_id, self.key, self.old_key, self.other_keys)
        if mode == "service":
            return OpContext("service", None, self.key, self.old_key, self.other_keys)
        return OpContext("none", None, self.key, self.old_key, self.other_keys)


class Database(_DatabaseBase):
    """A pool of connections (psycopg_pool.ConnectionPool) with tenant-scoped transactions."""

    def __init__(
        self,
        url: str,
        *,
        key: EncryptionKey | None = None,
        old_key: EncryptionKey | None = None,
        context_key: ContextKey | None = None,
        other_keys: Sequence[EncryptionKey] = (),
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
        prepare_threshold: int | None = None,
        application_name: str = "agentapi-db",
        check_connections: bool = True,
        read_url: str | None = None,
    ) -> None:
        super().__init__(url, key=key, old_key=old_key, context_key=context_key,
                         other_keys=other_keys)
        kwargs = _pool_kwargs(prepare_threshold, application_name)
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs=kwargs,
            name="agentapi_db",
            check=_check_writable if check_connections else None,
            open=True,
        )
        self.read_pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        """The pool of ``read_url`` (read-only blocks), None without one."""
        if read_url is not None:
            self.read_pool = ConnectionPool(
                read_url,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                kwargs=kwargs,
                name="agentapi_db_read",
                check=ConnectionPool.check_connection if check_connections else None,
                open=True,
            )

    @contextmanager
    def _tx(self, context: OpContext, read_only: bool = False) -> Iterator[Transaction]:
        setup, params = _context_query(context.mode, context.user_id, self.context_key)
        pool = self.read_pool if read_only and self.read_pool is not None else self.pool
        try:
            with pool.connection() as conn:
                tx = Transaction(conn, context, read_only)
                try:
                    # BEGIN and the context statement in one round trip.
                    with conn.pipeline():
                        conn.execute(Q.BEGIN_READ_ONLY if read_only else Q.BEGIN)
                        if setup is not None:
                            tx.execute(Query("context", setup, params, "none"))
                    yield tx
                except BaseException:
                    _rollback_quietly(conn)
                    raise
                if tx.failed:
                    conn.execute(Q.ROLLBACK)
                else:
                    try:
                        conn.execute(Q.COMMIT)
                    except psycopg.Error as exc:
                        raise _commit_failed(exc) from exc
        except (psycopg.Error, PoolTimeout) as exc:
            raise from_psycopg(exc) from exc

    def as_user(
        self, user_id: UUID | str, *, read_only: bool = False
    ) -> AbstractContextManager[Transaction]:
        """A transaction acting as ``user_id`` (role agentapi_app, RLS applies).

        ``read_only``: ``BEGIN READ ONLY``, on the ``read_url`` pool when there is one
        (a standby); a write in the block raises PermissionDenied.
        """
        return self._tx(self._context("user", _user_uuid(user_id)), read_only)

    def as_service(self) -> AbstractContextManager[Transaction]:
        """A transaction as agentapi_service (provisioning and maintenance; bypasses RLS)."""
        return self._tx(self._context("service"))

    def transaction(self) -> AbstractContextManager[Transaction]:
        """A transaction with no context: as the login role, no app.user_id (sees nothing)."""
        return self._tx(self._context("none"))

    def close(self) -> None:
        self.pool.close()
        if self.read_pool is not None:
            self.read_pool.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncDatabase(_DatabaseBase):
    """The asyncio twin of :class:`Database` (psycopg_pool.AsyncConnectionPool).

    The pool opens on first use (or ``await adb.open()`` / ``async with adb``).
    """

    def __init__(
        self,
        url: str,
        *,
        key: EncryptionKey | None = None,
        old_key: EncryptionKey | None = None,
        context_key: ContextKey | None = None,
        other_keys: Sequence[EncryptionKey] = (),
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
        prepare_threshold: int | None = None,
        application_name: str = "agentapi-db",
        check_connections: bool = True,
        read_url: str | None = None,
    ) -> None:
        super().__init__(url, key=key, old_key=old_key, context_key=context_key,
                         other_keys=other_keys)
        kwargs = _pool_kwargs(prepare_threshold, application_name)
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs=kwargs,
            name="agentapi_db_async",
            check=_check_writable_async if check_connections else None,
            open=False,
        )
        self.read_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        if read_url is not None:
            self.read_pool = AsyncConnectionPool(
                read_url,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                kwargs=kwargs,
                name="agentapi_db_async_read",
                check=AsyncConnectionPool.check_connection if check_connections else None,
                open=False,
            )
        self._opened = False

    async def open(self) -> None:
        if not self._opened:
            await self.pool.open()
            if self.read_pool is not None:
                await self.read_pool.open()
            self._opened = True

    @asynccontextmanager
    async def _tx(
        self, context: OpContext, read_only: bool = False
    ) -> AsyncIterator[AsyncTransaction]:
        setup, params = _context_query(context.mode, context.user_id, self.context_key)
        try:
            await self.open()
            pool = self.read_pool if read_only and self.read_pool is not None else self.pool
            async with pool.connection() as conn:
                tx = AsyncTransaction(conn, context, read_only)
                try:
                    async with conn.pipeline():
                        await conn.execute(Q.BEGIN_READ_ONLY if read_only else Q.BEGIN)
                        if setup is not None:
                            await tx.execute(Query("context", setup, params, "none"))
                    yield tx
                except BaseException:
                    await _rollback_quietly_async(conn)
                    raise
                if tx.failed:
                    await conn.execute(Q.ROLLBACK)
                else:
                    try:
                        await conn.execute(Q.COMMIT)
                    except psycopg.Error as exc:
                        raise _commit_failed(exc) from exc
        except (psycopg.Error, PoolTimeout) as exc:
            raise from_psycopg(exc) from exc

    def as_user(
        self, user_id: UUID | str, *, read_only: bool = False
    ) -> AbstractAsyncContextManager[AsyncTransaction]:
        """A transaction acting as ``user_id``; ``read_only`` as in :meth:`Database.as_user`."""
        return self._tx(self._context("user", _user_uuid(user_id)), read_only)

    def as_service(self) -> AbstractAsyncContextManager[AsyncTransaction]:
        """A transaction as agentapi_service (provisioning and maintenance; bypasses RLS)."""
        return self._tx(self._context("service"))

    def transaction(self) -> AbstractAsyncContextManager[AsyncTransaction]:
        """A transaction with no context: as the login role, no app.user_id (sees nothing)."""
        return self._tx(self._context("none"))

    async def close(self) -> None:
        await self.pool.close()
        if self.read_pool is not None:
            await self.read_pool.close()
        self._opened = False

    async def __aenter__(self) -> AsyncDatabase:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _local_database_url() -> str:
    """The URL of the local cluster (started if needed), via agentapi_db.local.

    Imported here, not at module level: agentapi_db.local builds on the migration
    runner, which most users of this module never need.
    """
    from agentapi_db.cluster import ClusterError
    from agentapi_db.local import ensure_local_database

    try:
        return ensure_local_database()
    except ClusterError as exc:
        raise ConfigurationError(
            "no database URL configured (AGENTAPI_DATABASE_URL or DATABASE_URL) and the "
            f"local database could not be started: {exc}"
        ) from exc


def _resolve(settings: Settings | None) -> Settings:
    resolved = settings if settings is not None else Settings.from_env()
    if resolved.database_url is None:
        from agentapi_db.local import local_context_key

        url = _local_database_url()
        resolved = Settings(
            database_url=url,
            encryption_key=resolved.encryption_key,
            old_encryption_key=resolved.old_encryption_key,
            context_key=resolved.context_key or local_context_key(),
            other_keys=resolved.other_keys,
            key_ids=resolved.key_ids,
        )
    return resolved


def connect(settings: Settings | None = None, **pool_options: Any) -> Database:
    """A :class:`Database` from ``settings`` (default: the environment).

    With no URL configured, starts or reuses the local cluster.
    """
    return Database.from_settings(_resolve(settings), **pool_options)


def connect_async(settings: Settings | None = None, **pool_options: Any) -> AsyncDatabase:
    """An :class:`AsyncDatabase` from ``settings`` (default: the environment)."""
    return AsyncDatabase.from_settings(_resolve(settings), **pool_options)
