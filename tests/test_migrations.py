"""The migration runner against real PostgreSQL: same catalog as psql, lock, checksums."""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from agentapi_db.migrations import (
    LOCK_KEY,
    Migration,
    MigrationError,
    available_migrations,
    migrate,
)
from tests.cli_fixtures import empty_database
from tests.pg import (
    APP_LOGIN,
    OWNER_LOGIN,
    SCHEMA_SQL,
    PgServer,
    TestDatabase,
)

# ---------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------

# Everything a schema is made of, in the database's own schemas (not pg_catalog,
# information_schema, pg_toast or the migration bookkeeping schema), as sorted text.
_CATALOG_SNAPSHOT = r"""
WITH ours AS (
    SELECT oid, nspname FROM pg_catalog.pg_namespace
     WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'agentapi_meta')
       AND nspname NOT LIKE 'pg\_toast%' AND nspname NOT LIKE 'pg\_temp%'
)
SELECT 'schema', pg_catalog.concat_ws(' | ', n.nspname, pg_catalog.pg_get_userbyid(ns.nspowner),
                                      ns.nspacl::text,
                                      pg_catalog.obj_description(ns.oid, 'pg_namespace'))
  FROM ours AS n JOIN pg_catalog.pg_namespace AS ns ON ns.oid = n.oid
UNION ALL
SELECT 'relation', pg_catalog.concat_ws(' | ', n.nspname, c.relname, c.relkind,
                   pg_catalog.pg_get_userbyid(c.relowner), c.relacl::text, c.reloptions::text,
                   c.relrowsecurity, c.relforcerowsecurity, c.relispartition,
                   pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                   pg_catalog.obj_description(c.oid, 'pg_class'))
  FROM pg_catalog.pg_class AS c JOIN ours AS n ON n.oid = c.relnamespace
UNION ALL
SELECT 'column', pg_catalog.concat_ws(' | ', n.nspname, c.relname, a.attnum, a.attname,
                 pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
                 a.attgenerated, pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attacl::text,
                 pg_catalog.col_description(c.oid, a.attnum))
  FROM pg_catalog.pg_attribute AS a
  JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
  JOIN ours AS n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', pg_catalog.concat_ws(' | ', n.nspname, con.conrelid::regclass::text,
                     con.contypid::regtype::text, con.conname, con.contype,
                     pg_catalog.pg_get_constraintdef(con.oid))
  FROM pg_catalog.pg_constraint AS con JOIN ours AS n ON n.oid = con.connamespace
UNION ALL
SELECT 'index', pg_catalog.pg_get_indexdef(i.indexrelid)
  FROM pg_catalog.pg_index AS i
  JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
  JOIN ours AS n ON n.oid = c.relnamespace
UNION ALL
SELECT 'policy', pg_catalog.concat_ws(' | ', schemaname, tablename, policyname, permissive,
                 roles::text, cmd, qual, with_check)
  FROM pg_catalog.pg_policies
 WHERE schemaname IN (SELECT nspname FROM ours)
UNION ALL
SELECT 'function', pg_catalog.concat_ws(' | ', pg_catalog.pg_get_userbyid(p.proowner),
                   p.proacl::text, pg_catalog.pg_get_functiondef(p.oid),
                   pg_catalog.obj_description(p.oid, 'pg_proc'))
  FROM pg_catalog.pg_proc AS p JOIN ours AS n ON n.oid = p.pronamespace
 WHERE p.prokind IN ('f', 'p', 'w')
UNION ALL
SELECT 'aggregate', pg_catalog.concat_ws(' | ', n.nspname, p.proname, p.proacl::text)
  FROM pg_catalog.pg_proc AS p JOIN ours AS n ON n.oid = p.pronamespace
 WHERE p.prokind = 'a'
UNION ALL
SELECT 'trigger', pg_catalog.concat_ws(' | ', pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled)
  FROM pg_catalog.pg_trigger AS t
  JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
  JOIN ours AS n ON n.oid = c.relnamespace
 WHERE NOT t.tgisinternal
UNION ALL
SELECT 'type', pg_catalog.concat_ws(' | ', n.nspname, t.typname, t.typtype,
               pg_catalog.pg_get_userbyid(t.typowner), t.typacl::text,
               (SELECT pg_catalog.string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                  FROM pg_catalog.pg_enum AS e WHERE e.enumtypid = t.oid))
  FROM pg_catalog.pg_type AS t JOIN ours AS n ON n.oid = t.typnamespace
UNION ALL
SELECT 'extension', pg_catalog.concat_ws(' | ', e.extname, n.nspname, e.extversion)
  FROM pg_catalog.pg_extension AS e JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
UNION ALL
SELECT 'default_acl', pg_catalog.concat_ws(' | ', pg_catalog.pg_get_userbyid(d.defaclrole),
                      d.defaclnamespace, d.defaclobjtype, d.defaclacl::text)
  FROM pg_catalog.pg_default_acl AS d
UNION ALL
SELECT 'database_acl', pg_catalog.concat_ws(' | ', d.datacl::text)
  FROM pg_catalog.pg_database AS d WHERE d.datname = current_database()
ORDER BY 1, 2
"""

