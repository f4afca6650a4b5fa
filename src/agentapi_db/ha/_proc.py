"""Running the engines' programs as the ``postgres`` OS user.

PostgreSQL, ``pg_autoctl`` and ``pgbackrest`` refuse (or should not) run as root.
:class:`~agentapi_db.cluster.LocalCluster` runs its short-lived programs through
``runuser``; the HA agents are long-lived daemons whose pid we report, and
``runuser`` stays as their parent (its pid is not the agent's). So this module
uses ``setpriv``, which *execs* the program: the pid of the child we start is the
agent's own. Environment: ``PG*`` variables are dropped (they would redirect the
engines), ``HOME`` and the XDG directories point inside the HA data dir, so every
file an engine writes stays there.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from agentapi_db.cluster import OS_USER, ClusterError

__all__ = ["Runner"]


class Runner:
    """Runs programs as the cluster's OS user with a private home under ``home``."""

    def __init__(self, home: Path, bindir: Path) -> None:
        self.home = home
        self.bindir = bindir

    @staticmethod
    def as_root() -> bool:
        return os.geteuid() == 0

    def owner(self) -> pwd.struct_passwd | None:
        if not self.as_root():
            return None
        try:
            return pwd.getpwnam(OS_USER)
        except KeyError:
            raise ClusterError(f"running as root needs the {OS_USER!r} OS user") from None

    def chown(self, path: Path) -> None:
        owner = self.owner()
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def mkdir(self, path: Path, mode: int = 0o700) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self.chown(path)
        path.chmod(mode)
        return path

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "XDG_"))}
        env |= {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "XDG_DATA_HOME": str(self.home / "data"),
            "XDG_RUNTIME_DIR": str(self.home / "run"),
            "TMPDIR": str(self.home / "run"),
            "PATH": f"{self.bindir}:{env.get('PATH', '/usr/bin:/bin')}",
            "PG_CONFIG": str(self.bindir / "pg_config"),
        }
        return env | dict(extra or {})

    def argv(self, argv: Sequence[str]) -> list[str]:
        if not self.as_root():
            return list(argv)
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        return [setpriv, "--reuid", OS_USER, "--regid", OS_USER, "--init-groups", *argv]

    def run(
        self, argv: Sequence[str], *, timeout: float = 120, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a program to completion; never raises on a non-zero exit."""
        try:
            return subprocess.run(
                self.argv(argv),
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
                env=self.env(env),
                cwd=self.home,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{argv[0]} timed out after {timeout:.0f}s") from exc
        except OSError as exc:
            raise ClusterError(f"cannot run {argv[0]}: {exc}") from exc

    def check(self, argv: Sequence[str], *, timeout: float = 120, what: str = "") -> str:
        """Run a program; raise :class:`ClusterError` with its output when it fails."""
        result = self.run(argv, timeout=timeout)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise ClusterError(f"{what or argv[0]} failed (exit {result.returncode}): {tail}")
        return result.stdout

    def spawn(self, argv: Sequence[str], log_file: Path) -> int:
        """Start a daemon in its own session, output appended to ``log_file``; its pid."""
        with log_file.open("ab") as log:
            self.chown(log_file)
            try:
                proc = subprocess.Popen(
                    self.argv(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env(),
                    cwd=self.home,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ClusterError(f"cannot run {argv[0]}: {exc}") from exc
        return proc.pid
