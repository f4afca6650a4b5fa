-- =============================================================================
-- agentapi-db: the complete multi-tenant schema for AgentAPI
--
-- Apply to an empty database on PostgreSQL 15 or newer, as the database's
-- owner with CREATEROLE (no superuser needed: what managed PostgreSQL gives),
-- or as a superuser:
--
--     psql -v ON_ERROR_STOP=1 -f database/schema.sql
--
-- (`agentapi-db migrate` does the same and records the version.)
--
-- The public names in this file are the contract in shared/spec/contract.md.
-- The file is organised in sections, one concern each:
--
--   1. Preconditions, roles and schemas         (as the deploying role)
--   2. Extensions                               (as the deploying role)
--   3. Types
--   4. Tables, constraints and indexes          (everything below: as agentapi_owner)
--   5. Request context helpers (agentapi_auth)
--   6. Triggers
--   7. Row-level security
--   8. Functions
--   9. Audit partitions
--  10. Views
--  11. Grants
--  12. Operations: key rotation helpers, audit hash chain, audit retention
--  13. Envelope encryption: per-organization data keys
--  14. Side channels: no statistics on tenant values (with 4.8)
--
-- Design notes (see docs/schema.md for the long form):
--   * Every SECURITY DEFINER function pins search_path = pg_catalog, pg_temp
--     (pg_temp explicitly last: an empty search_path still searches pg_temp
--     first for types and tables) and TEMPORARY is revoked from PUBLIC.
--   * The acting user comes from the transaction-local setting app.user_id.
--     Organisation, role and the active flag are always derived from `users`
--     by helpers in the schema agentapi_auth; nothing the caller sets by
--     itself is trusted for them. The helpers are portable SECURITY DEFINER
--     lookups, or, when the server has the C extension agentapi_identity
--     (ext/), calls of its identity cache (section 5), which looks the user
--     up once per transaction and rechecks the row version per snapshot.
--   * Every policy calls those helpers wrapped in a scalar subquery,
--     `(SELECT agentapi_auth.user_id())`, so each runs once per statement as
--     an InitPlan, never once per row.
--   * Tables are owned by agentapi_owner and FORCE ROW LEVEL SECURITY, so even
--     the owner goes through policies (it has explicit owner policies, and on
--     audit_logs those allow only SELECT and INSERT).
-- =============================================================================

\set ON_ERROR_STOP 1
SET client_min_messages = warning;

-- -----------------------------------------------------------------------------
-- 1. Preconditions, roles and schemas
-- -----------------------------------------------------------------------------

DO $$
BEGIN
    IF current_setting('server_version_num')::int < 150000 THEN
        RAISE EXCEPTION 'agentapi-db needs PostgreSQL 15 or newer (this server is %)',
            current_setting('server_version');
    END IF;
END
$$;

-- The three group roles of the contract, created with their attributes when
-- missing. They are NOLOGIN: deployments grant them to real login roles.
--
-- The schema deploys without a superuser: a role with CREATEROLE and CREATEDB
-- that owns the database (what Amazon RDS, Cloud SQL, Azure, Supabase and Neon
-- give their customers) applies it. So nothing here names the SUPERUSER,
-- BYPASSRLS or REPLICATION attributes in ALTER ROLE (PostgreSQL refuses that to
-- non-superusers, even NOSUPERUSER), and agentapi_service works through
-- policies of its own instead of BYPASSRLS. A role that already exists with
-- any other attribute is refused, not silently trusted or "fixed"; lint
-- app_role_posture and `agentapi-db verify` keep checking them afterwards.
DO $$
DECLARE
    r record;
    role_name text;
    is_superuser boolean := (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user);
    can_createrole boolean := (SELECT rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = current_user);
BEGIN
    IF NOT is_superuser
       AND pg_catalog.pg_get_userbyid((SELECT d.datdba FROM pg_catalog.pg_database AS d
                                        WHERE d.datname = pg_catalog.current_database())) <> current_user THEN
        RAISE EXCEPTION 'agentapi-db must be applied by the owner of database % or by a superuser (current user: %)',
            pg_catalog.current_database(), current_user
            USING HINT = 'CREATE DATABASE as the deploying role (it then owns it), or ALTER DATABASE ... OWNER TO it.';
    END IF;
    FOREACH role_name IN ARRAY ARRAY['agentapi_owner', 'agentapi_app', 'agentapi_service'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS x WHERE x.rolname = role_name);
        IF NOT (is_superuser OR can_createrole) THEN
            RAISE EXCEPTION 'role % does not exist and % cannot create it (needs CREATEROLE)', role_name, current_user
                USING HINT = 'Apply as a role with CREATEROLE (and CREATEDB), or have the roles created first.';
        END IF;
        EXECUTE pg_catalog.format(
            'CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION INHERIT',
            role_name);
    END LOOP;
    FOR r IN
        SELECT x.rolname,
               pg_catalog.concat_ws(', ',
                   CASE WHEN x.rolsuper THEN 'SUPERUSER' END, CASE WHEN x.rolbypassrls THEN 'BYPASSRLS' END,
                   CASE WHEN x.rolcanlogin THEN 'LOGIN' END, CASE WHEN x.rolcreaterole THEN 'CREATEROLE' END,
                   CASE WHEN x.rolcreatedb THEN 'CREATEDB' END, CASE WHEN x.rolreplication THEN 'REPLICATION' END) AS attrs
          FROM pg_catalog.pg_roles AS x
         WHERE x.rolname IN ('agentapi_owner', 'agentapi_app', 'agentapi_service')
           AND (x.rolsuper OR x.rolbypassrls OR x.rolcanlogin OR x.rolcreaterole OR x.rolcreatedb OR x.rolreplication)
    LOOP
        RAISE EXCEPTION 'role % exists with %; the contract roles are plain NOLOGIN group roles', r.rolname, r.attrs
            USING HINT = pg_catalog.format('Remove them (as a superuser: ALTER ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION), then apply again.', r.rolname);
    END LOOP;
    -- A non-superuser deployer must be able to SET ROLE agentapi_owner (the
    -- objects below are created as it) and use its privileges (CREATE EXTENSION
    -- into its schema). PostgreSQL 16's CREATEROLE gives the creator ADMIN on a
    -- new role but neither SET nor INHERIT, so the deployer grants itself both;
    -- on 15, CREATEROLE may grant any non-superuser role. This makes the
    -- deploying login a member of agentapi_owner, never of agentapi_app.
    IF is_superuser THEN
        NULL;
    ELSIF current_setting('server_version_num')::int >= 160000 THEN
        IF NOT (pg_catalog.pg_has_role(current_user, 'agentapi_owner', 'USAGE')
                AND pg_catalog.pg_has_role(current_user, 'agentapi_owner', 'SET')) THEN
            EXECUTE pg_catalog.format('GRANT agentapi_owner TO %I WITH INHERIT TRUE, SET TRUE', current_user);
        END IF;
    ELSIF NOT pg_catalog.pg_has_role(current_user, 'agentapi_owner', 'USAGE') THEN
        EXECUTE pg_catalog.format('GRANT agentapi_owner TO %I', current_user);
    END IF;
END
$$;

-- Comments on shared objects need CREATEROLE and ADMIN on them (16+), which a
-- deployer has on roles it created; another database's deployer may not.
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       OR (SELECT rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = current_user)
          AND (current_setting('server_version_num')::int < 160000
               OR pg_catalog.pg_has_role(current_user, 'agentapi_service', 'MEMBER WITH ADMIN OPTION')) THEN
        COMMENT ON ROLE agentapi_owner IS
            'Owns every agentapi-db object; migrations run as it. Tables FORCE row-level security, so it too goes through policies.';
        COMMENT ON ROLE agentapi_app IS
            'What the application acts as. Always subject to RLS; owns nothing; never superuser or BYPASSRLS.';
        COMMENT ON ROLE agentapi_service IS
            'Provisioning and maintenance (organizations, first admins, global prompts, cleanup, key rotation, retention). Sees every tenant through unconditional policies of its own (no BYPASSRLS); audit_logs stay append-only for it.';
    END IF;
END
$$;

-- Schemas. The application's tables live in public; helpers and extensions in
-- schemas of their own.
CREATE SCHEMA IF NOT EXISTS extensions AUTHORIZATION agentapi_owner;
CREATE SCHEMA IF NOT EXISTS agentapi_auth AUTHORIZATION agentapi_owner;
COMMENT ON SCHEMA extensions IS 'Extensions used by agentapi-db (pgcrypto, uuid-ossp), kept out of public.';
COMMENT ON SCHEMA agentapi_auth IS
    'Request-context helpers used by row-level security policies (portable SECURITY DEFINER lookups with a pinned search_path, or calls of the identity cache of the extension agentapi_identity), EXECUTE revoked from PUBLIC.';

-- PUBLIC gets nothing: not the public schema, not our functions or types.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO agentapi_owner;
REVOKE ALL ON SCHEMA extensions FROM PUBLIC;
REVOKE ALL ON SCHEMA agentapi_auth FROM PUBLIC;

-- No temporary objects for PUBLIC. Together with search_path = pg_catalog, pg_temp
-- on every SECURITY DEFINER function, this stops a caller from shadowing a type
-- or table in pg_temp that a definer function would then resolve.
DO $$
BEGIN
    EXECUTE pg_catalog.format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', pg_catalog.current_database());
END
$$;

-- -----------------------------------------------------------------------------
-- 2. Extensions
-- -----------------------------------------------------------------------------

CREATE EXTENSION IF NOT EXISTS "uuid-ossp" WITH SCHEMA extensions;
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA extensions;

DO $$
BEGIN
    IF (SELECT n.nspname FROM pg_catalog.pg_extension e
          JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
         WHERE e.extname = 'pgcrypto') <> 'extensions' THEN
        RAISE EXCEPTION 'pgcrypto is installed outside the schema "extensions"; move it with ALTER EXTENSION pgcrypto SET SCHEMA extensions';
    END IF;
END
$$;

-- Optional: agentapi_identity (ext/agentapi_identity), a small C extension
-- that caches the acting user's identity for the RLS helpers (section 5). It
-- is installed when the server has it and the applying role is a superuser,
-- unless the session sets agentapi.identity_cache = off (then the helpers are
-- the portable ones even if the extension is already installed). Without it
-- the schema is fully portable.
DO $$
BEGIN
    IF lower(coalesce(pg_catalog.current_setting('agentapi.identity_cache', true), '')) NOT IN ('off', 'false', 'no', '0')
       AND (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user)
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'agentapi_identity') THEN
        CREATE EXTENSION IF NOT EXISTS agentapi_identity WITH SCHEMA agentapi_auth;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension AS e
                WHERE e.extname = 'agentapi_identity'
                  AND e.extnamespace = 'agentapi_auth'::pg_catalog.regnamespace) THEN
        GRANT EXECUTE ON FUNCTION
            agentapi_auth.cached_user_id(),
            agentapi_auth.cached_organization_id(),
            agentapi_auth.cached_admin_organization_id(),
            agentapi_auth.cached_user_email()
        TO agentapi_app, agentapi_service, agentapi_owner;
    END IF;
END
$$;

-- Everything from here on is created by, and owned by, agentapi_owner.
SET ROLE agentapi_owner;

-- Objects created later by agentapi_owner never leak to PUBLIC.
ALTER DEFAULT PRIVILEGES FOR ROLE agentapi_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE agentapi_owner REVOKE USAGE ON TYPES FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- 3. Types
-- -----------------------------------------------------------------------------

CREATE TYPE public.user_role AS ENUM ('admin', 'user');
CREATE TYPE public.mcp_type AS ENUM ('http', 'sse', 'stdio');
CREATE TYPE public.auth_type AS ENUM ('none', 'bearer', 'oauth');
CREATE TYPE public.prompt_scope AS ENUM ('global', 'organization', 'user');

COMMENT ON TYPE public.user_role IS 'A user''s role in their organization: admin manages the organization, user is a member.';
COMMENT ON TYPE public.mcp_type IS 'How an MCP server is reached: http or sse (needs an http(s) endpoint) or stdio (needs a command).';
COMMENT ON TYPE public.auth_type IS 'How AgentAPI authenticates to an MCP server: none, bearer (encrypted bearer_token) or oauth (per-user tokens).';
COMMENT ON TYPE public.prompt_scope IS 'Layer of a system prompt: global (platform), organization, or user.';

REVOKE ALL ON TYPE public.user_role, public.mcp_type, public.auth_type, public.prompt_scope FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- 4. Tables, constraints and indexes
-- -----------------------------------------------------------------------------

-- 4.1 organizations ------------------------------------------------------------

