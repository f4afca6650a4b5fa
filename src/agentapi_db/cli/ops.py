"""Operations commands: key rotation, audit partitions/retention/chain, schedule, stats, backup,
identity cache.

Each command is a thin shell over a module of the package (``rotation``,
``retention``, ``chain``, ``schedule``, ``stats``, ``backup``, ``identity``); keys come only from
the environment (``AGENTAPI_ENCRYPTION_KEY``, ``AGENTAPI_OLD_ENCRYPTION_KEY`` or
their ``_FILE`` twins), never from the command line.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentapi_db import (
    backup,
    chain,
    identity,
    opsdb,
    refresh,
    retention,
    rotation,
    schedule,
    stats,
)
from agentapi_db.cli.app import (
    DatabaseUrlOption,
    ExitCode,
    JsonOption,
    app,
    audit_app,
    console,
    err_console,
    fail,
    handles_errors,
    print_json,
    resolve_database_url,
)
from agentapi_db.config import Settings
from agentapi_db.keys import EncryptionKey

tokens_app = typer.Typer(help="OAuth tokens: refresh status.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


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
                "Change nothing; check that every value is format ag1 under the new key and "
                "none with the old one (exit 1 otherwise)."
            ),
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Re-encrypt every stored token into format ag1 under the new key, online.

    Keys come from the environment only: AGENTAPI_ENCRYPTION_KEY (new) and
    AGENTAPI_OLD_ENCRYPTION_KEY (old, optional: without it, values of the previous
    pgcrypto format are moved to ag1 under the one key), or their _FILE variants;
    or a key ring, AGENTAPI_ENCRYPTION_KEYS or AGENTAPI_ENCRYPTION_KEYS_FILE (one
    <id>:<key> a line, the new primary first): every data key is re-wrapped by the
    primary, opened with whichever ring key wrapped it.
    Encryption happens in this process: no key reaches the database. Batches are
    transactions; interrupting it at any point is safe and running it again
    finishes the job. Run the application with both keys while it runs.
    """
    settings = Settings.from_env()
    new_key = settings.require_key()
    previous = settings.previous_keys
    old_key = previous[0] if previous else None
    url = resolve_database_url(database_url)
    with opsdb.connect(url) as conn:
        if verify_only:
            report = rotation.verify_rotation(conn, new_key, old_key,
                                              other_keys=previous[1:])
            _print_verify(report, json_output)
            if not report.ok:
                raise typer.Exit(int(ExitCode.FAILURE))
            return
        total = rotation.count_encrypted_values(conn)
        with _progress() as progress:
            task = progress.add_task("re-encrypting", total=total)
            result = rotation.rotate_keys(
                conn,
                new_key,
                old_key,
                batch_size=batch_size,
                on_batch=lambda seen: progress.advance(task, seen),
                other_keys=previous[1:],
            )
    if json_output:
        print_json(
            {
                "values": result.values_seen,
                "reencrypted": result.values_reencrypted,
                "data_keys": result.data_keys_seen,
                "data_keys_rewrapped": result.data_keys_rewrapped,
                "batches": result.batches,
                "new_key": new_key.fingerprint,
                "old_key": None if old_key is None else old_key.fingerprint,
                "previous_keys": [k.fingerprint for k in previous],
            }
        )
        return
    console.print(
        f"[green]✓[/] {result.data_keys_seen} data keys wrapped by master key "
        f"{new_key.fingerprint} ({result.data_keys_rewrapped} re-wrapped)"
    )
    console.print(
        f"[green]✓[/] {result.values_seen} encrypted values now under data keys, master key "
        f"{new_key.fingerprint} ({result.values_reencrypted} re-encrypted from "
        f"{'the previous format' if old_key is None else _fingerprints(previous)}, "
        f"{result.batches} batches)"
    )


def _fingerprints(keys: tuple[EncryptionKey, ...]) -> str:
    return ", ".join(k.fingerprint for k in keys)


