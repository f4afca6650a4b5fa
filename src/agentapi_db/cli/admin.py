"""Admin commands: ``org create``, ``user add``, ``sessions cleanup``, ``audit tail|export``,
``prompts show``.

They act through the library as ``agentapi_service`` (``Database.as_service()``), so
the login of the database URL must be a member of ``agentapi_service`` (the local
login ``agentapi_local`` is).

``sessions cleanup`` deletes in batches, each its own short transaction, picking
rows with ``FOR UPDATE SKIP LOCKED`` through the partial index on ``expires_at``:
it never holds locks on millions of rows, never waits for a session another
transaction is using, and can be interrupted at any time without losing work.

``audit export`` streams through a server-side (named) cursor, so memory stays flat
whatever the size of the log, and writes ``FILE`` through a temporary file renamed
at the end: an interrupted export leaves no half-written file.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any
from uuid import UUID

import typer
from psycopg import sql
from psycopg.rows import dict_row
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agentapi_db.cli.app import (
    DatabaseUrlOption,
    ExitCode,
    JsonOption,
    audit_app,
    console,
    err_console,
    fail,
    handles_errors,
    open_database,
    org_app,
    print_json,
    prompts_app,
    sessions_app,
    user_app,
)
from agentapi_db.db import Database, Transaction
from agentapi_db.errors import NotFound
from agentapi_db.models import AuditEvent

# --------------------------------------------------------------------------- SQL
_SQL_COUNT_EXPIRED = (
    "SELECT count(*) FROM public.user_sessions WHERE expires_at IS NOT NULL AND expires_at <= now()"
)
_SQL_DELETE_EXPIRED_BATCH = """
WITH doomed AS (
    SELECT id FROM public.user_sessions
     WHERE expires_at IS NOT NULL AND expires_at <= now()
     ORDER BY expires_at
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
)
DELETE FROM public.user_sessions AS s USING doomed WHERE s.id = doomed.id
"""
_SQL_EXPORT = """
SELECT id, "timestamp", user_id, organization_id, action, resource_type, resource_id,
       details, host(ip_address) AS ip_address, user_agent, success, error_message
  FROM public.audit_logs
 WHERE (%(organization_id)s::uuid IS NULL OR organization_id = %(organization_id)s::uuid)
   AND (%(since)s::timestamptz IS NULL OR "timestamp" >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR "timestamp" < %(until)s::timestamptz)
 ORDER BY "timestamp", id
