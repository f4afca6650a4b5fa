"""``agentapi-db login create``: a login for the application or for maintenance.

The deploying login (the database owner with CREATEROLE, or a superuser) runs it.
The password comes from ``--password-file`` (``-`` reads standard input) or a
hidden prompt, never from the command line, and reaches the server only as a
SCRAM verifier (see :mod:`agentapi_db.logins`).
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.markup import escape

from agentapi_db import logins
from agentapi_db.cli.app import (
    DatabaseUrlOption,
    ExitCode,
    JsonOption,
    app,
    console,
    fail,
    handles_errors,
    print_json,
    resolve_database_url,
)

login_app = typer.Typer(help="Login roles for the application and for maintenance.",
                        no_args_is_help=True)
app.add_typer(login_app, name="login")


class LoginRole(StrEnum):
    app = "app"
    service = "service"


def _read_password(password_file: Path | None) -> str:
    if password_file is None:
        if not sys.stdin.isatty():
            fail("no password: give --password-file FILE (or - for standard input)",
                 ExitCode.USAGE)
        return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))
    text = sys.stdin.read() if str(password_file) == "-" else password_file.read_text()
    return text.rstrip("\r\n")


@login_app.command("create")
@handles_errors
def create_command(
    name: Annotated[str, typer.Argument(help="Name of the new login role.")],
    role: Annotated[
        LoginRole,
        typer.Option("--role", help="app: a member of agentapi_app; service: of agentapi_service."),
    ],
    password_file: Annotated[
        Path | None,
        typer.Option("--password-file", help="Read the password from FILE (- for stdin)."),
    ] = None,
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create a NOINHERIT login that is a member of exactly one group role.

    Run it as the deploying login (database owner with CREATEROLE) or a superuser.
    Exit 1 when a role of that name exists, 2 for a bad name or an empty password.
    """
    password = _read_password(password_file)
    url = resolve_database_url(database_url, superuser=True)
    with psycopg.connect(url) as conn:
        made = logins.create_login(conn, name, role.value, password)
    if json_output:
        print_json({"login": made.name, "group": made.group})
    else:
        console.print(f"[green]✓[/] login {escape(made.name)} (member of {made.group})")