def _print_verify(report: rotation.VerifyReport, json_output: bool) -> None:
    if json_output:
        print_json(
            {
                "ok": report.ok,
                "checked_old_key": report.checked_old_key,
                "data_keys": report.data_keys,
                "data_keys_ok": report.data_keys_ok,
                "data_keys_old_key": report.data_keys_old,
                "columns": [
                    {
                        "column": c.column,
                        "total": c.total,
                        "ok": c.ok,
                        "old_key": c.old_key,
                        "unreadable": c.unreadable,
                        "legacy_format": c.legacy,
                        "direct_master_key": c.direct,
                        "plaintext": c.plaintext,
                        "sample_ids": [str(i) for i in c.sample],
                    }
                    for c in report.columns
                ],
            }
        )
        return
    mark = "[green]✓[/]" if report.data_keys_ok == report.data_keys else "[red]✗[/]"
    console.print(
        f"{mark} organization data keys: {report.data_keys_ok}/{report.data_keys} wrapped by "
        f"the new master key, {report.data_keys_old} by the old one"
    )
    for c in report.columns:
        mark = "[green]✓[/]" if c.ok == c.total else "[red]✗[/]"
        line = f"{mark} {escape(c.column)}: {c.ok}/{c.total} under data keys of the new key only"
        if c.old_key:
            line += f", {c.old_key} still open with the old key"
        if c.legacy:
            line += f", {c.legacy} still in the previous (OpenPGP) format"
        if c.direct:
            line += f", {c.direct} directly under the master key"
        if c.plaintext:
            line += f", {c.plaintext} stored in plaintext"
        if c.unreadable:
            line += f", {c.unreadable} open with neither key"
        if c.sample:
            line += " (e.g. " + ", ".join(str(i) for i in c.sample) + ")"
        console.print(line)
    if not report.checked_old_key:
        console.print("[yellow]no old key configured: only the new key was checked[/]")


# --------------------------------------------------------------------------- audit


@audit_app.command("partitions")
@handles_errors
def audit_partitions_command(
    database_url: DatabaseUrlOption = None,
    ahead: Annotated[
        int, typer.Option("--ahead", min=0, max=120, help="Months ahead to create.")
    ] = 3,
    back: Annotated[int, typer.Option("--back", min=0, max=240, help="Months back to create.")] = 0,
    json_output: JsonOption = False,
) -> None:
    """Create the missing monthly audit partitions (default: 3 months ahead) and list them."""
    with opsdb.connect(resolve_database_url(database_url)) as conn:
        created = retention.ensure_partitions(conn, ahead, back)
        parts = retention.list_partitions(conn)
    if json_output:
        print_json(
            {
                "created": created,
                "partitions": [
                    {
                        "name": p.name,
                        "bounds": p.bounds,
                        "estimated_rows": p.estimated_rows,
                        "total_bytes": p.total_bytes,
                    }
                    for p in parts
                ],
            }
        )
        return
    for p in parts:
        console.print(f"{p.name:<22} {escape(p.bounds)}  ~{p.estimated_rows} rows")
    console.print(f"[green]✓[/] {created} partition(s) created, {len(parts)} in all")


