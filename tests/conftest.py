"""Fixtures against a real PostgreSQL server.

* ``pg_server`` (session): ``$AGENTAPI_TEST_DATABASE_URL`` (a superuser URL) if set,
  else a throwaway :class:`~agentapi_db.cluster.LocalCluster` (``fast=True``) in a
  temp dir, destroyed at the end.
* ``template_db`` (session): name of a database built once from
  ``database/schema.sql``; skips (and so fails the run, see below) while that file
  does not exist.
* ``login_roles`` (session): the test logins ``app_login``, ``service_login``,
  ``owner_login`` (members of the matching group role) and ``outsider_login``.
* ``db`` (function) / ``module_db`` (module): a fresh clone of the template.
* ``identity_db`` (module) / ``identity_fn_db`` (function), two params each: a clone
  with the identity helpers in ``cache`` mode (the extension agentapi_identity), then
  in ``portable`` mode.

``AGENTAPI_TEST_DEPLOY=managed`` builds the template as a login with only CREATEROLE
and CREATEDB (``tests.pg.DEPLOYER_LOGIN``) through ``agentapi_db.migrations.migrate``,
which also owns every clone and creates the test logins, in portable mode only: the
access matrix then runs against what a managed-PostgreSQL user deploys.

A skipped test fails the run unless ``AGENTAPI_ALLOW_SKIPS=1``: a skip proves nothing.
Tests marked ``requires_pg_cron``, ``requires_pg_auto_failover`` or ``requires_pgbackrest``
are deselected, not skipped, when the server under test (``agentapi_db.cluster.find_binaries``)
lacks that component, and the summary says why: Debian 12 packages pg_cron and
pg_auto_failover for PostgreSQL 15 only, and its pgBackRest 2.45 supports up to 15.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from agentapi_db.cluster import ClusterError, LocalCluster, PgBinaries, find_binaries
from agentapi_db.migrations import migrate
from tests.pg import (
    DEPLOYER_LOGIN,
    IDENTITY_MODES,
    LOGIN_MEMBERSHIPS,
    MANAGED,
    SCHEMA_SQL,
    PgServer,
    TestDatabase,
    create_database,
    drop_database,
    ensure_deployer,
    ensure_login_roles,
    run_psql_file,
    scratch_database,
    set_identity_mode,
)

TEMPLATE_DB = "agentapi_template"
_DESELECTED = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    url = os.environ.get("AGENTAPI_TEST_DATABASE_URL")
    if url:
        yield PgServer(superuser_url=url)
        return
    tmp = Path(tempfile.mkdtemp(prefix="agentapi-test-pg-"))
    tmp.chmod(0o755)  # when we are root, the postgres OS user must traverse it
    cluster = LocalCluster(tmp / "cluster", fast=True)
    try:
        cluster.init()
        cluster.start()
        yield PgServer(superuser_url=cluster.url(), cluster=cluster)
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    """Name of the template database holding ``database/schema.sql``."""
    if not SCHEMA_SQL.is_file():
        pytest.skip(f"{SCHEMA_SQL} does not exist yet: nothing to build the template from")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    name = f"{TEMPLATE_DB}_{worker}" if worker else TEMPLATE_DB
    drop_database(pg_server, name)
    if MANAGED:
        # The deployer creates (so owns) the database and migrates it, as on
        # managed PostgreSQL: no superuser, no C extension.
        deployer_url = ensure_deployer(pg_server)
        with psycopg.connect(deployer_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        migrate(pg_server.url(name, DEPLOYER_LOGIN))
    else:
        create_database(pg_server, name)
        run_psql_file(pg_server.url(name), SCHEMA_SQL)
    yield name
    drop_database(pg_server, name)


@pytest.fixture(scope="session")
def login_roles(pg_server: PgServer, template_db: str) -> dict[str, str | None]:
    """``{login: group role or None}``; roles are cluster-wide, so made after the schema."""
    ensure_login_roles(pg_server)
    return dict(LOGIN_MEMBERSHIPS)


@pytest.fixture
def db(
    pg_server: PgServer, template_db: str, login_roles: dict[str, str | None]
) -> Iterator[TestDatabase]:
    """A fresh database cloned from the template, dropped after the test."""
    with scratch_database(pg_server, template_db) as database:
        yield database


@pytest.fixture(scope="module")
def module_db(
    pg_server: PgServer, template_db: str, login_roles: dict[str, str | None]
) -> Iterator[TestDatabase]:
    """One cloned database per test module (cases roll back their transaction)."""
    with scratch_database(pg_server, template_db) as database:
        yield database


def _clone_in_mode(
    request: pytest.FixtureRequest, pg_server: PgServer, template_db: str
) -> Iterator[TestDatabase]:
    """A clone of the template with the identity helpers of ``request.param``."""
    with scratch_database(pg_server, template_db) as database:
        set_identity_mode(database, str(request.param))
        yield database


@pytest.fixture(scope="module", params=IDENTITY_MODES)
def identity_db(
    request: pytest.FixtureRequest,
    pg_server: PgServer,
    template_db: str,
    login_roles: dict[str, str | None],
) -> Iterator[TestDatabase]:
    """Like ``module_db``, once with each implementation of the identity helpers."""
    yield from _clone_in_mode(request, pg_server, template_db)


@pytest.fixture(params=IDENTITY_MODES)
def identity_fn_db(
    request: pytest.FixtureRequest,
    pg_server: PgServer,
    template_db: str,
    login_roles: dict[str, str | None],
) -> Iterator[TestDatabase]:
    """Like ``db``, once with each implementation of the identity helpers
    (``request.node.callspec.params["identity_fn_db"]`` names the mode)."""
    yield from _clone_in_mode(request, pg_server, template_db)


# pgBackRest releases and the newest PostgreSQL major each supports (only releases
# checked against their release notes; an unknown release is assumed to support the
# server, so a real failure shows instead of a silent deselection).
_PGBACKREST_MAX_MAJOR = {(2, 45): 15}


def _pgbackrest_missing(binaries: PgBinaries) -> str | None:
    exe = shutil.which("pgbackrest")
    if exe is None:
        return "pgbackrest is not installed (scripts/install-ha.sh)"
    out = subprocess.run([exe, "version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"(\d+)\.(\d+)", out)
    release = (int(match.group(1)), int(match.group(2))) if match else None
    newest = _PGBACKREST_MAX_MAJOR.get(release) if release else None
    if newest is not None and binaries.major > newest:
        return f"{out.strip()} supports PostgreSQL up to {newest}, the server is {binaries.major}"
    return None


def _pg_auto_failover_missing(binaries: PgBinaries) -> str | None:
    autoctl = any(
        (d / "pg_autoctl").is_file() for d in (binaries.bindir, Path("/usr/bin"))
    )  # where agentapi_db.ha.engine looks for it
    extension = binaries.pkglibdir / "pgautofailover.so"
    if autoctl and extension.is_file():
        return None
    return (
        f"pg_auto_failover is not installed for PostgreSQL {binaries.major} "
        f"(pg_autoctl {'found' if autoctl else 'missing'}, no {extension}; "
        "Debian 12 packages it for 15 only)"
    )


def _pg_cron_missing(binaries: PgBinaries) -> str | None:
    if binaries.has_pg_cron():
        return None
    return (
        f"pg_cron is not installed for PostgreSQL {binaries.version} "
        f"(no {binaries.pkglibdir / 'pg_cron.so'}; Debian 12 packages it for 15 only)"
    )


# marker -> why the server under test cannot run such tests (None: it can)
_REQUIREMENTS: dict[str, Callable[[PgBinaries], str | None]] = {
    "requires_pg_cron": _pg_cron_missing,
    "requires_pg_auto_failover": _pg_auto_failover_missing,
    "requires_pgbackrest": _pgbackrest_missing,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect tests whose marked component is missing for the server under test.

    Deselected, never skipped, and the summary says which and why: the same tests run
    in scripts/test.sh's PostgreSQL 15 run, where Debian packages these components.
    """
    try:
        binaries = find_binaries()
    except ClusterError:
        return  # the cluster fixtures fail the tests with the real error
    notes: list[str] = []
    for marker, missing in _REQUIREMENTS.items():
        marked = [item for item in items if item.get_closest_marker(marker)]
        if not marked:
            continue
        reason = missing(binaries)
        if reason is None:
            continue
        config.hook.pytest_deselected(items=marked)
        items[:] = [item for item in items if item.get_closest_marker(marker) is None]
        notes.append(f"{len(marked)} test(s) marked {marker}: {reason}")
    if notes:
        config.stash[_DESELECTED] = notes


def _skips_fail_the_run() -> bool:
    return os.environ.get("AGENTAPI_ALLOW_SKIPS") != "1"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when anything was skipped, unless AGENTAPI_ALLOW_SKIPS=1."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not _skips_fail_the_run():
        return
    if reporter.stats.get("skipped") and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    for note in config.stash.get(_DESELECTED, []):
        terminalreporter.section("deselected", sep="=", yellow=True)
        terminalreporter.write_line(f"deselected {note}")
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped and _skips_fail_the_run():
        terminalreporter.section("skips fail the run", sep="=", red=True, bold=True)
        terminalreporter.write_line(
            f"{len(skipped)} test(s) skipped; a skip is not a pass. "
            "Set AGENTAPI_ALLOW_SKIPS=1 to allow skips."
        )
