"""Deploying without a superuser: what a user of managed PostgreSQL does.

Amazon RDS, Cloud SQL, Azure Flexible Server, Supabase and Neon give the customer a
login with CREATEROLE and CREATEDB, never SUPERUSER, usually not BYPASSRLS, and no
custom C extensions. These tests start a throwaway cluster of their own (with the
binaries of ``$AGENTAPI_PG_BINDIR`` or the machine's, like the suite's server), so
that the deployer, not the bootstrap superuser, creates the contract's roles: on
PostgreSQL 16+ that is what gives it ADMIN on them. They then follow the README's
section "Deploying to managed PostgreSQL" step by step, through the real CLI:
``migrate``, ``login create``, ``verify``, ``org create``, and the library serving
isolated tenants.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from agentapi_db import Database
from agentapi_db.cluster import LocalCluster
from agentapi_db.context import ContextKey
from agentapi_db.errors import PermissionDenied
from tests.cli_fixtures import assert_clean_error, run_cli, traversable_tmp_dir
from tests.pg import SCHEMA_SQL, make_url

DEPLOYER = "rds_admin"
PASSWORD = "managed-deploy-test"
APP = "agentapi_web"
SERVICE = "agentapi_ops"

_CREATE_DEPLOYER = "CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD {}"
_CREATE_DB = "CREATE DATABASE {}"
_ROLE_ATTRS = """
SELECT rolname, rolsuper, rolbypassrls, rolcanlogin, rolcreaterole, rolcreatedb, rolreplication
  FROM pg_roles WHERE rolname LIKE 'agentapi\\_%' ESCAPE '\\' AND NOT rolcanlogin ORDER BY 1
"""
_BYPASSERS = "SELECT rolname FROM pg_roles WHERE (rolsuper OR rolbypassrls) ORDER BY 1"
# Can the login use the group's rights (USAGE), or SET ROLE to it (16+: SET)? The
# ADMIN-only membership that PostgreSQL 16+ gives a role's creator allows neither.
_CAN_ACT = "SELECT pg_has_role(%s, %s, 'USAGE') OR pg_has_role(%s, %s, 'MEMBER') AND %s"
_CAN_ACT_16 = "SELECT pg_has_role(%s, %s, 'USAGE') OR pg_has_role(%s, %s, 'SET')"
_EXTENSIONS = "SELECT extname FROM pg_extension ORDER BY 1"
_LOGIN_ATTRS = "SELECT rolinherit, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s"
_OWNER_OF = "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = %s"
_SET_BYPASSRLS = "ALTER ROLE agentapi_service BYPASSRLS"
_UNSET_BYPASSRLS = "ALTER ROLE agentapi_service NOBYPASSRLS"


@dataclass
class Managed:
    cluster: LocalCluster
    deployer_url: str  # the deployer on database agentapi
    context_key: ContextKey | None = None

    def url(self, login: str, dbname: str = "agentapi", password: str = PASSWORD) -> str:
        return make_url(self.deployer_url, dbname=dbname, user=login, password=password)

    def superuser(self, dbname: str = "agentapi") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.cluster.url(dbname), autocommit=True)


@pytest.fixture(scope="module")
def managed() -> Iterator[Managed]:
    with traversable_tmp_dir("agentapi-managed-") as tmp:
        cluster = LocalCluster(tmp / "cluster", fast=True)
        try:
            cluster.init()
            cluster.start()
            with psycopg.connect(cluster.url(), autocommit=True) as conn:
                deployer = sql.SQL(_CREATE_DEPLOYER).format(
                    sql.Identifier(DEPLOYER), sql.Literal(PASSWORD)
                )
                conn.execute(deployer)
            base = make_url(cluster.url(), user=DEPLOYER, password=PASSWORD)
            # Step 1 of the README: the deployer creates the database, so it owns it.
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(sql.SQL(_CREATE_DB).format(sql.Identifier("agentapi")))
            yield Managed(cluster, make_url(base, dbname="agentapi"))
        finally:
            cluster.destroy()


@pytest.fixture(scope="module")
def deployed(managed: Managed, tmp_path_factory: pytest.TempPathFactory) -> Managed:
    """The README's steps 2-4: migrate, two logins, a context key (verify follows)."""
    migrated = run_cli("migrate", "--database-url", managed.deployer_url)
    assert migrated.code == 0, str(migrated)
    password_file = tmp_path_factory.mktemp("pw") / "password"
    password_file.write_text(PASSWORD + "\n")
    for name, role in ((APP, "app"), (SERVICE, "service")):
        made = run_cli(
            "login", "create", name, "--role", role, "--password-file", str(password_file),
            "--database-url", managed.deployer_url, "--json",
        )  # fmt: skip
        assert made.code == 0, str(made)
        assert json.loads(made.stdout) == {"login": name, "group": f"agentapi_{role}"}
    key_file = tmp_path_factory.mktemp("ctx") / "context.key"
    created = run_cli(
        "context-key", "create", "--output", str(key_file), "--database-url",
        managed.deployer_url,
    )  # fmt: skip
    assert created.code == 0 and created.stdout == "", str(created)
    assert key_file.stat().st_mode & 0o777 == 0o600
    managed.context_key = ContextKey.parse(key_file.read_text())
    return managed


