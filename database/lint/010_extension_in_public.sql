-- extension_in_public
--
-- What: no extension is installed in schema public (pgcrypto and uuid-ossp
-- belong in the schema "extensions").
--
-- Why: extension functions in public mix with the application's objects,
-- cannot be granted or revoked as a group, and are resolved through
-- search_path by every query; the schema qualifies them as
-- extensions.pgp_sym_encrypt(...) instead.
--
-- Healthy: zero rows.
SELECT pg_catalog.format('extension %I', e.extname) AS object,
       'installed in schema public; use ALTER EXTENSION ... SET SCHEMA extensions' AS detail
  FROM pg_catalog.pg_extension AS e
  JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
 WHERE n.nspname = 'public'
   AND e.extname <> 'plpgsql'
 ORDER BY 1;
