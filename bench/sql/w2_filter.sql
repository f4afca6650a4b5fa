-- Workload 2, form (b): the same admin pages as a login that bypasses RLS, with
-- the organization filter written by hand (the organization number of admin u
-- is computed here with the generator's formula: the caller's own auth knows it).
-- Variables: :nadmins, :nusers, :norgs.
\set a random(1, :nadmins)
\set u 50 * :a
\set o 1 + int(:norgs * pow((:u - 1.0) / :nusers, 3))
BEGIN;
SELECT id, user_id, organization_id, workspace_path, system_prompt, metadata,
       created_at, expires_at, last_active_at,
       user_email, user_role, organization_name, organization_slug
  FROM public.active_user_sessions
 WHERE organization_id = md5('o' || :o)::uuid
   AND (created_at, id) < (SELECT c.created_at, c.id FROM bench.admin_cursor AS c WHERE c.u = :u)
 ORDER BY created_at DESC, id DESC
 LIMIT 50;
SELECT id, "timestamp", user_id, organization_id, action, resource_type, resource_id, details,
       host(ip_address) AS ip_address, user_agent, success, error_message
  FROM public.audit_logs
 WHERE organization_id = md5('o' || :o)::uuid
   AND "timestamp" >= now() - interval '7 days'
 ORDER BY "timestamp" DESC, id DESC
 LIMIT 51;
COMMIT;
