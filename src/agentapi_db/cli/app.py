"""The Typer application objects and the helpers every command module shares.

Command modules (``migrate``, ``local``, ``admin``, ``ops``...) import the apps from
here and register their commands on them; ``agentapi_db.cli`` imports every command
module, so importing this module alone gives an app with no commands.

Conventions for a command:

* decorate it with :func:`handles_errors` (below ``@app.command()``), so library,
  configuration and PostgreSQL errors become one red line and an exit code from
  :class:`ExitCode`, never a traceback;
* take the database URL with the shared :data:`DatabaseUrlOption` and resolve it
  with :func:`resolve_database_url`;
* offer ``--json`` (:data:`JsonOption`) where a script would want the result, and
  print JSON with :func:`print_json` (plain stdout, no Rich markup).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import psycopg
import typer
from rich.console import Console
from rich.markup import escape

from agentapi_db import __version__, errors
from agentapi_db.cluster import ClusterError
from agentapi_db.migrations import MigrationError

if TYPE_CHECKING:
    from agentapi_db.db import Database

__all__ = [
    "DATABASE_URL_ENV",
    "DatabaseUrlOption",
    "ExitCode",
    "JsonOption",
    "app",
    "audit_app",
    "cli_errors",
    "console",
    "err_console",
    "fail",
    "handles_errors",
    "open_database",
    "org_app",
    "print_json",
    "prompts_app",
    "resolve_database_url",
    "sessions_app",
    "user_app",
]


class ExitCode(IntEnum):
    """Exit codes of every ``agentapi-db`` command (also listed in the root ``--help``)."""

    OK = 0
    FAILURE = 1
    """A check found something, or the operation failed (e.g. the row already exists)."""
    USAGE = 2
    """Bad usage or bad input: unknown option, malformed value, unknown org/user."""
    UNAVAILABLE = 3
    """Cannot connect, or the configuration (URL, key, local cluster) is unusable."""
    PERMISSION_DENIED = 4
    """The database refused the operation for the acting role."""


_EPILOG = (
    "Exit codes: 0 ok; 1 a check found something or the operation failed; "
    "2 bad usage or bad input; 3 cannot connect or bad configuration "
    "(database URL, encryption key, local cluster); 4 permission denied.\n\n"
    "Database: --database-url, else $AGENTAPI_DATABASE_URL, else $DATABASE_URL, "
    "else the local cluster (started on demand; see `agentapi-db up`)."
)

app = typer.Typer(
    name="agentapi-db",
    help="Multi-tenant PostgreSQL data layer for AgentAPI.",
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
org_app = typer.Typer(help="Organizations (service level).", no_args_is_help=True)
user_app = typer.Typer(help="Users of an organization (service level).", no_args_is_help=True)
sessions_app = typer.Typer(help="User sessions: maintenance.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log: tail, export, partitions.", no_args_is_help=True)
prompts_app = typer.Typer(help="System prompts.", no_args_is_help=True)

app.add_typer(org_app, name="org")
app.add_typer(user_app, name="user")
app.add_typer(sessions_app, name="sessions")
app.add_typer(audit_app, name="audit")
app.add_typer(prompts_app, name="prompts")

console = Console(highlight=False)
"""Rich console for normal output (stdout)."""
err_console = Console(stderr=True, highlight=False)
"""Rich console for errors and progress (stderr)."""


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"agentapi-db {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
) -> None:
    """Multi-tenant PostgreSQL data layer for AgentAPI."""


# --------------------------------------------------------------------------- options

DATABASE_URL_ENV = ("AGENTAPI_DATABASE_URL", "DATABASE_URL")
_CONNECT_TIMEOUT = 10

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help=(
            "PostgreSQL URL. Default: $AGENTAPI_DATABASE_URL, else $DATABASE_URL, "
            "else the local cluster."
        ),
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON instead of Rich text.")
]


def resolve_database_url(url: str | None, *, superuser: bool = False) -> str:
    """The database to talk to: ``url``, else the environment, else the local cluster.

    ``superuser``: for the local cluster, return its superuser URL (needed by
    ``migrate`` and ``verify``) instead of the application login's URL. A URL given
    explicitly or through the environment is returned as is.
    """
    if url:
        return url
    for name in DATABASE_URL_ENV:
        value = os.environ.get(name)
        if value:
            return value
    from agentapi_db import local  # imported lazily: it pulls in the migrator

    return local.ensure_local_database(superuser=superuser)


@contextmanager
def open_database(
    url: str | None, *, max_size: int = 2, need_key: bool = False
) -> Iterator[Database]:
    """A :class:`~agentapi_db.Database` for a command, closed on exit.

    ``url``: the ``--database-url`` value (resolved with :func:`resolve_database_url`).
    The encryption key comes from the environment (``AGENTAPI_ENCRYPTION_KEY`` or
    ``_FILE``); ``need_key`` makes a missing key an error. The database is tried once
    first, so an unreachable one fails at once (exit 3) instead of after the pool's
    timeout.
    """
    from agentapi_db.config import Settings
    from agentapi_db.db import Database

    settings = Settings.from_env(database_url=resolve_database_url(url))
    local_db = not (url or any(os.environ.get(name) for name in DATABASE_URL_ENV))
    if settings.context_key is None and local_db:
        from agentapi_db import local

        settings = dataclasses.replace(settings, context_key=local.local_context_key())
    if need_key:
        settings.require_key()
    target = settings.database_url or ""
    with psycopg.connect(target, connect_timeout=_CONNECT_TIMEOUT):
        pass
    database = Database.from_settings(settings, min_size=1, max_size=max_size, timeout=30.0)
    try:
        yield database
    finally:
        database.close()


def print_json(value: Any) -> None:
    """Print ``value`` as JSON on stdout (no Rich markup or highlighting)."""
    sys.stdout.write(json.dumps(value, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- errors


def fail(message: str, code: ExitCode = ExitCode.FAILURE) -> NoReturn:
    """Print ``message`` as one red line on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(int(code))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _library_exit_code(exc: Exception) -> ExitCode | None:
    """Exit code for an ``agentapi_db.errors`` exception; None when ``exc`` is not one."""
    mapping: list[tuple[type[Exception], ExitCode]] = [
        (errors.PermissionDenied, ExitCode.PERMISSION_DENIED),
        (errors.ConfigurationError, ExitCode.UNAVAILABLE),
        (errors.DatabaseUnavailable, ExitCode.UNAVAILABLE),
        (errors.DecryptionError, ExitCode.UNAVAILABLE),
        (errors.InvalidInput, ExitCode.USAGE),
        (errors.NotFound, ExitCode.USAGE),
        (errors.AlreadyExists, ExitCode.FAILURE),
        (errors.AgentApiDbError, ExitCode.FAILURE),
    ]
    for cls, code in mapping:
        if isinstance(exc, cls):
            return code
    return None


