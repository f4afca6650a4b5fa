-- security_definer_search_path
--
-- What: every SECURITY DEFINER function or procedure in our schemas (public,
-- agentapi_auth, extensions; extension members excluded) pins search_path in
-- its own configuration, with pg_temp explicitly last (pg_proc.proconfig has
-- "search_path=pg_catalog, pg_temp", as written by
-- CREATE FUNCTION ... SET search_path = pg_catalog, pg_temp).
--
-- Why: a definer function runs with its owner's rights. If it resolves names
-- through the caller's search_path, a caller who can create objects in any
-- schema on that path (or in pg_temp) can shadow a table, operator or function
-- the body uses and run code as agentapi_owner. An empty search_path is NOT
-- enough: PostgreSQL still searches pg_temp first for tables and types, so a
-- caller's pg_temp.uuid domain would be used by the body. Only a search_path
-- that names pg_temp last (and pg_catalog before it) closes the hole.
--
-- Healthy: zero rows.
SELECT pg_catalog.format('%I.%I(%s)', n.nspname, p.proname,
                         pg_catalog.pg_get_function_identity_arguments(p.oid)) AS object,
       CASE WHEN p.proconfig IS NULL
            THEN 'SECURITY DEFINER without a pinned search_path (no SET clause at all)'
            ELSE 'SECURITY DEFINER whose search_path does not end with pg_temp (SET: '
                 || pg_catalog.array_to_string(p.proconfig, ', ') || ')'
       END AS detail
  FROM pg_catalog.pg_proc AS p
  JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
 WHERE n.nspname IN ('public', 'agentapi_auth', 'extensions')
   AND p.prosecdef
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) AS cfg
                    WHERE cfg ~ '^search_path=(.*,\s*)?pg_temp$')
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d
                    WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                      AND d.objid = p.oid AND d.deptype = 'e')
 ORDER BY 1;
