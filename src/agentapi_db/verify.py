"""``agentapi-db verify``: the live database's security posture, one check per line.

The checks:

* every lint of :mod:`agentapi_db.lint` (``database/lint/*.sql``: RLS enabled and
  forced on every table, nothing granted to PUBLIC, definer functions with a
  pinned ``search_path``, views with ``security_invoker``, the contract roles'
  attributes, ...), one check per lint;
* ``login_roles``: no LOGIN role that can act as ``agentapi_app`` is a superuser
  or BYPASSRLS (the application's connection must be subject to RLS);
* ``login_escalation``: no LOGIN role can act both as ``agentapi_app`` and as
  ``agentapi_owner`` (on PostgreSQL 16+ only memberships with SET or INHERIT count;
  the ADMIN-only grant that CREATEROLE gives a role's creator does not);
* ``context_key``: a context key exists and is valid, so ``app.user_id`` counts
  only with a token (:mod:`agentapi_db.context`); without one, the bare id is
  trusted, and this says what an SQL injection could then do;
* ``migration_history``: the bookkeeping schema ``agentapi_meta`` is owned by
  ``agentapi_owner``, grants nothing to PUBLIC and its table forces RLS (the lints
  look at the application's schemas only);
* ``schema_version``: the latest migration is applied and every applied
  migration's checksum matches its file;
* ``secret_format`` and ``secret_logging`` (warnings only): see
  :mod:`agentapi_db.verify_secrets`.

A check passes when it has no findings. Connect as a superuser or as a login that
can read the catalogs and ``agentapi_meta`` (a member of ``agentapi_owner``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from agentapi_db import lint
from agentapi_db.migrations import read_state
from agentapi_db.verify_secrets import check_secret_format, check_secret_logging

__all__ = ["CheckResult", "run_checks"]

Conn = psycopg.Connection[TupleRow]

# --------------------------------------------------------------------------- SQL
# Logins granted agentapi_app (directly or through other roles) that bypass RLS anyway.
# Membership is followed through pg_auth_members: pg_has_role() would count every
# superuser as a member of everything.
_SQL_PRIVILEGED_APP_LOGINS = """
WITH RECURSIVE members (roleid) AS (
    SELECT m.member
      FROM pg_catalog.pg_auth_members AS m
      JOIN pg_catalog.pg_roles AS g ON g.oid = m.roleid
     WHERE g.rolname = 'agentapi_app'
    UNION
    SELECT m.member FROM pg_catalog.pg_auth_members AS m JOIN members ON m.roleid = members.roleid
)
SELECT r.rolname,
       pg_catalog.concat_ws(', ',
           CASE WHEN r.rolsuper THEN 'SUPERUSER' END,
           CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END)
  FROM pg_catalog.pg_roles AS r
  JOIN members ON members.roleid = r.oid
 WHERE r.rolcanlogin AND (r.rolsuper OR r.rolbypassrls)
 ORDER BY 1
"""

# Logins that can act as agentapi_app and also as agentapi_owner: an SQL injection in
# the application could SET ROLE to the owner and change policies and grants. A
# membership counts when it can be used: on PostgreSQL 16+ one that has the SET or
# INHERIT option (CREATEROLE's automatic ADMIN-only grant to a role's creator does
# not let the creator act as the role); on 15 every membership does.
_SQL_ESCALATING_LOGINS = """
WITH RECURSIVE members (groupname, roleid) AS (
    SELECT g.rolname::text, m.member
      FROM pg_catalog.pg_auth_members AS m
      JOIN pg_catalog.pg_roles AS g ON g.oid = m.roleid
     WHERE g.rolname IN ('agentapi_app', 'agentapi_owner') AND ({usable})
    UNION
    SELECT members.groupname, m.member
      FROM pg_catalog.pg_auth_members AS m JOIN members ON m.roleid = members.roleid
     WHERE {usable}
)
SELECT r.rolname, 'agentapi_owner'
  FROM pg_catalog.pg_roles AS r JOIN members ON members.roleid = r.oid
 WHERE r.rolcanlogin
 GROUP BY r.rolname
HAVING pg_catalog.count(DISTINCT members.groupname) = 2
 ORDER BY 1
