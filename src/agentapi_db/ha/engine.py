"""A local highly available pair under pg_auto_failover: one monitor, two keepers.

Why pg_auto_failover rather than Patroni (see docs/ha.md for the measurements):
the target is writes resuming within 10 s of losing the primary node, agent
included. Patroni's leader key lives until its ``ttl`` expires (20 s minimum), so
when the primary's Patroni dies with it nothing can happen before 20 s.
pg_auto_failover's monitor probes the nodes itself, with tunable periods
(:data:`MONITOR_SETTINGS`); it needs no external store (etcd), and it replicates
synchronously by default. Measured here: about 3 s from SIGKILL to the first write.

Layout of ``data_dir``::

    ha-state.json        ports of the monitor and the nodes
    monitor/ node1/ node2/   the three PostgreSQL data directories
    config/ data/ run/   pg_autoctl's XDG directories (its config and state files)
    logs/                one log per agent

Everything listens on 127.0.0.1 only and trusts loopback connections, like the
local cluster (:mod:`agentapi_db.cluster`): development and tests, never a
production deployment (docs/ha.md describes that).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from agentapi_db.cluster import HOST, ClusterError, PgBinaries, default_data_dir, find_binaries
from agentapi_db.cluster import free_port as _free_port
from agentapi_db.ha._proc import Runner
from agentapi_db.local import LOCAL_DATABASE, LOCAL_LOGIN, ensure_login
from agentapi_db.migrations import migrate

__all__ = [
    "AUTOCTL_HINT",
    "MONITOR_SETTINGS",
    "NODE_NAMES",
    "HaCluster",
    "HaStatus",
    "NodeInfo",
    "default_ha_dir",
    "multi_host_url",
]

AUTOCTL = "pg_autoctl"
AUTOCTL_HINT = (
    "pg_auto_failover is not installed: run `bash scripts/install-ha.sh` "
    "(apt-get install pg-auto-failover-cli postgresql-15-auto-failover)"
)
NODE_NAMES = ("node1", "node2")
FORMATION = "default"
STATE_FILE = "ha-state.json"

MONITOR_SETTINGS: dict[str, int] = {
    # how often the monitor probes each node, and how fast it gives up (ms)
    "pgautofailover.health_check_period": 1000,
    "pgautofailover.health_check_timeout": 1000,
    "pgautofailover.health_check_max_retries": 1,
    "pgautofailover.health_check_retry_delay": 500,
    # a node whose keeper has not reported for this long, and fails its probe, is down
    "pgautofailover.node_considered_unhealthy_timeout": 2000,
    # how long an unreachable primary gets to demote itself before the standby is promoted
    "pgautofailover.primary_demote_timeout": 2000,
    # do not wait for a fresh node's first report longer than this
    "pgautofailover.startup_grace_period": 5000,
}
"""The monitor's tuned timings (defaults: 5000, 5000, 2, 2000, 20000, 30000, 10000)."""

# Goal states the monitor assigns to the node that is (or is becoming) the primary.
# The goal, not the reported state, decides the role: a dead primary's last report
# stays "primary" while the monitor has already assigned it "demoted".
_PRIMARY_GOALS = frozenset(
    {"single", "wait_primary", "primary", "join_primary", "apply_settings", "stop_replication"}
)

_SQL_NODES = (
    "SELECT nodename, nodeport, reportedstate::text, goalstate::text "
    "FROM pgautofailover.node WHERE formationid = %s ORDER BY nodeid"
)
_SQL_ALTER_SYSTEM = "ALTER SYSTEM SET {} = {}"
_SQL_RELOAD = "SELECT pg_catalog.pg_reload_conf()"
_SQL_CHECKPOINT = "CHECKPOINT"
_SQL_IS_WRITABLE = (
    "SELECT NOT pg_catalog.pg_is_in_recovery() "
    "AND NOT pg_catalog.current_setting('default_transaction_read_only')::boolean"
)
_SQL_DB_EXISTS = "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s"
_SQL_CREATE_DB = "CREATE DATABASE {}"


def default_ha_dir() -> Path:
    """``$AGENTAPI_HA_DIR``, else ``ha`` next to the local cluster's data dir."""
    override = os.environ.get("AGENTAPI_HA_DIR")
    if override:
        return Path(override).expanduser()
    return default_data_dir().parent / "ha"


