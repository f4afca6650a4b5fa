-- views_security_invoker
--
-- What: every view in schema public has security_invoker = true, and public
-- holds no materialized view.
--
-- Why: by default a view runs its query with its owner's rights. The owner
-- (agentapi_owner) passes RLS through its owner policies, so a plain view
-- would show agentapi_app every tenant's rows. With security_invoker the
-- caller's grants and policies apply. A materialized view cannot be
-- security_invoker at all: it stores whatever its owner saw at refresh time.
--
-- Healthy: zero rows. Extension members are ignored.
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS object,
       CASE WHEN c.relkind = 'm'
            THEN 'materialized view: it stores rows its owner saw and bypasses the reader''s RLS'
            ELSE 'view without security_invoker = true: it reads with its owner''s rights, bypassing the caller''s RLS'
       END AS detail
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public'
   AND c.relkind IN ('v', 'm')
   AND (c.relkind = 'm'
        OR NOT coalesce((SELECT o.option_value::boolean
                           FROM pg_catalog.pg_options_to_table(c.reloptions) AS o
                          WHERE o.option_name = 'security_invoker'), false))
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d
                    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1;
