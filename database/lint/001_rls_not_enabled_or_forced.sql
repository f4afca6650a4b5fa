-- rls_not_enabled_or_forced
--
-- What: every ordinary or partitioned table in schema public (the seven contract
-- tables and every audit_logs partition, including ones that
-- audit_ensure_partitions() creates later) has row-level security ENABLED and
-- FORCED.
--
-- Why: without ENABLE, policies are ignored and grants alone decide, so one
-- tenant reads another's rows. Without FORCE, the table owner (agentapi_owner,
-- which runs migrations) silently bypasses the policies, including the audit
-- log's "no UPDATE/DELETE" posture. A partition is a table of its own: querying
-- it by name applies its own RLS flags, not its parent's.
--
-- Healthy: zero rows. Extension members are ignored (they are not ours).
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS object,
       pg_catalog.concat_ws('; ',
           CASE WHEN NOT c.relrowsecurity THEN 'row level security is not enabled' END,
           CASE WHEN NOT c.relforcerowsecurity THEN 'row level security is not forced' END) AS detail
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public'
   AND c.relkind IN ('r', 'p')
   AND NOT (c.relrowsecurity AND c.relforcerowsecurity)
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d
                    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1;
