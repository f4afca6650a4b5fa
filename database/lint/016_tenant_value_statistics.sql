-- tenant_value_statistics
--
-- What: no column of a tenant table (organizations, users, user_sessions,
-- mcp_configurations, mcp_oauth_tokens, system_prompts, audit_logs and each of
-- its partitions, organization_data_keys) keeps planner statistics, except
-- organization_id, the expires_at columns of user_sessions and
-- mcp_oauth_tokens, and audit_logs."timestamp" (database/schema.sql section 14).
--
-- Why: the planner estimates a caller's condition from statistics over every
-- tenant's rows, and uses them under row-level security whenever the operator
-- is leakproof (uuid_lt, text_lt, ...). EXPLAIN's row estimate then tells an
-- agentapi_app caller how common a value is among other tenants' rows, and a
-- binary search on it recovers the values (docs/side-channels.md). A new
-- column, or a partition made without audit_ensure_partitions(), starts with
-- the default statistics target.
--
-- Healthy: zero rows.
WITH tenant_tables AS (
    SELECT c.oid, c.relname, c.relname AS family
      FROM pg_catalog.pg_class AS c
     WHERE c.relnamespace = 'public'::pg_catalog.regnamespace
       AND c.relname IN ('organizations', 'users', 'user_sessions', 'mcp_configurations',
                         'mcp_oauth_tokens', 'system_prompts', 'audit_logs', 'organization_data_keys')
    UNION ALL
    SELECT i.inhrelid, p.relname::text, 'audit_logs'
      FROM pg_catalog.pg_inherits AS i
      JOIN pg_catalog.pg_class AS p ON p.oid = i.inhrelid
     WHERE i.inhparent = 'public.audit_logs'::pg_catalog.regclass
)
SELECT pg_catalog.format('column public.%I.%I', t.relname, a.attname) AS object,
       'keeps planner statistics (statistics target '
           || coalesce(a.attstattarget::text, 'default')
           || '); set it to 0: ALTER TABLE ... ALTER COLUMN ... SET STATISTICS 0' AS detail
  FROM tenant_tables AS t
  JOIN pg_catalog.pg_attribute AS a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE a.attname <> 'organization_id'
   AND (t.family, a.attname) NOT IN (('user_sessions', 'expires_at'), ('mcp_oauth_tokens', 'expires_at'),
                                     ('audit_logs', 'timestamp'))
   AND a.attstattarget IS DISTINCT FROM 0
 ORDER BY 1;