def test_the_deployer_has_no_attribute_beyond_createrole_and_createdb(managed: Managed) -> None:
    with psycopg.connect(managed.deployer_url) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolbypassrls, rolreplication, rolcreaterole, rolcreatedb "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row == (False, False, False, True, True)


def test_migrate_verify_and_rerun(deployed: Managed) -> None:
    verified = run_cli("verify", "--database-url", deployed.deployer_url)
    assert verified.code == 0, str(verified)
    assert "checks passed" in verified.stdout
    again = run_cli("migrate", "--database-url", deployed.deployer_url)
    assert again.code == 0 and "nothing to do" in again.stdout, str(again)


def test_roles_are_plain_and_nothing_bypasses_rls(deployed: Managed) -> None:
    with deployed.superuser() as conn:
        roles = conn.execute(_ROLE_ATTRS).fetchall()
        assert roles == [
            (name, False, False, False, False, False, False)
            for name in ("agentapi_app", "agentapi_owner", "agentapi_service")
        ]
        # Only the bootstrap superuser bypasses RLS; no contract role, no login of ours.
        assert conn.execute(_BYPASSERS).fetchall() == [("postgres",)]
        # No custom C extension: the portable identity helpers serve.
        assert conn.execute(_EXTENSIONS).fetchall() == [("pgcrypto",), ("plpgsql",), ("uuid-ossp",)]
        for login in (APP, SERVICE):
            assert conn.execute(_LOGIN_ATTRS, (login,)).fetchone() == (False, False, False)
        new_rules = conn.info.server_version >= 160000
        member = {
            (login, group): conn.execute(
                _CAN_ACT_16 if new_rules else _CAN_ACT,
                (login, group, login, group) if new_rules else (login, group, login, group, True),
            ).fetchone()
            == (True,)
            for login in (DEPLOYER, APP, SERVICE)
            for group in ("agentapi_app", "agentapi_service", "agentapi_owner")
        }
    # The deployer acts as the owner; each login is a member of its one group only.
    assert member[(DEPLOYER, "agentapi_owner")]
    assert not member[(DEPLOYER, "agentapi_app")]
    assert [g for (login, g), yes in member.items() if login == APP and yes] == ["agentapi_app"]
    assert [g for (login, g), yes in member.items() if login == SERVICE and yes] == [
        "agentapi_service"
    ]


def test_the_service_provisions_and_the_app_serves_isolated_tenants(deployed: Managed) -> None:
    ids: dict[str, str] = {}
    for slug in ("acme", "globex"):
        created = run_cli(
            "org", "create", "--name", slug.title(), "--slug", slug,
            "--admin-email", f"admin@{slug}.test", "--database-url", deployed.url(SERVICE),
            "--json",
        )  # fmt: skip
        assert created.code == 0, str(created)
        ids[slug] = json.loads(created.stdout)["admin"]["id"]
    with Database(
        deployed.url(APP), context_key=deployed.context_key, min_size=1, max_size=1
    ) as app:
        for slug, admin in ids.items():
            with app.as_user(admin) as tx:
                assert [o.slug for o in tx.organizations.list()] == [slug]
                assert {u.email for u in tx.users.list()} == {f"admin@{slug}.test"}
        # No context: the NOINHERIT login has no rights of its own.
        with app.transaction() as tx, pytest.raises(PermissionDenied):
            tx.organizations.list()
    with Database(deployed.url(SERVICE), min_size=1, max_size=1) as svc, svc.as_service() as tx:
        assert {o.slug for o in tx.organizations.list()} >= {"acme", "globex"}


