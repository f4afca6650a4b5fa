"""``agentapi-db up`` / ``down`` / ``status``: the local database."""

from __future__ import annotations

from typing import Annotated

import psycopg
import typer
from rich.markup import escape
from rich.table import Table

from agentapi_db import local
from agentapi_db.cli.app import (
    ExitCode,
    JsonOption,
    app,
    console,
    err_console,
    handles_errors,
    print_json,
)
from agentapi_db.identity import identity_mode


@app.command("up")
@handles_errors
def up_command(
    demo: Annotated[
        bool,
        typer.Option("--demo", help="Load two demo organizations and show isolation at work."),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Start (or reuse) the local PostgreSQL cluster with the schema applied.

    Creates the cluster on first use in the data dir (AGENTAPI_DATA_DIR, else
    /var/lib/agentapi-db/pg for root, else ~/.local/share/agentapi-db/pg), the
    database `agentapi` and the login `agentapi_local`. Idempotent.
    """
    if not json_output:
        err_console.print("[dim]starting the local database...[/]")
    url = local.ensure_local_database()
    status = local.local_status()
    if json_output and not demo:
        print_json(status.as_dict())
        return
    if not json_output:
        console.print(f"[green]✓[/] local database running on port {status.port}")
        console.print(f"  data dir: {escape(str(status.data_dir))}")
        console.print(f"  url:      {escape(url)}")
        console.print(f"  schema:   version {status.schema_version}")
        console.print(f"  identity: {_identity_line(url)}")
        console.print(f"  use it:   export AGENTAPI_DATABASE_URL={escape(url)}", soft_wrap=True)
    if demo:
        # imported here: it pulls in the whole library
        from agentapi_db import demo as demo_module

        demo_module.run_demo(url, json_output=json_output, console=console)


def _identity_line(url: str) -> str:
    """One line on how RLS finds the acting user here (the cache is optional)."""
    with psycopg.connect(url) as conn:
        found = identity_mode(conn)
    if found.mode == "cache":
        return f"identity cache (ext/agentapi_identity {found.extension_version})"
    if found.extension_available is None:
        return (
            "portable helpers (ext/agentapi_identity is not installed for this server; "
            "everything works, RLS costs a little more per statement)"
        )
    return f"{found.mode} helpers (ext/agentapi_identity {found.extension_available} available)"


@app.command("down")
@handles_errors
def down_command(
    purge: Annotated[
        bool,
        typer.Option("--purge", help="Also delete the data dir (every row, the demo key)."),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --purge.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Stop the local cluster. The data stays (unless --purge); `up` starts it again."""
    if purge and not yes:
        target = local.local_cluster().data_dir
        if not typer.confirm(f"delete the local database in {target}?", err=True):
            raise typer.Exit(int(ExitCode.FAILURE))
    was_running = local.stop_local_database(purge=purge)
    if json_output:
        print_json({"stopped": was_running, "purged": purge})
    elif purge:
        console.print("[green]✓[/] local database stopped and deleted")
    elif was_running:
        console.print("[green]✓[/] local database stopped (data kept)")
    else:
        console.print("local database was not running")


@app.command("status")
@handles_errors
def status_command(json_output: JsonOption = False) -> None:
    """Show the local cluster: data dir, port, running, schema version, row counts."""
    status = local.local_status()
    if json_output:
        print_json(status.as_dict())
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    running = "[green]yes[/]" if status.running else "[red]no[/]"
    table.add_row("data dir", escape(str(status.data_dir)))
    table.add_row("initialized", "yes" if status.initialized else "no")
    table.add_row("running", running)
    table.add_row("port", str(status.port) if status.port is not None else "-")
    table.add_row("pid", str(status.pid) if status.pid is not None else "-")
    table.add_row("server", status.server_version or "-")
    if status.url:
        table.add_row("url", escape(status.url))
    if status.schema_version is not None:
        current = "current" if status.schema_up_to_date else "[yellow]not current[/]"
        table.add_row(
            "schema", f"version {status.schema_version} of {status.latest_version} ({current})"
        )
    for name, count in status.row_counts.items():
        table.add_row(f"  {name}", f"{count:,}")
    console.print(table)
