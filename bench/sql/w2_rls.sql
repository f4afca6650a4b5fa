-- Workload 2, form (a): admin pages as agentapi_app under row-level security.
-- Page 10 of the organization's active sessions by keyset (the library's
-- SESSION_LIST_ACTIVE shape; the cursor comes from bench.admin_cursor), then
-- page 1 of the organization's audit events of the last 7 days (AUDIT_QUERY
-- shape, 50 rows + 1 to know whether a next page exists).
-- Variables: :nadmins (admins are users 50, 100, ...; run.py gives the count of
-- those in the largest organization, users 1..n, so every page is full).
-- BEGIN and the context statement travel in one round trip (a pipeline), as the
-- library sends them (agentapi_db.db); the server still does all of their work.
-- The context is authenticated (issue 14): the database has a context key, so
-- app.user_id counts only with app.context_token, an HMAC token for that user.
-- pgbench cannot compute an HMAC, so run.py signs one token per user in advance
-- (agentapi_db.context.ContextKey.sign, valid 12 hours) into bench.context_tokens
-- and the context statement reads it: the same single statement and round trip,
-- with a primary-key lookup that the library (which signs in-process) does not
-- make. That lookup is charged to form (a) only: conservative.
\set a random(1, :nadmins)
\set u 50 * :a
\startpipeline
BEGIN;
SELECT set_config('role', 'agentapi_app', true), set_config('app.user_id', t.user_id::text, true),
       set_config('app.context_token', t.token, true)
  FROM bench.context_tokens AS t
 WHERE t.u = :u;
\endpipeline
SELECT id, user_id, organization_id, workspace_path, system_prompt, metadata,
       created_at, expires_at, last_active_at,
       user_email, user_role, organization_name, organization_slug
  FROM public.active_user_sessions
 WHERE (created_at, id) < (SELECT c.created_at, c.id FROM bench.admin_cursor AS c WHERE c.u = :u)
 ORDER BY created_at DESC, id DESC
 LIMIT 50;
SELECT id, "timestamp", user_id, organization_id, action, resource_type, resource_id, details,
       host(ip_address) AS ip_address, user_agent, success, error_message
  FROM public.audit_logs
 WHERE "timestamp" >= now() - interval '7 days'
 ORDER BY "timestamp" DESC, id DESC
 LIMIT 51;
COMMIT;
