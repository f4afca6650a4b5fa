-- identity_helpers
--
-- What: the four identity helpers that policies call, agentapi_auth.user_id(),
-- organization_id(), admin_organization_id() and user_email(), are STABLE, owned
-- by agentapi_owner, and all take the same one of the two shapes that
-- agentapi_auth.use_identity_cache() installs:
--   * portable: LANGUAGE plpgsql, SECURITY DEFINER, with exactly the body that
--     use_identity_cache(false) writes (pinned here by its md5; edit both
--     together). The pinned search_path is security_definer_search_path's.
--   * identity cache: LANGUAGE sql, SECURITY INVOKER, no SET clause (so it is
--     inlined), whose body is exactly RETURN agentapi_auth.cached_<name>(); that
--     function belongs to the extension agentapi_identity, is STABLE, not
--     SECURITY DEFINER, and is the C symbol agentapi_identity_<name>.
--
-- Why: a helper of any other shape decides tenancy some other way. A body that
-- returns requested_user_id() or reads a setting trusts what the caller set by
-- itself, which the contract forbids; an IMMUTABLE helper (or cache function)
-- is folded into cached plans, so one user's answer would serve the next; a
-- cache function bound to another symbol gives another answer (everybody an
-- admin). Mixed shapes are a half-finished switch between the two.
--
-- Healthy: zero rows.
WITH helpers (name, portable_md5) AS (
    VALUES ('user_id', 'b145e062b1039db6d232df7a3bdf885f'),
           ('organization_id', '9be340cb66bb74b23870202a426cd05f'),
           ('admin_organization_id', '93cf1ce9409d7c4b5a56590759b41a61'),
           ('user_email', 'f983edb0c5e65f1b8411f9954558ec33')
),
shapes AS (
    SELECT h.name,
           CASE
               WHEN p.oid IS NULL THEN 'missing'
               WHEN p.provolatile <> 's' OR pg_catalog.pg_get_userbyid(p.proowner) <> 'agentapi_owner'
                   THEN 'other'
               WHEN p.prosecdef AND l.lanname = 'plpgsql'
                    AND pg_catalog.md5(p.prosrc) = h.portable_md5
                   THEN 'portable'
               WHEN NOT p.prosecdef AND l.lanname = 'sql' AND p.proconfig IS NULL
                    AND pg_catalog.pg_get_function_sqlbody(p.oid)
                        = 'RETURN agentapi_auth.cached_' || h.name || '()'
                    AND EXISTS (
                        SELECT 1
                          FROM pg_catalog.pg_proc AS c
                          JOIN pg_catalog.pg_language AS cl ON cl.oid = c.prolang
                          JOIN pg_catalog.pg_depend AS m
                            ON m.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                           AND m.objid = c.oid AND m.deptype = 'e'
                          JOIN pg_catalog.pg_extension AS x
                            ON x.oid = m.refobjid AND x.extname = 'agentapi_identity'
                         WHERE c.pronamespace = 'agentapi_auth'::pg_catalog.regnamespace
                           AND c.proname = 'cached_' || h.name AND c.pronargs = 0
                           AND cl.lanname = 'c' AND c.provolatile = 's' AND NOT c.prosecdef
                           AND c.proconfig IS NULL
                           AND c.prosrc = 'agentapi_identity_' || h.name
                           AND c.probin = '$libdir/agentapi_identity')
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
           ELSE 'identity helper is neither the portable STABLE SECURITY DEFINER plpgsql lookup (with the body use_identity_cache(false) writes) nor the inlinable RETURN agentapi_auth.cached_' || s.name || '() of the identity cache, owned by agentapi_owner (agentapi_auth.use_identity_cache installs either)'
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
