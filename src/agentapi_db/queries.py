"""Every SQL statement of the library, as module-level constants (the ONE place for SQL).

Rules kept here:

* Values are always bind parameters (``%(name)s``). No statement is built by
  formatting or concatenation.
* No key and no plaintext token ever appears here, as a parameter or otherwise:
  tokens are encrypted and decrypted in the application process
  (:mod:`agentapi_db.crypto`); statements only move ciphertexts.
* A parameter used more than once, or compared with ``IS NULL``, carries an
  explicit cast so PostgreSQL deduces one type for it.
* Statements run under the caller's role: as ``agentapi_app`` row-level security
  decides what they see and may change; ``agentapi_auth.user_id()`` /
  ``organization_id()`` fill in the acting user where the caller gives no id.
* ``CASE WHEN %(decrypt)s THEN <ciphertext> END`` returns a ciphertext only when
  the caller asked to decrypt it; otherwise the secret never leaves the table.
"""

from __future__ import annotations

from typing import Final, LiteralString

# ---------------------------------------------------------------------------
# Transaction context (agentapi_db.db)
# ---------------------------------------------------------------------------

# set_config(..., true) is SET LOCAL: it ends with the transaction. Setting the
# GUC "role" is exactly SET LOCAL ROLE (same membership check), in one round trip
# together with app.user_id.
# app.context_token: the token for that id (empty without a context key), see
# agentapi_db.context. Both are bound parameters, never literals in the text, which
# other sessions of the login could read in pg_stat_activity.
CONTEXT_AS_USER: Final[LiteralString] = (
    "SELECT set_config('role', 'agentapi_app', true), "
    "set_config('app.user_id', %(user_id)s::text, true), "
    "set_config('app.context_token', %(token)s::text, true)"
)
CONTEXT_AS_SERVICE: Final[LiteralString] = "SELECT set_config('role', 'agentapi_service', true)"

# The pool's connections are in autocommit mode and each transaction is delimited
# by these statements, so that BEGIN and the context statement above travel in one
# pipeline (one round trip); psycopg's own BEGIN waits for its reply first.
BEGIN: Final[LiteralString] = "BEGIN"
BEGIN_READ_ONLY: Final[LiteralString] = "BEGIN READ ONLY"
COMMIT: Final[LiteralString] = "COMMIT"
ROLLBACK: Final[LiteralString] = "ROLLBACK"

# ---------------------------------------------------------------------------
# organizations
# ---------------------------------------------------------------------------

ORG_INSERT: Final[LiteralString] = """
INSERT INTO public.organizations (name, slug, metadata)
VALUES (%(name)s, %(slug)s, %(metadata)s)
RETURNING id, name, slug, metadata, created_at, updated_at
"""

ORG_GET: Final[LiteralString] = """
SELECT id, name, slug, metadata, created_at, updated_at
  FROM public.organizations
 WHERE id = coalesce(%(id)s::uuid, agentapi_auth.organization_id())
"""

ORG_GET_BY_SLUG: Final[LiteralString] = """
SELECT id, name, slug, metadata, created_at, updated_at
  FROM public.organizations
 WHERE lower(slug) = %(slug)s
"""

ORG_LIST: Final[LiteralString] = """
SELECT id, name, slug, metadata, created_at, updated_at
  FROM public.organizations
 ORDER BY slug
"""

ORG_UPDATE: Final[LiteralString] = """
UPDATE public.organizations
   SET name = coalesce(%(name)s, name),
       metadata = coalesce(%(metadata)s, metadata)
 WHERE id = coalesce(%(id)s::uuid, agentapi_auth.organization_id())
RETURNING id, name, slug, metadata, created_at, updated_at
"""

# Slugs are globally unique, so only agentapi_service may change one (the app
# has no UPDATE grant on the column: a collision would reveal other tenants' slugs).
ORG_SET_SLUG: Final[LiteralString] = """
UPDATE public.organizations SET slug = %(slug)s
 WHERE id = coalesce(%(id)s::uuid, agentapi_auth.organization_id())
RETURNING id
"""

