"""``agentapi-db org delete`` (crypto-shredding) and ``org rotate-key`` (one data key)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from agentapi_db import datakeys, opsdb
from agentapi_db.cli.app import (
    DatabaseUrlOption,
    ExitCode,
    JsonOption,
    console,
    fail,
    handles_errors,
    org_app,
    print_json,
    resolve_database_url,
)
from agentapi_db.config import Settings
from agentapi_db.crypto.ring import KeyRing

SlugOption = Annotated[str, typer.Option("--slug", help="The organization's slug.")]


def _ring(settings: Settings) -> KeyRing:
    return settings.key_ring()


@org_app.command("delete")
@handles_errors
def org_delete(
    slug: SlugOption,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this cannot be undone.")] = False,
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Delete an organization, all its rows and its data key (crypto-shredding), audited.

    Its secrets cannot be decrypted with the keys in use afterwards. Backups taken
    before still hold its wrapped data key: rotate the master key (rotate-key) and
    destroy the old one to close that (docs/encryption.md).
    """
    if not yes:
        fail("deleting an organization cannot be undone: add --yes", ExitCode.USAGE)
    with opsdb.connect(resolve_database_url(database_url)) as conn:
        done = datakeys.delete_organization(conn, slug)
    if json_output:
        print_json({"organization_id": str(done.organization_id), "slug": done.slug,
                    "data_key_ids": list(done.data_key_ids), "users": done.users,
                    "mcp_configurations": done.configurations,
                    "oauth_tokens": done.oauth_tokens,
                    "audit_event_id": str(done.audit_event_id)})
        return
    console.print(
        f"[green]✓[/] organization {escape(done.slug)} deleted: {done.users} users, "
        f"{done.configurations} configurations, {done.oauth_tokens} OAuth tokens; "
        f"{len(done.data_key_ids)} data key(s) destroyed (audit event {done.audit_event_id})"
    )
    console.print(
        "[yellow]older backups still hold its wrapped data key: run rotate-key with a new "
        "master key, then destroy the old master key[/]"
    )


@org_app.command("rotate-key")
@handles_errors
def org_rotate_key(
    slug: SlugOption,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=100_000)] = 500,
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Give one organization a new data key and re-encrypt its secrets with it (resumable)."""
    ring = _ring(Settings.from_env())
    with opsdb.connect(resolve_database_url(database_url)) as conn:
        done = datakeys.rotate_org_data_key(conn, ring, slug, batch_size=batch_size)
    if json_output:
        print_json({"organization_id": str(done.organization_id), "key_id": done.new_key_id,
                    "reencrypted": done.values_reencrypted,
                    "retired_key_ids": list(done.retired_key_ids)})
        return
    console.print(
        f"[green]✓[/] {escape(slug)}: data key {done.new_key_id}, "
        f"{done.values_reencrypted} values re-encrypted, "
        f"{len(done.retired_key_ids)} old key(s) destroyed"
    )
