"""``agentapi-db ha ...`` (a local HA pair, pg_auto_failover) and ``pitr ...`` (pgBackRest)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from agentapi_db.cli.app import (
    ExitCode,
    JsonOption,
    app,
    console,
    err_console,
    fail,
    handles_errors,
    print_json,
)
from agentapi_db.ha.engine import HaCluster, HaStatus
from agentapi_db.ha.pitr import BACKUP_TYPES, Pitr, parse_target_time

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


# --------------------------------------------------------------------------- pitr

pitr_app = typer.Typer(
    help="Point-in-time recovery with pgBackRest: backup, list, restore.", no_args_is_help=True
)
app.add_typer(pitr_app, name="pitr")

ClusterDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="The cluster's data dir (default: the local database's, see `agentapi-db up`).",
        show_default=False,
    ),
]
RepoOption = Annotated[
    Path | None,
    typer.Option(
        "--repo",
        help="The pgBackRest repository dir (default: `pgbackrest` next to the data dir).",
        show_default=False,
    ),
]


def _pitr(data_dir: Path | None, repo: Path | None) -> Pitr:
    from agentapi_db.local import local_cluster

    return Pitr(local_cluster(data_dir), repo)


@pitr_app.command("backup")
@handles_errors
def backup_command(
    data_dir: ClusterDirOption = None,
    repo: RepoOption = None,
    kind: Annotated[
        str, typer.Option("--type", help="full, diff (since the last full) or incr.")
    ] = "full",
    json_output: JsonOption = False,
) -> None:
    """Take a backup; turns WAL archiving on first (one restart the first time)."""
    if kind not in BACKUP_TYPES:
        fail(f"--type must be one of {', '.join(BACKUP_TYPES)}", ExitCode.USAGE)
    info = _pitr(data_dir, repo).backup(kind)
    if json_output:
        print_json(info.as_dict())
    else:
        console.print(f"[green]✓[/] {info.type} backup {info.label} (stopped {info.stopped})")


@pitr_app.command("list")
@handles_errors
def list_command(
    data_dir: ClusterDirOption = None, repo: RepoOption = None, json_output: JsonOption = False
) -> None:
    """List the backups and the recoverable window."""
    info = _pitr(data_dir, repo).info()
    if json_output:
        print_json(info.as_dict())
        return
    table = Table("label", "type", "started", "stopped", "size")
    for b in info.backups:
        table.add_row(b.label, b.type, b.started or "-", b.stopped or "-", str(b.size or "-"))
    console.print(table)
    console.print(
        f"recoverable from {info.recoverable_from or '-'} to {info.recoverable_to or '-'} "
        f"(WAL {info.wal_min or '-'} .. {info.wal_max or '-'})"
    )


@pitr_app.command("restore")
@handles_errors
def restore_command(
    to: Annotated[str, typer.Option("--to", help="Target time, ISO 8601 (no zone: UTC).")],
    into: Annotated[Path, typer.Option("--into", help="A new, empty data dir for the copy.")],
    data_dir: ClusterDirOption = None,
    repo: RepoOption = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: a free one).")] = None,
    json_output: JsonOption = False,
) -> None:
    """Restore the database as it was at --to into a new data dir and start it there.

    The source cluster is not touched; the copy archives nothing.
    """
    try:
        target = parse_target_time(to)
    except ValueError as exc:
        fail(str(exc), ExitCode.USAGE)
    restored = _pitr(data_dir, repo).restore(target, into, port)
    url = restored.url("agentapi")
    result: dict[str, object] = {
        "data_dir": str(restored.data_dir),
        "port": restored.port,
        "target": target.isoformat(),
        "superuser_url": url,
    }
    if json_output:
        print_json(result)
    else:
        console.print(f"[green]✓[/] restored to {target.isoformat()} in {escape(str(into))}")
        console.print(f"  url: {escape(url)}", soft_wrap=True)