"""
# Logins that can act as agentapi_app or agentapi_service, with the timeouts set
# for them in this database or everywhere (role-in-database, role, database).
_SQL_LOGIN_TIMEOUTS = """
WITH RECURSIVE members (roleid) AS (
    SELECT m.member
      FROM pg_catalog.pg_auth_members AS m
      JOIN pg_catalog.pg_roles AS g ON g.oid = m.roleid
     WHERE g.rolname IN ('agentapi_app', 'agentapi_service')
    UNION
    SELECT m.member
      FROM pg_catalog.pg_auth_members AS m JOIN members ON m.roleid = members.roleid
)
, here (oid) AS (
    SELECT d.oid FROM pg_catalog.pg_database AS d
     WHERE d.datname = pg_catalog.current_database()
)
SELECT r.rolname::text,
       pg_catalog.array_cat(pg_catalog.array_cat(
           (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting AS s, here
             WHERE s.setrole = r.oid AND s.setdatabase = here.oid),
           (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting AS s
             WHERE s.setrole = r.oid AND s.setdatabase = 0)),
           (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting AS s, here
             WHERE s.setrole = 0 AND s.setdatabase = here.oid))
  FROM pg_catalog.pg_roles AS r
 WHERE r.rolcanlogin AND NOT r.rolsuper AND r.oid IN (SELECT roleid FROM members)
 ORDER BY 1
"""
_BOUNDED_SETTINGS = ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")
_USABLE_MEMBERSHIP_16 = "m.set_option OR m.inherit_option"  # columns new in 16
_USABLE_MEMBERSHIP_15 = "true"

# The authenticated request context: how many context keys exist, how many count.
_SQL_CONTEXT_KEYS = """
SELECT pg_catalog.count(*),
       pg_catalog.count(*) FILTER (WHERE expires_at IS NULL OR expires_at > now())
  FROM agentapi_auth.context_keys
"""

# Problems of the migration-history schema; zero rows when healthy (or absent:
# schema_version reports a missing history).
_SQL_META_POSTURE = """
SELECT 'schema agentapi_meta', 'owned by ' || pg_catalog.pg_get_userbyid(n.nspowner)
  FROM pg_catalog.pg_namespace AS n
 WHERE n.nspname = 'agentapi_meta' AND pg_catalog.pg_get_userbyid(n.nspowner) <> 'agentapi_owner'
UNION ALL
SELECT 'schema agentapi_meta', 'PUBLIC has ' || a.privilege_type
  FROM pg_catalog.pg_namespace AS n, pg_catalog.aclexplode(n.nspacl) AS a
 WHERE n.nspname = 'agentapi_meta' AND a.grantee = 0
