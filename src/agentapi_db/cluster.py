"""A local PostgreSQL cluster built from the machine's own server binaries.

Used for development (``agentapi-db up``) and for the test suite. It is **not** a
production deployment:

* it listens only on ``127.0.0.1`` and on a unix socket in a directory that only
  the cluster's OS user (and root) can enter;
* authentication is ``trust`` for every local connection (socket and
  ``127.0.0.1``): anyone who can reach the port can connect as any role, the
  superuser ``postgres`` included. Acceptable for a throwaway dev/test cluster on
  a single-user machine, never for shared hosts;
* ``fast=True`` turns off ``fsync``, ``synchronous_commit`` and
  ``full_page_writes``: a crash can lose or corrupt data. Tests only.

Layout of ``data_dir``::

    data_dir/
        agentapi-cluster.json   port and binaries, so a restart reuses the port
        pgdata/                 the PostgreSQL data directory (initdb)
        pgdata/agentapi.conf    settings written by this module on every start
        socket/                 unix socket directory (or a short path under /tmp
                                when data_dir is too long for a socket path)
        postgres.log            server log

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and
``pg_ctl`` run as the ``postgres`` OS user through ``runuser``, ``data_dir`` is
owned by that user, and every parent directory of ``data_dir`` must be
traversable by it (``/var/lib/...`` or a world-traversable dir under ``/tmp``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote

from psycopg.conninfo import make_conninfo

from agentapi_db.pgtools import candidate_dirs, tool_version

__all__ = [
    "INSTALL_HINT",
    "PG_MIN_MAJOR",
    "SUPERUSER",
    "ClusterError",
    "ClusterStatus",
    "LocalCluster",
    "PgBinaries",
    "default_data_dir",
    "find_binaries",
    "free_port",
    "probe_binaries",
]

PG_MIN_MAJOR = 15
"""Oldest PostgreSQL major version the project supports."""

SUPERUSER = "postgres"
"""Name of the bootstrap superuser of clusters made here."""

OS_USER = "postgres"
"""OS user that runs the server when this process is root."""

HOST = "127.0.0.1"

INSTALL_HINT = (
    "install them with `apt-get install postgresql-15 postgresql-contrib` "
    "(Debian/Ubuntu; or run `bash scripts/install-deps.sh`), "
    "or point AGENTAPI_PG_BINDIR at the bin directory of PostgreSQL "
    f">= {PG_MIN_MAJOR}"
)
PG_CRON_HINT = "install it with `apt-get install postgresql-15-cron` (match the server's version)"

STATE_FILE = "agentapi-cluster.json"
SETTINGS_FILE = "agentapi.conf"

# sun_path is 108 bytes on Linux; PostgreSQL appends "/.s.PGSQL.<port>" (at most 16 chars).
_MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")


class ClusterError(RuntimeError):
    """The local cluster cannot be found, created, started or stopped."""


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class PgBinaries:
    """A PostgreSQL server installation: its ``bin`` directory and version."""

    bindir: Path
    major: int
    version: str

    def tool(self, name: str) -> Path:
        """Absolute path of the program ``name`` (``psql``, ``pg_dump``...) in this install."""
        path = self.bindir / name
        if not path.is_file():
            raise ClusterError(f"{name} not found in {self.bindir}; {INSTALL_HINT}")
        return path

    @property
    def pkglibdir(self) -> Path:
        """Directory of the server's loadable modules (where ``pg_cron.so`` lives)."""
        pg_config = self.bindir / "pg_config"
        if pg_config.is_file():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [str(pg_config), "--pkglibdir"],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=30,
                ).stdout.strip()
                if out:
                    return Path(out)
        return self.bindir.parent / "lib"

    def has_pg_cron(self) -> bool:
        """Whether the pg_cron extension is installed for this server version."""
        return (self.pkglibdir / "pg_cron.so").is_file()


def probe_binaries(bindir: Path) -> PgBinaries | None:
    """The server install in ``bindir``, or None when it is not a complete one."""
    if not all((bindir / tool).is_file() for tool in ("postgres", "initdb", "pg_ctl")):
        return None
    probed = tool_version(bindir / "postgres")
    if probed is None:
        return None
    major, version = probed
    return PgBinaries(bindir=bindir, major=major, version=version)


