"""Support code for the library tests (tests/test_lib_*.py; fixtures in lib_fixtures.py).

``api`` is parametrized over the two APIs: ``sync`` gives :class:`Database`
objects; ``async`` gives :class:`AsyncDatabase` objects behind a thin synchronous
facade that runs every awaitable on one event loop. Tests are therefore written
once and type-checked against the sync API; both run against the same real
PostgreSQL database, through the real ``app_login`` / ``service_login`` logins.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from agentapi_db import AsyncDatabase, Database, EncryptionKey
from agentapi_db.db import AsyncTransaction
from agentapi_db.ops._bind import AsyncRepo


class _RepoFacade:
    def __init__(self, repo: AsyncRepo, loop: asyncio.AbstractEventLoop) -> None:
        self._repo = repo
        self._loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._repo, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(method(*args, **kwargs))

        return call


class _TxFacade:
    def __init__(self, tx: AsyncTransaction, loop: asyncio.AbstractEventLoop) -> None:
        self._tx = tx
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._tx, name)
        if isinstance(value, AsyncRepo):
            return _RepoFacade(value, self._loop)
        if inspect.ismethod(value):
            def call(*args: Any, **kwargs: Any) -> Any:
                result = value(*args, **kwargs)
                if inspect.isawaitable(result):
                    return self._loop.run_until_complete(result)
                return result

            return call
        return value


class SyncFacade:
    """Presents an AsyncDatabase with the sync Database's shape (for shared tests)."""

    def __init__(self, adb: AsyncDatabase, loop: asyncio.AbstractEventLoop) -> None:
        self.adb = adb
        self.loop = loop
        self.key = adb.key
        self.old_key = adb.old_key

    @contextmanager
    def _enter(self, cm: AbstractAsyncContextManager[AsyncTransaction]) -> Iterator[_TxFacade]:
        tx = self.loop.run_until_complete(cm.__aenter__())
        try:
            yield _TxFacade(tx, self.loop)
        except BaseException as exc:
            if not self.loop.run_until_complete(cm.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self.loop.run_until_complete(cm.__aexit__(None, None, None))

    def as_user(self, user_id: UUID | str) -> Any:
        return self._enter(self.adb.as_user(user_id))

    def as_service(self) -> Any:
        return self._enter(self.adb.as_service())

    def transaction(self) -> Any:
        return self._enter(self.adb.transaction())

    def close(self) -> None:
        self.loop.run_until_complete(self.adb.close())


@dataclass
class Api:
    """The library as the application (``app``) and as the service (``svc``) uses it."""

    kind: str
    app: Database
    svc: Database
    key: EncryptionKey
    factory: Callable[..., Database]
    """``factory(login, key=..., old_key=...)``: another Database of the same kind."""


@dataclass(frozen=True)
class Tenants:
    """Two organizations: A (admin, two members) and B (admin, one member)."""

    org_a: UUID
    admin_a: UUID
    alice: UUID
    bob: UUID
    org_b: UUID
    admin_b: UUID
    carol: UUID


def provision_tenants(svc: Database) -> Tenants:
    with svc.as_service() as tx:
        org_a, admin_a = tx.organizations.provision(
            name="Org A", slug="org-a", admin_email="admin@a.test"
        )
        alice = tx.users.add("alice@a.test", organization_id=org_a.id)
        bob = tx.users.add("bob@a.test", organization_id=org_a.id)
        org_b, admin_b = tx.organizations.provision(
            name="Org B", slug="org-b", admin_email="admin@b.test"
        )
        carol = tx.users.add("carol@b.test", organization_id=org_b.id)
    return Tenants(org_a.id, admin_a.id, alice.id, bob.id, org_b.id, admin_b.id, carol.id)
