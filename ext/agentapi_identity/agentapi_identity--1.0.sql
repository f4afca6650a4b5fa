-- agentapi_identity 1.0: the C side of the identity cache.
-- Installed by database/schema.sql (as the superuser) into the schema
-- agentapi_auth when the server has it; see README.md beside this file.

\echo Use "CREATE EXTENSION agentapi_identity WITH SCHEMA agentapi_auth" to load this file. \quit

CREATE FUNCTION @extschema@.cached_user_id() RETURNS uuid
    AS 'MODULE_PATHNAME', 'agentapi_identity_user_id' LANGUAGE C STABLE;
CREATE FUNCTION @extschema@.cached_organization_id() RETURNS uuid
    AS 'MODULE_PATHNAME', 'agentapi_identity_organization_id' LANGUAGE C STABLE;
CREATE FUNCTION @extschema@.cached_admin_organization_id() RETURNS uuid
    AS 'MODULE_PATHNAME', 'agentapi_identity_admin_organization_id' LANGUAGE C STABLE;
CREATE FUNCTION @extschema@.cached_user_email() RETURNS text
    AS 'MODULE_PATHNAME', 'agentapi_identity_user_email' LANGUAGE C STABLE;

COMMENT ON FUNCTION @extschema@.cached_user_id() IS
    'The acting user (app.user_id if it names an active user in public.users), as the statement''s snapshot sees it; looked up through the index at most once per transaction and app.user_id value, then rechecked by row version.';
COMMENT ON FUNCTION @extschema@.cached_organization_id() IS
    'The acting user''s organization, from the identity cache (see cached_user_id()).';
COMMENT ON FUNCTION @extschema@.cached_admin_organization_id() IS
    'The acting user''s organization if they are an active admin, from the identity cache (see cached_user_id()).';
COMMENT ON FUNCTION @extschema@.cached_user_email() IS
    'The acting user''s email, from the identity cache (see cached_user_id()).';

REVOKE ALL ON FUNCTION
    @extschema@.cached_user_id(),
    @extschema@.cached_organization_id(),
    @extschema@.cached_admin_organization_id(),
    @extschema@.cached_user_email()
FROM PUBLIC;