ORG_DELETE: Final[LiteralString] = """
DELETE FROM public.organizations WHERE id = %(id)s RETURNING id
"""

ORG_VISIBLE: Final[LiteralString] = """
SELECT 1 AS visible FROM public.organizations
 WHERE id = coalesce(%(id)s::uuid, agentapi_auth.organization_id())
"""

# ---------------------------------------------------------------------------
# users
# ---------------------------------------------------------------------------

USER_INSERT: Final[LiteralString] = """
INSERT INTO public.users (organization_id, email, role, metadata)
VALUES (coalesce(%(organization_id)s::uuid, agentapi_auth.organization_id()),
        %(email)s, %(role)s::public.user_role, %(metadata)s)
RETURNING id, organization_id, email, role, is_active, metadata, last_login_at,
          created_at, updated_at
"""

USER_GET: Final[LiteralString] = """
SELECT id, organization_id, email, role, is_active, metadata, last_login_at,
       created_at, updated_at
  FROM public.users
 WHERE id = %(id)s
"""

USER_GET_BY_EMAIL: Final[LiteralString] = """
SELECT id, organization_id, email, role, is_active, metadata, last_login_at,
       created_at, updated_at
  FROM public.users
 WHERE organization_id = coalesce(%(organization_id)s::uuid, agentapi_auth.organization_id())
   AND lower(email) = lower(%(email)s)
"""

USER_LIST: Final[LiteralString] = """
SELECT id, organization_id, email, role, is_active, metadata, last_login_at,
       created_at, updated_at
  FROM public.users
 WHERE organization_id = coalesce(%(organization_id)s::uuid, agentapi_auth.organization_id())
   AND (is_active OR %(include_inactive)s)
 ORDER BY lower(email), id
"""

USER_SET_ROLE: Final[LiteralString] = """
UPDATE public.users SET role = %(role)s::public.user_role
 WHERE id = %(id)s
RETURNING id, organization_id, email, role, is_active, metadata, last_login_at,
          created_at, updated_at
"""

USER_SET_ACTIVE: Final[LiteralString] = """
UPDATE public.users SET is_active = %(is_active)s
 WHERE id = %(id)s
RETURNING id, organization_id, email, role, is_active, metadata, last_login_at,
          created_at, updated_at
"""

USER_UPDATE_PROFILE: Final[LiteralString] = """
UPDATE public.users
   SET metadata = coalesce(%(metadata)s, metadata),
       last_login_at = coalesce(%(last_login_at)s, last_login_at)
 WHERE id = %(id)s
RETURNING id, organization_id, email, role, is_active, metadata, last_login_at,
          created_at, updated_at
"""

USER_DELETE: Final[LiteralString] = """
DELETE FROM public.users WHERE id = %(id)s RETURNING id
"""

USER_VISIBLE: Final[LiteralString] = """
SELECT 1 AS visible FROM public.users WHERE id = %(id)s
"""

# ---------------------------------------------------------------------------
# user_sessions
# ---------------------------------------------------------------------------

SESSION_INSERT: Final[LiteralString] = """
INSERT INTO public.user_sessions (user_id, organization_id, workspace_path, system_prompt,
                                  metadata, expires_at)
SELECT u.id, u.organization_id, %(workspace_path)s, %(system_prompt)s, %(metadata)s,
       now() + %(ttl)s::interval
  FROM public.users AS u
 WHERE u.id = %(user_id)s AND u.is_active
RETURNING id, user_id, organization_id, workspace_path, system_prompt, metadata,
          created_at, expires_at, last_active_at
"""

SESSION_GET: Final[LiteralString] = """
SELECT id, user_id, organization_id, workspace_path, system_prompt, metadata,
       created_at, expires_at, last_active_at
  FROM public.user_sessions
 WHERE id = %(id)s
"""

