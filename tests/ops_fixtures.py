"""Seed helpers for the operations tests (rotation, refresh, retention, chain, stats).

Seeding runs as the superuser (it is set-up, not what is tested); every operation
under test then acts through a real login (``service_login``, ``app_login``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from agentapi_db.keys import EncryptionKey
from tests.pg import SUPERUSER, TestDatabase

# ---------------------------------------------------------------------------
# SQL (the only place this module writes SQL)
# ---------------------------------------------------------------------------

_ORG = "INSERT INTO organizations (id, name, slug) VALUES (%s, %s, %s)"
_USER = "INSERT INTO users (id, organization_id, email, role) VALUES (%s, %s, %s, %s)"
_BEARER_CONFIGS = """
INSERT INTO mcp_configurations (organization_id, name, type, endpoint, auth_type, bearer_token)
SELECT %(org)s, 'bearer-' || g, 'http', 'https://mcp.example.com/' || g, 'bearer',
       encrypt_token('bearer-secret-' || g, %(key)s)
  FROM generate_series(1, %(n)s) AS g
"""
_OAUTH_CONFIGS = """
INSERT INTO mcp_configurations (organization_id, name, type, endpoint, auth_type, oauth_provider)
SELECT %(org)s, 'oauth-' || g, 'http', 'https://oauth.example.com/' || g, 'oauth', 'github'
  FROM generate_series(1, %(n)s) AS g
"""
_TOKENS = """
INSERT INTO mcp_oauth_tokens (user_id, organization_id, mcp_configuration_id, oauth_provider,
                              access_token, refresh_token, expires_at)
SELECT %(user)s, c.organization_id, c.id, 'github',
       encrypt_token('access-' || c.name, %(key)s),
       CASE WHEN right(c.name, 1) = '7' THEN NULL
            ELSE encrypt_token('refresh-' || c.name, %(key)s) END,
       now() + (row_number() OVER (ORDER BY c.name) %% 120) * interval '1 minute'
  FROM mcp_configurations AS c
 WHERE c.organization_id = %(org)s AND c.auth_type = 'oauth'
"""
_PLAINTEXTS = """
SELECT 'mcp_configurations.bearer_token', c.id, decrypt_token(c.bearer_token, %(key)s),
       'bearer-secret-' || substr(c.name, 8)
  FROM mcp_configurations AS c WHERE c.bearer_token IS NOT NULL
UNION ALL
SELECT 'mcp_oauth_tokens.access_token', t.id, decrypt_token(t.access_token, %(key)s),
       'access-' || c.name
  FROM mcp_oauth_tokens AS t JOIN mcp_configurations AS c ON c.id = t.mcp_configuration_id
UNION ALL
SELECT 'mcp_oauth_tokens.refresh_token', t.id, decrypt_token(t.refresh_token, %(key)s),
       'refresh-' || c.name
  FROM mcp_oauth_tokens AS t JOIN mcp_configurations AS c ON c.id = t.mcp_configuration_id
 WHERE t.refresh_token IS NOT NULL
"""
_KEY_STATES = """
SELECT count(*) FILTER (WHERE a AND NOT b), count(*) FILTER (WHERE b AND NOT a),
       count(*) FILTER (WHERE a AND b), count(*) FILTER (WHERE NOT a AND NOT b)
  FROM (SELECT token_decrypts_with(v, %(new)s) AS a, token_decrypts_with(v, %(old)s) AS b
          FROM (SELECT bearer_token FROM mcp_configurations WHERE bearer_token IS NOT NULL
                UNION ALL SELECT access_token FROM mcp_oauth_tokens
                UNION ALL SELECT refresh_token FROM mcp_oauth_tokens
                 WHERE refresh_token IS NOT NULL) AS s (v)) AS k
