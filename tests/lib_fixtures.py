"""Fixtures of the library tests; use with ``pytest_plugins = ("tests.lib_fixtures",)``.

``api`` is parametrized over the sync and the async API (see tests/lib_support.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast

import pytest

from agentapi_db import AsyncDatabase, Database, EncryptionKey
from tests.lib_support import Api, SyncFacade, Tenants, provision_tenants
from tests.pg import APP_LOGIN, SERVICE_LOGIN, TestDatabase


@pytest.fixture
def lib_key() -> EncryptionKey:
    return EncryptionKey.generate()


@pytest.fixture(params=["sync", "async"])
def api(
    request: pytest.FixtureRequest, db: TestDatabase, lib_key: EncryptionKey
) -> Iterator[Api]:
    kind = str(request.param)
    opened: list[Any] = []
    loop = asyncio.new_event_loop() if kind == "async" else None

    def factory(
        login: str, *, key: EncryptionKey | None = lib_key, old_key: EncryptionKey | None = None,
        max_size: int = 2,
    ) -> Database:
        url = db.url(login)
        made: Any
        if loop is None:
            made = Database(url, key=key, old_key=old_key, min_size=1, max_size=max_size)
        else:
            adb = AsyncDatabase(url, key=key, old_key=old_key, min_size=1, max_size=max_size)
            made = SyncFacade(adb, loop)
        opened.append(made)
        return cast(Database, made)

    try:
        yield Api(kind, factory(APP_LOGIN), factory(SERVICE_LOGIN), lib_key, factory)
    finally:
        for made in reversed(opened):
            made.close()
        if loop is not None:
            loop.close()


@pytest.fixture
def tenants(api: Api) -> Tenants:
    return provision_tenants(api.svc)