_HISTORY = "SELECT version, name, checksum FROM agentapi_meta.schema_migrations ORDER BY version"
_OWNER_OF = (
    "SELECT pg_catalog.pg_get_userbyid(relowner) FROM pg_catalog.pg_class WHERE oid = %s::regclass"
)
_PUBLIC_ACL_ON_META = (
    "SELECT count(*) FROM pg_catalog.pg_namespace AS n, pg_catalog.aclexplode(n.nspacl) AS a "
    "WHERE n.nspname = 'agentapi_meta' AND a.grantee = 0"
)
_META_TABLE_POSTURE = (
    "SELECT pg_catalog.pg_get_userbyid(relowner), relrowsecurity, relforcerowsecurity, "
    "relacl::text FROM pg_catalog.pg_class WHERE oid = 'agentapi_meta.schema_migrations'::regclass"
)
_LOCK_HOLDERS = (
    "SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' "
    "AND ((classid::bigint << 32) | objid::bigint) = %s"
)
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
_UNLOCK = "SELECT pg_advisory_unlock(%s)"
_TABLE_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"

# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture
def empty_db(pg_server: PgServer, login_roles: dict[str, str | None]) -> Iterator[str]:
    """Name of a new, empty database (not cloned from the schema template)."""
    with empty_database(pg_server, "agentapi_mig") as name:
        yield name


