"""The identity helpers a database uses, and switching them (``agentapi-db identity-cache``).

Row-level security asks ``agentapi_auth.user_id()``, ``organization_id()``,
``admin_organization_id()`` and ``user_email()`` who the acting user is. They come in
two implementations (database/schema.sql, section 5):

* ``portable``: SECURITY DEFINER lookups in ``users`` on every call; any server.
* ``cache``: inlined calls of the C extension ``agentapi_identity`` (``ext/``), which
  looks the user up once per transaction.

:func:`identity_mode` reports which one a database has; :func:`use_identity_cache`
switches, as ``agentapi_owner``, through ``agentapi_auth.use_identity_cache()``. The
extension itself is installed by a superuser (``schema.sql`` does it when the server
has it). Both need a superuser connection or a member of ``agentapi_owner``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Final, LiteralString

import psycopg

from agentapi_db.errors import ConfigurationError
from agentapi_db.lint import run_lints
from agentapi_db.opsdb import Conn

__all__ = ["IdentityMode", "identity_mode", "use_identity_cache"]

# --------------------------------------------------------------------------- SQL

# Which shape the helpers have; the identity_helpers lint says whether it is sound.
_SQL_MODE: Final[LiteralString] = """
SELECT coalesce(bool_and(l.lanname = 'sql'), false),
       (SELECT e.extversion FROM pg_catalog.pg_extension AS e
         WHERE e.extname = 'agentapi_identity'),
       (SELECT a.default_version FROM pg_catalog.pg_available_extensions AS a
         WHERE a.name = 'agentapi_identity')
  FROM pg_catalog.pg_proc AS p
  JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
 WHERE p.pronamespace = 'agentapi_auth'::pg_catalog.regnamespace
   AND p.proname IN ('user_id', 'organization_id', 'admin_organization_id', 'user_email')
   AND p.pronargs = 0
"""
_SQL_AS_OWNER: Final[LiteralString] = "SET LOCAL ROLE agentapi_owner"
_SQL_USE: Final[LiteralString] = "SELECT agentapi_auth.use_identity_cache(%s)"



@dataclass(frozen=True)
class IdentityMode:
    """``mode``: ``cache``, ``portable`` or ``invalid`` (the ``identity_helpers`` lint
    has findings: a half-done switch, or a helper of another shape, listed in
    ``problems``); the extension's installed and available versions."""

    mode: str
    extension_version: str | None
    extension_available: str | None
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["problems"] = list(self.problems)
        return data


def identity_mode(conn: Conn) -> IdentityMode:
    """Which identity helpers the database has (a read of the catalog, any role)."""
    with conn.transaction():
        row = conn.execute(_SQL_MODE).fetchone()
    if row is None:
        raise AssertionError("aggregate query returned no row")
    cached, installed, available = row
    # No lint finding means all four helpers exist and share one sound shape.
    problems = tuple(f"{f.object}: {f.detail}" for f in run_lints(conn, ["identity_helpers"]))
    mode = "invalid" if problems else "cache" if cached else "portable"
    return IdentityMode(
        mode=mode,
        extension_version=None if installed is None else str(installed),
        extension_available=None if available is None else str(available),
        problems=problems,
    )


def use_identity_cache(conn: Conn, enabled: bool) -> IdentityMode:
    """Install the cache (``enabled``) or the portable helpers; commit; the new mode.

    Raises :class:`~agentapi_db.errors.ConfigurationError` when ``enabled`` and the
    extension is not installed in the database (its message says how to install it).
    """
    try:
        with conn.transaction():
            conn.execute(_SQL_AS_OWNER)
            conn.execute(_SQL_USE, (enabled,))
    except psycopg.errors.UndefinedObject as exc:
        hint = exc.diag.message_hint
        raise ConfigurationError(
            f"{exc.diag.message_primary}" + (f". {hint}" if hint else "")
        ) from None
    return identity_mode(conn)
