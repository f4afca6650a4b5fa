"""A real PgBouncer (Debian package) in transaction pooling mode, for tests.

It runs as the ``postgres`` OS user when the tests run as root (PgBouncer refuses
root), with its ini, user list, log and pid file in a temp dir owned by that user,
listening on 127.0.0.1 on a free port, in front of the test PostgreSQL server.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from agentapi_db.cluster import free_port

PGBOUNCER_BINARIES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
OS_USER = "postgres"


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (p for p in PGBOUNCER_BINARIES if Path(p).is_file()), None
    )
    if found is None:
        raise AssertionError(
            "pgbouncer is not installed: apt-get install pgbouncer (scripts/install-deps.sh)"
        )
    return found


@dataclass(frozen=True)
class PgBouncer:
    host: str
    port: int
    workdir: Path

    def url(self, dbname: str, user: str, password: str | None = None) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    def log(self) -> str:
        try:
            return (self.workdir / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return "(no log)"


def _ini(server_host: str, server_port: int, port: int, workdir: Path, pool_size: int) -> str:
    return f"""\
[databases]
* = host={server_host} port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
max_db_connections = {pool_size}
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
admin_users = postgres
stats_users = postgres
log_connections = 0
log_disconnections = 0
"""


def _userlist(users: Sequence[str]) -> str:
    # auth_type = trust still needs every user listed; the password is not checked.
    return "".join(f'"{user}" "unused"\n' for user in users)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"pgbouncer did not listen on 127.0.0.1:{port} within {timeout}s")


@contextmanager
def running_pgbouncer(
    server_url: str, users: Sequence[str], *, pool_size: int = 2
) -> Iterator[PgBouncer]:
    """Start PgBouncer in front of the server of ``server_url``; stop it on exit."""
    params = conninfo_to_dict(server_url)
    server_host = str(params.get("host") or "127.0.0.1")
    server_port = int(str(params.get("port") or 5432))
    binary = pgbouncer_binary()
    workdir = Path(tempfile.mkdtemp(prefix="agentapi-pgbouncer-"))
    workdir.chmod(0o755)
    port = free_port()
    (workdir / "pgbouncer.ini").write_text(
        _ini(server_host, server_port, port, workdir, pool_size), encoding="utf-8"
    )
    (workdir / "userlist.txt").write_text(_userlist(users), encoding="utf-8")
    argv = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        owner = pwd.getpwnam(OS_USER)
        for path in (workdir, workdir / "pgbouncer.ini", workdir / "userlist.txt"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        (workdir / "userlist.txt").chmod(0o600)
        argv = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", OS_USER, "--", *argv]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    bouncer = PgBouncer(host="127.0.0.1", port=port, workdir=workdir)
    try:
        try:
            _wait_listening(port, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- pgbouncer.log ---\n{bouncer.log()}") from None
        yield bouncer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)