def _candidate_bindirs() -> list[Path]:
    found = candidate_dirs(include_path=False)
    initdb = shutil.which("initdb")
    if initdb:
        found.append(Path(initdb).resolve().parent)
    return found


def find_binaries() -> PgBinaries:
    """Find PostgreSQL >= 15 server binaries.

    Order: ``$AGENTAPI_PG_BINDIR``; ``/usr/lib/postgresql/<highest version>/bin``;
    ``/opt/agentapi-db/postgresql/<highest version>/bin``; ``pg_config --bindir``; the
    directory of ``initdb`` on ``PATH`` (the scan of :mod:`agentapi_db.pgtools`).
    """
    override = os.environ.get("AGENTAPI_PG_BINDIR")
    if override:
        found = probe_binaries(Path(override))
        if found is None:
            raise ClusterError(
                f"AGENTAPI_PG_BINDIR={override} holds no PostgreSQL server "
                f"(postgres, initdb, pg_ctl); {INSTALL_HINT}"
            )
        if found.major < PG_MIN_MAJOR:
            raise ClusterError(
                f"AGENTAPI_PG_BINDIR={override} is PostgreSQL {found.version}, "
                f"older than {PG_MIN_MAJOR}; {INSTALL_HINT}"
            )
        return found
    seen: set[Path] = set()
    tried: list[str] = []
    for bindir in _candidate_bindirs():
        if bindir in seen:
            continue
        seen.add(bindir)
        found = probe_binaries(bindir)
        if found is None:
            tried.append(str(bindir))
        elif found.major < PG_MIN_MAJOR:
            tried.append(f"{bindir} (PostgreSQL {found.version}, too old)")
        else:
            return found
    where = ", ".join(tried) if tried else (
        "/usr/lib/postgresql/*/bin, /opt/agentapi-db/postgresql/*/bin, pg_config, PATH"
    )
    raise ClusterError(
        f"PostgreSQL >= {PG_MIN_MAJOR} server binaries not found (looked in {where}); "
        f"{INSTALL_HINT}"
    )


# --------------------------------------------------------------------------- helpers


def default_data_dir() -> Path:
    """Where ``agentapi-db`` keeps its local cluster.

    ``$AGENTAPI_DATA_DIR`` if set; otherwise ``/var/lib/agentapi-db/pg`` for root (a
    place the ``postgres`` OS user can reach) and
    ``${XDG_DATA_HOME:-~/.local/share}/agentapi-db/pg`` for other users.
    """
    override = os.environ.get("AGENTAPI_DATA_DIR")
    if override:
        return Path(override).expanduser()
    if os.geteuid() == 0:
        return Path("/var/lib/agentapi-db/pg")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agentapi-db" / "pg"


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class ClusterStatus:
    """What :meth:`LocalCluster.status` reports."""

    data_dir: Path
    initialized: bool
    running: bool
    port: int | None
    pid: int | None
    socket_dir: Path
    server_version: str | None


# --------------------------------------------------------------------------- cluster


