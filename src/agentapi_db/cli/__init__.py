"""The ``agentapi-db`` command line. Commands are added by their own modules."""

from __future__ import annotations

from typing import Annotated

import typer

from agentapi_db import __version__

app = typer.Typer(
    name="agentapi-db",
    help="Multi-tenant PostgreSQL data layer for AgentAPI.",
    no_args_is_help=True,
    add_completion=False,
)


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


def main() -> None:
    """Console-script entry point."""
    app(prog_name="agentapi-db")


__all__ = ["app", "main"]
