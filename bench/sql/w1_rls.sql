-- Workload 1, form (a): session start as agentapi_app under row-level security,
-- written as an application on RLS writes it: no tenant filter anywhere.
-- Read the session; list the effective MCP configs (a personal config shadows an
-- org-wide one of the same name) with bearer tokens decrypted; the effective
-- prompts; log an audit event. Form (b), w1_filter.sql, is the same statements
-- with the tenant filters written by hand.
-- Variables: :nusers, :key (a bind parameter under -M prepared).
-- BEGIN and the context statement travel in one round trip (a pipeline), as the
-- library sends them (agentapi_db.db); the server still does all of their work.
-- Form (b) has no context statement: both forms make six round trips.
\set u random(1, :nusers)
\startpipeline
BEGIN;
SELECT set_config('role', 'agentapi_app', true), set_config('app.user_id', md5('u' || :u)::uuid::text, true);
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
       public.decrypt_token(v.bearer_token, :key) AS bearer_token
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