SESSION_TOUCH: Final[LiteralString] = """
UPDATE public.user_sessions
   SET last_active_at = now(),
       expires_at = coalesce(now() + %(extend)s::interval, expires_at)
 WHERE id = %(id)s AND (expires_at IS NULL OR expires_at > now())
RETURNING id, user_id, organization_id, workspace_path, system_prompt, metadata,
          created_at, expires_at, last_active_at
"""

SESSION_SET_PROMPT: Final[LiteralString] = """
UPDATE public.user_sessions SET system_prompt = %(system_prompt)s
 WHERE id = %(id)s
RETURNING id, user_id, organization_id, workspace_path, system_prompt, metadata,
          created_at, expires_at, last_active_at
"""

# Keyset pagination, newest first, on (created_at, id): matches the index
# user_sessions_organization_id_idx. Without a cursor the keyset test is skipped.
SESSION_LIST_ACTIVE: Final[LiteralString] = """
SELECT id, user_id, organization_id, workspace_path, system_prompt, metadata,
       created_at, expires_at, last_active_at,
       user_email, user_role, organization_name, organization_slug
  FROM public.active_user_sessions
 WHERE (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
   AND (%(organization_id)s::uuid IS NULL OR organization_id = %(organization_id)s::uuid)
   AND (%(after_created_at)s::timestamptz IS NULL
        OR (created_at, id) < (%(after_created_at)s::timestamptz, %(after_id)s::uuid))
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s
"""

SESSION_DELETE: Final[LiteralString] = """
DELETE FROM public.user_sessions WHERE id = %(id)s RETURNING id
"""

SESSION_CLEANUP: Final[LiteralString] = "SELECT public.cleanup_expired_sessions() AS deleted"

# ---------------------------------------------------------------------------
# organization_data_keys (envelope encryption; agentapi_db.ops._secrets)
# ---------------------------------------------------------------------------

# The organization a secret belongs to (given, else the user's, else the acting
# user's) and its primary data key, wrapped, if it has one yet.
DATA_KEY_PRIMARY: Final[LiteralString] = """
SELECT o.id AS organization_id, k.key_id, k.wrapped_key
  FROM (SELECT coalesce(%(organization_id)s::uuid,
                        (SELECT u.organization_id FROM public.users AS u
                          WHERE u.id = %(user_id)s::uuid),
                        agentapi_auth.organization_id()) AS id) AS o
  LEFT JOIN public.organization_data_keys AS k ON k.organization_id = o.id AND k.is_primary
"""

# Concurrent first writes race on the one-primary index: the loser reads the
# winner's key again.
DATA_KEY_INSERT: Final[LiteralString] = """
INSERT INTO public.organization_data_keys (key_id, organization_id, wrapped_key)
VALUES (%(key_id)s, %(organization_id)s, %(wrapped_key)s)
ON CONFLICT (organization_id) WHERE is_primary DO NOTHING
RETURNING key_id
"""

DATA_KEYS_BY_ID: Final[LiteralString] = """
SELECT key_id, wrapped_key FROM public.organization_data_keys WHERE key_id = ANY(%(key_ids)s)
"""

# ---------------------------------------------------------------------------
# mcp_configurations
# ---------------------------------------------------------------------------

MCP_INSERT: Final[LiteralString] = """
INSERT INTO public.mcp_configurations (organization_id, user_id, name, type, endpoint, command,
                                       args, env, auth_type, bearer_token, oauth_provider,
                                       enabled)
VALUES (coalesce(%(organization_id)s::uuid,
                 agentapi_auth.organization_id(),
                 (SELECT u.organization_id FROM public.users AS u WHERE u.id = %(user_id)s::uuid)),
        %(user_id)s::uuid, %(name)s, %(type)s::public.mcp_type, %(endpoint)s, %(command)s,
        %(args)s, %(env)s, %(auth_type)s::public.auth_type,
        %(bearer_token)s, %(oauth_provider)s, %(enabled)s)
RETURNING id, organization_id, user_id, name, type, endpoint, command, args, env, auth_type,
          oauth_provider, enabled, created_at, updated_at,
          bearer_token IS NOT NULL AS has_bearer_token
"""

