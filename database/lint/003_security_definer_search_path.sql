-- security_definer_search_path
--
-- What: every SECURITY DEFINER function or procedure in our schemas (public,
-- agentapi_auth, extensions; extension members excluded) pins search_path in
-- its own configuration (pg_proc.proconfig has a "search_path=..." entry, as
-- written by CREATE FUNCTION ... SET search_path = '').
--
-- Why: a definer function runs with its owner's rights. If it resolves names
-- through the caller's search_path, a caller who can create objects in any
-- schema on that path (or in pg_temp) can shadow a table, operator or function
-- the body uses and run code as agentapi_owner. A pinned, empty search_path
-- with fully qualified names closes that hole.
--
-- Healthy: zero rows.
SELECT pg_catalog.format('%I.%I(%s)', n.nspname, p.proname,
                         pg_catalog.pg_get_function_identity_arguments(p.oid)) AS object,
       CASE WHEN p.proconfig IS NULL
            THEN 'SECURITY DEFINER without a pinned search_path (no SET clause at all)'
            ELSE 'SECURITY DEFINER without a pinned search_path (SET: '
                 || pg_catalog.array_to_string(p.proconfig, ', ') || ')'
       END AS detail
  FROM pg_catalog.pg_proc AS p
  JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
 WHERE n.nspname IN ('public', 'agentapi_auth', 'extensions')
   AND p.prosecdef
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) AS cfg
                    WHERE cfg LIKE 'search\_path=%')
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d
                    WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                      AND d.objid = p.oid AND d.deptype = 'e')
 ORDER BY 1;