UNION ALL
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname),
       pg_catalog.concat_ws('; ',
           CASE WHEN pg_catalog.pg_get_userbyid(c.relowner) <> 'agentapi_owner'
                THEN 'owned by ' || pg_catalog.pg_get_userbyid(c.relowner) END,
           CASE WHEN NOT (c.relrowsecurity AND c.relforcerowsecurity)
                THEN 'row level security not enabled and forced' END,
           (SELECT 'PUBLIC has ' || pg_catalog.string_agg(a.privilege_type, ', ')
              FROM pg_catalog.aclexplode(c.relacl) AS a WHERE a.grantee = 0))
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = 'agentapi_meta' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
   AND (pg_catalog.pg_get_userbyid(c.relowner) <> 'agentapi_owner'
        OR (c.relkind IN ('r', 'p') AND NOT (c.relrowsecurity AND c.relforcerowsecurity))
        OR EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) AS a WHERE a.grantee = 0))
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class CheckResult:
    """One line of ``agentapi-db verify``."""

    name: str
    description: str
    findings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Worth knowing, but not a failure (the check still passes)."""

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, object]:
        return {
            "check": self.name,
            "ok": self.ok,
            "description": self.description,
            "findings": list(self.findings),
            "warnings": list(self.warnings),
        }


def _rows(conn: Conn, query: str) -> list[tuple[str, str]]:
    return [(str(a), str(b)) for a, b in conn.execute(query.encode()).fetchall()]


def _check_login_roles(conn: Conn) -> CheckResult:
    findings = [
        f"login {name} can act as agentapi_app but is {attrs}"
        for name, attrs in _rows(conn, _SQL_PRIVILEGED_APP_LOGINS)
    ]
    return CheckResult(
        "login_roles", "logins acting as agentapi_app are not SUPERUSER or BYPASSRLS", findings
    )


def _check_login_escalation(conn: Conn) -> CheckResult:
    usable = (
        _USABLE_MEMBERSHIP_16 if conn.info.server_version >= 160000 else _USABLE_MEMBERSHIP_15
    )
    query = sql.SQL(_SQL_ESCALATING_LOGINS).format(usable=sql.SQL(usable))
    findings = [
        f"login {name} can act as agentapi_app and as {other}: an SQL injection in the "
        f"application could SET ROLE {other}; give the application a login of its own"
        for name, other in conn.execute(query).fetchall()
    ]
    return CheckResult(
        "login_escalation",
        "no login acting as agentapi_app can also act as agentapi_owner",
        findings,
    )


def _check_login_timeouts(conn: Conn) -> CheckResult:
    warnings: list[str] = []
    for name, config in conn.execute(_SQL_LOGIN_TIMEOUTS.encode()).fetchall():
        found: dict[str, str] = {}
        for entry in config or []:  # the first (most specific) setting wins
            key, _, value = str(entry).partition("=")
            found.setdefault(key, value)
        unbounded = [s for s in _BOUNDED_SETTINGS if found.get(s, "0") in ("0", "")]
        if unbounded:
            warnings.append(
                f"login {name} has no {', '.join(unbounded)}: one of its transactions can "
                "hold a lock (LOCK TABLE, a long statement, an idle transaction) and stall "
                f"every tenant; ALTER ROLE {name} SET ... (docs/security.md)"
            )
    return CheckResult(
        "login_timeouts",
        "logins acting as agentapi_app or agentapi_service have lock_timeout, "
        "statement_timeout and idle_in_transaction_session_timeout (warnings only)",
        [],
        warnings,
    )


def _check_context_key(conn: Conn) -> CheckResult:
    findings: list[str] = []
    try:
        with conn.transaction():
            row = conn.execute(_SQL_CONTEXT_KEYS).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        row = None
        findings.append(
            "cannot read agentapi_auth.context_keys: run verify as the deploying login, a "
            "member of agentapi_owner, or a superuser"
        )
    except psycopg.errors.UndefinedTable:
        row = None
        findings.append("agentapi_auth.context_keys is missing: run `agentapi-db migrate`")
    if row is not None and row[0] == 0:
        findings.append(
            "no context key is configured: app.user_id is trusted as given, so an SQL "
            "injection in the application (or anyone with its login) can act as any user "
            "whose id it learns, another organization's admin included; run `agentapi-db "
            "context-key create` and give the key to the application (AGENTAPI_CONTEXT_KEY)"
        )
    elif row is not None and row[1] == 0:
        findings.append(
            "every context key has expired: no request context counts, the application sees "
            "nothing; run `agentapi-db context-key rotate`"
        )
    return CheckResult(
        "context_key",
        "the request context is authenticated (a context key exists and is valid)",
        findings,
    )


def _check_meta(conn: Conn) -> CheckResult:
    findings = [f"{obj}: {detail}" for obj, detail in _rows(conn, _SQL_META_POSTURE)]
    return CheckResult(
        "migration_history",
        "agentapi_meta is owned by agentapi_owner, private, RLS forced",
        findings,
    )


def _check_schema_version(conn: Conn) -> CheckResult:
    state = read_state(conn)
    findings: list[str] = []
    if not state.has_history:
        findings.append(
            "no migration history (agentapi_meta.schema_migrations); run `agentapi-db migrate`"
            + (" --baseline" if state.schema_present else "")
        )
    else:
        findings.extend(f"migration {m.version} ({m.name}) is not applied" for m in state.pending)
        findings.extend(state.problems())
    description = (
        "latest migration applied, checksums match "
        f"(database at {state.current_version}, package at {state.latest_version})"
    )
    return CheckResult("schema_version", description, findings)


def _lint_checks(conn: Conn) -> list[CheckResult]:
    findings: dict[str, list[str]] = {item.name: [] for item in lint.LINTS}
    for finding in lint.run_lints(conn):
        findings.setdefault(finding.check, []).append(f"{finding.object}: {finding.detail}")
    descriptions = {item.name: item.description for item in lint.LINTS}
    return [
        CheckResult(f"lint:{name}", descriptions.get(name, name), found)
        for name, found in findings.items()
    ]


def _warning_check(name: str, description: str, warnings: list[str]) -> CheckResult:
    return CheckResult(name, description, [], warnings)


def run_checks(conn: Conn) -> list[CheckResult]:
    """Run every check on ``conn`` (read only; rolls back what it opened)."""
    results = [
        *_lint_checks(conn),
        _check_login_roles(conn),
        _check_login_escalation(conn),
        _check_login_timeouts(conn),
        _check_context_key(conn),
        _check_meta(conn),
        _check_schema_version(conn),
        CheckResult("secret_format", *check_secret_format(conn)),
        _warning_check("secret_logging", *check_secret_logging(conn)),
    ]
    if not conn.autocommit:
        conn.rollback()
    return results