MCP_GET: Final[LiteralString] = """
SELECT id, organization_id, user_id, name, type, endpoint, command, args, env, auth_type,
       oauth_provider, enabled, created_at, updated_at,
       bearer_token IS NOT NULL AS has_bearer_token,
       CASE WHEN %(decrypt)s THEN bearer_token END AS bearer_token
  FROM public.mcp_configurations
 WHERE id = %(id)s
"""

# The current row, locked, for a read-modify-validate-write update. FOR NO KEY
# UPDATE also applies the UPDATE policy: a row the caller may see but not
# change is not returned (MCP_GET then tells the two cases apart).
MCP_LOCK: Final[LiteralString] = """
SELECT id, organization_id, user_id, name, type, endpoint, command, args, env, auth_type,
       oauth_provider, enabled, created_at, updated_at,
       bearer_token IS NOT NULL AS has_bearer_token
  FROM public.mcp_configurations
 WHERE id = %(id)s
   FOR NO KEY UPDATE
"""

MCP_UPDATE: Final[LiteralString] = """
UPDATE public.mcp_configurations
   SET name = %(name)s,
       type = %(type)s::public.mcp_type,
       endpoint = %(endpoint)s,
       command = %(command)s,
       args = %(args)s,
       env = %(env)s,
       auth_type = %(auth_type)s::public.auth_type,
       bearer_token = CASE %(token_action)s::text
                          WHEN 'set' THEN %(bearer_token)s
                          WHEN 'clear' THEN NULL
                          ELSE bearer_token
                      END,
       oauth_provider = %(oauth_provider)s,
       enabled = %(enabled)s
 WHERE id = %(id)s
RETURNING id, organization_id, user_id, name, type, endpoint, command, args, env, auth_type,
          oauth_provider, enabled, created_at, updated_at,
          bearer_token IS NOT NULL AS has_bearer_token
"""

MCP_DELETE: Final[LiteralString] = """
DELETE FROM public.mcp_configurations WHERE id = %(id)s RETURNING id
"""

MCP_LIST: Final[LiteralString] = """
SELECT id, organization_id, user_id, name, type, endpoint, command, args, env, auth_type,
       oauth_provider, enabled, created_at, updated_at,
       bearer_token IS NOT NULL AS has_bearer_token
  FROM public.mcp_configurations
 WHERE organization_id = coalesce(%(organization_id)s::uuid, agentapi_auth.organization_id())
 ORDER BY user_id NULLS FIRST, name
"""

# The configs in effect for one user: enabled, org-wide ones of their
# organization plus their own; a personal config shadows an org-wide one of the
# same name (DISTINCT ON keeps the personal row, sorted first).
MCP_LIST_EFFECTIVE: Final[LiteralString] = """
SELECT DISTINCT ON (v.name)
       v.id, v.organization_id, v.user_id, v.name, v.type, v.endpoint, v.command, v.args,
       v.env, v.auth_type, v.oauth_provider, v.enabled, v.created_at, v.updated_at,
       v.bearer_token IS NOT NULL AS has_bearer_token,
       v.organization_name, v.organization_slug, v.user_email, v.config_scope,
       CASE WHEN %(decrypt)s THEN v.bearer_token END AS bearer_token
  FROM public.effective_mcp_configurations AS v
  JOIN public.users AS u ON u.id = %(user_id)s AND u.organization_id = v.organization_id
 WHERE v.user_id IS NULL OR v.user_id = u.id
 ORDER BY v.name, v.user_id NULLS LAST
"""

# ---------------------------------------------------------------------------
# mcp_oauth_tokens
# ---------------------------------------------------------------------------

