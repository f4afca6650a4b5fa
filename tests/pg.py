"""Helpers for tests against a real PostgreSQL server (no mocks).

The fixtures in ``conftest.py`` build on these. Typical use::

    def test_member_reads_own_org(db: TestDatabase) -> None:
        with db.connect(APP_LOGIN) as conn, acting(conn, "agentapi_app", alice_id):
            rows = conn.execute("SELECT id FROM organizations").fetchall()

Every case runs in one transaction that :func:`acting` rolls back, with the role and
``app.user_id`` set transaction-locally (the Basejump style).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from agentapi_db.cluster import ClusterError, LocalCluster, find_binaries

# The contract's names, re-exported for the test modules.
from agentapi_db.contract import APP_ROLE as APP_ROLE
from agentapi_db.contract import OWNER_ROLE as OWNER_ROLE
from agentapi_db.contract import SERVICE_ROLE as SERVICE_ROLE
from agentapi_db.contract import TABLES as TABLES

Conn = psycopg.Connection[TupleRow]

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_SQL = REPO_ROOT / "database" / "schema.sql"

SUPERUSER = "postgres"
"""Pass to :meth:`TestDatabase.connect` / ``url`` for the server's superuser."""

# Login roles created by the test suite, one per group role, plus one with no membership.
APP_LOGIN = "app_login"
SERVICE_LOGIN = "service_login"
OWNER_LOGIN = "owner_login"
OUTSIDER_LOGIN = "outsider_login"

NOINHERIT_SERVICE_LOGIN = "service_noinherit_login"
"""A NOINHERIT member of agentapi_service: its rights need SET ROLE."""

LOGIN_MEMBERSHIPS: dict[str, str | None] = {
    APP_LOGIN: APP_ROLE,
    SERVICE_LOGIN: SERVICE_ROLE,
    OWNER_LOGIN: OWNER_ROLE,
    OUTSIDER_LOGIN: None,
    NOINHERIT_SERVICE_LOGIN: SERVICE_ROLE,
}
NOINHERIT_LOGINS = frozenset({NOINHERIT_SERVICE_LOGIN})

DEPLOYER_LOGIN = "deployer_login"
"""A login with only LOGIN, CREATEROLE and CREATEDB: what managed PostgreSQL gives."""

DEPLOY_MODES = ("superuser", "managed")
DEPLOY_MODE = os.environ.get("AGENTAPI_TEST_DEPLOY", "superuser")
"""``superuser``: the template is built by the server's superuser (psql -f schema.sql).
``managed``: by :data:`DEPLOYER_LOGIN`, which owns the databases and creates the test
logins, with the portable identity helpers only (no C extension): what a user of
managed PostgreSQL gets. Set with ``AGENTAPI_TEST_DEPLOY``."""
if DEPLOY_MODE not in DEPLOY_MODES:
    raise RuntimeError(f"AGENTAPI_TEST_DEPLOY must be one of {DEPLOY_MODES}, not {DEPLOY_MODE!r}")
MANAGED = DEPLOY_MODE == "managed"
GROUP_ROLES = (OWNER_ROLE, APP_ROLE, SERVICE_ROLE)

LOGIN_PASSWORD = os.environ.get("AGENTAPI_TEST_LOGIN_PASSWORD", "agentapi-test-login")
"""Password of the test logins (a private test cluster uses trust auth anyway)."""



def make_url(
    base: str, *, dbname: str | None = None, user: str | None = None, password: str | None = None
) -> str:
    """A ``postgresql://`` URL: ``base`` (URL or key/value conninfo) with some parts replaced."""
    params = {k: str(v) for k, v in conninfo_to_dict(base).items() if v is not None}
    if dbname is not None:
        params["dbname"] = dbname
    if user is not None:
        params["user"] = user
        params.pop("password", None)
    if password is not None:
        params["password"] = password
    auth = ""
    if "user" in params:
        auth = quote(params.pop("user"), safe="")
        if "password" in params:
            auth += ":" + quote(params.pop("password"), safe="")
        auth += "@"
    host = quote(params.pop("host", ""), safe="")
    port = params.pop("port", None)
    netloc = auth + host + (f":{port}" if port else "")
    path = "/" + quote(params.pop("dbname", ""), safe="")
    query = ("?" + urlencode(params)) if params else ""
    return f"postgresql://{netloc}{path}{query}"


