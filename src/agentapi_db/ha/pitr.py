"""Point-in-time recovery with pgBackRest: WAL archiving, backups, restores.

Works on a :class:`~agentapi_db.cluster.LocalCluster` (by default the local
database of ``agentapi-db up``) and a pgBackRest repository directory (by default
``pgbackrest`` next to the cluster's data dir)::

    repo/
        pgbackrest.conf      written here: one stanza, "agentapi"
        backup/ archive/     pgBackRest's repository (repo1-path)
        log/ lock/           pgBackRest's logs and locks

:meth:`Pitr.enable` turns WAL archiving on with ``ALTER SYSTEM`` (so it survives
``agentapi-db down``/``up``, which rewrite ``agentapi.conf``), restarts the server
once when ``archive_mode`` was off, creates the stanza and runs ``pgbackrest
check``. :meth:`Pitr.backup` takes a full, differential or incremental backup
(the first one is always full). :meth:`Pitr.restore` restores the backup set
before the target time into a *new* data dir, recovers to the target and
promotes, then starts it as a :class:`LocalCluster` on a free port with
archiving off (``--archive-mode=off``: a restored copy must not push its WAL
into the source's archive). The source is never touched by a restore.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from agentapi_db.cluster import ClusterError, LocalCluster
from agentapi_db.ha._proc import Runner

__all__ = [
    "PGBACKREST_HINT",
    "STANZA",
    "BackupInfo",
    "Pitr",
    "PitrInfo",
    "parse_target_time",
]

STANZA = "agentapi"
PGBACKREST_HINT = (
    "pgBackRest is not installed: run `bash scripts/install-ha.sh` (apt-get install pgbackrest)"
)
CONFIG_FILE = "pgbackrest.conf"
BACKUP_TYPES = ("full", "diff", "incr")

_SQL_SETTING = "SELECT pg_catalog.current_setting(%s)"
_SQL_ALTER_ARCHIVE_MODE = "ALTER SYSTEM SET archive_mode = 'on'"
_SQL_ALTER_ARCHIVE_COMMAND = "ALTER SYSTEM SET archive_command = {}"  # a sql.Literal
_SQL_RELOAD = "SELECT pg_catalog.pg_reload_conf()"
_SQL_IN_RECOVERY = "SELECT pg_catalog.pg_is_in_recovery()"



def parse_target_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC. Raises ValueError when malformed."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not an ISO 8601 time: {text!r} (e.g. 2026-12-03T14:05:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _pg_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def _from_epoch(value: object) -> str | None:
    if not isinstance(value, int | float):
        return None
    return datetime.fromtimestamp(value, UTC).isoformat()


@dataclass(frozen=True)
class BackupInfo:
    label: str
    type: str
    started: str | None
    stopped: str | None
    size: int | None
    """Size of the database at backup time, bytes."""
    repo_size: int | None
    """Bytes this backup adds to the repository (compressed, deduplicated)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "type": self.type,
            "started": self.started,
            "stopped": self.stopped,
            "size": self.size,
            "repo_size": self.repo_size,
        }


