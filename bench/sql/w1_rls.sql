-- Workload 1, form (a): session start as agentapi_app under row-level security,
-- written as an application on RLS writes it: no tenant filter anywhere.
-- Read the session; list the effective MCP configs (a personal config shadows an
-- org-wide one of the same name) with bearer tokens decrypted; the effective
-- prompts; log an audit event. Form (b), w1_filter.sql, is the same statements
-- with the tenant filters written by hand.
-- Variables: :nusers.
-- Bearer tokens come back as ciphertexts (format ag1, under the organization's
-- data key), as the library's statement returns them: the library decrypts them
-- in the application process (issue 12), so no key reaches the server. Form (b)
-- returns the same ciphertexts; neither form decrypts in SQL.
-- BEGIN and the context statement travel in one round trip (a pipeline), as the
-- library sends them (agentapi_db.db); the server still does all of their work.
-- The context is authenticated (issue 14): the database has a context key, so
-- app.user_id counts only with app.context_token, an HMAC token for that user.
-- pgbench cannot compute an HMAC, so run.py signs one token per user in advance
-- (agentapi_db.context.ContextKey.sign, valid 12 hours) into bench.context_tokens
-- and the context statement reads it: the same single statement and round trip,
-- with a primary-key lookup that the library (which signs in-process) does not
-- make. That lookup is charged to form (a) only: conservative.
-- Form (b) has no context statement: both forms make six round trips.
\set u random(1, :nusers)
\startpipeline
BEGIN;
SELECT set_config('role', 'agentapi_app', true), set_config('app.user_id', t.user_id::text, true),
       set_config('app.context_token', t.token, true)
  FROM bench.context_tokens AS t
 WHERE t.u = :u;
\endpipeline
SELECT id, user_id, organization_id, workspace_path, system_prompt, metadata,
       created_at, expires_at, last_active_at
  FROM public.user_sessions
 WHERE id = md5('s' || :u)::uuid \gset s_
SELECT DISTINCT ON (v.name)
       v.id, v.organization_id, v.user_id, v.name, v.type, v.endpoint, v.command, v.args,
       v.env, v.auth_type, v.oauth_provider, v.enabled, v.created_at, v.updated_at,
       v.bearer_token IS NOT NULL AS has_bearer_token,
       v.organization_name, v.organization_slug, v.user_email, v.config_scope,
       v.bearer_token
  FROM public.effective_mcp_configurations AS v
 ORDER BY v.name, v.user_id NULLS LAST;
SELECT p.id, p.scope, p.organization_id, p.user_id, p.content, p.priority, p.template,
       p.created_at, p.precedence
  FROM public.get_effective_system_prompts(:s_user_id, :s_organization_id) AS p
 ORDER BY p.precedence;
SELECT public.log_audit_event(:s_user_id, :s_organization_id,
           'session.start', 'user_session', :s_id, '{}'::jsonb,
           '127.0.0.1'::inet, 'pgbench', true, NULL) AS id;
COMMIT;
