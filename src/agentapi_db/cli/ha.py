"""``agentapi-db ha up|status|down|switchover``: a local HA pair (pg_auto_failover)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from agentapi_db.cli.app import JsonOption, app, console, err_console, handles_errors, print_json
from agentapi_db.ha.engine import HaCluster, HaStatus

ha_app = typer.Typer(
    help="A local primary + synchronous standby under pg_auto_failover (dev and tests).",
    no_args_is_help=True,
)
app.add_typer(ha_app, name="ha")

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where the pair lives. Default: $AGENTAPI_HA_DIR, else `ha` next to the local "
        "database's data dir.",
        show_default=False,
    ),
]


def _show(status: HaStatus, json_output: bool) -> None:
    if json_output:
        print_json(status.as_dict())
        return
    running = "[green]running[/]" if status.running else "[yellow]not fully running[/]"
    console.print(f"HA pair (pg_auto_failover) in {escape(str(status.data_dir))}: {running}")
    table = Table("node", "role", "state", "port", "pid", "agent pid")
    for node in status.nodes:
        table.add_row(
            node.name, node.role, node.state, str(node.port),
            str(node.pid or "-"), str(node.agent_pid or "-"),
        )
    console.print(table)
    console.print(f"  url:           {escape(status.url)}", soft_wrap=True)
    console.print(f"  read_url:      {escape(status.read_url)}", soft_wrap=True)
    console.print(f"  superuser_url: {escape(status.superuser_url)}", soft_wrap=True)


@ha_app.command("up")
@handles_errors
def up_command(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Start (or create) the monitor, the primary and its synchronous standby; migrate.

    Idempotent. Loopback only, trust authentication: development and tests.
    """
    if not json_output:
        err_console.print("[dim]starting the HA pair...[/]")
    _show(HaCluster(data_dir).up(), json_output)


@ha_app.command("status")
@handles_errors
def status_command(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Show the nodes (role, state, ports, pids) and the URLs."""
    cluster = HaCluster(data_dir)
    if not cluster.initialized():
        from agentapi_db.cli.app import ExitCode, fail

        fail(f"no HA pair in {cluster.data_dir}; run `agentapi-db ha up`", ExitCode.UNAVAILABLE)
    _show(cluster.status(), json_output)


@ha_app.command("switchover")
@handles_errors
def switchover_command(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Promote the standby; the old primary follows it as the new standby."""
    _show(HaCluster(data_dir).switchover(), json_output)


@ha_app.command("down")
@handles_errors
def down_command(
    data_dir: DataDirOption = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the data dir.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Stop the agents and their servers (the data stays, unless --purge)."""
    was_running = HaCluster(data_dir).down(purge=purge)
    if json_output:
        print_json({"stopped": was_running, "purged": purge})
    else:
        console.print("[green]✓[/] HA pair stopped" + (" and deleted" if purge else ""))
