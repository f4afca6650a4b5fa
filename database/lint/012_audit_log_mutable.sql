-- audit_log_mutable
--
-- What: public.audit_logs and every one of its partitions (the default one
-- and every monthly one, present and future) are append-only:
--   * no role holds UPDATE, DELETE or TRUNCATE on it, its owner included (a
--     NULL ACL means the owner's full default rights, and is reported);
--   * it has an enabled BEFORE UPDATE OR DELETE row trigger and an enabled
--     BEFORE TRUNCATE statement trigger that call
--     public.audit_logs_prevent_change() (TRUNCATE of a partition does not
--     fire its parent's trigger, so each partition needs its own);
--   * no policy on it allows UPDATE or DELETE (FOR UPDATE, FOR DELETE or FOR ALL).
--
-- Why: the contract says no one, agentapi_owner included, may UPDATE or DELETE
-- an audit row; retention drops whole partitions instead. Grants, policies and
-- triggers are three independent locks; a partition created by hand, outside
-- audit_ensure_partitions(), typically has none of them.
--
-- Healthy: zero rows (also when audit_logs does not exist).
WITH parts AS (
    SELECT t.relid AS oid
      FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass('public.audit_logs')) AS t
),
rels AS (
    SELECT c.oid, c.relkind, c.relowner, c.relacl,
           pg_catalog.format('%I.%I', n.nspname, c.relname) AS name
      FROM parts JOIN pg_catalog.pg_class AS c ON c.oid = parts.oid
      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
),
guard AS (
    SELECT pg_catalog.to_regprocedure('public.audit_logs_prevent_change()') AS fn
),
findings (object, detail) AS (
    SELECT r.name,
           pg_catalog.format('%s may %s',
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(
                   (SELECT ro.rolname FROM pg_catalog.pg_roles AS ro WHERE ro.oid = a.grantee)) END,
               pg_catalog.string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type))
      FROM rels AS r
     CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(r.relacl, pg_catalog.acldefault('r', r.relowner))) AS a
     WHERE a.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
     GROUP BY r.name, a.grantee
    UNION ALL
    SELECT r.name, 'no enabled BEFORE UPDATE OR DELETE row trigger calling public.audit_logs_prevent_change()'
      FROM rels AS r CROSS JOIN guard AS g
     WHERE NOT EXISTS (
               SELECT 1 FROM pg_catalog.pg_trigger AS tg
                WHERE tg.tgrelid = r.oid AND tg.tgfoid = g.fn AND tg.tgenabled <> 'D'
                  AND (tg.tgtype & 1) = 1      -- ROW
                  AND (tg.tgtype & 2) = 2      -- BEFORE
                  AND (tg.tgtype & 8) = 8      -- DELETE
                  AND (tg.tgtype & 16) = 16)   -- UPDATE
    UNION ALL
    SELECT r.name, 'no enabled BEFORE TRUNCATE trigger calling public.audit_logs_prevent_change()'
      FROM rels AS r CROSS JOIN guard AS g
     WHERE NOT EXISTS (
               SELECT 1 FROM pg_catalog.pg_trigger AS tg
                WHERE tg.tgrelid = r.oid AND tg.tgfoid = g.fn AND tg.tgenabled <> 'D'
                  AND (tg.tgtype & 2) = 2      -- BEFORE
                  AND (tg.tgtype & 32) = 32)   -- TRUNCATE
    UNION ALL
    SELECT r.name, pg_catalog.format('policy %I allows %s', pol.polname,
                                     CASE pol.polcmd WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END)
      FROM rels AS r JOIN pg_catalog.pg_policy AS pol ON pol.polrelid = r.oid
     WHERE pol.polcmd IN ('w', 'd', '*')
)
SELECT f.object, f.detail FROM findings AS f ORDER BY 1, 2;
