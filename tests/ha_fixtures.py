"""The HA pair the HA tests share, and writers that commit through the library.

One pair per test module (``ha_pair``): starting it costs ~10 s. Tests that kill
or switch nodes leave it as a healthy primary + secondary again (``restore_pair``),
whichever node is primary.
"""

from __future__ import annotations

import itertools
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from agentapi_db.cluster import ClusterError
from agentapi_db.db import Database
from agentapi_db.errors import AgentApiDbError, Unavailable
from agentapi_db.ha.engine import AUTOCTL_HINT, HaCluster, HaStatus, NodeInfo

HA_ROOT = Path(tempfile.gettempdir())


def ha_dir(tmp_name: str) -> Path:
    """A data dir the postgres OS user can reach (under /tmp, world-traversable)."""
    base = Path(tempfile.mkdtemp(prefix=f"agentapi-{tmp_name}-", dir=HA_ROOT))
    base.chmod(0o755)
    return base / "ha"


@pytest.fixture(scope="module")
def ha_pair() -> Iterator[HaCluster]:
    cluster = HaCluster(ha_dir("ha"))
    try:
        cluster.up()
    except ClusterError as exc:
        cluster.down(purge=True)
        if "pg_auto_failover is not installed" in str(exc):
            pytest.fail(f"{AUTOCTL_HINT} (the HA tests need the real engine)")
        raise
    try:
        yield cluster
    finally:
        cluster.down(purge=True)
        import shutil

        shutil.rmtree(cluster.data_dir.parent, ignore_errors=True)


def kill_node(node: NodeInfo) -> None:
    """SIGKILL a node's agent (pg_autoctl and its services) and its postmaster together."""
    assert node.agent_pid is not None and node.pid is not None
    os.killpg(os.getpgid(node.agent_pid), signal.SIGKILL)
    os.kill(node.pid, signal.SIGKILL)


def restore_pair(cluster: HaCluster) -> HaStatus:
    """Start any stopped agent and wait for primary + secondary."""
    for node in cluster.status().nodes:
        if node.agent_pid is None:
            cluster.start_node(node.name)
    return cluster.wait_pair(timeout=90)


def is_in_recovery(port: int) -> bool:
    with psycopg.connect(host="127.0.0.1", port=port, dbname="agentapi", user="postgres") as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])


@dataclass
class Writer:
    """Commits one session after another as one tenant's user; records what returned."""

    db: Database
    user_id: UUID
    committed: list[UUID] = field(default_factory=list)
    commit_times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """Type names of the errors raised (all must be Unavailable)."""
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def _loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                with self.db.as_user(self.user_id) as tx:
                    session = tx.sessions.create(workspace_path=f"/w/{n}")
            except AgentApiDbError as exc:
                self.failures.append(type(exc).__name__)
                time.sleep(0.05)
                continue
            except Exception as exc:  # a raw driver error would be a bug: record it
                self.failures.append(f"raw {type(exc).__name__}")
                time.sleep(0.05)
                continue
            self.committed.append(session.id)
            self.commit_times.append(time.monotonic())
            time.sleep(0.01)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=60)


def resume_after(writers: list[Writer], t_kill: float) -> float:
    """Seconds from ``t_kill`` until every writer committed again (inf if one did not)."""
    worst = 0.0
    for writer in writers:
        after = [t for t in writer.commit_times if t > t_kill]
        if not after:
            return float("inf")
        worst = max(worst, after[0] - t_kill)
    return worst


def longest_pause(writers: list[Writer], since: float) -> float:
    """The longest gap between two commits of one writer around ``since`` (the outage)."""
    worst = 0.0
    for writer in writers:
        times = writer.commit_times
        for before, after in itertools.pairwise(times):
            if after > since:
                worst = max(worst, after - before)
    return worst


def missing_commits(cluster: HaCluster, writers: list[Writer]) -> list[UUID]:
    """Committed session ids (blocks that returned) not on the current primary."""
    wanted = {sid for w in writers for sid in w.committed}
    with psycopg.connect(cluster.superuser_url()) as conn:
        rows = conn.execute(
            "SELECT id FROM user_sessions WHERE id = ANY(%s)", (list(wanted),)
        ).fetchall()
    return sorted(wanted - {row[0] for row in rows}, key=str)


def only_unavailable(writers: list[Writer]) -> set[str]:
    return {name for w in writers for name in w.failures} - {Unavailable.__name__}
