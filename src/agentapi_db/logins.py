"""Login roles for the application and for maintenance (``agentapi-db login create``).

A deployment gives each process a login of its own, granted exactly one of the
contract's group roles: ``agentapi_app`` for the application, ``agentapi_service``
for provisioning and maintenance. Logins are ``NOINHERIT``: they have no rights of
their own until the library's ``SET LOCAL ROLE`` picks the group role for a
transaction, so a connection outside a context sees nothing.

The deploying login needs CREATEROLE, and on PostgreSQL 16+ ADMIN on the group role
(which it has when ``agentapi-db migrate`` created the roles). The password is
turned into a SCRAM-SHA-256 verifier in this process (libpq's
``PQencryptPasswordConn``), so the statement that reaches the server, and any log
of it, carries the verifier, never the password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from agentapi_db.contract import APP_ROLE, SERVICE_ROLE
from agentapi_db.errors import AlreadyExists, InvalidInput

__all__ = ["LOGIN_GROUPS", "CreatedLogin", "create_login"]

Conn = psycopg.Connection[TupleRow]

LOGIN_GROUPS = {"app": APP_ROLE, "service": SERVICE_ROLE}
"""``--role`` value -> the group role the login is granted."""

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# --------------------------------------------------------------------------- SQL
_SQL_ROLE_EXISTS = "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s"
_SQL_CREATE = "CREATE ROLE {} LOGIN NOINHERIT PASSWORD {}"
_SQL_GRANT = "GRANT {} TO {}"
_SQL_COMMENT = "COMMENT ON ROLE {} IS {}"
_SQL_SET = "ALTER ROLE {} SET {} = {}"

LOGIN_TIMEOUTS: dict[str, str] = {
    "lock_timeout": "5s",
    "statement_timeout": "30s",
    "idle_in_transaction_session_timeout": "60s",
}
"""What every login made here gets (``ALTER ROLE ... SET``): a transaction of the
login holds a lock at most one statement (statement_timeout) plus the pauses between
statements (idle_in_transaction_session_timeout), and waits for one at most
lock_timeout. They bound accidents and leaked transactions; the login may still change
them in its own session, so they are no defence against an attacker (docs/security.md)."""


@dataclass(frozen=True)
class CreatedLogin:
    """What :func:`create_login` made."""

    name: str
    group: str


def create_login(
    conn: Conn,
    name: str,
    role: str,
    password: str,
    *,
    timeouts: dict[str, str] | None = None,
) -> CreatedLogin:
    """Create login ``name`` (NOINHERIT) with ``password`` and grant it ``role``'s group.

    The login gets :data:`LOGIN_TIMEOUTS` (``timeouts`` overrides single values).

    Runs in one transaction on ``conn``: nothing is left half-made. Raises
    :class:`InvalidInput` for a bad name, role or empty password and
    :class:`AlreadyExists` when a role of that name exists.
    """
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            "a login name is 1-63 characters of a-z, 0-9 and _, not starting with a digit",
            rule="login_name",
        )
    group = LOGIN_GROUPS.get(role)
    if group is None:
        raise InvalidInput(
            f"role must be one of {', '.join(sorted(LOGIN_GROUPS))}", rule="login_role"
        )
    if not password:
        raise InvalidInput("the password is empty", rule="login_password")
    verifier = conn.pgconn.encrypt_password(
        password.encode(), name.encode(), b"scram-sha-256"
    ).decode()
    with conn.transaction():
        if conn.execute(_SQL_ROLE_EXISTS, (name,)).fetchone() is not None:
            raise AlreadyExists(f"a role named {name} already exists", rule="pg_roles")
        ident = sql.Identifier(name)
        conn.execute(sql.SQL(_SQL_CREATE).format(ident, sql.Literal(verifier)))
        conn.execute(sql.SQL(_SQL_GRANT).format(sql.Identifier(group), ident))
        for setting, value in (LOGIN_TIMEOUTS | (timeouts or {})).items():
            if setting not in LOGIN_TIMEOUTS:
                raise InvalidInput(f"unknown timeout {setting}", rule="login_timeouts")
            conn.execute(
                sql.SQL(_SQL_SET).format(ident, sql.Identifier(setting), sql.Literal(value))
            )
        conn.execute(
            sql.SQL(_SQL_COMMENT).format(
                ident, sql.Literal(f"agentapi-db {role} login (member of {group}).")
            )
        )
    return CreatedLogin(name=name, group=group)
