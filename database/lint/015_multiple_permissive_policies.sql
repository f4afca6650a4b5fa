-- multiple_permissive_policies
--
-- What: no table in public has two or more permissive row-level security
-- policies for the same role and the same command (a FOR ALL policy counts for
-- SELECT, INSERT, UPDATE and DELETE).
--
-- Why: PostgreSQL evaluates every permissive policy that applies and ORs them,
-- so two policies cost two sets of checks on every row, and the effective rule
-- is spread over two places where a reviewer sees only one at a time. Write one
-- policy whose expression has both arms (splinter's multiple_permissive_policies).
--
-- Healthy: zero rows.
WITH cmds (polcmd, cmd) AS (
    VALUES ('r'::"char", 'SELECT'), ('a'::"char", 'INSERT'), ('w'::"char", 'UPDATE'), ('d'::"char", 'DELETE')
),
applies AS (
    SELECT n.nspname, c.relname, r.role, cmds.cmd, pol.polname
      FROM pg_catalog.pg_policy AS pol
      JOIN pg_catalog.pg_class AS c ON c.oid = pol.polrelid
      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     CROSS JOIN LATERAL pg_catalog.unnest(pol.polroles) AS r (role)
      JOIN cmds ON pol.polcmd = '*' OR pol.polcmd = cmds.polcmd
     WHERE n.nspname = 'public' AND pol.polpermissive
)
SELECT pg_catalog.format('table %I.%I', a.nspname, a.relname) AS object,
       pg_catalog.format('%s permissive %s policies for %s: %s; merge them into one',
           pg_catalog.count(*), a.cmd,
           CASE WHEN a.role = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.role)) END,
           pg_catalog.string_agg(pg_catalog.quote_ident(a.polname), ', ' ORDER BY a.polname)) AS detail
  FROM applies AS a
 GROUP BY a.nspname, a.relname, a.role, a.cmd
HAVING pg_catalog.count(*) > 1
 ORDER BY 1, 2;
