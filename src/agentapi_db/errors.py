"""The exceptions of agentapi_db, and the mapping from PostgreSQL errors to them.

Every error the library raises is an :class:`AgentApiDbError`. A PostgreSQL error
is translated by :func:`from_psycopg` into one of the classes below; the original
psycopg exception is chained as ``__cause__`` for debugging, but the message of
the translated error is written by this module from the SQLSTATE, the constraint
name and fixed texts only. It never contains a statement's parameters, a row's
values (PostgreSQL's ``DETAIL: Failing row contains ...``), a key or a token.

=============================================  =========================================
SQLSTATE                                       exception
=============================================  =========================================
23505 unique_violation                         :class:`AlreadyExists` (``rule`` = constraint)
42501 insufficient_privilege (grants, RLS      :class:`PermissionDenied`
"new row violates row-level security policy")
23514 check, 23503 foreign key, 23502 not      :class:`InvalidInput` (``rule`` = constraint,
null, 22P02 invalid text, other class 22        or the column / SQLSTATE name)
39000 "Wrong key or corrupt data", 39000/      :class:`DecryptionError`
22023 from decrypting a corrupt ciphertext
connection lost, 08xxx, 57P01-57P03,           :class:`Unavailable` (retryable; a
25006 read-only (a failover under way)          :class:`DatabaseUnavailable`)
pool timeout, pool closed                      :class:`DatabaseUnavailable`
40001 / 40P01                                  :class:`TransactionConflict` (retry it)
anything else                                  :class:`AgentApiDbError` (``sqlstate`` set)
=============================================  =========================================
"""

from __future__ import annotations

import psycopg

__all__ = [
    "AgentApiDbError",
    "AlreadyExists",
    "ConfigurationError",
    "DatabaseUnavailable",
    "DecryptionError",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "TransactionConflict",
    "Unavailable",
    "from_psycopg",
]


class AgentApiDbError(Exception):
    """Base class of every error raised by agentapi_db.

    ``sqlstate`` is the PostgreSQL error code when the error came from the server.
    """

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class NotFound(AgentApiDbError):
    """The row does not exist, or the acting user may not see it (RLS hides both alike)."""


class AlreadyExists(AgentApiDbError):
    """A unique rule was broken; ``rule`` names the constraint or index."""

    def __init__(self, message: str, *, rule: str, sqlstate: str | None = None) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.rule = rule


class PermissionDenied(AgentApiDbError):
    """The acting role or user may not do this (missing grant or row-level security)."""


class InvalidInput(AgentApiDbError):
    """The input breaks a rule; ``rule`` names it (a constraint name where there is one)."""

    def __init__(self, message: str, *, rule: str, sqlstate: str | None = None) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.rule = rule


class ConfigurationError(AgentApiDbError):
    """Missing or malformed configuration (database URL, encryption key)."""


class DecryptionError(AgentApiDbError):
    """A ciphertext could not be decrypted: wrong key, or corrupt data."""


class DatabaseUnavailable(AgentApiDbError):
    """The database could not be reached (connection failure or pool timeout)."""


class Unavailable(DatabaseUnavailable):
    """The server went away or cannot take this transaction now: retryable.

    Raised when a connection is lost or refused (a crash, a failover, a restart,
    ``pg_terminate_backend``), when the server shuts down, and when a write reaches
    a server that has become read-only (a demoted primary). The transaction was
    not committed, except when ``during_commit`` is true: then the connection was
    lost while ``COMMIT`` was in flight and the outcome is unknown (with
    synchronous replication a commit that was acknowledged is on the standby;
    one that was not may or may not be). Retry only blocks that are safe to run
    twice (:func:`agentapi_db.retry.retry`).
    """

    retryable = True

    def __init__(
        self, message: str, *, sqlstate: str | None = None, during_commit: bool = False
    ) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.during_commit = during_commit


class TransactionConflict(AgentApiDbError):
    """Serialization failure or deadlock: the transaction was rolled back; retry it."""