@pytest.fixture
def sql_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of database/ that the runner reads (via AGENTAPI_SQL_DIR)."""
    target = tmp_path / "database"
    shutil.copytree(SCHEMA_SQL.parent, target)
    monkeypatch.setenv("AGENTAPI_SQL_DIR", str(target))
    return target


def snapshot(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [(str(k), str(v)) for k, v in conn.execute(_CATALOG_SNAPSHOT.encode()).fetchall()]


def history(url: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(url) as conn:
        return [(int(v), str(n), str(c)) for v, n, c in conn.execute(_HISTORY).fetchall()]


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_migrating_gives_the_same_catalog_as_psql(
    pg_server: PgServer, template_db: str, empty_db: str
) -> None:
    url = pg_server.url(empty_db)
    applied = migrate(url)
    assert [m.version for m in applied] == [1]

    migrated = snapshot(url)
    reference = snapshot(pg_server.url(template_db))  # built with psql -f schema.sql
    assert len(reference) > 300, "the snapshot query sees too little to prove anything"
    kinds = {kind for kind, _ in reference}
    assert {"relation", "column", "constraint", "index", "policy", "function", "trigger"} <= kinds
    only_migrated = sorted(set(migrated) - set(reference))
    only_psql = sorted(set(reference) - set(migrated))
    assert only_migrated == [] and only_psql == []
    assert migrated == reference

    digest = hashlib.sha256(SCHEMA_SQL.read_bytes()).hexdigest()
    assert history(url) == [(1, "schema", digest)]


def test_history_table_is_private_and_owned_by_the_owner(
    pg_server: PgServer, empty_db: str
) -> None:
    url = pg_server.url(empty_db)
    migrate(url)
    with psycopg.connect(url) as conn:
        assert conn.execute(_PUBLIC_ACL_ON_META).fetchone() == (0,)
        owner, rls, forced, acl = conn.execute(_META_TABLE_POSTURE).fetchone() or (None,) * 4
    assert (owner, rls, forced) == ("agentapi_owner", True, True)
    entries = [] if acl is None else str(acl).strip("{}").split(",")
    assert not [e for e in entries if e.startswith("=")], f"PUBLIC has rights: {acl}"
    assert not [e for e in entries if not e.startswith("agentapi_owner=")], acl


def test_second_run_is_a_no_op(pg_server: PgServer, empty_db: str) -> None:
    url = pg_server.url(empty_db)
    assert [m.version for m in migrate(url)] == [1]
    before = history(url)
    messages: list[str] = []
    assert migrate(url, on_event=messages.append) == []
    assert history(url) == before
    assert any("up to date" in m for m in messages)


def test_concurrent_migrators_apply_once(pg_server: PgServer, empty_db: str) -> None:
    url = pg_server.url(empty_db)
    barrier = threading.Barrier(2)
    results: list[list[Migration]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        try:
            done = migrate(url)
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(done)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 1]
    assert [v for v, _, _ in history(url)] == [1]


def test_a_held_lock_makes_the_migrator_wait(pg_server: PgServer, empty_db: str) -> None:
    url = pg_server.url(empty_db)
    messages: list[str] = []
    with psycopg.connect(url, autocommit=True) as holder:
        assert holder.execute(_TRY_LOCK, (LOCK_KEY,)).fetchone() == (True,)
        thread = threading.Thread(target=lambda: migrate(url, on_event=messages.append))
        thread.start()
        thread.join(timeout=2)
        assert thread.is_alive(), "the migrator did not wait for the advisory lock"
        with psycopg.connect(url) as probe:
            assert probe.execute(_TABLE_EXISTS, ("public.organizations",)).fetchone() == (False,)
        holder.execute(_UNLOCK, (LOCK_KEY,))
        thread.join(timeout=120)
    assert not thread.is_alive()
    assert any("waiting" in m for m in messages)
    assert [v for v, _, _ in history(url)] == [1]
    with psycopg.connect(url) as conn:
        assert conn.execute(_LOCK_HOLDERS, (LOCK_KEY,)).fetchone() == (0,)


def test_an_edited_migration_is_refused(pg_server: PgServer, empty_db: str, sql_copy: Path) -> None:
    url = pg_server.url(empty_db)
    migrate(url)
    schema = sql_copy / "schema.sql"
    schema.write_text(schema.read_text() + "\n-- edited after it was applied\n")
    with pytest.raises(MigrationError, match=r"migration 1 \(schema\) was changed"):
        migrate(url)
    assert len(history(url)) == 1


def test_later_migrations_run_as_owner_and_fail_atomically(
    pg_server: PgServer, empty_db: str, sql_copy: Path
) -> None:
    url = pg_server.url(empty_db)
    migrate(url)
    folder = sql_copy / "migrations"
    folder.mkdir(exist_ok=True)
    (folder / "0002_add_widgets.sql").write_text(
        "CREATE TABLE public.widgets (id uuid PRIMARY KEY);\n"
        "COMMENT ON TABLE public.widgets IS 'test';\n"
    )
    applied = migrate(url)
    assert [(m.version, m.name) for m in applied] == [(2, "add_widgets")]
    with psycopg.connect(url) as conn:
        assert conn.execute(_OWNER_OF, ("public.widgets",)).fetchone() == ("agentapi_owner",)

    (folder / "0003_broken.sql").write_text(
        "CREATE TABLE public.gadgets (id uuid PRIMARY KEY);\nSELECT 1/0;\n"
    )
    with pytest.raises(MigrationError, match=r"migration 3 \(broken\) failed and was rolled back"):
        migrate(url)
    with psycopg.connect(url) as conn:
        assert conn.execute(_TABLE_EXISTS, ("public.gadgets",)).fetchone() == (False,)
    assert [v for v, _, _ in history(url)] == [1, 2]


def test_unknown_database_version_is_refused(
    pg_server: PgServer, empty_db: str, sql_copy: Path
) -> None:
    url = pg_server.url(empty_db)
    folder = sql_copy / "migrations"
    folder.mkdir(exist_ok=True)
    (folder / "0002_noop.sql").write_text("SELECT 1;\n")
    migrate(url)
    (folder / "0002_noop.sql").unlink()
    with pytest.raises(MigrationError, match="does not know; upgrade agentapi-db"):
        migrate(url)


def test_psql_meta_commands_other_than_on_error_stop_are_refused(sql_copy: Path) -> None:
    folder = sql_copy / "migrations"
    folder.mkdir(exist_ok=True)
    (folder / "0002_meta.sql").write_text("\\i other.sql\n")
    migration = available_migrations()[-1]
    with pytest.raises(MigrationError, match="meta-command not supported"):
        migration.sql_text()
    assert "\\set ON_ERROR_STOP" not in available_migrations()[0].sql_text()


def test_badly_named_migration_file_is_refused(sql_copy: Path) -> None:
    folder = sql_copy / "migrations"
    folder.mkdir(exist_ok=True)
    (folder / "2_oops.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match="NNNN_lower_snake_name"):
        available_migrations()


def test_version_one_needs_the_database_owner_or_a_superuser(
    pg_server: PgServer, empty_db: str
) -> None:
    with pytest.raises(MigrationError, match="must be applied by the owner of database"):
        migrate(pg_server.url(empty_db, OWNER_LOGIN))
    with psycopg.connect(pg_server.url(empty_db)) as conn:
        assert conn.execute(_TABLE_EXISTS, ("public.organizations",)).fetchone() == (False,)


def test_a_psql_built_database_is_adopted_only_with_baseline(db: TestDatabase) -> None:
    url = db.superuser_url
    with pytest.raises(MigrationError, match="--baseline"):
        migrate(url)
    messages: list[str] = []
    assert migrate(url, baseline=True, on_event=messages.append) == []
    digest = hashlib.sha256(SCHEMA_SQL.read_bytes()).hexdigest()
    assert history(url) == [(1, "schema", digest)]
    assert any("baseline" in m for m in messages)
    assert migrate(url) == []


# --- issue 14: a migration lock the application cannot take -------------------------

_APP_TABLE_LOCK = (
    "LOCK TABLE agentapi_meta.schema_migrations IN SHARE UPDATE EXCLUSIVE MODE"
)
_SET_APP = "SET LOCAL ROLE agentapi_app"
_HOLD_TABLE_LOCK = "LOCK TABLE agentapi_meta.schema_migrations IN SHARE UPDATE EXCLUSIVE MODE"


def _add_migration(sql_copy: Path, version: int, table: str) -> None:
    folder = sql_copy / "migrations"
    folder.mkdir(exist_ok=True)
    (folder / f"{version:04d}_add_{table}.sql").write_text(
        f"CREATE TABLE public.{table} (id uuid PRIMARY KEY);\n"
        f"COMMENT ON TABLE public.{table} IS 'test';\n"
    )


def test_the_application_holding_the_old_advisory_lock_does_not_block_migrate(
    pg_server: PgServer, empty_db: str, sql_copy: Path
) -> None:
    url = pg_server.url(empty_db)
    migrate(url)
    _add_migration(sql_copy, 2, "widgets")
    done: list[list[Migration]] = []
    with psycopg.connect(pg_server.url(empty_db, APP_LOGIN)) as app:
        app.execute(_SET_APP)
        assert app.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone() == (True,)
        thread = threading.Thread(target=lambda: done.append(migrate(url)))
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the application's advisory lock stalled the migrator"
        app.execute(_UNLOCK, (LOCK_KEY,))
    assert [[m.version for m in r] for r in done] == [[2]]


def test_the_application_cannot_take_the_migration_lock(
    pg_server: PgServer, empty_db: str
) -> None:
    url = pg_server.url(empty_db)
    migrate(url)
    with psycopg.connect(pg_server.url(empty_db, APP_LOGIN)) as app:
        app.execute(_SET_APP)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(_APP_TABLE_LOCK)


def test_a_held_table_lock_makes_the_migrator_wait(
    pg_server: PgServer, empty_db: str, sql_copy: Path
) -> None:
    url = pg_server.url(empty_db)
    migrate(url)
    _add_migration(sql_copy, 2, "widgets")
    messages: list[str] = []
    with psycopg.connect(url) as holder:
        holder.execute(_HOLD_TABLE_LOCK)
        thread = threading.Thread(target=lambda: migrate(url, on_event=messages.append))
        thread.start()
        thread.join(timeout=2)
        assert thread.is_alive(), "the migrator did not wait for the migration lock"
        with psycopg.connect(url) as probe:
            assert probe.execute(_TABLE_EXISTS, ("public.widgets",)).fetchone() == (False,)
        holder.rollback()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert any("waiting" in m for m in messages)
    assert [v for v, _, _ in history(url)] == [1, 2]


def test_concurrent_migrators_of_a_migrated_database_apply_once(
    pg_server: PgServer, empty_db: str, sql_copy: Path
) -> None:
    url = pg_server.url(empty_db)
    migrate(url)
    _add_migration(sql_copy, 2, "widgets")
    _add_migration(sql_copy, 3, "gadgets")
    barrier = threading.Barrier(2)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append([m.version for m in migrate(url)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(results) == [[], [2, 3]]
    assert [v for v, _, _ in history(url)] == [1, 2, 3]
