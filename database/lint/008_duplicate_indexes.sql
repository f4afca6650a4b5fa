-- duplicate_indexes
--
-- What: no table in public or agentapi_auth has two valid indexes with the
-- same access method, key columns and expressions (in the same order), the
-- same operator classes and sort options, and the same predicate.
--
-- Why: a duplicate index serves no query the other does not, yet every write
-- maintains it and it takes space and cache (often left behind by a UNIQUE
-- constraint plus a hand-made index on the same column). Indexes that differ
-- only in INCLUDE columns or uniqueness are reported too: keep the one that
-- does both jobs.
--
-- Healthy: zero rows. Each finding is one set of duplicates.
WITH idx AS (
    SELECT i.indrelid, pg_catalog.format('%I.%I', n.nspname, t.relname) AS table_name,
           i.indexrelid, ic.relam,
           (pg_catalog.string_to_array(i.indkey::text, ' ')::int2[])[1:i.indnkeyatts] AS keys,
           (pg_catalog.string_to_array(i.indclass::text, ' ')::oid[])[1:i.indnkeyatts] AS opclasses,
           (pg_catalog.string_to_array(i.indoption::text, ' ')::int2[])[1:i.indnkeyatts] AS options,
           coalesce(pg_catalog.pg_get_expr(i.indexprs, i.indrelid), '') AS exprs,
           coalesce(pg_catalog.pg_get_expr(i.indpred, i.indrelid), '') AS pred
      FROM pg_catalog.pg_index AS i
      JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
      JOIN pg_catalog.pg_class AS t ON t.oid = i.indrelid
      JOIN pg_catalog.pg_namespace AS n ON n.oid = t.relnamespace
     WHERE n.nspname IN ('public', 'agentapi_auth')
       AND i.indisvalid
)
SELECT idx.table_name AS object,
       'duplicate indexes: '
       || pg_catalog.string_agg(pg_catalog.quote_ident(ic2.relname), ', ' ORDER BY ic2.relname)
       || ' (' || pg_catalog.min(pg_catalog.pg_get_indexdef(idx.indexrelid)) || ')' AS detail
  FROM idx
  JOIN pg_catalog.pg_class AS ic2 ON ic2.oid = idx.indexrelid
 GROUP BY idx.indrelid, idx.table_name, idx.relam, idx.keys, idx.opclasses, idx.options, idx.exprs, idx.pred
HAVING pg_catalog.count(*) > 1
 ORDER BY 1, 2;
