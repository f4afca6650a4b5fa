-- identity_helpers
--
-- What: the four identity helpers that policies call, agentapi_auth.user_id(),
-- organization_id(), admin_organization_id() and user_email(), are all STABLE
-- and all take the same one of the two shapes agentapi_auth.use_identity_cache()
-- installs:
--   * portable: LANGUAGE plpgsql, SECURITY DEFINER (the pinned search_path is
--     security_definer_search_path's to check; the body is not inspected);
--   * identity cache: LANGUAGE sql, SECURITY INVOKER, no SET clause (so it is
--     inlined), whose body is exactly RETURN agentapi_auth.cached_<name>(),
--     the matching function of the extension agentapi_identity.
--
-- Why: a helper of any other shape decides tenancy some other way. An invoker
-- function that returns requested_user_id() or reads a setting trusts what the
-- caller set by itself, which the contract forbids; an IMMUTABLE helper is
-- folded into cached plans, so one user's answer would serve the next. Mixed
-- shapes are a half-finished switch between the two.
--
-- Healthy: zero rows.
WITH helpers (name) AS (
    VALUES ('user_id'), ('organization_id'), ('admin_organization_id'), ('user_email')
),
shapes AS (
    SELECT h.name,
           CASE
               WHEN p.oid IS NULL THEN 'missing'
               WHEN p.provolatile <> 's' THEN 'other'
               WHEN p.prosecdef AND l.lanname = 'plpgsql' THEN 'portable'
               WHEN NOT p.prosecdef AND l.lanname = 'sql' AND p.proconfig IS NULL
                    AND pg_catalog.pg_get_function_sqlbody(p.oid)
                        = 'RETURN agentapi_auth.cached_' || h.name || '()'
                    AND EXISTS (
                        SELECT 1
                          FROM pg_catalog.pg_proc AS c
                          JOIN pg_catalog.pg_depend AS m
                            ON m.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                           AND m.objid = c.oid AND m.deptype = 'e'
                          JOIN pg_catalog.pg_extension AS x
                            ON x.oid = m.refobjid AND x.extname = 'agentapi_identity'
                         WHERE c.pronamespace = 'agentapi_auth'::pg_catalog.regnamespace
                           AND c.proname = 'cached_' || h.name AND c.pronargs = 0)
                   THEN 'cached'
               ELSE 'other'
           END AS shape
      FROM helpers AS h
      LEFT JOIN pg_catalog.pg_proc AS p
        ON p.pronamespace = 'agentapi_auth'::pg_catalog.regnamespace
       AND p.proname = h.name AND p.pronargs = 0
      LEFT JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
)
SELECT pg_catalog.format('agentapi_auth.%I()', s.name) AS object,
       CASE s.shape
           WHEN 'missing' THEN 'identity helper is missing'
           ELSE 'identity helper is neither the portable STABLE SECURITY DEFINER plpgsql lookup nor the inlinable RETURN agentapi_auth.cached_' || s.name || '() of the identity cache (agentapi_auth.use_identity_cache installs either)'
       END AS detail
  FROM shapes AS s
 WHERE s.shape IN ('missing', 'other')
UNION ALL
SELECT 'agentapi_auth identity helpers',
       'helpers mix the portable and the identity-cache shapes: '
       || pg_catalog.string_agg(s.name || ' ' || s.shape, ', ' ORDER BY s.name)
  FROM shapes AS s
HAVING pg_catalog.count(*) FILTER (WHERE s.shape = 'portable') > 0
   AND pg_catalog.count(*) FILTER (WHERE s.shape = 'cached') > 0
 ORDER BY 1;
