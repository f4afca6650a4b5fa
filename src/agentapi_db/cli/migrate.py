"""``agentapi-db migrate`` and ``agentapi-db verify``."""

from __future__ import annotations

from typing import Annotated

import psycopg
import typer
from rich.markup import escape

from agentapi_db import migrations, verify
from agentapi_db.cli.app import (
    DatabaseUrlOption,
    ExitCode,
    JsonOption,
    app,
    console,
    err_console,
    handles_errors,
    print_json,
    resolve_database_url,
)


@app.command("migrate")
@handles_errors
def migrate_command(
    database_url: DatabaseUrlOption = None,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help=(
                "Adopt a database built with `psql -f schema.sql` (no history): record "
                "version 1 as applied without running it, then apply the rest."
            ),
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Apply the pending migrations (version 1 is database/schema.sql).

    Version 1 (roles, extensions) runs as the database's owner with CREATEROLE (no
    superuser needed: managed PostgreSQL) or as a superuser; later versions run as
    agentapi_owner. Running it again is a no-op. A migration edited after it was
    applied is refused (exit 1).
    """
    url = resolve_database_url(database_url, superuser=True)

    def say(message: str) -> None:
        if not json_output:
            err_console.print(f"[dim]{escape(message)}[/]")

    applied = migrations.migrate(url, baseline=baseline, on_event=say)
    with psycopg.connect(url, autocommit=True) as conn:
        state = migrations.read_state(conn)
    if json_output:
        print_json(
            {
                "applied": [{"version": m.version, "name": m.name} for m in applied],
                "schema_version": state.current_version,
                "latest_version": state.latest_version,
            }
        )
        return
    for migration in applied:
        console.print(f"[green]✓[/] applied {migration.version} ({escape(migration.name)})")
    if not applied:
        console.print(f"[green]✓[/] nothing to do: schema version {state.current_version}")
    else:
        console.print(f"schema version {state.current_version}")


@app.command("verify")
@handles_errors
def verify_command(database_url: DatabaseUrlOption = None, json_output: JsonOption = False) -> None:
    """Check the database's security posture; exit 1 on any finding.

    RLS enabled and forced everywhere, nothing granted to PUBLIC, SECURITY DEFINER
    functions with a pinned search_path, views with security_invoker, role
    attributes, and the schema version (latest applied, checksums match).
    Connect as a superuser, the deploying login, or a member of agentapi_owner.
    """
    url = resolve_database_url(database_url, superuser=True)
    with psycopg.connect(url) as conn:
        results = verify.run_checks(conn)
    failed = [r for r in results if not r.ok]
    if json_output:
        print_json([r.as_dict() for r in results])
    else:
        for result in results:
            mark = "[green]✓[/]" if result.ok else "[red]✗[/]"
            console.print(
                f"{mark} {escape(result.name)} [dim]{escape(result.description)}[/]",
                no_wrap=True,
                overflow="ellipsis",
            )
            for finding in result.findings:
                console.print(f"    [red]{escape(finding)}[/]", soft_wrap=True)
            for warning in result.warnings:
                console.print(f"    [yellow]warning: {escape(warning)}[/]", soft_wrap=True)
        total = sum(len(r.findings) for r in results)
        if failed:
            console.print(
                f"[bold red]{total} finding(s) in {len(failed)} of {len(results)} checks[/]"
            )
        else:
            console.print(f"[bold green]all {len(results)} checks passed[/]")
    if failed:
        raise typer.Exit(int(ExitCode.FAILURE))