@audit_app.command("retention")
@handles_errors
def audit_retention_command(
    keep: Annotated[
        int,
        typer.Option(
            "--keep",
            min=1,
            max=1200,
            help="Months to keep before the current one; older partitions are dropped.",
        ),
    ],
    export_dir: Annotated[
        Path | None,
        typer.Option(
            "--export-dir",
            help="Export each partition first, as <dir>/<partition>.jsonl.gz (JSON Lines, gzip).",
            file_okay=False,
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Drop whole audit partitions older than --keep months (never DELETEs rows).

    Each dropped partition is recorded as an audit event. With --export-dir, a
    partition is dropped only after its export is complete on disk.
    """

    def say(item: retention.RetiredPartition) -> None:
        if not json_output:
            where = f" (exported to {item.exported_to})" if item.exported_to else ""
            console.print(f"dropped {item.name}: {item.events} events{escape(where)}")

    with opsdb.connect(resolve_database_url(database_url)) as conn:
        dropped = retention.run_retention(conn, keep, export_dir=export_dir, on_partition=say)
    if json_output:
        print_json(
            {
                "keep_months": keep,
                "dropped": [
                    {
                        "partition": d.name,
                        "from": d.range_start.isoformat(),
                        "to": d.range_end.isoformat(),
                        "events": d.events,
                        "exported_to": str(d.exported_to) if d.exported_to else None,
                    }
                    for d in dropped
                ],
            }
        )
        return
    console.print(f"[green]✓[/] {len(dropped)} partition(s) dropped, keeping {keep} months")


OrgOption = Annotated[str, typer.Option("--org", help="Organization slug.")]


@audit_app.command("enable-chain")
@handles_errors
def audit_enable_chain_command(org: OrgOption, database_url: DatabaseUrlOption = None) -> None:
    """Enrol an organization in the tamper-evident audit hash chain (cannot be undone)."""
    with opsdb.connect(resolve_database_url(database_url)) as conn:
        org_id = chain.organization_id_for_slug(conn, org)
        created = chain.enable_chain(conn, org_id)
    state = "enrolled" if created else "was already enrolled"
    console.print(f"[green]✓[/] {escape(org)} {state} in the audit hash chain")


@audit_app.command("verify-chain")
@handles_errors
def audit_verify_chain_command(
    org: Annotated[
        str | None, typer.Option("--org", help="Organization slug (default: every enrolled one).")
    ] = None,
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Recompute the audit hash chain and report the first broken link (exit 1 if any)."""
    with opsdb.connect(resolve_database_url(database_url)) as conn:
        targets: list[tuple[UUID, str | None]]
        if org is not None:
            targets = [(chain.organization_id_for_slug(conn, org), org)]
        else:
            targets = chain.enrolled_organizations(conn)
        reports = [chain.verify_chain(conn, org_id, slug) for org_id, slug in targets]
    if json_output:
        print_json(
            {
                "ok": all(r.ok for r in reports),
                "organizations": [
                    {
                        "organization_id": str(r.organization_id),
                        "slug": r.slug,
                        "ok": r.ok,
                        "events_checked": r.events_checked,
                        "skipped_before_base": r.skipped_before_base,
                        "base_seq": r.base_seq,
                        "last_seq": r.last_seq,
                        "broken": None
                        if r.broken is None
                        else {
                            "kind": r.broken.kind,
                            "chain_seq": r.broken.chain_seq,
                            "event_id": str(r.broken.event_id) if r.broken.event_id else None,
                            "timestamp": r.broken.timestamp.isoformat()
                            if r.broken.timestamp
                            else None,
                            "detail": r.broken.detail,
                        },
                    }
                    for r in reports
                ],
            }
        )
    else:
        if not reports:
            console.print("no organization is enrolled in the audit hash chain")
        for r in reports:
            name = escape(r.slug or str(r.organization_id))
            if r.broken is None:
                console.print(
                    f"[green]✓[/] {name}: {r.events_checked} events intact "
                    f"(positions {r.base_seq + 1}..{r.last_seq})"
                )
            else:
                b = r.broken
                event = f" event {b.event_id}" if b.event_id else ""
                when = f" at {b.timestamp.isoformat()}" if b.timestamp else ""
                console.print(
                    f"[red]✗[/] {name}: first broken link at chain position {b.chain_seq}"
                    f"{event}{when}: {escape(b.detail)} ({b.kind})"
                )
    if not all(r.ok for r in reports):
        raise typer.Exit(int(ExitCode.FAILURE))


# --------------------------------------------------------------------------- schedule


@app.command("schedule")
@handles_errors
def schedule_command(
    database_url: DatabaseUrlOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the jobs; register nothing.")
    ] = False,
    cleanup_schedule: Annotated[
        str, typer.Option("--cleanup-schedule", help="Cron schedule of the session cleanup.")
    ] = "*/5 * * * *",
    partitions_schedule: Annotated[
        str, typer.Option("--partitions-schedule", help="Cron schedule of partition upkeep.")
    ] = "15 3 * * *",
    retention_schedule: Annotated[
        str, typer.Option("--retention-schedule", help="Cron schedule of audit retention.")
    ] = "45 3 * * *",
    statistics_schedule: Annotated[
        str,
        typer.Option("--statistics-schedule", help="Cron schedule of tune_tenant_statistics()."),
    ] = "15 4 * * 0",
    keep: Annotated[
        int, typer.Option("--keep", min=1, max=1200, help="Months of audit log retention keeps.")
    ] = 12,
    no_retention: Annotated[
        bool, typer.Option("--no-retention", help="Do not schedule retention (and unschedule it).")
    ] = False,
    backups: Annotated[
        str | None,
        typer.Option(
            "--backups",
            help="Print the pgBackRest backup schedule for this pgbackrest.conf instead "
            "(/etc/cron.d lines and systemd timers; pg_cron cannot run pgBackRest). "
            "Needs no database.",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Schedule session cleanup, audit partition upkeep, retention and statistics.

    --backups CONFIG prints a weekly full and daily differential pgBackRest backup
    instead, as cron.d lines and systemd units to install (printed, never installed;
    `agentapi-db pitr backup` writes CONFIG).

    With the pg_cron extension in the database: registers (or updates) the jobs
    agentapi-session-cleanup, agentapi-audit-partitions, agentapi-audit-retention,
    agentapi-tenant-statistics;
    running it again does not duplicate them. Without pg_cron: prints equivalent
    crontab lines and exits 0.
    """
    if backups is not None:
        _print_backup_schedule(Path(backups), json_output)
        return
    with opsdb.connect(resolve_database_url(database_url)) as conn:
        jobs = schedule.wanted_jobs(
            conn,
            cleanup=cleanup_schedule,
            partitions=partitions_schedule,
            retention=retention_schedule,
            statistics=statistics_schedule,
            keep_months=None if no_retention else keep,
        )
        version = schedule.pg_cron_version(conn)
        if version is None or dry_run:
            if version is None and not json_output and schedule.pg_cron_could_be_created(conn):
                err_console.print(
                    "[yellow]pg_cron is preloaded for this database but not created: run "
                    "CREATE EXTENSION pg_cron as a superuser, then this command again[/]"
                )
            _print_jobs(jobs, version, dry_run, json_output)
            return
        result = schedule.apply_schedule(conn, jobs)
    if json_output:
        print_json(
            {
                "pg_cron": result.pg_cron_version,
                "scheduled": [
                    {"job": j.name, "jobid": jid, "schedule": j.schedule, "command": j.command}
                    for j, jid in result.scheduled
                ],
                "unscheduled": result.unscheduled,
            }
        )
        return
    for job, jobid in result.scheduled:
        console.print(f"[green]✓[/] {job.name} (job {jobid}): {escape(job.schedule)}")
    for name in result.unscheduled:
        console.print(f"[yellow]-[/] {name} unscheduled")
    console.print(f"registered with pg_cron {result.pg_cron_version}")


def _print_backup_schedule(config: Path, json_output: bool) -> None:
    from agentapi_db.ha import pitr

    cron = pitr.backup_cron_lines(config)
    units = pitr.backup_systemd_units(config)
    if json_output:
        print_json({"backups": {"cron_d": cron, "systemd": units}})
        return
    err_console.print("[dim]pgBackRest backups: /etc/cron.d/agentapi-db-backups[/]")
    for line in cron:
        typer.echo(line)
    err_console.print(
        "[dim]or systemd (then `systemctl enable --now agentapi-db-backup-full.timer "
        "agentapi-db-backup-diff.timer`):[/]"
    )
    for name, text in units.items():
        typer.echo(f"# /etc/systemd/system/{name}")
        typer.echo(text)


def _print_jobs(
    jobs: list[schedule.Job], version: str | None, dry_run: bool, json_output: bool
) -> None:
    if json_output:
        print_json(
            {
                "pg_cron": version,
                "dry_run": dry_run,
                "jobs": [
                    {"job": j.name, "schedule": j.schedule, "command": j.command, "cli": j.cli}
                    for j in jobs
                ],
                "crontab": None if version else schedule.crontab_lines(jobs),
            }
        )
        return
    if version is None:
        err_console.print(
            "[yellow]pg_cron is not installed in this database; add these lines to a "
            "crontab instead (or install pg_cron and run this again):[/]"
        )
        for line in schedule.crontab_lines(jobs):
            typer.echo(line)
        return
    for job in jobs:
        console.print(f"would register {job.name}: {escape(job.schedule)}  {escape(job.command)}")


# --------------------------------------------------------------------------- stats


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(value: object) -> str:
    return "-" if value is None else str(value)[:19]


@app.command("stats")
@handles_errors
def stats_command(
    database_url: DatabaseUrlOption = None,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune",
            help=(
                "First pin the planner's tenant estimate on every tenant table "
                "(tune_tenant_statistics(); run it after bulk loads)."
            ),
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Table sizes, row estimates, dead tuples, (auto)vacuum/analyze, index usage."""
    with opsdb.connect(resolve_database_url(database_url)) as conn:
        tuned = stats.tune_tenant_statistics(conn) if tune else []
        result = stats.collect_stats(conn)
    if json_output:
        print_json(result.as_dict() | ({"tuned": [asdict(t) for t in tuned]} if tune else {}))
        return
    for est in tuned:
        planned = est.effective_tenants if est.effective_tenants is not None else "(default)"
        console.print(
            f"[green]✓[/] {est.table}: {est.rows} rows in {est.tenants} organizations, "
            f"planned as {planned} effective tenants"
        )
    console.print(
        f"database {escape(result.database)}: {_size(result.database_bytes)}; "
        f"statistics since {_when(result.stats_reset)}"
    )
    tables = Table("table", "total", "heap", "indexes", "rows~", "dead", "seq scans",
                   "idx scans", "last vacuum", "last analyze", title="tables")
    for t in result.tables:
        tables.add_row(
            f"{t.schema}.{t.table}", _size(t.total_bytes), _size(t.table_bytes),
            _size(t.index_bytes), str(t.estimated_rows), str(t.dead_tuples), str(t.seq_scans),
            str(t.index_scans), _when(t.last_vacuum or t.last_autovacuum),
            _when(t.last_analyze or t.last_autoanalyze),
        )
    console.print(tables)
    indexes = Table("index", "table", "size", "scans", "tuples read", "unused", title="indexes")
    for i in result.indexes:
        indexes.add_row(
            f"{i.schema}.{i.index}", i.table, _size(i.bytes), str(i.scans), str(i.tuples_read),
            "[yellow]unused[/]" if i.unused else "",
        )
    console.print(indexes)
    unused = result.unused_indexes
    console.print(
        f"{len(unused)} unused index(es) (never scanned, not unique): "
        + (", ".join(f"{i.schema}.{i.index}" for i in unused) or "none")
    )


# --------------------------------------------------------------------------- identity cache


@app.command("identity-cache")
@handles_errors
def identity_cache_command(
    database_url: DatabaseUrlOption = None,
    enable: Annotated[
        bool | None,
        typer.Option(
            "--on/--off",
            help=(
                "Switch the RLS identity helpers to the cache of the extension "
                "agentapi_identity (--on) or to the portable lookups (--off)."
            ),
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Show (or switch) how RLS finds the acting user: per-transaction cache or portable.

    The cache needs the extension agentapi_identity (ext/agentapi_identity) installed in
    the database by a superuser; schema.sql installs it when the server has it.
    Connect as a superuser or a member of agentapi_owner.
    """
    with opsdb.connect(resolve_database_url(database_url, superuser=True)) as conn:
        if enable is None:
            result = identity.identity_mode(conn)
        else:
            result = identity.use_identity_cache(conn, enable)
    if json_output:
        print_json(result.as_dict())
    else:
        installed = (
            f"agentapi_identity {result.extension_version} installed"
            if result.extension_version
            else "agentapi_identity not installed"
            + (
                f" (the server has {result.extension_available})"
                if result.extension_available
                else " (not on the server)"
            )
        )
        mark = "[green]✓[/]" if result.mode != "invalid" else "[red]✗[/]"
        console.print(f"{mark} identity helpers: {result.mode}; {escape(installed)}")
        for problem in result.problems:
            console.print(f"    [red]{escape(problem)}[/]", soft_wrap=True)
    if result.mode == "invalid":
        raise typer.Exit(int(ExitCode.FAILURE))


# --------------------------------------------------------------------------- backup


@app.command("backup")
@handles_errors
def backup_command(
    file: Annotated[Path, typer.Argument(help="Dump file to write (pg_dump custom format).")],
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """pg_dump -Fc of the database, with a manifest (schema version, row counts) next to it.

    Needs a superuser URL (row-level security is forced on every table).
    """
    manifest = backup.backup(resolve_database_url(database_url, superuser=True), file)
    if json_output:
        print_json(manifest.as_dict() | {"manifest": str(backup.manifest_path(file))})
        return
    rows = sum(manifest.row_counts.values())
    console.print(
        f"[green]✓[/] {escape(str(file))}: {_size(manifest.bytes)}, schema version "
        f"{manifest.schema_version}, {rows} rows in {len(manifest.row_counts)} tables "
        f"(manifest {escape(str(backup.manifest_path(file)))})"
    )


@app.command("restore")
@handles_errors
def restore_command(
    file: Annotated[Path, typer.Argument(help="Dump written by `agentapi-db backup`.")],
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Restore into a scratch database, compare with the manifest, drop it.",
        ),
    ] = False,
    into: Annotated[
        str | None,
        typer.Option("--into", help="Restore into this new database (kept) and compare."),
    ] = None,
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Restore a backup into a new database and compare schema version and row counts.

    Exit 1 when anything differs from the backup's manifest. Needs a superuser URL
    (on the server to restore to); the database it names is not touched.
    """
    if not verify and into is None:
        fail("say where to restore: --verify (scratch database) or --into NAME", ExitCode.USAGE)
    url = resolve_database_url(database_url, superuser=True)
    report = backup.restore(url, file, into=into)
    if json_output:
        print_json(
            {
                "ok": report.ok,
                "database": report.database,
                "kept": report.kept,
                "schema_version": report.schema_version,
                "expected_schema_version": report.expected.schema_version,
                "row_counts": report.row_counts,
                "mismatches": report.mismatches,
            }
        )
    else:
        for table, count in sorted(report.row_counts.items()):
            want = report.expected.row_counts.get(table)
            mark = "[green]✓[/]" if want == count else "[red]✗[/]"
            console.print(f"{mark} {escape(table)}: {count} rows (backup: {want})")
        for problem in report.mismatches:
            console.print(f"[red]✗[/] {escape(problem)}")
        where = f"kept as {report.database}" if report.kept else "scratch database dropped"
        verdict = "[green]restore verified[/]" if report.ok else "[red]restore differs[/]"
        console.print(
            f"{verdict}: schema version {report.schema_version} "
            f"(backup: {report.expected.schema_version}); {escape(where)}"
        )
    if not report.ok:
        raise typer.Exit(int(ExitCode.FAILURE))


# --------------------------------------------------------------------------- tokens


@tokens_app.command("status")
@handles_errors
def tokens_status_command(
    within_minutes: Annotated[
        int, typer.Option("--within", min=0, max=10_000, help="Expiry window, in minutes.")
    ] = 5,
    max_failures: Annotated[
        int, typer.Option("--max-failures", min=1, help="Failures after which workers give up.")
    ] = 10,
    database_url: DatabaseUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """What OAuth refresh workers face: expired, expiring, leased, failing tokens (counts only)."""
    with opsdb.connect(resolve_database_url(database_url)) as conn:
        st = refresh.refresh_status(
            conn, within=timedelta(minutes=within_minutes), max_failures=max_failures
        )
    if json_output:
        print_json(asdict(st))
        return
    console.print(
        f"{st.tokens} tokens ({st.refreshable} with a refresh token): {st.expired} expired, "
        f"{st.expiring_soon} expiring within {within_minutes} min, {st.leased} leased by a "
        f"worker, {st.backing_off} backing off after a failure, {st.failing} failing, "
        f"{st.given_up} given up (>= {max_failures} failures); next expiry {_when(st.next_expiry)}"
    )
