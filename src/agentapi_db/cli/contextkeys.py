"""``agentapi-db context-key create|rotate|list``: the keys of the request context.

Once a context key exists, ``app.user_id`` counts only with a valid token for that id
(see :mod:`agentapi_db.context`). ``create`` and ``rotate`` print the new key once,
or write it to ``--output FILE`` (mode 0600, never overwritten); give it to the
application as ``AGENTAPI_CONTEXT_KEY`` or ``AGENTAPI_CONTEXT_KEY_FILE``.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.markup import escape

from agentapi_db import context_admin
from agentapi_db.cli.app import (
    DatabaseUrlOption,
    ExitCode,
    JsonOption,
    app,
    console,
    err_console,
    fail,
    handles_errors,
    print_json,
    resolve_database_url,
)
from agentapi_db.context import ContextKey

key_app = typer.Typer(help="Keys of the authenticated request context.", no_args_is_help=True)
app.add_typer(key_app, name="context-key")

OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output", help="Write the key to FILE (created with mode 0600) instead of stdout."
    ),
]


def _emit(key: ContextKey, output: Path | None, action: str) -> None:
    if output is None:
        sys.stdout.write(key.hex() + "\n")
        sys.stdout.flush()
    else:
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            fail(f"{output} exists; choose a new file", ExitCode.USAGE)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(key.hex() + "\n")
    err_console.print(
        f"[green]✓[/] {action} context key {key.key_id}"
        + (f", written to {escape(str(output))}" if output is not None else "")
        + "; set AGENTAPI_CONTEXT_KEY (or _FILE) in the application"
    )


@key_app.command("create")
@handles_errors
def create_command(output: OutputOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Make a context key (older keys stay valid). From then on, app.user_id needs a token."""
    with psycopg.connect(resolve_database_url(database_url, superuser=True)) as conn:
        key = context_admin.create_key(conn)
    _emit(key, output, "created")


@key_app.command("rotate")
@handles_errors
def rotate_command(
    overlap_minutes: Annotated[
        int,
        typer.Option("--overlap-minutes", help="How long tokens of the older keys stay valid."),
    ] = 15,
    output: OutputOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Make a new context key; the older ones expire after the overlap."""
    if overlap_minutes < 0:
        fail("--overlap-minutes must not be negative", ExitCode.USAGE)
    with psycopg.connect(resolve_database_url(database_url, superuser=True)) as conn:
        key = context_admin.create_key(conn, overlap=timedelta(minutes=overlap_minutes))
    _emit(key, output, "rotated to")


@key_app.command("list")
@handles_errors
def list_command(database_url: DatabaseUrlOption = None, json_output: JsonOption = False) -> None:
    """The context keys (ids and expiry, never the keys)."""
    with psycopg.connect(resolve_database_url(database_url, superuser=True)) as conn:
        keys = context_admin.list_keys(conn)
    if json_output:
        print_json([k.__dict__ for k in keys])
        return
    if not keys:
        console.print(
            "no context key: app.user_id is trusted as given (agentapi-db verify reports it)"
        )
    for k in keys:
        state = "valid" if k.valid else "expired"
        until = f" until {k.expires_at.isoformat()}" if k.expires_at is not None else ""
        console.print(f"{k.key_id}  {state}{until}  created {k.created_at.isoformat()}")
