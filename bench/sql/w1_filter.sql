-- Workload 1, form (b): the statements of w1_rls.sql as a login that bypasses
-- RLS (the physical limit), with the tenant filters written by hand: the caller
-- knows the user id, and takes the organization from the session row.
-- Bearer tokens come back as ciphertexts (format ag1, under the organization's
-- data key), as the library's statement returns them: the library decrypts them
-- in the application process (issue 12), so no key reaches the server. Form (a)
-- returns the same ciphertexts; neither form decrypts in SQL.
-- Variables: :nusers.
\set u random(1, :nusers)
BEGIN;
SELECT id, user_id, organization_id, workspace_path, system_prompt, metadata,
       created_at, expires_at, last_active_at
  FROM public.user_sessions
 WHERE id = md5('s' || :u)::uuid AND user_id = md5('u' || :u)::uuid \gset s_
SELECT DISTINCT ON (v.name)
       v.id, v.organization_id, v.user_id, v.name, v.type, v.endpoint, v.command, v.args,
       v.env, v.auth_type, v.oauth_provider, v.enabled, v.created_at, v.updated_at,
       v.bearer_token IS NOT NULL AS has_bearer_token,
       v.organization_name, v.organization_slug, v.user_email, v.config_scope,
       v.bearer_token
  FROM public.effective_mcp_configurations AS v
 WHERE v.organization_id = :s_organization_id AND (v.user_id IS NULL OR v.user_id = :s_user_id)
 ORDER BY v.name, v.user_id NULLS LAST;
SELECT p.id, p.scope, p.organization_id, p.user_id, p.content, p.priority, p.template,
       p.created_at, p.precedence
  FROM public.get_effective_system_prompts(:s_user_id, :s_organization_id) AS p
 ORDER BY p.precedence;
SELECT public.log_audit_event(:s_user_id, :s_organization_id,
           'session.start', 'user_session', :s_id, '{}'::jsonb,
           '127.0.0.1'::inet, 'pgbench', true, NULL) AS id;
COMMIT;