# Insert or replace, atomically, on the unique key (user, organization, config).
# The configuration is looked up under the caller's RLS: one they cannot see
# gives no row at all (NotFound); one that does not use OAuth gives a row with
# auth_type but no token (InvalidInput). Replacing resets the refresh bookkeeping.
OAUTH_UPSERT: Final[LiteralString] = """
WITH cfg AS (
    SELECT u.id AS user_id, u.organization_id, c.id AS mcp_configuration_id,
           c.oauth_provider, c.auth_type
      FROM public.users AS u
      JOIN public.mcp_configurations AS c
        ON c.id = %(mcp_configuration_id)s AND c.organization_id = u.organization_id
     WHERE u.id = %(user_id)s
), saved AS (
    INSERT INTO public.mcp_oauth_tokens AS t (user_id, organization_id, mcp_configuration_id,
                                              oauth_provider, access_token, refresh_token,
                                              token_type, scope, expires_at)
    SELECT cfg.user_id, cfg.organization_id, cfg.mcp_configuration_id,
           coalesce(%(oauth_provider)s, cfg.oauth_provider),
           %(access_token)s,
           %(refresh_token)s,
           %(token_type)s, %(scope)s, %(expires_at)s
      FROM cfg
     WHERE cfg.auth_type = 'oauth'
    ON CONFLICT (user_id, organization_id, mcp_configuration_id) DO UPDATE
       SET oauth_provider = EXCLUDED.oauth_provider,
           access_token = EXCLUDED.access_token,
           refresh_token = EXCLUDED.refresh_token,
           token_type = EXCLUDED.token_type,
           scope = EXCLUDED.scope,
           expires_at = EXCLUDED.expires_at,
           refresh_claimed_until = NULL,
           refresh_claimed_by = NULL,
           refresh_failure_count = 0,
           last_refresh_error = NULL
    RETURNING t.id, t.user_id, t.organization_id, t.mcp_configuration_id, t.oauth_provider,
              t.token_type, t.scope, t.expires_at, t.refresh_failure_count,
              t.last_refreshed_at, t.created_at, t.updated_at
)
SELECT cfg.auth_type AS configuration_auth_type, saved.*
  FROM cfg LEFT JOIN saved ON true
"""

OAUTH_GET: Final[LiteralString] = """
SELECT id, user_id, organization_id, mcp_configuration_id, oauth_provider, token_type, scope,
       expires_at, refresh_failure_count, last_refreshed_at, created_at, updated_at,
       CASE WHEN %(decrypt)s THEN access_token END AS access_token,
       CASE WHEN %(decrypt)s THEN refresh_token END AS refresh_token
  FROM public.mcp_oauth_tokens
 WHERE mcp_configuration_id = %(mcp_configuration_id)s AND user_id = %(user_id)s
"""

OAUTH_LIST: Final[LiteralString] = """
SELECT id, user_id, organization_id, mcp_configuration_id, oauth_provider, token_type, scope,
       expires_at, refresh_failure_count, last_refreshed_at, created_at, updated_at
  FROM public.mcp_oauth_tokens
 WHERE user_id = %(user_id)s
 ORDER BY created_at, id
"""

OAUTH_DELETE: Final[LiteralString] = """
DELETE FROM public.mcp_oauth_tokens
 WHERE mcp_configuration_id = %(mcp_configuration_id)s AND user_id = %(user_id)s
RETURNING id
"""

# ---------------------------------------------------------------------------
# system_prompts
# ---------------------------------------------------------------------------

