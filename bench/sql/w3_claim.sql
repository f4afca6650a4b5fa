-- Workload 3: a refresh worker claims the 100 OAuth tokens that expire soonest
-- (agentapi_db.refresh.claim_expiring's statement: FOR UPDATE SKIP LOCKED, a
-- lease). Refresh workers serve every tenant, so there is no RLS form: it runs
-- as agentapi_service, switched to per transaction as the library's
-- service_transaction does; agentapi_service has no BYPASSRLS, it reads and
-- writes through its unconditional policies (mcp_oauth_tokens_service USING
-- (true)). Both tokens come back as ciphertexts: the library decrypts them in
-- the application process (issue 12), so no key reaches the server.
BEGIN;
SELECT set_config('role', 'agentapi_service', true);
WITH due AS (
    SELECT t.id
      FROM public.mcp_oauth_tokens AS t
     WHERE t.expires_at IS NOT NULL
       AND t.expires_at <= now() + interval '1 day'
       AND t.refresh_token IS NOT NULL
       AND (t.refresh_claimed_until IS NULL OR t.refresh_claimed_until <= now())
       AND t.refresh_failure_count < 10
     ORDER BY t.expires_at, t.id
     LIMIT 100
       FOR UPDATE SKIP LOCKED
)
UPDATE public.mcp_oauth_tokens AS t
   SET refresh_claimed_until = now() + interval '2 minutes',
       refresh_claimed_by = 'pgbench'
  FROM due
 WHERE t.id = due.id
RETURNING t.id, t.user_id, t.organization_id, t.mcp_configuration_id, t.oauth_provider,
          t.token_type, t.scope, t.expires_at, t.refresh_claimed_until, t.refresh_failure_count,
          t.access_token, t.refresh_token;
COMMIT;