@dataclass(frozen=True)
class PitrInfo:
    repo: Path
    backups: list[BackupInfo]
    wal_min: str | None
    wal_max: str | None
    recoverable_from: str | None
    """The end of the oldest backup: the earliest time a restore can reach."""
    recoverable_to: str | None
    """The last archived WAL's time is not recorded by pgBackRest; this is the time
    of the query, valid while archiving keeps up (``pgbackrest check`` proves it)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "repo": str(self.repo),
            "stanza": STANZA,
            "backups": [b.as_dict() for b in self.backups],
            "wal": {"min": self.wal_min, "max": self.wal_max},
            "recoverable": {"from": self.recoverable_from, "to": self.recoverable_to},
        }


class Pitr:
    """WAL archiving and backups of ``cluster`` into the repository ``repo``."""

    def __init__(self, cluster: LocalCluster, repo: Path | None = None) -> None:
        self.cluster = cluster
        self.repo = (repo or cluster.data_dir.parent / "pgbackrest").expanduser().absolute()

    @property
    def runner(self) -> Runner:
        return Runner(self.repo, self.cluster.binaries.bindir)

    @property
    def config(self) -> Path:
        return self.repo / CONFIG_FILE

    def _pgbackrest(self) -> str:
        found = shutil.which("pgbackrest")
        if found is None:
            raise ClusterError(PGBACKREST_HINT)
        return found

    def _cmd(self, *args: str) -> list[str]:
        return [self._pgbackrest(), f"--config={self.config}", f"--stanza={STANZA}", *args]

    def _write_config(self) -> None:
        runner = self.runner
        runner.mkdir(self.repo)
        for sub in ("log", "lock", "spool"):
            runner.mkdir(self.repo / sub)
        cluster = self.cluster
        text = (
            "# written by agentapi-db pitr\n"
            "[global]\n"
            f"repo1-path={self.repo}\n"
            "repo1-retention-full=2\n"
            "repo1-retention-diff=6\n"
            f"log-path={self.repo / 'log'}\n"
            f"lock-path={self.repo / 'lock'}\n"
            f"spool-path={self.repo / 'spool'}\n"
            "log-level-console=warn\n"
            "log-level-file=info\n"
            "start-fast=y\n"
            "compress-type=lz4\n"
            "process-max=2\n"
            f"\n[{STANZA}]\n"
            f"pg1-path={cluster.pgdata}\n"
            f"pg1-port={cluster.port}\n"
            f"pg1-socket-path={cluster.socket_dir}\n"
            "pg1-user=postgres\n"
        )
        if not self.config.is_file() or self.config.read_text(encoding="utf-8") != text:
            self.config.write_text(text, encoding="utf-8")
            self.config.chmod(0o600)
            runner.chown(self.config)

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.cluster.dsn(), autocommit=True, connect_timeout=10)

    def enable(self) -> None:
        """Archive WAL into the repository (restart once if needed); create the stanza."""
        self._pgbackrest()
        cluster = self.cluster
        if not cluster.is_running():
            raise ClusterError(f"the cluster in {cluster.data_dir} does not run; start it first")
        self._write_config()
        command = " ".join([*self._cmd("archive-push"), "%p"])
        with self._admin() as conn:
            row = conn.execute(_SQL_SETTING, ("archive_mode",)).fetchone()
            mode_on = row is not None and row[0] in ("on", "always")
            conn.execute(sql.SQL(_SQL_ALTER_ARCHIVE_COMMAND).format(sql.Literal(command)))
            if not mode_on:
                conn.execute(_SQL_ALTER_ARCHIVE_MODE)
            conn.execute(_SQL_RELOAD)
        if not mode_on:
            cluster.restart()
        self.runner.check(self._cmd("stanza-create"), what="pgbackrest stanza-create")
        self.runner.check(self._cmd("check"), what="pgbackrest check")

    def backup(self, kind: str = "full") -> BackupInfo:
        """Take a backup (``full``, ``diff`` or ``incr``); enables archiving first."""
        if kind not in BACKUP_TYPES:
            raise ValueError(f"backup type must be one of {', '.join(BACKUP_TYPES)}")
        self.enable()
        self.runner.check(self._cmd("backup", f"--type={kind}"), timeout=3600,
                          what="pgbackrest backup")
        backups = self.info().backups
        if not backups:
            raise ClusterError("pgbackrest backup reported success but lists no backup")
        return backups[-1]

    def info(self) -> PitrInfo:
        """The backups and the recoverable window (reads the repository only)."""
        self._pgbackrest()
        if not self.config.is_file():
            return PitrInfo(self.repo, [], None, None, None, None)
        out = self.runner.check(self._cmd("info", "--output=json"), what="pgbackrest info")
        stanzas = json.loads(out or "[]")
        stanza = next((s for s in stanzas if s.get("name") == STANZA), None)
        if stanza is None:
            return PitrInfo(self.repo, [], None, None, None, None)
        backups = [
            BackupInfo(
                label=str(b.get("label")),
                type=str(b.get("type")),
                started=_from_epoch(b.get("timestamp", {}).get("start")),
                stopped=_from_epoch(b.get("timestamp", {}).get("stop")),
                size=b.get("info", {}).get("size"),
                repo_size=b.get("info", {}).get("repository", {}).get("delta"),
            )
            for b in stanza.get("backup", [])
        ]
        archives = stanza.get("archive", [])
        wal_min = min((a.get("min") for a in archives if a.get("min")), default=None)
        wal_max = max((a.get("max") for a in archives if a.get("max")), default=None)
        return PitrInfo(
            repo=self.repo,
            backups=backups,
            wal_min=wal_min,
            wal_max=wal_max,
            recoverable_from=backups[0].stopped if backups else None,
            recoverable_to=datetime.now(UTC).isoformat() if backups else None,
        )

    def restore(self, target: datetime, into: Path, port: int | None = None,
                timeout: float = 300) -> LocalCluster:
        """Restore to ``target`` into the new data dir ``into``; start it; return it."""
        self._pgbackrest()
        if not self.config.is_file():
            raise ClusterError(f"no pgBackRest repository configured in {self.repo}")
        restored = LocalCluster(into, port, binaries=self.cluster.binaries)
        if restored.pgdata.exists() and any(restored.pgdata.iterdir()):
            raise ClusterError(f"{restored.pgdata} is not empty; restore into a new directory")
        restored_runner = Runner(restored.data_dir, restored.binaries.bindir)
        restored_runner.mkdir(restored.data_dir)
        restored_runner.mkdir(restored.pgdata)
        self.runner.check(
            self._cmd(
                "restore", f"--pg1-path={restored.pgdata}", "--type=time",
                f"--target={_pg_time(target)}", "--target-action=promote",
                "--archive-mode=off",
            ),
            timeout=timeout, what="pgbackrest restore",
        )
        restored.init()  # saves the port and layout; the data dir is already there
        restored.start(timeout=int(timeout))
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(psycopg.OperationalError), psycopg.connect(
                restored.dsn(), connect_timeout=5
            ) as conn:
                row = conn.execute(_SQL_IN_RECOVERY).fetchone()
                if row is not None and row[0] is False:
                    return restored
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the restored cluster did not finish recovery; see {restored.log_file}"
                )
            time.sleep(0.3)


# --------------------------------------------------------------------------- schedule

FULL_BACKUP_CRON = "30 1 * * 0"
"""Default: a full backup on Sundays at 01:30."""
DIFF_BACKUP_CRON = "30 1 * * 1-6"
"""Default: a differential backup the other days at 01:30."""
FULL_BACKUP_CALENDAR = "Sun *-*-* 01:30:00"
DIFF_BACKUP_CALENDAR = "Mon..Sat *-*-* 01:30:00"


def _backup_argv(config: Path, kind: str) -> str:
    return f"pgbackrest --config={config} --stanza={STANZA} backup --type={kind}"


def backup_cron_lines(
    config: Path, full: str = FULL_BACKUP_CRON, diff: str = DIFF_BACKUP_CRON
) -> list[str]:
    """Lines for ``/etc/cron.d/agentapi-db-backups`` (with the user field: postgres).

    pg_cron cannot run pgBackRest (it runs SQL inside the server), so backups are
    always scheduled by the machine's cron or systemd, as the ``postgres`` OS user.
    """
    return [
        "# /etc/cron.d/agentapi-db-backups: pgBackRest backups (WAL is archived continuously)",
        "SHELL=/bin/sh",
        "PATH=/usr/bin:/bin",
        f"{full} postgres {_backup_argv(config, 'full')}",
        f"{diff} postgres {_backup_argv(config, 'diff')}",
    ]


def backup_systemd_units(
    config: Path, full: str = FULL_BACKUP_CALENDAR, diff: str = DIFF_BACKUP_CALENDAR
) -> dict[str, str]:
    """``/etc/systemd/system`` unit files (name → text) for the same two backups."""
    units: dict[str, str] = {}
    for kind, calendar in (("full", full), ("diff", diff)):
        name = f"agentapi-db-backup-{kind}"
        units[f"{name}.service"] = (
            "[Unit]\n"
            f"Description=agentapi-db pgBackRest {kind} backup\n"
            "After=postgresql.service\n\n"
            "[Service]\n"
            "Type=oneshot\n"
            "User=postgres\n"
            f"ExecStart=/usr/bin/{_backup_argv(config, kind)}\n"
        )
        units[f"{name}.timer"] = (
            "[Unit]\n"
            f"Description=agentapi-db pgBackRest {kind} backup, on schedule\n\n"
            "[Timer]\n"
            f"OnCalendar={calendar}\n"
            "Persistent=true\n\n"
            "[Install]\n"
            "WantedBy=timers.target\n"
        )
    return units
