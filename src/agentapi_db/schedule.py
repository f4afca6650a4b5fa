"""Scheduled maintenance (``agentapi-db schedule``): pg_cron jobs, or crontab lines.

Four jobs keep a deployment healthy:

==============================  ===================  =========================================
job name                        default schedule     what it runs (as ``agentapi_service``)
==============================  ===================  =========================================
``agentapi-session-cleanup``    every 5 minutes      ``cleanup_expired_sessions()``
``agentapi-audit-partitions``   daily at 03:15       ``audit_ensure_partitions(3, 0)``
``agentapi-audit-retention``    daily at 03:45       ``audit_retention(<keep>)`` (no export)
``agentapi-tenant-statistics``  Sundays at 04:15     ``tune_tenant_statistics()``
==============================  ===================  =========================================

When the target database has the ``pg_cron`` extension, :func:`apply_schedule`
registers them with ``cron.schedule(job_name, ...)``, which updates a job of the
same name instead of adding a second one, so running it again is idempotent; a
job that is no longer wanted (``--no-retention``) is unscheduled. Jobs run as the
user who registered them, in this database; each command starts with
``SET ROLE agentapi_service``, so that user must be a member of it (or a
superuser): :func:`apply_schedule` checks this first.

Without pg_cron, :func:`crontab_lines` gives the equivalent crontab entries,
which run the ``agentapi-db`` commands instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, LiteralString

import psycopg
from psycopg import sql

from agentapi_db.errors import ConfigurationError, InvalidInput
from agentapi_db.opsdb import Conn

__all__ = [
    "JOB_PREFIX",
    "Job",
    "ScheduleResult",
    "apply_schedule",
    "crontab_lines",
    "pg_cron_could_be_created",
    "pg_cron_version",
    "wanted_jobs",
]

JOB_PREFIX: Final = "agentapi-"

# --------------------------------------------------------------------------- SQL

_SQL_PG_CRON: Final[LiteralString] = (
    "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'"
)
_SQL_CRON_READY: Final[LiteralString] = """
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'pg_cron')
       AND pg_catalog.current_setting('cron.database_name', true) = current_database()
"""
_SQL_CAN_ACT_AS_SERVICE: Final[LiteralString] = (
    "SELECT current_user, pg_catalog.pg_has_role(current_user, 'agentapi_service', 'MEMBER')"
)
_SQL_SCHEDULE: Final[LiteralString] = "SELECT cron.schedule(%s, %s, %s)"
_SQL_EXISTING: Final[LiteralString] = (
    "SELECT jobname FROM cron.job"
    " WHERE username = current_user AND starts_with(jobname, 'agentapi-')"
)
_SQL_UNSCHEDULE: Final[LiteralString] = "SELECT cron.unschedule(%s)"

# Job commands. The only value in them (months to keep) is an int, rendered with
# psycopg.sql.Literal.
_CMD_CLEANUP: Final[LiteralString] = (
    "SET ROLE agentapi_service; SELECT public.cleanup_expired_sessions();"
)
_CMD_PARTITIONS: Final[LiteralString] = (
    "SET ROLE agentapi_service; SELECT public.audit_ensure_partitions(3, 0);"
)
_CMD_RETENTION: Final[LiteralString] = (
    "SET ROLE agentapi_service; SELECT public.audit_retention({});"
)
_CMD_STATISTICS: Final[LiteralString] = (
    "SET ROLE agentapi_service; SELECT count(*) FROM public.tune_tenant_statistics();"
)

# --------------------------------------------------------------------------- API


@dataclass(frozen=True)
class Job:
    """One maintenance job: its pg_cron name, cron schedule, SQL, and CLI equivalent."""

    name: str
    schedule: str
    command: str
    cli: str
    description: str


@dataclass(frozen=True)
class ScheduleResult:
    """What :func:`apply_schedule` did."""

    pg_cron_version: str
    scheduled: list[tuple[Job, int]]
    unscheduled: list[str]


def _check_cron(expr: str) -> str:
    fields = expr.split()
    if not (expr.startswith("@") or len(fields) == 5 or expr.endswith(("second", "seconds"))):
        raise InvalidInput(
            f"not a cron schedule: {expr!r} (five fields, e.g. '*/5 * * * *')", rule="schedule"
        )
    return expr


def wanted_jobs(
    conn: Conn,
    *,
    cleanup: str = "*/5 * * * *",
    partitions: str = "15 3 * * *",
    retention: str = "45 3 * * *",
    statistics: str = "15 4 * * 0",
    keep_months: int | None = 12,
) -> list[Job]:
    """The jobs to register (retention only when ``keep_months`` is not None)."""
    jobs = [
        Job(
            "agentapi-session-cleanup",
            _check_cron(cleanup),
            _CMD_CLEANUP,
            "agentapi-db sessions cleanup",
            "delete expired sessions",
        ),
        Job(
            "agentapi-audit-partitions",
            _check_cron(partitions),
            _CMD_PARTITIONS,
            "agentapi-db audit partitions --ahead 3",
            "create the audit partitions of the next 3 months",
        ),
        Job(
            "agentapi-tenant-statistics",
            _check_cron(statistics),
            _CMD_STATISTICS,
            "agentapi-db stats --tune",
            "pin the planner's tenant estimate (tune_tenant_statistics)",
        ),
    ]
    if keep_months is not None:
        if keep_months < 1 or keep_months > 1200:
            raise InvalidInput("retention must keep 1 to 1200 months", rule="keep_months")
        command = sql.SQL(_CMD_RETENTION).format(sql.Literal(keep_months)).as_string(conn)
        jobs.append(
            Job(
                "agentapi-audit-retention",
                _check_cron(retention),
                command,
                f"agentapi-db audit retention --keep {keep_months}",
                f"drop audit partitions older than {keep_months} months",
            )
        )
    return jobs


def pg_cron_version(conn: Conn) -> str | None:
    """The pg_cron extension's version in this database, or None if it is not there."""
    row = conn.execute(_SQL_PG_CRON).fetchone()
    return str(row[0]) if row else None


