-- policy_unwrapped_call
--
-- What: no row-level security policy (USING or WITH CHECK) calls
-- current_setting() or a function of schema agentapi_auth other than as the
-- whole select list of a scalar subquery, i.e. "(SELECT agentapi_auth.user_id())".
--
-- Why: a bare call in a policy is evaluated once per row scanned. Wrapped in a
-- scalar subquery it becomes an InitPlan, evaluated once per statement, and the
-- comparison becomes "column = $param", which can use an index. The helpers
-- are SECURITY DEFINER lookups into users; per-row they turn every scan into a
-- nested loop of lookups (Supabase's auth_rls_initplan lint, the same idea).
--
-- Method (text based): take the deparsed expression from pg_policies
-- (qual for USING, with_check for WITH CHECK). A "context call" is
-- "current_setting(" (optionally "pg_catalog."-qualified) or the name of any
-- function in schema agentapi_auth followed by "(" (optionally
-- "agentapi_auth."-qualified, so the lint works whatever search_path the
-- deparser sees). Every context call directly preceded by "(SELECT " (the
-- deparser writes "( SELECT ") is removed; if any context call is left, the
-- policy is reported. A call deeper inside a subquery (e.g. in its WHERE) is
-- reported too: there it still runs once per row of that subquery.
--
-- Healthy: zero rows.
WITH helper AS (
    SELECT '(?:\m(?:pg_catalog\.)?current_setting'
           || coalesce('|\m(?:agentapi_auth\.)?(?:' || pg_catalog.string_agg(DISTINCT p.proname, '|') || ')', '')
           || ')\s*\(' AS call_re
      FROM pg_catalog.pg_proc AS p
      JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
     WHERE n.nspname = 'agentapi_auth'
       AND p.proname ~ '^[a-z_][a-z0-9_]*$'
),
exprs AS (
    SELECT pol.schemaname, pol.tablename, pol.policyname, 'USING' AS clause, pol.qual AS expr
      FROM pg_catalog.pg_policies AS pol
     WHERE pol.qual IS NOT NULL
    UNION ALL
    SELECT pol.schemaname, pol.tablename, pol.policyname, 'WITH CHECK', pol.with_check
      FROM pg_catalog.pg_policies AS pol
     WHERE pol.with_check IS NOT NULL
),
unwrapped AS (
    SELECT e.schemaname, e.tablename, e.policyname, e.clause,
           pg_catalog.regexp_replace(e.expr, '\(\s*SELECT\s+' || h.call_re, '(SELECT #(', 'g') AS rest,
           h.call_re
      FROM exprs AS e CROSS JOIN helper AS h
)
SELECT pg_catalog.format('policy %I on %I.%I', u.policyname, u.schemaname, u.tablename) AS object,
       pg_catalog.format('%s calls %s...) outside a scalar subquery; write (SELECT %s...)) so it runs once per statement',
                         u.clause,
                         pg_catalog.substring(u.rest, u.call_re),
                         pg_catalog.substring(u.rest, u.call_re)) AS detail
  FROM unwrapped AS u
 WHERE u.rest ~ u.call_re
 ORDER BY 1, u.clause;