# organization_id: given, else the prompt user's organization (user scope), else
# the acting user's (organization scope); always NULL for global prompts.
PROMPT_INSERT: Final[LiteralString] = """
INSERT INTO public.system_prompts (scope, organization_id, user_id, content, priority, template,
                                   enabled, created_by)
VALUES (%(scope)s::public.prompt_scope,
        CASE WHEN %(scope)s::public.prompt_scope = 'global' THEN NULL
             ELSE coalesce(%(organization_id)s::uuid,
                           (SELECT u.organization_id FROM public.users AS u
                             WHERE u.id = %(user_id)s::uuid),
                           agentapi_auth.organization_id())
        END,
        %(user_id)s::uuid, %(content)s, %(priority)s, %(template)s, %(enabled)s,
        agentapi_auth.user_id())
RETURNING id, scope, organization_id, user_id, content, priority, template, enabled,
          created_by, created_at, updated_at
"""

PROMPT_GET: Final[LiteralString] = """
SELECT id, scope, organization_id, user_id, content, priority, template, enabled,
       created_by, created_at, updated_at
  FROM public.system_prompts
 WHERE id = %(id)s
"""

PROMPT_LIST: Final[LiteralString] = """
SELECT id, scope, organization_id, user_id, content, priority, template, enabled,
       created_by, created_at, updated_at
  FROM public.system_prompts
 WHERE (%(scope)s::public.prompt_scope IS NULL OR scope = %(scope)s::public.prompt_scope)
   AND (%(organization_id)s::uuid IS NULL OR organization_id = %(organization_id)s::uuid)
 ORDER BY scope, organization_id NULLS FIRST, user_id NULLS FIRST, priority DESC, created_at, id
"""

PROMPT_UPDATE: Final[LiteralString] = """
UPDATE public.system_prompts
   SET content = coalesce(%(content)s, content),
       priority = coalesce(%(priority)s, priority),
       template = CASE WHEN %(set_template)s THEN %(template)s ELSE template END,
       enabled = coalesce(%(enabled)s, enabled)
 WHERE id = %(id)s
RETURNING id, scope, organization_id, user_id, content, priority, template, enabled,
          created_by, created_at, updated_at
"""

PROMPT_DELETE: Final[LiteralString] = """
DELETE FROM public.system_prompts WHERE id = %(id)s RETURNING id
"""

PROMPT_EFFECTIVE: Final[LiteralString] = """
SELECT p.id, p.scope, p.organization_id, p.user_id, p.content, p.priority, p.template,
       p.created_at, p.precedence
  FROM public.users AS u
 CROSS JOIN LATERAL public.get_effective_system_prompts(u.id, u.organization_id) AS p
 WHERE u.id = %(user_id)s
 ORDER BY p.precedence
"""

# ---------------------------------------------------------------------------
# audit_logs
# ---------------------------------------------------------------------------

AUDIT_LOG: Final[LiteralString] = """
SELECT public.log_audit_event(
           coalesce(%(user_id)s::uuid, agentapi_auth.user_id()),
           coalesce(%(organization_id)s::uuid, agentapi_auth.organization_id()),
           %(action)s, %(resource_type)s, %(resource_id)s, %(details)s,
           %(ip_address)s::inet, %(user_agent)s, %(success)s, %(error_message)s) AS id
"""

# Newest first, keyset on ("timestamp", id); fetches limit + 1 rows to know
# whether a next page exists. Filters that are NULL are off.
AUDIT_QUERY: Final[LiteralString] = """
SELECT id, "timestamp", user_id, organization_id, action, resource_type, resource_id, details,
       host(ip_address) AS ip_address, user_agent, success, error_message
  FROM public.audit_logs
 WHERE (%(action)s::text IS NULL OR action = %(action)s::text)
   AND (%(resource_type)s::text IS NULL OR resource_type = %(resource_type)s::text)
   AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
   AND (%(organization_id)s::uuid IS NULL OR organization_id = %(organization_id)s::uuid)
   AND (%(since)s::timestamptz IS NULL OR "timestamp" >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR "timestamp" < %(until)s::timestamptz)
   AND (%(after_ts)s::timestamptz IS NULL
        OR ("timestamp", id) < (%(after_ts)s::timestamptz, %(after_id)s::uuid))
 ORDER BY "timestamp" DESC, id DESC
 LIMIT %(limit)s
"""
