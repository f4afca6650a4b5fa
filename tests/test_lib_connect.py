"""connect() with no database URL falls back to the local cluster, with clear errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentapi_db import Settings, connect
from agentapi_db.errors import ConfigurationError
from tests.lib_support import Api
from tests.pg import SERVICE_LOGIN, TestDatabase


def test_missing_binaries_give_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("AGENTAPI_PG_BINDIR", str(empty_bin))
    monkeypatch.setenv("AGENTAPI_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(ConfigurationError) as info:
        connect(Settings())
    message = str(info.value)
    assert "no database URL configured" in message
    assert "apt-get install" in message


pytest_plugins = ("tests.lib_fixtures",)


def test_pool_replaces_a_connection_killed_while_idle(api: Api, db: TestDatabase) -> None:
    """A backend that dies between transactions (server restart, pg_terminate_backend)
    is replaced by the pool's check; the next call works."""
    svc = api.factory(SERVICE_LOGIN, max_size=1)
    with svc.as_service() as tx:
        org, _admin = tx.organizations.provision(
            name="Idle", slug="idle-kill", admin_email="admin@idle.example"
        )
    with db.connect() as admin:
        admin.autocommit = True
        pids = [row[0] for row in admin.execute(_SERVICE_BACKENDS, (SERVICE_LOGIN,))]
        assert pids, "the pool holds an idle connection"
        for pid in pids:
            admin.execute(_TERMINATE, (pid,))
        for _ in range(200):
            if not admin.execute(_ANY_LEFT, (pids,)).fetchone():
                break
            time.sleep(0.01)
        else:
            pytest.fail("terminated backends did not exit")
    with svc.as_service() as tx:
        again = tx.organizations.get(org.id)
    assert again.slug == "idle-kill"


_SERVICE_BACKENDS = (
    "SELECT pid FROM pg_stat_activity WHERE usename = %s AND datname = current_database()"
)
_TERMINATE = "SELECT pg_terminate_backend(%s)"
_ANY_LEFT = "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)"
