-- global_tenant_indexes
--
-- What: every btree (or other ordered) index of a tenant table leads with the
-- tenant, organization_id (system_prompts: coalesce(organization_id, nil)),
-- except the documented ones that must reach across tenants
-- (database/schema.sql section 4.8). Hash indexes are accepted: they serve
-- equality lookups only.
--
-- Why: a leakproof range or ordered condition of an agentapi_app caller on an
-- index's leading column becomes an index condition below the row-level
-- security policy. The scan then reads other tenants' rows and EXPLAIN
-- ANALYZE's "Rows Removed by Filter" and pg_stat_*'s tuple counters count
-- them: a binary search recovers the hidden values (docs/side-channels.md).
-- A tenant-leading index is bounded by the policy's equality on the tenant.
--
-- Healthy: zero rows.
WITH allowed (index_name, reason) AS (
    VALUES ('organizations_pkey', 'the tenant itself; the policy bounds id'),
           ('organizations_slug_key', 'on lower(slug), not leakproof: no caller condition reaches it'),
           ('users_pkey', 'the identity helpers and the extension look users up by id'),
           ('users_id_organization_id_key', 'target of the composite foreign keys'),
           ('system_prompts_pkey', 'global prompts have no tenant'),
           ('system_prompts_global_idx', 'global prompts only, visible to every active user'),
           ('user_sessions_expires_at_idx', 'cleanup_expired_sessions() scans every tenant'),
           ('mcp_oauth_tokens_expires_at_idx', 'the refresh workers claim across tenants')
),
tenant_indexes AS (
    SELECT i.indexrelid, ic.relname AS index_name,
           pg_catalog.pg_get_indexdef(i.indexrelid, 1, true) AS first_key,
           am.amname
      FROM pg_catalog.pg_index AS i
      JOIN pg_catalog.pg_class AS t ON t.oid = i.indrelid
      JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
      JOIN pg_catalog.pg_am AS am ON am.oid = ic.relam
     WHERE t.relnamespace = 'public'::pg_catalog.regnamespace
       AND NOT t.relispartition
       AND t.relname IN ('organizations', 'users', 'user_sessions', 'mcp_configurations',
                         'mcp_oauth_tokens', 'system_prompts', 'audit_logs', 'organization_data_keys')
)
SELECT pg_catalog.format('index %s', ti.indexrelid::pg_catalog.regclass) AS object,
       pg_catalog.format('leads with %s, not the tenant: a caller''s range condition on it scans other tenants'' rows; lead with organization_id', ti.first_key) AS detail
  FROM tenant_indexes AS ti
 WHERE ti.amname <> 'hash'
   AND ti.first_key <> 'organization_id'
   AND ti.first_key !~ '^COALESCE\(organization_id, ''00000000-0000-0000-0000-000000000000''::uuid\)$'
   AND NOT EXISTS (SELECT 1 FROM allowed AS a WHERE a.index_name = ti.index_name)
 ORDER BY 1;