def test_later_migrations_run_as_agentapi_owner(
    deployed: Managed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "database"
    shutil.copytree(SCHEMA_SQL.parent, copy)
    (copy / "migrations").mkdir(exist_ok=True)
    (copy / "migrations" / "0002_probe.sql").write_text(
        "CREATE FUNCTION public.managed_probe() RETURNS integer LANGUAGE sql IMMUTABLE RETURN 1;\n"
    )
    applied = run_cli(
        "migrate", "--database-url", deployed.deployer_url, env={"AGENTAPI_SQL_DIR": str(copy)}
    )
    assert applied.code == 0 and "applied 2 (probe)" in applied.stdout, str(applied)
    with deployed.superuser() as conn:
        assert conn.execute(_OWNER_OF, ("managed_probe",)).fetchone() == ("agentapi_owner",)
        # Undo by hand (a test-only migration), so the module's other tests see version 1.
        conn.execute("DROP FUNCTION public.managed_probe()")
        conn.execute("DELETE FROM agentapi_meta.schema_migrations WHERE version = 2")


def test_a_login_that_does_not_own_the_database_is_refused(deployed: Managed) -> None:
    with deployed.superuser("postgres") as conn:
        conn.execute("CREATE DATABASE not_yours")
    try:
        refused = run_cli("migrate", "--database-url", deployed.url(DEPLOYER, "not_yours"))
        assert_clean_error(refused, 1, "must be applied by the owner of database not_yours")
    finally:
        with deployed.superuser("postgres") as conn:
            conn.execute("DROP DATABASE not_yours")


def test_a_contract_role_with_bypassrls_is_refused_not_trusted(deployed: Managed) -> None:
    base = make_url(deployed.deployer_url, dbname="postgres")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute("CREATE DATABASE second")
    with deployed.superuser("postgres") as conn:
        conn.execute(_SET_BYPASSRLS)
    try:
        refused = run_cli("migrate", "--database-url", deployed.url(DEPLOYER, "second"))
        assert_clean_error(refused, 1, "role agentapi_service exists with BYPASSRLS")
        with psycopg.connect(deployed.url(DEPLOYER, "second")) as conn:
            assert conn.execute("SELECT to_regclass('public.users')").fetchone() == (None,)
        # verify, on the first database, reports it too.
        found = run_cli("verify", "--database-url", deployed.deployer_url)
        assert found.code == 1, str(found)
        assert "role agentapi_service: has BYPASSRLS" in found.stdout, str(found)
    finally:
        with deployed.superuser("postgres") as conn:
            conn.execute(_UNSET_BYPASSRLS)
            conn.execute("DROP DATABASE second WITH (FORCE)")


def test_login_create_refuses_bad_input_and_duplicates(
    deployed: Managed, tmp_path: Path
) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD)
    duplicate = run_cli(
        "login", "create", APP, "--role", "app", "--password-file", str(password_file),
        "--database-url", deployed.deployer_url,
    )  # fmt: skip
    assert_clean_error(duplicate, 1, f"a role named {APP} already exists")
    bad_name = run_cli(
        "login", "create", "Robert'); DROP", "--role", "app", "--password-file",
        str(password_file), "--database-url", deployed.deployer_url,
    )  # fmt: skip
    assert_clean_error(bad_name, 2, "a login name is")
    (tmp_path / "empty").write_text("\n")
    empty = run_cli(
        "login", "create", "nopass", "--role", "service", "--password-file",
        str(tmp_path / "empty"), "--database-url", deployed.deployer_url,
    )  # fmt: skip
    assert_clean_error(empty, 2, "the password is empty")
    with deployed.superuser() as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'nopass'").fetchone() is None
