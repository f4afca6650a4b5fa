"""The secret checks of ``agentapi-db verify`` (issue 12).

* ``secret_format`` (a finding fails verify): every stored secret (bearer and
  OAuth tokens, and each value of ``mcp_configurations.env``) is in format ``ag1``
  under an organization data key. Values still in the previous pgcrypto OpenPGP
  format, ``env`` values stored in plaintext, or values sealed directly with a
  master key (an operator's ``encrypt_token`` in psql), are counted per column;
  ``rotate-key`` moves them.
  Read from the ciphertexts alone: no key is needed or sent.
* ``secret_logging`` (warnings only): the server's settings that would record a
  key if an operator called the seed's SQL functions (``log_statement``,
  ``log_min_duration_statement``, ``log_min_error_statement`` with parameters,
  ``auto_explain``), and, when ``pg_stat_statements`` is installed, statements
  that called ``encrypt_token`` / ``decrypt_token`` / ``reencrypt_token`` with a
  literal key (its text kept un-normalized, e.g. inside a DO block) or at all.
  The library itself never sends a key, so these are about psql sessions.
"""

from __future__ import annotations

from typing import Final

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

__all__ = ["check_secret_format", "check_secret_logging"]

Conn = psycopg.Connection[TupleRow]

_SQL_FORMAT: Final = """
WITH value (col, ct) AS (
    SELECT 'mcp_configurations.bearer_token', bearer_token FROM public.mcp_configurations
     WHERE bearer_token IS NOT NULL
    UNION ALL
    SELECT 'mcp_configurations.env', e.value
      FROM public.mcp_configurations AS c CROSS JOIN LATERAL jsonb_each_text(c.env) AS e
    UNION ALL
    SELECT 'mcp_oauth_tokens.access_token', access_token FROM public.mcp_oauth_tokens
    UNION ALL
    SELECT 'mcp_oauth_tokens.refresh_token', refresh_token FROM public.mcp_oauth_tokens
     WHERE refresh_token IS NOT NULL
)
SELECT v.col,
       count(*) FILTER (WHERE left(v.ct, 4) <> 'ag1:'),
       count(*) FILTER (WHERE left(v.ct, 4) = 'ag1:' AND NOT EXISTS (
           SELECT FROM public.organization_data_keys AS k WHERE k.key_id = substr(v.ct, 5, 16)))
  FROM value AS v
 GROUP BY v.col
 ORDER BY v.col
"""

_SQL_SETTINGS: Final = """
SELECT name, setting FROM pg_catalog.pg_settings
 WHERE name IN ('log_statement', 'log_min_duration_statement', 'log_min_error_statement',
                'log_parameter_max_length', 'log_parameter_max_length_on_error',
                'shared_preload_libraries', 'session_preload_libraries',
                'auto_explain.log_min_duration', 'auto_explain.log_verbose')
"""

_SQL_HAS_PGSS: Final = """
SELECT n.nspname FROM pg_catalog.pg_extension AS e
  JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
 WHERE e.extname = 'pg_stat_statements'
"""

# Statements calling the seed's functions; a quoted run of 43+ key characters
# (64 hex digits, or base64 of 32 bytes) in the text is a literal key.
_SQL_PGSS_CALLS: Final = """
SELECT count(*),
       count(*) FILTER (WHERE query ~ '''[0-9A-Za-z+/_=-]{{43,}}''')
  FROM {schema}.pg_stat_statements
 WHERE query ~* '(en|de|re)crypt_token\\s*\\('
"""


def check_secret_format(conn: Conn) -> tuple[str, list[str]]:
    """(description, findings) of ``secret_format``."""
    findings: list[str] = []
    for col, legacy, direct in conn.execute(_SQL_FORMAT.encode()).fetchall():
        if legacy and col == "mcp_configurations.env":
            findings.append(f"{col}: {legacy} value(s) stored in plaintext (from before env "
                            "values were encrypted); run `agentapi-db rotate-key`")
        elif legacy:
            findings.append(f"{col}: {legacy} value(s) still in the previous (OpenPGP) format; "
                            "run `agentapi-db rotate-key`")
        if direct:
            findings.append(f"{col}: {direct} value(s) not under an organization data key "
                            "(encrypted directly with a master key?); run `agentapi-db rotate-key`")
    return "every stored secret is format ag1 under an organization data key", findings


def _setting_warnings(settings: dict[str, str]) -> list[str]:
    out: list[str] = []
    if settings.get("log_statement") in ("all", "mod"):
        out.append(f"log_statement = {settings['log_statement']}: psql calls of encrypt_token/"
                   "decrypt_token with a literal key are logged")
    if settings.get("log_min_duration_statement", "-1") != "-1":
        detail = "" if settings.get("log_parameter_max_length") == "0" else ", with parameters"
        out.append("log_min_duration_statement is set: statements are logged" + detail
                   + "; a key bound to encrypt_token/decrypt_token in psql may be logged")
    if settings.get("log_parameter_max_length_on_error", "0") != "0":
        out.append("log_parameter_max_length_on_error is not 0: a failing psql call logs its key")
    preload = (settings.get("shared_preload_libraries", "") + ","
               + settings.get("session_preload_libraries", ""))
    if "auto_explain" in preload and settings.get("auto_explain.log_verbose") == "on":
        out.append("auto_explain with log_verbose is loaded: plans of psql calls print the key "
                   "as a literal")
    return out


def check_secret_logging(conn: Conn) -> tuple[str, list[str]]:
    """(description, warnings) of ``secret_logging``."""
    settings = {str(n): str(s) for n, s in conn.execute(_SQL_SETTINGS.encode()).fetchall()}
    warnings = _setting_warnings(settings)
    row = conn.execute(_SQL_HAS_PGSS.encode()).fetchone()
    if row is not None:
        query = sql.SQL(_SQL_PGSS_CALLS).format(schema=sql.Identifier(row[0]))
        try:
            with conn.transaction():
                counts = conn.execute(query).fetchone()
        except psycopg.Error:  # not preloaded, or not readable by this login
            counts = None
        if counts is not None and counts[1]:
            warnings.append(f"pg_stat_statements: {counts[1]} statement(s) called the seed's "
                            "SQL functions with a literal key: that key is in the server's "
                            "statistics and probably its log; rotate it")
        elif counts is not None and counts[0]:
            warnings.append(f"pg_stat_statements: {counts[0]} statement(s) called the seed's "
                            "SQL functions, each sending a key to the server")
    return "no server setting or past statement exposes a key (warnings only)", warnings