def multi_host_url(ports: list[int], user: str, attrs: str, dbname: str = LOCAL_DATABASE) -> str:
    """A libpq multi-host URL on 127.0.0.1 with ``target_session_attrs=attrs``."""
    hosts = ",".join(f"{HOST}:{port}" for port in ports)
    return f"postgresql://{user}@{hosts}/{dbname}?target_session_attrs={attrs}&connect_timeout=2"


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not reaped yet, does not)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    role: str
    """``primary`` or ``standby`` (what the monitor last heard, or assigned)."""
    port: int
    pid: int | None
    """The postmaster's pid, None when it does not run."""
    agent_pid: int | None
    """pg_autoctl's (the keeper's) pid, None when it does not run."""
    state: str
    """pg_auto_failover's reported state (``primary``, ``secondary``, ``wait_primary``...)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "port": self.port,
            "pid": self.pid,
            "agent_pid": self.agent_pid,
            "state": self.state,
        }


@dataclass(frozen=True)
class HaStatus:
    data_dir: Path
    running: bool
    url: str
    read_url: str
    superuser_url: str
    monitor_port: int
    monitor_pid: int | None
    nodes: list[NodeInfo] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "data_dir": str(self.data_dir),
            "running": self.running,
            "engine": "pg_auto_failover",
            "url": self.url,
            "read_url": self.read_url,
            "superuser_url": self.superuser_url,
            "monitor": {"port": self.monitor_port, "pid": self.monitor_pid},
            "nodes": [node.as_dict() for node in self.nodes],
        }

    def node(self, role: str) -> NodeInfo:
        """The first node with ``role``; raises ClusterError when there is none."""
        for node in self.nodes:
            if node.role == role:
                return node
        raise ClusterError(f"no {role} node in the HA cluster")


class HaCluster:
    """The pair in ``data_dir``: :meth:`up`, :meth:`status`, :meth:`down`, :meth:`switchover`."""

    def __init__(self, data_dir: Path | None = None, binaries: PgBinaries | None = None) -> None:
        self.data_dir = (data_dir or default_ha_dir()).expanduser().absolute()
        self._binaries = binaries

    # ------------------------------------------------------------------ basics

    @property
    def binaries(self) -> PgBinaries:
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    @property
    def runner(self) -> Runner:
        return Runner(self.data_dir, self.binaries.bindir)

    def pgdata(self, name: str) -> Path:
        return self.data_dir / name

    def _autoctl(self) -> str:
        for candidate in (self.binaries.bindir / AUTOCTL, Path("/usr/bin") / AUTOCTL):
            if candidate.is_file():
                return str(candidate)
        raise ClusterError(AUTOCTL_HINT)

    def _state(self) -> dict[str, int]:
        try:
            data = json.loads((self.data_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, int)}

    def _ports(self) -> dict[str, int]:
        state = self._state()
        if state:
            return state
        ports = {name: _free_port() for name in ("monitor", *NODE_NAMES)}
        path = self.data_dir / STATE_FILE
        path.write_text(json.dumps(ports, indent=2) + "\n", encoding="utf-8")
        self.runner.chown(path)
        return ports

    def initialized(self) -> bool:
        return bool(self._state()) and (self.pgdata("monitor") / "PG_VERSION").is_file()

    def _pidfile(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.agent.pid"

    def agent_pid(self, name: str) -> int | None:
        try:
            pid = int(self._pidfile(name).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def postmaster_pid(self, name: str) -> int | None:
        try:
            pid = int((self.pgdata(name) / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def _start_agent(self, name: str, argv: list[str]) -> None:
        if self.agent_pid(name) is not None:
            return
        pid = self.runner.spawn(argv, self.data_dir / "logs" / f"{name}.log")
        pidfile = self._pidfile(name)
        pidfile.write_text(f"{pid}\n")
        self.runner.chown(pidfile)

    def _monitor_dsn(self, user: str = "postgres") -> str:
        port = self._ports()["monitor"]
        return f"host={HOST} port={port} dbname=pg_auto_failover user={user} connect_timeout=2"

    def _node_dsn(self, name: str, dbname: str = "postgres") -> str:
        port = self._ports()[name]
        return f"host={HOST} port={port} dbname={dbname} user=postgres connect_timeout=2"

    # ------------------------------------------------------------------ up

    def up(self, timeout: float = 90) -> HaStatus:
        """Create (first time) or start the monitor and both nodes; migrate; the status."""
        self._autoctl()
        deadline = time.monotonic() + timeout
        runner = self.runner
        runner.mkdir(self.data_dir)
        for sub in ("config", "data", "run", "logs"):
            runner.mkdir(self.data_dir / sub)
        ports = self._ports()
        self._start_monitor(ports["monitor"], deadline)
        for index, name in enumerate(NODE_NAMES):
            self._start_node(name, ports[name], deadline, first=index == 0)
        self._wait(self._pair_ready, deadline, "the standby to reach the secondary state",
                   tick=self._checkpoint_primary)
        self._setup_database()
        return self.status()

    def _start_monitor(self, port: int, deadline: float) -> None:
        pgdata = self.pgdata("monitor")
        autoctl = self._autoctl()
        if not (pgdata / "PG_VERSION").is_file():
            self.runner.check(
                [autoctl, "create", "monitor", "--pgdata", str(pgdata), "--pgport", str(port),
                 "--hostname", HOST, "--auth", "trust", "--no-ssl",
                 "--pgctl", str(self.binaries.tool("pg_ctl"))],
                timeout=max(deadline - time.monotonic(), 10), what="pg_autoctl create monitor",
            )
            self.runner.check(
                [autoctl, "config", "set", "--pgdata", str(pgdata),
                 "postgresql.listen_addresses", HOST],
                what="pg_autoctl config set",
            )
        self._start_agent("monitor", [autoctl, "run", "--pgdata", str(pgdata)])
        self._wait(self._monitor_ready, deadline, "the monitor to accept connections")
        self._tune_monitor()

    def _monitor_ready(self) -> bool:
        with contextlib.suppress(psycopg.Error), psycopg.connect(self._monitor_dsn()) as conn:
            conn.execute("SELECT 1 FROM pgautofailover.node LIMIT 1")
            return True
        return False

    def _tune_monitor(self) -> None:
        with psycopg.connect(self._monitor_dsn(), autocommit=True) as conn:
            for name, value in MONITOR_SETTINGS.items():
                conn.execute(
                    sql.SQL(_SQL_ALTER_SYSTEM).format(sql.Identifier(name), sql.Literal(value))
                )
            conn.execute(_SQL_RELOAD)

    def _start_node(self, name: str, port: int, deadline: float, *, first: bool) -> None:
        pgdata = self.pgdata(name)
        autoctl = self._autoctl()
        if (pgdata / "PG_VERSION").is_file() and self._node_config(name).is_file():
            argv = [autoctl, "run", "--pgdata", str(pgdata)]
        else:
            monitor = f"postgres://autoctl_node@{HOST}:{self._ports()['monitor']}/pg_auto_failover?sslmode=disable"
            argv = [
                autoctl, "create", "postgres", "--pgdata", str(pgdata), "--pgport", str(port),
                "--listen", HOST, "--hostname", HOST, "--name", name, "--dbname", LOCAL_DATABASE,
                "--no-ssl", "--skip-pg-hba", "--monitor", monitor,
                "--pgctl", str(self.binaries.tool("pg_ctl")), "--run",
            ]
        self._start_agent(name, argv)
        if first:
            self._wait(lambda: self._writable(name), deadline, f"{name} to accept writes")

    def _node_config(self, name: str) -> Path:
        return self.data_dir / "config" / "pg_autoctl" / str(self.pgdata(name)).lstrip("/") / (
            "pg_autoctl.cfg"
        )

    def _writable(self, name: str) -> bool:
        with contextlib.suppress(psycopg.Error), psycopg.connect(self._node_dsn(name)) as conn:
            row = conn.execute(_SQL_IS_WRITABLE).fetchone()
            return bool(row and row[0])
        return False

    def _pair_ready(self) -> bool:
        states = {name: (rep, goal) for name, _, rep, goal in self._monitor_nodes()}
        if len(states) < len(NODE_NAMES):
            return False
        pairs = set(states.values())
        return ("primary", "primary") in pairs and ("secondary", "secondary") in pairs

    def _checkpoint_primary(self) -> None:
        # pg_autoctl's pg_basebackup waits for a spread checkpoint (minutes on an idle
        # server); an immediate CHECKPOINT on the primary lets it go on at once.
        for name in NODE_NAMES:
            with contextlib.suppress(psycopg.Error), psycopg.connect(
                self._node_dsn(name), autocommit=True
            ) as conn:
                conn.execute(_SQL_CHECKPOINT)

    def _wait(
        self,
        ready: Callable[[], bool],
        deadline: float,
        what: str,
        tick: Callable[[], None] | None = None,
    ) -> None:
        while True:
            if ready():
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"timed out waiting for {what}; see the logs in {self.data_dir / 'logs'}"
                )
            if tick is not None:
                tick()
            time.sleep(0.3)

    def _setup_database(self) -> None:
        admin = self.superuser_url(dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            if conn.execute(_SQL_DB_EXISTS, (LOCAL_DATABASE,)).fetchone() is None:
                conn.execute(sql.SQL(_SQL_CREATE_DB).format(sql.Identifier(LOCAL_DATABASE)))
        migrate(self.superuser_url())
        ensure_login(admin)

    # ------------------------------------------------------------------ urls, status

    def _node_ports(self) -> list[int]:
        ports = self._state()
        return [ports[name] for name in NODE_NAMES if name in ports]

    def url(self, user: str = LOCAL_LOGIN) -> str:
        return multi_host_url(self._node_ports(), user, "read-write")

    def read_url(self, user: str = LOCAL_LOGIN) -> str:
        return multi_host_url(self._node_ports(), user, "prefer-standby")

    def superuser_url(self, dbname: str = LOCAL_DATABASE) -> str:
        return multi_host_url(self._node_ports(), "postgres", "read-write", dbname)

    def _monitor_nodes(self) -> list[tuple[str, int, str, str]]:
        with contextlib.suppress(psycopg.Error), psycopg.connect(self._monitor_dsn()) as conn:
            rows = conn.execute(_SQL_NODES, (FORMATION,)).fetchall()
            return [(str(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]
        return []

    def status(self) -> HaStatus:
        ports = self._state()
        seen = {name: (rep, goal) for name, _, rep, goal in self._monitor_nodes()}
        nodes: list[NodeInfo] = []
        for name in NODE_NAMES:
            if name not in ports:
                continue
            reported, goal = seen.get(name, ("unknown", "unknown"))
            primary = goal in _PRIMARY_GOALS
            nodes.append(
                NodeInfo(
                    name=name,
                    role="primary" if primary else "standby",
                    port=ports[name],
                    pid=self.postmaster_pid(name),
                    agent_pid=self.agent_pid(name),
                    state=reported,
                )
            )
        monitor_pid = self.agent_pid("monitor")
        running = monitor_pid is not None and all(n.pid is not None for n in nodes) and bool(nodes)
        return HaStatus(
            data_dir=self.data_dir,
            running=running,
            url=self.url(),
            read_url=self.read_url(),
            superuser_url=self.superuser_url(),
            monitor_port=ports.get("monitor", 0),
            monitor_pid=monitor_pid,
            nodes=nodes,
        )

    # ------------------------------------------------------------------ operations

    def switchover(self, timeout: float = 60) -> HaStatus:
        """Promote the standby and make the old primary its standby (both stay up)."""
        before = self.status().node("primary").name
        self.runner.check(
            [self._autoctl(), "perform", "switchover", "--pgdata", str(self.pgdata("monitor")),
             "--formation", FORMATION],
            timeout=timeout, what="pg_autoctl perform switchover",
        )
        deadline = time.monotonic() + timeout

        def switched() -> bool:
            return self._pair_ready() and self.status().node("primary").name != before

        self._wait(switched, deadline, "the switchover to complete")
        return self.status()

    def start_node(self, name: str) -> None:
        """Start a node's agent again (after a crash): it rejoins, as a standby if demoted."""
        self._start_node(name, self._ports()[name], time.monotonic() + 60, first=False)

    def wait_pair(self, timeout: float = 90) -> HaStatus:
        """Wait until one node is primary and the other a streaming, synchronous secondary."""
        self._wait(self._pair_ready, time.monotonic() + timeout,
                   "the pair to be primary + secondary", tick=self._checkpoint_primary)
        return self.status()

    def down(self, *, purge: bool = False, timeout: float = 60) -> bool:
        """Stop the agents (they stop their postmasters); ``purge`` deletes the data dir."""
        was_running = False
        for name in (*NODE_NAMES, "monitor"):
            pid = self.agent_pid(name)
            if pid is not None:
                was_running = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in (*NODE_NAMES, "monitor"):
            while time.monotonic() < deadline and (
                self.agent_pid(name) is not None or self.postmaster_pid(name) is not None
            ):
                time.sleep(0.2)
            for pid in (self.agent_pid(name), self.postmaster_pid(name)):
                if pid is not None:  # did not stop in time: no data is kept on purpose
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if purge:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return was_running