def pg_cron_could_be_created(conn: Conn) -> bool:
    """pg_cron is installed, loaded (its settings exist) and pointed at this database,
    but the extension is not created here. False when this login may not tell."""
    try:
        row = conn.execute(_SQL_CRON_READY).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return False
    return bool(row and row[0])


def apply_schedule(conn: Conn, jobs: list[Job]) -> ScheduleResult:
    """Register ``jobs`` with pg_cron (idempotent) and unschedule our other jobs.

    ``conn`` must be in autocommit mode; everything happens in one transaction.
    """
    version = pg_cron_version(conn)
    if version is None:
        raise ConfigurationError("pg_cron is not installed in this database")
    row = conn.execute(_SQL_CAN_ACT_AS_SERVICE).fetchone()
    if row is None or not row[1]:
        user = row[0] if row else "?"
        raise ConfigurationError(
            f"jobs run as the registering user ({user}), which is not a member of "
            "agentapi_service: register them as a login that is (or as a superuser)"
        )
    scheduled: list[tuple[Job, int]] = []
    unscheduled: list[str] = []
    wanted = {job.name for job in jobs}
    with conn.transaction():
        for job in jobs:
            got = conn.execute(_SQL_SCHEDULE, (job.name, job.schedule, job.command)).fetchone()
            scheduled.append((job, int(got[0]) if got else -1))
        for (name,) in conn.execute(_SQL_EXISTING).fetchall():
            if name not in wanted:
                conn.execute(_SQL_UNSCHEDULE, (name,))
                unscheduled.append(str(name))
    return ScheduleResult(version, scheduled, unscheduled)


def crontab_lines(jobs: list[Job]) -> list[str]:
    """Crontab entries equivalent to ``jobs``, running the ``agentapi-db`` commands."""
    lines = [
        "# agentapi-db maintenance (crontab -e); the environment needs AGENTAPI_DATABASE_URL",
        "# naming a login that is a member of agentapi_service, e.g.:",
        "# AGENTAPI_DATABASE_URL=postgresql://service@db.example.com/agentapi",
    ]
    for job in jobs:
        lines.append(f"# {job.name}: {job.description}")
        lines.append(f"{job.schedule} {job.cli}")
    return lines