"""
_AS_APP_USER = (
    "SELECT set_config('role', 'agentapi_app', true), set_config('app.user_id', %s, true)"
)
_APP_EVENT = (
    "SELECT log_audit_event(agentapi_auth.user_id(), agentapi_auth.organization_id(),"
    " 'test.event', 'test', %s, jsonb_build_object('n', %s::int), '192.0.2.1', 'pytest')"
)
_AS_SERVICE = "SET LOCAL ROLE agentapi_service"
_SERVICE_EVENTS = """
INSERT INTO audit_logs ("timestamp", user_id, organization_id, action, resource_type, details)
SELECT now() - %(age)s::interval, %(user)s, %(org)s, 'service.event', 'test',
       jsonb_build_object('n', g)
  FROM generate_series(1, %(n)s) AS g
"""


@dataclass(frozen=True)
class Tenant:
    org_id: uuid.UUID
    slug: str
    admin_id: uuid.UUID
    member_id: uuid.UUID


def seed_tenant(db: TestDatabase, slug: str) -> Tenant:
    """One organization with an admin and a member."""
    tenant = Tenant(uuid.uuid4(), slug, uuid.uuid4(), uuid.uuid4())
    with db.connect(SUPERUSER) as conn:
        conn.execute(_ORG, (tenant.org_id, slug.title(), slug))
        conn.execute(_USER, (tenant.admin_id, tenant.org_id, f"admin@{slug}.example.com", "admin"))
        conn.execute(_USER, (tenant.member_id, tenant.org_id, f"member@{slug}.example.com", "user"))
    return tenant


def seed_encrypted(
    db: TestDatabase, tenant: Tenant, key: EncryptionKey, *, bearer: int, oauth: int
) -> int:
    """``bearer`` bearer configs and ``oauth`` OAuth tokens (every 10th without refresh
    token), all encrypted with ``key``; returns how many encrypted values that is."""
    with db.connect(SUPERUSER) as conn:
        conn.execute(_BEARER_CONFIGS, {"org": tenant.org_id, "key": key.sql_value, "n": bearer})
        conn.execute(_OAUTH_CONFIGS, {"org": tenant.org_id, "n": oauth})
        conn.execute(
            _TOKENS, {"org": tenant.org_id, "user": tenant.member_id, "key": key.sql_value}
        )
    return bearer + oauth + oauth - oauth // 10


def app_events(db: TestDatabase, user_id: uuid.UUID, n: int, login: str = "app_login") -> None:
    """``n`` audit events logged by ``user_id`` through the application role, committed."""
    with db.connect(login) as conn:
        for i in range(n):
            conn.execute(_AS_APP_USER, (str(user_id),))
            conn.execute(_APP_EVENT, (f"r{i}", i))
            conn.commit()


def service_events(
    db: TestDatabase, tenant: Tenant, n: int, *, age: str = "0 seconds",
    login: str = "service_login",
) -> None:
    """``n`` events of ``tenant`` inserted as agentapi_service, ``age`` in the past, committed."""
    with db.connect(login) as conn:
        conn.execute(_AS_SERVICE)
        conn.execute(
            _SERVICE_EVENTS,
            {"age": age, "user": tenant.member_id, "org": tenant.org_id, "n": n},
        )
        conn.commit()


def plaintext_mismatches(db: TestDatabase, key: EncryptionKey) -> tuple[int, list[str]]:
    """Decrypt every value with ``key`` (raises if one does not open): (count, mismatches)."""
    with db.connect(SUPERUSER) as conn:
        rows = conn.execute(_PLAINTEXTS, {"key": key.sql_value}).fetchall()
    bad = [f"{r[0]} {r[1]}" for r in rows if r[2] != r[3]]
    return len(rows), bad


def key_states(db: TestDatabase, new: EncryptionKey, old: EncryptionKey) -> tuple[int, ...]:
    """(only new, only old, both, neither) over every encrypted value."""
    with db.connect(SUPERUSER) as conn:
        row = conn.execute(_KEY_STATES, {"new": new.sql_value, "old": old.sql_value}).fetchone()
    assert row is not None
    return tuple(int(v) for v in row)