# Human descriptions of the schema's named rules. A rule not listed here still
# gets a clear message naming it.
_RULE_MESSAGES: dict[str, str] = {
    "organizations_slug_key": "an organization with this slug already exists",
    "organizations_name_not_blank": "organization name must be 1-200 characters and not blank",
    "organizations_slug_format": (
        "organization slug must be 1-63 lowercase letters, digits or inner hyphens"
    ),
    "organizations_metadata_object": "organization metadata must be a JSON object",
    "users_organization_id_email_key": "a user with this email already exists in the organization",
    "users_email_format": "email is not a valid address (at most 320 characters)",
    "users_metadata_object": "user metadata must be a JSON object",
    "users_organization_id_fkey": "the organization does not exist",
    "user_sessions_user_fkey": "the session's user does not exist in the session's organization",
    "user_sessions_workspace_path_valid": (
        "workspace_path must be non-blank, at most 4096 characters, without '..' segments"
    ),
    "user_sessions_expires_after_created": "a session must expire after it is created",
    "user_sessions_metadata_object": "session metadata must be a JSON object",
    "mcp_configurations_name_key": (
        "an MCP configuration with this name already exists in the same scope"
    ),
    "mcp_configurations_name_not_blank": "MCP configuration name must be 1-200 characters",
    "mcp_configurations_http_needs_endpoint": (
        "http and sse configurations need an http(s) endpoint and no command"
    ),
    "mcp_configurations_stdio_needs_command": (
        "stdio configurations need a command and no endpoint"
    ),
    "mcp_configurations_bearer_token_iff_bearer": (
        "auth_type bearer needs a bearer token, and only bearer may have one"
    ),
    "mcp_configurations_oauth_provider_iff_oauth": (
        "auth_type oauth needs an oauth_provider, and only oauth may have one"
    ),
    "mcp_configurations_args_array": "args must be a JSON array",
    "mcp_configurations_env_object": "env must be a JSON object",
    "mcp_configurations_scope_immutable": "the scope of an MCP configuration cannot change",
    "mcp_configurations_user_fkey": "the configuration's user does not exist in its organization",
    "mcp_configurations_organization_id_fkey": "the organization does not exist",
    "mcp_oauth_tokens_user_configuration_key": (
        "an OAuth token for this user and configuration already exists"
    ),
    "mcp_oauth_tokens_configuration_visible": (
        "an OAuth token's configuration must be organization-wide or the token user's own"
    ),
    "mcp_oauth_tokens_configuration_oauth": (
        "OAuth tokens can only be stored for a configuration whose auth_type is oauth"
    ),
    "mcp_oauth_tokens_configuration_fkey": (
        "the MCP configuration does not exist in the token's organization"
    ),
    "mcp_oauth_tokens_user_fkey": "the token's user does not exist in its organization",
    "mcp_oauth_tokens_provider_not_blank": "oauth_provider must not be blank",
    "mcp_oauth_tokens_token_type_not_blank": "token_type must not be blank",
    "system_prompts_scope_consistent": (
        "prompt scope mismatch: global has no organization or user, organization has an "
        "organization only, user has both"
    ),
    "system_prompts_content_not_blank": "prompt content must not be blank",
    "system_prompts_user_fkey": "the prompt's user does not exist in its organization",
    "system_prompts_organization_id_fkey": "the organization does not exist",
    "system_prompts_created_by_fkey": "created_by does not name an existing user",
    "audit_logs_action_not_blank": "audit action must be 1-200 characters and not blank",
    "audit_logs_resource_type_not_blank": (
        "audit resource_type must be 1-200 characters and not blank"
    ),
    "audit_logs_details_object": "audit details must be a JSON object",
}

_INVALID_INPUT_STATES: dict[str, str] = {
    "23514": "check_violation",
    "23503": "foreign_key_violation",
    "23502": "not_null_violation",
    "23P01": "exclusion_violation",
    "22P02": "invalid_text_representation",
    "22001": "string_data_right_truncation",
    "22003": "numeric_value_out_of_range",
    "22007": "invalid_datetime_format",
    "22008": "datetime_field_overflow",
    "22023": "invalid_parameter_value",
    "22P05": "untranslatable_character",
    "22021": "character_not_in_repertoire",
    "2201B": "invalid_regular_expression",
}


