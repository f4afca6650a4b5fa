-- =============================================================================
-- agentapi-db benchmark data generator: set-based SQL, no row-by-row loops.
--
-- Run by bench/generate.py as a superuser on a database that already holds
-- database/schema.sql. Parameters come in as session settings (set with bind
-- parameters by the caller):
--
--   bench.orgs, bench.users, bench.sessions, bench.audit_events  (integers)
--   bench.tokens_per_org                                          (integer)
--
-- and two temporary tables the caller fills (COPY) in the same transaction, made
-- in the application process like the library's writes (agentapi_db.crypto): no key
-- and no plaintext token reaches the server:
--
--   gen_org_keys (o, key_id, wrapped_key): organization o's data key, wrapped
--       (format ag1) by the run's master key;
--   gen_tokens (o, i, ct): i = 0 .. tokens_per_org - 1, real ag1 ciphertexts of
--       distinct tokens under organization o's data key.
--
-- Identifiers are deterministic so that pgbench scripts can name rows without
-- an extra round trip: organization j is md5('o' || j)::uuid, user u is
-- md5('u' || u)::uuid, session k is md5('s' || k)::uuid (they look random to
-- the indexes, like real UUIDs).
--
-- Shape:
--   * user u (1..U) belongs to organization 1 + floor(O * ((u-1)/U)^3): a few
--     large organizations (the first has ~10% of all users) and many small ones;
--     the first user of each organization, and every 50th user, is an admin.
--   * session k (1..S) belongs to user 1 + (k-1) % U; session k = u is the
--     user's current session (never expired); of the others about 28% have
--     expired, so a quarter of all sessions are expired.
--   * per organization 5 org-wide MCP configs; per user 1-3 personal ones;
--     70% bearer (token encrypted), 10% oauth (tokens in mcp_oauth_tokens,
--     encrypted, expiring over the next 24 hours), 20% no auth.
--   * prompts: 5 global, 3 per organization, 2 for every 5th user.
--   * audit events spread over the last 12 months, users drawn with the same skew.
-- =============================================================================

\set ON_ERROR_STOP 1
SET client_min_messages = warning;
SET synchronous_commit = off;
SET maintenance_work_mem = '512MB';

CREATE SCHEMA IF NOT EXISTS bench;

-- Organization index of user u: the same formula runs in pgbench scripts.
CREATE OR REPLACE FUNCTION bench.org_of(u bigint, users bigint, orgs bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 1 + floor(orgs * power((u - 1)::float8 / users, 3))::bigint $$;

CREATE TEMP TABLE gen_params AS
SELECT current_setting('bench.orgs')::bigint AS orgs,
       current_setting('bench.users')::bigint AS users,
       current_setting('bench.sessions')::bigint AS sessions,
       current_setting('bench.audit_events')::bigint AS audit_events,
       current_setting('bench.tokens_per_org')::bigint AS tpo;

-- Encrypted token pool (gen_tokens, filled by the caller): a few real ciphertexts
-- per organization under that organization's data key, each a distinct token,
-- shared round-robin by the organization's rows (decryption cost per row is the
-- same as with one ciphertext per row; the generator stays fast).
ALTER TABLE gen_tokens ADD COLUMN org uuid;
UPDATE gen_tokens SET org = md5('o' || o)::uuid;
ALTER TABLE gen_tokens ADD PRIMARY KEY (o, i);
CREATE INDEX ON gen_tokens (org, i);
ANALYZE gen_tokens;

-- organizations ---------------------------------------------------------------
INSERT INTO public.organizations (id, name, slug, created_at, updated_at)
SELECT md5('o' || j)::uuid, 'Organization ' || j, 'org-' || j,
       now() - interval '400 days', now() - interval '400 days'
  FROM gen_params, generate_series(1, orgs) AS j;

-- organization_data_keys: one primary data key per organization, wrapped.
INSERT INTO public.organization_data_keys (key_id, organization_id, wrapped_key, created_at)
SELECT g.key_id, md5('o' || g.o)::uuid, g.wrapped_key, now() - interval '400 days'
  FROM gen_org_keys AS g;

-- users ------------------------------------------------------------------------
INSERT INTO public.users (id, organization_id, email, role, is_active, created_at, updated_at)
SELECT md5('u' || u)::uuid,
       md5('o' || o)::uuid,
       'user' || u || '@org' || o || '.example.com',
       CASE WHEN u % 50 = 0 OR bench.org_of(u - 1, p.users, p.orgs) <> o OR u = 1
            THEN 'admin' ELSE 'user' END::public.user_role,
       true,
       now() - interval '365 days', now() - interval '365 days'
  FROM gen_params AS p,
       generate_series(1, p.users) AS u,
       LATERAL (SELECT bench.org_of(u, p.users, p.orgs) AS o) AS x;