CREATE TABLE public.organizations (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL,
    slug        text        NOT NULL,
    metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT organizations_name_not_blank CHECK (name ~ '\S' AND length(name) <= 200),
    CONSTRAINT organizations_slug_format CHECK (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$'),
    CONSTRAINT organizations_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

-- Global uniqueness of slugs lives on lower(slug) (= slug, by the format check):
-- lower() is not leakproof, so no condition of a row-level-secured caller can
-- become an index condition of this index and count other tenants' slugs
-- (docs/side-channels.md). The service's lookups by slug use lower(slug) too.
CREATE UNIQUE INDEX organizations_slug_key ON public.organizations (lower(slug));

COMMENT ON TABLE public.organizations IS 'Tenants. Everything else belongs to exactly one organization (global prompts excepted).';
COMMENT ON COLUMN public.organizations.slug IS 'URL-safe unique handle: lowercase letters, digits and inner hyphens, 1-63 characters.';
COMMENT ON COLUMN public.organizations.metadata IS 'Free-form JSON object for the application.';

-- 4.2 users --------------------------------------------------------------------

CREATE TABLE public.users (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid        NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    email            text        NOT NULL,
    role             public.user_role NOT NULL DEFAULT 'user',
    is_active        boolean     NOT NULL DEFAULT true,
    metadata         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    last_login_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Target of the composite foreign keys that tie a row's user to its organization.
    CONSTRAINT users_id_organization_id_key UNIQUE (id, organization_id),
    CONSTRAINT users_email_format CHECK (
        length(email) <= 320
        AND email ~ '^[A-Za-z0-9.!#$%&''*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$'
    ),
    CONSTRAINT users_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

-- Unique per organization and case-insensitive; deliberately not global, since
-- a global index would tell one tenant which emails another tenant has.
CREATE UNIQUE INDEX users_organization_id_email_key ON public.users (organization_id, lower(email));

COMMENT ON TABLE public.users IS 'Users of an organization. A user belongs to exactly one organization.';
COMMENT ON COLUMN public.users.email IS 'Validated address; unique per organization, case-insensitively.';
COMMENT ON COLUMN public.users.role IS 'admin manages the organization; user is a member.';
COMMENT ON COLUMN public.users.is_active IS 'An inactive user acts as nobody: with app.user_id naming them, no row is visible or writable.';
COMMENT ON COLUMN public.users.last_login_at IS 'Set by the application on login; a member may update their own.';

-- 4.3 user_sessions ------------------------------------------------------------

CREATE TABLE public.user_sessions (
    id               uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id          uuid        NOT NULL,
    organization_id  uuid        NOT NULL,
    workspace_path   text        NOT NULL,
    system_prompt    text,
    metadata         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz,
    last_active_at   timestamptz NOT NULL DEFAULT now(),
    -- Tenant-leading, like every index a caller's condition can reach: see 4.8.
    CONSTRAINT user_sessions_pkey PRIMARY KEY (organization_id, id),
    CONSTRAINT user_sessions_user_fkey FOREIGN KEY (user_id, organization_id)
        REFERENCES public.users (id, organization_id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT user_sessions_workspace_path_valid CHECK (
        workspace_path ~ '\S'
        AND length(workspace_path) <= 4096
        AND workspace_path !~ '(^|/)\.\.(/|$)'
    ),
    CONSTRAINT user_sessions_expires_after_created CHECK (expires_at IS NULL OR expires_at > created_at),
    CONSTRAINT user_sessions_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

-- Own sessions of a user (and the composite foreign key).
CREATE INDEX user_sessions_user_id_idx ON public.user_sessions (organization_id, user_id, created_at DESC);
-- Admin pages: an organization's sessions, newest first, keyset by (created_at, id).
CREATE INDEX user_sessions_organization_id_idx ON public.user_sessions (organization_id, created_at DESC, id DESC);
-- Cleanup: the sessions that can expire.
CREATE INDEX user_sessions_expires_at_idx ON public.user_sessions (expires_at) WHERE expires_at IS NOT NULL;

COMMENT ON TABLE public.user_sessions IS 'Agent sessions, each with its own workspace. A session''s user always belongs to the session''s organization.';
COMMENT ON COLUMN public.user_sessions.workspace_path IS 'The session''s workspace; not blank, at most 4096 characters, no ".." segment.';
COMMENT ON COLUMN public.user_sessions.system_prompt IS 'Optional override that replaces the layered prompts for this session.';
COMMENT ON COLUMN public.user_sessions.expires_at IS 'When the session ends; NULL never expires. Must be after created_at.';
COMMENT ON COLUMN public.user_sessions.last_active_at IS 'Touched by the application while the session is used.';
COMMENT ON CONSTRAINT user_sessions_user_fkey ON public.user_sessions IS 'The session''s user belongs to the session''s organization.';

-- 4.4 mcp_configurations ------------------------------------------------------

CREATE TABLE public.mcp_configurations (
    id               uuid        NOT NULL DEFAULT gen_random_uuid(),
    organization_id  uuid        NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    user_id          uuid,
    name             text        NOT NULL,
    type             public.mcp_type NOT NULL,
    endpoint         text,
    command          text,
    args             jsonb       NOT NULL DEFAULT '[]'::jsonb,
    env              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    auth_type        public.auth_type NOT NULL DEFAULT 'none',
    bearer_token     text,
    oauth_provider   text,
    enabled          boolean     NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mcp_configurations_user_fkey FOREIGN KEY (user_id, organization_id)
        REFERENCES public.users (id, organization_id) ON DELETE CASCADE ON UPDATE CASCADE,
    -- Tenant-leading (4.8); also the target of mcp_oauth_tokens' foreign key:
    -- a token's config is in the token's organization.
    CONSTRAINT mcp_configurations_pkey PRIMARY KEY (organization_id, id),
    CONSTRAINT mcp_configurations_name_not_blank CHECK (name ~ '\S' AND length(name) <= 200),
    CONSTRAINT mcp_configurations_http_needs_endpoint CHECK (
        type NOT IN ('http', 'sse')
        OR (endpoint IS NOT NULL AND endpoint ~* '^https?://[^[:space:]/?#]+[^[:space:]]*$' AND command IS NULL)
    ),
    CONSTRAINT mcp_configurations_stdio_needs_command CHECK (
        type <> 'stdio' OR (command IS NOT NULL AND command ~ '\S' AND endpoint IS NULL)
    ),
    CONSTRAINT mcp_configurations_bearer_token_iff_bearer CHECK ((auth_type = 'bearer') = (bearer_token IS NOT NULL)),
    CONSTRAINT mcp_configurations_oauth_provider_iff_oauth CHECK (
        (auth_type = 'oauth') = (oauth_provider IS NOT NULL)
        AND (oauth_provider IS NULL OR oauth_provider ~ '\S')
    ),
    CONSTRAINT mcp_configurations_args_array CHECK (jsonb_typeof(args) = 'array'),
    CONSTRAINT mcp_configurations_env_object CHECK (jsonb_typeof(env) = 'object')
);

-- Names are unique, case-insensitively, among an organization's org-wide
-- configs (user_id NULL) and among one user's own configs; NULLS NOT DISTINCT
-- makes NULL user_ids collide. On lower(name), which is not leakproof, so a
-- member's condition on name never becomes an index condition that counts a
-- colleague's personal configs by name (4.8). Its leading (organization_id,
-- user_id) also serves the composite foreign key to users.
CREATE UNIQUE INDEX mcp_configurations_name_key ON public.mcp_configurations
    (organization_id, user_id, lower(name)) NULLS NOT DISTINCT;

COMMENT ON TABLE public.mcp_configurations IS 'MCP server configurations: organization-wide (user_id NULL) or personal to one user.';
COMMENT ON COLUMN public.mcp_configurations.user_id IS 'NULL: organization-wide, managed by admins. Otherwise: personal to this user, visible only to them. The scope of a configuration never changes.';
COMMENT ON COLUMN public.mcp_configurations.endpoint IS 'http(s) URL; required for http and sse, absent for stdio.';
COMMENT ON COLUMN public.mcp_configurations.command IS 'Executable to launch; required for stdio, absent for http and sse.';
COMMENT ON COLUMN public.mcp_configurations.args IS 'JSON array of command-line arguments.';
COMMENT ON COLUMN public.mcp_configurations.env IS 'JSON object of environment variables. Stored in clear: put secrets in bearer_token or OAuth tokens, not here.';
COMMENT ON COLUMN public.mcp_configurations.bearer_token IS 'Ciphertext from encrypt_token(); present exactly when auth_type = bearer.';
COMMENT ON COLUMN public.mcp_configurations.oauth_provider IS 'OAuth provider name; present exactly when auth_type = oauth.';
COMMENT ON INDEX public.mcp_configurations_name_key IS 'Names are unique, case-insensitively, among an organization''s org-wide configs and among one user''s personal configs.';

-- 4.5 mcp_oauth_tokens --------------------------------------------------------

CREATE TABLE public.mcp_oauth_tokens (
    id                     uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id                uuid        NOT NULL,
    organization_id        uuid        NOT NULL,
    mcp_configuration_id   uuid        NOT NULL,
    oauth_provider         text        NOT NULL,
    access_token           text        NOT NULL,
    refresh_token          text,
    token_type             text        NOT NULL DEFAULT 'Bearer',
    scope                  text,
    expires_at             timestamptz,
    refresh_claimed_until  timestamptz,
    refresh_claimed_by     text,
    refresh_failure_count  integer     NOT NULL DEFAULT 0,
    last_refresh_error     text,
    last_refreshed_at      timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mcp_oauth_tokens_pkey PRIMARY KEY (organization_id, id),
    CONSTRAINT mcp_oauth_tokens_user_fkey FOREIGN KEY (user_id, organization_id)
        REFERENCES public.users (id, organization_id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT mcp_oauth_tokens_configuration_fkey FOREIGN KEY (mcp_configuration_id, organization_id)
        REFERENCES public.mcp_configurations (id, organization_id) ON DELETE CASCADE ON UPDATE CASCADE,
    -- One row per user and configuration (a user has one organization, so this is that rule).
    CONSTRAINT mcp_oauth_tokens_user_configuration_key UNIQUE (organization_id, user_id, mcp_configuration_id),
    CONSTRAINT mcp_oauth_tokens_provider_not_blank CHECK (oauth_provider ~ '\S'),
    CONSTRAINT mcp_oauth_tokens_token_type_not_blank CHECK (token_type ~ '\S'),
    CONSTRAINT mcp_oauth_tokens_failure_count_nonnegative CHECK (refresh_failure_count >= 0)
);

CREATE INDEX mcp_oauth_tokens_configuration_idx ON public.mcp_oauth_tokens (organization_id, mcp_configuration_id);
-- Refresh workers claim the tokens that expire soonest.
CREATE INDEX mcp_oauth_tokens_expires_at_idx ON public.mcp_oauth_tokens (expires_at) WHERE expires_at IS NOT NULL;

COMMENT ON TABLE public.mcp_oauth_tokens IS 'A user''s OAuth tokens for one MCP configuration they can see; stored encrypted; one row per user and configuration.';
COMMENT ON COLUMN public.mcp_oauth_tokens.access_token IS 'Ciphertext from encrypt_token().';
COMMENT ON COLUMN public.mcp_oauth_tokens.refresh_token IS 'Ciphertext from encrypt_token(), or NULL.';
COMMENT ON COLUMN public.mcp_oauth_tokens.refresh_claimed_until IS 'Lease of a refresh worker that claimed this token (FOR UPDATE SKIP LOCKED); NULL or past means unclaimed.';
COMMENT ON COLUMN public.mcp_oauth_tokens.refresh_claimed_by IS 'Identifier of the refresh worker holding the lease.';
COMMENT ON COLUMN public.mcp_oauth_tokens.refresh_failure_count IS 'Consecutive failed refreshes; reset by a successful refresh.';
COMMENT ON COLUMN public.mcp_oauth_tokens.last_refresh_error IS 'Provider''s error from the last failed refresh (never a token).';

-- 4.6 system_prompts ----------------------------------------------------------

CREATE TABLE public.system_prompts (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    scope            public.prompt_scope NOT NULL,
    organization_id  uuid        REFERENCES public.organizations (id) ON DELETE CASCADE,
    user_id          uuid,
    content          text        NOT NULL,
    priority         integer     NOT NULL DEFAULT 0,
    template         text,
    enabled          boolean     NOT NULL DEFAULT true,
    created_by       uuid        REFERENCES public.users (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT system_prompts_user_fkey FOREIGN KEY (user_id, organization_id)
        REFERENCES public.users (id, organization_id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT system_prompts_scope_consistent CHECK (
        CASE scope
            WHEN 'global'       THEN organization_id IS NULL     AND user_id IS NULL
            WHEN 'organization' THEN organization_id IS NOT NULL AND user_id IS NULL
            WHEN 'user'         THEN organization_id IS NOT NULL AND user_id IS NOT NULL
        END
    ),
    CONSTRAINT system_prompts_content_not_blank CHECK (content ~ '\S')
);

-- Tenant-leading indexes (4.8). Global prompts have no organization, so the
-- tenant of a prompt is coalesce(organization_id, nil uuid): the
-- organization, or the nil uuid for global prompts (visible to every active
-- user, so reading them reveals nothing). The select policy starts with
-- "coalesce(organization_id, nil) = ANY (ARRAY[own organization, nil])",
-- which bounds every scan of these indexes to the caller's tenant and the
-- global prompts whatever else the query says.
--
-- One index per branch of get_effective_system_prompts, each ordered as it
-- returns. The organization branch under RLS: the enum test scope =
-- 'organization' is not leakproof, so below the policy it cannot be an index
-- condition; a partial index's predicate needs no leakproof operator.
CREATE INDEX system_prompts_user_id_idx ON public.system_prompts
    (coalesce(organization_id, '00000000-0000-0000-0000-000000000000'::uuid), user_id, priority DESC, created_at)
    WHERE user_id IS NOT NULL;
CREATE INDEX system_prompts_organization_scope_idx ON public.system_prompts
    (coalesce(organization_id, '00000000-0000-0000-0000-000000000000'::uuid), priority DESC, created_at)
    WHERE scope = 'organization';
CREATE INDEX system_prompts_global_idx ON public.system_prompts (priority DESC, created_at) WHERE scope = 'global';
-- The foreign keys' lookups (ON DELETE of an organization or a user) by
-- equality only: hash indexes, which no range or ordered condition can use.
-- An equality probe on them can only confirm a value the caller already
-- guessed (a random uuid), which is the residual docs/side-channels.md names.
CREATE INDEX system_prompts_organization_id_hash ON public.system_prompts USING hash (organization_id);
CREATE INDEX system_prompts_user_id_hash ON public.system_prompts USING hash (user_id);
CREATE INDEX system_prompts_created_by_hash ON public.system_prompts USING hash (created_by);

COMMENT ON TABLE public.system_prompts IS 'Layered system prompts: global (no organization, no user), organization (organization only) or user (both).';
COMMENT ON COLUMN public.system_prompts.priority IS 'Higher comes first within a scope; ties go to the older prompt.';
COMMENT ON COLUMN public.system_prompts.template IS 'Optional template with {{variable}} placeholders, rendered by the library.';
COMMENT ON COLUMN public.system_prompts.created_by IS 'The user who created the prompt, if any (NULL for service-created prompts).';

-- 4.7 audit_logs --------------------------------------------------------------

CREATE TABLE public.audit_logs (
    id               uuid        NOT NULL DEFAULT gen_random_uuid(),
    "timestamp"      timestamptz NOT NULL DEFAULT now(),
    user_id          uuid,
    organization_id  uuid,
    action           text        NOT NULL,
    resource_type    text        NOT NULL,
    resource_id      text,
    details          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ip_address       inet,
    user_agent       text,
    success          boolean     NOT NULL DEFAULT true,
    error_message    text,
    -- Tenant-leading (4.8), and so not a primary key: platform events have no
    -- organization. Event ids are unique in any case (only the server makes them).
    CONSTRAINT audit_logs_organization_id_id_key UNIQUE NULLS NOT DISTINCT (organization_id, id, "timestamp"),
    CONSTRAINT audit_logs_action_not_blank CHECK (action ~ '\S' AND length(action) <= 200),
    CONSTRAINT audit_logs_resource_type_not_blank CHECK (resource_type ~ '\S' AND length(resource_type) <= 200),
    CONSTRAINT audit_logs_details_object CHECK (jsonb_typeof(details) = 'object')
) PARTITION BY RANGE ("timestamp");

CREATE INDEX audit_logs_organization_id_timestamp_idx ON public.audit_logs (organization_id, "timestamp" DESC, id DESC);
CREATE INDEX audit_logs_user_id_timestamp_idx ON public.audit_logs (organization_id, user_id, "timestamp" DESC) WHERE user_id IS NOT NULL;

CREATE TABLE public.audit_logs_default PARTITION OF public.audit_logs DEFAULT;

COMMENT ON TABLE public.audit_logs IS
    'Immutable audit trail, range-partitioned by month on "timestamp". Append-only for every role; retention drops whole partitions. No foreign keys: a log outlives what it names.';
COMMENT ON TABLE public.audit_logs_default IS 'Catch-all partition that stays empty: its trigger audit_logs_refuse_unpartitioned refuses events outside the monthly partitions.';
COMMENT ON COLUMN public.audit_logs."timestamp" IS 'When the event happened; set by the server for the application role.';
COMMENT ON COLUMN public.audit_logs.resource_id IS 'Identifier of the resource the event is about, as text.';
COMMENT ON COLUMN public.audit_logs.success IS 'Whether the audited action succeeded; error_message says why not.';

-- 4.8 Side channels: tenant-leading indexes, the tenant gate, statistics -------
--
-- A caller with raw SQL as agentapi_app sees only its tenant's rows, but how a
-- query ran can show what the policy hid (docs/side-channels.md). Comparison
-- operators such as uuid_lt are LEAKPROOF, so a caller's condition may run
-- below the policy: as an index condition, or as a filter before the policy's.
-- Then EXPLAIN ANALYZE's row counts and loops, pg_stat_*'s tuple counters and
-- the planner's estimates depend on other tenants' values. Three measures:
--
-- 1. Every index a caller's condition can reach leads with the tenant:
--    (organization_id, ...), and every select policy bounds organization_id
--    by equality, so every scan of such an index stays inside the tenant
--    (btree resolves the policy's and the caller's equalities on the leading
--    column before it reads anything). The exceptions, each needed and
--    documented as a residual channel: users' primary key (id) and its
--    (id, organization_id) key, which the identity helpers and the extension
--    look users up by; system_prompts' primary key; the expires_at indexes the
--    cleanup and the refresh workers scan across tenants; the audit
--    partitions' bounds. Unique values that must be global (slugs) are kept
--    on an expression that is not leakproof, which no caller condition can
--    turn into an index condition; equality-only lookups (foreign keys) use
--    hash indexes.
-- 2. The tenant gate. For a sequential scan the planner orders the quals; an
--    equality such as the policy's organization_id = (SELECT ...) goes into an
--    equivalence class and comes back as a filter after the caller's cheap
--    leakproof one, so the caller's condition runs on every hidden row first
--    and, when it matches none, the policy's InitPlan never runs ("loops 0").
--    So every select policy starts with the operator below: uuid equality
--    under another name, in no operator family, so it stays a plain qual of
--    the policy's security level and runs first. Its estimate is neqsel's
--    (about 1), so the planner's row estimates are unchanged.
-- 3. Statistics off (SET STATISTICS 0, section 14) for every tenant-value
--    column, so the planner's estimates for a caller's condition come from
--    defaults, not from other tenants' values.

CREATE OPERATOR agentapi_auth.=== (
    FUNCTION = pg_catalog.uuid_eq,
    LEFTARG = uuid,
    RIGHTARG = uuid,
    RESTRICT = neqsel
);

COMMENT ON OPERATOR agentapi_auth.=== (uuid, uuid) IS
    'The tenant gate: uuid equality that the planner keeps as the first qual of a select policy (no operator family, so no equivalence class); see section 4.8.';

-- -----------------------------------------------------------------------------
-- 5. Request context helpers (agentapi_auth)
-- -----------------------------------------------------------------------------

-- 5.1 The authenticated request context -------------------------------------
--
-- A user id is not a secret: colleagues see each other's ids, and ids leak
-- through side channels. So once a context key exists, app.user_id counts only
-- together with app.context_token, a short-lived token for exactly that id:
--
--     v1.<key id>.<expiry, Unix seconds>.<mac>
--     mac = hex(HMAC-SHA256(key, 'agentapi-context-v1.' || <user id, lower-case
--                                 canonical text> || '.' || <expiry>))
--     key id = the first 16 hex digits of sha256(key)
--
-- made by the library in-process (it holds a copy of the key from
-- AGENTAPI_CONTEXT_KEY) or by agentapi_auth.sign_context() for agentapi_service.
-- A token counts while its expiry is in the future (at the transaction's start,
-- now()) but at most one day ahead, and while its key exists and has not
-- expired. Keys live in agentapi_auth.context_keys, which only agentapi_owner
-- (and so only definer code) can read: the caller cannot forge a token from SQL.
-- Without any key the bare app.user_id is trusted, as the seed describes, and
-- `agentapi-db verify` reports that. docs/security.md has the full rules.

CREATE TABLE agentapi_auth.context_keys (
    id          text        PRIMARY KEY,
    secret      bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    CONSTRAINT context_keys_secret_length CHECK (octet_length(secret) = 32),
    CONSTRAINT context_keys_id_derived CHECK (id = substr(encode(sha256(secret), 'hex'), 1, 16))
);
ALTER TABLE agentapi_auth.context_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentapi_auth.context_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY context_keys_owner ON agentapi_auth.context_keys TO agentapi_owner USING (true) WITH CHECK (true);
REVOKE ALL ON agentapi_auth.context_keys FROM PUBLIC;

COMMENT ON TABLE agentapi_auth.context_keys IS
    'Keys of the authenticated request context (HMAC-SHA256, 32 bytes). Readable only by agentapi_owner, i.e. by the definer helpers; the newest unexpired key signs, every unexpired key verifies (rotation overlap). Made only by agentapi_auth.context_key_create().';
COMMENT ON COLUMN agentapi_auth.context_keys.id IS 'The first 16 hex digits of sha256(secret); named in every token.';
COMMENT ON COLUMN agentapi_auth.context_keys.secret IS 'The 32-byte HMAC key, generated in the server; never sent to it.';
COMMENT ON COLUMN agentapi_auth.context_keys.expires_at IS 'After this, tokens of this key no longer count (set by rotation: the overlap). NULL: current.';
COMMENT ON POLICY context_keys_owner ON agentapi_auth.context_keys IS 'Only the owner (the definer helpers) reads or writes context keys.';

-- The acting user as the caller asked for it: app.user_id parsed strictly as a
-- canonical UUID, and, once a context key exists, only with a valid token for
-- exactly that id (app.context_token). Anything else gives NULL, which matches
-- no row. SECURITY DEFINER to read the keys. The MACs are compared through
-- sha256 of each side, so the comparison's timing says nothing about the
-- expected MAC.
CREATE FUNCTION agentapi_auth.requested_user_id()
RETURNS uuid
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    raw text := pg_catalog.current_setting('app.user_id', true);
    requested uuid;
    token text[];
    expiry bigint;
BEGIN
    -- The LIKE fixes the length and the four hyphens' places, the regular
    -- expression allows only hex digits between them (tests/test_functions.py
    -- checks this accepts exactly the canonical forms).
    IF raw IS NULL OR raw NOT LIKE '________-____-____-____-____________'
       OR raw !~ '^[0-9A-Fa-f]+-[0-9A-Fa-f]+-[0-9A-Fa-f]+-[0-9A-Fa-f]+-[0-9A-Fa-f]+$' THEN
        RETURN NULL;
    END IF;
    requested := raw::uuid;
    IF NOT EXISTS (SELECT 1 FROM agentapi_auth.context_keys) THEN
        RETURN requested;  -- no key configured: the seed's bare app.user_id (verify reports it)
    END IF;
    token := pg_catalog.string_to_array(pg_catalog.current_setting('app.context_token', true), '.');
    IF pg_catalog.cardinality(token) IS DISTINCT FROM 4 OR token[1] <> 'v1'
       OR token[2] !~ '^[0-9a-f]{16}$' OR token[3] !~ '^[0-9]{1,11}$' OR token[4] !~ '^[0-9a-f]{64}$' THEN
        RETURN NULL;
    END IF;
    expiry := token[3]::bigint;
    IF pg_catalog.to_timestamp(expiry) <= now() OR pg_catalog.to_timestamp(expiry) > now() + interval '1 day' THEN
        RETURN NULL;
    END IF;
    IF EXISTS (
        SELECT 1
          FROM agentapi_auth.context_keys AS k
         WHERE k.id = token[2]
           AND (k.expires_at IS NULL OR k.expires_at > now())
           AND pg_catalog.sha256(pg_catalog.convert_to(token[4], 'UTF8'))
               = pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.encode(extensions.hmac(
                     pg_catalog.convert_to('agentapi-context-v1.' || requested::text || '.' || token[3], 'UTF8'),
                     k.secret, 'sha256'), 'hex'), 'UTF8'))) THEN
        RETURN requested;
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION agentapi_auth.requested_user_id() IS
    'The transaction''s app.user_id parsed strictly as a canonical UUID, and, once a context key exists, only with a valid unexpired app.context_token for exactly that id; else NULL. Not trusted by itself: see agentapi_auth.user_id().';

-- A token for user_id, valid for valid_for (at most one day), signed with the
-- newest unexpired key. For agentapi_service (the library signs in-process).
CREATE FUNCTION agentapi_auth.sign_context(user_id uuid, valid_for interval)
RETURNS text
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record;
    expiry bigint;
BEGIN
    IF user_id IS NULL OR valid_for IS NULL OR valid_for <= interval '0' OR valid_for > interval '1 day' THEN
        RAISE EXCEPTION 'sign_context needs a user id and a validity between 0 and 1 day'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT c.id, c.secret INTO k
      FROM agentapi_auth.context_keys AS c
     WHERE c.expires_at IS NULL OR c.expires_at > now()
     ORDER BY c.expires_at IS NULL DESC, c.created_at DESC
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no context key is configured'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'agentapi-db context-key create';
    END IF;
    expiry := pg_catalog.floor(pg_catalog.date_part('epoch', now() + valid_for))::bigint;
    RETURN 'v1.' || k.id || '.' || expiry || '.' || pg_catalog.encode(extensions.hmac(
        pg_catalog.convert_to('agentapi-context-v1.' || user_id::text || '.' || expiry, 'UTF8'),
        k.secret, 'sha256'), 'hex');
END
$$;

COMMENT ON FUNCTION agentapi_auth.sign_context(uuid, interval) IS
    'A context token (app.context_token) for user_id, valid for valid_for (0 < valid_for <= 1 day), signed with the newest unexpired context key. For agentapi_service.';

-- Makes a new context key in the server (gen_random_bytes) and returns it once,
-- so the key never travels to the server in a statement or parameter. With
-- overlap, every older key that has not expired yet expires after overlap
-- (rotation); without (NULL), older keys stay valid. For agentapi_owner
-- (`agentapi-db context-key create|rotate`).
CREATE FUNCTION agentapi_auth.context_key_create(overlap interval DEFAULT NULL)
RETURNS TABLE (key_id text, secret bytea)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    made bytea := extensions.gen_random_bytes(32);
BEGIN
    IF overlap IS NOT NULL AND (overlap < interval '0' OR overlap > interval '7 days') THEN
        RAISE EXCEPTION 'overlap must be between 0 and 7 days' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF overlap IS NOT NULL THEN
        UPDATE agentapi_auth.context_keys AS c SET expires_at = now() + overlap
         WHERE c.expires_at IS NULL OR c.expires_at > now() + overlap;
    END IF;
    DELETE FROM agentapi_auth.context_keys AS c WHERE c.expires_at < now() - interval '1 day';
    INSERT INTO agentapi_auth.context_keys (id, secret)
    VALUES (pg_catalog.substr(pg_catalog.encode(pg_catalog.sha256(made), 'hex'), 1, 16), made);
    RETURN QUERY SELECT pg_catalog.substr(pg_catalog.encode(pg_catalog.sha256(made), 'hex'), 1, 16), made;
END
$$;

COMMENT ON FUNCTION agentapi_auth.context_key_create(interval) IS
    'Generates a context key in the server and returns it once (id, secret). overlap: older unexpired keys expire after it (rotation; NULL keeps them). Expired keys older than a day are deleted. For agentapi_owner.';

-- The acting user, their organization, whether they are an admin, and their
-- email, all from `users`: agentapi_auth.user_id(), organization_id(),
-- admin_organization_id() and user_email(). They come in two implementations
-- that give the same answers, and agentapi_auth.use_identity_cache() below
-- installs one or the other under the same names (policies refer to the
-- functions, not to their bodies):
--
--   * portable (any PostgreSQL 15+): SECURITY DEFINER plpgsql functions that
--     look the user up on every call, i.e. once per policy reference and
--     statement (about a dozen lookups for one session start). They run as
--     their owner (agentapi_owner), whose owner policy on users is
--     unconditional, so they never recurse into the users policies.
--   * identity cache (when the extension agentapi_identity is installed,
--     section 2): inlined SQL calls of the extension's C functions. They read
--     the same row by the same rule, with the statement's snapshot, but look it
--     up through the index once per transaction and app.user_id value; later
--     statements recheck the remembered row version (a heap fetch), and calls
--     under an unchanged snapshot reuse the answer. A change to users is seen
--     exactly when the portable helpers would see it. See
--     ext/agentapi_identity/README.md.
CREATE FUNCTION agentapi_auth.use_identity_cache(enabled boolean)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF enabled IS NULL THEN
        RAISE EXCEPTION 'use_identity_cache needs true (the identity cache) or false (portable helpers)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF enabled THEN
        IF (SELECT n.nspname FROM pg_catalog.pg_extension AS e
              JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
             WHERE e.extname = 'agentapi_identity') IS DISTINCT FROM 'agentapi_auth' THEN
            RAISE EXCEPTION 'the extension agentapi_identity is not installed in the schema agentapi_auth of this database'
                USING ERRCODE = 'undefined_object',
                      HINT = 'Build and install ext/agentapi_identity on the server, then, as a superuser: CREATE EXTENSION agentapi_identity WITH SCHEMA agentapi_auth';
        END IF;
        CREATE OR REPLACE FUNCTION agentapi_auth.user_id() RETURNS uuid
            LANGUAGE sql STABLE RETURN agentapi_auth.cached_user_id();
        CREATE OR REPLACE FUNCTION agentapi_auth.organization_id() RETURNS uuid
            LANGUAGE sql STABLE RETURN agentapi_auth.cached_organization_id();
        CREATE OR REPLACE FUNCTION agentapi_auth.admin_organization_id() RETURNS uuid
            LANGUAGE sql STABLE RETURN agentapi_auth.cached_admin_organization_id();
        CREATE OR REPLACE FUNCTION agentapi_auth.user_email() RETURNS text
            LANGUAGE sql STABLE RETURN agentapi_auth.cached_user_email();
        RETURN true;
    END IF;

    CREATE OR REPLACE FUNCTION agentapi_auth.user_id() RETURNS uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        requested uuid := agentapi_auth.requested_user_id();
        found uuid;
    BEGIN
        IF requested IS NULL THEN
            RETURN NULL;
        END IF;
        SELECT u.id INTO found FROM public.users AS u WHERE u.id = requested AND u.is_active;
        RETURN found;
    END
    $$;

    CREATE OR REPLACE FUNCTION agentapi_auth.organization_id() RETURNS uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        requested uuid := agentapi_auth.requested_user_id();
        found uuid;
    BEGIN
        IF requested IS NULL THEN
            RETURN NULL;
        END IF;
        SELECT u.organization_id INTO found FROM public.users AS u WHERE u.id = requested AND u.is_active;
        RETURN found;
    END
    $$;

    CREATE OR REPLACE FUNCTION agentapi_auth.admin_organization_id() RETURNS uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        requested uuid := agentapi_auth.requested_user_id();
        found uuid;
    BEGIN
        IF requested IS NULL THEN
            RETURN NULL;
        END IF;
        SELECT u.organization_id INTO found
          FROM public.users AS u
         WHERE u.id = requested AND u.is_active AND u.role = 'admin';
        RETURN found;
    END
    $$;

    CREATE OR REPLACE FUNCTION agentapi_auth.user_email() RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        requested uuid := agentapi_auth.requested_user_id();
        found text;
    BEGIN
        IF requested IS NULL THEN
            RETURN NULL;
        END IF;
        SELECT u.email INTO found FROM public.users AS u WHERE u.id = requested AND u.is_active;
        RETURN found;
    END
    $$;

    RETURN false;
END
$fn$;

COMMENT ON FUNCTION agentapi_auth.use_identity_cache(boolean) IS
    'Installs the identity helpers: true for the identity cache of the extension agentapi_identity (which must be installed in agentapi_auth), false for the portable SECURITY DEFINER lookups. Returns the mode now in use. For agentapi_owner (agentapi-db identity-cache).';

DO $$
BEGIN
    PERFORM agentapi_auth.use_identity_cache(
        lower(coalesce(pg_catalog.current_setting('agentapi.identity_cache', true), '')) NOT IN ('off', 'false', 'no', '0')
        AND EXISTS (SELECT 1 FROM pg_catalog.pg_extension AS e
                     WHERE e.extname = 'agentapi_identity'
                       AND e.extnamespace = 'agentapi_auth'::pg_catalog.regnamespace));
END
$$;

COMMENT ON FUNCTION agentapi_auth.user_id() IS
    'The acting user: app.user_id if it names an existing, active user; otherwise NULL (sees no rows).';
COMMENT ON FUNCTION agentapi_auth.organization_id() IS
    'The acting user''s organization, from users; NULL when there is no active acting user.';
COMMENT ON FUNCTION agentapi_auth.admin_organization_id() IS
    'The acting user''s organization if they are an active admin; NULL otherwise. Policies compare organization_id to it for admin rights.';
COMMENT ON FUNCTION agentapi_auth.user_email() IS
    'The acting user''s current email; lets the member self-update policy keep it unchanged.';

-- -----------------------------------------------------------------------------
-- 6. Triggers
-- -----------------------------------------------------------------------------

CREATE FUNCTION public.update_updated_at_column()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION public.update_updated_at_column() IS
    'BEFORE UPDATE trigger: sets updated_at to the transaction''s time on every table that has it.';

CREATE TRIGGER organizations_set_updated_at BEFORE UPDATE ON public.organizations
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();
CREATE TRIGGER users_set_updated_at BEFORE UPDATE ON public.users
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();
CREATE TRIGGER mcp_configurations_set_updated_at BEFORE UPDATE ON public.mcp_configurations
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();
CREATE TRIGGER mcp_oauth_tokens_set_updated_at BEFORE UPDATE ON public.mcp_oauth_tokens
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();
CREATE TRIGGER system_prompts_set_updated_at BEFORE UPDATE ON public.system_prompts
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

-- The scope of an MCP configuration (its organization and owner) is fixed at
-- creation, for every role: otherwise tokens issued for it could end up on a
-- configuration their user can no longer see.
CREATE FUNCTION public.mcp_configurations_keep_scope()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.organization_id IS DISTINCT FROM OLD.organization_id
       OR NEW.user_id IS DISTINCT FROM OLD.user_id THEN
        RAISE EXCEPTION 'the scope of an MCP configuration cannot change'
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'mcp_configurations_scope_immutable',
                  HINT = 'Create a new configuration in the other scope instead.';
    END IF;
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION public.mcp_configurations_keep_scope() IS
    'BEFORE UPDATE trigger on mcp_configurations: organization_id and user_id never change.';

CREATE TRIGGER mcp_configurations_keep_scope
    BEFORE UPDATE OF organization_id, user_id ON public.mcp_configurations
    FOR EACH ROW EXECUTE FUNCTION public.mcp_configurations_keep_scope();

-- A token's configuration must be one the token's user can see: org-wide in
-- their organization (guaranteed by the composite foreign key) or their own.
-- SECURITY DEFINER so the answer does not depend on who inserts the token.
CREATE FUNCTION public.mcp_oauth_tokens_check_configuration()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    config_user uuid;
    config_auth public.auth_type;
BEGIN
    SELECT c.user_id, c.auth_type INTO config_user, config_auth
      FROM public.mcp_configurations AS c
     WHERE c.id = NEW.mcp_configuration_id AND c.organization_id = NEW.organization_id;
    IF NOT FOUND THEN
        RETURN NULL;  -- the foreign key reports the missing configuration
    END IF;
    IF config_user IS NOT NULL AND config_user <> NEW.user_id THEN
        RAISE EXCEPTION 'an OAuth token''s configuration must be organization-wide or the token user''s own'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'mcp_oauth_tokens_configuration_visible';
    END IF;
    IF config_auth <> 'oauth' THEN
        RAISE EXCEPTION 'OAuth tokens can only be stored for a configuration whose auth_type is oauth'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'mcp_oauth_tokens_configuration_oauth';
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION public.mcp_oauth_tokens_check_configuration() IS
    'AFTER INSERT/UPDATE constraint trigger on mcp_oauth_tokens: the configuration is visible to the token''s user and uses OAuth.';

-- An AFTER constraint trigger, so it runs only once the row has passed the
-- caller's RLS checks: a BEFORE trigger would answer questions about another
-- tenant's configurations before RLS refused the row.
CREATE CONSTRAINT TRIGGER mcp_oauth_tokens_check_configuration
    AFTER INSERT OR UPDATE OF user_id, organization_id, mcp_configuration_id ON public.mcp_oauth_tokens
    FOR EACH ROW EXECUTE FUNCTION public.mcp_oauth_tokens_check_configuration();

-- Audit rows are never updated or deleted, by anyone. Grants and policies
-- already refuse it; this trigger also stops roles that bypass them.
CREATE FUNCTION public.audit_logs_prevent_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'audit_logs is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Old events leave only by dropping whole partitions (agentapi-db audit retention).';
END
$$;

COMMENT ON FUNCTION public.audit_logs_prevent_change() IS
    'Trigger on audit_logs that refuses UPDATE, DELETE and TRUNCATE for every role.';

CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE ON public.audit_logs
    FOR EACH ROW EXECUTE FUNCTION public.audit_logs_prevent_change();
CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON public.audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION public.audit_logs_prevent_change();
-- TRUNCATE of a partition does not fire the parent's statement trigger.
CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON public.audit_logs_default
    FOR EACH STATEMENT EXECUTE FUNCTION public.audit_logs_prevent_change();

-- An event whose "timestamp" has no monthly partition (far in the future, or older
-- than the oldest kept month) is refused rather than parked in audit_logs_default:
-- a row there for a month would stop audit_ensure_partitions() from ever creating
-- that month. Only rows routed to the default partition fire this trigger, so
-- events in their month pay nothing. agentapi_service may set "timestamp";
-- agentapi_app cannot (the server's now() always has a partition while upkeep runs).
CREATE FUNCTION public.audit_logs_refuse_unpartitioned()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first_part text;
    last_part text;
BEGIN
    SELECT pg_catalog.min(c.relname::text), pg_catalog.max(c.relname::text)
      INTO first_part, last_part
      FROM pg_catalog.pg_inherits AS i
      JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'public.audit_logs'::pg_catalog.regclass
       AND c.relname ~ '^audit_logs_y[0-9]{4}m[0-9]{2}$';
    RAISE EXCEPTION 'audit event timestamp % is outside the monthly partitions of audit_logs', NEW."timestamp"
        USING ERRCODE = 'check_violation',
              DETAIL = pg_catalog.format('The partitions run from %s to %s.',
                                         coalesce(first_part, '(none)'), coalesce(last_part, '(none)')),
              HINT = 'Record events at their real time; for a month ahead of the partitions run audit_ensure_partitions(months_ahead, months_back) first (agentapi_service).';
END
$$;

COMMENT ON FUNCTION public.audit_logs_refuse_unpartitioned() IS
    'BEFORE INSERT row trigger on audit_logs_default: refuses an event whose timestamp has no monthly partition, naming the range that exists.';

CREATE TRIGGER audit_logs_refuse_unpartitioned BEFORE INSERT ON public.audit_logs_default
    FOR EACH ROW EXECUTE FUNCTION public.audit_logs_refuse_unpartitioned();

-- -----------------------------------------------------------------------------
-- 7. Row-level security
--
-- Policies for agentapi_app implement the contract's matrix; agentapi_owner
-- and agentapi_service have explicit unconditional policies of their own
-- (<table>_owner, <table>_service), except on audit_logs, where they may only
-- read and append. No role of the schema has BYPASSRLS: managed PostgreSQL
-- does not let customers grant it, and a policy is narrower than an attribute
-- (it names one role and the tables it covers).
--
-- Shape for speed (measured in bench/README.md): where a row belongs to an
-- organization, the policy starts with "organization_id = (SELECT
-- agentapi_auth.organization_id()) AND (...)" rather than an OR of a user test
-- and an admin test. The same rows pass (a session's, config's or event's user
-- is in its organization by the composite foreign keys), but the planner gets
-- an index condition on organization_id, so an admin page is an ordered index
-- range scan of one tenant instead of a bitmap OR and a sort.
--
-- Every InitPlan is evaluated on its own, the first time a row needs it, and
-- app.user_id can change between two of them within one statement (set_config
-- in an outer join arm). So each arm of a policy must hold by itself, for
-- whichever acting user its own helper saw: the user arm uses user_id() (which
-- checks that the user exists and is active), never the bare parsed
-- requested_user_id(); the admin arm compares the row's organization with
-- admin_organization_id(). A review showed that a cheaper shape
-- ("user_id = requested_user_id() OR admin_organization_id() IS NOT NULL",
-- sound only while app.user_id stays fixed) let a member combine their own id
-- with an admin id of another organization, or with an inactive colleague's id,
-- in one statement (tests/test_security_regressions.py keeps it out).
-- The admin arm is "coalesce(organization_id = admin_organization_id(), false)":
-- not an index condition, so the planner keeps the ordered index range scan a
-- keyset page needs (page 10 of a large tenant's sessions: 50 rows read) instead
-- of a BitmapOr of two arms and a sort; and, unlike IS NOT DISTINCT FROM, its
-- default selectivity does not make the planner expect that only a sliver of
-- the tenant passes (which made it read and sort the whole tenant: 21 ms
-- against 0.6 ms for a 50-row page at 10 % of the benchmark's scale).
--
-- Considered and rejected (measured, bench/README.md): a per-transaction cache
-- of (user, organization, role) in a setting, authenticated with a per-session
-- secret held in currval() of owner-only sequences. Its hit costs ~4 us against
-- ~6 us for the lookup, but the first call of each transaction (secret, MAC,
-- set_config) costs ~40 us more, and a session start makes under ten definer
-- calls: a net loss, for more code that must stay unforgeable. The identity
-- cache of ext/agentapi_identity (section 5) does the same in backend memory,
-- where no secret is needed, and is what the benchmark's target rests on.
-- -----------------------------------------------------------------------------

ALTER TABLE public.organizations      ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.organizations      FORCE ROW LEVEL SECURITY;
ALTER TABLE public.users              ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.users              FORCE ROW LEVEL SECURITY;
ALTER TABLE public.user_sessions      ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.user_sessions      FORCE ROW LEVEL SECURITY;
ALTER TABLE public.mcp_configurations ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.mcp_configurations FORCE ROW LEVEL SECURITY;
ALTER TABLE public.mcp_oauth_tokens   ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.mcp_oauth_tokens   FORCE ROW LEVEL SECURITY;
ALTER TABLE public.system_prompts     ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.system_prompts     FORCE ROW LEVEL SECURITY;
ALTER TABLE public.audit_logs         ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.audit_logs         FORCE ROW LEVEL SECURITY;
ALTER TABLE public.audit_logs_default ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.audit_logs_default FORCE ROW LEVEL SECURITY;

-- 7.1 organizations -----------------------------------------------------------

CREATE POLICY organizations_owner ON public.organizations TO agentapi_owner USING (true) WITH CHECK (true);
CREATE POLICY organizations_service ON public.organizations TO agentapi_service USING (true) WITH CHECK (true);
CREATE POLICY organizations_select ON public.organizations FOR SELECT TO agentapi_app
    USING (id OPERATOR(agentapi_auth.===) ANY (ARRAY[(SELECT agentapi_auth.organization_id())])
           AND id = (SELECT agentapi_auth.organization_id()));
CREATE POLICY organizations_update_admin ON public.organizations FOR UPDATE TO agentapi_app
    USING (id = (SELECT agentapi_auth.admin_organization_id()))
    WITH CHECK (id = (SELECT agentapi_auth.admin_organization_id()));

COMMENT ON POLICY organizations_service ON public.organizations IS 'agentapi_service (provisioning and maintenance) sees and changes every tenant''s rows; no BYPASSRLS needed.';
COMMENT ON POLICY organizations_owner ON public.organizations IS 'The owner (migrations) sees and changes every row.';
COMMENT ON POLICY organizations_select ON public.organizations IS 'Members and admins read their own organization.';
COMMENT ON POLICY organizations_update_admin ON public.organizations IS 'Admins update their own organization; nobody in the app creates or deletes one.';

-- 7.2 users -------------------------------------------------------------------

CREATE POLICY users_owner ON public.users TO agentapi_owner USING (true) WITH CHECK (true);
CREATE POLICY users_service ON public.users TO agentapi_service USING (true) WITH CHECK (true);
CREATE POLICY users_select ON public.users FOR SELECT TO agentapi_app
    USING (organization_id OPERATOR(agentapi_auth.===) ANY (ARRAY[(SELECT agentapi_auth.organization_id())])
           AND organization_id = (SELECT agentapi_auth.organization_id()));
CREATE POLICY users_insert_admin ON public.users FOR INSERT TO agentapi_app
    WITH CHECK (organization_id = (SELECT agentapi_auth.admin_organization_id()));
-- One UPDATE policy with two arms, not two permissive policies (lint
-- multiple_permissive_policies): PostgreSQL ORs permissive policies' USING
-- clauses and, separately, their WITH CHECK clauses, which is exactly this.
CREATE POLICY users_update ON public.users FOR UPDATE TO agentapi_app
    USING (organization_id = (SELECT agentapi_auth.admin_organization_id())
           OR id = (SELECT agentapi_auth.user_id()))
    WITH CHECK (
        -- admin arm: any user of the admin's own organization
        organization_id = (SELECT agentapi_auth.admin_organization_id())
        -- self arm: a member's own row, keeping role, organization, email, active flag
        OR (id = (SELECT agentapi_auth.user_id())
            AND organization_id = (SELECT agentapi_auth.organization_id())
            AND role = 'user'
            AND is_active
            AND email = (SELECT agentapi_auth.user_email()))
    );
CREATE POLICY users_delete_admin ON public.users FOR DELETE TO agentapi_app
    USING (organization_id = (SELECT agentapi_auth.admin_organization_id()));

COMMENT ON POLICY users_service ON public.users IS 'agentapi_service (provisioning and maintenance) sees and changes every tenant''s rows; no BYPASSRLS needed.';
COMMENT ON POLICY users_owner ON public.users IS 'The owner sees every user; the agentapi_auth helpers read users through it.';
COMMENT ON POLICY users_select ON public.users IS 'Everyone reads the users of their own organization.';
COMMENT ON POLICY users_insert_admin ON public.users IS 'Admins create users in their own organization.';
COMMENT ON POLICY users_update ON public.users IS
    'Admins update users of their own organization (organization_id is not updatable by the app at all); a member updates their own row, keeping role, organization, email and active flag, which with the column grants leaves metadata and last_login_at.';
COMMENT ON POLICY users_delete_admin ON public.users IS 'Admins delete users of their own organization.';

-- 7.3 user_sessions -----------------------------------------------------------

CREATE POLICY user_sessions_owner ON public.user_sessions TO agentapi_owner USING (true) WITH CHECK (true);
CREATE POLICY user_sessions_service ON public.user_sessions TO agentapi_service USING (true) WITH CHECK (true);
CREATE POLICY user_sessions_select ON public.user_sessions FOR SELECT TO agentapi_app
    USING (organization_id OPERATOR(agentapi_auth.===) ANY (ARRAY[(SELECT agentapi_auth.organization_id())])
           AND organization_id = (SELECT agentapi_auth.organization_id())
           AND (user_id = (SELECT agentapi_auth.user_id())
                OR coalesce(organization_id = (SELECT agentapi_auth.admin_organization_id()), false)));
CREATE POLICY user_sessions_insert_own ON public.user_sessions FOR INSERT TO agentapi_app
    WITH CHECK (user_id = (SELECT agentapi_auth.user_id()));
CREATE POLICY user_sessions_update_own ON public.user_sessions FOR UPDATE TO agentapi_app
    USING (user_id = (SELECT agentapi_auth.user_id()))
    WITH CHECK (user_id = (SELECT agentapi_auth.user_id()));
CREATE POLICY user_sessions_delete ON public.user_sessions FOR DELETE TO agentapi_app
    USING (organization_id = (SELECT agentapi_auth.organization_id())
           AND (user_id = (SELECT agentapi_auth.user_id())
                OR coalesce(organization_id = (SELECT agentapi_auth.admin_organization_id()), false)));

COMMENT ON POLICY user_sessions_service ON public.user_sessions IS 'agentapi_service (provisioning and maintenance) sees and changes every tenant''s rows; no BYPASSRLS needed.';
COMMENT ON POLICY user_sessions_owner ON public.user_sessions IS 'The owner sees and changes every session.';
COMMENT ON POLICY user_sessions_select ON public.user_sessions IS 'Users read their own sessions; admins read every session of their organization.';
COMMENT ON POLICY user_sessions_insert_own ON public.user_sessions IS 'Users create sessions for themselves (the composite foreign key fixes the organization).';
COMMENT ON POLICY user_sessions_update_own ON public.user_sessions IS 'Users update their own sessions only.';
COMMENT ON POLICY user_sessions_delete ON public.user_sessions IS 'Users delete their own sessions; admins revoke any session of their organization.';

-- 7.4 mcp_configurations ------------------------------------------------------

CREATE POLICY mcp_configurations_owner ON public.mcp_configurations TO agentapi_owner USING (true) WITH CHECK (true);
CREATE POLICY mcp_configurations_service ON public.mcp_configurations TO agentapi_service USING (true) WITH CHECK (true);
CREATE POLICY mcp_configurations_select ON public.mcp_configurations FOR SELECT TO agentapi_app
    USING (organization_id OPERATOR(agentapi_auth.===) ANY (ARRAY[(SELECT agentapi_auth.organization_id())])
           AND organization_id = (SELECT agentapi_auth.organization_id())
           AND (user_id IS NULL OR user_id = (SELECT agentapi_auth.user_id())));
CREATE POLICY mcp_configurations_insert ON public.mcp_configurations FOR INSERT TO agentapi_app
    WITH CHECK ((user_id IS NULL AND organization_id = (SELECT agentapi_auth.admin_organization_id()))
                OR user_id = (SELECT agentapi_auth.user_id()));
CREATE POLICY mcp_configurations_update ON public.mcp_configurations FOR UPDATE TO agentapi_app
    USING ((user_id IS NULL AND organization_id = (SELECT agentapi_auth.admin_organization_id()))
           OR user_id = (SELECT agentapi_auth.user_id()))
    WITH CHECK ((user_id IS NULL AND organization_id = (SELECT agentapi_auth.admin_organization_id()))
                OR user_id = (SELECT agentapi_auth.user_id()));
CREATE POLICY mcp_configurations_delete ON public.mcp_configurations FOR DELETE TO agentapi_app
    USING ((user_id IS NULL AND organization_id = (SELECT agentapi_auth.admin_organization_id()))
           OR user_id = (SELECT agentapi_auth.user_id()));

COMMENT ON POLICY mcp_configurations_service ON public.mcp_configurations IS 'agentapi_service (provisioning and maintenance) sees and changes every tenant''s rows; no BYPASSRLS needed.';
COMMENT ON POLICY mcp_configurations_owner ON public.mcp_configurations IS 'The owner sees and changes every configuration.';
COMMENT ON POLICY mcp_configurations_select ON public.mcp_configurations IS
    'Everyone reads their organization''s org-wide configs and their own personal ones; never another user''s personal config, admins included.';
COMMENT ON POLICY mcp_configurations_insert ON public.mcp_configurations IS 'Users create personal configs for themselves; admins also create org-wide configs of their organization.';
COMMENT ON POLICY mcp_configurations_update ON public.mcp_configurations IS 'Users update their personal configs; admins also their organization''s org-wide configs.';
COMMENT ON POLICY mcp_configurations_delete ON public.mcp_configurations IS 'Users delete their personal configs; admins also their organization''s org-wide configs.';

-- 7.5 mcp_oauth_tokens --------------------------------------------------------

CREATE POLICY mcp_oauth_tokens_owner ON public.mcp_oauth_tokens TO agentapi_owner USING (true) WITH CHECK (true);
CREATE POLICY mcp_oauth_tokens_service ON public.mcp_oauth_tokens TO agentapi_service USING (true) WITH CHECK (true);
CREATE POLICY mcp_oauth_tokens_own ON public.mcp_oauth_tokens TO agentapi_app
    USING (organization_id OPERATOR(agentapi_auth.===) ANY (ARRAY[(SELECT agentapi_auth.organization_id())])
           AND organization_id = (SELECT agentapi_auth.organization_id())
           AND user_id = (SELECT agentapi_auth.user_id()))
    WITH CHECK (user_id = (SELECT agentapi_auth.user_id()));

COMMENT ON POLICY mcp_oauth_tokens_service ON public.mcp_oauth_tokens IS 'agentapi_service (provisioning and maintenance) sees and changes every tenant''s rows; no BYPASSRLS needed.';
COMMENT ON POLICY mcp_oauth_tokens_owner ON public.mcp_oauth_tokens IS 'The owner sees and changes every token row.';
COMMENT ON POLICY mcp_oauth_tokens_own ON public.mcp_oauth_tokens IS
    'Users do everything on their own tokens and nothing on anyone else''s, admins included. Keys and the check trigger keep the configuration one they can see.';

-- 7.6 system_prompts ----------------------------------------------------------

CREATE POLICY system_prompts_owner ON public.system_prompts TO agentapi_owner USING (true) WITH CHECK (true);
CREATE POLICY system_prompts_service ON public.system_prompts TO agentapi_service USING (true) WITH CHECK (true);
CREATE POLICY system_prompts_select ON public.system_prompts FOR SELECT TO agentapi_app
    USING (coalesce(organization_id, '00000000-0000-0000-0000-000000000000'::uuid)
               = ANY (ARRAY[(SELECT agentapi_auth.organization_id()), '00000000-0000-0000-0000-000000000000'::uuid])
           AND ((scope = 'global' AND (SELECT agentapi_auth.organization_id()) IS NOT NULL)
                OR (scope = 'organization' AND organization_id = (SELECT agentapi_auth.organization_id()))
                OR (scope = 'user' AND user_id = (SELECT agentapi_auth.user_id()))));
CREATE POLICY system_prompts_insert ON public.system_prompts FOR INSERT TO agentapi_app
    WITH CHECK (((scope = 'user' AND user_id = (SELECT agentapi_auth.user_id()))
                 OR (scope = 'organization' AND organization_id = (SELECT agentapi_auth.admin_organization_id())))
                AND (created_by IS NULL OR created_by = (SELECT agentapi_auth.user_id())));
CREATE POLICY system_prompts_update ON public.system_prompts FOR UPDATE TO agentapi_app
    USING ((scope = 'user' AND user_id = (SELECT agentapi_auth.user_id()))
           OR (scope = 'organization' AND organization_id = (SELECT agentapi_auth.admin_organization_id())))
    WITH CHECK ((scope = 'user' AND user_id = (SELECT agentapi_auth.user_id()))
                OR (scope = 'organization' AND organization_id = (SELECT agentapi_auth.admin_organization_id())));
CREATE POLICY system_prompts_delete ON public.system_prompts FOR DELETE TO agentapi_app
    USING ((scope = 'user' AND user_id = (SELECT agentapi_auth.user_id()))
           OR (scope = 'organization' AND organization_id = (SELECT agentapi_auth.admin_organization_id())));

COMMENT ON POLICY system_prompts_service ON public.system_prompts IS 'agentapi_service (provisioning and maintenance) sees and changes every tenant''s rows; no BYPASSRLS needed.';
COMMENT ON POLICY system_prompts_owner ON public.system_prompts IS 'The owner sees and changes every prompt.';
-- A user prompt's organization is its user's (composite foreign key, and the
-- scope check makes both columns non-null), so its arm needs only user_id():
-- one helper call less on every session start.
COMMENT ON POLICY system_prompts_select ON public.system_prompts IS 'Active users read global prompts, their organization''s prompts and their own user prompts.';
COMMENT ON POLICY system_prompts_insert ON public.system_prompts IS
    'Users create their own user prompts; admins also organization prompts of their organization; global prompts are agentapi_service only. created_by, if set, is the acting user.';
COMMENT ON POLICY system_prompts_update ON public.system_prompts IS 'Users update their own user prompts; admins also their organization''s prompts.';
COMMENT ON POLICY system_prompts_delete ON public.system_prompts IS 'Users delete their own user prompts; admins also their organization''s prompts.';

-- 7.7 audit_logs --------------------------------------------------------------

CREATE POLICY audit_logs_owner_select ON public.audit_logs FOR SELECT TO agentapi_owner USING (true);
CREATE POLICY audit_logs_owner_insert ON public.audit_logs FOR INSERT TO agentapi_owner WITH CHECK (true);
CREATE POLICY audit_logs_service_select ON public.audit_logs FOR SELECT TO agentapi_service USING (true);
CREATE POLICY audit_logs_service_insert ON public.audit_logs FOR INSERT TO agentapi_service WITH CHECK (true);
CREATE POLICY audit_logs_select ON public.audit_logs FOR SELECT TO agentapi_app
    USING (organization_id OPERATOR(agentapi_auth.===) ANY (ARRAY[(SELECT agentapi_auth.organization_id())])
           AND organization_id = (SELECT agentapi_auth.organization_id())
           AND (user_id = (SELECT agentapi_auth.user_id())
                OR coalesce(organization_id = (SELECT agentapi_auth.admin_organization_id()), false)));
CREATE POLICY audit_logs_insert_self ON public.audit_logs FOR INSERT TO agentapi_app
    WITH CHECK (organization_id = (SELECT agentapi_auth.organization_id())
                AND user_id = (SELECT agentapi_auth.user_id()));

COMMENT ON POLICY audit_logs_owner_select ON public.audit_logs IS 'The owner reads every event (no UPDATE or DELETE policy exists for anyone).';
COMMENT ON POLICY audit_logs_owner_insert ON public.audit_logs IS 'The owner may append events.';
COMMENT ON POLICY audit_logs_service_select ON public.audit_logs IS 'agentapi_service reads every tenant''s events (export, retention, chain verification).';
COMMENT ON POLICY audit_logs_service_insert ON public.audit_logs IS 'agentapi_service appends events for any tenant; like everyone, it can neither update nor delete one.';
COMMENT ON POLICY audit_logs_select ON public.audit_logs IS 'Members read their own events in their organization; admins read all events of their organization.';
COMMENT ON POLICY audit_logs_insert_self ON public.audit_logs IS 'The application records events only about the acting user in their own organization.';

-- -----------------------------------------------------------------------------
-- 8. Functions
-- -----------------------------------------------------------------------------

-- Token encryption, format ag1 (docs/encryption.md). The LIBRARY ENCRYPTS AND
-- DECRYPTS IN THE APPLICATION PROCESS (agentapi_db.crypto) and never calls these
-- functions: they are for operators in psql, and read and write exactly what the
-- library does. Calling them sends the key to the server, where statement
-- logging, auto_explain or pg_stat_statements may record it: bind it, never
-- write it as a literal (`verify` warns when it sees one).
--
--   ag1:<kid>:<base64(iv || AES-256-CBC(enc_key, iv, token) || tag)>
--   kid     = first 8 bytes of HMAC-SHA256(key, 'agentapi-db/ag1/kid'), in hex
--   enc_key = HMAC-SHA256(key, 'agentapi-db/ag1/enc')
--   mac_key = HMAC-SHA256(key, 'agentapi-db/ag1/mac')
--   tag     = HMAC-SHA256(mac_key, 'ag1:<kid>:' || iv || ciphertext)
--
-- The key is the 256-bit secret itself (64 hex digits, or base64/base64url of
-- >= 32 bytes), as AGENTAPI_ENCRYPTION_KEY holds it. decrypt_token still reads
-- the previous format (OpenPGP from pgp_sym_encrypt with the key's 64-hex text
-- form as passphrase); rotate-key rewrites such values. A wrong key or corrupt
-- data raises 39000 "Wrong key or corrupt data", never a silent NULL.

-- The bytes of a key given as text: 64 hex digits, or base64/base64url (padded
-- or not) of at least 32 bytes, like AGENTAPI_ENCRYPTION_KEY. Raises 22023 for
-- anything shorter; the message never contains the key.
CREATE FUNCTION public.token_key_bytes(key text)
RETURNS bytea
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
AS $$
DECLARE
    k bytea;
BEGIN
    IF key IS NULL OR length(key) < 32 THEN
        RAISE EXCEPTION 'encryption key must be at least 32 characters (use a 256-bit random key)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF key ~ '^[0-9A-Fa-f]{64}$' THEN
        k := decode(key, 'hex');
    ELSE
        k := decode(rpad(translate(key, '-_=', '+/'), (length(rtrim(key, '=')) + 3) / 4 * 4, '='),
                    'base64');
    END IF;
    IF length(k) < 32 THEN
        RAISE EXCEPTION 'encryption key must carry at least 256 bits'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN k;
END
$$;

COMMENT ON FUNCTION public.token_key_bytes(text) IS
    'The bytes of an encryption key written as 64 hex digits or base64/base64url of >= 32 bytes; raises invalid_parameter_value otherwise. Used by encrypt_token and decrypt_token.';

CREATE FUNCTION public.encrypt_token(token text, key text)
RETURNS text
LANGUAGE plpgsql
VOLATILE
PARALLEL SAFE
AS $$
DECLARE
    k bytea;
    kid text;
    iv bytea;
    body bytea;
BEGIN
    IF token IS NULL THEN
        RETURN NULL;
    END IF;
    k := public.token_key_bytes(key);
    kid := encode(substr(extensions.hmac('agentapi-db/ag1/kid'::bytea, k, 'sha256'), 1, 8), 'hex');
    iv := extensions.gen_random_bytes(16);
    body := iv || extensions.encrypt_iv(convert_to(token, 'UTF8'),
                                        extensions.hmac('agentapi-db/ag1/enc'::bytea, k, 'sha256'),
                                        iv, 'aes-cbc/pad:pkcs');
    RETURN 'ag1:' || kid || ':' || translate(encode(
        body || extensions.hmac(convert_to('ag1:' || kid || ':', 'UTF8') || body,
                                extensions.hmac('agentapi-db/ag1/mac'::bytea, k, 'sha256'),
                                'sha256'),
        'base64'), E'\n', '');
END
$$;

-- Opens an ag1 ciphertext with the key bytes k; raises 39000 if the ciphertext
-- names another key id or fails its tag. Follows no data key (decrypt_token does).
CREATE FUNCTION public.token_open(encrypted_token text, k bytea)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
AS $$
DECLARE
    raw bytea;
    body bytea;
BEGIN
    IF substr(encrypted_token, 5, 17) IS DISTINCT FROM
       encode(substr(extensions.hmac('agentapi-db/ag1/kid'::bytea, k, 'sha256'), 1, 8), 'hex') || ':' THEN
        RAISE EXCEPTION 'Wrong key or corrupt data'
            USING ERRCODE = 'external_routine_invocation_exception',
                  DETAIL = 'the ciphertext names another key id';
    END IF;
    raw := decode(substr(encrypted_token, 22), 'base64');
    IF length(raw) < 64 OR (length(raw) - 48) % 16 <> 0 THEN
        RAISE EXCEPTION 'Wrong key or corrupt data' USING ERRCODE = 'external_routine_invocation_exception';
    END IF;
    body := substr(raw, 1, length(raw) - 32);
    -- Not a constant-time comparison: acceptable for an operator's session, where
    -- the caller already holds the key; the library compares in constant time.
    IF extensions.hmac(convert_to(left(encrypted_token, 21), 'UTF8') || body,
                       extensions.hmac('agentapi-db/ag1/mac'::bytea, k, 'sha256'), 'sha256')
       <> substr(raw, length(raw) - 31) THEN
        RAISE EXCEPTION 'Wrong key or corrupt data' USING ERRCODE = 'external_routine_invocation_exception';
    END IF;
    RETURN convert_from(extensions.decrypt_iv(substr(body, 17),
                                              extensions.hmac('agentapi-db/ag1/enc'::bytea, k, 'sha256'),
                                              substr(body, 1, 16), 'aes-cbc/pad:pkcs'), 'UTF8');
END
$$;

COMMENT ON FUNCTION public.token_open(text, bytea) IS
    'Opens an ag1 ciphertext with the given key bytes (no data-key look-up); raises 39000 on another key id or a failed tag. The inner step of decrypt_token.';

-- key is the key the value was encrypted with, or the master key that wraps
-- the organization data key it was encrypted with: then the data key is looked
-- up (under the caller's RLS) by the key id in the ciphertext, unwrapped with
-- key, and used. One level only: a wrapped key must be under key itself.
CREATE FUNCTION public.decrypt_token(encrypted_token text, key text)
RETURNS text
LANGUAGE plpgsql
STABLE
PARALLEL SAFE
AS $$
DECLARE
    k bytea;
    wrapped text;
BEGIN
    IF encrypted_token IS NULL THEN
        RETURN NULL;
    END IF;
    IF key IS NULL OR length(key) < 32 THEN
        RAISE EXCEPTION 'encryption key must be at least 32 characters (use a 256-bit random key)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF left(encrypted_token, 4) <> 'ag1:' THEN
        -- The previous format. Malformed base64 raises 22023, a wrong key 39000.
        RETURN extensions.pgp_sym_decrypt(decode(encrypted_token, 'base64'), key);
    END IF;
    k := public.token_key_bytes(key);
    IF substr(encrypted_token, 5, 16) IS DISTINCT FROM
       encode(substr(extensions.hmac('agentapi-db/ag1/kid'::bytea, k, 'sha256'), 1, 8), 'hex') THEN
        SELECT d.wrapped_key INTO wrapped
          FROM public.organization_data_keys AS d
         WHERE d.key_id = substr(encrypted_token, 5, 16);
        IF FOUND THEN
            k := decode(public.token_open(wrapped, k), 'hex');
        END IF;
    END IF;
    RETURN public.token_open(encrypted_token, k);
END
$$;

COMMENT ON FUNCTION public.encrypt_token(text, text) IS
    'For operators in psql: encrypts a token in the library''s ag1 format (AES-256-CBC + HMAC-SHA256, key id in the text). NULL in, NULL out. Two calls give different ciphertexts. Sends the key to the server: bind it, never a literal. The library never calls it.';
COMMENT ON FUNCTION public.decrypt_token(text, text) IS
    'Inverse of encrypt_token, and reader of the previous OpenPGP format; given the master key, it also opens values encrypted with an organization data key (looked up under the caller''s RLS). NULL in, NULL out. A wrong key or corrupt input raises 39000; it never returns a silent NULL. The library never calls it.';

-- During a key rotation a ciphertext may still be under the old key: try `key`,
-- and on "Wrong key or corrupt data" (39000) `old_key`. The library calls it only
-- while an old key is configured (the EXCEPTION block costs a subtransaction).
CREATE FUNCTION public.decrypt_token_any(encrypted_token text, key text, old_key text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
AS $$
BEGIN
    IF encrypted_token IS NULL THEN
        RETURN NULL;
    END IF;
    BEGIN
        RETURN public.decrypt_token(encrypted_token, key);
    EXCEPTION WHEN external_routine_invocation_exception THEN
        IF old_key IS NULL THEN
            RAISE;
        END IF;
    END;
    RETURN public.decrypt_token(encrypted_token, old_key);
END
$$;

COMMENT ON FUNCTION public.decrypt_token_any(text, text, text) IS
    'decrypt_token with key, falling back to old_key on a wrong key (39000); for reads during a key rotation. NULL in, NULL out; raises if neither key decrypts.';
GRANT EXECUTE ON FUNCTION public.decrypt_token_any(text, text, text) TO agentapi_app, agentapi_service;

-- Appends one audit event. SECURITY INVOKER: under agentapi_app the insert
-- policy only accepts the acting user and their organization.
CREATE FUNCTION public.log_audit_event(
    p_user_id         uuid,
    p_organization_id uuid,
    p_action          text,
    p_resource_type   text,
    p_resource_id     text,
    p_details         jsonb,
    p_ip_address      inet,
    p_user_agent      text,
    p_success         boolean DEFAULT true,
    p_error_message   text DEFAULT NULL
)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    new_id uuid;
BEGIN
    -- The id comes from the column default (nobody below the owner may supply one).
    INSERT INTO public.audit_logs (user_id, organization_id, action, resource_type, resource_id,
                                   details, ip_address, user_agent, success, error_message)
    VALUES (p_user_id, p_organization_id, p_action, p_resource_type, p_resource_id,
            coalesce(p_details, '{}'::jsonb), p_ip_address, p_user_agent,
            coalesce(p_success, true), p_error_message)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

COMMENT ON FUNCTION public.log_audit_event(uuid, uuid, text, text, text, jsonb, inet, text, boolean, text) IS
    'Appends one audit event and returns its id. Runs with the caller''s rights: as agentapi_app it can only record the acting user and their organization.';

-- Deletes expired sessions; returns how many. For agentapi_service (whose
-- policy sees every tenant); the CLI''s batched cleanup is preferred for large backlogs.
CREATE FUNCTION public.cleanup_expired_sessions()
RETURNS integer
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    deleted integer;
BEGIN
    DELETE FROM public.user_sessions WHERE expires_at <= now();
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

COMMENT ON FUNCTION public.cleanup_expired_sessions() IS
    'Deletes the sessions whose expires_at has passed and returns how many; EXECUTE is granted to agentapi_service only.';

-- Effective prompts of a user: user, then organization, then global; within
-- a scope by priority descending, then oldest first. Written as three
-- index-friendly branches. SECURITY INVOKER, and it requires the user to
-- belong to the organization, so it never returns another tenant's prompts
-- whatever ids it is given.
CREATE FUNCTION public.get_effective_system_prompts(p_user_id uuid, p_organization_id uuid)
RETURNS TABLE (
    id              uuid,
    scope           public.prompt_scope,
    organization_id uuid,
    user_id         uuid,
    content         text,
    priority        integer,
    template        text,
    created_at      timestamptz,
    precedence      bigint
)
LANGUAGE sql
STABLE
AS $$
    WITH member AS MATERIALIZED (
        SELECT 1 FROM public.users AS u
         WHERE u.id = p_user_id AND u.organization_id = p_organization_id
    ),
    layered AS (
        SELECT p.id, p.scope, p.organization_id, p.user_id, p.content, p.priority, p.template, p.created_at,
               1 AS tier
          FROM public.system_prompts AS p
         WHERE p.scope = 'user' AND p.user_id = p_user_id AND p.organization_id = p_organization_id
           AND p.enabled
        UNION ALL
        SELECT p.id, p.scope, p.organization_id, p.user_id, p.content, p.priority, p.template, p.created_at,
               2 AS tier
          FROM public.system_prompts AS p
         WHERE p.scope = 'organization' AND p.organization_id = p_organization_id
           AND p.enabled
        UNION ALL
        SELECT p.id, p.scope, p.organization_id, p.user_id, p.content, p.priority, p.template, p.created_at,
               3 AS tier
          FROM public.system_prompts AS p
         WHERE p.scope = 'global'
           AND p.enabled
    )
    SELECT l.id, l.scope, l.organization_id, l.user_id, l.content, l.priority, l.template, l.created_at,
           row_number() OVER (ORDER BY l.tier, l.priority DESC, l.created_at, l.id) AS precedence
      FROM layered AS l
     WHERE EXISTS (SELECT 1 FROM member)
     ORDER BY precedence
$$;

COMMENT ON FUNCTION public.get_effective_system_prompts(uuid, uuid) IS
    'Enabled prompts that apply to the user: user, then organization, then global; within a scope by priority descending, then oldest first (column precedence: 1, 2, ...). Empty unless the user belongs to the organization; respects the caller''s RLS.';

-- -----------------------------------------------------------------------------
-- 9. Audit partitions
-- -----------------------------------------------------------------------------

-- Creates the monthly partitions of audit_logs from `months_back` months ago
-- to `months_ahead` months ahead (both counted from the current month), if
-- missing. SECURITY DEFINER so that agentapi_service can run it from a job.
-- Each partition has RLS forced and no UPDATE/DELETE/TRUNCATE, even for its owner.
CREATE FUNCTION public.audit_ensure_partitions(months_ahead integer DEFAULT 3, months_back integer DEFAULT 0)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'  -- month boundaries must not depend on the caller's TimeZone
AS $$
DECLARE
    first_month date := (date_trunc('month', now()) - make_interval(months => months_back))::date;
    month_start date;
    month_end date;
    part_name text;
    created integer := 0;
    zero_column name;
    -- As stored (a validated number), copied as a quoted literal.
    parent_n_distinct text := (
        SELECT pg_catalog.substr(o, 12)
          FROM pg_catalog.pg_attribute AS a, pg_catalog.unnest(a.attoptions) AS o
         WHERE a.attrelid = 'public.audit_logs'::pg_catalog.regclass
           AND a.attname = 'organization_id' AND pg_catalog.starts_with(o, 'n_distinct='));
BEGIN
    IF months_ahead IS NULL OR months_back IS NULL OR months_ahead < 0 OR months_back < 0
       OR months_ahead > 120 OR months_back > 240 THEN
        RAISE EXCEPTION 'months_ahead must be 0..120 and months_back 0..240'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 0 .. months_back + months_ahead LOOP
        month_start := (first_month + make_interval(months => i))::date;
        month_end := (month_start + interval '1 month')::date;
        part_name := 'audit_logs_' || to_char(month_start, '"y"YYYY"m"MM');
        CONTINUE WHEN to_regclass(pg_catalog.format('public.%I', part_name)) IS NOT NULL;
        -- Read through the parent: the owner's SELECT policy is on audit_logs, and a
        -- partition queried by name has FORCE RLS and no policy, so it looks empty.
        -- This month has no partition yet, so its rows can only be in the default one.
        -- audit_logs_default refuses new rows (audit_logs_refuse_unpartitioned), so
        -- this only finds events stored before that: report the month and go on with
        -- the others, so that one stray event never stops upkeep for good.
        IF EXISTS (SELECT 1 FROM public.audit_logs AS d
                    WHERE d."timestamp" >= month_start AND d."timestamp" < month_end) THEN
            RAISE WARNING 'audit_logs_default holds events for %; % not created, the other months are', month_start, part_name
                USING ERRCODE = 'object_in_use',
                      HINT = 'Export those events, then retire audit_logs_default by hand; see docs/security.md.';
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format(
            'CREATE TABLE public.%I PARTITION OF public.audit_logs FOR VALUES FROM (%L) TO (%L)',
            part_name, month_start::timestamptz, month_end::timestamptz);
        EXECUTE pg_catalog.format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', part_name);
        EXECUTE pg_catalog.format('ALTER TABLE public.%I FORCE ROW LEVEL SECURITY', part_name);
        -- The current month's partition grows all month and its newest timestamps
        -- fall past its histogram; analyze it after 0.5% change, not the default
        -- 10%, or "last 7 days" admin pages plan on stale statistics (bench/README.md).
        EXECUTE pg_catalog.format(
            'ALTER TABLE public.%I SET (autovacuum_analyze_scale_factor = 0.005)', part_name);
        -- The tenant estimate pinned by tune_tenant_statistics() (section 12.4).
        IF parent_n_distinct IS NOT NULL THEN
            EXECUTE pg_catalog.format(
                'ALTER TABLE public.%I ALTER COLUMN organization_id SET (n_distinct = %L)',
                part_name, parent_n_distinct);
        END IF;
        -- No statistics on tenant values (section 14): a new partition's columns
        -- start with the default target, so copy the parent's zeros.
        FOR zero_column IN
            SELECT a.attname FROM pg_catalog.pg_attribute AS a
             WHERE a.attrelid = 'public.audit_logs'::pg_catalog.regclass AND a.attnum > 0
               AND NOT a.attisdropped AND a.attstattarget = 0
        LOOP
            EXECUTE pg_catalog.format('ALTER TABLE public.%I ALTER COLUMN %I SET STATISTICS 0',
                                      part_name, zero_column);
        END LOOP;
        EXECUTE pg_catalog.format('REVOKE ALL ON public.%I FROM PUBLIC', part_name);
        EXECUTE pg_catalog.format('REVOKE UPDATE, DELETE, TRUNCATE ON public.%I FROM agentapi_owner', part_name);
        -- Row triggers are cloned from the parent; statement-level TRUNCATE triggers are not.
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON public.%I '
            'FOR EACH STATEMENT EXECUTE FUNCTION public.audit_logs_prevent_change()', part_name);
        EXECUTE pg_catalog.format('COMMENT ON TABLE public.%I IS %L', part_name,
            'Partition of audit_logs for the month starting ' || month_start || '.');
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

COMMENT ON FUNCTION public.audit_ensure_partitions(integer, integer) IS
    'Creates the missing monthly partitions of audit_logs, months_back months back to months_ahead months ahead of the current month; returns how many it created. A month whose events sit in audit_logs_default is skipped with a WARNING, never an error.';

DO $$ BEGIN PERFORM public.audit_ensure_partitions(3, 1); END $$;

REVOKE UPDATE, DELETE, TRUNCATE ON public.audit_logs, public.audit_logs_default FROM agentapi_owner;

-- -----------------------------------------------------------------------------
-- 10. Views (security_invoker: the caller's RLS applies)
--
-- The user of each row is fetched by a LATERAL subquery with OFFSET 0 (a planner
-- fence) rather than a plain join: one primary-key probe per row. With a plain
-- join the planner, which plans for an average tenant (~100 users), would
-- hash or materialize every user of the tenant to decorate a 50-row page; for
-- the largest tenant (10,000 users) that made a page 40 times slower
-- (bench/README.md).
-- -----------------------------------------------------------------------------

CREATE VIEW public.active_user_sessions WITH (security_invoker = true) AS
SELECT s.id,
       s.user_id,
       s.organization_id,
       s.workspace_path,
       s.system_prompt,
       s.metadata,
       s.created_at,
       s.expires_at,
       s.last_active_at,
       u.email AS user_email,
       u.role  AS user_role,
       o.name  AS organization_name,
       o.slug  AS organization_slug
  FROM public.user_sessions AS s
  CROSS JOIN LATERAL (SELECT u.email, u.role
                        FROM public.users AS u
                       WHERE u.id = s.user_id AND u.organization_id = s.organization_id AND u.is_active
                      OFFSET 0) AS u
  JOIN public.organizations AS o ON o.id = s.organization_id
 WHERE (s.expires_at IS NULL OR s.expires_at > now());

COMMENT ON VIEW public.active_user_sessions IS
    'Sessions not expired (and whose user is active), with the user''s email and role and the organization''s name and slug. security_invoker: respects the caller''s RLS.';

CREATE VIEW public.effective_mcp_configurations WITH (security_invoker = true) AS
SELECT c.id,
       c.organization_id,
       c.user_id,
       c.name,
       c.type,
       c.endpoint,
       c.command,
       c.args,
       c.env,
       c.auth_type,
       c.bearer_token,
       c.oauth_provider,
       c.enabled,
       c.created_at,
       c.updated_at,
       o.name  AS organization_name,
       o.slug  AS organization_slug,
       u.email AS user_email,
       CASE WHEN c.user_id IS NULL THEN 'organization' ELSE 'user' END AS config_scope
  FROM public.mcp_configurations AS c
  JOIN public.organizations AS o ON o.id = c.organization_id
  LEFT JOIN LATERAL (SELECT u.email
                       FROM public.users AS u
                      WHERE u.id = c.user_id AND u.organization_id = c.organization_id
                     OFFSET 0) AS u ON true
 WHERE c.enabled;

COMMENT ON VIEW public.effective_mcp_configurations IS
    'Enabled MCP configurations with organization name and slug, the owner''s email and config_scope (organization or user). security_invoker: respects the caller''s RLS.';

-- -----------------------------------------------------------------------------
-- 11. Grants
--
-- Each role gets exactly what the matrix needs. UPDATE and INSERT are granted
-- per column: the application can never move a row to another organization or
-- user, backdate an audit event, or touch created_at. It cannot choose primary
-- keys either (a collision would reveal that another tenant's id exists), nor
-- change an organization's slug (the global unique index would tell an admin
-- which slugs other tenants use): slugs are changed by agentapi_service.
-- -----------------------------------------------------------------------------

RESET ROLE;
GRANT USAGE ON SCHEMA public, agentapi_auth, extensions TO agentapi_app, agentapi_service;
SET ROLE agentapi_owner;

GRANT USAGE ON TYPE public.user_role, public.mcp_type, public.auth_type, public.prompt_scope
    TO agentapi_app, agentapi_service;

-- agentapi_app --------------------------------------------------------------
GRANT SELECT ON public.organizations TO agentapi_app;
GRANT UPDATE (name, metadata) ON public.organizations TO agentapi_app;

GRANT SELECT, DELETE ON public.users TO agentapi_app;
GRANT INSERT (organization_id, email, role, is_active, metadata, last_login_at) ON public.users TO agentapi_app;
GRANT UPDATE (email, role, is_active, metadata, last_login_at) ON public.users TO agentapi_app;

GRANT SELECT, DELETE ON public.user_sessions TO agentapi_app;
GRANT INSERT (user_id, organization_id, workspace_path, system_prompt, metadata, expires_at, last_active_at)
    ON public.user_sessions TO agentapi_app;
GRANT UPDATE (workspace_path, system_prompt, metadata, expires_at, last_active_at) ON public.user_sessions TO agentapi_app;

GRANT SELECT, DELETE ON public.mcp_configurations TO agentapi_app;
GRANT INSERT (organization_id, user_id, name, type, endpoint, command, args, env, auth_type,
              bearer_token, oauth_provider, enabled) ON public.mcp_configurations TO agentapi_app;
GRANT UPDATE (name, type, endpoint, command, args, env, auth_type, bearer_token, oauth_provider, enabled)
    ON public.mcp_configurations TO agentapi_app;

GRANT SELECT, DELETE ON public.mcp_oauth_tokens TO agentapi_app;
GRANT INSERT (user_id, organization_id, mcp_configuration_id, oauth_provider, access_token, refresh_token,
              token_type, scope, expires_at) ON public.mcp_oauth_tokens TO agentapi_app;
GRANT UPDATE (oauth_provider, access_token, refresh_token, token_type, scope, expires_at,
              refresh_claimed_until, refresh_claimed_by, refresh_failure_count, last_refresh_error,
              last_refreshed_at) ON public.mcp_oauth_tokens TO agentapi_app;

GRANT SELECT, DELETE ON public.system_prompts TO agentapi_app;
GRANT INSERT (scope, organization_id, user_id, content, priority, template, enabled, created_by)
    ON public.system_prompts TO agentapi_app;
GRANT UPDATE (content, priority, template, enabled) ON public.system_prompts TO agentapi_app;

-- Not the hash-chain columns: chain_seq counts every event of the organization, so
-- the gaps between a member's own events would show how much the rest wrote.
GRANT SELECT (id, "timestamp", user_id, organization_id, action, resource_type, resource_id,
              details, ip_address, user_agent, success, error_message)
    ON public.audit_logs TO agentapi_app;
-- Not id either: the primary key is (id, "timestamp") because audit_logs is
-- partitioned, so only the column default (gen_random_uuid()) keeps ids unique.
GRANT INSERT (user_id, organization_id, action, resource_type, resource_id, details, ip_address,
              user_agent, success, error_message) ON public.audit_logs TO agentapi_app;

GRANT SELECT ON public.active_user_sessions, public.effective_mcp_configurations TO agentapi_app;

GRANT EXECUTE ON FUNCTION
    agentapi_auth.requested_user_id(),
    agentapi_auth.user_id(),
    agentapi_auth.organization_id(),
    agentapi_auth.admin_organization_id(),
    agentapi_auth.user_email(),
    public.token_key_bytes(text),
    public.token_open(text, bytea),
    public.encrypt_token(text, text),
    public.decrypt_token(text, text),
    public.log_audit_event(uuid, uuid, text, text, text, jsonb, inet, text, boolean, text),
    public.get_effective_system_prompts(uuid, uuid)
TO agentapi_app, agentapi_service;

-- agentapi_service ------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON
    public.organizations, public.users, public.user_sessions, public.mcp_configurations,
    public.mcp_oauth_tokens, public.system_prompts
TO agentapi_service;
GRANT SELECT ON public.audit_logs TO agentapi_service;
-- Per column: the service never writes the hash-chain columns of section 12, nor
-- id (the default assigns it, so ids are unique across partitions; see 4.7).
GRANT INSERT ("timestamp", user_id, organization_id, action, resource_type, resource_id, details,
              ip_address, user_agent, success, error_message) ON public.audit_logs TO agentapi_service;
GRANT SELECT ON public.active_user_sessions, public.effective_mcp_configurations TO agentapi_service;
GRANT EXECUTE ON FUNCTION
    public.cleanup_expired_sessions(),
    public.audit_ensure_partitions(integer, integer),
    agentapi_auth.sign_context(uuid, interval)
TO agentapi_service;

RESET ROLE;

-- -----------------------------------------------------------------------------
-- 12. Operations: key rotation, audit hash chain, audit retention, planner statistics
--
-- Used by `agentapi-db rotate-key`, `audit enable-chain`/`verify-chain`,
-- `audit retention` and `stats --tune`; all of it is for agentapi_service only.
-- -----------------------------------------------------------------------------

-- Detached audit partitions wait here between retention's two steps (detach,
-- then export and drop); nothing else ever lives in this schema.
CREATE SCHEMA IF NOT EXISTS agentapi_retired AUTHORIZATION agentapi_owner;
REVOKE ALL ON SCHEMA agentapi_retired FROM PUBLIC;
GRANT USAGE ON SCHEMA agentapi_retired TO agentapi_service;
COMMENT ON SCHEMA agentapi_retired IS
    'Audit partitions detached by audit_retention_detach() and waiting to be exported and dropped by audit_retention_drop(). Read by agentapi_service only.';

SET ROLE agentapi_owner;

-- 12.1 Key rotation -----------------------------------------------------------

-- Whether a ciphertext decrypts with `key`. A wrong key or corrupt data gives
-- false; a malformed key still raises. Used by `rotate-key --verify`.
CREATE FUNCTION public.token_decrypts_with(encrypted_token text, key text)
RETURNS boolean
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
    PERFORM public.decrypt_token(encrypted_token, key);
    RETURN encrypted_token IS NOT NULL OR NULL;
EXCEPTION
    -- 39000: wrong key or corrupt data; class 22 (e.g. 22023, not base64): malformed data.
    WHEN external_routine_invocation_exception OR data_exception THEN
        IF key IS NULL OR length(key) < 32 THEN
            RAISE;  -- a malformed key is an error, not a "no"
        END IF;
        RETURN false;
END
$$;

-- The ciphertext of the same token under `new_key`: unchanged if it already
-- decrypts with `new_key`, re-encrypted if it decrypts with `old_key`. A value
-- readable by neither raises data_corrupted: rotation never writes it over.
CREATE FUNCTION public.reencrypt_token(encrypted_token text, new_key text, old_key text)
RETURNS text
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
    IF encrypted_token IS NULL THEN
        RETURN NULL;
    END IF;
    IF left(encrypted_token, 4) = 'ag1:' AND public.token_decrypts_with(encrypted_token, new_key) THEN
        RETURN encrypted_token;
    END IF;
    IF public.token_decrypts_with(encrypted_token, new_key) THEN
        RETURN public.encrypt_token(public.decrypt_token(encrypted_token, new_key), new_key);
    END IF;
    IF public.token_decrypts_with(encrypted_token, old_key) THEN
        RETURN public.encrypt_token(public.decrypt_token(encrypted_token, old_key), new_key);
    END IF;
    RAISE EXCEPTION 'a stored token decrypts with neither the new nor the old key'
        USING ERRCODE = 'data_corrupted';
END
$$;

COMMENT ON FUNCTION public.token_decrypts_with(text, text) IS
    'True if the ciphertext decrypts with the key, false on a wrong key or corrupt data; NULL in, NULL out. For key rotation checks (agentapi_service).';
COMMENT ON FUNCTION public.reencrypt_token(text, text, text) IS
    'For operators in psql (rotate-key works in the application process): the ciphertext unchanged if it is ag1 under new_key, else re-encrypted into ag1 under new_key from whichever key opens it; raises data_corrupted if neither key opens it.';

-- 12.2 Audit hash chain (tamper evidence, opt-in per organization) -------------
--
-- When an organization is enrolled (audit_chain_enable), every audit event of
-- that organization gets chain_seq = previous + 1 and
-- chain_hash = sha256(previous chain_hash || audit_chain_event_text(event)),
-- computed by a BEFORE INSERT trigger (created by the first enrolment, so a
-- database that never enrols pays nothing). The chain head row is locked FOR
-- UPDATE by the trigger, which serializes the organization's audit inserts until
-- the inserting transaction ends (the write cost is measured in the README).
-- `agentapi-db audit verify-chain` recomputes the chain and reports the first
-- broken link. Enrolment lives in its own table, not in organizations.metadata,
-- because tenant admins may write metadata and must not switch it off.

ALTER TABLE public.audit_logs
    ADD COLUMN chain_seq bigint,
    ADD COLUMN chain_hash bytea;

COMMENT ON COLUMN public.audit_logs.chain_seq IS
    'Position in the organization''s hash chain (1, 2, ...); NULL when the organization is not enrolled. Set by the audit_logs_chain trigger only.';
COMMENT ON COLUMN public.audit_logs.chain_hash IS
    'sha256(previous chain_hash || audit_chain_event_text(event)); NULL when not chained. Set by the audit_logs_chain trigger only.';

-- verify-chain walks an organization's events in chain order.
CREATE INDEX audit_logs_chain_idx ON public.audit_logs (organization_id, chain_seq)
    WHERE chain_seq IS NOT NULL;

CREATE TABLE public.audit_chain_heads (
    organization_id  uuid        PRIMARY KEY REFERENCES public.organizations (id) ON DELETE CASCADE,
    last_seq         bigint      NOT NULL DEFAULT 0,
    last_hash        bytea       NOT NULL,
    base_seq         bigint      NOT NULL DEFAULT 0,
    base_hash        bytea       NOT NULL,
    enabled_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_chain_heads_seq_order CHECK (0 <= base_seq AND base_seq <= last_seq)
);

ALTER TABLE public.audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.audit_chain_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_chain_heads_owner ON public.audit_chain_heads TO agentapi_owner USING (true) WITH CHECK (true);
CREATE POLICY audit_chain_heads_service_select ON public.audit_chain_heads FOR SELECT TO agentapi_service USING (true);

COMMENT ON TABLE public.audit_chain_heads IS
    'Organizations enrolled in the audit hash chain, with the head of each chain. Written only by audit_chain_enable(), the audit_logs_chain trigger and retention; readable by agentapi_service.';
COMMENT ON COLUMN public.audit_chain_heads.last_seq IS 'chain_seq of the organization''s latest chained event (0: none yet).';
COMMENT ON COLUMN public.audit_chain_heads.last_hash IS 'chain_hash of that event; the genesis hash sha256(''agentapi-db audit chain '' || organization_id) before the first.';
COMMENT ON COLUMN public.audit_chain_heads.base_seq IS 'Events up to this chain_seq left the database through retention; verification starts after it.';
COMMENT ON COLUMN public.audit_chain_heads.enabled_at IS 'When the organization was enrolled; its events stamped after this are all chained.';
COMMENT ON COLUMN public.audit_chain_heads.base_hash IS 'chain_hash of event base_seq (the genesis hash while base_seq = 0).';
COMMENT ON POLICY audit_chain_heads_owner ON public.audit_chain_heads IS
    'Only the owner (the SECURITY DEFINER chain functions) reads and writes chain heads; agentapi_service reads them through its own SELECT policy.';
COMMENT ON POLICY audit_chain_heads_service_select ON public.audit_chain_heads IS
    'agentapi_service reads every chain head (verify-chain); it never writes one.';

-- The canonical text of an event that its chain hash covers: a JSON array of
-- every column but chain_hash, with the timestamp as integer microseconds since
-- the epoch (independent of TimeZone and DateStyle) and jsonb's deterministic
-- text form for details.
CREATE FUNCTION public.audit_chain_event_text(
    p_chain_seq       bigint,
    p_id              uuid,
    p_timestamp       timestamptz,
    p_user_id         uuid,
    p_organization_id uuid,
    p_action          text,
    p_resource_type   text,
    p_resource_id     text,
    p_details         jsonb,
    p_ip_address      inet,
    p_user_agent      text,
    p_success         boolean,
    p_error_message   text
)
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT pg_catalog.jsonb_build_array(
        p_chain_seq, p_id::text,
        (EXTRACT(epoch FROM p_timestamp) * 1000000)::bigint,
        p_user_id::text, p_organization_id::text, p_action, p_resource_type, p_resource_id,
        p_details, p_ip_address::text, p_user_agent, p_success,
        p_error_message)::text
$$;

COMMENT ON FUNCTION public.audit_chain_event_text(bigint, uuid, timestamptz, uuid, uuid, text, text, text, jsonb, inet, text, boolean, text) IS
    'Canonical text of an audit event covered by its chain hash: a JSON array of every column but chain_hash, timestamp as epoch microseconds.';

CREATE FUNCTION public.audit_logs_chain()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base_seq bigint;
    base_hash bytea;
    prev_seq bigint;
    prev_hash bytea;
BEGIN
    -- Nobody supplies chain values: they are computed here or left NULL.
    NEW.chain_seq := NULL;
    NEW.chain_hash := NULL;
    IF NEW.organization_id IS NULL THEN
        RETURN NEW;
    END IF;
    -- This BEFORE trigger runs before the caller's RLS check: for the application,
    -- refuse another organization's row here, as RLS would, before touching that
    -- organization's chain head (its lock would tell whether the organization is
    -- enrolled and writing right now). Inside this definer function the caller's
    -- role shows in the "role" setting (SET ROLE) or, without one, in the login's
    -- memberships; maintenance logins (service, owner) write for any organization.
    IF (pg_catalog.current_setting('role') = 'agentapi_app'
        OR NOT (pg_catalog.pg_has_role(session_user, 'agentapi_service', 'MEMBER')
                OR pg_catalog.pg_has_role(session_user, 'agentapi_owner', 'MEMBER')))
       AND NEW.organization_id IS DISTINCT FROM agentapi_auth.organization_id() THEN
        RAISE EXCEPTION 'new row violates row-level security policy for table "audit_logs"'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- The head row lock serializes the organization's writers (re-locking a row
    -- this transaction already holds is cheap; under REPEATABLE READ a concurrent
    -- writer makes this fail with a serialization error instead of forking the chain).
    SELECT h.base_seq, h.base_hash INTO base_seq, base_hash
      FROM public.audit_chain_heads AS h
     WHERE h.organization_id = NEW.organization_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    -- The previous link is the latest chained event, including rows inserted
    -- earlier by this same statement (a BEFORE row trigger sees them). The head
    -- is not updated per row: repeated updates of one row in one transaction make
    -- every later lookup walk all its versions (quadratic for bulk inserts).
    SELECT a.chain_seq, a.chain_hash INTO prev_seq, prev_hash
      FROM public.audit_logs AS a
     WHERE a.organization_id = NEW.organization_id AND a.chain_seq IS NOT NULL
     ORDER BY a.chain_seq DESC
     LIMIT 1;
    IF NOT FOUND OR prev_seq < base_seq THEN
        prev_seq := base_seq;  -- nothing chained yet, or retention took all of it
        prev_hash := base_hash;
    END IF;
    NEW.chain_seq := prev_seq + 1;
    NEW.chain_hash := pg_catalog.sha256(prev_hash || pg_catalog.convert_to(
        public.audit_chain_event_text(NEW.chain_seq, NEW.id, NEW."timestamp", NEW.user_id,
            NEW.organization_id, NEW.action, NEW.resource_type, NEW.resource_id, NEW.details,
            NEW.ip_address, NEW.user_agent, NEW.success, NEW.error_message), 'UTF8'));
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION public.audit_logs_chain() IS
    'BEFORE INSERT row trigger on audit_logs: links an enrolled organization''s event into its hash chain (locks the chain head until the transaction ends); clears chain columns otherwise.';

-- The two chain triggers are created by audit_chain_enable() when the first
-- organization enrols (see there): until then audit inserts pay nothing for the chain.

-- After each chained row (the WHEN clause queues nothing for unchained rows, so
-- organizations that are not enrolled pay nothing here): if it is the latest
-- link of its chain, move the chain head to it. Only the last row of a bulk
-- insert updates the head, so the head row is updated once per statement, not
-- once per row. verify-chain uses the head to tell when events at the end of a
-- chain went missing.
CREATE FUNCTION public.audit_logs_chain_advance()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Positions are contiguous, so "no next link" means "latest"; an equality
    -- lookup stays an index probe whatever plan is cached.
    IF NOT EXISTS (SELECT 1 FROM public.audit_logs AS a
                    WHERE a.organization_id = NEW.organization_id
                      AND a.chain_seq = NEW.chain_seq + 1) THEN
        UPDATE public.audit_chain_heads AS h
           SET last_seq = NEW.chain_seq, last_hash = NEW.chain_hash
         WHERE h.organization_id = NEW.organization_id AND h.last_seq < NEW.chain_seq;
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION public.audit_logs_chain_advance() IS
    'AFTER INSERT row trigger on audit_logs, for chained rows only: advances the organization''s chain head when the row is the latest link.';

-- Enrols an organization in the hash chain; later events are chained. Returns
-- false if it already was. There is deliberately no way to leave the chain.
CREATE FUNCTION public.audit_chain_enable(p_organization_id uuid)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    genesis bytea := pg_catalog.sha256(pg_catalog.convert_to(
        'agentapi-db audit chain ' || p_organization_id::text, 'UTF8'));
    inserted integer;
BEGIN
    IF p_organization_id IS NULL
       OR NOT EXISTS (SELECT 1 FROM public.organizations AS o WHERE o.id = p_organization_id) THEN
        RAISE EXCEPTION 'no organization with id %', p_organization_id
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'audit_chain_heads_organization_id_fkey';
    END IF;
    -- The chain triggers exist once any organization is enrolled (every audit insert
    -- then pays for the enrolment check). Created here, on first use; a later call
    -- puts them back if they were dropped. CREATE OR REPLACE: a concurrent enrolment
    -- that created them first is no error.
    IF (SELECT count(*) FROM pg_catalog.pg_trigger AS t
         WHERE t.tgrelid = 'public.audit_logs'::pg_catalog.regclass
           AND t.tgname IN ('audit_logs_chain', 'audit_logs_chain_advance')) < 2 THEN
        CREATE OR REPLACE TRIGGER audit_logs_chain BEFORE INSERT ON public.audit_logs
            FOR EACH ROW EXECUTE FUNCTION public.audit_logs_chain();
        CREATE OR REPLACE TRIGGER audit_logs_chain_advance AFTER INSERT ON public.audit_logs
            FOR EACH ROW WHEN (NEW.chain_seq IS NOT NULL)
            EXECUTE FUNCTION public.audit_logs_chain_advance();
    END IF;
    -- enabled_at is the wall clock just before commit (not now(), the start of the
    -- transaction): events stamped later than that (give or take the commit) are chained.
    INSERT INTO public.audit_chain_heads (organization_id, last_hash, base_hash, enabled_at)
    VALUES (p_organization_id, genesis, genesis, pg_catalog.clock_timestamp())
    ON CONFLICT (organization_id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted > 0 THEN
        INSERT INTO public.audit_logs (organization_id, action, resource_type, resource_id, details)
        VALUES (p_organization_id, 'audit.chain.enable', 'organization', p_organization_id::text,
                pg_catalog.jsonb_build_object('genesis', pg_catalog.encode(genesis, 'hex')));
    END IF;
    RETURN inserted > 0;
END
$$;

COMMENT ON FUNCTION public.audit_chain_enable(uuid) IS
    'Enrols an organization in the audit hash chain (its first chained event records the enrolment) and creates the chain triggers if missing; false if already enrolled. For agentapi_service.';

-- 12.3 Audit retention ----------------------------------------------------------
--
-- Whole monthly partitions leave in two steps, so an export can sit between
-- them without holding a lock on audit_logs: audit_retention_detach() detaches
-- the expired partitions into schema agentapi_retired (a short ACCESS
-- EXCLUSIVE lock on audit_logs), then audit_retention_drop() drops one retired
-- table and records an audit event about it. A crash between the steps leaves
-- the table in agentapi_retired; the next run picks it up. Rows are never
-- DELETEd.

-- Detaches every monthly partition whose month ended at least keep_months
-- months before the current month began, and moves chain bases past their
-- events. Returns every table waiting in agentapi_retired (from this run or an
-- interrupted earlier one) with its month range. It waits at most 3 seconds for
-- its lock on audit_logs (audit writers queue behind a waiting DETACH), and fails
-- rather than stall the application; run it again later.
CREATE FUNCTION public.audit_retention_detach(keep_months integer)
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'  -- month boundaries must not depend on the caller's TimeZone
SET lock_timeout = '3s'
AS $$
DECLARE
    cutoff timestamptz;
    part record;
BEGIN
    IF keep_months IS NULL OR keep_months < 1 OR keep_months > 1200 THEN
        RAISE EXCEPTION 'keep_months must be between 1 and 1200'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := date_trunc('month', now()) - pg_catalog.make_interval(months => keep_months);
    FOR part IN
        SELECT c.relname::text AS name,
               pg_catalog.to_timestamp(pg_catalog.substr(c.relname, 13, 4) || pg_catalog.substr(c.relname, 18, 2),
                                       'YYYYMM') AS month_start
          FROM pg_catalog.pg_inherits AS i
          JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'public.audit_logs'::pg_catalog.regclass
           AND c.relname ~ '^audit_logs_y[0-9]{4}m[0-9]{2}$'
         ORDER BY c.relname
    LOOP
        CONTINUE WHEN part.month_start + interval '1 month' > cutoff;
        EXECUTE pg_catalog.format('ALTER TABLE public.audit_logs DETACH PARTITION public.%I', part.name);
        EXECUTE pg_catalog.format('ALTER TABLE public.%I SET SCHEMA agentapi_retired', part.name);
        EXECUTE pg_catalog.format('GRANT SELECT ON agentapi_retired.%I TO agentapi_service', part.name);
        -- DETACH drops the row trigger cloned from audit_logs: the retired table
        -- stays append-only (for everyone, superusers included) until it is dropped.
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE ON agentapi_retired.%I '
            'FOR EACH ROW EXECUTE FUNCTION public.audit_logs_prevent_change()', part.name);
        -- RLS stays forced on the retired table; let its owner (this function)
        -- count and read it, and agentapi_service export it.
        EXECUTE pg_catalog.format(
            'CREATE POLICY audit_retired_owner_select ON agentapi_retired.%I FOR SELECT TO agentapi_owner USING (true)',
            part.name);
        EXECUTE pg_catalog.format(
            'CREATE POLICY audit_retired_service_select ON agentapi_retired.%I FOR SELECT TO agentapi_service USING (true)',
            part.name);
        -- Verification of a chain starts after the last event that leaves. Known
        -- limit: an event backdated by agentapi_service (a timestamp older than
        -- events chained before it) that retires early moves the base past those
        -- live events, which verify-chain then counts as skipped, not checked.
        EXECUTE pg_catalog.format(
            'UPDATE public.audit_chain_heads AS h SET base_seq = t.chain_seq, base_hash = t.chain_hash '
            '  FROM (SELECT DISTINCT ON (r.organization_id) r.organization_id, r.chain_seq, r.chain_hash '
            '          FROM agentapi_retired.%I AS r WHERE r.chain_seq IS NOT NULL '
            '         ORDER BY r.organization_id, r.chain_seq DESC) AS t '
            ' WHERE h.organization_id = t.organization_id AND t.chain_seq > h.base_seq', part.name);
    END LOOP;
    RETURN QUERY
        SELECT c.relname::text,
               pg_catalog.to_timestamp(pg_catalog.substr(c.relname, 13, 4) || pg_catalog.substr(c.relname, 18, 2), 'YYYYMM'),
               pg_catalog.to_timestamp(pg_catalog.substr(c.relname, 13, 4) || pg_catalog.substr(c.relname, 18, 2), 'YYYYMM')
                   + interval '1 month'
          FROM pg_catalog.pg_class AS c
         WHERE c.relnamespace = 'agentapi_retired'::pg_catalog.regnamespace
           AND c.relkind = 'r'
           AND c.relname ~ '^audit_logs_y[0-9]{4}m[0-9]{2}$'
         ORDER BY c.relname;
END
$$;

COMMENT ON FUNCTION public.audit_retention_detach(integer) IS
    'Retention step 1: detaches the monthly audit partitions that ended keep_months or more months before the current month into schema agentapi_retired; returns every retired table waiting to be dropped. For agentapi_service.';

-- Drops one retired partition and records an audit event about it (with the
-- number of events and where they were exported, if anywhere). Returns the
-- number of events dropped.
CREATE FUNCTION public.audit_retention_drop(p_partition_name text, p_exported_to text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events bigint;
BEGIN
    IF p_partition_name IS NULL OR p_partition_name !~ '^audit_logs_y[0-9]{4}m[0-9]{2}$'
       OR pg_catalog.to_regclass(pg_catalog.format('agentapi_retired.%I', p_partition_name)) IS NULL THEN
        RAISE EXCEPTION 'no retired audit partition named %', p_partition_name
            USING ERRCODE = 'undefined_table';
    END IF;
    EXECUTE pg_catalog.format('SELECT count(*) FROM agentapi_retired.%I', p_partition_name) INTO events;
    EXECUTE pg_catalog.format('DROP TABLE agentapi_retired.%I', p_partition_name);
    INSERT INTO public.audit_logs (action, resource_type, resource_id, details)
    VALUES ('audit.retention.drop_partition', 'audit_logs_partition', p_partition_name,
            pg_catalog.jsonb_build_object('events', events, 'exported_to', p_exported_to,
                                          'role', session_user));
    RETURN events;
END
$$;

COMMENT ON FUNCTION public.audit_retention_drop(text, text) IS
    'Retention step 2: drops one table of agentapi_retired and records an audit event (events dropped, export location); returns the number of events. For agentapi_service.';

-- Both steps at once, without export (for scheduled jobs). Returns the number
-- of partitions dropped.
CREATE FUNCTION public.audit_retention(keep_months integer)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'  -- month boundaries must not depend on the caller's TimeZone
AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN SELECT d.partition_name FROM public.audit_retention_detach(keep_months) AS d LOOP
        PERFORM public.audit_retention_drop(part.partition_name, NULL);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;

COMMENT ON FUNCTION public.audit_retention(integer) IS
    'Retention without export: detaches and drops every audit partition older than keep_months months (one audit event per partition); returns how many. For agentapi_service and scheduled jobs.';

-- 12.4 Planner statistics for skewed tenants ---------------------------------
--
-- Under RLS the planner never knows the acting tenant: its organization_id is
-- an InitPlan, so every tenant-scoped statement is planned for a tenant of
-- rows / n_distinct(organization_id) rows, the *average* tenant. With skewed
-- tenants that is far too small for the tenants that matter: at the
-- benchmark's full scale (1,000 organizations, the largest with 10 % of the
-- rows) it expects 38 audit events of the last 7 days where the largest
-- organization has 3,830, so it reads and sorts them all (bitmap scan and
-- top-N sort, ~6 ms) instead of reading the 51 of a page in index order
-- (~0.3 ms). The same happens with hand-written filters under generic plans.
--
-- The estimate that fits is the tenant size seen by a typical *row* (and so by
-- a typical request, since large tenants make most of them): the expected
-- size of the tenant of a random row, sum(n_i^2) / sum(n_i), which is what the
-- planner uses when n_distinct = sum(n_i)^2 / sum(n_i^2), the "effective
-- number of tenants". For 1,000 equal tenants it is 1,000; for the benchmark's
-- skew about 77. A small tenant then gets a plan made for a larger one, which
-- for a keyset page is the same ordered index scan, reading only its own rows.
--
-- tune_tenant_statistics() computes that number for each table with an
-- organization_id (or only for only_table), pins it with ALTER TABLE ... SET
-- (n_distinct) on the table and each audit partition (and n_distinct_inherited
-- on the audit_logs parent, which its own statistics use), and analyzes the
-- table; audit_ensure_partitions() copies it to new partitions. Fewer than two
-- tenants pins nothing (it resets): a first run on a one-tenant deployment must
-- not make every later tenant look like the whole table. Autovacuum keeps a
-- pinned value, so it changes only when this runs again: after a bulk load or
-- an onboarding wave, and weekly from the schedule. It counts every row of the
-- table (2.8 s for the benchmark's full data set, 3.4M rows, here), all of them
-- before it takes any lock beyond a reader's; the ALTERs and the ANALYZEs then
-- hold SHARE UPDATE EXCLUSIVE locks (reads and writes go on; DDL waits) until
-- the transaction ends, so `agentapi-db stats --tune` runs one table per
-- transaction. lock_timeout: it gives up rather than queue behind DDL, which
-- would make the application queue behind it.
CREATE FUNCTION public.tune_tenant_statistics(only_table text DEFAULT NULL)
RETURNS TABLE (table_name text, row_count bigint, tenants bigint, effective_tenants numeric)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '3s'
AS $$
DECLARE
    all_tables constant text[] := ARRAY['users', 'user_sessions', 'mcp_configurations',
                                        'mcp_oauth_tokens', 'system_prompts', 'audit_logs'];
    tables text[] := '{}';
    counts bigint[] := '{}';
    tenant_counts bigint[] := '{}';
    effective numeric[] := '{}';
    tbl text;
    part text;
    n bigint;
    k bigint;
    e numeric;
BEGIN
    IF only_table IS NOT NULL AND NOT only_table = ANY (all_tables) THEN
        RAISE EXCEPTION 'only_table must be one of %', pg_catalog.array_to_string(all_tables, ', ')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- First count everything (readers' locks only), then alter and analyze: the
    -- SHARE UPDATE EXCLUSIVE locks are not held while later tables are counted.
    -- The counts also hold ACCESS SHARE on every audit partition until the
    -- transaction ends, so retention cannot detach one before the list below is used.
    FOREACH tbl IN ARRAY all_tables LOOP
        CONTINUE WHEN only_table IS NOT NULL AND tbl <> only_table;
        EXECUTE pg_catalog.format(
            'SELECT coalesce(sum(s.n), 0)::bigint, count(*), '
            '       round(sum(s.n)::numeric ^ 2 / nullif(sum(s.n::numeric * s.n), 0), 1) '
            '  FROM (SELECT count(*) AS n FROM public.%I '
            '         WHERE organization_id IS NOT NULL GROUP BY organization_id) AS s', tbl)
            INTO n, k, e;
        tables := tables || tbl;
        counts := counts || n;
        tenant_counts := tenant_counts || k;
        effective := effective || CASE WHEN k >= 2 THEN e END;
    END LOOP;
    FOR i IN 1 .. coalesce(pg_catalog.array_length(tables, 1), 0) LOOP
        tbl := tables[i];
        table_name := tbl;
        row_count := counts[i];
        tenants := tenant_counts[i];
        effective_tenants := effective[i];
        FOR part IN
            SELECT tbl
            UNION ALL
            SELECT c.relname::text
              FROM pg_catalog.pg_inherits AS h
              JOIN pg_catalog.pg_class AS c ON c.oid = h.inhrelid
             WHERE h.inhparent = pg_catalog.format('public.%I', tbl)::pg_catalog.regclass
        LOOP
            IF effective_tenants IS NULL THEN
                EXECUTE pg_catalog.format(
                    'ALTER TABLE public.%I ALTER COLUMN organization_id RESET (n_distinct, n_distinct_inherited)',
                    part);
            ELSE
                EXECUTE pg_catalog.format(
                    'ALTER TABLE public.%I ALTER COLUMN organization_id SET (n_distinct = %s)',
                    part, effective_tenants);
            END IF;
        END LOOP;
        IF tbl = 'audit_logs' AND effective_tenants IS NOT NULL THEN
            EXECUTE pg_catalog.format(
                'ALTER TABLE public.audit_logs ALTER COLUMN organization_id SET (n_distinct_inherited = %s)',
                effective_tenants);
        END IF;
        EXECUTE pg_catalog.format('ANALYZE public.%I', tbl);
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION public.tune_tenant_statistics(text) IS
    'Sets n_distinct of organization_id on every tenant table (or only only_table), and on every audit partition, to the effective number of tenants, sum(n)^2/sum(n^2) (reset below two tenants), then analyzes; returns rows, tenants and that number per table. Keeps RLS plans right for large tenants. For agentapi_service.';

GRANT SELECT ON public.audit_chain_heads TO agentapi_service;
GRANT EXECUTE ON FUNCTION
    public.token_decrypts_with(text, text),
    public.reencrypt_token(text, text, text),
    public.audit_chain_event_text(bigint, uuid, timestamptz, uuid, uuid, text, text, text, jsonb, inet, text, boolean, text),
    public.audit_chain_enable(uuid),
    public.audit_retention_detach(integer),
    public.audit_retention_drop(text, text),
    public.audit_retention(integer),
    public.tune_tenant_statistics(text)
TO agentapi_service;

RESET ROLE;

-- -----------------------------------------------------------------------------
-- 13. Envelope encryption: per-organization data keys (docs/encryption.md)
--
-- Each organization's secrets are encrypted (format ag1, section 8) with its own
-- 256-bit data key. A data key is stored only wrapped: its 64-hex text form
-- encrypted in format ag1 under a master key, which lives in the application's
-- environment (AGENTAPI_ENCRYPTION_KEY) and never reaches the database. All
-- wrapping, unwrapping and encryption happens in the application process.
-- Rotating the master key re-wraps these rows only; deleting an organization
-- deletes its rows (crypto-shredding).
-- -----------------------------------------------------------------------------

SET ROLE agentapi_owner;

CREATE TABLE public.organization_data_keys (
    key_id           text        NOT NULL,
    organization_id  uuid        NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    wrapped_key      text        NOT NULL,
    is_primary       boolean     NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Tenant-leading (4.8); also what the cascade from organizations uses.
    CONSTRAINT organization_data_keys_pkey PRIMARY KEY (organization_id, key_id),
    CONSTRAINT organization_data_keys_key_id_format CHECK (key_id ~ '^[0-9a-f]{16}$'),
    CONSTRAINT organization_data_keys_wrapped_format CHECK (wrapped_key ~ '^ag1:[0-9a-f]{16}:[A-Za-z0-9+/=]+$')
);
-- One primary (encrypting) data key per organization; others only decrypt
-- until a data-key rotation has moved every value off them.
CREATE UNIQUE INDEX organization_data_keys_primary_key ON public.organization_data_keys (organization_id)
    WHERE is_primary;

ALTER TABLE public.organization_data_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.organization_data_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY organization_data_keys_owner ON public.organization_data_keys TO agentapi_owner
    USING (true) WITH CHECK (true);
CREATE POLICY organization_data_keys_service ON public.organization_data_keys TO agentapi_service
    USING (true) WITH CHECK (true);
CREATE POLICY organization_data_keys_select ON public.organization_data_keys FOR SELECT TO agentapi_app
    USING (organization_id OPERATOR(agentapi_auth.===) ANY (ARRAY[(SELECT agentapi_auth.organization_id())])
           AND organization_id = (SELECT agentapi_auth.organization_id()));
CREATE POLICY organization_data_keys_insert ON public.organization_data_keys FOR INSERT TO agentapi_app
    WITH CHECK (organization_id = (SELECT agentapi_auth.organization_id()) AND is_primary);

COMMENT ON TABLE public.organization_data_keys IS
    'Per-organization data keys, stored only wrapped by a master key that never reaches the database. Deleting the organization deletes them (crypto-shredding).';
COMMENT ON COLUMN public.organization_data_keys.key_id IS 'The ag1 key id of the data key: what every ciphertext made with it starts with (ag1:<key_id>:).';
COMMENT ON COLUMN public.organization_data_keys.organization_id IS 'The organization whose secrets this key encrypts.';
COMMENT ON COLUMN public.organization_data_keys.wrapped_key IS 'The data key (64 hex digits) encrypted in format ag1 under a master key; the master key''s id is its second field.';
COMMENT ON COLUMN public.organization_data_keys.is_primary IS 'The key new secrets of the organization are encrypted with (one per organization); the others only decrypt during a data-key rotation.';
COMMENT ON COLUMN public.organization_data_keys.created_at IS 'When the data key was made.';
COMMENT ON INDEX public.organization_data_keys_primary_key IS 'At most one primary data key per organization; concurrent first writes race on it and one wins.';
COMMENT ON CONSTRAINT organization_data_keys_key_id_format ON public.organization_data_keys IS 'A key id is 16 lowercase hex digits.';
COMMENT ON CONSTRAINT organization_data_keys_wrapped_format ON public.organization_data_keys IS 'A wrapped key is an ag1 ciphertext.';
COMMENT ON POLICY organization_data_keys_owner ON public.organization_data_keys IS 'The owner manages every data key.';
COMMENT ON POLICY organization_data_keys_service ON public.organization_data_keys IS 'agentapi_service reads, makes, re-wraps and deletes every organization''s data keys (rotation, shredding).';
COMMENT ON POLICY organization_data_keys_select ON public.organization_data_keys IS 'Members read the wrapped data keys of their own organization: useless without the master key, needed to open their secrets.';
COMMENT ON POLICY organization_data_keys_insert ON public.organization_data_keys IS 'A member''s first secret write makes their organization''s primary data key if it has none (organizations created before data keys existed); members never change or delete one.';

GRANT SELECT, INSERT ON public.organization_data_keys TO agentapi_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.organization_data_keys TO agentapi_service;

-- 14. Side channels: no statistics on tenant values (section 4.8, measure 3)
--
-- The planner estimates a caller's condition from the column's statistics,
-- which cover every tenant's rows, and for a leakproof operator it uses them
-- under RLS too: EXPLAIN's row estimate for "email < 'm'" would tell how
-- many addresses of all tenants sort before 'm'. So ANALYZE keeps no
-- statistics on any column of the tenant tables except those the plans need
-- and whose values the policy does not hide per tenant:
--   * organization_id (the tenant: the plans rest on its estimate, section
--     12.4; what it can tell is how big a tenant is, docs/side-channels.md);
--   * expires_at of user_sessions and mcp_oauth_tokens (cleanup and the
--     refresh workers scan it across tenants; a residual channel anyway);
--   * audit_logs."timestamp" (the partition key; admin pages by time range).
-- audit_ensure_partitions() gives new partitions the same targets, and lint
-- 016_tenant_value_statistics reports any column that has statistics again.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT c.oid::pg_catalog.regclass AS rel, a.attname
          FROM pg_catalog.pg_class AS c
          JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relnamespace = 'public'::pg_catalog.regnamespace
           AND c.relname IN ('organizations', 'users', 'user_sessions', 'mcp_configurations',
                             'mcp_oauth_tokens', 'system_prompts', 'audit_logs', 'organization_data_keys')
           AND a.attname <> 'organization_id'
           AND (c.relname, a.attname) NOT IN (('user_sessions', 'expires_at'), ('mcp_oauth_tokens', 'expires_at'),
                                              ('audit_logs', 'timestamp'))
    LOOP
        -- Without ONLY: audit_logs passes it on to its partitions.
        EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET STATISTICS 0', col.rel, col.attname);
    END LOOP;
END
$$;

RESET ROLE;
