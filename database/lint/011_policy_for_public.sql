-- policy_for_public
--
-- What: every row-level security policy on a table in public names the roles
-- it applies to (TO agentapi_app, TO agentapi_owner, ...); none applies to
-- PUBLIC, which is what a policy without a TO clause does.
--
-- Why: a policy for PUBLIC also applies to every role created later, on any
-- login of the cluster that happens to get a grant; permissive policies are
-- OR-ed, so a broad PUBLIC policy silently widens what agentapi_app may see.
--
-- Healthy: zero rows.
SELECT pg_catalog.format('policy %I on %I.%I', pol.polname, n.nspname, c.relname) AS object,
       'applies to PUBLIC (no TO clause); name the role it is for' AS detail
  FROM pg_catalog.pg_policy AS pol
  JOIN pg_catalog.pg_class AS c ON c.oid = pol.polrelid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public'
   AND 0::oid = ANY (pol.polroles)
 ORDER BY 1;