-- user_sessions ----------------------------------------------------------------
INSERT INTO public.user_sessions (id, user_id, organization_id, workspace_path, metadata,
                                  created_at, expires_at, last_active_at)
SELECT md5('s' || k)::uuid,
       md5('u' || u)::uuid,
       md5('o' || bench.org_of(u, p.users, p.orgs))::uuid,
       '/workspaces/' || u || '/' || k,
       jsonb_build_object('agent', 'claude', 'n', k),
       c.created_at,
       CASE WHEN expired THEN c.created_at + interval '1 day'
            WHEN k % 7 = 0 THEN NULL
            ELSE now() + interval '1 day' * (1 + k % 30) END,
       c.created_at + interval '1 hour'
  FROM gen_params AS p,
       generate_series(1, p.sessions) AS k,
       LATERAL (SELECT 1 + (k - 1) % p.users AS u,
                       k > p.users AND abs(hashint8(k)) % 36 < 10 AS expired) AS x,
       LATERAL (SELECT now() - interval '2 days' - interval '1 second' * (abs(hashint8(k * 7919)) % 7776000)
                    AS created_at) AS c;

-- mcp_configurations -------------------------------------------------------------
-- Org-wide: 5 per organization (number 1 is bearer, 2 oauth, 3 none, 4-5 bearer).
INSERT INTO public.mcp_configurations (id, organization_id, user_id, name, type, endpoint, command, args,
                                       auth_type, bearer_token, oauth_provider, enabled, created_at, updated_at)
SELECT md5('co' || j || '.' || n)::uuid, md5('o' || j)::uuid, NULL, 'org-mcp-' || n,
       CASE WHEN n = 3 THEN 'stdio' ELSE 'http' END::public.mcp_type,
       CASE WHEN n = 3 THEN NULL ELSE 'https://mcp' || n || '.org' || j || '.example.com/v1' END,
       CASE WHEN n = 3 THEN 'npx' END,
       CASE WHEN n = 3 THEN '["-y", "@modelcontextprotocol/server-filesystem"]'::jsonb ELSE '[]'::jsonb END,
       CASE n WHEN 2 THEN 'oauth' WHEN 3 THEN 'none' ELSE 'bearer' END::public.auth_type,
       CASE WHEN n IN (1, 4, 5) THEN (SELECT t.ct FROM gen_tokens AS t WHERE t.o = j AND t.i = (j * 5 + n) % p.tpo) END,
       CASE WHEN n = 2 THEN 'github' END,
       true, now() - interval '300 days', now() - interval '300 days'
  FROM gen_params AS p, generate_series(1, p.orgs) AS j, generate_series(1, 5) AS n;

-- Personal: 1 to 3 per user (about 2 on average).
INSERT INTO public.mcp_configurations (id, organization_id, user_id, name, type, endpoint, args,
                                       auth_type, bearer_token, oauth_provider, enabled, created_at, updated_at)
SELECT md5('cu' || u || '.' || n)::uuid, md5('o' || bench.org_of(u, p.users, p.orgs))::uuid, md5('u' || u)::uuid,
       'my-mcp-' || n, 'http'::public.mcp_type,
       'https://mcp.example.net/u' || u || '/' || n, '[]'::jsonb,
       a.auth::public.auth_type,
       CASE WHEN a.auth = 'bearer' THEN (SELECT t.ct FROM gen_tokens AS t
                                           WHERE t.o = bench.org_of(u, p.users, p.orgs) AND t.i = (u * 3 + n) % p.tpo) END,
       CASE WHEN a.auth = 'oauth' THEN 'google' END,
       n <> 3 OR u % 2 = 0,
       now() - interval '200 days', now() - interval '200 days'
  FROM gen_params AS p,
       generate_series(1, p.users) AS u,
       LATERAL generate_series(1, 1 + (u % 3)::int) AS n,
       LATERAL (SELECT CASE WHEN (u + n) % 10 < 7 THEN 'bearer'
                            WHEN (u + n) % 10 = 7 THEN 'oauth' ELSE 'none' END AS auth) AS a;

-- mcp_oauth_tokens: each personal oauth config has its user's token; every
-- other user also has a token for their organization's oauth config.
INSERT INTO public.mcp_oauth_tokens (user_id, organization_id, mcp_configuration_id, oauth_provider,
                                     access_token, refresh_token, scope, expires_at)
SELECT c.user_id, c.organization_id, c.id, c.oauth_provider,
       t1.ct, t2.ct, 'read write',
       now() + interval '1 second' * (abs(hashint8(hashtext(c.id::text))) % 86400)
  FROM public.mcp_configurations AS c
  CROSS JOIN gen_params AS p
  JOIN gen_tokens AS t1 ON t1.org = c.organization_id AND t1.i = abs(hashtext(c.id::text)) % p.tpo
  JOIN gen_tokens AS t2 ON t2.org = c.organization_id AND t2.i = abs(hashtext(c.id::text) / 7) % p.tpo
 WHERE c.auth_type = 'oauth' AND c.user_id IS NOT NULL;