def psql_path() -> str:
    """The ``psql`` of the server's bin directory, else the one on PATH."""
    try:
        return str(find_binaries().tool("psql"))
    except ClusterError:
        found = shutil.which("psql")
        if found is None:
            raise
        return found


def run_psql_file(url: str, path: Path) -> None:
    """Apply an SQL file as ``psql -v ON_ERROR_STOP=1 -q -f``; raise with psql's output on error."""
    argv = [
        psql_path(),
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-d",
        url,
        "-f",
        str(path),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(
            f"psql -f {path} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )


@dataclass
class PgServer:
    """A PostgreSQL server the tests may create databases and roles on."""

    superuser_url: str
    cluster: LocalCluster | None = None

    def url(self, dbname: str, login: str = SUPERUSER) -> str:
        if login == SUPERUSER:
            return make_url(self.superuser_url, dbname=dbname)
        return make_url(self.superuser_url, dbname=dbname, user=login, password=LOGIN_PASSWORD)

    def admin_connect(self) -> Conn:
        """Autocommit superuser connection to the maintenance database (for CREATE DATABASE...)."""
        return psycopg.connect(self.superuser_url, autocommit=True)


@dataclass
class TestDatabase:
    """A scratch database cloned from the schema template."""

    __test__ = False  # not a pytest test class

    server: PgServer
    name: str
    _connections: list[Conn] = field(default_factory=list)

    @property
    def superuser_url(self) -> str:
        return self.server.url(self.name)

    def url(self, login: str = SUPERUSER) -> str:
        """Connection URL for ``login`` (``SUPERUSER`` or one of the ``*_LOGIN`` names)."""
        return self.server.url(self.name, login)

    def connect(self, login: str = SUPERUSER) -> Conn:
        """A new connection (autocommit off) as ``login``; closed at fixture teardown."""
        conn = psycopg.connect(self.url(login), autocommit=False)
        self._connections.append(conn)
        return conn

    def close_all(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections.clear()


def unique_name(prefix: str) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return (
        f"{prefix}_{worker}_{secrets.token_hex(5)}"
        if worker
        else f"{prefix}_{secrets.token_hex(5)}"
    )


def ensure_deployer(server: PgServer) -> str:
    """Create :data:`DEPLOYER_LOGIN` (LOGIN CREATEROLE CREATEDB, nothing else); its URL."""
    with server.admin_connect() as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DEPLOYER_LOGIN,)).fetchone():
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(DEPLOYER_LOGIN), sql.Literal(LOGIN_PASSWORD)
                )
            )
        else:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD {}").format(
                    sql.Identifier(DEPLOYER_LOGIN), sql.Literal(LOGIN_PASSWORD)
                )
            )
    return server.url("postgres", DEPLOYER_LOGIN)


def create_database(server: PgServer, name: str, template: str | None = None) -> None:
    """Create ``name`` (a clone of ``template``); owned by the deployer in managed mode."""
    owner = sql.SQL(" OWNER {}").format(sql.Identifier(DEPLOYER_LOGIN)) if MANAGED else sql.SQL("")
    with server.admin_connect() as conn:
        if template is None:
            conn.execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), owner))
        else:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
                    sql.Identifier(name), sql.Identifier(template), owner
                )
            )
            # Database-level privileges are not copied from a template; schema.sql
            # revokes TEMPORARY from PUBLIC on the database it is applied to.
            conn.execute(
                sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
            )


