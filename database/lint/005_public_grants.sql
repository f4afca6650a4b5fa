-- public_grants
--
-- What: PUBLIC (every role, present and future) holds no privilege on our
-- objects: the schemas public, agentapi_auth and extensions; the tables,
-- partitions, views, materialized views and sequences in them (and their
-- columns); their functions and procedures (extension members excluded: they
-- sit in the extensions schema, whose USAGE PUBLIC lacks); their enum, domain,
-- range and composite types (row types of tables and array types follow their
-- table or element type and are skipped). It also checks that future
-- functions and types created by agentapi_owner do not leak: its default
-- privileges must revoke PUBLIC's EXECUTE and USAGE.
--
-- Why: PostgreSQL grants EXECUTE on functions and USAGE on types to PUBLIC by
-- default (a NULL ACL means "the defaults", see acldefault()), and any role on
-- the cluster, not only ours, is a member of PUBLIC. The contract says PUBLIC
-- gets nothing; every right is granted to agentapi_app/agentapi_service on
-- purpose.
--
-- Healthy: zero rows.
WITH our_schemas AS (
    SELECT n.oid, n.nspname, n.nspacl, n.nspowner
      FROM pg_catalog.pg_namespace AS n
     WHERE n.nspname IN ('public', 'agentapi_auth', 'extensions')
),
ext_members AS (
    SELECT d.classid, d.objid
      FROM pg_catalog.pg_depend AS d
     WHERE d.deptype = 'e'
),
acls AS (
    -- schemas
    SELECT pg_catalog.format('schema %I', s.nspname) AS object,
           pg_catalog.aclexplode(coalesce(s.nspacl, pg_catalog.acldefault('n', s.nspowner))) AS acl
      FROM our_schemas AS s
    UNION ALL
    -- tables, views, sequences (a NULL relacl grants PUBLIC nothing; explode anyway)
    SELECT pg_catalog.format('%s %I.%I',
               CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
                              WHEN 'm' THEN 'materialized view' ELSE 'table' END,
               s.nspname, c.relname),
           pg_catalog.aclexplode(coalesce(c.relacl,
               pg_catalog.acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner)))
      FROM pg_catalog.pg_class AS c
      JOIN our_schemas AS s ON s.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND NOT EXISTS (SELECT 1 FROM ext_members AS e
                        WHERE e.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND e.objid = c.oid)
    UNION ALL
    -- columns (column ACLs are NULL unless a column-level GRANT was made)
    SELECT pg_catalog.format('column %I.%I.%I', s.nspname, c.relname, a.attname),
           pg_catalog.aclexplode(a.attacl)
      FROM pg_catalog.pg_attribute AS a
      JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
      JOIN our_schemas AS s ON s.oid = c.relnamespace
     WHERE a.attacl IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    -- functions and procedures (a NULL proacl means EXECUTE for PUBLIC)
    SELECT pg_catalog.format('function %I.%I(%s)', s.nspname, p.proname,
                             pg_catalog.pg_get_function_identity_arguments(p.oid)),
           pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner)))
      FROM pg_catalog.pg_proc AS p
      JOIN our_schemas AS s ON s.oid = p.pronamespace
     WHERE NOT EXISTS (SELECT 1 FROM ext_members AS e
                        WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND e.objid = p.oid)
    UNION ALL
    -- types (a NULL typacl means USAGE for PUBLIC)
    SELECT pg_catalog.format('type %I.%I', s.nspname, t.typname),
           pg_catalog.aclexplode(coalesce(t.typacl, pg_catalog.acldefault('T', t.typowner)))
      FROM pg_catalog.pg_type AS t
      JOIN our_schemas AS s ON s.oid = t.typnamespace
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type AS elem WHERE elem.typarray = t.oid)
       AND (t.typrelid = 0
            OR EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
       AND NOT EXISTS (SELECT 1 FROM ext_members AS e
                        WHERE e.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND e.objid = t.oid)
),
findings AS (
    SELECT a.object, (a.acl).privilege_type AS privilege
      FROM acls AS a
     WHERE (a.acl).grantee = 0
    UNION ALL
    -- default privileges of agentapi_owner for future functions and types:
    -- without a global pg_default_acl entry the built-in default (PUBLIC) applies.
    SELECT pg_catalog.format('default privileges of agentapi_owner on %s',
                             CASE k.objtype WHEN 'f' THEN 'functions' ELSE 'types' END),
           k.privilege
      FROM (VALUES ('f'::"char", 'EXECUTE'), ('T'::"char", 'USAGE')) AS k (objtype, privilege)
      JOIN pg_catalog.pg_roles AS r ON r.rolname = 'agentapi_owner'
     WHERE EXISTS (
               SELECT 1
                 FROM pg_catalog.aclexplode(coalesce(
                          (SELECT da.defaclacl FROM pg_catalog.pg_default_acl AS da
                            WHERE da.defaclrole = r.oid AND da.defaclnamespace = 0
                              AND da.defaclobjtype = k.objtype),
                          pg_catalog.acldefault(k.objtype, r.oid))) AS x
                WHERE x.grantee = 0)
)
SELECT f.object,
       'granted to PUBLIC: ' || pg_catalog.string_agg(DISTINCT f.privilege, ', ') AS detail
  FROM findings AS f
 GROUP BY f.object
 ORDER BY 1;