"""
_EXPORT_CURSOR = "agentapi_audit_export"

EXPORT_COLUMNS = (
    "id",
    "timestamp",
    "user_id",
    "organization_id",
    "action",
    "resource_type",
    "resource_id",
    "details",
    "ip_address",
    "user_agent",
    "success",
    "error_message",
)

_FOLLOW_INTERVAL = 1.0
_FOLLOW_OVERLAP = timedelta(seconds=30)
"""An event's timestamp is its transaction's start, so an event can commit after
later-stamped ones were shown; --follow re-reads this much of the past and skips
events it already printed."""


class Role(StrEnum):
    admin = "admin"
    user = "user"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


OrgSlugOption = Annotated[
    str | None, typer.Option("--org", help="Only this organization (its slug).")
]


def _org_id(tx: Transaction, slug: str) -> UUID:
    try:
        return tx.organizations.get_by_slug(slug).id
    except NotFound:
        raise NotFound(f"no organization with slug {slug!r}") from None


def _parse_time(value: str | None, option: str) -> datetime | None:
    """ISO 8601 date or date-time; without a zone it is UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(
            f"{option}: {value!r} is not an ISO 8601 date or time (e.g. 2026-11-01 or "
            "2026-11-01T12:00:00+00:00)",
            ExitCode.USAGE,
        )
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _parse_uuid(value: str, option: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        fail(f"{option}: {value!r} is not a UUID", ExitCode.USAGE)


# --------------------------------------------------------------------------- org / user


@org_app.command("create")
@handles_errors
def org_create(
    name: Annotated[str, typer.Option("--name", help="Display name.")],
    slug: Annotated[str, typer.Option("--slug", help="Unique slug: lowercase, digits, -.")],
    admin_email: Annotated[str, typer.Option("--admin-email", help="The first admin's email.")],
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create an organization together with its first admin (one transaction)."""
    with open_database(database_url) as db, db.as_service() as tx:
        org, admin = tx.organizations.provision(name=name, slug=slug, admin_email=admin_email)
    if json_output:
        print_json(
            {
                "organization": org.model_dump(mode="json"),
                "admin": admin.model_dump(mode="json"),
            }
        )
        return
    console.print(f"[green]✓[/] organization [bold]{escape(org.slug)}[/] ({org.id})")
    console.print(f"  admin {escape(admin.email)} ({admin.id})")


@user_app.command("add")
@handles_errors
def user_add(
    org: Annotated[str, typer.Option("--org", help="The organization's slug.")],
    email: Annotated[str, typer.Option("--email", help="The user's email.")],
    role: Annotated[Role, typer.Option("--role", help="admin or user.")] = Role.user,
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Add a user to an organization."""
    with open_database(database_url) as db, db.as_service() as tx:
        org_id = _org_id(tx, org)
        user = tx.users.add(email, role=role.value, organization_id=org_id)
    if json_output:
        print_json(user.model_dump(mode="json"))
        return
    console.print(
        f"[green]✓[/] {escape(user.email)} ({user.role}) added to {escape(org)}: {user.id}"
    )


# --------------------------------------------------------------------------- sessions


@sessions_app.command("cleanup")
@handles_errors
def sessions_cleanup(
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", min=1, max=100_000, help="Rows deleted per transaction."),
    ] = 5000,
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Delete expired sessions in batches (each its own transaction), with progress."""
    started = time.monotonic()
    with open_database(database_url) as db:
        with db.as_service() as tx:
            row = tx.connection.execute(_SQL_COUNT_EXPIRED).fetchone()
            expected = int(row[0]) if row is not None else 0
        total, batches = _delete_in_batches(db, batch_size, expected, show=not json_output)
        with db.as_service() as tx:
            tx.audit.log(
                "sessions.cleanup",
                "user_sessions",
                details={"deleted": total, "batches": batches, "batch_size": batch_size},
            )
    elapsed = time.monotonic() - started
    if json_output:
        print_json({"deleted": total, "batches": batches, "seconds": round(elapsed, 3)})
        return
    console.print(
        f"[green]✓[/] deleted {total:,} expired session(s) in {batches} batch(es), {elapsed:.1f}s"
    )


def _delete_in_batches(
    db: Database, batch_size: int, expected: int, *, show: bool
) -> tuple[int, int]:
    total = 0
    batches = 0
    with Progress(
        TextColumn("deleting expired sessions"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not show or expected == 0,
        transient=False,
    ) as progress:
        task = progress.add_task("cleanup", total=max(expected, 1))
        while True:
            with db.as_service() as tx:
                deleted = tx.connection.execute(
                    _SQL_DELETE_EXPIRED_BATCH, {"batch": batch_size}
                ).rowcount
            batches += 1
            total += max(deleted, 0)
            progress.update(task, completed=total, total=max(expected, total, 1))
            if deleted < batch_size:
                break
    return total, batches


# --------------------------------------------------------------------------- audit


def _event_line(event: AuditEvent, slugs: Mapping[UUID, str]) -> str:
    org = slugs.get(event.organization_id, "-") if event.organization_id else "-"
    status = "[green]ok[/]" if event.success else "[red]FAILED[/]"
    resource = event.resource_type + (f"/{event.resource_id}" if event.resource_id else "")
    who = str(event.user_id) if event.user_id else "-"
    return (
        f"[dim]{event.timestamp.isoformat(timespec='seconds')}[/] {escape(org)} "
        f"[bold]{escape(event.action)}[/] {escape(resource)} user={who} {status}"
    )


def _print_event(event: AuditEvent, slugs: Mapping[UUID, str], json_output: bool) -> None:
    if json_output:
        sys.stdout.write(json.dumps(event.model_dump(mode="json"), ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        console.print(_event_line(event, slugs), soft_wrap=True)


@audit_app.command("tail")
@handles_errors
def audit_tail(
    org: OrgSlugOption = None,
    lines: Annotated[
        int, typer.Option("-n", "--lines", min=1, max=10_000, help="How many recent events.")
    ] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops).")
    ] = False,
    database_url: DatabaseUrlOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (JSON Lines).")
    ] = False,
) -> None:
    """Show the most recent audit events, oldest first; --follow keeps watching."""
    with open_database(database_url) as db:
        with db.as_service() as tx:
            org_id = _org_id(tx, org) if org else None
            slugs = {o.id: o.slug for o in tx.organizations.list()}
            page = tx.audit.query(organization_id=org_id, limit=lines)
        events = list(reversed(page.items))
        seen: dict[UUID, datetime] = {}
        for event in events:
            _print_event(event, slugs, json_output)
            seen[event.id] = event.timestamp
        if not follow:
            return
        try:
            _follow(db, org_id, slugs, seen, json_output)
        except KeyboardInterrupt:
            return


def _follow(
    db: Database,
    org_id: UUID | None,
    slugs: dict[UUID, str],
    seen: dict[UUID, datetime],
    json_output: bool,
) -> None:
    high_water = max(seen.values(), default=datetime.now(UTC))
    while True:
        time.sleep(_FOLLOW_INTERVAL)
        since = high_water - _FOLLOW_OVERLAP
        with db.as_service() as tx:
            page = tx.audit.query(organization_id=org_id, since=since, limit=10_000)
            fresh = [e for e in reversed(page.items) if e.id not in seen]
            if any(e.organization_id and e.organization_id not in slugs for e in fresh):
                slugs.update({o.id: o.slug for o in tx.organizations.list()})
        for event in fresh:
            _print_event(event, slugs, json_output)
            seen[event.id] = event.timestamp
            high_water = max(high_water, event.timestamp)
        horizon = high_water - 2 * _FOLLOW_OVERLAP
        for event_id in [k for k, ts in seen.items() if ts < horizon]:
            del seen[event_id]


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    """stdout, or ``path`` written through a temp file renamed into place on success."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    target = path.expanduser()
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".partial", dir=target.parent or Path(".")
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _export_value(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@audit_app.command("export")
@handles_errors
def audit_export(
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl (JSON Lines) or csv.")
    ] = ExportFormat.jsonl,
    since: Annotated[
        str | None,
        typer.Option("--since", help="From this time (ISO 8601, inclusive; UTC if no zone)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Up to this time (ISO 8601, exclusive).")
    ] = None,
    org: OrgSlugOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout.")
    ] = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Export audit events, oldest first, streamed through a server-side cursor."""
    since_at = _parse_time(since, "--since")
    until_at = _parse_time(until, "--until")
    if since_at and until_at and since_at >= until_at:
        fail("--since must be earlier than --until", ExitCode.USAGE)
    if output is not None and not output.expanduser().parent.is_dir():
        fail(f"--output: directory {output.expanduser().parent} does not exist", ExitCode.USAGE)
    count = 0
    with open_database(database_url) as db, db.as_service() as tx:
        org_id = _org_id(tx, org) if org else None
        params = {"organization_id": org_id, "since": since_at, "until": until_at}
        with (
            _output(output) as handle,
            tx.connection.cursor(name=_EXPORT_CURSOR, row_factory=dict_row) as cur,
            Progress(
                TextColumn("exporting audit events"),
                TextColumn("{task.completed:,} rows"),
                TimeElapsedColumn(),
                console=err_console,
                disable=output is None,
            ) as progress,
        ):
            task = progress.add_task("export", total=None)
            cur.itersize = 2000
            cur.execute(sql.SQL(_SQL_EXPORT), params)
            writer = csv.writer(handle) if export_format is ExportFormat.csv else None
            if writer is not None:
                writer.writerow(EXPORT_COLUMNS)
            for row in cur:
                if writer is not None:
                    writer.writerow(
                        [
                            json.dumps(row["details"], ensure_ascii=False)
                            if name == "details"
                            else _export_value(row[name])
                            for name in EXPORT_COLUMNS
                        ]
                    )
                else:
                    record = {name: _export_value(row[name]) for name in EXPORT_COLUMNS}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
                if count % 1000 == 0:
                    progress.update(task, completed=count)
            progress.update(task, completed=count)
    if output is not None:
        err_console.print(f"[green]✓[/] exported {count:,} event(s) to {escape(str(output))}")


# --------------------------------------------------------------------------- prompts


@prompts_app.command("show")
@handles_errors
def prompts_show(
    user: Annotated[str, typer.Option("--user", help="The user's id (UUID).")],
    session: Annotated[
        str | None, typer.Option("--session", help="A session of that user (its override wins).")
    ] = None,
    var: Annotated[
        list[str] | None,
        typer.Option("--var", help="Template variable NAME=VALUE (repeatable)."),
    ] = None,
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Render the final system prompt a user gets (optionally in one of their sessions)."""
    user_id = _parse_uuid(user, "--user")
    session_id = _parse_uuid(session, "--session") if session else None
    variables: dict[str, object] = {}
    for item in var or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--var: {item!r} is not NAME=VALUE", ExitCode.USAGE)
        variables[name] = value
    with open_database(database_url) as db, db.as_service() as tx:
        person = tx.users.get(user_id)
        if session_id is not None and tx.sessions.get(session_id).user_id != person.id:
            raise NotFound("session not found for this user")
        rendered = tx.prompts.render(user_id=person.id, session_id=session_id, variables=variables)
    if json_output:
        print_json(
            {"user_id": str(person.id), "email": person.email, **rendered.model_dump(mode="json")}
        )
        return
    err_console.print(
        f"[dim]{escape(person.email)}: source {rendered.source}, "
        f"{len(rendered.prompt_ids)} prompt(s)[/]"
    )
    sys.stdout.write(rendered.text + ("\n" if rendered.text else ""))
