"""No key and no plaintext token ever reaches PostgreSQL: proven on a server that logs
everything.

A throwaway cluster of its own runs with ``log_statement = all``,
``log_min_duration_statement = 0``, ``log_min_error_statement = error``, parameters
logged at any length (also on error), and ``auto_explain`` preloaded with
``log_analyze``, ``log_verbose`` and ``log_nested_statements`` at 0 ms. Every library
path that touches a secret runs against it (store, read, update, a failing write,
MCP env values (store, read, update, keep, a failing write, and the migration of a
plaintext value from before by rotate-key), OAuth tokens, refresh claim / store /
failure, master-key rotation and its verification, one organization's data-key
rotation, crypto-shredding);
then the server log is searched for every key and every token, as plain text, hex
and base64. The log must also show that the statements, their parameters and
their plans were logged, so the search cannot pass vacuously.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from agentapi_db import Database, opsdb
from agentapi_db.cluster import LocalCluster
from agentapi_db.crypto.ring import KeyRing
from agentapi_db.datakeys import delete_organization, rotate_org_data_key
from agentapi_db.errors import AgentApiDbError
from agentapi_db.keys import EncryptionKey
from agentapi_db.refresh import claim_expiring, record_failure, store_refreshed
from agentapi_db.rotation import rotate_keys, verify_rotation
from agentapi_db.verify_secrets import check_secret_logging
from tests.lib_support import provision_tenants
from tests.pg import (
    APP_LOGIN,
    SCHEMA_SQL,
    SERVICE_LOGIN,
    SUPERUSER,
    PgServer,
    create_database,
    ensure_login_roles,
    run_psql_file,
)

LOG_EVERYTHING = {
    "log_statement": "'all'",
    "log_min_duration_statement": "0",
    "log_min_error_statement": "'error'",
    "log_parameter_max_length": "-1",
    "log_parameter_max_length_on_error": "-1",
    "log_error_verbosity": "'verbose'",
    "shared_preload_libraries": "'auto_explain,pg_stat_statements'",
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_verbose": "on",
    "auto_explain.log_nested_statements": "on",
    "auto_explain.log_parameter_max_length": "-1",
}


@pytest.fixture(scope="module")
def logging_server() -> Iterator[tuple[LocalCluster, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="agentapi-logtest-"))
    tmp.chmod(0o755)
    settings = dict(LOG_EVERYTHING)
    cluster = LocalCluster(tmp / "cluster", fast=True, settings={})
    try:
        cluster.init()
        major = cluster.binaries.major
        if major < 16:  # auto_explain.log_parameter_max_length is new in 16
            settings.pop("auto_explain.log_parameter_max_length")
        cluster.settings = settings
        cluster.start()
        server = PgServer(superuser_url=cluster.url(), cluster=cluster)
        create_database(server, "logtest")
        run_psql_file(server.url("logtest"), SCHEMA_SQL)
        with psycopg.connect(server.url("logtest"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        ensure_login_roles(server)
        yield cluster, "logtest"
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def _forms(secret: str) -> list[str]:
    raw = secret.encode()
    b64 = base64.b64encode(raw).decode()
    return [secret, raw.hex(), b64, b64.rstrip("="), base64.urlsafe_b64encode(raw).decode()]


def _key_forms(key: EncryptionKey) -> list[str]:
    raw = key.raw_bytes()
    b64 = base64.b64encode(raw).decode()
    return [key.reveal(), key.reveal().upper(), b64, b64.rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
            # the previous format's passphrase, base64'd: what pgp_sym_* would see
            base64.b64encode(key.reveal().encode()).decode()[:40]]


def _insert_plaintext_env_unlogged(superuser_url: str, org: object, value: str) -> None:
    """An env value in clear, as stored before env values were encrypted. Written with
    this session's logging off, so that only the library's handling of it (the
    migration by rotate-key, the reads) can put it in the log."""
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        for setting in ("log_statement = 'none'", "log_min_duration_statement = -1",
                        "auto_explain.log_min_duration = -1"):
            conn.execute(f"SET {setting}".encode())
        conn.execute(b"INSERT INTO mcp_configurations (organization_id, name, type, command,"
                     b" env) VALUES (%s, 'from-before', 'stdio', 'srv', %s)",
                     (org, Jsonb({"LEGACY_TOKEN": value})))


def _run_every_secret_path(url_of: dict[str, str], old: EncryptionKey, new: EncryptionKey,
                           tokens: dict[str, str]) -> None:
    svc = Database(url_of[SERVICE_LOGIN], key=old, min_size=1, max_size=2)
    app = Database(url_of[APP_LOGIN], key=old, min_size=1, max_size=2)
    try:
        t = provision_tenants(svc)
        with app.as_user(t.alice) as tx:  # store
            bearer = tx.mcp.create(name="gh", type="http", endpoint="https://mcp.example",
                                   auth_type="bearer", bearer_token=tokens["bearer"])
            oauth = tx.mcp.create(name="oa", type="http", endpoint="https://oa.example",
                                  auth_type="oauth", oauth_provider="github")
            stdio = tx.mcp.create(name="st", type="stdio", command="github-mcp",
                                  env={"GITHUB_TOKEN": tokens["env"],
                                       "DB_PASSWORD": tokens["env_pw"]})
            tx.tokens.store(oauth.id, access_token=tokens["access"],
                            refresh_token=tokens["refresh"],
                            expires_at=datetime.now(UTC) + timedelta(seconds=30))
        with app.as_user(t.alice) as tx:  # read
            got = tx.mcp.get(bearer.id, decrypt=True).bearer_token
            assert got is not None and got.get_secret_value() == tokens["bearer"]
            assert tx.mcp.list_effective(decrypt=True)
            assert tx.tokens.get(oauth.id, decrypt=True).access_token is not None
            env = tx.mcp.get_env(stdio.id)
            assert env["DB_PASSWORD"].get_secret_value() == tokens["env_pw"]
            assert tx.mcp.get(stdio.id, decrypt=True).env["GITHUB_TOKEN"] is not None
        with app.as_user(t.alice) as tx:  # update
            tx.mcp.update(bearer.id, bearer_token=tokens["bearer2"])
            tx.mcp.update(stdio.id, env={"GITHUB_TOKEN": tokens["env2"]})
            tx.mcp.update(stdio.id, args=["--verbose"])  # env kept as stored
        with pytest.raises(AgentApiDbError), app.as_user(t.alice) as tx:  # failing write
            tx.mcp.create(name="gh", type="http", endpoint="https://dup.example",
                          auth_type="bearer", bearer_token=tokens["failed"])
        with pytest.raises(AgentApiDbError), app.as_user(t.alice) as tx:  # failing env write
            tx.mcp.create(name="st", type="stdio", command="x",
                          env={"GITHUB_TOKEN": tokens["env_failed"]})
        _insert_plaintext_env_unlogged(url_of[SUPERUSER], t.org_a, tokens["env_plain"])
        with opsdb.connect(url_of[SERVICE_LOGIN]) as conn:  # refresh
            claims = claim_expiring(conn, worker_id="w1", key=old, within=timedelta(hours=1))
            assert [c.refresh_token for c in claims] == [tokens["refresh"]]
            store_refreshed(conn, claims[0], key=old, access_token=tokens["access2"],
                            refresh_token=tokens["refresh2"], expires_at=datetime.now(UTC))
            again = claim_expiring(conn, worker_id="w2", key=old, within=timedelta(hours=1))
            record_failure(conn, again[0], f"provider said no to {tokens['refresh2']}")
        with opsdb.connect(url_of[SERVICE_LOGIN]) as conn:  # rotation
            done = rotate_keys(conn, new, old, batch_size=2)
            # the plaintext env value from before is sealed (migration)
            assert (done.data_keys_rewrapped, done.values_reencrypted) == (1, 1)
            assert verify_rotation(conn, new, old).ok
        rotated = Database(url_of[APP_LOGIN], key=new, old_key=old, min_size=1, max_size=1)
        try:
            with rotated.as_user(t.alice) as tx:
                got = tx.mcp.get(bearer.id, decrypt=True).bearer_token
                assert got is not None and got.get_secret_value() == tokens["bearer2"]
                assert tx.mcp.get_env(stdio.id)["GITHUB_TOKEN"].get_secret_value() == \
                    tokens["env2"]
        finally:
            rotated.close()
        with opsdb.connect(url_of[SERVICE_LOGIN]) as conn:  # one org's data key; shredding
            ring = KeyRing(new, (old,))
            assert rotate_org_data_key(conn, ring, "org-a").values_reencrypted == 5
            with app.as_user(t.carol) as tx:
                tx.mcp.create(name="b", type="http", endpoint="https://b.example",
                              auth_type="bearer", bearer_token=tokens["shredded"])
                tx.mcp.create(name="b-env", type="stdio", command="x",
                              env={"TOKEN": tokens["env_shredded"]})
            assert delete_organization(conn, "org-b").data_key_ids
    finally:
        app.close()
        svc.close()


def test_no_key_or_token_in_the_server_log(logging_server: tuple[LocalCluster, str]) -> None:
    cluster, dbname = logging_server
    server = PgServer(superuser_url=cluster.url(), cluster=cluster)
    old, new = EncryptionKey.generate(), EncryptionKey.generate()
    tokens = {name: f"tok_{name}_{secrets.token_urlsafe(24)}"
              for name in ("bearer", "bearer2", "failed", "access", "refresh", "access2",
                           "refresh2", "shredded", "env", "env_pw", "env2", "env_failed",
                           "env_plain", "env_shredded")}
    start = cluster.log_file.stat().st_size
    _run_every_secret_path({login: server.url(dbname, login) for login in
                            (APP_LOGIN, SERVICE_LOGIN, SUPERUSER)}, old, new, tokens)
    log = cluster.log_file.read_bytes()[start:].decode(errors="replace")
    # The server really logged statements, parameters, plans and the failed write.
    assert "INSERT INTO public.mcp_configurations" in log
    assert "parameters: $1 = " in log
    assert "Query Text:" in log and "Output:" in log  # auto_explain, verbose
    assert "mcp_configurations_name_key" in log and "STATEMENT:" in log
    assert log.count("ag1:") > 5  # ciphertexts travel, and are logged
    leaks = [(what, form) for what, secret in tokens.items() for form in _forms(secret)
             if form in log]
    leaks += [(name, form) for name, key in (("old", old), ("new", new))
              for form in _key_forms(key) if form in log]
    assert leaks == []


def test_the_search_finds_a_key_sent_the_old_way(logging_server: tuple[LocalCluster, str]) -> None:
    """Control: a key bound to the seed's SQL function (what the library did before) is
    found by the same search, so the test above can fail."""
    cluster, dbname = logging_server
    server = PgServer(superuser_url=cluster.url(), cluster=cluster)
    key = EncryptionKey.generate()
    start = cluster.log_file.stat().st_size
    with opsdb.connect(server.url(dbname, SERVICE_LOGIN)) as conn:
        conn.execute("SELECT public.encrypt_token(%s, %s)", ("tok_control_value", key.reveal()))
    log = cluster.log_file.read_bytes()[start:].decode(errors="replace")
    assert key.reveal() in log and "tok_control_value" in log


def test_verify_warns_about_this_server_and_a_literal_key(
    logging_server: tuple[LocalCluster, str],
) -> None:
    cluster, dbname = logging_server
    url = PgServer(superuser_url=cluster.url(), cluster=cluster).url(dbname)
    with psycopg.connect(url, autocommit=True) as conn:
        _, before = check_secret_logging(conn)
        assert not any(w.startswith("pg_stat_statements") and "literal key" in w for w in before)
        # What an operator should not do: a literal key in a DO block (not normalized).
        literal = EncryptionKey.generate().reveal()
        conn.execute(f"DO $$ BEGIN PERFORM public.encrypt_token('t', '{literal}'); END $$"
                     .encode())
        _, warnings = check_secret_logging(conn)
    assert any(w.startswith("log_statement = all") for w in warnings)
    assert any(w.startswith("auto_explain with log_verbose") for w in warnings)
    assert any(w.startswith("pg_stat_statements: 1 statement(s)") and "literal key" in w
               for w in warnings)
    assert all(literal not in w for w in warnings)