INSERT INTO public.mcp_oauth_tokens (user_id, organization_id, mcp_configuration_id, oauth_provider,
                                     access_token, refresh_token, scope, expires_at)
SELECT md5('u' || u)::uuid, md5('o' || x.o)::uuid, md5('co' || x.o || '.2')::uuid, 'github',
       t1.ct, t2.ct, 'repo',
       now() + interval '1 second' * (abs(hashint8(u * 31)) % 86400)
  FROM gen_params AS p,
       generate_series(2, p.users, 2) AS u,
       LATERAL (SELECT bench.org_of(u, p.users, p.orgs) AS o) AS x,
       gen_tokens AS t1, gen_tokens AS t2
 WHERE t1.o = x.o AND t1.i = u % p.tpo AND t2.o = x.o AND t2.i = (u / 3) % p.tpo;

-- system_prompts ----------------------------------------------------------------------
INSERT INTO public.system_prompts (scope, content, priority, created_at, updated_at)
SELECT 'global', 'Global rule ' || n || ': be helpful, honest and careful.', 100 - n,
       now() - interval '500 days', now() - interval '500 days'
  FROM generate_series(1, 5) AS n;

INSERT INTO public.system_prompts (scope, organization_id, content, priority, created_at, updated_at)
SELECT 'organization', md5('o' || j)::uuid, 'Organization ' || j || ' policy ' || n || '.', n * 10,
       now() - interval '300 days', now() - interval '300 days'
  FROM gen_params AS p, generate_series(1, p.orgs) AS j, generate_series(1, 3) AS n;

INSERT INTO public.system_prompts (scope, organization_id, user_id, content, priority, template, enabled,
                                   created_at, updated_at)
SELECT 'user', md5('o' || bench.org_of(u, p.users, p.orgs))::uuid, md5('u' || u)::uuid,
       'Personal preference ' || n || ' of user ' || u || '.', n,
       CASE WHEN n = 1 THEN 'Hello {{name}}' END, u % 10 <> 5 OR n = 1,
       now() - interval '100 days', now() - interval '100 days'
  FROM gen_params AS p, generate_series(5, p.users, 5) AS u, generate_series(1, 2) AS n;

-- audit_logs --------------------------------------------------------------------------
SELECT public.audit_ensure_partitions(3, 12);

INSERT INTO public.audit_logs ("timestamp", user_id, organization_id, action, resource_type, resource_id,
                               details, ip_address, user_agent, success)
SELECT now() - interval '1 second' * (abs(hashint8(e * 104729)) % 31536000),
       md5('u' || u)::uuid,
       md5('o' || bench.org_of(u, p.users, p.orgs))::uuid,
       (ARRAY['session.start', 'session.end', 'mcp.list', 'prompt.update', 'user.login'])[1 + e % 5],
       (ARRAY['session', 'session', 'mcp_configuration', 'system_prompt', 'user'])[1 + e % 5],
       md5('r' || e),
       jsonb_build_object('n', e),
       '10.0.0.1'::inet + (e % 65536)::int,
       'agentapi/1.0',
       e % 50 <> 0
  FROM gen_params AS p,
       generate_series(1, p.audit_events) AS e,
       LATERAL (SELECT 1 + abs(hashint8(e)) % p.users AS u) AS x;

DROP TABLE gen_tokens;
DROP TABLE gen_org_keys;

-- Benchmark-only helper: for every admin (user number u, a multiple of 50, or
-- the first user of an organization), the keyset cursor of page 10 of their
-- organization's session list (50 per page, newest first): the 450th row, or
-- the oldest when the organization has fewer. Both forms of workload 2 read it
-- the same way, so it costs them the same.
CREATE TABLE bench.admin_cursor (u bigint PRIMARY KEY, org bigint NOT NULL, created_at timestamptz NOT NULL, id uuid NOT NULL);
INSERT INTO bench.admin_cursor (u, org, created_at, id)
SELECT a.u, a.o, c.created_at, c.id
  FROM (SELECT u, bench.org_of(u, p.users, p.orgs) AS o
          FROM gen_params AS p, generate_series(50, p.users, 50) AS u) AS a
  JOIN LATERAL (SELECT s.created_at, s.id
                  FROM public.user_sessions AS s
                 WHERE s.organization_id = md5('o' || a.o)::uuid
                 ORDER BY s.created_at DESC, s.id DESC
                 LIMIT 1 OFFSET 449) AS c ON true;
GRANT USAGE ON SCHEMA bench TO PUBLIC;
GRANT SELECT ON bench.admin_cursor TO PUBLIC;

DROP TABLE gen_params;
