-- app_role_posture
--
-- What: the three contract roles exist with the attributes the contract gives
-- them:
--   * agentapi_app is not SUPERUSER, not BYPASSRLS, not CREATEROLE; it owns no
--     object (in any database of the cluster, per pg_shdepend); and it is not a
--     member, directly or indirectly, of agentapi_owner, agentapi_service, a
--     SUPERUSER or BYPASSRLS role, pg_read_all_data or pg_write_all_data;
--   * agentapi_owner and agentapi_service are not SUPERUSER or BYPASSRLS
--     either (they work through policies of their own), and none of the three
--     has CREATEROLE, CREATEDB or REPLICATION;
--   * agentapi_owner, agentapi_app and agentapi_service are NOLOGIN.
--
-- Why: RLS is the tenant boundary, and it does not apply to superusers, to
-- BYPASSRLS roles or to a table's owner (FORCE aside); membership in a
-- privileged role lets the application SET ROLE to it. The schema creates the
-- roles with these attributes and never re-asserts them with ALTER ROLE (which
-- managed PostgreSQL refuses to non-superusers), so this lint is what keeps
-- watching them. The group roles are NOLOGIN so that every login is a named,
-- separately revocable member.
--
-- Roles are cluster-wide: this reports on the cluster the database is in.
-- Healthy: zero rows.
WITH expected (rolname) AS (
    VALUES ('agentapi_owner'), ('agentapi_app'), ('agentapi_service')
),
app AS (
    SELECT r.oid, r.rolname FROM pg_catalog.pg_roles AS r WHERE r.rolname = 'agentapi_app'
),
findings (object, detail) AS (
    SELECT pg_catalog.format('role %I', e.rolname), 'role does not exist'
      FROM expected AS e
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = e.rolname)
    UNION ALL
    SELECT pg_catalog.format('role %I', r.rolname), 'can log in; it must be a NOLOGIN group role granted to logins'
      FROM pg_catalog.pg_roles AS r JOIN expected AS e USING (rolname)
     WHERE r.rolcanlogin
    UNION ALL
    SELECT pg_catalog.format('role %I', r.rolname),
           a.attr || '; it works through policies of its own and needs no role attribute'
      FROM pg_catalog.pg_roles AS r
     CROSS JOIN LATERAL (VALUES (r.rolsuper, 'is SUPERUSER'),
                                (r.rolbypassrls, 'has BYPASSRLS'),
                                (r.rolcreaterole, 'has CREATEROLE')) AS a (flag, attr)
     WHERE r.rolname IN ('agentapi_owner', 'agentapi_service') AND a.flag
    UNION ALL
    SELECT pg_catalog.format('role %I', r.rolname), a.attr || '; no contract role needs it'
      FROM pg_catalog.pg_roles AS r JOIN expected AS e USING (rolname)
     CROSS JOIN LATERAL (VALUES (r.rolcreatedb, 'has CREATEDB'),
                                (r.rolreplication, 'has REPLICATION')) AS a (flag, attr)
     WHERE a.flag
    UNION ALL
    SELECT 'role agentapi_app', a.attr || '; the application role must always be subject to RLS'
      FROM pg_catalog.pg_roles AS r
     CROSS JOIN LATERAL (VALUES (r.rolsuper, 'is SUPERUSER'),
                                (r.rolbypassrls, 'has BYPASSRLS'),
                                (r.rolcreaterole, 'has CREATEROLE')) AS a (flag, attr)
     WHERE r.rolname = 'agentapi_app' AND a.flag
    UNION ALL
    SELECT 'role agentapi_app',
           'owns ' || CASE WHEN d.dbid = 0
                             OR d.dbid = (SELECT db.oid FROM pg_catalog.pg_database AS db
                                           WHERE db.datname = pg_catalog.current_database())
                           THEN pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
                           ELSE pg_catalog.format('an object (%s, oid %s) in database %s',
                                    d.classid::pg_catalog.regclass, d.objid,
                                    coalesce((SELECT pg_catalog.quote_ident(db.datname)
                                                FROM pg_catalog.pg_database AS db WHERE db.oid = d.dbid),
                                             d.dbid::text))
                      END || '; it must own nothing (owners bypass RLS and can change grants)'
      FROM pg_catalog.pg_shdepend AS d
      JOIN app ON app.oid = d.refobjid
     WHERE d.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
       AND d.deptype = 'o'
    UNION ALL
    SELECT 'role agentapi_app',
           pg_catalog.format('is a member of %I; it could SET ROLE to it', r.rolname)
      FROM pg_catalog.pg_roles AS r CROSS JOIN app
     WHERE r.oid <> app.oid
       AND (r.rolname IN ('agentapi_owner', 'agentapi_service', 'pg_read_all_data', 'pg_write_all_data')
            OR r.rolsuper OR r.rolbypassrls)
       AND pg_catalog.pg_has_role(app.oid, r.oid, 'MEMBER')
)
SELECT f.object, f.detail FROM findings AS f ORDER BY 1, 2;