def drop_database(server: PgServer, name: str) -> None:
    with server.admin_connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def scratch_database(server: PgServer, template: str) -> Iterator[TestDatabase]:
    """A database cloned from ``template``, dropped (WITH (FORCE)) on exit."""
    db = TestDatabase(server=server, name=unique_name("agentapi_test"))
    create_database(server, db.name, template)
    try:
        yield db
    finally:
        db.close_all()
        drop_database(server, db.name)


def _login_admin_connect(server: PgServer) -> Conn:
    """Who creates the test logins: the deployer in managed mode, else the superuser."""
    if MANAGED:
        return psycopg.connect(ensure_deployer(server), autocommit=True)
    return server.admin_connect()


def ensure_login_roles(server: PgServer) -> None:
    """Create or refresh the test logins (idempotent). Needs the schema's group roles.

    Attributes are given when a login is created and never re-asserted with ALTER
    ROLE (a non-superuser may not name SUPERUSER or BYPASSRLS there); in managed
    mode the deployer, not the superuser, creates them and grants the groups."""
    with _login_admin_connect(server) as conn:
        existing = {
            str(row[0])
            for row in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                (list(LOGIN_MEMBERSHIPS) + list(GROUP_ROLES),),
            )
        }
        missing_groups = [g for g in GROUP_ROLES if g not in existing]
        if missing_groups:
            raise RuntimeError(f"schema.sql did not create the roles {missing_groups}")
        for login, group in LOGIN_MEMBERSHIPS.items():
            stmt = (
                sql.SQL("ALTER ROLE {} LOGIN {} PASSWORD {}")
                if login in existing
                else sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS {} PASSWORD {}")
            )
            inherit = sql.SQL("NOINHERIT" if login in NOINHERIT_LOGINS else "INHERIT")
            conn.execute(
                stmt.format(sql.Identifier(login), inherit, sql.Literal(LOGIN_PASSWORD))
            )
            for other in GROUP_ROLES:
                if other == group:
                    conn.execute(
                        sql.SQL("GRANT {} TO {}").format(
                            sql.Identifier(other), sql.Identifier(login)
                        )
                    )
                else:
                    conn.execute(
                        sql.SQL("REVOKE {} FROM {}").format(
                            sql.Identifier(other), sql.Identifier(login)
                        )
                    )


@contextmanager
def acting(conn: Conn, role: str | None, user_id: str | None = None) -> Iterator[Conn]:
    """Act as ``role`` with ``app.user_id = user_id`` inside the current transaction.

    ``SET LOCAL ROLE role`` (skipped when ``role`` is None) and, if ``user_id`` is
    not None, ``set_config('app.user_id', user_id, true)``; ``user_id`` is passed
    as given, so ``''`` or ``'not-a-uuid'`` can be tested. The transaction is
    rolled back on exit, whatever happened inside.
    """
    if conn.autocommit:
        raise ValueError("acting() needs a connection with autocommit off")
    try:
        if role is not None:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        if user_id is not None:
            conn.execute("SELECT set_config('app.user_id', %s, true)", (user_id,))
        yield conn
    finally:
        conn.rollback()


# The two implementations of the identity helpers (database/schema.sql section 5):
# "cache" (the extension agentapi_identity; the template database has it) and
# "portable" (SECURITY DEFINER lookups on every call).
IDENTITY_MODES: tuple[str, ...] = ("portable",) if MANAGED else ("cache", "portable")


def set_identity_mode(db: TestDatabase, mode: str) -> None:
    """Install the ``mode`` helpers in ``db`` (as agentapi_owner) and commit."""
    if mode not in IDENTITY_MODES:
        raise ValueError(f"unknown identity mode {mode!r}")
    with db.connect(SUPERUSER) as conn:
        conn.execute("SET LOCAL ROLE agentapi_owner")
        row = conn.execute(
            "SELECT agentapi_auth.use_identity_cache(%s)", (mode == "cache",)
        ).fetchone()
        conn.commit()
    if row is None or row[0] is not (mode == "cache"):
        raise RuntimeError(f"use_identity_cache did not switch to {mode}")