_CANNOT_CONNECT = (
    psycopg.errors.InvalidAuthorizationSpecification,
    psycopg.errors.InvalidPassword,
    psycopg.errors.InvalidCatalogName,
)


def _psycopg_exit_code(exc: psycopg.Error) -> ExitCode:
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return ExitCode.PERMISSION_DENIED
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return ExitCode.UNAVAILABLE  # could not connect / connection lost
    if isinstance(exc, _CANNOT_CONNECT):
        return ExitCode.UNAVAILABLE  # bad login, bad password, no such database
    if isinstance(exc, psycopg.ProgrammingError) and exc.sqlstate is None:
        return ExitCode.UNAVAILABLE  # e.g. a malformed connection string
    if isinstance(exc, psycopg.errors.DataError | psycopg.errors.IntegrityError):
        return ExitCode.USAGE
    return ExitCode.FAILURE


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn known errors into one red line on stderr and a meaningful exit code.

    Library errors (``agentapi_db.errors``), ``ClusterError``, psycopg errors and
    ``OSError`` are reported without a traceback. Anything else is a bug: it is
    reported in one line too, with exit code 1; set ``AGENTAPI_DEBUG=1`` to get the
    traceback.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
        raise
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None
    except ClusterError as exc:
        fail(_one_line(exc), ExitCode.UNAVAILABLE)
    except MigrationError as exc:
        fail(_one_line(exc), ExitCode.FAILURE)
    except psycopg.Error as exc:
        fail(_one_line(exc), _psycopg_exit_code(exc))
    except Exception as exc:
        code = _library_exit_code(exc)
        if code is not None:
            fail(_one_line(exc), code)
        if isinstance(exc, OSError):
            fail(_one_line(exc), ExitCode.FAILURE)
        if os.environ.get("AGENTAPI_DEBUG"):
            raise
        fail(f"unexpected {type(exc).__name__}: {_one_line(exc)}", ExitCode.FAILURE)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def handles_errors(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator form of :func:`cli_errors` for a command function.

    Put it *below* ``@app.command()``; the wrapped signature (and so the options)
    is kept.
    """

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with cli_errors():
            return func(*args, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover - cli_errors always re-raises

    return wrapper
