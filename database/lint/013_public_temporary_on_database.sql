-- public_temporary_on_database
--
-- What: PUBLIC may not create temporary objects (TEMPORARY) in this database.
--
-- Why: PostgreSQL searches the session's pg_temp schema for tables and types
-- even when a function's search_path does not name it (an empty search_path
-- included). A caller who can create a pg_temp.uuid domain whose CHECK calls
-- their own function gets that function run by any SECURITY DEFINER function
-- that resolves "uuid" without pg_temp pinned last. schema.sql pins
-- search_path = pg_catalog, pg_temp on every definer function AND revokes
-- TEMPORARY from PUBLIC; this lint keeps the second layer in place. Note that
-- CREATE DATABASE ... TEMPLATE does not copy database privileges: a database
-- cloned from a migrated template needs the REVOKE again.
--
-- Healthy: zero rows.
SELECT 'current database' AS object,
       pg_catalog.format('PUBLIC may create temporary objects in database %I',
                         d.datname) AS detail
  FROM pg_catalog.pg_database AS d
 WHERE d.datname = pg_catalog.current_database()
   AND pg_catalog.has_database_privilege('public', d.oid, 'TEMPORARY');
