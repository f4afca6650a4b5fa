"""PostgreSQL errors become library exceptions; secrets never reach messages, reprs or logs."""

from __future__ import annotations

import logging
from uuid import uuid4

import psycopg
import pytest

from agentapi_db.errors import (
    AgentApiDbError,
    AlreadyExists,
    DecryptionError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    from_psycopg,
)
from agentapi_db.ops import Query
from tests.lib_support import Api, Tenants
from tests.pg import APP_LOGIN, SUPERUSER, TestDatabase

pytest_plugins = ("tests.lib_fixtures",)

TOKEN = "tok-9d8c7b6a-DO-NOT-LEAK"


def test_each_sqlstate_maps_to_its_exception(api: Api, tenants: Tenants) -> None:
    cases: list[tuple[Query, type[AgentApiDbError], str | None]] = [
        (Query("dup", "INSERT INTO organizations (name, slug) VALUES ('x', 'org-a')", {}),
         AlreadyExists, "organizations_slug_key"),
        (Query("check", "INSERT INTO organizations (name, slug) VALUES (' ', 'ok')", {}),
         InvalidInput, "organizations_name_not_blank"),
        (Query("fk", "INSERT INTO users (organization_id, email) VALUES (%(o)s, 'a@b.test')",
               {"o": uuid4()}),
         InvalidInput, "users_organization_id_fkey"),
        (Query("not null", "INSERT INTO organizations (name, slug) VALUES (NULL, 'nn')", {}),
         InvalidInput, "organizations.name"),
        (Query("text", "SELECT 'zzz'::uuid", {}), InvalidInput, "invalid_text_representation"),
        (Query("grant", "TRUNCATE audit_logs", {}), PermissionDenied, None),
        (Query("generic", "SELECT 1/0", {}), AgentApiDbError, None),
    ]
    for query, exc_type, rule in cases:
        with pytest.raises(exc_type) as info, api.svc.as_service() as tx:
            tx.execute(query)
        assert type(info.value) is exc_type, query.name
        assert info.value.sqlstate is not None
        assert isinstance(info.value.__cause__, psycopg.Error)
        if rule is not None:
            assert getattr(info.value, "rule", None) == rule, query.name
            assert rule in str(info.value)


def test_rls_refusal_is_permission_denied(api: Api, tenants: Tenants) -> None:
    with pytest.raises(PermissionDenied) as info, api.app.as_user(tenants.alice) as tx:
        tx.prompts.create("org-wide by a member", scope="organization")
    assert "row-level security" in str(info.value) and info.value.sqlstate == "42501"


def test_not_found_is_not_a_database_error(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        with pytest.raises(NotFound):
            tx.sessions.get(uuid4())
        # The transaction is still usable after a NotFound that changed nothing.
        assert tx.users.get().id == tenants.alice


def test_messages_never_carry_row_values(api: Api, tenants: Tenants) -> None:
    secret_path = f"/a/../{TOKEN}"
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.alice) as tx:
        tx.sessions.create(workspace_path=secret_path)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)
    # Under RLS (the service's too) PostgreSQL leaves the failing row out of its
    # error; a superuser bypasses RLS, so there PostgreSQL's own error does carry
    # the row (DETAIL: Failing row contains ...), and ours still does not.
    with pytest.raises(InvalidInput) as info, api.svc.as_service() as tx:
        tx.sessions.create(workspace_path=secret_path, user_id=tenants.alice)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, psycopg.Error) and TOKEN not in (cause.diag.message_detail or "")
    with pytest.raises(InvalidInput) as info, api.factory(SUPERUSER).transaction() as tx:
        tx.sessions.create(workspace_path=secret_path, user_id=tenants.alice)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, psycopg.Error) and TOKEN in (cause.diag.message_detail or "")


def test_pool_timeout_and_connection_failure_map_cleanly(api: Api) -> None:
    from psycopg_pool import PoolTimeout

    mapped = from_psycopg(PoolTimeout("x"))
    assert type(mapped).__name__ == "DatabaseUnavailable"
    assert from_psycopg(ValueError("x")).message.startswith("unexpected error")


def test_secrets_stay_out_of_reprs_errors_and_logs(
    api: Api, tenants: Tenants, db: TestDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, psycopg's included
    key_text = api.key.reveal()
    shown: list[str] = [repr(api.key), str(api.key), repr(api.app.key)]
    with api.app.as_user(tenants.alice) as tx:
        cfg = tx.mcp.create(name="b", type="http", endpoint="https://x", auth_type="bearer",
                            bearer_token=TOKEN)
        oauth = tx.mcp.create(name="o", type="http", endpoint="https://o", auth_type="oauth",
                              oauth_provider="gh")
        token = tx.tokens.store(oauth.id, access_token=TOKEN, refresh_token=TOKEN + "-r")
        decrypted = tx.mcp.get(cfg.id, decrypt=True)
        token_plain = tx.tokens.get(oauth.id, decrypt=True)
        effective = tx.mcp.list_effective(decrypt=True)
        shown += [repr(cfg), repr(token), repr(decrypted), repr(token_plain), repr(effective),
                  decrypted.model_dump_json(), str(decrypted.model_dump())]
    # Errors on the way: validation with a token, and decryption with the wrong key.
    with pytest.raises(InvalidInput) as bad, api.app.as_user(tenants.alice) as tx:
        tx.mcp.create(name="x", type="stdio", command="c", bearer_token=TOKEN)
    shown += [str(bad.value), repr(bad.value)]
    from agentapi_db import EncryptionKey

    wrong = api.factory(APP_LOGIN, key=EncryptionKey.generate())
    with pytest.raises(DecryptionError) as dec, wrong.as_user(tenants.alice) as tx:
        tx.tokens.get(oauth.id, decrypt=True)
    shown += [str(dec.value), repr(dec.value)]
    for record in caplog.records:
        shown += [record.getMessage(), repr(record.args)]
    assert any("mcp.create" in s for s in shown), "the DEBUG log should name statements"
    for text in shown:
        assert TOKEN not in text
        assert key_text not in text and key_text[:16] not in text
    # And the secrets did round-trip where asked for.
    assert decrypted.bearer_token is not None
    assert decrypted.bearer_token.get_secret_value() == TOKEN
    assert token_plain.refresh_token is not None
    assert token_plain.refresh_token.get_secret_value() == TOKEN + "-r"
    # The key is never in a statement's text: pg_stat_statements is not needed to
    # see that, the SQL constants are fixed strings with bind parameters only.
    with db.connect(SUPERUSER) as conn:
        queries = conn.execute(
            "SELECT coalesce(string_agg(query, ' '), '') FROM pg_stat_activity"
        ).fetchone()
    assert queries is not None and key_text not in queries[0] and TOKEN not in queries[0]


def test_query_repr_hides_parameters() -> None:
    q = Query("tokens.store", "SELECT %(key)s", {"key": "k" * 64}, sensitive=True)
    assert "k" * 64 not in repr(q)
