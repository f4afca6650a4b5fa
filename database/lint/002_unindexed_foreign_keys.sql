-- unindexed_foreign_keys
--
-- What: every foreign key on a table in public or agentapi_auth is covered by
-- an index of the referencing table whose leading columns are exactly the
-- key's columns, in any order, or a hash index on one of the key's columns
-- (the equality lookups of ON DELETE / ON UPDATE can use it; hash indexes
-- are how the schema indexes tenant values no range condition may reach,
-- docs/side-channels.md). A partial index counts only when its predicate
-- is nothing but "<fk column> IS NOT NULL" tests (which every referencing row
-- satisfies); any other predicate, e.g. "scope = 'user'", cannot be used by the
-- lookups PostgreSQL runs for ON DELETE / ON UPDATE actions. Invalid indexes
-- (a failed CREATE INDEX CONCURRENTLY) do not count.
--
-- Why: deleting or re-keying a referenced row (a user, an organization, a
-- configuration) makes PostgreSQL look up the referencing rows by the key's
-- columns. Without such an index that is a sequential scan of the referencing
-- table per referenced row, holding locks, and cascades become O(table size).
--
-- Method: the predicate is deparsed with pg_get_expr, every "(col IS NOT NULL)"
-- test on a key column is removed, and what is left must be only parentheses,
-- AND and white space.
--
-- Healthy: zero rows.
WITH fks AS (
    SELECT con.oid, con.conname, con.conrelid, con.conkey,
           pg_catalog.array_length(con.conkey, 1) AS nkeys
      FROM pg_catalog.pg_constraint AS con
      JOIN pg_catalog.pg_class AS c ON c.oid = con.conrelid
      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     WHERE con.contype = 'f'
       AND n.nspname IN ('public', 'agentapi_auth')
),
candidates AS (
    SELECT fk.oid AS fk_oid,
           i.indexrelid,
           i.indpred IS NULL AS is_total,
           pg_catalog.pg_get_expr(i.indpred, i.indrelid) AS predicate,
           (SELECT pg_catalog.string_agg(
                       pg_catalog.regexp_replace(pg_catalog.quote_ident(a.attname),
                                                 '([].^$*+?(){}|\\[])', '\\\1', 'g'), '|')
              FROM pg_catalog.pg_attribute AS a
             WHERE a.attrelid = fk.conrelid AND a.attnum = ANY (fk.conkey)) AS key_columns_re
      FROM fks AS fk
      JOIN pg_catalog.pg_index AS i ON i.indrelid = fk.conrelid
     WHERE i.indisvalid
       AND ((i.indnkeyatts >= fk.nkeys
             -- the first nkeys index columns are the key's columns, in any order
             AND (SELECT pg_catalog.array_agg(k ORDER BY k)
                    FROM pg_catalog.unnest((pg_catalog.string_to_array(i.indkey::text, ' ')::int2[])[1:fk.nkeys]) AS k)
                 = (SELECT pg_catalog.array_agg(k ORDER BY k) FROM pg_catalog.unnest(fk.conkey) AS k))
            -- or a hash index on one of the key's columns (equality lookups only,
            -- which is all the foreign key's actions run; docs/side-channels.md)
            OR ((SELECT am.amname FROM pg_catalog.pg_class AS ic JOIN pg_catalog.pg_am AS am ON am.oid = ic.relam
                  WHERE ic.oid = i.indexrelid) = 'hash'
                AND i.indkey[0] = ANY (fk.conkey)))
),
usable AS (
    SELECT cand.fk_oid, cand.indexrelid
      FROM candidates AS cand
     WHERE cand.is_total
        OR pg_catalog.regexp_replace(
               pg_catalog.regexp_replace(cand.predicate,
                                         '(' || cand.key_columns_re || ') IS NOT NULL', '', 'g'),
               '\mAND\M|[()[:space:]]', '', 'g') = ''
)
SELECT pg_catalog.format('%s.%I', fk.conrelid::pg_catalog.regclass, fk.conname) AS object,
       pg_catalog.format('no index of %s starts with the key columns (%s)%s',
           fk.conrelid::pg_catalog.regclass,
           (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY pg_catalog.array_position(fk.conkey, a.attnum))
              FROM pg_catalog.pg_attribute AS a
             WHERE a.attrelid = fk.conrelid AND a.attnum = ANY (fk.conkey)),
           coalesce('; partial indexes with an unusable predicate: '
                    || (SELECT pg_catalog.string_agg(cand.indexrelid::pg_catalog.regclass::text, ', ')
                          FROM candidates AS cand WHERE cand.fk_oid = fk.oid), '')) AS detail
  FROM fks AS fk
 WHERE NOT EXISTS (SELECT 1 FROM usable AS u WHERE u.fk_oid = fk.oid)
 ORDER BY 1;
