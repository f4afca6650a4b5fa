"""Operations commands: key rotation, audit partitions/retention/chain, schedule, stats, backup.

Each command is a thin shell over a module of the package (``rotation``,
``retention``, ``chain``, ``schedule``, ``stats``, ``backup``); keys come only from
the environment (``AGENTAPI_ENCRYPTION_KEY``, ``AGENTAPI_OLD_ENCRYPTION_KEY`` or
their ``_FILE`` twins), never from the command line.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agentapi_db import opsdb, rotation
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
from agentapi_db.config import ENV_OLD_KEY, ENV_OLD_KEY_FILE, Settings
from agentapi_db.errors import ConfigurationError


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


# --------------------------------------------------------------------------- rotate-key


@app.command("rotate-key")
@handles_errors
def rotate_key_command(
    database_url: DatabaseUrlOption = None,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", min=1, max=100_000, help="Rows per transaction."),
    ] = 500,
    verify_only: Annotated[
        bool,
        typer.Option(
            "--verify",
            help=(
                "Change nothing; check that every value decrypts with the new key and "
                "none with the old one (exit 1 otherwise)."
            ),
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Re-encrypt every stored token from the old key to the new key, online.

    Keys come from the environment only: AGENTAPI_ENCRYPTION_KEY (new) and
    AGENTAPI_OLD_ENCRYPTION_KEY (old), or their _FILE variants. Batches are
    transactions; interrupting it at any point is safe and running it again
    finishes the job. Run the application with both keys while it runs.
    """
    settings = Settings.from_env()
    new_key = settings.require_key()
    old_key = settings.old_encryption_key
    url = resolve_database_url(database_url)
    with opsdb.connect(url) as conn:
        if verify_only:
            report = rotation.verify_rotation(conn, new_key, old_key)
            _print_verify(report, json_output)
            if not report.ok:
                raise typer.Exit(int(ExitCode.FAILURE))
            return
        if old_key is None:
            raise ConfigurationError(
                f"rotate-key needs the previous key in {ENV_OLD_KEY} (or {ENV_OLD_KEY_FILE})"
            )
        total = rotation.count_encrypted_values(conn)
        with _progress() as progress:
            task = progress.add_task("re-encrypting", total=total)
            result = rotation.rotate_keys(
                conn,
                new_key,
                old_key,
                batch_size=batch_size,
                on_batch=lambda seen: progress.advance(task, seen),
            )
    if json_output:
        print_json(
            {
                "values": result.values_seen,
                "reencrypted": result.values_reencrypted,
                "batches": result.batches,
                "new_key": new_key.fingerprint,
                "old_key": old_key.fingerprint,
            }
        )
        return
    console.print(
        f"[green]✓[/] {result.values_seen} encrypted values now under key "
        f"{new_key.fingerprint} ({result.values_reencrypted} re-encrypted from "
        f"{old_key.fingerprint}, {result.batches} batches)"
    )


def _print_verify(report: rotation.VerifyReport, json_output: bool) -> None:
    if json_output:
        print_json(
            {
                "ok": report.ok,
                "checked_old_key": report.checked_old_key,
                "columns": [
                    {
                        "column": c.column,
                        "total": c.total,
                        "ok": c.ok,
                        "old_key": c.old_key,
                        "unreadable": c.unreadable,
                        "sample_ids": [str(i) for i in c.sample],
                    }
                    for c in report.columns
                ],
            }
        )
        return
    for c in report.columns:
        mark = "[green]✓[/]" if c.ok == c.total else "[red]✗[/]"
        line = f"{mark} {escape(c.column)}: {c.ok}/{c.total} under the new key only"
        if c.old_key:
            line += f", {c.old_key} still open with the old key"
        if c.unreadable:
            line += f", {c.unreadable} open with neither key"
        if c.sample:
            line += " (e.g. " + ", ".join(str(i) for i in c.sample) + ")"
        console.print(line)
    if not report.checked_old_key:
        console.print("[yellow]no old key configured: only the new key was checked[/]")
