-- missing_comments
--
-- What: every table (partitions included), view, materialized view, function
-- or procedure and user-defined type (enum, domain, range, composite) in
-- schemas public and agentapi_auth, and every row-level security policy on
-- their tables, has a non-blank COMMENT. Extension members are ignored;
-- row types of tables and array types are not separate objects here.
--
-- Why: the schema is the contract's documentation (\d+, \df+, pg_dump and the
-- agentapi-db tools show these comments). A policy without a comment is the
-- hardest thing in the schema to review: its comment says which cell of the
-- access matrix it implements.
--
-- Healthy: zero rows.
WITH our_schemas AS (
    SELECT n.oid, n.nspname FROM pg_catalog.pg_namespace AS n
     WHERE n.nspname IN ('public', 'agentapi_auth')
),
objects (object, description, classid, objid) AS (
    SELECT pg_catalog.format('%s %I.%I',
               CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' ELSE 'table' END,
               s.nspname, c.relname),
           pg_catalog.obj_description(c.oid, 'pg_class'),
           'pg_catalog.pg_class'::pg_catalog.regclass, c.oid
      FROM pg_catalog.pg_class AS c
      JOIN our_schemas AS s ON s.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
    UNION ALL
    SELECT pg_catalog.format('function %I.%I(%s)', s.nspname, p.proname,
                             pg_catalog.pg_get_function_identity_arguments(p.oid)),
           pg_catalog.obj_description(p.oid, 'pg_proc'),
           'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid
      FROM pg_catalog.pg_proc AS p
      JOIN our_schemas AS s ON s.oid = p.pronamespace
    UNION ALL
    SELECT pg_catalog.format('type %I.%I', s.nspname, t.typname),
           pg_catalog.obj_description(t.oid, 'pg_type'),
           'pg_catalog.pg_type'::pg_catalog.regclass, t.oid
      FROM pg_catalog.pg_type AS t
      JOIN our_schemas AS s ON s.oid = t.typnamespace
     WHERE t.typtype IN ('e', 'd', 'r', 'c')
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type AS elem WHERE elem.typarray = t.oid)
       AND (t.typrelid = 0
            OR EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
    UNION ALL
    SELECT pg_catalog.format('policy %I on %I.%I', pol.polname, s.nspname, c.relname),
           pg_catalog.obj_description(pol.oid, 'pg_policy'),
           'pg_catalog.pg_policy'::pg_catalog.regclass, pol.oid
      FROM pg_catalog.pg_policy AS pol
      JOIN pg_catalog.pg_class AS c ON c.oid = pol.polrelid
      JOIN our_schemas AS s ON s.oid = c.relnamespace
)
SELECT o.object,
       CASE WHEN o.description IS NULL THEN 'has no COMMENT' ELSE 'has a blank COMMENT' END AS detail
  FROM objects AS o
 WHERE coalesce(pg_catalog.btrim(o.description), '') = ''
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d
                    WHERE d.classid = o.classid AND d.objid = o.objid AND d.deptype = 'e')
 ORDER BY 1;