# admin_shutdown, crash_shutdown, cannot_connect_now
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03"})


def rule_message(rule: str) -> str:
    """The human description of a named rule (constraint) of the schema."""
    text = _RULE_MESSAGES.get(rule)
    return f"{text} (rule {rule})" if text else f"input breaks the rule {rule}"


def _is_decryption_failure(exc: psycopg.Error) -> bool:
    primary = exc.diag.message_primary or ""
    context = exc.diag.context or ""
    if exc.sqlstate == "39000" and "Wrong key or corrupt data" in primary:
        return True
    # Corrupt (non-base64 or truncated) ciphertext inside decrypt_token.
    return exc.sqlstate in {"22023", "39000", "22000"} and "decrypt_token" in context


def from_psycopg(exc: BaseException) -> AgentApiDbError:
    """Translate a psycopg / psycopg_pool exception into an :class:`AgentApiDbError`.

    The caller raises the result ``from exc``. Messages are built from fixed texts,
    SQLSTATEs and constraint/table/column names only.
    """
    if isinstance(exc, AgentApiDbError):
        return exc
    # psycopg_pool is imported lazily by its users; match the timeout by name too.
    if type(exc).__name__ == "PoolTimeout":
        return DatabaseUnavailable("timed out waiting for a database connection from the pool")
    if type(exc).__name__ == "PoolClosed":
        return DatabaseUnavailable("the connection pool is closed")
    if not isinstance(exc, psycopg.Error):
        return AgentApiDbError(f"unexpected error in the database layer ({type(exc).__name__})")
    state = exc.sqlstate
    diag = exc.diag
    constraint = diag.constraint_name
    table = diag.table_name
    if state is None:
        if isinstance(exc, psycopg.OperationalError):
            return Unavailable("the database connection failed or was lost")
        return AgentApiDbError(f"database driver error ({type(exc).__name__})")
    if _is_decryption_failure(exc):
        return DecryptionError(
            "could not decrypt a stored secret: wrong encryption key or corrupt data",
            sqlstate=state,
        )
    if state == "23505":
        rule = constraint or "unique_violation"
        return AlreadyExists(rule_message(rule), rule=rule, sqlstate=state)
    if state == "42501":
        primary = diag.message_primary or ""
        if "row-level security" in primary:
            where = f" on {table}" if table else _table_from_rls_message(primary)
            return PermissionDenied(
                f"permission denied: the row is not allowed by row-level security{where}",
                sqlstate=state,
            )
        # PostgreSQL's own privilege messages name objects only, never values.
        return PermissionDenied(f"permission denied: {primary}", sqlstate=state)
    if state in _INVALID_INPUT_STATES:
        if constraint:
            return InvalidInput(rule_message(constraint), rule=constraint, sqlstate=state)
        if state == "23502" and diag.column_name:
            rule = f"{table}.{diag.column_name}" if table else diag.column_name
            return InvalidInput(f"{rule} is required (rule not_null)", rule=rule, sqlstate=state)
        rule = _INVALID_INPUT_STATES[state]
        return InvalidInput(f"a value has the wrong type or format ({rule})", rule=rule,
                            sqlstate=state)
    if state in {"40001", "40P01"}:
        return TransactionConflict(
            "the transaction conflicted with another one and was rolled back; retry it",
            sqlstate=state,
        )
    if state.startswith("08") or state in _UNAVAILABLE_STATES:
        return Unavailable("the database connection failed or was lost", sqlstate=state)
    if state == "25006":
        return Unavailable(
            "the server is read-only (a standby, or a primary being demoted); retry",
            sqlstate=state,
        )
    if state == "25P02":
        return AgentApiDbError(
            "the transaction already failed; leave the block and start a new one",
            sqlstate=state,
        )
    return AgentApiDbError(f"database error (SQLSTATE {state})", sqlstate=state)


def _table_from_rls_message(primary: str) -> str:
    # 'new row violates row-level security policy for table "users"'
    marker = 'for table "'
    start = primary.find(marker)
    if start < 0:
        return ""
    start += len(marker)
    end = primary.find('"', start)
    return f" on {primary[start:end]}" if end > start else ""