class LocalCluster:
    """A PostgreSQL cluster in ``data_dir``, run from the machine's server binaries.

    ``port``: TCP port on 127.0.0.1. When None, the port saved in the data dir is
    reused, or a free one is picked and saved by :meth:`init`.

    ``fast``: test tuning, see the module docstring (never for real data).

    ``pg_cron``: preload pg_cron with ``cron.database_name = cron_database``.
    Raises :class:`ClusterError` at :meth:`start` when pg_cron is not installed.

    ``settings``: extra ``postgresql.conf`` lines, ``{name: value}``; values are
    written verbatim, so quote string values yourself (``{"work_mem": "'64MB'"}``).
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        port: int | None = None,
        *,
        fast: bool = False,
        pg_cron: bool = False,
        cron_database: str = "postgres",
        settings: Mapping[str, str] | None = None,
        binaries: PgBinaries | None = None,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.data_dir = self.data_dir.expanduser().absolute()
        self._port = port
        self.fast = fast
        self.pg_cron = pg_cron
        self.cron_database = cron_database
        self.settings: dict[str, str] = dict(settings or {})
        self._binaries = binaries

    def __repr__(self) -> str:
        return f"LocalCluster(data_dir={str(self.data_dir)!r}, port={self._port!r})"

    # ---------------------------------------------------------------- paths & props

    @property
    def pgdata(self) -> Path:
        """The PostgreSQL data directory (``PGDATA``)."""
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def state_file(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def socket_dir(self) -> Path:
        """Unix socket directory; a short path under the temp dir if data_dir is too long."""
        inside = self.data_dir / "socket"
        if len(str(inside)) <= _MAX_SOCKET_DIR_LEN:
            return inside
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"agentapi-pg-{digest}"

    @property
    def binaries(self) -> PgBinaries:
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """TCP port: the one given, else the one saved in the data dir, else a new free one."""
        if self._port is None:
            saved = self._load_state().get("port")
            self._port = saved if isinstance(saved, int) else free_port()
        return self._port

    # ---------------------------------------------------------------- connection strings

    def dsn(
        self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None
    ) -> str:
        """libpq key/value connection string for ``dbname`` over TCP on 127.0.0.1."""
        params: dict[str, str] = {
            "host": HOST,
            "port": str(self.port),
            "dbname": dbname,
            "user": user,
        }
        if password is not None:
            params["password"] = password
        return make_conninfo("", **params)

    def url(
        self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None
    ) -> str:
        """``postgresql://`` URL for ``dbname`` over TCP on 127.0.0.1."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{HOST}:{self.port}/{quote(dbname, safe='')}"

    # ---------------------------------------------------------------- lifecycle

    def is_initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").is_file()

    def init(self) -> None:
        """Create the cluster (``initdb``) if the data dir does not hold one yet. Idempotent."""
        binaries = self.binaries
        self._prepare_dirs()
        if not self.is_initialized():
            if self.pgdata.exists() and any(self.pgdata.iterdir()):
                raise ClusterError(
                    f"{self.pgdata} exists, is not empty and is no PostgreSQL cluster"
                )
            argv = [
                str(binaries.tool("initdb")),
                "--pgdata",
                str(self.pgdata),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
            ]
            if self.fast:
                argv.append("--no-sync")
            result = self._run(argv, timeout=300)
            if result.returncode != 0:
                raise ClusterError(
                    f"initdb failed in {self.pgdata} (exit {result.returncode}):\n"
                    f"{result.stdout}{result.stderr}"
                )
            self._write_file(
                self.pgdata / "pg_hba.conf",
                "# written by agentapi_db.cluster: trust auth, local connections only\n"
                "local   all   all                 trust\n"
                f"host    all   all   {HOST}/32    trust\n",
            )
            conf = self.pgdata / "postgresql.conf"
            with conf.open("a", encoding="utf-8") as fh:
                fh.write(
                    f"\n# agentapi-db settings (rewritten on every start)\n"
                    f"include_if_exists '{SETTINGS_FILE}'\n"
                )
        self._save_state()

    def start(self, timeout: int = 60) -> None:
        """Start the server and wait until it accepts connections. No-op if it runs."""
        if not self.is_initialized():
            raise ClusterError(f"no cluster in {self.data_dir}; call init() first")
        if self.is_running():
            return
        self._prepare_dirs()
        self._save_state()
        self._write_file(self.pgdata / SETTINGS_FILE, self._settings_text())
        if _port_in_use(self.port):
            raise ClusterError(
                f"port {self.port} on {HOST} is already in use; "
                f"pick another port or remove {self.state_file}"
            )
        result = self._pg_ctl("start", "--log", str(self.log_file), timeout=timeout)
        if result.returncode != 0:
            raise ClusterError(
                f"PostgreSQL did not start (pg_ctl exit {result.returncode}): "
                f"{result.stdout}{result.stderr}\n--- {self.log_file} ---\n{_tail(self.log_file)}"
            )

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast", timeout: int = 60) -> None:
        """Stop the server. No-op if it does not run."""
        if not self.is_running():
            return
        result = self._pg_ctl("stop", "--mode", mode, timeout=timeout)
        if result.returncode != 0:
            raise ClusterError(
                f"PostgreSQL did not stop (pg_ctl exit {result.returncode}): "
                f"{result.stdout}{result.stderr}"
            )

    def _pg_ctl(self, action: str, *options: str, timeout: int) -> subprocess.CompletedProcess[str]:
        """Run ``pg_ctl ACTION`` on this cluster and wait for it (at most ``timeout`` s)."""
        argv = [
            str(self.binaries.tool("pg_ctl")),
            action,
            "--pgdata",
            str(self.pgdata),
            *options,
            "--wait",
            "--timeout",
            str(timeout),
            "--silent",
        ]
        return self._run(argv, timeout=timeout + 30)

    def restart(self, timeout: int = 60) -> None:
        self.stop(timeout=timeout)
        self.start(timeout=timeout)

    def destroy(self) -> None:
        """Stop the server and delete the whole data dir (and the socket dir)."""
        if self.is_initialized():
            self.stop(mode="immediate")
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def is_running(self) -> bool:
        if not self.is_initialized():
            return False
        argv = [str(self.binaries.tool("pg_ctl")), "status", "--pgdata", str(self.pgdata)]
        return self._run(argv, timeout=60).returncode == 0

    def status(self) -> ClusterStatus:
        initialized = self.is_initialized()
        running = initialized and self.is_running()
        pid: int | None = None
        if running:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        version: str | None = None
        if initialized:
            with contextlib.suppress(OSError):
                version = (self.pgdata / "PG_VERSION").read_text().strip()
        port = self._port if self._port is not None else self._load_state().get("port")
        return ClusterStatus(
            data_dir=self.data_dir,
            initialized=initialized,
            running=running,
            port=port if isinstance(port, int) else None,
            pid=pid,
            socket_dir=self.socket_dir,
            server_version=version,
        )

    def __enter__(self) -> Self:
        self.init()
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- internals

    @staticmethod
    def _as_root() -> bool:
        return os.geteuid() == 0

    def _owner(self) -> pwd.struct_passwd | None:
        """The OS user that must own the data dir, when we are root; None otherwise."""
        if not self._as_root():
            return None
        try:
            return pwd.getpwnam(OS_USER)
        except KeyError:
            raise ClusterError(
                f"running as root needs the {OS_USER!r} OS user to run PostgreSQL, "
                f"and there is none; {INSTALL_HINT}"
            ) from None

    def _argv(self, argv: Sequence[str]) -> list[str]:
        if not self._as_root():
            return list(argv)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", OS_USER, "--", *argv]

    def _run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        try:
            return subprocess.run(
                self._argv(argv),
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
                env=env,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{argv[0]} timed out after {timeout}s") from exc
        except OSError as exc:
            raise ClusterError(f"cannot run {argv[0]}: {exc}") from exc

    def _chown(self, path: Path) -> None:
        owner = self._owner()
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.data_dir)
        self.data_dir.chmod(0o700)
        sock = self.socket_dir
        sock.mkdir(parents=True, exist_ok=True)
        self._chown(sock)
        sock.chmod(0o700)
        if self._as_root():
            for target in (self.data_dir, sock):
                probe = self._run(["test", "-w", str(target), "-a", "-x", str(target)], timeout=30)
                if probe.returncode != 0:
                    raise ClusterError(
                        f"the {OS_USER!r} OS user cannot enter {target}: every parent directory "
                        "must be traversable by it (mode o+x). Use a directory under /var/lib "
                        "or a world-traversable one under /tmp, or set AGENTAPI_DATA_DIR."
                    )

    def _write_file(self, path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        path.chmod(0o600)
        self._chown(path)

    def _load_state(self) -> dict[str, object]:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self) -> None:
        state = {
            "port": self.port,
            "bindir": str(self.binaries.bindir),
            "server_version": self.binaries.version,
        }
        if self._load_state() != state:
            self._write_file(self.state_file, json.dumps(state, indent=2) + "\n")

    def _settings_text(self) -> str:
        settings: dict[str, str] = {
            "listen_addresses": _conf_quote(HOST),
            "port": str(self.port),
            "unix_socket_directories": _conf_quote(str(self.socket_dir)),
            "max_connections": "200",
        }
        if self.fast:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        if self.pg_cron:
            if not self.binaries.has_pg_cron():
                raise ClusterError(
                    f"pg_cron was asked for but is not installed for PostgreSQL "
                    f"{self.binaries.major} ({self.binaries.pkglibdir}/pg_cron.so); {PG_CRON_HINT}"
                )
            settings |= {
                "shared_preload_libraries": _conf_quote("pg_cron"),
                "cron.database_name": _conf_quote(self.cron_database),
                # pg_cron connects over libpq; use our socket (we do not listen on ::1).
                "cron.host": _conf_quote(str(self.socket_dir)),
            }
        settings |= self.settings
        lines = ["# written by agentapi_db.cluster on every start; edits are overwritten"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"
